//! Drives the real `wisp-agent` binary in channel mode (`--stdio`, PID-1 duties off) on
//! the host with `AgentClient`: exec, PTY, files, services, malformed frames. Real
//! processes, no mocks; the VM boot tests exercise the same code over virtio-serial.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

mod common;

use wisp_vm::agent::{
    AgentClient, AgentError, ExecEvent, ExecRequest, ExecSession, Kind, ServiceSpec, TtySize,
};

struct Agent {
    client: AgentClient,
    /// Held so the agent is killed (`kill_on_drop`) when the test ends.
    _child: tokio::process::Child,
}

async fn start_agent(state: &Path) -> Agent {
    start_agent_with(state, tokio::process::Command::new(common::agent_bin())).await
}

async fn start_agent_with(state: &Path, mut command: tokio::process::Command) -> Agent {
    let mut child = command
        .arg("--stdio")
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wisp-agent");
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let client =
        AgentClient::connect_timeout(tokio::io::join(stdout, stdin), Duration::from_secs(30))
            .await
            .expect("handshake with the agent");
    Agent {
        client,
        _child: child,
    }
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Polls `f` until it returns `Some`, failing after a generous deadline (not a timing
/// assertion: the deadline only turns a hang into a failure).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn hello_and_exec_with_stdout_stderr_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    assert_eq!(a.client.info().version, wisp_proto::PROTOCOL_VERSION);
    assert!(a.client.info().capabilities.iter().any(|c| c == "exec"));
    a.client.ping().await.unwrap();

    common::check_stdout_stderr_exit(&a.client).await;

    let out = a.client.run(["true"]).await.unwrap();
    assert!(out.status.success());

    // Environment and working directory.
    let out = common::output(
        &a.client,
        ExecRequest {
            argv: argv(&["sh", "-c", "echo $FOO; pwd"]),
            env: vec![("FOO".into(), "bar baz".into())],
            cwd: Some(dir.path().to_string_lossy().into()),
            ..Default::default()
        },
    )
    .await;
    let expect = format!(
        "bar baz\n{}\n",
        dir.path().canonicalize().unwrap().display()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expect);

    // A missing program is a clean error, and the agent keeps serving. Repeated, because a
    // failed exec races with the agent's reaper (which must leave that child to std).
    for _ in 0..40 {
        let err = a.client.run(["/nonexistent/program"]).await.unwrap_err();
        assert!(
            matches!(err, AgentError::Os { ref errno, ref message }
                if errno == "ENOENT" && message.contains("/nonexistent/program")),
            "{err}"
        );
    }
    a.client.ping().await.unwrap();
}

#[tokio::test]
async fn stdin_is_streamed_with_flow_control() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    // 8 MiB through `cat`, four times the window: the agent must pace us.
    let data: Vec<u8> = (0..8 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut e = a
        .client
        .exec(ExecRequest {
            argv: argv(&["cat"]),
            ..Default::default()
        })
        .await
        .unwrap();
    let input = e.input();
    let d2 = data.clone();
    let writer = tokio::spawn(async move {
        input.write(&d2).await.unwrap();
        input.close_stdin().await.unwrap();
    });
    let mut got = Vec::new();
    let status = loop {
        match e.recv().await.unwrap().unwrap() {
            ExecEvent::Stdout(d) => got.extend_from_slice(&d),
            ExecEvent::Stderr(d) => panic!("stderr: {}", String::from_utf8_lossy(&d)),
            ExecEvent::Exit(s) => break s,
        }
    };
    writer.await.unwrap();
    assert!(status.success());
    assert!(
        got == data,
        "cat returned {} bytes, sent {}",
        got.len(),
        data.len()
    );
}

#[tokio::test]
async fn stdin_beyond_the_window_is_refused_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    // A process that never reads stdin, and a host that ignores the window: the agent must
    // refuse the excess (closing that session) instead of buffering it.
    let mut e = a
        .client
        .exec(ExecRequest {
            argv: argv(&["sleep", "1000"]),
            ..Default::default()
        })
        .await
        .unwrap();
    let pid = e.pid;
    let chunk = vec![b'x'; 256 * 1024];
    for _ in 0..12 {
        let f = wisp_proto::encode(Kind::Data, e.session_id(), &chunk).unwrap();
        a.client.send_raw(&f).await.unwrap();
    }
    let err = loop {
        match e.recv().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("session ended without an error"),
            Err(err) => break err,
        }
    };
    assert!(
        matches!(err, AgentError::Remote(ref m) if m.contains("window")),
        "{err}"
    );
    eventually("the refused session's process to die", || async {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (st.is_empty() || st.contains(") Z")).then_some(())
    })
    .await;
    let out = a.client.run(["echo", "still here"]).await.unwrap();
    assert_eq!(out.stdout, b"still here\n");
}

#[tokio::test]
async fn signals_reach_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    let mut e = a
        .client
        .exec(ExecRequest {
            argv: argv(&["sh", "-c", "echo ready; sleep 1000"]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        e.recv().await.unwrap(),
        Some(ExecEvent::Stdout(b"ready\n".to_vec()))
    );
    e.input().signal(libc::SIGTERM).await.unwrap();
    let st = e.wait().await.unwrap();
    assert_eq!(st.signal, Some(libc::SIGTERM), "{st:?}");
    assert_eq!(st.shell_code(), 143);
}

#[tokio::test]
async fn many_concurrent_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::sync::Arc::new(start_agent(dir.path()).await);
    let mut tasks = vec![];
    for i in 0..24 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let cmd = format!("sleep 0.$(({i} % 3)); echo {i}; exit {i}");
            let out = a.client.run(["sh", "-c", cmd.as_str()]).await.unwrap();
            assert_eq!(out.stdout, format!("{i}\n").into_bytes());
            assert_eq!(out.status.code, Some(i));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn pty_session_with_resize() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    let out = common::output(
        &a.client,
        ExecRequest {
            argv: argv(&["sh", "-c", "tty; stty size; test -t 0 && echo interactive"]),
            tty: Some(TtySize { rows: 24, cols: 80 }),
            ..Default::default()
        },
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("24 80"), "{text:?}");
    assert!(text.contains("interactive"), "{text:?}");
    assert!(out.stderr.is_empty());

    // Resize while running, then let the shell report the new size.
    let mut e = a
        .client
        .exec(ExecRequest {
            argv: argv(&["sh", "-c", "echo waiting; read x; stty size"]),
            tty: Some(TtySize { rows: 24, cols: 80 }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("waiting") {
        match e.recv().await.unwrap().unwrap() {
            ExecEvent::Stdout(d) => text.push_str(&String::from_utf8_lossy(&d)),
            other => panic!("{other:?}"),
        }
    }
    e.input().resize(40, 100).await.unwrap();
    e.input().write(b"go\n").await.unwrap();
    let out = e.output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("40 100"), "{text:?}");

    // A signal reaches the terminal's foreground job. `cat` (no shell: a shell that catches
    // SIGINT while it forks would make this racy) echoes a line once it is running.
    let e = cat_on_a_terminal(&a.client, "ping").await;
    e.input().signal(libc::SIGINT).await.unwrap();
    let st = e.wait().await.unwrap();
    assert_eq!(st.signal, Some(libc::SIGINT), "{st:?}");

    // Ctrl-C typed into the terminal does the same through the line discipline.
    let e = cat_on_a_terminal(&a.client, "x").await;
    e.input().write(b"\x03").await.unwrap();
    let st = e.wait().await.unwrap();
    assert_eq!(st.signal, Some(libc::SIGINT), "{st:?}");
}

/// Signals the agent inherited as ignored (a background job of a shell ignores SIGINT and
/// SIGQUIT, nohup SIGHUP) are at their defaults in every command it starts, with or
/// without a terminal: otherwise Ctrl-C in a sprite would depend on how wisp was started.
#[tokio::test]
async fn commands_start_with_default_signal_dispositions() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(common::agent_bin());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
                libc::signal(sig, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let a = start_agent_with(dir.path(), command).await;
    for tty in [None, Some(TtySize { rows: 24, cols: 80 })] {
        let out = common::output(
            &a.client,
            ExecRequest {
                argv: argv(&["grep", "^SigIgn", "/proc/self/status"]),
                tty,
                ..Default::default()
            },
        )
        .await;
        let text = String::from_utf8_lossy(&out.stdout);
        let mask = text
            .split_whitespace()
            .nth(1)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .unwrap_or_else(|| panic!("no SigIgn mask in {text:?}"));
        // Bit n-1 is signal n. Signals 32 and up are glibc's own (32 and 33 cannot be
        // changed through libc) and real-time signals: only 1-31 are checked.
        assert_eq!(mask & 0x7fff_ffff, 0, "ignored: {mask:#x}, tty {tty:?}");
    }
}

/// `cat` on a terminal, once it runs: `word` was typed, and both the terminal's echo and
/// cat's copy of it came back.
async fn cat_on_a_terminal(a: &AgentClient, word: &str) -> ExecSession {
    let mut e = a
        .exec(ExecRequest {
            argv: argv(&["cat"]),
            tty: Some(TtySize { rows: 24, cols: 80 }),
            ..Default::default()
        })
        .await
        .unwrap();
    e.input()
        .write(format!("{word}\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    while text.matches(word).count() < 2 {
        match e.recv().await.unwrap().unwrap() {
            ExecEvent::Stdout(d) => text.push_str(&String::from_utf8_lossy(&d)),
            other => panic!("{other:?}"),
        }
    }
    e
}

#[tokio::test]
async fn file_write_and_read_over_100_mib() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    let len = 101 * 1024 * 1024 + 12345;
    let data = common::pattern(42, len);
    let path = dir.path().join("sub/dir/big.bin");
    let p = path.to_string_lossy().to_string();
    let n = a
        .client
        .write_file(&p, 0o640, Some(1234), Some(2345), &data[..])
        .await
        .unwrap();
    assert_eq!(n, len as u64);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), len as u64);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (1234, 2345));
    // Compare with what the guest side sees through an independent tool.
    let out = a.client.run(["sha256sum", p.as_str()]).await.unwrap();
    let guest_sum = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let host_sum = {
        let o = std::process::Command::new("sha256sum")
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(guest_sum, host_sum);

    let mut back = Vec::with_capacity(len);
    let n = a.client.read_file(&p, &mut back).await.unwrap();
    assert_eq!(n, len as u64);
    assert!(back == data, "read back differs");

    // Replacing an existing file, and errors that name the path.
    a.client
        .write_file(&p, 0o600, None, None, &b"small"[..])
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"small");
    let err = a
        .client
        .read_file("/nonexistent/x", tokio::io::sink())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Os { ref errno, ref message }
            if errno == "ENOENT" && message.contains("/nonexistent/x")),
        "{err}"
    );
    let err = a
        .client
        .write_file("relative/path", 0o644, None, None, &b"x"[..])
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Remote(_)), "{err}");
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("big.bin")]);
}

#[tokio::test]
async fn bad_frames_are_rejected_and_the_agent_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;

    // Invalid JSON, an unknown message type, unknown fields: an error on that session.
    for bad in [
        &b"{not json"[..],
        br#"{"type":"launch_missiles"}"#,
        br#"{"type":"exec","argv":["true"],"evil":1}"#,
    ] {
        match a.client.raw_request(Kind::Control, bad).await {
            Err(AgentError::Remote(m)) => assert!(m.contains("bad control message"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    // Data for a session that is not open.
    match a.client.raw_request(Kind::Data, b"stray").await {
        Err(AgentError::Remote(m)) => assert!(m.contains("not open"), "{m}"),
        other => panic!("{other:?}"),
    }
    // An empty argv.
    match a
        .client
        .raw_request(Kind::Control, br#"{"type":"exec","argv":[]}"#)
        .await
    {
        Err(AgentError::Remote(m)) => assert!(m.contains("empty argv"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Broken framing: garbage, a header announcing 4 GiB, an unknown kind.
    let before = a.client.connection_errors().len();
    a.client
        .send_raw(b"this is not a frame at all")
        .await
        .unwrap();
    let mut huge = wisp_proto::encode_header(Kind::Data, 77, 0).unwrap();
    huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    a.client.send_raw(&huge).await.unwrap();
    let mut weird = wisp_proto::encode_header(Kind::Data, 78, 0).unwrap();
    weird[4] = 200;
    a.client.send_raw(&weird).await.unwrap();
    // Seeded random junk.
    a.client
        .send_raw(&common::pattern(7, 100_000))
        .await
        .unwrap();
    a.client.ping().await.unwrap();
    assert!(a.client.connection_errors().len() > before);

    // Still fully working.
    let out = a.client.run(["echo", "alive"]).await.unwrap();
    assert_eq!(out.stdout, b"alive\n");
}

#[tokio::test]
async fn services_restart_after_a_crash_and_after_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("runs");
    let script = format!(
        "echo run >> {}; echo started; exec sleep 1000",
        marker.display()
    );
    let spec = ServiceSpec {
        name: "web".into(),
        argv: argv(&["sh", "-c", &script]),
        env: vec![("X".into(), "1".into())],
        ..Default::default()
    };
    {
        let a = start_agent(dir.path()).await;
        a.client.define_service(spec.clone()).await.unwrap();
        let first = eventually("the service to run", || async {
            let l = a.client.list_services().await.unwrap();
            l.first().and_then(|s| s.pid)
        })
        .await;
        // Let it get going (log its start), then crash it from outside.
        eventually("the first start in the log", || async {
            let l = a.client.service_logs("web", None).await.ok()?;
            String::from_utf8_lossy(&l)
                .contains("started")
                .then_some(())
        })
        .await;
        // SAFETY: plain kill of a pid we just read.
        unsafe { libc::kill(first as i32, libc::SIGKILL) };
        let second = eventually("the service to restart", || async {
            let l = a.client.list_services().await.unwrap();
            l.first()
                .and_then(|s| s.pid.filter(|p| *p != first && s.starts >= 2))
        })
        .await;
        assert_ne!(first, second);
        let st = a.client.list_services().await.unwrap();
        assert_eq!(st[0].last_exit.and_then(|e| e.signal), Some(libc::SIGKILL));
        let logs = eventually("two starts in the log", || async {
            let l = a.client.service_logs("web", None).await.unwrap();
            (String::from_utf8_lossy(&l).matches("started").count() >= 2).then_some(l)
        })
        .await;
        assert!(String::from_utf8_lossy(&logs).contains("started\n"));
        let tail = a.client.service_logs("web", Some(8)).await.unwrap();
        assert_eq!(tail, b"started\n");
        // Shut the agent down (channel mode: it exits) - services are stopped first.
        a.client.shutdown().await.unwrap();
        eventually("the old service process to end", || async {
            // SAFETY: signal 0 only checks existence.
            (unsafe { libc::kill(second as i32, 0) } != 0).then_some(())
        })
        .await;
    }
    // A new agent on the same state (a reboot) starts the persisted service again.
    let a = start_agent(dir.path()).await;
    let pid = eventually("the service after restart", || async {
        a.client
            .list_services()
            .await
            .unwrap()
            .first()
            .and_then(|s| s.pid)
    })
    .await;
    assert_eq!(a.client.list_services().await.unwrap()[0].spec, spec);
    let runs = eventually("three runs", || async {
        let n = std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .count();
        (n >= 3).then_some(n)
    })
    .await;
    assert_eq!(runs, 3);
    a.client.remove_service("web").await.unwrap();
    eventually("the removed service to stop", || async {
        // SAFETY: signal 0 only checks existence.
        (unsafe { libc::kill(pid as i32, 0) } != 0).then_some(())
    })
    .await;
    assert!(a.client.list_services().await.unwrap().is_empty());
    assert!(matches!(
        a.client.remove_service("web").await,
        Err(AgentError::Remote(_))
    ));
    assert!(matches!(
        a.client
            .define_service(ServiceSpec {
                name: "../evil".into(),
                argv: argv(&["true"]),
                ..Default::default()
            })
            .await,
        Err(AgentError::Remote(_))
    ));
}

#[tokio::test]
async fn exec_as_another_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: switching users needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    let out = common::output(
        &a.client,
        ExecRequest {
            argv: argv(&["sh", "-c", "id -u; id -g; echo $HOME"]),
            user: Some("4321".into()),
            cwd: Some("/".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "4321\n4321\n/\n");
    let err = a
        .client
        .exec(ExecRequest {
            argv: argv(&["true"]),
            user: Some("no-such-user".into()),
            ..Default::default()
        })
        .await
        .err()
        .expect("unknown user must fail");
    assert!(err.to_string().contains("no-such-user"), "{err}");
}

#[tokio::test]
async fn dropping_a_session_kills_its_process() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    let mut e = a
        .client
        .exec(ExecRequest {
            argv: argv(&["sh", "-c", "echo up; exec sleep 1000"]),
            ..Default::default()
        })
        .await
        .unwrap();
    let pid = e.pid;
    assert!(matches!(
        e.recv().await.unwrap(),
        Some(ExecEvent::Stdout(_))
    ));
    drop(e);
    eventually("the abandoned process to die", || async {
        // A zombie counts as gone too: check /proc state.
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (st.is_empty() || st.contains(") Z")).then_some(())
    })
    .await;
    a.client.ping().await.unwrap();
}

#[tokio::test]
async fn filesystem_operations_answer_with_errno_names() {
    use wisp_vm::agent::{FsOp, WriteOptions};
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    let root = dir.path().join("fs");
    let at = |p: &str| root.join(p).to_string_lossy().into_owned();
    let errno = |e: AgentError| match e {
        AgentError::Os { errno, .. } => errno,
        other => panic!("expected an errno, got {other}"),
    };

    // Without mkdir_parents only the immediate parent is made.
    let options = |mkdir_parents, keep_existing| WriteOptions {
        mode: 0o640,
        uid: None,
        gid: None,
        mkdir_parents,
        keep_existing,
    };
    let w = a
        .client
        .write_file_with(&at("a/b/c.txt"), options(false, false), &b"x"[..])
        .await
        .unwrap_err();
    assert_eq!(errno(w), "ENOENT");
    // A file where a folder on the way should be: ENOTDIR, with or without
    // mkdir_parents (create_dir_all says EEXIST there).
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("plain"), b"x").unwrap();
    for mkdir_parents in [true, false] {
        let w = a
            .client
            .write_file_with(&at("plain/child"), options(mkdir_parents, false), &b"x"[..])
            .await
            .unwrap_err();
        assert_eq!(errno(w), "ENOTDIR", "mkdir_parents {mkdir_parents}");
    }
    let w = a
        .client
        .write_file_with(&at("plain/deeper/child"), options(true, false), &b"x"[..])
        .await
        .unwrap_err();
    assert_eq!(errno(w), "ENOTDIR");
    std::fs::remove_file(root.join("plain")).unwrap();
    a.client
        .write_file_with(&at("a/b/c.txt"), options(true, false), &b"hello"[..])
        .await
        .unwrap();
    a.client
        .write_file_with(&at("a/d/e.txt"), options(false, false), &b""[..])
        .await
        .unwrap();
    // An existing file keeps its mode when asked.
    std::fs::set_permissions(
        root.join("a/b/c.txt"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    a.client
        .write_file_with(&at("a/b/c.txt"), options(true, true), &b"again"[..])
        .await
        .unwrap();
    let mode = std::fs::metadata(root.join("a/b/c.txt")).unwrap().mode();
    assert_eq!(mode & 0o777, 0o700);

    // Listings: a folder's entries, recursive, by pattern; a file's own entry.
    let names = |entries: Vec<wisp_vm::agent::FsEntry>| {
        entries.into_iter().map(|e| e.name).collect::<Vec<_>>()
    };
    assert_eq!(
        names(a.client.list(&at("a"), false, None).await.unwrap()),
        ["b", "d"]
    );
    assert_eq!(
        names(a.client.list(&at("a"), true, Some("*.txt")).await.unwrap()),
        ["b/c.txt", "d/e.txt"]
    );
    let file = a.client.list(&at("a/b/c.txt"), false, None).await.unwrap();
    assert_eq!((file[0].kind.as_str(), file[0].size), ("file", 5));
    assert_eq!(
        errno(a.client.list(&at("zz"), false, None).await.unwrap_err()),
        "ENOENT"
    );
    let read = a.client.open_read(&at("a")).await.err().unwrap();
    assert_eq!(errno(read), "EISDIR");

    // One-answer operations.
    let op = |op| a.client.fs(op);
    op(FsOp::Copy {
        from: at("a"),
        to: at("copy"),
        recursive: true,
        preserve: true,
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(root.join("copy/b/c.txt")).unwrap(), b"again");
    let not_recursive = op(FsOp::Copy {
        from: at("a"),
        to: at("copy2"),
        recursive: false,
        preserve: false,
    })
    .await
    .unwrap_err();
    assert_eq!(errno(not_recursive), "EISDIR");
    op(FsOp::Rename {
        from: at("copy/b/c.txt"),
        to: at("copy/moved.txt"),
    })
    .await
    .unwrap();
    assert!(root.join("copy/moved.txt").exists() && !root.join("copy/b/c.txt").exists());
    op(FsOp::Chmod {
        path: at("copy"),
        mode: 0o750,
        recursive: true,
    })
    .await
    .unwrap();
    let mode = std::fs::metadata(root.join("copy/moved.txt"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o7777, 0o750);
    op(FsOp::Chown {
        path: at("copy"),
        user: Some("4321".into()),
        group: Some("8765".into()),
        recursive: true,
    })
    .await
    .unwrap();
    let meta = std::fs::metadata(root.join("copy/moved.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4321, 8765));
    let unknown = op(FsOp::Chown {
        path: at("copy"),
        user: Some("no-such-user".into()),
        group: None,
        recursive: false,
    })
    .await
    .unwrap_err();
    assert!(unknown.to_string().contains("no-such-user"), "{unknown}");
    let not_empty = op(FsOp::Delete {
        path: at("copy"),
        recursive: false,
    })
    .await
    .unwrap_err();
    assert_eq!(errno(not_empty), "ENOTEMPTY");
    op(FsOp::Delete {
        path: at("copy"),
        recursive: true,
    })
    .await
    .unwrap();
    assert!(!root.join("copy").exists());
    let gone = op(FsOp::Delete {
        path: at("copy"),
        recursive: true,
    })
    .await
    .unwrap_err();
    assert_eq!(errno(gone), "ENOENT");
    let relative = op(FsOp::Delete {
        path: "relative".into(),
        recursive: false,
    })
    .await
    .unwrap_err();
    assert!(relative.to_string().contains("not absolute"), "{relative}");
    a.client.ping().await.unwrap();
}

#[tokio::test]
async fn tunnels_carry_bytes_both_ways_and_ports_are_watched() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    // An echo server that upper-cases what it reads until end of file.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        conn.read_to_end(&mut all).unwrap();
        conn.write_all(&all.to_ascii_uppercase()).unwrap();
    });
    let (mut reader, writer) = a
        .client
        .connect_tcp("localhost", port)
        .await
        .unwrap()
        .split();
    // More than a window's worth each way.
    let data = common::pattern(7, 3 << 20)
        .iter()
        .map(|b| b'a' + b % 26)
        .collect::<Vec<u8>>();
    let sent = data.clone();
    let send = tokio::spawn(async move {
        writer.write(&sent).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    while let Some(chunk) = reader.read().await.unwrap() {
        back.extend_from_slice(&chunk);
    }
    send.await.unwrap();
    assert_eq!(back, data.to_ascii_uppercase());

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().port();
    drop(closed);
    match a.client.connect_tcp("127.0.0.1", dead).await {
        Err(AgentError::Os { errno, .. }) => assert_eq!(errno, "ECONNREFUSED"),
        other => panic!("expected ECONNREFUSED, got {:?}", other.err()),
    }

    // Port watch: a listener opening and closing is reported with its pid.
    let mut watch = a.client.watch_ports().await.unwrap();
    let (first, _) = watch.next().await.unwrap();
    let extra = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra_port = extra.local_addr().unwrap().port();
    assert!(!first.iter().any(|p| p.port == extra_port));
    let opened = loop {
        let (opened, _) = watch.next().await.unwrap();
        if let Some(p) = opened.into_iter().find(|p| p.port == extra_port) {
            break p;
        }
    };
    assert_eq!(opened.address, "127.0.0.1");
    assert_eq!(opened.pid, Some(std::process::id()));
    drop(extra);
    loop {
        let (_, closed) = watch.next().await.unwrap();
        if closed.iter().any(|p| p.port == extra_port) {
            break;
        }
    }
    a.client.ping().await.unwrap();
}

#[tokio::test]
async fn file_watches_report_changes_below_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    let root = dir.path().join("w");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let mut watch = a
        .client
        .watch_files(vec![root.to_string_lossy().into_owned()], true)
        .await
        .unwrap();
    // A folder made after the watch started is watched too.
    std::fs::create_dir(root.join("sub/later")).unwrap();
    let mut seen = Vec::new();
    let target = root.join("sub/later/f.txt").to_string_lossy().into_owned();
    while !seen
        .iter()
        .any(|(p, k): &(String, String)| p == &target && k == "write")
    {
        if seen.len() == 1 {
            std::fs::write(&target, b"x").unwrap();
        }
        for e in watch.next().await.unwrap() {
            seen.push((e.path, e.kind));
        }
    }
    assert_eq!(seen[0].1, "create", "{seen:?}");
    let missing = a
        .client
        .watch_files(
            vec![root.join("nope").to_string_lossy().into_owned()],
            false,
        )
        .await
        .err()
        .unwrap();
    assert!(
        matches!(missing, AgentError::Os { ref errno, .. } if errno == "ENOENT"),
        "{missing}"
    );
}

/// One HTTP/1.1 request to the in-sprite API on `socket`: the status and the body.
fn api_call(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: sprite\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Keep-awake tasks set through the channel and through the in-sprite API are the
/// same; requests from inside reach the host on its `guest_requests` session and come
/// back answered; `sprite-env` (the agent under that name) is the API's client.
#[tokio::test]
async fn tasks_and_guest_requests_through_the_in_sprite_api() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(dir.path()).await;
    let socket = dir.path().join("api.sock");
    let tasks = a
        .client
        .set_task("build", 60, Some("from the host".into()))
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].ttl_secs, 60);
    let s = socket.clone();
    let (status, body) = tokio::task::spawn_blocking(move || {
        api_call(&s, "POST", "/v1/tasks", r#"{"name":"inside","ttl":"2m"}"#)
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ttl_secs\":120"), "{body}");
    let names: Vec<String> = a
        .client
        .tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["build", "inside"]);
    let s = socket.clone();
    let answers = tokio::task::spawn_blocking(move || {
        [
            api_call(&s, "DELETE", "/v1/tasks/nope", ""),
            api_call(&s, "POST", "/v1/tasks", r#"{"name":"x","ttl":"9h"}"#),
            api_call(&s, "POST", "/v1/tasks", "{not json"),
            api_call(&s, "GET", "/v1/nothing", ""),
            // No host takes guest requests yet.
            api_call(&s, "POST", "/v1/checkpoints", "{}"),
        ]
    })
    .await
    .unwrap();
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [404, 400, 400, 404, 503], "{answers:?}");
    assert!(answers[1].1.contains("32400 s"), "{answers:?}");
    match a.client.delete_task("nope").await {
        Err(AgentError::Os { errno, .. }) => assert_eq!(errno, "ENOENT"),
        other => panic!("{other:?}"),
    }

    // The host answers the guest's requests.
    let mut requests = a.client.guest_requests().await.unwrap();
    let replier = requests.replier();
    let host = tokio::spawn(async move {
        let (id, request) = requests.next().await.unwrap();
        assert_eq!(
            request,
            wisp_vm::agent::GuestRequest::Checkpoint {
                comment: Some("mid-build".into())
            }
        );
        replier
            .reply(id, Ok(r#"{"id":"v7","comment":"mid-build"}"#.into()))
            .await
            .unwrap();
        requests
    });
    // `sprite-env`: this binary under that name.
    let sprite_env = dir.path().join("sprite-env");
    std::os::unix::fs::symlink(common::agent_bin(), &sprite_env).unwrap();
    let env_socket = socket.clone();
    let run = move |args: &[&str]| {
        let out = std::process::Command::new(&sprite_env)
            .args(args)
            .env("SPRITE_API_SOCK", &env_socket)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let checkpoint = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["checkpoints", "create", "--comment", "mid-build"])
    })
    .await
    .unwrap();
    assert_eq!(checkpoint.0, Some(0), "{checkpoint:?}");
    assert!(checkpoint.1.contains("\"v7\""), "{checkpoint:?}");
    let _requests = host.await.unwrap();
    let listed = run(&["tasks"]);
    assert!(
        listed.1.contains("from the host") && listed.1.contains("inside"),
        "{listed:?}"
    );
    let removed = run(&["tasks", "rm", "missing"]);
    assert_eq!(removed.0, Some(1), "{removed:?}");
    assert!(removed.2.contains("no task `missing`"), "{removed:?}");
    assert_eq!(run(&["frobnicate"]).0, Some(2));
}

/// A frame for a session that has just ended (the host's end of stdin racing with the
/// process's exit) is dropped: no error comes back on that session. Spoken frame by
/// frame, so that nothing on the host side hides an answer.
/// The real agent spoken to frame by frame, with no `AgentClient` between: for
/// what a well-behaved client never sends.
struct RawAgent {
    to_agent: tokio::process::ChildStdin,
    from_agent: tokio::process::ChildStdout,
    frames: wisp_proto::FrameReader,
    pending: std::collections::VecDeque<wisp_proto::Frame>,
    buf: Vec<u8>,
    /// Held so the agent is killed when the test ends.
    _child: tokio::process::Child,
}

impl RawAgent {
    fn spawn(state: &Path) -> RawAgent {
        let mut child = tokio::process::Command::new(common::agent_bin())
            .arg("--stdio")
            .arg("--state-dir")
            .arg(state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        RawAgent {
            to_agent: child.stdin.take().unwrap(),
            from_agent: child.stdout.take().unwrap(),
            frames: wisp_proto::FrameReader::new(),
            pending: Default::default(),
            buf: vec![0u8; 64 * 1024],
            _child: child,
        }
    }

    /// The next frame from the agent.
    async fn next(&mut self) -> wisp_proto::Frame {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(f) = self.pending.pop_front() {
                return f;
            }
            let n =
                tokio::time::timeout(Duration::from_secs(30), self.from_agent.read(&mut self.buf))
                    .await
                    .expect("the agent answers")
                    .unwrap();
            assert!(n > 0, "the agent closed its output");
            let pending = &mut self.pending;
            self.frames
                .feed(&self.buf[..n], |f| pending.push_back(f.unwrap()));
        }
    }

    /// The next frame from the agent as (session, control message).
    async fn next_control(&mut self) -> (u32, wisp_proto::Control) {
        let f = self.next().await;
        (f.session, f.to_control().unwrap())
    }

    async fn send(&mut self, kind: Kind, session: u32, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let bytes = wisp_proto::encode(kind, session, payload).unwrap();
        self.to_agent.write_all(&bytes).await.unwrap();
    }

    async fn control(&mut self, session: u32, msg: &wisp_proto::Control) {
        let f = wisp_proto::Frame::control(session, msg);
        self.send(f.kind, f.session, &f.payload).await;
    }
}

#[tokio::test]
async fn frames_for_an_ended_session_are_dropped() {
    use wisp_proto::Control;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = RawAgent::spawn(dir.path());
    let hello = Control::Hello {
        version: wisp_proto::PROTOCOL_VERSION,
        agent: String::new(),
        capabilities: vec![],
        connection: 1,
    };
    agent.control(0, &hello).await;
    let exec = Control::Exec(ExecRequest {
        argv: argv(&["true"]),
        ..Default::default()
    });
    agent.control(1, &exec).await;
    loop {
        let f = agent.next().await;
        if f.session == 1 && matches!(f.to_control(), Ok(Control::Exit(_))) {
            break;
        }
    }
    // Late frames for session 1, then a ping on a new session.
    agent.send(Kind::Eof, 1, b"").await;
    agent.send(Kind::Data, 1, b"late").await;
    agent.control(2, &Control::Ping).await;
    loop {
        let f = agent.next().await;
        assert_ne!(
            f.session,
            1,
            "an answer for the ended session: {:?}",
            f.to_control()
        );
        if f.session == 2 {
            assert!(matches!(f.to_control(), Ok(Control::Pong)));
            break;
        }
    }
    // A session number never opened is still an error.
    agent.send(Kind::Data, 9, b"stray").await;
    let f = agent.next().await;
    assert_eq!(f.session, 9);
    assert!(
        matches!(f.to_control(), Ok(Control::Error { ref message, .. }) if message.contains("not open")),
        "{:?}",
        f.to_control()
    );
}

/// A guest's request and its answer cross every change of host connection: a
/// `hello` the host re-sent while it waited (it arrives after the host opened
/// its `guest_requests` session) keeps that session, so the answer reaches the
/// guest (the reply was lost after a warm resume, and the guest waited 120 s);
/// a request the old connection never answered goes out again on the new one
/// under the same id; a request made while the host reconnects waits for it.
#[tokio::test]
async fn guest_requests_cross_repeated_hellos_and_reconnects() {
    use wisp_proto::Control;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = RawAgent::spawn(dir.path());
    let hello = |connection: u64| Control::Hello {
        version: wisp_proto::PROTOCOL_VERSION,
        agent: String::new(),
        capabilities: vec![],
        connection,
    };
    let socket = dir.path().join("api.sock");
    let ask = |comment: &'static str| {
        let s = socket.clone();
        tokio::task::spawn_blocking(move || {
            api_call(
                &s,
                "POST",
                "/v1/checkpoints",
                &format!(r#"{{"comment":"{comment}"}}"#),
            )
        })
    };

    // Connection 10: hello, then `guest_requests` on session 1.
    agent.control(0, &hello(10)).await;
    assert!(matches!(
        agent.next_control().await,
        (0, Control::Hello { .. })
    ));
    agent.control(1, &Control::GuestRequests).await;
    assert_eq!(agent.next_control().await, (1, Control::Ok));
    // A late copy of the same connection's hello: session 1 stays open.
    agent.control(0, &hello(10)).await;
    assert!(matches!(
        agent.next_control().await,
        (0, Control::Hello { .. })
    ));
    let asked = ask("first");
    let (session, message) = agent.next_control().await;
    assert_eq!(session, 1);
    let Control::GuestRequest { id, .. } = message else {
        panic!("{message:?}")
    };
    let reply = Control::GuestReply {
        id,
        result: Some(r#"{"id":"v0"}"#.into()),
        error: None,
    };
    agent.control(1, &reply).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), asked)
        .await
        .expect("the answer reached the guest")
        .unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"id":"v0"}"#));

    // A request connection 10 never answers goes out again on connection 11,
    // under the same id.
    let asked = ask("second");
    let (_, message) = agent.next_control().await;
    let Control::GuestRequest { id: unanswered, .. } = message else {
        panic!("{message:?}")
    };
    agent.control(0, &hello(11)).await;
    assert!(matches!(
        agent.next_control().await,
        (0, Control::Hello { .. })
    ));
    agent.control(1, &Control::GuestRequests).await;
    let mut again = None;
    for _ in 0..2 {
        match agent.next_control().await {
            (1, Control::Ok) => {}
            (1, Control::GuestRequest { id, request }) => again = Some((id, request)),
            other => panic!("{other:?}"),
        }
    }
    let (id, request) = again.expect("the unanswered request is sent again");
    assert_eq!(id, unanswered);
    assert_eq!(
        request,
        wisp_proto::GuestRequest::Checkpoint {
            comment: Some("second".into())
        }
    );
    let reply = Control::GuestReply {
        id,
        result: Some(r#"{"id":"v1"}"#.into()),
        error: None,
    };
    agent.control(1, &reply).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), asked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"id":"v1"}"#));

    // Connection 12 says hello; a request made before it opens its session waits
    // for it instead of failing.
    agent.control(0, &hello(12)).await;
    assert!(matches!(
        agent.next_control().await,
        (0, Control::Hello { .. })
    ));
    let asked = ask("third");
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.control(1, &Control::GuestRequests).await;
    let mut id = None;
    for _ in 0..2 {
        match agent.next_control().await {
            (1, Control::Ok) => {}
            (1, Control::GuestRequest { id: i, .. }) => id = Some(i),
            other => panic!("{other:?}"),
        }
    }
    let reply = Control::GuestReply {
        id: id.expect("the waiting request went out"),
        result: None,
        error: Some("no room".into()),
    };
    agent.control(1, &reply).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), asked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("no room"), "{body}");
}
