//! The agent as PID 1 in a real VM (QEMU, TCG here) over the real virtio-serial port:
//! init duties (mounts, hostname, network, resolv.conf), exec round trips, PTY, files,
//! malformed frames, and a service that comes back after a reboot.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wisp_vm::agent::{AgentClient, AgentError, ExecRequest, Kind, ServiceSpec, TtySize};
use wisp_vm::{Machine, MachineConfig};

fn config(dev: Arc<wisp_nbd::FileDevice>, run: std::path::PathBuf) -> MachineConfig {
    let mut cfg = common::machine_config(dev, run);
    cfg.hostname = "agent-vm".into();
    cfg
}

use common::{sh, sh_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_as_pid1_in_a_real_vm() {
    let _slot = common::vm_slot();
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(common::tiny_disk(dir.path()).await);

    let m = Machine::start(config(dev.clone(), dir.path().join("run1")))
        .await
        .unwrap();
    let a = m.agent().clone();
    eprintln!("boot to agent ready: {:?}", m.boot_time());

    // Init duties.
    assert_eq!(
        sh(&a, "cat /proc/1/comm; hostname").await,
        "init\nagent-vm\n"
    );
    let mounts = sh(&a, "cat /proc/mounts").await;
    for want in [
        "/dev/vda / ext4 rw",
        "devpts /dev/pts",
        "tmpfs /tmp",
        "tmpfs /run",
        "proc /proc",
    ] {
        assert!(mounts.contains(want), "{want} missing from {mounts}");
    }
    // Default route via 10.0.2.2 on eth0 (0202000A in /proc/net/route), resolv.conf.
    sh_until(&a, "cat /proc/net/route", |t| {
        t.contains("eth0\t00000000\t0202000A")
    })
    .await;
    assert_eq!(
        sh(&a, "cat /etc/resolv.conf").await,
        "nameserver 10.0.2.3\n"
    );
    assert!(sh(&a, "cat /etc/hosts")
        .await
        .contains("127.0.1.1\tagent-vm\n"));
    // First boot grows the 256 MiB image's filesystem to the 1 GiB disk (the tiny image
    // carries resize2fs).
    let grown = sh_until_root_grows(&a, 256 * 1024).await;
    eprintln!("root filesystem grown to {grown} KiB");

    // Plain execs as PID 1 take the posix_spawn path: environment, working directory,
    // stderr and exit code, a missing program, a script without `#!` (run by `sh`).
    let out = common::output(
        &a,
        ExecRequest {
            argv: common::sh_argv("echo $FOO; pwd; echo e >&2; exit 7"),
            env: vec![("FOO".into(), "bar".into())],
            cwd: Some("/tmp".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bar\n/tmp\n");
    assert_eq!(out.stderr, b"e\n");
    assert_eq!(out.status.code, Some(7));
    let err = a.run(["no-such-program"]).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Os { errno, message }
            if errno == "ENOENT" && message.contains("No such file")),
        "{err}"
    );
    sh(
        &a,
        "printf 'echo from-script\\n' > /tmp/plain; chmod +x /tmp/plain",
    )
    .await;
    let out = a.run(["/tmp/plain"]).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-script\n");

    // Exec round trips of `true` (reported, not asserted: timing belongs in benchmarks).
    let mut times = vec![];
    for _ in 0..21 {
        let t0 = Instant::now();
        assert!(a.run(["true"]).await.unwrap().status.success());
        times.push(t0.elapsed());
    }
    times.sort();
    eprintln!(
        "exec `true` round trip: median {:?}, min {:?}",
        times[10], times[0]
    );
    // Reference: the guest's own cost of starting `true` (busybox sh, fork + exec).
    let t = sh(&a, "a=$(cut -d' ' -f1 /proc/uptime); for i in $(seq 50); do /bin/true; done; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b").await;
    let v: Vec<f64> = t
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if let [a0, b0] = v[..] {
        eprintln!(
            "in-guest fork+exec of /bin/true: {:.1} ms each",
            (b0 - a0) * 1000.0 / 50.0
        );
    }
    let mut pings = vec![];
    for _ in 0..21 {
        pings.push(a.ping().await.unwrap());
    }
    pings.sort();
    eprintln!("ping round trip: median {:?}", pings[10]);

    // PTY.
    let out = common::output(
        &a,
        ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "tty; stty size".into()],
            tty: Some(TtySize {
                rows: 33,
                cols: 101,
            }),
            ..Default::default()
        },
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/") && text.contains("33 101"),
        "{text:?}"
    );

    // As another user, in a PTY: uid, home and a terminal owned by that user.
    let out = common::output(
        &a,
        ExecRequest {
            argv: common::sh_argv("id -u; echo $HOME; pwd; stat -c %u $(tty)"),
            user: Some("sprite".into()),
            tty: Some(TtySize { rows: 24, cols: 80 }),
            ..Default::default()
        },
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        text.starts_with("1000\n/home/sprite\n/home/sprite\n1000\n"),
        "{text:?}"
    );

    // Files both ways, checked by the guest's own sha256sum.
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let t0 = Instant::now();
    a.write_file("/root/blob", 0o600, Some(0), Some(0), &data[..])
        .await
        .unwrap();
    let up = t0.elapsed();
    let mut back = Vec::new();
    let t0 = Instant::now();
    a.read_file("/root/blob", &mut back).await.unwrap();
    let down = t0.elapsed();
    eprintln!("24 MiB: write {up:?}, read {down:?}");
    assert!(back == data);
    let sum = sh(&a, "sha256sum /root/blob; stat -c %a /root/blob").await;
    let host = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&data)?;
            c.wait_with_output()
        })
        .unwrap();
    let host_sum = String::from_utf8_lossy(&host.stdout);
    assert_eq!(
        sum.split_whitespace().next(),
        host_sum.split_whitespace().next()
    );
    assert!(sum.ends_with("600\n"), "{sum}");

    bad_frames_are_rejected(&a).await;

    // A service, crashed once, then across a reboot.
    a.define_service(ServiceSpec {
        name: "ticker".into(),
        argv: common::sh_argv("echo tick; exec sleep 1000"),
        ..Default::default()
    })
    .await
    .unwrap();
    let pid = sh_until(&a, "pidof sleep || true", |t| !t.trim().is_empty()).await;
    sh(&a, &format!("kill -9 {}", pid.trim())).await;
    sh_until(&a, "cat /var/log/wisp/ticker.log", |t| {
        t.matches("tick").count() >= 2
    })
    .await;
    m.stop().await.unwrap();
    // The stop was the agent's clean power-off (not QEMU killed by the host): the kernel
    // says so on the console, and the root went read-only first.
    let console = std::fs::read_dir(dir.path().join("run1"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("console-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    for line in console.lines().filter(|l| l.contains("wisp-agent")) {
        eprintln!("console: {line}");
    }
    assert!(console.contains("reboot: Power down"), "console: {console}");
    assert!(
        !console.contains("remount / read-only"),
        "console: {console}"
    );

    let m = Machine::start(config(dev, dir.path().join("run2")))
        .await
        .unwrap();
    let a = m.agent().clone();
    // The file written before the clean stop is there, and the service is back.
    assert!(sh(&a, "sha256sum /root/blob")
        .await
        .starts_with(host_sum.split_whitespace().next().unwrap()));
    sh_until(&a, "cat /var/log/wisp/ticker.log", |t| {
        t.matches("tick").count() >= 3
    })
    .await;
    let list = a.list_services().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].pid.is_some());
    m.stop().await.unwrap();
}

/// Malformed frames over the real virtio-serial port: each ends its session (or, when it
/// cannot even be decoded, is reported on session 0) with an error, and the agent keeps
/// serving fresh sessions on the same channel.
async fn bad_frames_are_rejected(a: &AgentClient) {
    let remote = |r: Result<wisp_vm::agent::Control, AgentError>| match r {
        Err(AgentError::Remote(m)) => m,
        other => panic!("expected an error answer, got {other:?}"),
    };
    // Not JSON; JSON of an unknown field; a frame kind only the guest sends; data for a
    // session that is not open.
    let m = remote(a.raw_request(Kind::Control, b"{oops").await);
    assert!(m.contains("bad control message"), "{m}");
    let bogus = br#"{"type":"exec","argv":["true"],"bogus":1}"#;
    let m = remote(a.raw_request(Kind::Control, bogus).await);
    assert!(m.contains("bad control message"), "{m}");
    let m = remote(a.raw_request(Kind::Stderr, b"x").await);
    assert!(m.contains("only go from agent to host"), "{m}");
    let m = remote(a.raw_request(Kind::Data, b"x").await);
    assert!(m.contains("not open"), "{m}");

    // A request that makes no sense on a running exec session ends that session (its
    // process is killed) with an error.
    let mut e = a
        .exec(ExecRequest {
            argv: vec!["sleep".into(), "1000".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let started =
        wisp_proto::Frame::control(e.session_id(), &wisp_vm::agent::Control::Started { pid: 1 });
    a.send_raw(&started.encode().unwrap()).await.unwrap();
    let err = loop {
        match e.recv().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the exec session ended without an error"),
            Err(err) => break err,
        }
    };
    assert!(
        matches!(&err, AgentError::Remote(m) if m.contains("unexpected")),
        "{err}"
    );
    sh_until(a, "pidof sleep || echo none", |t| t.trim() == "none").await;

    // Bytes that are no frame at all, then a header announcing 4 GiB: reported on
    // session 0, skipped without allocating, the stream resynchronised.
    let errors_before = a.connection_errors().len();
    a.send_raw(b"\x00\x01garbage garbage wsp\x01\xff")
        .await
        .unwrap();
    // A good frame in between, so the next bad one starts a new run of garbage.
    a.ping().await.unwrap();
    let mut huge = wisp_proto::encode_header(Kind::Data, 77, 0).unwrap();
    huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    a.send_raw(&huge).await.unwrap();
    a.ping().await.unwrap();
    let errors = a.connection_errors();
    assert!(errors.len() > errors_before, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("exceeds the limit")),
        "{errors:?}"
    );

    // And a fresh session works.
    assert_eq!(sh(a, "echo alive").await, "alive\n");
}

/// Size of `/` in KiB as the guest's `df` sees it.
async fn root_size_kib(a: &AgentClient) -> u64 {
    let out = sh(a, "df -k / | tail -n 1").await;
    out.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse df output {out:?}"))
}

async fn sh_until_root_grows(a: &AgentClient, before: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = root_size_kib(a).await;
        // The disk is 1 GiB; the image 256 MiB.
        if now > before * 3 {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "root filesystem stayed at {now} KiB"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
