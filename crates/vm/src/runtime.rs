//! Everything needed before any VM boots on this host: the guest kernel, the
//! initramfs with the agent, and the accelerator; plus booting a volume.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wisp_nbd::BlockDevice;

use crate::accel::{self, AccelChoice};
use crate::initramfs::{self, InitramfsError};
use crate::kernel::{Kernel, KernelError};
use crate::machine::MachineConfig;

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
    pub accel: AccelChoice,
}

impl Runtime {
    /// Fetches the kernel if none is cached, builds the initramfs for the
    /// agent found by [`initramfs::find_agent`] and chooses the accelerator
    /// (a probe boot the first time on a host with `/dev/kvm`).
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
        let accel = accel::choose(home, &kernel.vmlinuz(), &initramfs, &kernel.version).await;
        Ok(Runtime {
            home: home.to_path_buf(),
            kernel,
            initramfs,
            accel,
        })
    }

    /// A machine configuration for `disk`, with sockets and logs under
    /// `$WISP_HOME/run/<name>/`.
    pub fn machine_config(&self, disk: Arc<dyn BlockDevice>, name: &str) -> MachineConfig {
        let mut c = MachineConfig::new(
            disk,
            self.kernel.vmlinuz(),
            self.initramfs.clone(),
            self.home.join("run").join(name),
        );
        c.accel = self.accel.accel;
        c
    }
}
