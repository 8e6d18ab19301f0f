//! One running sprite: its root disk served over NBD in-process, the QEMU
//! child, and the agent connection. `start` returns once the agent answers;
//! `stop` is a clean shutdown, `kill` a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wisp_nbd::{BlockDevice, Listen, NbdError};

use crate::agent::{AgentClient, AgentError};
use crate::boot_watch::{self, BootStats};
use crate::qemu::{Accel, DiskSource, Qemu, QemuConfig, QemuError, Qmp};
use crate::run_dir::RunDir;

/// Errors of a machine's life cycle.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("cannot use run folder `{path}`: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The folder is named because the socket is reached through `/proc/self/fd`.
    #[error("cannot serve the root disk in `{}`: {source}", run.display())]
    ServeDisk { run: PathBuf, source: NbdError },
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("qemu exited during boot ({status}); its output: {qemu_log}; console tail: {console}")]
    EarlyExit {
        status: String,
        qemu_log: String,
        console: String,
    },
    #[error("the agent did not become ready: {source}; console tail: {console}")]
    Agent { source: AgentError, console: String },
    #[error("the guest stalled during boot on every attempt: {why}; console tail: {console}")]
    Stalled { why: Stall, console: String },
    #[error("cannot flush the root disk: {0}")]
    Flush(std::io::Error),
    #[error("cannot freeze the guest's filesystems: {0}")]
    Freeze(String),
}

/// How a boot showed it had stalled (see [`crate::boot_watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stall {
    #[error("its console stayed silent for {0:?}")]
    SilentConsole(Duration),
    #[error("its agent did not answer within {0:?}")]
    NoAgent(Duration),
}

/// Virtual CPUs of a machine unless its config says otherwise.
pub const DEFAULT_CPUS: u32 = 2;
/// Memory of a machine unless its config says otherwise, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;

/// What to boot and how.
#[derive(Clone)]
pub struct MachineConfig {
    /// The root disk (a `wisp_volume::Volume`, or any block device).
    pub disk: Arc<dyn BlockDevice>,
    pub cpus: u32,
    pub memory_mib: u64,
    /// The guest kernel (bzImage) and the initramfs holding the agent.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Sockets and logs of this machine go here (created if missing).
    pub run_dir: PathBuf,
    pub accel: Accel,
    pub hostname: String,
    /// The longest one boot may take until the agent answers. A boot is given
    /// less once this process has booted a few: see [`crate::boot_watch`].
    pub boot_timeout: Duration,
    /// Boots tried before giving up: a guest that stalls (its console silent, or
    /// no agent answer, past the limits of [`crate::boot_watch`]) is killed (a
    /// crash, which the disk is built to survive) and booted again. Guest kernels
    /// under TCG on a loaded host were seen to stall early in boot about once in
    /// fifty boots.
    pub boot_attempts: u32,
    /// The QEMU binary ([`QemuConfig::default_binary`] unless set).
    pub qemu_binary: PathBuf,
    /// Resume from this state file ([`Machine::save`]) instead of booting. The
    /// disk must be exactly as it was when the state was saved, and the machine's
    /// size (cpus, memory) the same.
    pub resume_from: Option<PathBuf>,
    /// QEMU keeps running when this process dies, for the next one to adopt
    /// ([`Machine::adopt`]); otherwise the kernel kills it with this process.
    pub outlive_parent: bool,
    /// More disks, served next to the root disk by export name (the guest sees
    /// the name as the disk's serial): the checkpoint slots
    /// ([`crate::checkpoint_disk`]). A resumed or adopted machine needs the same
    /// names as when it booted.
    pub extra_disks: Vec<(String, Arc<dyn BlockDevice>)>,
}

impl MachineConfig {
    /// Defaults: 2 vCPUs, 1 GiB, TCG, hostname `sprite`, 3 boots of
    /// at most 60 s each.
    pub fn new(
        disk: Arc<dyn BlockDevice>,
        kernel: PathBuf,
        initramfs: PathBuf,
        run_dir: PathBuf,
    ) -> Self {
        MachineConfig {
            disk,
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            kernel,
            initramfs,
            run_dir,
            accel: Accel::Tcg,
            hostname: "sprite".into(),
            boot_timeout: Duration::from_secs(60),
            boot_attempts: 3,
            qemu_binary: QemuConfig::default_binary(),
            resume_from: None,
            outlive_parent: false,
            extra_disks: Vec::new(),
        }
    }
}

/// The names of a machine's unix sockets in its run folder.
const NBD_SOCKET: &str = "nbd.sock";
const AGENT_SOCKET: &str = "agent.sock";
const QMP_SOCKET: &str = "qmp.sock";
/// What a new process needs to adopt a running machine ([`Machine::adopt`]).
pub const MACHINE_FILE: &str = "machine.json";
/// How long a guest saved by a warm sleep stays frozen after it resumes if the
/// host never thaws it (its running time: it does not pass while saved).
pub const SAVE_FREEZE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the host waits for a guest to write its dirty data and freeze.
const FREEZE_WAIT: Duration = Duration::from_secs(60);

/// A running machine as recorded in its run folder's [`MACHINE_FILE`] (JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MachineRecord {
    pub qemu_pid: u32,
    // Records of older wisp also name `http_port` (a QEMU forward to the guest's
    // port 8080, no longer made): ignored, as every unknown field is.
    pub cpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
}

impl MachineRecord {
    /// The record in run folder `dir`, if one is there and readable.
    pub fn read(dir: &Path) -> Option<MachineRecord> {
        serde_json::from_slice(&std::fs::read(dir.join(MACHINE_FILE)).ok()?).ok()
    }
}

/// SIGKILLs the QEMU of every machine recorded in the run folders under `run_root`
/// (`$WISP_HOME/run`) that still runs there (checked as [`Qemu::adopt`] does): what a
/// daemon killed outright leaves behind, for a test or a benchmark that will not adopt it.
pub fn kill_recorded(run_root: &Path) {
    let Ok(dirs) = std::fs::read_dir(run_root) else {
        return;
    };
    for dir in dirs.flatten() {
        let dir = dir.path();
        let Some(record) = MachineRecord::read(&dir) else {
            continue;
        };
        if let Some(qemu) = Qemu::adopt(record.qemu_pid, &dir) {
            // SAFETY: kill has no memory preconditions; the pid was checked to be that
            // machine's QEMU just above.
            unsafe { libc::kill(qemu.pid() as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// What [`Machine::save`] measured.
#[derive(Debug, Clone, Copy)]
pub struct SaveReport {
    /// From the vCPUs stopping to the state file complete.
    pub save: Duration,
    /// Until QEMU exited (its memory returned to the host).
    pub total: Duration,
    /// The state file's size in bytes.
    pub bytes: u64,
}

/// The run folder of one machine, whose unix sockets (NBD, agent, QMP) are removed when
/// the machine is gone, on every path (clean stop, kill, failed or abandoned start), so
/// `run/<name>/` holds no stale sockets.
struct Sockets(RunDir);

impl Drop for Sockets {
    fn drop(&mut self) {
        for name in [NBD_SOCKET, AGENT_SOCKET, QMP_SOCKET, MACHINE_FILE] {
            let _ = std::fs::remove_file(self.0.join(name));
        }
    }
}

/// A booted VM with a ready agent.
pub struct Machine {
    qemu: Qemu,
    agent: Arc<AgentClient>,
    disk: Arc<dyn BlockDevice>,
    nbd_stop: Option<oneshot::Sender<()>>,
    nbd_task: Option<JoinHandle<Result<(), NbdError>>>,
    serial_log: PathBuf,
    boot_time: Duration,
    accel: Accel,
    /// Dropped last (fields drop in order): QEMU is killed before its sockets go.
    sockets: Sockets,
}

/// The volume behind a stopped machine's disk, once nothing else holds it:
/// the NBD server lets go of it when its last connection closed, which can
/// take a moment after [`Machine::stop`] returns. `None` if something still
/// holds it after 10 s.
pub async fn reclaim_volume(mut volume: Arc<wisp_volume::Volume>) -> Option<wisp_volume::Volume> {
    for _ in 0..1000 {
        match Arc::try_unwrap(volume) {
            Ok(v) => return Some(v),
            Err(v) => volume = v,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[start..]).trim().to_string()
}

impl Machine {
    /// Serves the disk, boots QEMU and waits for the agent's `hello`.
    pub async fn start(config: MachineConfig) -> Result<Machine, MachineError> {
        let t0 = Instant::now();
        let run = RunDir::create(&config.run_dir).map_err(|source| MachineError::RunDir {
            path: config.run_dir.clone(),
            source,
        })?;
        let qemu_log = run.join("qemu.log");

        let mut server = wisp_nbd::Server::new();
        server.add_export("root", config.disk.clone());
        for (name, disk) in &config.extra_disks {
            server.add_export(name, disk.clone());
        }
        let bound = server
            .bind(&Listen::Unix(run.socket(NBD_SOCKET)))
            .await
            .map_err(|source| MachineError::ServeDisk {
                run: run.path().to_path_buf(),
                source,
            })?;
        // From here the sockets are ours (the bind succeeded, so no live machine of this
        // name holds them).
        let sockets = Sockets(run);
        let run = &sockets.0;
        let (nbd_stop, stop_rx) = oneshot::channel::<()>();
        let nbd_task = tokio::spawn(bound.serve(async {
            let _ = stop_rx.await;
        }));

        let qemu_config = QemuConfig {
            binary: config.qemu_binary.clone(),
            accel: config.accel,
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            kernel: config.kernel.clone(),
            initrd: config.initramfs.clone(),
            cmdline_extra: vec![format!("wisp.hostname={}", config.hostname)],
            // QEMU runs in the run folder and finds its sockets by name.
            dir: run.path().to_path_buf(),
            disk: Some(DiskSource::Nbd(NBD_SOCKET.into())),
            agent_socket: Some(AGENT_SOCKET.into()),
            qmp_socket: Some(QMP_SOCKET.into()),
            // Each boot names its own console log (`boot_once`).
            serial_log: PathBuf::new(),
            network: true,
            incoming: None,
            outlive_parent: config.outlive_parent,
            memory_file: None,
            extra_disks: config.extra_disks.iter().map(|(n, _)| n.clone()).collect(),
        };
        if let Some(state) = &config.resume_from {
            let resumed = resume_once(&qemu_config, run, &qemu_log, state).await;
            let (qemu, agent, serial_log) = match resumed {
                Ok(resumed) => resumed,
                Err(e) => {
                    let _ = nbd_stop.send(());
                    return Err(e);
                }
            };
            return Ok(Machine::ready(
                qemu, agent, &config, nbd_stop, nbd_task, serial_log, t0, sockets,
            )
            .await);
        }
        let attempts = config.boot_attempts.max(1);
        let mut attempt = 1;
        let (qemu, agent, serial_log) = loop {
            let boot = boot_once(&qemu_config, run, &qemu_log, config.boot_timeout);
            match boot.await {
                Ok(booted) => break booted,
                Err(BootFailure::Hung { console, why }) if attempt < attempts => {
                    tracing::warn!(
                        attempt,
                        console = %console.display(),
                        error = %why,
                        "the guest stalled during boot; killed it, booting again"
                    );
                    attempt += 1;
                }
                Err(failure) => {
                    let _ = nbd_stop.send(());
                    return Err(failure.into());
                }
            }
        };
        Ok(Machine::ready(
            qemu, agent, &config, nbd_stop, nbd_task, serial_log, t0, sockets,
        )
        .await)
    }

    /// The last steps of a boot, a resume and an adoption: the guest's clock set
    /// to the host's (the RTC gave a booting guest whole seconds; a resumed one is
    /// as far behind as it slept), the machine recorded in its run folder.
    #[allow(clippy::too_many_arguments)]
    async fn ready(
        qemu: Qemu,
        agent: AgentClient,
        config: &MachineConfig,
        nbd_stop: oneshot::Sender<()>,
        nbd_task: JoinHandle<Result<(), NbdError>>,
        serial_log: PathBuf,
        t0: Instant,
        sockets: Sockets,
    ) -> Machine {
        if let Err(e) = agent.set_clock().await {
            tracing::warn!(error = %e, "cannot set the guest's clock");
        }
        // A machine saved by a warm sleep was saved frozen (see `Machine::save`),
        // and one adopted from a daemon that died mid-checkpoint may be: whoever
        // froze it is gone.
        if agent.can_freeze() {
            match tokio::time::timeout(Duration::from_secs(10), agent.thaw()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot thaw the guest's filesystems"),
                Err(_) => tracing::warn!("the guest did not answer a thaw within 10s"),
            }
        }
        let boot_time = t0.elapsed();
        tracing::debug!(
            boot_ms = boot_time.as_millis() as u64,
            accel = %config.accel,
            pid = qemu.pid(),
            resumed = config.resume_from.is_some(),
            "machine ready"
        );
        let record = MachineRecord {
            qemu_pid: qemu.pid(),
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            accel: config.accel,
        };
        let path = sockets.0.join(MACHINE_FILE);
        if let Err(e) = write_atomic(&path, &serde_json::to_vec(&record).unwrap_or_default()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the machine for a later daemon");
        }
        Machine {
            qemu,
            agent: Arc::new(agent),
            disk: config.disk.clone(),
            nbd_stop: Some(nbd_stop),
            nbd_task: Some(nbd_task),
            serial_log,
            boot_time,
            accel: config.accel,
            sockets,
        }
    }

    /// Takes over a machine an earlier process started and left running (it
    /// died, or was killed): reads its [`MachineRecord`] in `config.run_dir`, checks
    /// that its QEMU still runs there, serves `config.disk` again on the socket
    /// QEMU's NBD client reconnects to (it holds its requests meanwhile and sends
    /// them again), and connects to the agent. `None` when there is nothing to
    /// adopt (no record, QEMU gone); the run folder is then cleaned.
    pub async fn adopt(config: MachineConfig) -> Result<Option<Machine>, MachineError> {
        let t0 = Instant::now();
        let run = RunDir::create(&config.run_dir).map_err(|source| MachineError::RunDir {
            path: config.run_dir.clone(),
            source,
        })?;
        let Some(record) = MachineRecord::read(run.path()) else {
            return Ok(None);
        };
        let Some(mut qemu) = Qemu::adopt(record.qemu_pid, run.path()) else {
            drop(Sockets(run));
            return Ok(None);
        };
        let mut server = wisp_nbd::Server::new();
        server.add_export("root", config.disk.clone());
        for (name, disk) in &config.extra_disks {
            server.add_export(name, disk.clone());
        }
        let bound = server
            .bind(&Listen::Unix(run.socket(NBD_SOCKET)))
            .await
            .map_err(|source| MachineError::ServeDisk {
                run: run.path().to_path_buf(),
                source,
            })?;
        let sockets = Sockets(run);
        let run = &sockets.0;
        let (nbd_stop, stop_rx) = oneshot::channel::<()>();
        let nbd_task = tokio::spawn(bound.serve(async {
            let _ = stop_rx.await;
        }));
        let agent = match connect_agent(&run.socket(AGENT_SOCKET), Duration::from_secs(10)).await {
            Ok(agent) => agent,
            Err(source) => {
                let _ = nbd_stop.send(());
                qemu.kill().await;
                return Err(MachineError::Agent {
                    source,
                    console: String::new(),
                });
            }
        };
        let serial_log = newest_console(run.path()).unwrap_or_default();
        let config = MachineConfig {
            cpus: record.cpus,
            memory_mib: record.memory_mib,
            accel: record.accel,
            ..config
        };
        Ok(Some(
            Machine::ready(
                qemu, agent, &config, nbd_stop, nbd_task, serial_log, t0, sockets,
            )
            .await,
        ))
    }

    /// Warm sleep: stops the vCPUs, writes the machine's device and memory state
    /// to `state` (see [`Qmp::save_state`]), ends QEMU (its memory goes back to
    /// the host), then drains the disk server and flushes the disk. The machine
    /// resumes from `state` with [`MachineConfig::resume_from`] over the same,
    /// unchanged disk. On an error the machine is gone all the same (killed), as
    /// after a crash, and `state` must not be used.
    ///
    /// The guest's filesystems are frozen first ([`AgentClient::freeze`]): every
    /// write a program finished is on the disk, and the disk is consistent on its
    /// own, so the sprite loses nothing when the state is later dropped (a cold
    /// sleep, a restore) and boots from the disk. The saved guest is thawed when
    /// it resumes ([`Machine::start`]), or by itself [`SAVE_FREEZE_TIMEOUT`] of its
    /// running time after.
    pub async fn save(mut self, state: &Path) -> Result<SaveReport, MachineError> {
        let started = Instant::now();
        if let Err(e) = self.freeze_for_save().await {
            // Its memory holds writes its disk lacks: no state to drop later, but a
            // clean stop, which writes them.
            tracing::warn!(error = %e, "cannot freeze the guest for a save; stopping it cleanly instead");
            self.stop().await?;
            return Err(e);
        }
        let saved = async {
            let mut qmp =
                Qmp::connect(&self.sockets.0.socket(QMP_SOCKET), Duration::from_secs(5)).await?;
            let took = qmp.save_state(state).await?;
            qmp.quit().await?;
            Ok::<_, QemuError>(took)
        }
        .await;
        if self
            .qemu
            .wait_timeout(Duration::from_secs(10))
            .await
            .is_err()
        {
            self.qemu.kill().await;
        }
        let total = started.elapsed();
        let flushed = self.finish_disk().await;
        let save = saved?;
        flushed?;
        let bytes = std::fs::metadata(state).map(|m| m.len()).unwrap_or(0);
        Ok(SaveReport { save, total, bytes })
    }

    /// Freezes the guest's filesystems before a save: an error when the guest's
    /// dirty data could not be written (the state is then not to be kept, since the
    /// disk lacks what the memory holds). An agent without freeze support syncs.
    async fn freeze_for_save(&self) -> Result<(), MachineError> {
        let frozen = if self.agent.can_freeze() {
            tokio::time::timeout(FREEZE_WAIT, self.agent.freeze(SAVE_FREEZE_TIMEOUT))
                .await
                .map(|r| r.map(|_| ()))
        } else {
            tokio::time::timeout(FREEZE_WAIT, self.agent.run(["sync"]))
                .await
                .map(|r| r.map(|_| ()))
        };
        match frozen {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(MachineError::Freeze(e.to_string())),
            Err(_) => Err(MachineError::Freeze(format!(
                "the guest did not write its data within {FREEZE_WAIT:?}"
            ))),
        }
    }

    /// The agent connection (share it freely).
    pub fn agent(&self) -> &Arc<AgentClient> {
        &self.agent
    }

    /// From `start` to the agent's answer.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// This boot's serial console log.
    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// QEMU's process id (for RSS measurements and the like).
    pub fn qemu_pid(&self) -> u32 {
        self.qemu.pid()
    }

    /// A fresh QMP connection to this machine's QEMU.
    pub async fn qmp(&self) -> Result<Qmp, MachineError> {
        Ok(Qmp::connect(&self.sockets.0.socket(QMP_SOCKET), Duration::from_secs(5)).await?)
    }

    /// Clean stop: the agent stops services, syncs and makes the root
    /// read-only, the guest powers off, QEMU exits, then the NBD server drains
    /// and the disk is flushed. Falls back to QMP `quit`, then SIGKILL, when
    /// the guest does not cooperate.
    pub async fn stop(mut self) -> Result<(), MachineError> {
        let agent_ok =
            match tokio::time::timeout(Duration::from_secs(60), self.agent.shutdown()).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "agent shutdown failed; stopping qemu through qmp");
                    false
                }
                Err(_) => {
                    tracing::warn!("agent shutdown timed out; stopping qemu through qmp");
                    false
                }
            };
        let exited = agent_ok
            && self
                .qemu
                .wait_timeout(Duration::from_secs(30))
                .await
                .is_ok();
        if !exited {
            let qmp_socket = self.sockets.0.socket(QMP_SOCKET);
            if let Ok(mut qmp) = Qmp::connect(&qmp_socket, Duration::from_secs(2)).await {
                let _ = qmp.quit().await;
            }
            if self
                .qemu
                .wait_timeout(Duration::from_secs(10))
                .await
                .is_err()
            {
                self.qemu.kill().await;
            }
        }
        self.finish_disk().await
    }

    /// A crash: SIGKILL to QEMU. Writes the guest had not flushed are lost,
    /// exactly as on power loss; everything the NBD server received stays.
    pub async fn kill(mut self) -> Result<(), MachineError> {
        self.qemu.kill().await;
        self.finish_disk().await
    }

    /// Waits until QEMU exits by itself (the guest powered off).
    pub async fn wait(&mut self) -> Result<std::process::ExitStatus, MachineError> {
        self.qemu.wait().await.map_err(|source| {
            MachineError::Qemu(QemuError::Io {
                path: PathBuf::from(format!("/proc/{}", self.qemu.pid())),
                source,
            })
        })
    }

    async fn finish_disk(&mut self) -> Result<(), MachineError> {
        if let Some(tx) = self.nbd_stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.nbd_task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "nbd server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "nbd server task failed"),
            }
        }
        self.disk.flush().await.map_err(MachineError::Flush)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // QEMU is killed by `kill_on_drop`; stop serving its disk too.
        if let Some(tx) = self.nbd_stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Why one boot did not produce a ready machine.
enum BootFailure {
    /// QEMU could not start, or exited during boot.
    Fatal(MachineError),
    /// The agent did not answer in time; QEMU was killed. `console` is that boot's log.
    Hung { why: Stall, console: PathBuf },
}

impl From<BootFailure> for MachineError {
    fn from(f: BootFailure) -> MachineError {
        match f {
            BootFailure::Fatal(e) => e,
            BootFailure::Hung { why, console } => MachineError::Stalled {
                why,
                console: tail(&console, 2000),
            },
        }
    }
}

/// Starts QEMU once and waits for the agent's `hello`, killing QEMU when it does not
/// come. Each boot writes its own console log, named by start time, so earlier boots
/// stay readable.
async fn boot_once(
    qemu_config: &QemuConfig,
    run: &RunDir,
    qemu_log: &Path,
    timeout: Duration,
) -> Result<(Qemu, AgentClient, PathBuf), BootFailure> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let serial_log = run.join(format!("console-{stamp}.log"));
    let config = QemuConfig {
        serial_log: serial_log.clone(),
        ..qemu_config.clone()
    };
    // Sockets left by a killed QEMU (an earlier attempt, a crashed run) would make this
    // one's listeners fail.
    for name in [AGENT_SOCKET, QMP_SOCKET] {
        let _ = std::fs::remove_file(run.join(name));
    }
    let (silence_limit, ready_limit) = {
        let stats = BootStats::global()
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (stats.silence_limit(), stats.ready_limit(timeout))
    };
    let started = Instant::now();
    let mut qemu =
        Qemu::spawn(&config, qemu_log).map_err(|e| BootFailure::Fatal(MachineError::Qemu(e)))?;
    tracing::debug!(pid = qemu.pid(), "qemu started");
    let agent_socket = run.socket(AGENT_SOCKET);
    let connect = connect_agent(&agent_socket, ready_limit);
    // The console's first byte, once: a boot that shows none in time has stalled.
    let console = async {
        match boot_watch::first_output(&serial_log, started, silence_limit).await {
            Ok(took) => {
                BootStats::global()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record_first_output(took);
                std::future::pending::<Duration>().await
            }
            Err(limit) => limit,
        }
    };
    let agent = tokio::select! {
        r = connect => r,
        limit = console => {
            qemu.kill().await;
            return Err(BootFailure::Hung {
                why: Stall::SilentConsole(limit),
                console: serial_log,
            });
        }
        st = qemu.wait() => {
            let status = st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            return Err(BootFailure::Fatal(MachineError::EarlyExit {
                status,
                qemu_log: tail(qemu_log, 2000),
                console: tail(&serial_log, 2000),
            }));
        }
    };
    match agent {
        Ok(agent) => {
            BootStats::global()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record_ready(started.elapsed());
            Ok((qemu, agent, serial_log))
        }
        Err(source) => {
            qemu.kill().await;
            match source {
                AgentError::HandshakeTimeout(_) => Err(BootFailure::Hung {
                    why: Stall::NoAgent(ready_limit),
                    console: serial_log,
                }),
                source => Err(BootFailure::Fatal(MachineError::Agent {
                    source,
                    console: tail(&serial_log, 2000),
                })),
            }
        }
    }
}

/// Starts QEMU loading `state`, starts the vCPUs once it is loaded, and connects
/// to the agent (which answers the new connection's `hello` at once: it was
/// running when the state was saved).
async fn resume_once(
    qemu_config: &QemuConfig,
    run: &RunDir,
    qemu_log: &Path,
    state: &Path,
) -> Result<(Qemu, AgentClient, PathBuf), MachineError> {
    let serial_log = newest_console(run.path()).unwrap_or_else(|| run.join("console-resumed.log"));
    let config = QemuConfig {
        // The console goes on in the boot's log.
        serial_log: serial_log.clone(),
        incoming: Some(state.to_path_buf()),
        ..qemu_config.clone()
    };
    for name in [AGENT_SOCKET, QMP_SOCKET] {
        let _ = std::fs::remove_file(run.join(name));
    }
    let t0 = Instant::now();
    let mut qemu = Qemu::spawn(&config, qemu_log)?;
    let resumed = async {
        let mut qmp = Qmp::connect(&run.socket(QMP_SOCKET), Duration::from_secs(30)).await?;
        let connected = t0.elapsed();
        qmp.resume().await?;
        tracing::debug!(
            qmp_ms = connected.as_millis() as u64,
            loaded_ms = t0.elapsed().as_millis() as u64,
            "machine state loaded"
        );
        Ok::<_, QemuError>(())
    };
    let early_exit = |status: String| MachineError::EarlyExit {
        status,
        qemu_log: tail(qemu_log, 2000),
        console: tail(&serial_log, 2000),
    };
    tokio::select! {
        r = resumed => if let Err(e) = r {
            qemu.kill().await;
            return Err(e.into());
        },
        st = qemu.wait() => {
            return Err(early_exit(st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())));
        }
    }
    match connect_agent(&run.socket(AGENT_SOCKET), Duration::from_secs(30)).await {
        Ok(agent) => {
            tracing::debug!(
                agent_ms = t0.elapsed().as_millis() as u64,
                "resumed machine's agent answered"
            );
            Ok((qemu, agent, serial_log))
        }
        Err(source) => {
            qemu.kill().await;
            Err(MachineError::Agent {
                source,
                console: tail(&serial_log, 2000),
            })
        }
    }
}

/// The newest `console-*.log` in `dir` (the running guest's console).
fn newest_console(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("console-") && n.ends_with(".log"))
        })
        .max()
}

/// Writes `path` whole or not at all (a temporary file renamed over it).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Connects to QEMU's agent chardev (created when QEMU starts) and handshakes, all
/// within `timeout`.
pub(crate) async fn connect_agent(
    socket: &Path,
    timeout: Duration,
) -> Result<AgentClient, AgentError> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => return Err(AgentError::Io(e)),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    AgentClient::connect_timeout(stream, left).await
}
