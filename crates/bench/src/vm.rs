//! VM figures (`--vm`): the whole `wisp vm run --image tiny -- true` process against a bare
//! QEMU boot of the same kernel (same modules loaded, root from a local raw ext4 file) whose
//! root init powers the machine off at once: the reference of issue 4.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::{Row, Target};
use crate::wisp::Wisp;
use crate::{median, procs, Ctx};

const SECTION: &str = "vm";
const SAMPLES: usize = 3;
/// Printed by the reference root's init: proves the boot got there.
const MARKER: &str = "WISP-BENCH-ROOT-INIT";
/// The kernel command line wisp uses (crates/vm), so both boots do the same work.
const CMDLINE: &str =
    "console=ttyS0 tsc_early_khz=2000000 tsc=reliable lpj=4000000 quiet panic=-1 reboot=t";

/// A guest kernel as wisp caches it: `vmlinuz` plus modules in load order.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    pub vmlinuz: PathBuf,
    pub modules: Vec<PathBuf>,
}

impl KernelFiles {
    /// Reads `DIR/kernel.json` (wisp's cache layout: `vmlinuz`, `modules/`, manifest).
    pub fn load(dir: &Path) -> Result<KernelFiles> {
        let manifest = dir.join("kernel.json");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("read `{}`", manifest.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("parse `{}`", manifest.display()))?;
        let modules = doc
            .get("modules")
            .and_then(|m| m.as_array())
            .context("kernel.json has no `modules` list")?
            .iter()
            .filter_map(|m| m.as_str())
            .map(|m| dir.join("modules").join(m))
            .collect();
        Ok(KernelFiles {
            vmlinuz: dir.join("vmlinuz"),
            modules,
        })
    }

    /// The kernel `wisp` cached under `home/kernel/` (the only or the newest one).
    pub fn cached(home: &Path) -> Result<KernelFiles> {
        let root = home.join("kernel");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .with_context(|| format!("no kernel cached under `{}`", root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("kernel.json").is_file())
            .collect();
        dirs.sort();
        let dir = dirs
            .pop()
            .with_context(|| format!("no kernel.json under `{}`", root.display()))?;
        KernelFiles::load(&dir)
    }
}

/// The reference's initramfs (busybox, the modules, an /init that mounts the root and
/// switches to it) and root image (busybox and an init that prints [`MARKER`] and powers
/// off). Returns `(initrd, root image)`.
pub fn build_reference(dir: &Path, kernel: &KernelFiles) -> Result<(PathBuf, PathBuf)> {
    let busybox = wisp_testkit::require_tool("busybox", "busybox-static");
    wisp_testkit::require_tool("cpio", "cpio");
    wisp_testkit::require_tool("mke2fs", "e2fsprogs");

    let initramfs = dir.join("initramfs");
    std::fs::create_dir_all(initramfs.join("bin"))?;
    std::fs::create_dir_all(initramfs.join("lib/modules"))?;
    std::fs::copy(&busybox, initramfs.join("bin/busybox"))?;
    let mut insmods = String::new();
    for m in &kernel.modules {
        let name = m.file_name().context("module without a file name")?;
        std::fs::copy(m, initramfs.join("lib/modules").join(name))
            .with_context(|| format!("copy module `{}`", m.display()))?;
        insmods.push_str(&format!(
            "/bin/busybox insmod /lib/modules/{}\n",
            name.to_string_lossy()
        ));
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /dev /newroot\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         exec >/dev/console 2>&1\n\
         {insmods}\
         /bin/busybox mount -t ext4 /dev/vda /newroot\n\
         /bin/busybox mount --move /dev /newroot/dev\n\
         exec /bin/busybox switch_root /newroot /sbin/init\n"
    );
    write_executable(&initramfs.join("init"), &init)?;
    let initrd = dir.join("reference.cpio");
    let list = "find . | cpio -o -H newc --quiet";
    let archive = procs::run(
        Command::new("sh")
            .arg("-c")
            .arg(format!("{list} > '{}'", initrd.display()))
            .current_dir(&initramfs),
    );
    archive.context("pack the reference initramfs with cpio")?;

    let root = dir.join("root");
    for d in ["bin", "sbin", "dev", "proc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    write_executable(
        &root.join("sbin/init"),
        &format!("#!/bin/busybox sh\necho {MARKER}\n/bin/busybox poweroff -f\n"),
    )?;
    let image = dir.join("root.img");
    procs::run(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(&root)
            .arg(&image)
            .arg("32M"),
    )?;
    Ok((initrd, image))
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Boots the reference once under TCG (as wisp does on these machines) and returns the
/// wall time of the whole QEMU process, from spawn to its exit on power-off.
pub fn bare_boot(kernel: &KernelFiles, initrd: &Path, root: &Path, dir: &Path) -> Result<Duration> {
    let qemu = wisp_testkit::require_tool("qemu-system-x86_64", "qemu-system-x86");
    let serial = dir.join("serial.log");
    let _ = std::fs::remove_file(&serial);
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max"])
        .args(["-m", "1024M", "-smp", "2"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!(
            "id=root,driver=raw,file={},if=none",
            root.display().to_string().replace(',', ",,")
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", CMDLINE]);
    let start = Instant::now();
    procs::run(&mut cmd)?;
    let took = start.elapsed();
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    if !log.contains(MARKER) {
        bail!(
            "the reference VM did not reach its root's init\n{}",
            procs::log_tail(&serial)
        );
    }
    Ok(took)
}

/// Median of [`SAMPLES`] reference boots after one warm-up boot.
pub fn reference(kernel: &KernelFiles, dir: &Path) -> Result<Duration> {
    let (initrd, root) = build_reference(dir, kernel)?;
    bare_boot(kernel, &initrd, &root, dir)?;
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        samples.push(bare_boot(kernel, &initrd, &root, dir)?);
    }
    Ok(median(samples))
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.scratch("vm")?;
    let wisp = Wisp::new(&ctx.wisp, &dir.join("home"))?;
    if wisp.run(&["vm", "run", "--help"]).is_err() {
        bail!("this wisp has no `wisp vm run` yet");
    }
    let run_true = ["vm", "run", "--image", "tiny", "--", "true"];
    let build = wisp.timed(&["image", "build", "tiny"])?;
    // The first run may still fetch the kernel or build the initramfs: not a sample.
    let first = wisp.timed(&run_true)?;
    let kernel = KernelFiles::cached(&wisp.home)?;
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        samples.push(wisp.timed(&run_true)?);
    }
    let wisp_run = median(samples);
    let bare = reference(&kernel, &dir)?;
    Ok(vec![
        Row::ratio(
            SECTION,
            "wisp vm run --image tiny -- true",
            wisp_run.as_secs_f64(),
            bare.as_secs_f64(),
            "s",
            Target::RatioAtMost(1.3),
        )
        .with_note(format!(
            "median of {SAMPLES}, whole process, TCG; reference: bare QEMU, same kernel and modules, raw root file, init powers off"
        )),
        Row::info(SECTION, "wisp image build tiny", build.as_secs_f64(), "s"),
        Row::info(SECTION, "first wisp vm run (warm-up)", first.as_secs_f64(), "s"),
    ])
}
