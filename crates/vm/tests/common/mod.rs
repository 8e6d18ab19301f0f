//! Shared set-up for the VM tests: the kernel and initramfs cached once per
//! target folder, a `tiny` root filesystem, and a limit of two VMs at a time
//! (TCG on two cores: more would only make every boot slower).

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use wisp_vm::Kernel;

/// The cargo target folder the test binary runs from (`target/debug/deps/x` -> `target`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("test binary under target/<profile>/deps")
        .to_path_buf()
}

/// A WISP_HOME shared by every VM test of this target folder: kernel,
/// initramfs and images are built there once by the library itself.
pub fn shared_home() -> PathBuf {
    let home = target_dir().join("wisp-test-home");
    std::fs::create_dir_all(&home).unwrap();
    home
}

pub struct Boot {
    pub kernel: Kernel,
    pub initramfs: PathBuf,
}

/// Kernel (fetched with apt on first use) and initramfs with the agent.
pub fn boot_files() -> &'static Boot {
    static BOOT: OnceLock<Boot> = OnceLock::new();
    BOOT.get_or_init(|| {
        let home = shared_home();
        let _guard = lock_file(&home.join("kernel.lock"));
        let kernel = Kernel::ensure(&home).expect("guest kernel (apt-get download)");
        let agent = wisp_vm::initramfs::find_agent()
            .expect("wisp-agent: run `make agent-debug` before the VM tests");
        let initramfs = wisp_vm::initramfs::ensure(&kernel, &agent).expect("initramfs");
        Boot { kernel, initramfs }
    })
}

/// An exclusive `flock` on `path`, held until the file is dropped.
pub fn lock_file(path: &Path) -> File {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: flock on an open descriptor.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock {}", path.display());
    f
}

/// One of two VM slots; blocks until one is free.
pub fn vm_slot() -> File {
    let dir = shared_home();
    loop {
        for i in 0..2 {
            let f = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("vm-slot-{i}.lock")))
                .unwrap();
            // SAFETY: flock on an open descriptor.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return f;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
