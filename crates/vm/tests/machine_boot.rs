//! Boots a real VM (QEMU, TCG here) from a raw file disk and talks to the agent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use wisp_vm::{Machine, MachineConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_runs_a_command_and_stops_cleanly() {
    let boot = common::boot_files();
    let _slot = common::vm_slot();
    let dir = tempfile::tempdir().unwrap();
    let dev = common::tiny_disk(dir.path()).await;
    let mut cfg = MachineConfig::new(
        Arc::new(dev),
        boot.kernel.vmlinuz(),
        boot.initramfs.clone(),
        dir.path().join("run"),
    );
    cfg.boot_timeout = Duration::from_secs(180);
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
