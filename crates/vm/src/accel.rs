//! Choosing the accelerator: KVM only where a short probe boot under KVM
//! reaches the agent (nested "PVM" KVM opens `/dev/kvm` fine but hangs stock
//! kernels), TCG otherwise. The verdict is cached in `$WISP_HOME/cache/accel.json`
//! per (host kernel, guest kernel); `WISP_ACCEL=kvm|tcg` overrides it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::qemu::{Accel, Qemu, QemuConfig};

/// How long the KVM probe boot may take to reach the agent: a kernel and
/// initramfs with no disk reach it in well under a second under real KVM.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The accelerator in force and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
    /// `uname -r` of the host when probed.
    pub host_kernel: String,
    pub guest_kernel: String,
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn cache_path(home: &Path) -> PathBuf {
    home.join("cache").join("accel.json")
}

/// The cached choice for this host and guest kernel, if any (never probes).
pub fn cached(home: &Path, guest_kernel: &str) -> Option<AccelChoice> {
    let text = std::fs::read_to_string(cache_path(home)).ok()?;
    let c: AccelChoice = serde_json::from_str(&text).ok()?;
    (c.host_kernel == host_kernel() && c.guest_kernel == guest_kernel).then_some(c)
}

/// Whether `/dev/kvm` can be opened for reading and writing.
pub fn kvm_device_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// The accelerator to use: `WISP_ACCEL`, else the cached verdict, else a
/// probe boot of `kernel` + `initramfs` under KVM.
pub async fn choose(
    home: &Path,
    kernel: &Path,
    initramfs: &Path,
    guest_kernel: &str,
) -> AccelChoice {
    let base = |accel, reason: String| AccelChoice {
        accel,
        reason,
        host_kernel: host_kernel(),
        guest_kernel: guest_kernel.to_string(),
    };
    match std::env::var("WISP_ACCEL").ok().as_deref() {
        Some("kvm") => return base(Accel::Kvm, "WISP_ACCEL=kvm".into()),
        Some("tcg") => return base(Accel::Tcg, "WISP_ACCEL=tcg".into()),
        _ => {}
    }
    if let Some(c) = cached(home, guest_kernel) {
        return c;
    }
    let choice = match kvm_device_usable() {
        Err(e) => base(Accel::Tcg, format!("no usable KVM ({e})")),
        Ok(()) => match probe_kvm(home, kernel, initramfs).await {
            Ok(t) => base(
                Accel::Kvm,
                format!("KVM probe boot reached the agent in {} ms", t.as_millis()),
            ),
            Err(e) => base(Accel::Tcg, format!("KVM probe boot failed: {e}")),
        },
    };
    tracing::info!(accel = %choice.accel, reason = %choice.reason, "accelerator chosen");
    let path = cache_path(home);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(json) = serde_json::to_string_pretty(&choice) {
        let _ = std::fs::write(&path, json);
    }
    choice
}

/// Boots the kernel and initramfs alone (no disk, no network) under KVM and
/// waits for the agent's answer.
async fn probe_kvm(home: &Path, kernel: &Path, initramfs: &Path) -> Result<Duration, String> {
    let run_root = home.join("run");
    std::fs::create_dir_all(&run_root).map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("probe-")
        .tempdir_in(&run_root)
        .map_err(|e| e.to_string())?;
    let run = crate::run_dir::RunDir::create(dir.path()).map_err(|e| e.to_string())?;
    let agent_socket = run.socket("agent.sock");
    let config = QemuConfig {
        binary: QemuConfig::default_binary(),
        accel: Accel::Kvm,
        cpus: 1,
        memory_mib: 256,
        kernel: kernel.to_path_buf(),
        initrd: initramfs.to_path_buf(),
        cmdline_extra: vec![],
        disk: None,
        dir: run.path().to_path_buf(),
        agent_socket: Some("agent.sock".into()),
        qmp_socket: None,
        serial_log: dir.path().join("console.log"),
        network: false,
        incoming: None,
        outlive_parent: false,
        memory_file: None,
        extra_disks: Vec::new(),
    };
    let t0 = std::time::Instant::now();
    let mut qemu = Qemu::spawn(&config, &dir.path().join("qemu.log")).map_err(|e| e.to_string())?;
    let result = tokio::select! {
        r = crate::machine::connect_agent(&agent_socket, PROBE_TIMEOUT) => {
            r.map(|_| t0.elapsed()).map_err(|e| e.to_string())
        }
        st = qemu.wait() => {
            let log = std::fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default();
            Err(format!("qemu exited ({}): {}", st.map(|s| s.to_string()).unwrap_or_default(), log.trim()))
        }
    };
    qemu.kill().await;
    result
}
