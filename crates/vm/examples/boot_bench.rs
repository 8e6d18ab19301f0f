//! Boot and exec figures for `docs/PERFORMANCE.md`, measured in one run:
//! - reference: bare QEMU, same kernel and modules, root from a local raw file,
//!   a busybox `/init` that mounts the root and powers off (whole process);
//! - agent ready: `Machine::start` on a fork of `tiny` served by wisp over NBD;
//! - exec round trip of `true` (median of 50);
//! - host memory: QEMU RSS and the growth of this process's RSS per VM.
//!
//! Usage: `WISP_HOME=... cargo run --release -p wisp-vm --example boot_bench [ROUNDS]`
//! (the `tiny` image must be built: `wisp image build tiny`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wisp_vm::initramfs::{self, Entry};
use wisp_vm::qemu::{DiskSource, Qemu, QemuConfig};
use wisp_vm::{image, Machine, Runtime};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A busybox initramfs with the same modules: loads them, mounts the root
/// read-only, runs its `/sbin/init`-equivalent (`true`), powers off.
fn bare_initramfs(rt: &Runtime, out: &Path) {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static");
    let script = "#!/bin/busybox sh\n\
        /bin/busybox mount -t devtmpfs dev /dev\n\
        /bin/busybox mount -t proc proc /proc\n\
        for m in $(/bin/busybox cat /etc/wisp-modules); do /bin/busybox insmod $m; done\n\
        /bin/busybox mount -o ro -t ext4 /dev/vda /newroot\n\
        /bin/busybox chroot /newroot /bin/true\n\
        /bin/busybox poweroff -f\n";
    let mut entries = initramfs::entries(&rt.kernel, script.as_bytes()).unwrap();
    entries.push(Entry::Dir {
        name: "bin".into(),
        mode: 0o755,
    });
    entries.push(Entry::File {
        name: "bin/busybox".into(),
        mode: 0o755,
        data: busybox,
    });
    initramfs::write_archive(out, &entries).unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let home = std::path::PathBuf::from(std::env::var("WISP_HOME").unwrap_or(".wisp".into()));
    let rt = Runtime::prepare(&home).await.unwrap();
    println!("accelerator: {} ({})", rt.accel.accel, rt.accel.reason);
    let store = wisp_volume::Store::open(wisp_volume::StoreConfig::new(
        format!(
            "file://{}",
            std::fs::canonicalize(home.join("store")).unwrap().display()
        ),
        home.join("cache"),
    ))
    .await
    .unwrap();
    let img = image::get(&home, wisp_vm::ImageKind::Tiny).unwrap();

    // Reference: the tiny image exported to a local raw file.
    let work = tempfile::tempdir_in(&home).unwrap();
    let raw = work.path().join("tiny.raw");
    store
        .export_checkpoint(&img.volume, &img.checkpoint, &raw, &|_, _| {})
        .await
        .unwrap();
    let bare_initrd = work.path().join("bare.cpio");
    bare_initramfs(&rt, &bare_initrd);
    let mut bare = Vec::new();
    for i in 0..rounds {
        let cfg = QemuConfig {
            binary: QemuConfig::default_binary(),
            accel: rt.accel.accel,
            cpus: 2,
            memory_mib: 1024,
            kernel: rt.kernel.vmlinuz(),
            initrd: bare_initrd.clone(),
            cmdline_extra: vec![],
            disk: Some(DiskSource::RawFile(raw.clone())),
            agent_socket: None,
            qmp_socket: None,
            serial_log: work.path().join(format!("bare-{i}.log")),
            network: true,
            forward: None,
        };
        let t0 = Instant::now();
        let mut q = Qemu::spawn(&cfg, &work.path().join("bare-qemu.log")).unwrap();
        q.wait_timeout(Duration::from_secs(120)).await.unwrap();
        bare.push(t0.elapsed());
    }
    let bare_med = median(bare.clone());
    println!("bare qemu boot to init + power-off (whole process): median {bare_med:?} of {bare:?}");

    let mut ready = Vec::new();
    let mut stops = Vec::new();
    let mut exec_med = Duration::ZERO;
    let base_rss = rss_kib(std::process::id());
    for i in 0..rounds {
        let name = format!("bench-{}-{i}", std::process::id());
        store
            .fork(&img.volume, &img.checkpoint, &name)
            .await
            .unwrap();
        let volume = Arc::new(store.open_volume(&name).await.unwrap());
        let t0 = Instant::now();
        let m = Machine::start(rt.machine_config(volume.clone(), &name))
            .await
            .unwrap();
        ready.push(t0.elapsed());
        if i == 0 {
            let mut rtts = Vec::new();
            for _ in 0..50 {
                let t = Instant::now();
                let out = m.agent().run(["true"]).await.unwrap();
                assert!(out.status.success());
                rtts.push(t.elapsed());
            }
            exec_med = median(rtts);
            let qemu_rss = rss_kib(m.qemu_pid());
            let own = rss_kib(std::process::id());
            println!(
                "memory: qemu RSS {} MiB (guest RAM 1024 MiB, touched part only); this process {} MiB, {} MiB more than before the VM",
                qemu_rss / 1024,
                own / 1024,
                own.saturating_sub(base_rss) / 1024
            );
        }
        let t1 = Instant::now();
        m.stop().await.unwrap();
        if let Ok(v) = Arc::try_unwrap(volume) {
            v.close().await.unwrap();
        }
        stops.push(t1.elapsed());
        store.delete_volume(&name).await.unwrap();
    }
    let ready_med = median(ready.clone());
    println!("agent ready (Machine::start on a volume fork): median {ready_med:?} of {ready:?}");
    println!("clean stop: median {:?}", median(stops));
    println!("exec round trip of `true`: median {exec_med:?} of 50");
    println!(
        "ratio agent-ready / bare whole-process boot: {:.2}",
        ready_med.as_secs_f64() / bare_med.as_secs_f64()
    );
}
