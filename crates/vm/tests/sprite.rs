//! End-to-end tests of sprites: the `tiny` image forked into a real volume,
//! served over NBD by wisp, booted in QEMU (TCG here), driven by the agent.
//! At most two VMs run at once (see `common::vm_slot`).

mod common;

use std::time::Duration;

use sha2::{Digest, Sha256};
use wisp_vm::agent::{ExecEvent, ExecRequest, ServiceSpec, TtySize};

use common::{env, unique, vm_slot};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_passes_stdin_stdout_stderr_and_exit_codes() {
    let env = env().await;
    let _slot = vm_slot();
    let s = env.boot(&unique("exec")).await;
    let agent = s.machine.agent();

    common::check_stdout_stderr_exit(agent).await;

    let mut e = agent
        .exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "tr a-z A-Z; echo done >&2".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let input = e.input();
    input.write(b"hello ").await.unwrap();
    input.write(b"sprite\n").await.unwrap();
    input.close_stdin().await.unwrap();
    let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
    while let Some(ev) = e.recv().await.unwrap() {
        match ev {
            ExecEvent::Stdout(d) => stdout.extend(d),
            ExecEvent::Stderr(d) => stderr.extend(d),
            ExecEvent::Exit(st) => status = Some(st),
        }
    }
    assert_eq!(stdout, b"HELLO SPRITE\n");
    assert_eq!(stderr, b"done\n");
    assert_eq!(status.unwrap().code, Some(0));

    let killed = agent.run(["sh", "-c", "kill -9 $$"]).await.unwrap();
    assert_eq!(killed.status.signal, Some(9));
    assert_eq!(killed.status.code, None);

    let missing = agent.run(["/no/such/program"]).await;
    match missing {
        Ok(out) => assert!(!out.status.success()),
        Err(e) => assert!(e.to_string().contains("no/such"), "{e}"),
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_session_runs_a_shell_and_follows_the_window_size() {
    let env = env().await;
    let _slot = vm_slot();
    let s = env.boot(&unique("pty")).await;
    let mut e = s
        .machine
        .agent()
        .exec(ExecRequest {
            argv: vec!["/bin/sh".into()],
            tty: Some(TtySize {
                rows: 30,
                cols: 100,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let input = e.input();
    input.write(b"stty size; tty\n").await.unwrap();
    // The resize must come after the first `stty size` ran: read up to its answer.
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("/dev/pts/") {
        match e.recv().await.unwrap() {
            Some(ExecEvent::Stdout(d)) => out.extend(d),
            other => panic!("unexpected {other:?} before the first answer"),
        }
    }
    input.resize(40, 120).await.unwrap();
    input
        .write(b"stty size; echo $((6*7))x\nexit 4\n")
        .await
        .unwrap();
    let status = loop {
        match e.recv().await.unwrap() {
            Some(ExecEvent::Stdout(d)) => out.extend(d),
            Some(ExecEvent::Stderr(d)) => panic!("a pty has no separate stderr: {d:?}"),
            Some(ExecEvent::Exit(st)) => break st,
            None => panic!("no exit"),
        }
    };
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("30 100"), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("40 120"), "{text}");
    assert!(text.contains("42x"), "{text}");
    assert_eq!(status.code, Some(4));
    s.stop().await;
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_copy_both_ways_including_one_over_100_mib() {
    let env = env().await;
    let _slot = vm_slot();
    let s = env.boot(&unique("files")).await;
    let agent = s.machine.agent();
    let big = common::pattern(1, 120 << 20);
    let n = agent
        .write_file("/root/big.bin", 0o640, Some(1000), Some(1000), &big[..])
        .await
        .unwrap();
    assert_eq!(n, big.len() as u64);
    let guest = s
        .sh("sha256sum /root/big.bin; stat -c '%a %u %g %s' /root/big.bin")
        .await;
    assert!(guest.starts_with(&sha256_hex(&big)), "{guest}");
    assert!(
        guest.contains(&format!("640 1000 1000 {}", big.len())),
        "{guest}"
    );
    // Back to the host: a file the guest made itself.
    s.sh("head -c 1000000 /root/big.bin > /root/small.bin; echo tail >> /root/small.bin")
        .await;
    let mut back = Vec::new();
    agent.read_file("/root/big.bin", &mut back).await.unwrap();
    assert!(back == big, "big file differs after the round trip");
    let mut small = Vec::new();
    agent
        .read_file("/root/small.bin", &mut small)
        .await
        .unwrap();
    assert_eq!(&small[..1_000_000], &big[..1_000_000]);
    assert_eq!(&small[1_000_000..], b"tail\n");
    assert!(agent
        .read_file("/root/none", &mut Vec::new())
        .await
        .is_err());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_reaches_a_host_http_server_and_the_host_reaches_the_guest() {
    common::require_tool("python3", "python3");
    let env = env().await;
    let _slot = vm_slot();
    // Egress: a web server on the host's loopback, which slirp shows the guest as 10.0.2.2.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("hello.txt"), "from the host\n").unwrap();
    let port = common::free_port();
    let mut server = std::process::Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .current_dir(www.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let s = env.boot(&unique("net")).await;
    let got = s
        .sh(&format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://10.0.2.2:{port}/hello.txt && exit 0; sleep 1; done; exit 1"
        ))
        .await;
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(got, "from the host\n");

    // Inbound: busybox httpd on the guest's loopback only, reached through an agent
    // tunnel (nothing on the host is forwarded into the guest).
    s.sh("mkdir -p /www && echo 'from the guest' > /www/index.html && httpd -p 127.0.0.1:8080 -h /www")
        .await;
    let mut body = String::new();
    for _ in 0..20 {
        let Ok(tunnel) = s.machine.agent().connect_tcp("localhost", 8080).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let (mut reader, writer) = tunnel.split();
        writer
            .write(b"GET /index.html HTTP/1.0\r\nHost: sprite\r\n\r\n")
            .await
            .unwrap();
        writer.shutdown().await.unwrap();
        let mut answer = Vec::new();
        while let Some(data) = reader.read().await.unwrap() {
            answer.extend_from_slice(&data);
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "{answer}"
        );
        body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        break;
    }
    assert_eq!(body, "from the guest\n");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_survives_stop_and_boot() {
    let env = env().await;
    let name = unique("persist");
    {
        let _slot = vm_slot();
        let s = env.boot(&name).await;
        s.sh("echo kept > /root/kept.txt").await;
        s.stop().await;
    }
    let _slot = vm_slot();
    let s = env.boot(&name).await;
    assert_eq!(s.sh("cat /root/kept.txt").await, "kept\n");
    s.stop().await;
    env.store.delete_volume(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_writes_keeps_every_synced_write_and_a_clean_fs() {
    common::require_tool("e2fsck", "e2fsprogs");
    let env = env().await;
    let name = unique("crash");
    {
        let _slot = vm_slot();
        let s = env.boot(&name).await;
        // 40 files with known content, then sync; then writes go on until the kill.
        s.sh("mkdir -p /root/d && for i in $(seq 1 40); do head -c 65536 /dev/urandom > /root/d/$i; done \
              && (cd /root/d && md5sum $(seq 1 40) > /root/sums) && sync")
            .await;
        let agent = s.machine.agent().clone();
        let writer = tokio::spawn(async move {
            let _ = agent
                .run([
                    "sh",
                    "-c",
                    "i=0; while true; do i=$((i+1)); head -c 65536 /dev/urandom > /root/junk.$((i % 50)); done",
                ])
                .await;
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        s.kill().await;
        writer.abort();
    }
    {
        let _slot = vm_slot();
        let s = env.boot(&name).await;
        let check = s
            .sh("cd /root/d && md5sum -c /root/sums | grep -c ': OK$'")
            .await;
        assert_eq!(check.trim(), "40");
        s.stop().await;
    }
    // The volume's filesystem, checked on the host after the clean stop.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let v = env.store.open_volume(&name).await.unwrap();
    v.export_file(&raw, &|_, _| {}).await.unwrap();
    v.close().await.unwrap();
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}\n{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    env.store.delete_volume(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_restart_after_a_crash_and_after_a_reboot() {
    let env = env().await;
    let name = unique("svc");
    let _slot = vm_slot();
    let s = env.boot(&name).await;
    let agent = s.machine.agent();
    agent
        .define_service(ServiceSpec {
            name: "ticker".into(),
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo started; while true; do sleep 1; done".into(),
            ],
            env: vec![],
            cwd: None,
            user: None,
            needs: vec![],
        })
        .await
        .unwrap();
    let pid = wait_for_service(&s, None).await;
    // Each start of the service prints one "started"; counting them proves the
    // restart happened and that the log survives a reboot.
    wait_for_log_lines(&s, 1).await;
    s.sh(&format!("kill -9 {pid}")).await;
    let pid2 = wait_for_service(&s, Some(pid)).await;
    assert_ne!(pid, pid2);
    wait_for_log_lines(&s, 2).await;
    s.stop().await;

    let s = env.boot(&name).await;
    wait_for_service(&s, None).await;
    wait_for_log_lines(&s, 3).await;
    s.stop().await;
    env.store.delete_volume(&name).await.unwrap();
}

/// Waits until the log of service `ticker` holds `count` lines "started".
async fn wait_for_log_lines(s: &common::Sprite, count: usize) {
    let mut logs = String::new();
    for _ in 0..100 {
        let raw = s
            .machine
            .agent()
            .service_logs("ticker", None)
            .await
            .unwrap();
        logs = String::from_utf8_lossy(&raw).into_owned();
        if logs.lines().filter(|l| *l == "started").count() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("service log never held {count} \"started\" lines; it holds:\n{logs}");
}

/// Waits until service `ticker` runs with a pid other than `not`.
async fn wait_for_service(s: &common::Sprite, not: Option<u32>) -> u32 {
    for _ in 0..100 {
        let list = s.machine.agent().list_services().await.unwrap();
        if let Some(pid) = list
            .iter()
            .find(|st| st.spec.name == "ticker")
            .and_then(|st| st.pid)
        {
            if Some(pid) != not {
                return pid;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("service `ticker` did not (re)start");
}
