//! Everything needed before any VM boots on this host: the guest kernel, the
//! initramfs with the agent, and the accelerator; plus booting a volume.
//!
//! The accelerator is chosen in the background (a KVM probe boot may take
//! seconds on a new host): a boot that finds the choice still pending waits at
//! most [`ACCEL_WAIT`], then runs under TCG rather than wait for the probe.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wisp_nbd::BlockDevice;

use crate::accel::{self, AccelChoice};
use crate::initramfs::{self, InitramfsError};
use crate::kernel::{Kernel, KernelError};
use crate::machine::MachineConfig;
use crate::qemu::Accel;

/// The longest a boot waits for a pending accelerator choice before it runs
/// under TCG: less than a TCG boot takes here, so waiting never costs more
/// than giving up on KVM for that one boot would.
pub const ACCEL_WAIT: Duration = Duration::from_secs(3);

/// Errors while preparing the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("guest kernel: {0}")]
    Kernel(#[from] KernelError),
    #[error("initramfs: {0}")]
    Initramfs(#[from] InitramfsError),
}

/// Kernel, initramfs and accelerator of this host, under `$WISP_HOME`.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub home: PathBuf,
    pub kernel: Kernel,
    pub initramfs: PathBuf,
    /// `None` while the choice (a probe boot) is being made.
    accel: tokio::sync::watch::Receiver<Option<AccelChoice>>,
}

impl Runtime {
    /// Fetches the kernel if none is cached, builds the initramfs for the
    /// agent of [`initramfs::find_agent`], and starts choosing the accelerator
    /// in the background (a probe boot the first time on a host with `/dev/kvm`;
    /// see [`Runtime::accel`]).
    pub async fn prepare(home: &Path) -> Result<Runtime, RuntimeError> {
        let h = home.to_path_buf();
        let kernel = tokio::task::spawn_blocking(move || {
            // Measured once per process (150 ms): not on a boot's path later.
            crate::clock::host_tsc_khz();
            Kernel::ensure(&h)
        })
        .await
        .map_err(|e| KernelError::Io {
            path: home.join("kernel"),
            source: std::io::Error::other(e),
        })??;
        let agent = initramfs::find_agent()?;
        let initramfs = initramfs::ensure(&kernel, &agent)?;
        let (tx, rx) = tokio::sync::watch::channel(None);
        let (h, vmlinuz, initrd, version) = (
            home.to_path_buf(),
            kernel.vmlinuz(),
            initramfs.clone(),
            kernel.version.clone(),
        );
        tokio::spawn(async move {
            let choice = accel::choose(&h, &vmlinuz, &initrd, &version).await;
            let _ = tx.send(Some(choice));
        });
        Ok(Runtime {
            home: home.to_path_buf(),
            kernel,
            initramfs,
            accel: rx,
        })
    }

    /// The accelerator for a boot now: the choice once made; while it is
    /// pending, waits for it at most [`ACCEL_WAIT`], then TCG for this boot.
    pub async fn accel(&self) -> AccelChoice {
        let mut rx = self.accel.clone();
        let waited = tokio::time::timeout(ACCEL_WAIT, rx.wait_for(Option::is_some)).await;
        if let Ok(Ok(choice)) = waited {
            if let Some(choice) = choice.clone() {
                return choice;
            }
        }
        AccelChoice {
            accel: Accel::Tcg,
            reason: format!(
                "the accelerator probe was still running after {ACCEL_WAIT:?}; this boot uses TCG"
            ),
            host_kernel: String::new(),
            guest_kernel: self.kernel.version.clone(),
        }
    }

    /// The final accelerator choice, however long the probe takes (for reports).
    pub async fn settled_accel(&self) -> Option<AccelChoice> {
        let mut rx = self.accel.clone();
        rx.wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|c| c.clone())
    }

    /// A machine configuration for `disk`, with sockets and logs under
    /// `$WISP_HOME/run/<name>/`, on the accelerator of [`Runtime::accel`].
    pub async fn machine_config(&self, disk: Arc<dyn BlockDevice>, name: &str) -> MachineConfig {
        let mut c = MachineConfig::new(
            disk,
            self.kernel.vmlinuz(),
            self.initramfs.clone(),
            self.home.join("run").join(name),
        );
        c.accel = self.accel().await.accel;
        c
    }
}
