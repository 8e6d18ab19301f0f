//! Shared set-up for the VM tests: the kernel and initramfs cached once per
//! target folder, a `tiny` root filesystem, and a limit of two VMs at a time
//! (TCG on two cores: more would only make every boot slower).

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// Not every test binary uses each of these.
#[allow(unused_imports)]
pub use wisp_testkit::{free_port, pattern, require_tool};

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

/// The agent wisp boots (built into wisp, or `$WISP_AGENT`).
pub fn agent() -> wisp_vm::initramfs::AgentBinary {
    wisp_vm::initramfs::find_agent().expect("the guest agent")
}

/// The agent as an executable file, for running it on the host in channel mode.
pub fn agent_bin() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = target_dir().join(format!("wisp-agent-test-{}", std::process::id()));
        agent().write_to(&path).expect("write the agent");
        path
    })
    .clone()
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
        let initramfs = wisp_vm::initramfs::ensure(&kernel, &agent()).expect("initramfs");
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

/// A per-test view of the shared test home: its store (with the `tiny`
/// image built once, by the library) and the runtime (kernel, initramfs,
/// accelerator).
pub struct Env {
    pub home: PathBuf,
    pub store: wisp_volume::Store,
    pub runtime: wisp_vm::Runtime,
    pub image: wisp_vm::ImageInfo,
}

pub async fn env() -> Env {
    let home = shared_home();
    // Kernel and initramfs first, under their lock (several test binaries start at once).
    boot_files();
    let config = wisp_volume::StoreConfig::new(
        format!("file://{}", home.join("store").display()),
        home.join("cache"),
    );
    std::fs::create_dir_all(home.join("store")).unwrap();
    let store = wisp_volume::Store::open(config).await.expect("open store");
    let image = {
        let _guard = lock_file(&home.join("image.lock"));
        wisp_vm::image::build(&store, &home, wisp_vm::ImageKind::Tiny, false, &|l| {
            eprintln!("image: {l}")
        })
        .await
        .expect("build the tiny image")
    };
    let runtime = wisp_vm::Runtime::prepare(&home).await.expect("runtime");
    Env {
        home,
        store,
        runtime,
        image,
    }
}

/// A unique volume name for one test.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

/// A running sprite of a test: the machine and its volume.
pub struct Sprite {
    pub machine: wisp_vm::Machine,
    pub volume: std::sync::Arc<wisp_volume::Volume>,
    pub name: String,
}

impl Env {
    /// Forks the tiny image into `name` (if it does not exist yet) and boots it.
    pub async fn boot(&self, name: &str) -> Sprite {
        if self.store.volume_info(name).await.is_err() {
            self.store
                .fork(&self.image.volume, &self.image.checkpoint, name)
                .await
                .expect("fork the image");
        }
        let volume = std::sync::Arc::new(self.store.open_volume(name).await.expect("open"));
        let mut cfg = self.runtime.machine_config(volume.clone(), name).await;
        cfg.boot_timeout = std::time::Duration::from_secs(90);
        let machine = wisp_vm::Machine::start(cfg).await.expect("boot");
        Sprite {
            machine,
            volume,
            name: name.to_string(),
        }
    }
}

impl Sprite {
    /// Runs a shell command, asserting success; returns stdout.
    pub async fn sh(&self, script: &str) -> String {
        sh(self.machine.agent(), script).await
    }

    /// Clean stop, then the volume is closed.
    pub async fn stop(self) {
        self.machine.stop().await.expect("clean stop");
        close(self.volume).await;
    }

    /// SIGKILL to QEMU, then the volume is closed.
    pub async fn kill(self) {
        self.machine.kill().await.expect("kill");
        close(self.volume).await;
    }
}

pub async fn close(volume: std::sync::Arc<wisp_volume::Volume>) {
    match std::sync::Arc::try_unwrap(volume) {
        Ok(v) => v.close().await.expect("close volume"),
        Err(_) => panic!("volume still referenced after the machine stopped"),
    }
}

/// A machine on `disk` with the cached kernel and initramfs, its sockets and logs in
/// `run`, and a boot deadline generous for TCG on a busy host.
pub fn machine_config(
    disk: std::sync::Arc<dyn wisp_nbd::BlockDevice>,
    run: PathBuf,
) -> wisp_vm::MachineConfig {
    let boot = boot_files();
    let mut cfg =
        wisp_vm::MachineConfig::new(disk, boot.kernel.vmlinuz(), boot.initramfs.clone(), run);
    cfg.boot_timeout = std::time::Duration::from_secs(90);
    cfg
}

/// A 1 GiB file-backed disk in `dir` holding the `tiny` root filesystem (256 MiB ext4),
/// for tests that boot without the volume engine.
pub async fn tiny_disk(dir: &Path) -> wisp_nbd::FileDevice {
    let tree = dir.join("tree");
    wisp_vm::rootfs::populate_tiny(&tree).unwrap();
    let image = dir.join("root.ext4");
    wisp_vm::rootfs::make_ext4(&tree, &image, 256 << 20, "root").unwrap();
    let dev = wisp_nbd::FileDevice::create(&dir.join("disk"), 1 << 30).unwrap();
    wisp_vm::rootfs::import_image(&image, &dev, &|_| {})
        .await
        .unwrap();
    dev
}

/// `sh -c SCRIPT` as an argv.
pub fn sh_argv(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// `sh -c 'echo out; echo err >&2; exit 3'`: stdout, stderr and the exit code come back
/// apart.
pub async fn check_stdout_stderr_exit(a: &wisp_vm::agent::AgentClient) {
    let out = a
        .run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        .await
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.code, Some(3));
}

/// Runs `req` to completion and collects its output.
pub async fn output(
    a: &wisp_vm::agent::AgentClient,
    req: wisp_vm::agent::ExecRequest,
) -> wisp_vm::agent::Output {
    a.exec(req).await.unwrap().output().await.unwrap()
}

/// Runs a shell command, asserting success; returns stdout.
pub async fn sh(a: &wisp_vm::agent::AgentClient, script: &str) -> String {
    let out = a.run(["/bin/sh", "-c", script]).await.expect("exec");
    assert!(
        out.status.success(),
        "`{script}` failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Retries `script` until its output satisfies `ok` (background set-up such as the
/// network finishes after the agent is ready). The deadline only turns a hang into a
/// failure.
pub async fn sh_until(
    a: &wisp_vm::agent::AgentClient,
    script: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = a.run(["sh", "-c", script]).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if ok(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{script}` never satisfied: {text:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
