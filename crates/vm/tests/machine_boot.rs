//! Boots a real VM (QEMU, TCG here) from a raw file disk and talks to the agent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use wisp_vm::Machine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_runs_a_command_and_stops_cleanly() {
    let _slot = common::vm_slot();
    let dir = tempfile::tempdir().unwrap();
    let dev = common::tiny_disk(dir.path()).await;
    let cfg = common::machine_config(Arc::new(dev), dir.path().join("run"));
    let m = Machine::start(cfg).await.unwrap();
    eprintln!("boot took {:?}", m.boot_time());
    let out = m
        .agent()
        .run([
            "sh",
            "-c",
            "echo hi; echo err >&2; cat /proc/mounts; exit 3",
        ])
        .await
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.starts_with(b"hi\n"));
    assert_eq!(out.stderr, b"err\n");
    m.stop().await.unwrap();
}

/// A guest that does not answer in time is killed and booted again, up to
/// `boot_attempts` boots, each with its own console log; then the error says why.
/// (No TCG boot answers within 300 ms, so every attempt here times out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_that_does_not_answer_is_killed_and_tried_again() {
    let _slot = common::vm_slot();
    let dir = tempfile::tempdir().unwrap();
    let dev = common::tiny_disk(dir.path()).await;
    let run = dir.path().join("run");
    let mut cfg = common::machine_config(Arc::new(dev), run.clone());
    cfg.boot_timeout = Duration::from_millis(300);
    cfg.boot_attempts = 3;
    let err = Machine::start(cfg)
        .await
        .err()
        .expect("no boot answers in 300 ms");
    let msg = err.to_string();
    assert!(
        msg.contains("stalled during boot on every attempt")
            && msg.contains("agent did not answer within 300ms"),
        "{msg}"
    );
    let consoles = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("console-"))
        .count();
    assert_eq!(consoles, 3);
    // Every attempt's QEMU is gone and so are the sockets.
    let left: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A boot that stalls early, its console silent (here QEMU starts with its CPUs
/// stopped, `-S`), is killed and booted again within seconds, not after the boot
/// timeout (90 s in these tests); the second boot comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_with_a_silent_console_is_retried_within_seconds() {
    let _slot = common::vm_slot();
    let dir = tempfile::tempdir().unwrap();
    let dev = common::tiny_disk(dir.path()).await;
    let run = dir.path().join("run");
    let mut cfg = common::machine_config(Arc::new(dev), run.clone());
    // A QEMU that stalls on its first start only, and notes when it starts.
    let starts = dir.path().join("starts");
    let wrapper = dir.path().join("qemu-stalls-once");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             date +%s.%N >> '{starts}'\n\
             if [ \"$(wc -l < '{starts}')\" -eq 1 ]; then exec {qemu} -S \"$@\"; fi\n\
             exec {qemu} \"$@\"\n",
            starts = starts.display(),
            qemu = cfg.qemu_binary.display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    cfg.qemu_binary = wrapper;
    let m = Machine::start(cfg).await.expect("the second boot comes up");
    let out = m.agent().run(["echo", "up"]).await.unwrap();
    assert_eq!(out.stdout, b"up\n");
    m.stop().await.unwrap();
    let times: Vec<f64> = std::fs::read_to_string(&starts)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(times.len(), 2, "{times:?}");
    let waited = times[1] - times[0];
    assert!(
        waited < 15.0,
        "the stalled boot was given {waited:.1} s (its console never printed a byte)"
    );
}
