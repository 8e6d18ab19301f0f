//! The QEMU process: the `microvm` command line, the supervised child (killed
//! on drop, always reaped) and a small QMP client over a unix socket.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The QEMU binary used unless `WISP_QEMU` names another.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// Kernel arguments every boot gets, besides the TSC ones of [`kernel_cmdline`].
/// (`init_on_free=1`, once here to keep saved states small, cost a second of every
/// TCG boot: free page reporting does that job now, see [`BALLOON_DEVICE`].)
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t";

/// Names the devices and CPU model [`QemuConfig::args`] gives a machine: a saved
/// state resumes only into a machine of the same layout. Change it with them.
pub const MACHINE_LAYOUT: &str = "microvm-2: default tcg cpu, free page reporting";

/// The memory balloon, never inflated: it carries free page reporting, so pages
/// the guest frees are handed back to QEMU, which discards them (they read as
/// zero, and a saved state holds only the pages in use). See `docs/VM.md`.
pub const BALLOON_DEVICE: &str = "virtio-balloon-device,free-page-reporting=on";

/// The `-cpu` model for `accel`: `host` under KVM (the real CPU passed through);
/// under TCG QEMU's default model (`max`, which emulates every feature TCG has,
/// added 0.15-0.2 s to every boot, and nothing a sprite runs needs it).
pub fn cpu_model(accel: Accel) -> Option<&'static str> {
    match accel {
        Accel::Kvm => Some("host"),
        Accel::Tcg => None,
    }
}

/// [`BASE_CMDLINE`] plus the host's TSC frequency (see [`crate::clock`]): the
/// command line of every guest kernel wisp boots.
pub fn kernel_cmdline() -> String {
    format!(
        "{BASE_CMDLINE} {}",
        crate::clock::tsc_kernel_args(crate::clock::host_tsc_khz())
    )
}

/// Seconds QEMU's NBD client holds a disk request while its server is away (a
/// daemon restarting) before failing it to the guest; it reconnects meanwhile and
/// sends the request again.
pub const NBD_RECONNECT_DELAY_S: u32 = 300;

/// Errors of the QEMU layer.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot start `{binary}`: {source}; install the Debian package `qemu-system-x86`")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("cannot create `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("qmp on `{path}`: {source}")]
    QmpIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("qmp command `{command}` failed: {message}")]
    QmpCommand { command: String, message: String },
    #[error("qmp answered something that is not qmp: {0}")]
    QmpProtocol(String),
    #[error("qemu did not exit within {0:?}")]
    ExitTimeout(Duration),
}

/// The accelerator a VM runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation: slow but runs anywhere.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Where the root disk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// The default export of an NBD server on this unix socket (QEMU's own
    /// NBD client: nothing host-side needs a kernel NBD driver).
    Nbd(PathBuf),
    /// A local raw image file (the benchmark reference).
    RawFile(PathBuf),
}

/// Everything one QEMU invocation needs.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Added after [`kernel_cmdline`] (the agent reads `wisp.*` words).
    pub cmdline_extra: Vec<String>,
    pub disk: Option<DiskSource>,
    /// More disks served by the root disk's NBD server (`DiskSource::Nbd` only),
    /// by export name: each is `-drive id=NAME` with `file.export=NAME` and a
    /// `virtio-blk-device` whose serial is `NAME` (so the guest finds it in
    /// `/sys/block/*/serial`, whatever order the kernel probed it in).
    pub extra_disks: Vec<String>,
    /// QEMU's working directory. The socket paths are given relative to it,
    /// because a unix socket's path must fit 107 bytes (see `run_dir`).
    pub dir: PathBuf,
    /// The virtio-serial port for the agent: QEMU listens on this socket.
    pub agent_socket: Option<PathBuf>,
    pub qmp_socket: Option<PathBuf>,
    /// The guest's serial console goes here.
    pub serial_log: PathBuf,
    /// User-mode networking, outbound only: nothing on the host is forwarded into
    /// the guest (its ports are reached through the agent's TCP tunnels, which reach
    /// a server bound to any of the guest's addresses, loopback included).
    pub network: bool,
    /// Resume from this saved state file (QEMU's migration stream, see
    /// [`Qmp::save_state`]) instead of booting: `-incoming exec:cat FILE`. The VM
    /// stays paused after loading; [`Qmp::resume`] starts it.
    pub incoming: Option<PathBuf>,
    /// Guest RAM in this file, mapped shared (`memory-backend-file,share=on`): with
    /// the `x-ignore-shared` migration capability a save then writes only device
    /// state. Measured against a plain save in `wisp-bench` (section `sleep`); not
    /// used by sprites (see `docs/VM.md`).
    pub memory_file: Option<PathBuf>,
    /// Let QEMU outlive this process (a daemon restart re-adopts it): no
    /// parent-death signal, and a process group of its own so a terminal's
    /// Ctrl-C reaches only the daemon. Otherwise QEMU is killed when this
    /// process dies.
    pub outlive_parent: bool,
}

impl QemuConfig {
    /// The binary from `WISP_QEMU`, else [`QEMU_BINARY`] on `PATH`.
    pub fn default_binary() -> PathBuf {
        std::env::var_os("WISP_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(QEMU_BINARY))
    }

    /// The full argument list (without the binary).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-M");
        if let Some(file) = &self.memory_file {
            push("microvm,acpi=on,memory-backend=mem");
            push("-object");
            push(&format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share=on",
                self.memory_mib,
                qemu_escape(file)
            ));
        } else {
            push("microvm,acpi=on");
        }
        push("-accel");
        push(&self.accel.to_string());
        if let Some(model) = cpu_model(self.accel) {
            push("-cpu");
            push(model);
        }
        push("-m");
        push(&format!("{}M", self.memory_mib));
        push("-smp");
        push(&self.cpus.to_string());
        for s in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            push(s);
        }
        push("-serial");
        push(&format!("file:{}", self.serial_log.display()));
        let mut append = kernel_cmdline();
        for w in &self.cmdline_extra {
            append.push(' ');
            append.push_str(w);
        }
        match &self.disk {
            Some(DiskSource::Nbd(sock)) => {
                push("-drive");
                push(&format!(
                    "id=root,driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={},file.reconnect-delay={NBD_RECONNECT_DELAY_S},if=none,cache=writeback,discard=unmap",
                    qemu_escape(sock)
                ));
            }
            Some(DiskSource::RawFile(path)) => {
                push("-drive");
                push(&format!(
                    "id=root,driver=raw,file={},if=none,discard=unmap",
                    qemu_escape(path)
                ));
            }
            None => append.push_str(" wisp.root=none"),
        }
        if self.disk.is_some() {
            push("-device");
            push("virtio-blk-device,drive=root");
        }
        if let Some(DiskSource::Nbd(sock)) = &self.disk {
            for name in &self.extra_disks {
                push("-drive");
                push(&format!(
                    "id={name},driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={},file.export={name},file.reconnect-delay={NBD_RECONNECT_DELAY_S},if=none,cache=writeback",
                    qemu_escape(sock)
                ));
                push("-device");
                push(&format!("virtio-blk-device,drive={name},serial={name}"));
            }
        }
        if let Some(sock) = &self.agent_socket {
            push("-device");
            push("virtio-serial-device");
            push("-chardev");
            push(&format!(
                "socket,id=agent,path={},server=on,wait=off",
                qemu_escape(sock)
            ));
            push("-device");
            push(&format!(
                "virtserialport,chardev=agent,name={}",
                wisp_proto::PORT_NAME
            ));
        }
        push("-device");
        push(BALLOON_DEVICE);
        if self.network {
            push("-netdev");
            push("user,id=net0");
            push("-device");
            push("virtio-net-device,netdev=net0");
        } else {
            append.push_str(" wisp.net=off");
        }
        if let Some(sock) = &self.qmp_socket {
            push("-qmp");
            push(&format!("unix:{},server=on,wait=off", qemu_escape(sock)));
        }
        if let Some(state) = &self.incoming {
            push("-incoming");
            push(&format!("exec:cat {}", shell_quote(state)));
        }
        push("-kernel");
        a.push(self.kernel.clone().into());
        a.push("-initrd".into());
        a.push(self.initrd.clone().into());
        a.push("-append".into());
        a.push(append.into());
        a
    }
}

/// QEMU option values separate fields with `,`; a literal comma is doubled.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// `p` as one word for `/bin/sh` (QEMU runs `exec:` migration URIs through it).
pub fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// A running QEMU: a child of this process (killed on drop, always reaped), or one
/// adopted from an earlier daemon by its pid (see [`Qemu::adopt`]).
pub struct Qemu {
    child: Option<tokio::process::Child>,
    pid: u32,
}

impl Qemu {
    /// Starts QEMU. Its own stdout/stderr (not the guest's console) go to
    /// `stderr_log`, so a failure to start can be reported.
    pub fn spawn(config: &QemuConfig, stderr_log: &Path) -> Result<Qemu, QemuError> {
        let log = std::fs::File::create(stderr_log).map_err(|source| QemuError::Io {
            path: stderr_log.to_path_buf(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| QemuError::Io {
            path: stderr_log.to_path_buf(),
            source,
        })?;
        tracing::debug!(binary = %config.binary.display(), args = ?config.args(), "starting qemu");
        let mut cmd = tokio::process::Command::new(&config.binary);
        cmd.args(config.args())
            .current_dir(&config.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true);
        if config.outlive_parent {
            // A group of its own: a terminal's Ctrl-C goes to the daemon, which
            // puts its sprites to sleep; a SIGKILL of the daemon leaves QEMU running
            // for the next daemon to adopt.
            cmd.process_group(0);
        } else {
            // If wisp dies without dropping the child (SIGKILL, Ctrl-C), the
            // kernel kills QEMU too: no orphan VM keeps the disk busy.
            // SAFETY: the closure only calls prctl, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|source| QemuError::Spawn {
            binary: config.binary.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        Ok(Qemu {
            child: Some(child),
            pid,
        })
    }

    /// A QEMU started by an earlier process, known by its pid: `None` unless
    /// that process is alive, runs in `dir` (a machine's run folder: no other
    /// process works there) and has a `-qmp` option. Dropping an adopted QEMU
    /// does not kill it.
    pub fn adopt(pid: u32, dir: &Path) -> Option<Qemu> {
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let has_qmp = cmdline.split(|b| *b == 0).any(|a| a == b"-qmp");
        let here = std::fs::canonicalize(dir).ok()?;
        (pid_alive(pid) && has_qmp && cwd == here).then_some(Qemu { child: None, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether this QEMU was adopted from an earlier daemon.
    pub fn is_adopted(&self) -> bool {
        self.child.is_none()
    }

    /// The exit status if QEMU has exited (reaping it), else `None`. An adopted
    /// QEMU that is gone reports a SIGKILL status (its real one went to its parent).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        match &mut self.child {
            Some(child) => child.try_wait().ok().flatten(),
            None => (!pid_alive(self.pid)).then(gone_status),
        }
    }

    /// Waits for QEMU to exit.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match &mut self.child {
            Some(child) => child.wait().await,
            None => {
                while pid_alive(self.pid) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(gone_status())
            }
        }
    }

    /// Waits at most `timeout` for QEMU to exit.
    pub async fn wait_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus, QemuError> {
        let pid = self.pid;
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(Ok(st)) => Ok(st),
            Ok(Err(source)) => Err(QemuError::Io {
                path: PathBuf::from(format!("/proc/{pid}")),
                source,
            }),
            Err(_) => Err(QemuError::ExitTimeout(timeout)),
        }
    }

    /// SIGKILL and reap: a crash as far as the guest is concerned.
    pub async fn kill(&mut self) {
        match &mut self.child {
            Some(child) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            None => {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
                let _ = self.wait().await;
            }
        }
    }
}

/// Whether process `pid` exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: `Z` is a zombie.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn gone_status() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    std::process::ExitStatus::from_raw(libc::SIGKILL)
}

/// A QMP connection, past the capabilities negotiation.
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket, up to `timeout`),
    /// reads the greeting and enters command mode.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QemuError> {
        let io = |source| QemuError::QmpIo {
            path: path.to_path_buf(),
            source,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(io(e)),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QemuError::QmpProtocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, QemuError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|source| QemuError::QmpIo {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QemuError::QmpIo {
                path: self.path.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        serde_json::from_str(&line).map_err(|_| QemuError::QmpProtocol(line.trim().to_string()))
    }

    /// Runs one command and returns its `return` value. Events that arrive in
    /// between are logged and skipped.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QemuError> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .await
            .map_err(|source| QemuError::QmpIo {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let reply = self.read_message().await?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(QemuError::QmpCommand {
                    command: command.to_string(),
                    message: err
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_string(),
                });
            }
            if let Some(event) = reply.get("event") {
                tracing::debug!(%event, "qmp event");
                continue;
            }
            return Err(QemuError::QmpProtocol(reply.to_string()));
        }
    }

    /// The run state (`running`, `paused`, `shutdown`, ...).
    pub async fn status(&mut self) -> Result<String, QemuError> {
        let v = self.execute("query-status", None).await?;
        Ok(v.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }

    /// Stops the vCPUs and writes the machine's whole state (devices and memory)
    /// to `file` as QEMU's migration stream, polling until it completes; QEMU
    /// stays paused (quit it next). Pages that are all zero cost a few bytes
    /// each in the stream. `file` is given relative to QEMU's working folder or
    /// absolute. Returns how long the save took.
    pub async fn save_state(&mut self, file: &Path) -> Result<Duration, QemuError> {
        let started = std::time::Instant::now();
        self.execute("stop", None).await?;
        self.execute(
            "migrate",
            Some(json!({ "uri": format!("exec:cat > {}", shell_quote(file)) })),
        )
        .await?;
        self.wait_migration("migrate").await?;
        Ok(started.elapsed())
    }

    /// Turns migration capability `name` (`x-ignore-shared`, ...) on or off; both
    /// ends of a migration need the same.
    pub async fn set_capability(&mut self, name: &str, on: bool) -> Result<(), QemuError> {
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [{ "capability": name, "state": on }] })),
        )
        .await
        .map(|_| ())
    }

    /// After `-incoming` (see [`QemuConfig::incoming`]): waits until the saved
    /// state is loaded, then starts the vCPUs.
    pub async fn resume(&mut self) -> Result<(), QemuError> {
        loop {
            match self.status().await?.as_str() {
                "inmigrate" => tokio::time::sleep(Duration::from_millis(5)).await,
                "paused" | "postmigrate" | "prelaunch" => break,
                "running" => return Ok(()),
                other => {
                    return Err(QemuError::QmpCommand {
                        command: "migrate-incoming".into(),
                        message: format!("the state did not load: status `{other}`"),
                    })
                }
            }
        }
        self.execute("cont", None).await?;
        Ok(())
    }

    /// Polls `query-migrate` until the outgoing migration completes or fails.
    async fn wait_migration(&mut self, command: &str) -> Result<(), QemuError> {
        loop {
            let v = self.execute("query-migrate", None).await?;
            match v.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(QemuError::QmpCommand {
                        command: command.into(),
                        message: v
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("the migration failed")
                            .to_string(),
                    })
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Asks QEMU to exit at once (no guest involvement).
    pub async fn quit(&mut self) -> Result<(), QemuError> {
        match self.execute("quit", None).await {
            Ok(_) => Ok(()),
            // QEMU may close the socket before its answer arrives.
            Err(QemuError::QmpIo { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        QemuConfig {
            binary: PathBuf::from(QEMU_BINARY),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 1024,
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd".into(),
            cmdline_extra: vec!["wisp.hostname=box".into()],
            disk: Some(DiskSource::Nbd("/run/a,b.sock".into())),
            dir: "/run".into(),
            agent_socket: Some("/run/agent.sock".into()),
            qmp_socket: Some("/run/qmp.sock".into()),
            serial_log: "/run/serial.log".into(),
            network: true,
            incoming: None,
            outlive_parent: false,
            memory_file: None,
            extra_disks: Vec::new(),
        }
    }

    fn joined(c: &QemuConfig) -> String {
        c.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn command_line_has_every_device() {
        let s = joined(&config());
        // TCG's default CPU model, and nothing on the kernel command line that
        // taxes every boot (`-cpu max` cost 0.15-0.2 s, `init_on_free=1` a second).
        assert!(
            s.contains("-M microvm,acpi=on -accel tcg -m 1024M -smp 2"),
            "{s}"
        );
        assert!(!s.contains("-cpu"), "{s}");
        assert!(
            !kernel_cmdline().contains("init_on"),
            "{}",
            kernel_cmdline()
        );
        assert!(s.contains("file.server.path=/run/a,,b.sock"), "{s}");
        assert!(s.contains("virtio-blk-device,drive=root"));
        assert!(s.contains("name=org.wisp.agent"));
        assert!(s.contains("-netdev user,id=net0 "), "{s}");
        // Nothing on the host reaches into the guest but the agent.
        assert!(!s.contains("hostfwd"), "{s}");
        assert!(s.contains("-qmp unix:/run/qmp.sock,server=on,wait=off"));
        assert!(s.contains("wisp.hostname=box"));
        assert!(!s.contains("wisp.root=none"));
        assert!(!s.contains("-incoming"));
    }

    #[test]
    fn a_resume_loads_the_state_file_through_the_shell() {
        let mut c = config();
        c.incoming = Some("/w/it's.state".into());
        let s = joined(&c);
        assert!(s.contains("-incoming exec:cat '/w/it'\\''s.state'"), "{s}");
    }

    #[test]
    fn no_disk_and_no_network_tell_the_agent() {
        let mut c = config();
        c.disk = None;
        c.network = false;
        c.accel = Accel::Kvm;
        let s = joined(&c);
        assert!(s.contains("wisp.root=none"));
        assert!(s.contains("wisp.net=off"));
        assert!(s.contains("-accel kvm -cpu host"));
        assert!(!s.contains("virtio-blk-device"));
        assert!(!s.contains("-netdev"));
    }
}
