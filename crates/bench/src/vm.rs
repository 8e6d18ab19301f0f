//! VM figures (`--vm`), the four targets of issue 4 in one run:
//! - the whole `wisp vm run --image tiny -- true` process against a bare QEMU boot of the
//!   same kernel (same modules loaded, root from a local raw ext4 file) whose root init
//!   powers the machine off at once, whole process: ratio <= 1.3;
//! - "start this sprite" (open its volume, serve it, boot) to "agent ready" against the
//!   same bare boot up to the moment its root's init prints: ratio <= 1.15;
//! - the exec round trip of `true` on a running sprite (median of [`EXEC_RUNS`]): < 20 ms;
//! - the resident memory of the `wisp vm run` process serving a running sprite (QEMU, which
//!   holds the guest's RAM, excluded): < 30 MiB.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::{Row, Target};
use crate::wisp::Wisp;
use crate::{engine, median, ms, procs, Ctx};

const SECTION: &str = "vm";
const SAMPLES: usize = 5;
/// Exec round trips of `true` timed on one running sprite.
const EXEC_RUNS: usize = 50;
/// Printed by the reference root's init: proves the boot got there.
const MARKER: &str = "WISP-BENCH-ROOT-INIT";

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

/// One reference boot: when the root's init printed [`MARKER`] and when QEMU exited
/// (after the power-off), both from QEMU's spawn.
#[derive(Debug, Clone, Copy)]
pub struct BareBoot {
    pub to_init: Duration,
    pub whole: Duration,
}

/// What the reference boot's QEMU and kernel are told.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flags {
    /// QEMU's default CPU model and the least kernel command line a console boot
    /// needs (plus the TSC arguments without which TCG guests hang under load).
    Bare,
    /// wisp's own: [`wisp_vm::qemu::kernel_cmdline`], [`wisp_vm::qemu::cpu_model`] and
    /// the balloon device, so a flag that taxes every boot shows against `Bare`
    /// (`init_on_free=1` added a second, `-cpu max` 0.15-0.2 s, unseen while the
    /// reference used them too).
    Production,
}

/// Boots the reference once under TCG (as wisp does on these machines). The console is
/// QEMU's stdout, read as it comes, so the moment the root's init runs is seen at once.
pub fn bare_boot(
    kernel: &KernelFiles,
    initrd: &Path,
    root: &Path,
    flags: Flags,
) -> Result<BareBoot> {
    let qemu = wisp_testkit::require_tool("qemu-system-x86_64", "qemu-system-x86");
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "microvm,acpi=on", "-accel", "tcg"]);
    let cmdline = match flags {
        Flags::Bare => format!(
            "console=ttyS0 quiet panic=-1 reboot=t {}",
            wisp_vm::clock::tsc_kernel_args(wisp_vm::clock::host_tsc_khz())
        ),
        Flags::Production => {
            if let Some(model) = wisp_vm::qemu::cpu_model(wisp_vm::Accel::Tcg) {
                cmd.args(["-cpu", model]);
            }
            cmd.args(["-device", wisp_vm::qemu::BALLOON_DEVICE]);
            wisp_vm::qemu::kernel_cmdline()
        }
    };
    cmd.args(["-m", "1024M", "-smp", "2"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio"])
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
        .args(["-append", &cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    procs::die_with_parent(&mut cmd);
    let start = Instant::now();
    let mut child = cmd.spawn().context("start the reference QEMU")?;
    let mut out = child.stdout.take().context("qemu stdout")?;
    let mut console = Vec::new();
    let mut to_init = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = out.read(&mut buf).context("read the reference console")?;
        if n == 0 {
            break;
        }
        console.extend_from_slice(&buf[..n]);
        if to_init.is_none() && memmem(&console, MARKER.as_bytes()) {
            to_init = Some(start.elapsed());
        }
    }
    let status = child.wait()?;
    let whole = start.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let Some(to_init) = to_init else {
        let text = String::from_utf8_lossy(&console);
        let tail: String = text
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!("the reference VM did not reach its root's init ({status}); qemu: {err}\nconsole tail:\n{tail}");
    };
    Ok(BareBoot { to_init, whole })
}

fn memmem(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Medians of [`SAMPLES`] reference boots after one warm-up boot, bare and with
/// wisp's flags, interleaved (so a change of the machine's load hits both).
pub fn reference(kernel: &KernelFiles, dir: &Path) -> Result<(BareBoot, BareBoot)> {
    let (initrd, root) = build_reference(dir, kernel)?;
    bare_boot(kernel, &initrd, &root, Flags::Bare)?;
    let (mut bare, mut production) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        bare.push(bare_boot(kernel, &initrd, &root, Flags::Bare)?);
        production.push(bare_boot(kernel, &initrd, &root, Flags::Production)?);
    }
    let medians = |samples: &[BareBoot]| BareBoot {
        to_init: median(samples.iter().map(|s| s.to_init).collect()),
        whole: median(samples.iter().map(|s| s.whole).collect()),
    };
    Ok((medians(&bare), medians(&production)))
}

/// Figures of sprites started through the library, as `wisp` does.
pub struct SpriteFigures {
    /// Open the volume, serve it, boot, agent answers: median of [`SAMPLES`].
    pub ready: Duration,
    pub exec_rtt: Duration,
    pub exec_min: Duration,
    /// A `ping` round trip: the channel without any process creation.
    pub ping_rtt: Duration,
    pub stop: Duration,
}

/// Boots [`SAMPLES`] forks of `tiny` in this process; on the first, times [`EXEC_RUNS`]
/// execs of `true` and as many pings.
pub fn sprites(wisp: &Wisp) -> Result<SpriteFigures> {
    engine::runtime().block_on(async {
        let rt = wisp_vm::Runtime::prepare(&wisp.home)
            .await
            .context("prepare kernel, initramfs and accelerator")?;
        let store = engine::open_store(&wisp.store_url()?, &wisp.cache_dir(), &wisp.env).await?;
        let img = wisp_vm::image::get(&wisp.home, wisp_vm::ImageKind::Tiny)?;
        let (mut ready, mut stops) = (Vec::new(), Vec::new());
        let (mut exec, mut pings) = (Vec::new(), Vec::new());
        for i in 0..SAMPLES {
            let name = format!("bench-vm-{}-{i}", std::process::id());
            store.fork(&img.volume, &img.checkpoint, &name).await?;
            let t0 = Instant::now();
            let volume = Arc::new(store.open_volume(&name).await?);
            let m = wisp_vm::Machine::start(rt.machine_config(volume.clone(), &name).await).await?;
            ready.push(t0.elapsed());
            if i == 0 {
                for _ in 0..3 {
                    m.agent().run(["true"]).await?;
                }
                for _ in 0..EXEC_RUNS {
                    let t = Instant::now();
                    let out = m.agent().run(["true"]).await?;
                    anyhow::ensure!(out.status.success(), "`true` failed: {:?}", out.status);
                    exec.push(t.elapsed());
                }
                for _ in 0..EXEC_RUNS {
                    pings.push(m.agent().ping().await?);
                }
            }
            let t1 = Instant::now();
            m.stop().await?;
            if let Ok(v) = Arc::try_unwrap(volume) {
                v.close().await?;
            }
            stops.push(t1.elapsed());
            store.delete_volume(&name).await?;
        }
        let exec_min = exec.iter().min().copied().unwrap_or_default();
        anyhow::Ok(SpriteFigures {
            ready: median(ready),
            exec_rtt: median(exec),
            exec_min,
            ping_rtt: median(pings),
            stop: median(stops),
        })
    })
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
pub(crate) fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The children of `pid` (QEMU is the only child of `wisp vm run`).
fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Resident memory of `wisp vm run` and its QEMU, in bytes.
pub struct Memory {
    /// Largest RSS of `wisp vm run` sampled while the guest runs a command,
    /// from one second after the command started (boot's buffers released).
    pub running: u64,
    /// `VmHWM` of `wisp vm run` at the end of those samples: its peak over
    /// the whole run, boot (reading the image into the cache) included.
    pub peak: u64,
    /// Largest RSS of its QEMU over the samples.
    pub qemu: u64,
}

/// Memory of one `wisp vm run` while the guest runs a command.
pub fn memory(wisp: &Wisp) -> Result<Memory> {
    let script = "echo up; sleep 4";
    let mut cmd = wisp.cmd(["vm", "run", "--image", "tiny", "--", "sh", "-c", script]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    procs::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().context("start `wisp vm run`")?;
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().context("wisp stdout")?).lines();
    let first = lines.next().transpose()?;
    anyhow::ensure!(
        first.as_deref() == Some("up"),
        "`wisp vm run` printed {first:?} instead of `up`"
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut m = Memory {
        running: 0,
        peak: 0,
        qemu: 0,
    };
    for _ in 0..10 {
        m.running = m.running.max(status_bytes(pid, "VmRSS").unwrap_or(0));
        let q: u64 = children(pid)
            .into_iter()
            .filter_map(|c| status_bytes(c, "VmRSS"))
            .sum();
        m.qemu = m.qemu.max(q);
        std::thread::sleep(Duration::from_millis(200));
    }
    m.peak = status_bytes(pid, "VmHWM").unwrap_or(0);
    for _ in lines {}
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "`wisp vm run -- sh -c ...` failed: {status}"
    );
    Ok(m)
}

/// Figures of sprites run by `wisp server`, through its API.
pub struct DaemonFigures {
    /// Exec of `true` on a sleeping sprite, request to exit code: median of [`SAMPLES`].
    pub wake: Duration,
    /// Exec of `true` on an awake sprite over the WebSocket: median of [`EXEC_RUNS`].
    pub exec_rtt: Duration,
    /// From the last exec to the sprite reported cold (idle timeout 1 s + the stop).
    pub to_sleep: Duration,
    /// RSS of `wisp server` with no sprite awake, and with [`MEMORY_SPRITES`] awake.
    pub rss_idle: u64,
    pub rss_awake: u64,
    /// A small GET through the router to a server in an awake sprite, and the same
    /// GET through `wisp sprite proxy` (the other way in, the same agent tunnel):
    /// medians of [`EXEC_RUNS`].
    pub routed_get: Duration,
    pub proxied_get: Duration,
}

/// Medians of [`EXEC_RUNS`] GETs of `url` (after 3 unmeasured), each must answer 200.
async fn timed_gets(
    http: &reqwest::Client,
    url: &str,
    host: &str,
    token: &str,
) -> Result<Duration> {
    let mut samples = Vec::new();
    for i in 0..EXEC_RUNS + 3 {
        let t = Instant::now();
        let response = http
            .get(url)
            .header("host", host)
            .bearer_auth(token)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "GET {url} (host {host}): {}",
            response.status()
        );
        response.bytes().await?;
        if i >= 3 {
            samples.push(t.elapsed());
        }
    }
    Ok(median(samples))
}

/// Sprites kept awake at once for the daemon's memory figure.
const MEMORY_SPRITES: usize = 3;

/// Runs `true` through the daemon's exec WebSocket; how long until its exit code came.
pub(crate) async fn api_exec(
    client: &wisp_control::client::Client,
    name: &str,
) -> Result<Duration> {
    use wisp_control::client::{ExecOptions, ExecOutput};
    let t = Instant::now();
    let options = ExecOptions {
        argv: vec!["true".into()],
        ..Default::default()
    };
    let (_sender, mut receiver) = client.exec(name, &options).await?;
    loop {
        match receiver.recv().await? {
            Some(ExecOutput::Exit(0)) => return Ok(t.elapsed()),
            Some(ExecOutput::Exit(code)) => bail!("`true` exited with {code}"),
            Some(_) => {}
            None => bail!("the exec ended without an exit code"),
        }
    }
}

/// Waits (at most 120 s) until sprite `name` is asleep (warm or cold); returns how
/// long that took.
pub(crate) async fn until_asleep(
    client: &wisp_control::client::Client,
    name: &str,
) -> Result<Duration> {
    let t = Instant::now();
    while client.get(name).await?.status == "running" {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(120),
            "the sprite never went to sleep"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(t.elapsed())
}

/// Starts `wisp server` (idle timeout 1 s, sprites sleeping cold: a wake here is a
/// boot) and measures waking a sprite by an exec, execs on an awake one, and the way
/// back to sleep.
pub fn daemon(wisp: &Wisp, dir: &Path) -> Result<DaemonFigures> {
    let (server, client) = wisp.server(dir, &["--idle-timeout", "1s", "--sleep-mode", "cold"])?;
    let pid = server.pid().context("wisp server is not running")?;
    let figures = engine::runtime().block_on(async {
        let name = "bench";
        client
            .create(name, wisp_control::registry::UrlAuth::Sprite)
            .await?;
        let asleep = async || until_asleep(&client, name).await;
        // A first wake prepares the kernel, initramfs and accelerator: not a sample.
        api_exec(&client, name).await?;
        let (mut wakes, mut sleeps, mut execs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..SAMPLES {
            sleeps.push(asleep().await?);
            wakes.push(api_exec(&client, name).await?);
            if i == 0 {
                for _ in 0..EXEC_RUNS {
                    execs.push(api_exec(&client, name).await?);
                }
            }
        }
        // The router: a server in the sprite (busybox httpd on port 8080), the sprite
        // held awake by a long exec, GETs through the daemon's router and through
        // `wisp sprite proxy`.
        let hold = wisp_control::client::ExecOptions {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo ok > /tmp/index.html; busybox httpd -f -p 8080 -h /tmp".into(),
            ],
            ..Default::default()
        };
        let holding = client.exec(name, &hold).await?;
        let token = std::fs::read_to_string(wisp.home.join("token"))?;
        let http = reqwest::Client::new();
        let api_port = client
            .base()
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let routed_url = format!("http://127.0.0.1:{api_port}/index.html");
        // The server starts with the exec: wait for it through the router.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = http
                .get(&routed_url)
                .header("host", format!("{name}.localhost"))
                .bearer_auth(token.trim())
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status() == 200) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server in the sprite did not answer: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let routed_get = timed_gets(
            &http,
            &routed_url,
            &format!("{name}.localhost"),
            token.trim(),
        )
        .await?;
        let proxy_port = wisp_testkit::free_port();
        let mut proxy = wisp.cmd(["sprite", "proxy", "--api", client.base(), name]);
        proxy.arg(format!("8080:{proxy_port}"));
        let proxying = procs::Server::spawn("wisp sprite proxy", proxy, &dir.join("proxy.log"))?;
        let proxied_url = format!("http://127.0.0.1:{proxy_port}/index.html");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http.get(&proxied_url).send().await, Ok(r) if r.status() == 200) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "`wisp sprite proxy` did not answer on port {proxy_port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let proxied_get = timed_gets(&http, &proxied_url, "localhost", token.trim()).await?;
        drop(proxying);
        drop(holding);

        // Memory: the daemon with every sprite asleep, then with MEMORY_SPRITES awake
        // (each held by a long exec session), sampled once they all run.
        asleep().await?;
        let rss = || status_bytes(pid, "VmRSS").unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_idle = rss();
        let mut sessions = Vec::new();
        for i in 0..MEMORY_SPRITES {
            let sprite = format!("mem{i}");
            client
                .create(&sprite, wisp_control::registry::UrlAuth::Sprite)
                .await?;
            let options = wisp_control::client::ExecOptions {
                argv: vec!["sleep".into(), "600".into()],
                ..Default::default()
            };
            // Returned once the sprite is awake and the command started.
            sessions.push(client.exec(&sprite, &options).await?);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut rss_awake = 0;
        for _ in 0..4 {
            rss_awake = rss_awake.max(rss());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(sessions);
        anyhow::Ok(DaemonFigures {
            wake: median(wakes),
            exec_rtt: median(execs),
            to_sleep: median(sleeps),
            rss_idle,
            rss_awake,
            routed_get,
            proxied_get,
        })
    });
    server.terminate(Duration::from_secs(60))?;
    figures
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
    let (bare, production) = reference(&kernel, &dir)?;
    let sprite = sprites(&wisp)?;
    let memory = memory(&wisp)?;
    let daemon = daemon(&wisp, &dir)?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let boot_row = |metric: &str, value: Duration, reference: Duration, at_most: f64| {
        Row::ratio(
            SECTION,
            metric,
            value.as_secs_f64(),
            reference.as_secs_f64(),
            "s",
            Target::RatioAtMost(at_most),
        )
    };
    Ok(vec![
        boot_row("bare boot with wisp's QEMU and kernel flags", production.whole, bare.whole, 1.1).with_note(format!(
            "median of {SAMPLES}, whole process, TCG: wisp's kernel command line, CPU model and devices on the reference; reference: the bare boot (QEMU's default CPU, console-only command line), interleaved"
        )),
        boot_row("wisp vm run --image tiny -- true", wisp_run, bare.whole, 1.3).with_note(format!(
            "median of {SAMPLES}, whole process, TCG; reference: bare QEMU, same kernel and modules, raw root file, init powers off, whole process"
        )),
        boot_row("start sprite to agent ready", sprite.ready, bare.to_init, 1.15).with_note(format!(
            "median of {SAMPLES}: open a fork of tiny, serve it over NBD, boot, agent hello; reference: the bare boot above until its root's init prints"
        )),
        Row::bounded(
            SECTION,
            "exec round trip of `true`",
            ms(sprite.exec_rtt),
            "ms",
            20.0,
        )
        .with_note(format!(
            "median of {EXEC_RUNS} on one running sprite (min {:.1} ms)",
            ms(sprite.exec_min)
        )),
        Row::bounded(
            SECTION,
            "wisp memory per running sprite",
            mib(memory.running),
            "MiB",
            30.0,
        )
        .with_note(format!(
            "largest RSS of the `wisp vm run` process over 2 s while the guest runs a command, from 1 s after it started; its QEMU (1 GiB guest) had {:.0} MiB, not counted",
            mib(memory.qemu)
        )),
        Row::info(
            SECTION,
            "wisp peak memory of a sprite's whole run",
            mib(memory.peak),
            "MiB",
        )
        .with_note("VmHWM of `wisp vm run`, boot included".to_string()),
        boot_row(
            "wake: exec `true` on a sleeping sprite through the API",
            daemon.wake,
            bare.to_init,
            1.3,
        )
        .with_note(format!(
            "median of {SAMPLES}: WebSocket exec to `wisp server` until the exit code (open the volume, serve it, boot, agent hello, run); reference: the bare boot until its root's init prints"
        )),
        Row::ratio(
            SECTION,
            "exec round trip of `true` through the API",
            ms(daemon.exec_rtt),
            ms(sprite.exec_rtt),
            "ms",
            // Issue 9: the API adds at most a fifth to the agent's own round trip.
            Target::RatioAtMost(1.2),
        )
        .with_note(format!(
            "median of {EXEC_RUNS} WebSocket execs on an awake sprite, connection set-up included; reference: the agent's exec in-process above"
        )),
        Row::bounded(
            SECTION,
            "wisp server memory per running sprite",
            mib(daemon.rss_awake.saturating_sub(daemon.rss_idle)) / MEMORY_SPRITES as f64,
            "MiB",
            30.0,
        )
        .with_note(format!(
            "(largest RSS of `wisp server` with {MEMORY_SPRITES} sprites awake, each running a command, minus its RSS with none awake: {:.1} MiB) / {MEMORY_SPRITES}; QEMU not counted",
            mib(daemon.rss_idle)
        )),
        Row::ratio(
            SECTION,
            "GET through the router to an awake sprite",
            ms(daemon.routed_get),
            ms(daemon.proxied_get),
            "ms",
            Target::ValueAtMost(20.0),
        )
        .with_note(format!(
            "median of {EXEC_RUNS} GETs of a small file from busybox httpd in the sprite, via `wisp server` (host `<name>.localhost`, token checked); reference: the same GET through `wisp sprite proxy` (the API's proxy WebSocket to the same agent tunnel)"
        )),
        Row::info(SECTION, "idle sprite to asleep (idle timeout 1 s)", daemon.to_sleep.as_secs_f64(), "s")
            .with_note("from the end of the last exec until the API reports it cold: the timeout plus up to one tick (1 s) of the task that puts idle sprites to sleep".to_string()),
        Row::info(SECTION, "ping round trip", ms(sprite.ping_rtt), "ms")
            .with_note(format!("median of {EXEC_RUNS}: the agent channel alone")),
        Row::info(SECTION, "clean stop", sprite.stop.as_secs_f64(), "s"),
        Row::info(SECTION, "wisp image build tiny", build.as_secs_f64(), "s"),
        Row::info(SECTION, "first wisp vm run (warm-up)", first.as_secs_f64(), "s"),
    ])
}
