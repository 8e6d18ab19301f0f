//! Running sprites: the VM of each awake sprite, woken by the first request
//! that needs it and put to sleep after a stretch without one.
//!
//! Sleep comes in two kinds. **Warm**: the vCPUs stop, QEMU writes the
//! machine's state to a local file ([`crate::warm`]) and exits, the volume is
//! flushed, uploaded and closed; the next wake resumes that state (processes
//! carry on) when the disk is unchanged since ([`Volume::generation`]), and boots
//! otherwise. **Cold**: the guest is stopped cleanly (the agent syncs its
//! filesystems), and the next wake boots it from its disk.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wisp_vm::agent::{AgentClient, ListeningPort};
use wisp_vm::{Machine, Runtime};
use wisp_volume::{Store, Volume};

use crate::boot_queue::{BootQueue, QueueFull, WakeLimits};
use crate::checkpoint_mounts::{self, Slots};
use crate::registry::SpriteRecord;
use crate::warm::{SavedState, WarmStates};
use crate::ControlError;

/// How a machine came up (see [`Machines::insert`]).
struct Woke {
    slots: Arc<Slots>,
    size: (u32, u64, wisp_vm::Accel),
    by: &'static str,
    listening: Vec<u16>,
}

/// How a sprite goes to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepMode {
    /// Memory kept: the next wake resumes where it stopped.
    Warm,
    /// Memory dropped: the next wake boots.
    Cold,
}

/// One awake sprite.
pub struct Awake {
    agent: Arc<AgentClient>,
    /// When the machine finished booting.
    woke_at: Instant,
    volume: Arc<Volume>,
    /// Taken by the stop.
    machine: tokio::sync::Mutex<Option<Machine>>,
    /// Requests in progress (exec sessions): a sprite with any is never idle.
    sessions: AtomicUsize,
    /// When the last request ended (or the sprite woke).
    last_active: Mutex<Instant>,
    /// The guest's listening ports, watched from the first time someone asks.
    ports: Mutex<Option<Ports>>,
    /// The machine's size, which a state saved from it needs to resume.
    cpus: u32,
    memory_mib: u64,
    accel: wisp_vm::Accel,
    /// How it came up: `boot`, `resume` (a saved state) or `adopt` (from an
    /// earlier daemon).
    pub woke_by: &'static str,
    /// Whether the guest's requests are being served (see `Sprites::serve_guest_requests`).
    guest_requests: std::sync::atomic::AtomicBool,
    /// Ports known to be listening from the moment it woke (a resumed machine's, as
    /// saved with its state).
    pub listening_at_wake: Vec<u16>,
    /// The checkpoint disks (`/.sprite/checkpoints`).
    slots: Arc<Slots>,
}

/// A port that started (`opened`) or stopped listening in a sprite.
#[derive(Debug, Clone)]
pub struct PortEvent {
    pub opened: bool,
    pub port: ListeningPort,
}

/// The shared watch on one sprite's listening ports.
struct Ports {
    /// The ports listening now; `None` until the agent's first answer.
    now: tokio::sync::watch::Receiver<Option<Vec<ListeningPort>>>,
    events: tokio::sync::broadcast::Sender<PortEvent>,
}

impl Awake {
    pub fn agent(&self) -> &Arc<AgentClient> {
        &self.agent
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// How long ago the machine finished booting.
    pub fn awake_for(&self) -> Duration {
        self.woke_at.elapsed()
    }

    /// True once: the caller starts serving the guest's requests.
    pub fn claim_guest_requests(&self) -> bool {
        !self.guest_requests.swap(true, Ordering::SeqCst)
    }

    /// Counts as a request just ended: the idle clock starts again (a
    /// keep-awake task in the guest does this).
    pub fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// The ports listening in the guest now and the changes from then on. The
    /// first caller starts one watch in the guest that every later one shares;
    /// it ends with the machine.
    pub async fn ports(
        &self,
    ) -> Result<
        (
            Vec<ListeningPort>,
            tokio::sync::broadcast::Receiver<PortEvent>,
        ),
        ControlError,
    > {
        let (mut now, events) = {
            let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
            if ports.is_none() {
                let (set_now, now) = tokio::sync::watch::channel(None);
                let events = tokio::sync::broadcast::channel(256).0;
                let agent = self.agent.clone();
                let tx = events.clone();
                tokio::spawn(async move {
                    let Ok(mut watch) = agent.watch_ports().await else {
                        return;
                    };
                    let mut current: Vec<ListeningPort> = Vec::new();
                    while let Ok((opened, closed)) = watch.next().await {
                        current.retain(|p| !closed.contains(p));
                        current.extend(opened.iter().cloned());
                        current.sort();
                        let first = set_now.borrow().is_none();
                        let _ = set_now.send(Some(current.clone()));
                        if first {
                            continue;
                        }
                        for port in closed {
                            let _ = tx.send(PortEvent {
                                opened: false,
                                port,
                            });
                        }
                        for port in opened {
                            let _ = tx.send(PortEvent { opened: true, port });
                        }
                    }
                });
                *ports = Some(Ports { now, events });
            }
            let ports = ports.as_ref().expect("set above");
            (ports.now.clone(), ports.events.subscribe())
        };
        let snapshot = tokio::time::timeout(Duration::from_secs(10), now.wait_for(Option::is_some))
            .await
            .map_err(|_| {
                ControlError::Unavailable("the sprite's agent did not report its ports".into())
            })?
            .map_err(|_| ControlError::Unavailable("the sprite's port watch ended".into()))?
            .clone()
            .unwrap_or_default();
        Ok((snapshot, events))
    }

    /// Whether the guest is gone by itself (powered off, crashed): its agent
    /// connection ended without a stop.
    fn is_dead(&self) -> bool {
        self.agent.is_closed()
    }

    /// How long nothing has used it; `None` while a request is in progress.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.is_dead() {
            // Nothing can use it; clean it up at once.
            return Some(Duration::MAX);
        }
        if self.sessions.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(
            self.last_active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }
}

/// Keeps a sprite awake while it lives: one per request in progress.
pub struct Activity(Arc<Awake>, bool);

impl Activity {
    /// Whether this request's wake started the machine (rather than finding it up).
    pub fn woke_it(&self) -> bool {
        self.1
    }

    pub fn agent(&self) -> &Arc<AgentClient> {
        &self.0.agent
    }

    pub fn awake(&self) -> &Awake {
        &self.0
    }

    /// Another hold on the same awake sprite.
    pub fn another(&self) -> Activity {
        self.0.sessions.fetch_add(1, Ordering::SeqCst);
        Activity(self.0.clone(), false)
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        *self.0.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The machines of this host's awake sprites. Callers serialise wake and
/// sleep of one sprite (the sprite's turn in [`crate::Sprites`]).
pub struct Machines {
    home: PathBuf,
    store: Store,
    /// Prepared at server start when the kernel is cached ([`Machines::prepare_early`]),
    /// else on the first wake: fetching a kernel is not worth doing for a daemon that
    /// only creates sprites.
    runtime: tokio::sync::OnceCell<Runtime>,
    awake: Mutex<HashMap<String, Arc<Awake>>>,
    /// Saved states of warm sprites on this host.
    warm: WarmStates,
    /// Whether QEMU processes outlive this daemon (`wisp server`: a restarted
    /// daemon adopts them) or die with it (tests of the library, tools).
    pub outlive_daemon: bool,
    /// The name of each sprite that woke or fell asleep (see [`Machines::changes`]).
    changes: tokio::sync::broadcast::Sender<String>,
    /// Boots take turns for the host's cores (see [`crate::boot_queue`]).
    boots: Mutex<Arc<BootQueue>>,
    /// Sprites whose boot is waiting its turn or running.
    booting: Mutex<HashSet<String>>,
}

impl Machines {
    pub fn new(home: PathBuf, store: Store) -> Self {
        Machines {
            warm: WarmStates::new(&home),
            home,
            store,
            runtime: tokio::sync::OnceCell::new(),
            awake: Mutex::default(),
            outlive_daemon: false,
            changes: tokio::sync::broadcast::channel(256).0,
            boots: Mutex::new(Arc::new(BootQueue::new(WakeLimits::default()))),
            booting: Mutex::default(),
        }
    }

    /// How many boots run at once and how many wakes may wait (set before the
    /// first wake: boots already running or waiting keep the old limits).
    pub fn set_wake_limits(&self, limits: WakeLimits) {
        *self.boots.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(BootQueue::new(limits));
    }

    fn boot_queue(&self) -> Arc<BootQueue> {
        self.boots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a request that wakes sprite `name` would be taken now: it is
    /// awake or booting (the request joins that wake), or its boot would run or
    /// wait, not be refused. For the requests answered before their wake
    /// (WebSocket upgrades), so that a full queue is their 503 rather than an
    /// error on an open socket.
    pub fn wake_room(&self, name: &str) -> Result<(), ControlError> {
        let booting = || {
            self.booting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(name)
        };
        if self.get(name).is_some() || booting() {
            return Ok(());
        }
        self.boot_queue()
            .check()
            .map_err(|full| queue_full(name, full))
    }

    /// The saved states of this host's warm sprites.
    pub fn warm(&self) -> &WarmStates {
        &self.warm
    }

    /// Names of sprites as they wake or fall asleep (and as [`Machines::changed`]
    /// reports other changes). A receiver that falls behind skips what it missed.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Tells [`Machines::changes`] receivers that sprite `name` changed.
    pub fn changed(&self, name: &str) {
        // No receiver is not an error.
        let _ = self.changes.send(name.to_string());
    }

    fn awake_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Awake>>> {
        self.awake.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sprite `name`'s machine, if it is awake.
    pub fn get(&self, name: &str) -> Option<Arc<Awake>> {
        self.awake_map().get(name).cloned()
    }

    /// Names of the awake sprites.
    pub fn names(&self) -> Vec<String> {
        self.awake_map().keys().cloned().collect()
    }

    /// Prepares the runtime now (the initramfs, and the accelerator probe in the
    /// background) when this host's guest kernel is already fetched: the server
    /// does this at start, so the first wake finds the probe done. Without a
    /// kernel the first wake fetches it (that takes longer than the probe).
    pub async fn prepare_early(&self) {
        if matches!(wisp_vm::kernel::Kernel::cached(&self.home), Ok(Some(_))) {
            if let Err(e) = self.runtime().await {
                tracing::warn!(error = %e, "cannot prepare to run sprites");
            }
        }
    }

    async fn runtime(&self) -> Result<&Runtime, ControlError> {
        self.runtime
            .get_or_try_init(|| Runtime::prepare(&self.home))
            .await
            .map_err(|e| ControlError::Unavailable(format!("cannot run sprites on this host: {e}")))
    }

    /// Wakes sprite `record` unless it is awake (its VM sized by its
    /// `config`), and marks a request in progress on it.
    pub async fn wake(&self, record: &SpriteRecord) -> Result<Activity, ControlError> {
        let name = record.name.as_str();
        let mut woke = true;
        let awake = match self.get(name) {
            Some(awake) if !awake.is_dead() => {
                woke = false;
                awake
            }
            Some(dead) => {
                // The guest went away by itself: clean up (QEMU, disk server,
                // volume) and boot it again.
                drop(dead);
                tracing::warn!(sprite = %name, "the sprite's VM had stopped by itself; booting it again");
                self.sleep(name, SleepMode::Cold).await?;
                self.boot(record).await?
            }
            None => self.boot(record).await?,
        };
        awake.sessions.fetch_add(1, Ordering::SeqCst);
        Ok(Activity(awake, woke))
    }

    async fn boot(&self, record: &SpriteRecord) -> Result<Arc<Awake>, ControlError> {
        let (name, volume_name) = (record.name.as_str(), record.volume.as_str());
        let runtime = self.runtime().await?;
        let started = Instant::now();
        let _booting = Booting::new(&self.booting, name);
        // Held until the machine is up (or failed): its boot has the cores it needs.
        let _slot = self
            .boot_queue()
            .enter()
            .await
            .map_err(|full| queue_full(name, full))?;
        if started.elapsed() > Duration::from_secs(1) {
            tracing::info!(sprite = %name, waited = ?started.elapsed(), "the sprite's boot waited its turn");
        }
        let volume = Arc::new(
            self.store
                .open_volume(volume_name)
                .await
                .map_err(|source| ControlError::Volume {
                    context: format!(
                        "cannot wake sprite `{name}`: cannot open volume `{volume_name}`"
                    ),
                    source,
                })?,
        );
        // Sockets and logs under run/<volume>: the volume name is unique and short.
        let mut config = runtime.machine_config(volume.clone(), volume_name).await;
        config.hostname = name.to_string();
        config.outlive_parent = self.outlive_daemon;
        if let Some(cpus) = record.settings.config.cpus {
            config.cpus = cpus;
        }
        if let Some(ram) = record.settings.config.ram_mb {
            config.memory_mib = ram;
        }
        let slots = Arc::new(Slots::new(volume.info().size));
        config.extra_disks = slots.machine_disks();
        let (mut woke_by, mut machine, mut listening) = ("boot", None, Vec::new());
        if let Some(saved) = self.usable_state(record, &volume, config.accel).await {
            let shown = saved.checkpoint_slots.clone().unwrap_or_default();
            slots.fill(&self.store, volume_name, &shown).await;
            let mut resume = config.clone();
            resume.resume_from = Some(self.warm.state_path(volume_name)?);
            (resume.cpus, resume.memory_mib) = (saved.cpus, saved.memory_mib);
            match Machine::start(resume).await {
                Ok(m) => {
                    (woke_by, machine) = ("resume", Some(m));
                    (config.cpus, config.memory_mib) = (saved.cpus, saved.memory_mib);
                    listening = saved.ports.clone();
                }
                Err(e) => {
                    tracing::warn!(sprite = %name, error = %e, "resuming the saved state failed; booting instead");
                    // The boot below mounts from empty slots.
                    slots.clear();
                }
            }
            // Resumed or not, the state is spent: the disk moves on from here.
            self.warm.remove(volume_name);
        }
        let (cpus, memory_mib, accel) = (config.cpus, config.memory_mib, config.accel);
        let machine = match machine {
            Some(m) => m,
            None => match Machine::start(config).await {
                Ok(machine) => machine,
                Err(e) => {
                    if let Some(v) = wisp_vm::machine::reclaim_volume(volume).await {
                        let _ = v.close().await;
                    }
                    return Err(ControlError::Wake {
                        name: name.to_string(),
                        source: e,
                    });
                }
            },
        };
        tracing::info!(sprite = %name, took = ?started.elapsed(), by = woke_by, "sprite woke");
        Ok(self.insert(
            name,
            machine,
            volume,
            Woke {
                slots,
                size: (cpus, memory_mib, accel),
                by: woke_by,
                listening,
            },
        ))
    }

    fn insert(&self, name: &str, machine: Machine, volume: Arc<Volume>, woke: Woke) -> Arc<Awake> {
        let (cpus, memory_mib, accel) = woke.size;
        let awake = Arc::new(Awake {
            agent: machine.agent().clone(),
            woke_at: Instant::now(),
            volume,
            machine: tokio::sync::Mutex::new(Some(machine)),
            sessions: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
            ports: Mutex::new(None),
            cpus,
            memory_mib,
            accel,
            woke_by: woke.by,
            guest_requests: std::sync::atomic::AtomicBool::new(false),
            listening_at_wake: woke.listening,
            slots: woke.slots,
        });
        self.awake_map().insert(name.to_string(), awake.clone());
        self.changed(name);
        self.refresh_checkpoints(name, awake.woke_by != "boot");
        awake
    }

    /// The run folder of the machine of volume `volume` (`$WISP_HOME/run/<volume>`:
    /// its sockets, console logs, machine record, checkpoint slots record).
    fn run_dir(&self, volume: &str) -> PathBuf {
        self.home.join("run").join(volume)
    }

    /// Removes the run folder of volume `volume`'s machine, which must be
    /// stopped: for a sprite being deleted. A folder already gone is not an error.
    pub(crate) fn remove_run_dir(&self, volume: &str) -> Result<(), ControlError> {
        match std::fs::remove_dir_all(self.run_dir(volume)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ControlError::Io(e)),
            _ => Ok(()),
        }
    }

    /// Brings `/.sprite/checkpoints` of sprite `name` in line with its
    /// checkpoints, in a task of its own, if it is awake (see
    /// [`checkpoint_mounts::refresh`]).
    pub fn refresh_checkpoints(&self, name: &str, remount: bool) {
        let Some(awake) = self.get(name) else {
            return;
        };
        let (store, sprite) = (self.store.clone(), name.to_string());
        let run_dir = self.run_dir(&awake.volume.info().name);
        tokio::spawn(async move {
            checkpoint_mounts::refresh(
                &sprite,
                &store,
                &awake.volume,
                &awake.agent,
                &awake.slots,
                &run_dir,
                remount,
            )
            .await;
        });
    }

    /// The saved state sprite `record` can resume over `volume`, if any: one on
    /// this host, else one in the bucket (brought here). A state saved over
    /// another disk content (a restore, a write by `wisp volume`) or for another
    /// accelerator is deleted, and the sprite boots.
    async fn usable_state(
        &self,
        record: &SpriteRecord,
        volume: &Volume,
        accel: wisp_vm::Accel,
    ) -> Option<SavedState> {
        let (name, volume_name) = (record.name.as_str(), record.volume.as_str());
        let mut saved = self.warm.get(volume_name);
        if saved.is_none() && record.settings.memory_in_bucket {
            match self.warm.download(&self.store, volume_name).await {
                Ok(s) => saved = s,
                Err(e) => {
                    tracing::warn!(sprite = %name, error = %e.chain(), "cannot bring the saved state from the bucket; booting")
                }
            }
        }
        let saved = saved?;
        let generation = volume.generation().ok();
        if saved.checkpoint_slots.is_none() {
            tracing::info!(sprite = %name, "the machine state was saved without checkpoint disks; booting instead");
        } else if generation != Some(saved.generation) {
            tracing::info!(sprite = %name, saved = saved.generation, now = ?generation, "the disk changed since the machine state was saved; booting instead");
        } else if saved.layout != wisp_vm::qemu::MACHINE_LAYOUT {
            tracing::info!(sprite = %name, saved = %saved.layout, now = wisp_vm::qemu::MACHINE_LAYOUT, "the machine state was saved from a machine of another layout; booting instead");
        } else if saved.accel != accel {
            tracing::info!(sprite = %name, saved = %saved.accel, now = %accel, "the machine state was saved under another accelerator; booting instead");
        } else {
            return Some(saved);
        }
        self.warm.remove(volume_name);
        None
    }

    /// Puts sprite `name` to sleep if it is awake (see the module's text), then
    /// the volume is flushed, uploaded and closed. A warm sleep that cannot save
    /// the state leaves the sprite cold (its guest killed, as after a power cut:
    /// every flushed write is kept). In-flight requests end with the machine.
    pub async fn sleep(&self, name: &str, mode: SleepMode) -> Result<(), ControlError> {
        let Some(awake) = self.awake_map().remove(name) else {
            return Ok(());
        };
        let started = Instant::now();
        let volume_name = awake.volume.info().name.clone();
        // The ports listening now, saved with the state (see `SavedState::ports`).
        let ports = if mode == SleepMode::Warm && !awake.is_dead() {
            match tokio::time::timeout(Duration::from_secs(2), awake.ports()).await {
                Ok(Ok((now, _))) => now.iter().map(|p| p.port).collect(),
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let machine = awake.machine.lock().await.take();
        let mut saved = None;
        let stopped = match (machine, mode) {
            (Some(machine), SleepMode::Warm) => {
                let path = self.warm.state_path(&volume_name)?;
                match machine.save(&path).await {
                    Ok(report) => {
                        saved = Some(report);
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(sprite = %name, error = %e, "saving the machine state failed; the sprite goes cold");
                        let _ = std::fs::remove_file(&path);
                        Ok(())
                    }
                }
            }
            (Some(machine), SleepMode::Cold) => machine.stop().await,
            (None, _) => Ok(()),
        };
        let volume = awake.volume.clone();
        let (cpus, memory_mib, accel) = (awake.cpus, awake.memory_mib, awake.accel);
        let checkpoint_slots = Some(awake.slots.shown());
        drop(awake);
        let (closed, generation) = match wisp_vm::machine::reclaim_volume(volume).await {
            Some(volume) => {
                let generation = volume.generation().ok();
                let closed = volume.close().await.map_err(|source| ControlError::Volume {
                    context: format!("cannot close sprite `{name}`'s volume after its stop"),
                    source,
                });
                (closed, generation)
            }
            None => {
                tracing::warn!(sprite = %name, "volume still referenced after the stop; not closed");
                (Ok(()), None)
            }
        };
        match (saved, generation) {
            (Some(report), Some(generation)) => {
                let state = SavedState {
                    sprite: name.to_string(),
                    generation,
                    cpus,
                    memory_mib,
                    accel,
                    saved_at: unix_now(),
                    bytes: report.bytes,
                    ports,
                    checkpoint_slots,
                    layout: wisp_vm::qemu::MACHINE_LAYOUT.to_string(),
                };
                self.warm.record(&volume_name, &state)?;
                tracing::info!(sprite = %name, took = ?started.elapsed(), save = ?report.save, qemu_gone = ?report.total, bytes = report.bytes, "sprite asleep (warm)");
            }
            (Some(_), None) => self.warm.remove(&volume_name),
            (None, _) => {
                tracing::info!(sprite = %name, took = ?started.elapsed(), "sprite asleep (cold)")
            }
        }
        self.changed(name);
        stopped.map_err(|source| ControlError::Wake {
            name: name.to_string(),
            source,
        })?;
        closed
    }

    /// Takes over sprite `record`'s machine if an earlier daemon left it running
    /// (see [`Machine::adopt`]); whether it did.
    pub async fn adopt(&self, record: &SpriteRecord) -> Result<bool, ControlError> {
        let (name, volume_name) = (record.name.as_str(), record.volume.as_str());
        let run_dir = self.run_dir(volume_name);
        let Some(prior) = wisp_vm::machine::MachineRecord::read(&run_dir) else {
            return Ok(false);
        };
        let runtime = self.runtime().await?;
        let volume = Arc::new(
            self.store
                .open_volume(volume_name)
                .await
                .map_err(|source| ControlError::Volume {
                    context: format!(
                        "cannot adopt sprite `{name}`: cannot open volume `{volume_name}`"
                    ),
                    source,
                })?,
        );
        let mut config = runtime.machine_config(volume.clone(), volume_name).await;
        config.outlive_parent = self.outlive_daemon;
        let slots = Arc::new(Slots::new(volume.info().size));
        if let Some(shown) = checkpoint_mounts::read_record(&run_dir) {
            slots.fill(&self.store, volume_name, &shown).await;
        }
        config.extra_disks = slots.machine_disks();
        let adopted = Machine::adopt(config).await;
        let machine = match adopted {
            Ok(Some(m)) => m,
            other => {
                if let Err(e) = other {
                    tracing::warn!(sprite = %name, error = %e, "cannot adopt the sprite's running machine");
                }
                if let Some(v) = wisp_vm::machine::reclaim_volume(volume).await {
                    let _ = v.close().await;
                }
                return Ok(false);
            }
        };
        tracing::info!(sprite = %name, pid = prior.qemu_pid, "adopted a running sprite from an earlier daemon");
        self.insert(
            name,
            machine,
            volume,
            Woke {
                slots,
                size: (prior.cpus, prior.memory_mib, prior.accel),
                by: "adopt",
                listening: Vec::new(),
            },
        );
        Ok(true)
    }
}

/// Marks a sprite as booting (see `Machines::booting`) while it lives.
struct Booting<'a>(&'a Mutex<HashSet<String>>, String);

impl Booting<'_> {
    fn new<'a>(set: &'a Mutex<HashSet<String>>, name: &str) -> Booting<'a> {
        set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        Booting(set, name.to_string())
    }
}

impl Drop for Booting<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// The error of a wake the boot queue refused.
fn queue_full(name: &str, full: QueueFull) -> ControlError {
    ControlError::WakeQueueFull {
        name: name.to_string(),
        booting: full.booting,
        waiting: full.waiting,
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
