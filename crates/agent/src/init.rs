//! PID-1 duties: early mounts, kernel modules, switching from the initramfs to the root
//! disk, hostname, network, growing the root filesystem, finding the agent port, and the
//! clean power-off.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wisp_proto::{Control, PORT_NAME};

use std::sync::Arc;

use crate::channel::Out;
use crate::net;
use crate::reaper::Reaper;
use crate::sys::{cstring, cvt};

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// `wisp.*` parameters of the kernel command line.
pub struct Cmdline(HashMap<String, String>);

impl Cmdline {
    pub fn read() -> Cmdline {
        Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }

    pub fn parse(s: &str) -> Cmdline {
        Cmdline(
            s.split_whitespace()
                .filter_map(|w| w.strip_prefix("wisp."))
                .map(|w| match w.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (w.to_string(), String::new()),
                })
                .collect(),
        )
    }

    pub fn get<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.0.get(key).map(String::as_str).unwrap_or(default)
    }
}

pub fn log(msg: &str) {
    eprintln!("wisp-agent: {msg}");
}

/// Guest uptime in seconds, as text (for boot-time diagnostics on the console).
pub fn uptime() -> String {
    let u = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    u.split_whitespace().next().unwrap_or("?").to_string()
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let _ = std::fs::create_dir_all(target);
    match crate::sys::mount(src, target, fstype, flags, data) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        r => r,
    }
}

fn mount_logged(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    if let Err(e) = mount(src, target, fstype, flags, data) {
        log(&format!("mount {fstype} on {target}: {e}"));
    }
}

fn is_mountpoint(p: &str) -> bool {
    let meta = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).ok()?).into();
    let a: Option<u64> = meta(Path::new(p));
    let b: Option<u64> = meta(&Path::new(p).join(".."));
    a.is_some() && a != b
}

/// Makes fds 0-2 point at the console when the kernel left them closed (an initramfs
/// without `/dev/console`).
fn ensure_console() {
    // SAFETY: fcntl F_GETFD on a possibly closed descriptor only reports EBADF.
    if unsafe { libc::fcntl(2, libc::F_GETFD) } != -1 {
        return;
    }
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

fn root_is_initramfs() -> bool {
    // SAFETY: statfs fills a plain struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = CString::new("/").unwrap_or_default();
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    let t = st.f_type as i64;
    t == RAMFS_MAGIC || t == TMPFS_MAGIC
}

/// Loads the modules listed in `/etc/wisp-modules`, in order: one `.ko` path per line,
/// optionally followed by module parameters; `#` starts a comment.
fn load_modules() {
    let Ok(list) = std::fs::read_to_string("/etc/wisp-modules") else {
        return;
    };
    for line in list.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, params) = line.split_once(' ').unwrap_or((line, ""));
        if let Err(e) = load_module(path, params.trim()) {
            log(&format!("module {path}: {e}"));
        }
    }
}

fn load_module(path: &str, params: &str) -> io::Result<()> {
    let f = File::open(path)?;
    let p = cstring(params)?;
    // Compressed modules are decompressed by the kernel (MODULE_INIT_COMPRESSED_FILE).
    let flags = if path.ends_with(".ko") { 0 } else { 4 };
    // SAFETY: finit_module reads the module from the open descriptor.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), p.as_ptr(), flags) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

fn wait_for(path: &Path, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    path.exists()
}

/// Mounts the root disk at /newroot, moves the early mounts into it and makes it `/`.
fn switch_root(cmd: &Cmdline) -> io::Result<()> {
    let dev = cmd.get("root", "/dev/vda");
    if !wait_for(Path::new(dev), Duration::from_secs(30)) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("root device `{dev}` did not appear"),
        ));
    }
    let fstype = cmd.get("rootfstype", "ext4");
    mount(dev, "/newroot", fstype, 0, cmd.get("rootflags", ""))?;
    for d in ["dev", "proc", "sys"] {
        let target = format!("/newroot/{d}");
        mount(&format!("/{d}"), &target, "", libc::MS_MOVE, "")?;
    }
    std::env::set_current_dir("/newroot")?;
    mount(".", "/", "", libc::MS_MOVE, "")?;
    let dot = cstring(".")?;
    // SAFETY: chroot to the current directory.
    cvt(unsafe { libc::chroot(dot.as_ptr()) })?;
    std::env::set_current_dir("/")?;
    Ok(())
}

fn setup_network(cmd: &Cmdline) {
    if let Err(e) = net::link_up("lo") {
        log(&format!("lo: {e}"));
    }
    if cmd.get("net", "on") == "off" {
        return;
    }
    let dev = cmd.get("netdev", "eth0");
    if !wait_for(
        &Path::new("/sys/class/net").join(dev),
        Duration::from_secs(10),
    ) {
        log(&format!("network device {dev} did not appear"));
        return;
    }
    let Some((ip, prefix)) = net::parse_cidr(cmd.get("ip", "10.0.2.15/24")) else {
        return log("bad wisp.ip");
    };
    if let Err(e) = net::configure(dev, ip, prefix) {
        return log(&format!("{dev}: {e}"));
    }
    if let Ok(gw) = cmd.get("gw", "10.0.2.2").parse() {
        if let Err(e) = net::default_route(gw) {
            log(&format!("default route: {e}"));
        }
    }
    let dns = cmd.get("dns", "10.0.2.3");
    let want = format!("nameserver {dns}\n");
    if std::fs::read_to_string("/etc/resolv.conf").ok().as_deref() != Some(want.as_str()) {
        // A dangling symlink (systemd-resolved images) would make the write fail.
        let _ = std::fs::remove_file("/etc/resolv.conf");
        if let Err(e) = std::fs::write("/etc/resolv.conf", want) {
            log(&format!("/etc/resolv.conf: {e}"));
        }
    }
}

/// Grows the root filesystem to the disk's size when the disk is clearly bigger (first
/// boot of a fork of a small image on a 100 GiB disk). Online resize: no unmount needed.
fn grow_root(dev: &str, reaper: &Reaper) {
    let Some(resize2fs) = ["/sbin/resize2fs", "/usr/sbin/resize2fs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        return;
    };
    let Ok(f) = File::open(dev) else { return };
    let mut dev_size: u64 = 0;
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: BLKGETSIZE64 writes one u64.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut dev_size) } != 0 {
        return;
    }
    // SAFETY: statvfs fills a plain struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = CString::new("/").unwrap_or_default();
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return;
    }
    let fs_size = st.f_blocks * st.f_frsize;
    if dev_size > fs_size + fs_size / 50 + (64 << 20) {
        log(&format!("growing {dev} from {fs_size} to {dev_size} bytes"));
        // Through the reaper: it reaps every child, so std must not wait for this one.
        let mut cmd = std::process::Command::new(resize2fs);
        cmd.arg(dev);
        match reaper.spawn(&mut cmd).map(|(_, rx)| rx.recv()) {
            Ok(Ok(st)) if st.success() => {}
            Ok(st) => log(&format!("resize2fs {dev} failed: {st:?}")),
            Err(e) => log(&format!("resize2fs: {e}")),
        }
    }
}

/// Makes the hostname resolve locally (`sudo` and others complain otherwise).
fn ensure_hosts_entry(host: &str) {
    let current = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let known = current
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .any(|l| l.split_whitespace().skip(1).any(|name| name == host));
    if known {
        return;
    }
    let mut text = current;
    if !text.contains("localhost") {
        text.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("127.0.1.1\t{host}\n"));
    if let Err(e) = std::fs::write("/etc/hosts", text) {
        log(&format!("/etc/hosts: {e}"));
    }
}

/// The agent port's device: `/dev/<entry>` for the `/sys/class/virtio-ports/<entry>`
/// whose `name` is `name`.
fn find_port(name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if n.trim() == name {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

/// Everything PID 1 does before serving: mounts, modules, the switch to the root disk,
/// hostname; network and filesystem growth start in the background.
pub fn boot(reaper: &Arc<Reaper>) {
    mount_logged("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    ensure_console();
    mount_logged(
        "proc",
        "/proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    );
    mount_logged(
        "sysfs",
        "/sys",
        "sysfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    );
    let cmd = Cmdline::read();
    log(&format!("init (uptime {} s)", uptime()));
    if root_is_initramfs() {
        load_modules();
        log(&format!("modules loaded (uptime {} s)", uptime()));
        if cmd.get("root", "/dev/vda") != "none" {
            if let Err(e) = switch_root(&cmd) {
                // Keep going on the initramfs: the host can still exec and see what is wrong.
                log(&format!("switching to the root disk: {e}"));
            }
        }
    }
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o022) };
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    mount_logged(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    );
    mount_logged("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777");
    if !is_mountpoint("/tmp") {
        mount_logged("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777");
    }
    mount_logged("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755");
    let host = cmd.get("hostname", "sprite");
    // SAFETY: pointer and length describe the hostname bytes.
    unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) };
    ensure_hosts_entry(host);
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    let net_cmd = Cmdline(cmd.0.clone());
    let _ = std::thread::Builder::new()
        .name("net".into())
        .spawn(move || setup_network(&net_cmd));
    let root = cmd.get("root", "/dev/vda").to_string();
    let r = reaper.clone();
    let _ = std::thread::Builder::new()
        .name("growfs".into())
        .spawn(move || grow_root(&root, &r));
}

/// Waits for the agent's virtio-serial port and opens it.
pub fn open_port() -> File {
    let cmd = Cmdline::read();

    let port_name = cmd.get("port", PORT_NAME).to_string();
    let mut warned = Instant::now();
    loop {
        if let Some(p) = find_port(&port_name) {
            // ONE read-write descriptor for the agent's whole life: reopening the port
            // loses data the host already sent.
            match std::fs::OpenOptions::new().read(true).write(true).open(&p) {
                Ok(f) => return f,
                Err(e) => log(&format!("open {}: {e}", p.display())),
            }
        }
        if warned.elapsed() > Duration::from_secs(10) {
            log(&format!("still waiting for virtio port `{port_name}`"));
            warned = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last step of `shutdown` as PID 1: end every process, make the root consistent
/// on disk, answer `ok`, power off.
/// Waits until no user process but this one is alive (kernel threads and zombies do not
/// count), or `limit` passed.
fn wait_for_no_processes(limit: Duration) {
    let deadline = Instant::now() + limit;
    while others_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `/proc` lists a live user process other than PID 1: one that is not a zombie
/// and not a kernel thread (kthreadd, PID 2, and its children).
fn others_alive() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid > 2)
        .any(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) S ppid ...`: the name may hold spaces and parentheses.
            let mut rest = stat
                .rsplit_once(')')
                .map(|(_, r)| r)
                .unwrap_or("")
                .split_whitespace();
            let state = rest.next().unwrap_or("Z");
            let ppid = rest.next().unwrap_or("2");
            state != "Z" && state != "X" && ppid != "2"
        })
}

pub fn power_off(out: &Out, session: u32) -> ! {
    // SAFETY: signals every process but ourselves.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    // Up to 300 ms for them to end, but no longer than they take: with nothing left
    // running (the usual case) the machine powers off at once.
    wait_for_no_processes(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    wait_for_no_processes(Duration::from_millis(100));
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if let Err(e) = mount("", "/", "", libc::MS_REMOUNT | libc::MS_RDONLY, "") {
        log(&format!("remount / read-only: {e}; freezing it instead"));
        if let Ok(f) = File::open("/") {
            const FIFREEZE: libc::c_ulong = 0xc004_5877;
            // SAFETY: FIFREEZE takes no argument.
            unsafe { libc::ioctl(f.as_raw_fd(), FIFREEZE as _, 0) };
        }
    }
    out.control(session, &Control::Ok);
    let _ = io::stderr().flush();
    // SAFETY: powers the machine off; does not return on success.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Puts `sprite-env` (this binary: see `api::client_main`) at `/.sprite/bin/sprite-env`,
/// rewritten only when it differs, and links `/usr/local/bin/sprite-env` to it so it is
/// on the PATH. Failures are logged: a sprite without it still runs.
pub fn install_sprite_env() {
    let target = Path::new("/.sprite/bin/sprite-env");
    let me = match std::fs::read("/proc/self/exe") {
        Ok(bytes) => bytes,
        Err(e) => return log(&format!("sprite-env: cannot read the agent binary: {e}")),
    };
    if std::fs::read(target).ok().as_deref() != Some(me.as_slice()) {
        let tmp = target.with_extension("tmp");
        let written = std::fs::create_dir_all("/.sprite/bin")
            .and_then(|()| std::fs::write(&tmp, &me))
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            })
            .and_then(|()| std::fs::rename(&tmp, target));
        if let Err(e) = written {
            return log(&format!(
                "sprite-env: cannot install {}: {e}",
                target.display()
            ));
        }
    }
    let link = Path::new("/usr/local/bin/sprite-env");
    if std::fs::read_link(link).ok().as_deref() != Some(target) {
        let _ = std::fs::create_dir_all("/usr/local/bin");
        let _ = std::fs::remove_file(link);
        if let Err(e) = std::os::unix::fs::symlink(target, link) {
            log(&format!("sprite-env: cannot link {}: {e}", link.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_parameters() {
        let c = Cmdline::parse("console=ttyS0 wisp.hostname=box wisp.net=off quiet wisp.flag");
        assert_eq!(c.get("hostname", "x"), "box");
        assert_eq!(c.get("net", "on"), "off");
        assert_eq!(c.get("flag", "d"), "");
        assert_eq!(c.get("port", PORT_NAME), PORT_NAME);
    }
}
