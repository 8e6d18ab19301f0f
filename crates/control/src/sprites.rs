//! The sprite lifecycle: create (a copy-on-write fork of an image: the
//! server's default or one named in the request), look up, change settings, wake for a request and sleep when idle
//! (through [`Machines`]), checkpoint and restore, services, delete (the VM,
//! the volume, the registry row). Operations on one sprite take turns.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use wisp_vm::image;
use wisp_volume::{CheckpointInfo, Dependant, Store, Volume, VolumeError};

use crate::machines::{Activity, Awake, Machines, SleepMode};
use crate::registry::{Page, Registry, RegistryError, SpriteRecord, SpriteSettings, UrlAuth};
use crate::sleep::SleepPolicy;
use crate::ControlError;

/// Sprite names are DNS labels: they become the first label of the
/// sprite's URL.
pub fn validate_name(name: &str) -> Result<(), ControlError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "bad sprite name `{name}`: use 1 to 63 lowercase letters, digits and hyphens, \
             starting and ending with a letter or digit"
        )))
    }
}

/// Largest `config.cpus` a sprite may ask for.
pub const MAX_CPUS: u32 = 64;
/// `config.ram_mb` bounds, in MiB: a guest kernel needs 128 to boot.
pub const RAM_MB: std::ops::RangeInclusive<u64> = 128..=262_144;
/// Largest `config.storage_gb` (10 TB: a disk is sparse, it costs what is written).
pub const MAX_STORAGE_GB: u64 = 10_000;
/// The `storage_gb` a sprite shows when it asked for none: its image's disk.
pub const DEFAULT_STORAGE_GB: u64 = 100;
/// Labels per sprite, and bytes per label.
const MAX_LABELS: usize = 64;
const MAX_LABEL_LEN: usize = 128;

/// Checks settings from a create or update; the error names the field.
pub fn validate_settings(settings: &SpriteSettings) -> Result<(), ControlError> {
    let bad =
        |field: &str, why: String| Err(ControlError::BadRequest(format!("bad `{field}`: {why}")));
    let config = &settings.config;
    if let Some(cpus) = config.cpus.filter(|c| !(1..=MAX_CPUS).contains(c)) {
        return bad("config.cpus", format!("{cpus}; use 1 to {MAX_CPUS}"));
    }
    if let Some(ram) = config.ram_mb.filter(|r| !RAM_MB.contains(r)) {
        return bad(
            "config.ram_mb",
            format!("{ram}; use {} to {} (MiB)", RAM_MB.start(), RAM_MB.end()),
        );
    }
    if let Some(gb) = config
        .storage_gb
        .filter(|g| !(1..=MAX_STORAGE_GB).contains(g))
    {
        return bad(
            "config.storage_gb",
            format!("{gb}; use 1 to {MAX_STORAGE_GB} (GB)"),
        );
    }
    if settings.labels.len() > MAX_LABELS {
        return bad(
            "labels",
            format!("{} labels; at most {MAX_LABELS}", settings.labels.len()),
        );
    }
    for label in &settings.labels {
        if label.is_empty() || label.len() > MAX_LABEL_LEN || label.chars().any(char::is_control) {
            return bad(
                "labels",
                format!(
                    "`{label}`: a label is 1 to {MAX_LABEL_LEN} bytes without control characters"
                ),
            );
        }
    }
    for key in settings.environment.keys() {
        let ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return bad(
                "environment",
                format!(
                    "variable name `{key}`: use letters, digits and `_`, not starting with a digit"
                ),
            );
        }
    }
    if let Some(runtime) = settings
        .runtime
        .as_deref()
        .filter(|r| !["default", "dev"].contains(r))
    {
        return bad("runtime", format!("`{runtime}`; use `default` or `dev`"));
    }
    if let Some(access) = settings
        .private_access
        .as_deref()
        .filter(|a| !["admins", "org_users"].contains(a))
    {
        return bad(
            "url_settings.private_access",
            format!("`{access}`; use `admins` or `org_users`"),
        );
    }
    Ok(())
}

/// Labels as given, each kept once, in first-seen order.
pub fn dedup_labels(labels: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    labels
        .into_iter()
        .filter(|l| seen.insert(l.clone()))
        .collect()
}

/// Now, as the registry stores times: RFC 3339, UTC, whole seconds.
pub(crate) fn now() -> String {
    rfc3339(SystemTime::now())
}

pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A time in seconds since the Unix epoch, as the volume engine keeps them.
pub(crate) fn rfc3339_from_unix(seconds: u64) -> String {
    rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The sprites of this host: the registry plus the volume store their disks
/// live in.
pub struct Sprites {
    pub(crate) registry: Registry,
    store: Store,
    home: PathBuf,
    /// The image a create forks when the request names none.
    image: String,
    pub(crate) machines: Machines,
    pub(crate) policy: SleepPolicy,
    /// One operation at a time per sprite: an operation opens the sprite's
    /// volume, which admits one user; a second request waits its turn
    /// instead of failing with "in use".
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Exec sessions of every sprite.
    sessions: Arc<crate::sessions::Sessions>,
    /// The latest answers to each sprite's guest requests, for a request the
    /// guest sends again after its answer was lost (see `tasks::GuestAnswers`).
    pub(crate) guest_answers: crate::tasks::GuestAnswers,
}

impl Sprites {
    /// `image` names the image (standard or imported) new sprites fork when
    /// a create names none; it is looked up in `home` at each create, so
    /// building or importing it after the daemon started works.
    pub fn new(
        registry: Registry,
        store: Store,
        home: PathBuf,
        image: String,
        policy: SleepPolicy,
    ) -> Self {
        let mut machines = Machines::new(home.clone(), store.clone());
        machines.outlive_daemon = policy.outlive_daemon;
        Sprites {
            machines,
            policy,
            registry,
            store,
            home,
            image,
            turns: Mutex::default(),
            sessions: Arc::default(),
            guest_answers: Default::default(),
        }
    }

    /// Waits for sprite `name`'s turn; the turn lasts while the guard lives.
    pub(crate) async fn turn(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            // Forget names nobody is waiting on, so the map stays small.
            turns.retain(|_, l| Arc::strong_count(l) > 1);
            turns.entry(name.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// The exec sessions of this host's sprites.
    pub fn sessions(&self) -> &Arc<crate::sessions::Sessions> {
        &self.sessions
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `$WISP_HOME`.
    pub fn home(&self) -> &std::path::Path {
        &self.home
    }

    /// How many sprites are awake.
    pub fn awake_count(&self) -> usize {
        self.machines.names().len()
    }

    /// Whether sprite `name`'s VM is running.
    pub fn is_awake(&self, name: &str) -> bool {
        self.machines.get(name).is_some()
    }

    /// Wakes sprite `name` if it sleeps and holds it awake while the
    /// returned activity lives (an exec session).
    ///
    /// The wake runs in a task of its own: once started it runs to completion
    /// even when the caller gives up (a client's handshake timeout), and a
    /// request arriving meanwhile waits for the sprite's turn and finds it awake.
    pub async fn activity(self: &Arc<Self>, name: &str) -> Result<Activity, ControlError> {
        self.wake_in_background(name)
            .await
            .map_err(|e| ControlError::Unavailable(format!("waking sprite `{name}` failed: {e}")))?
    }

    /// Starts waking sprite `name` (see [`Sprites::activity`]); the task's
    /// activity holds the sprite awake until it is dropped.
    pub fn wake_in_background(
        self: &Arc<Self>,
        name: &str,
    ) -> tokio::task::JoinHandle<Result<Activity, ControlError>> {
        let sprites = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let _turn = sprites.turn(&name).await;
            let record = sprites.get(&name)?;
            let activity = sprites.machines.wake(&record).await;
            if let Ok(activity) = &activity {
                sprites.serve_guest_requests(&name, activity.awake());
            }
            if record.settings.memory_in_bucket {
                // Resumed from it or not, the bucket's copy is spent.
                sprites.forget_bucket_memory(&record).await;
            }
            activity
        })
    }

    /// Gets ready to wake sprites (see [`Machines::prepare_early`]).
    pub async fn prepare_early(&self) {
        self.machines.prepare_early().await
    }

    /// Creates sprite `name`: its disk is a fork of image `image`'s checkpoint
    /// (the server's default image when `None`; metadata only, milliseconds),
    /// then the name is registered. An image that does not exist is
    /// [`ControlError::Image`] (404, or 400 for a bad name); the default image
    /// not built yet is [`ControlError::Unavailable`].
    ///
    /// Fork first, register second: a crash in between leaves an unnamed
    /// volume (a few KiB of metadata), never a name without a disk.
    pub async fn create(
        &self,
        name: &str,
        url_auth: UrlAuth,
        mut settings: SpriteSettings,
        image: Option<&str>,
    ) -> Result<SpriteRecord, ControlError> {
        validate_name(name)?;
        validate_settings(&settings)?;
        if self.registry.get(name)?.is_some() {
            return Err(RegistryError::AlreadyExists(name.to_string()).into());
        }
        let image_name = image.unwrap_or(&self.image);
        let base = match image {
            Some(asked) => image::get(&self.home, asked)?,
            None => image::find(&self.home, &self.image)?.ok_or_else(|| {
                let how = if self.image.parse::<image::ImageKind>().is_ok() {
                    format!("run `wisp image build {}`", self.image)
                } else {
                    format!("run `wisp image import {} FILE`", self.image)
                };
                ControlError::Unavailable(format!(
                    "image `{}` is not built, so no sprite can be created; {how}",
                    self.image
                ))
            })?,
        };
        settings.image = Some(image_name.to_string());
        let id = uuid::Uuid::new_v4().to_string();
        let volume = format!("sprite-{id}");
        // A disk larger than the image's when asked for (10^9-byte GB, rounded up to a
        // MiB); the agent grows the root filesystem to it at boot when the image has
        // resize2fs. A smaller one keeps the image's size: a filesystem is not shrunk.
        let size = settings
            .config
            .storage_gb
            .map(|gb| (gb * 1_000_000_000).div_ceil(1 << 20) << 20);
        self.store
            .fork_sized(&base.volume, &base.checkpoint, &volume, size)
            .await
            .map_err(|source| ControlError::Volume {
                context: format!(
                    "cannot fork image `{image_name}` (volume `{}`@{}) for sprite `{name}`",
                    base.volume, base.checkpoint
                ),
                source,
            })?;
        let at = now();
        let record = SpriteRecord {
            id,
            name: name.to_string(),
            volume,
            url_auth,
            created_at: at.clone(),
            updated_at: at,
            settings,
        };
        if let Err(e) = self.registry.insert(&record) {
            // Lost a race for the name (or the registry failed): the fork
            // is nobody's disk.
            if let Err(cleanup) = self.store.delete_volume(&record.volume).await {
                tracing::warn!(volume = %record.volume, error = %cleanup, "cannot delete the fork of a sprite that was not registered");
            }
            return Err(e.into());
        }
        tracing::info!(sprite = %name, volume = %record.volume, "sprite created");
        self.machines.changed(name);
        Ok(record)
    }

    /// Sprite `name`, or [`ControlError::NotFound`].
    pub fn get(&self, name: &str) -> Result<SpriteRecord, ControlError> {
        self.registry.get(name)?.ok_or_else(|| not_found(name))
    }

    pub fn list(
        &self,
        prefix: &str,
        labels: &[String],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, ControlError> {
        Ok(self.registry.list(prefix, labels, after, limit)?)
    }

    /// Applies `change` to sprite `name`'s URL auth and settings (checked
    /// after the change); the updated record. A new `config` takes effect at
    /// the sprite's next wake.
    pub fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut SpriteRecord),
    ) -> Result<SpriteRecord, ControlError> {
        let mut invalid = None;
        let updated = self.registry.update(name, &now(), |record| {
            let before = record.clone();
            change(record);
            if let Err(e) = validate_settings(&record.settings) {
                // Leave the row as it was: the caller sees the error.
                *record = before;
                invalid = Some(e);
            }
        })?;
        if let Some(e) = invalid {
            return Err(e);
        }
        let updated = updated.ok_or_else(|| not_found(name))?;
        self.machines.changed(name);
        Ok(updated)
    }

    /// Names of sprites as they are created, changed, woken, put to sleep or
    /// deleted (for `watchSprites`).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.machines.changes()
    }

    /// Stops sprite `name`'s VM if it runs and boots it again (its disk, its
    /// services; memory is lost). Returns once it is up.
    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<(), ControlError> {
        {
            let _turn = self.turn(name).await;
            let record = self.get(name)?;
            self.machines.sleep(name, SleepMode::Cold).await?;
            self.drop_memory(&record).await;
        }
        drop(self.activity(name).await?);
        tracing::info!(sprite = %name, "sprite restarted");
        Ok(())
    }

    /// Whether sprite `name` answers: its agent's round trip when awake, or
    /// `None` when it sleeps (a check does not wake it).
    pub async fn check(
        &self,
        name: &str,
    ) -> Result<Option<Result<Duration, String>>, ControlError> {
        self.get(name)?;
        let Some(awake) = self.machines.get(name) else {
            return Ok(None);
        };
        let ping = tokio::time::timeout(Duration::from_secs(10), awake.agent().ping()).await;
        Ok(Some(match ping {
            Ok(Ok(rtt)) => Ok(rtt),
            Ok(Err(e)) => Err(format!("its agent did not answer: {e}")),
            Err(_) => Err("its agent did not answer within 10 s".to_string()),
        }))
    }

    pub fn set_url_auth(
        &self,
        name: &str,
        url_auth: UrlAuth,
    ) -> Result<SpriteRecord, ControlError> {
        self.registry
            .set_url_auth(name, url_auth, &now())?
            .ok_or_else(|| not_found(name))
    }

    /// Deletes sprite `name`: its machine's run folder, its saved state, its
    /// volume (data, metadata and checkpoints), then its registry row. A volume already gone is not an error, so a
    /// delete interrupted between the two steps can be repeated.
    pub async fn delete(&self, name: &str) -> Result<(), ControlError> {
        let _turn = self.turn(name).await;
        let record = self.get(name)?;
        self.machines.sleep(name, SleepMode::Cold).await?;
        // Its console logs, records and sockets: nothing of it stays on the host.
        self.machines.remove_run_dir(&record.volume)?;
        self.drop_memory(&record).await;
        match self.store.delete_volume(&record.volume).await {
            Ok(()) | Err(VolumeError::NotFound(_)) => {}
            Err(source) => {
                return Err(ControlError::Volume {
                    context: format!("cannot delete sprite `{name}`'s volume `{}`", record.volume),
                    source,
                })
            }
        }
        self.registry.remove(name)?;
        self.sessions.forget(name);
        self.guest_answers.forget(name);
        tracing::info!(sprite = %name, "sprite deleted");
        self.machines.changed(name);
        Ok(())
    }
}

/// What [`Sprites::with_volume`] does with an awake sprite.
pub(crate) enum IfAwake {
    /// Act on the running volume.
    Use,
    /// Have the guest sync its filesystems, then act on the running volume
    /// (what programs wrote before is there; what they write meanwhile may be
    /// half there: for reading, as a diff does).
    SyncThenUse,
    /// Freeze the guest's filesystems, act on the running volume, thaw: a
    /// checkpoint holds what programs wrote just before it, in a state the
    /// filesystems could have been in.
    FreezeThenUse,
    /// Put the sprite to sleep and act on the closed volume (its guest's
    /// caches would disagree with what `op` does to the disk).
    Stop,
}

impl Sprites {
    /// Runs `op` on sprite `name`'s volume in the sprite's turn. An awake
    /// sprite's running volume is used as `awake` says; a sleeping sprite's
    /// volume (or an awake one's, once put to sleep) is opened for `op` and
    /// closed after (which ships the metadata).
    pub(crate) async fn with_volume<T>(
        &self,
        name: &str,
        what: &str,
        awake: IfAwake,
        op: impl AsyncFnOnce(&Volume) -> Result<T, VolumeError>,
    ) -> Result<T, ControlError> {
        let _turn = self.turn(name).await;
        let record = self.get(name)?;
        let context = |source| ControlError::Volume {
            context: format!("cannot {what} sprite `{name}` (volume `{}`)", record.volume),
            source,
        };
        if let Some(running) = self.machines.get(name) {
            match awake {
                IfAwake::Use => return op(running.volume()).await.map_err(context),
                IfAwake::SyncThenUse => {
                    sync_guest(name, &running).await;
                    return op(running.volume()).await.map_err(context);
                }
                IfAwake::FreezeThenUse => {
                    let frozen = freeze_guest(name, &running).await;
                    let result = op(running.volume()).await;
                    if frozen {
                        thaw_guest(name, &running).await;
                    }
                    return result.map_err(context);
                }
                IfAwake::Stop => {
                    // The sleep closes the volume, which needs every reference gone.
                    drop(running);
                    self.machines.sleep(name, SleepMode::Cold).await?;
                }
            }
        }
        if matches!(awake, IfAwake::Stop) {
            // What `op` does to the disk makes a saved memory state meaningless.
            self.drop_memory(&record).await;
        }
        let volume = self
            .store
            .open_volume(&record.volume)
            .await
            .map_err(context)?;
        let result = op(&volume).await;
        let closed = volume.close().await;
        let value = result.map_err(context)?;
        closed.map_err(context)?;
        Ok(value)
    }

    /// Freezes sprite `name`'s disk as its next checkpoint (`v0`, `v1`, ...).
    pub async fn checkpoint(
        &self,
        name: &str,
        comment: Option<String>,
    ) -> Result<CheckpointInfo, ControlError> {
        let info = self
            .with_volume(name, "checkpoint", IfAwake::FreezeThenUse, async |v| {
                v.checkpoint(comment).await
            })
            .await?;
        tracing::info!(sprite = %name, checkpoint = %info.id, "checkpoint created");
        self.machines.refresh_checkpoints(name, false);
        Ok(info)
    }

    /// Sprite `name`'s checkpoints, newest first.
    pub async fn checkpoints(&self, name: &str) -> Result<Vec<CheckpointInfo>, ControlError> {
        let mut list = self
            .with_volume(name, "list the checkpoints of", IfAwake::Use, async |v| {
                v.checkpoints().await
            })
            .await?;
        list.sort_by_key(|c| std::cmp::Reverse(checkpoint_number(&c.id)));
        Ok(list)
    }

    /// Makes sprite `name`'s disk equal to checkpoint `id` again; later
    /// checkpoints stay. An awake sprite is stopped first (its guest's
    /// caches would disagree with the disk) and wakes on its next request.
    pub async fn restore(&self, name: &str, id: &str) -> Result<(), ControlError> {
        self.with_volume(name, "restore", IfAwake::Stop, async |v| {
            v.restore(id).await
        })
        .await?;
        tracing::info!(sprite = %name, checkpoint = %id, "checkpoint restored");
        Ok(())
    }
}

impl Sprites {
    /// Deletes checkpoint `id` of sprite `name` (the volume engine merges it
    /// into the checkpoints after it, so they read as before; gc frees what only
    /// it held). Refused with a conflict naming the dependant while the
    /// sprite's current state stands on it (its newest checkpoint, or the one
    /// last restored) or a sprite was forked from it.
    pub async fn delete_checkpoint(&self, name: &str, id: &str) -> Result<(), ControlError> {
        let result = self
            .with_volume(name, "delete a checkpoint of", IfAwake::Use, async |v| {
                v.delete_checkpoint(id).await
            })
            .await;
        match result {
            Err(ControlError::Volume {
                source: VolumeError::CheckpointInUse { dependant, .. },
                ..
            }) => {
                let why = match dependant {
                    Dependant::Head => format!(
                        "sprite `{name}`'s current state stands on it (its newest checkpoint, or the one it was last restored to); take a new checkpoint first"
                    ),
                    Dependant::Fork { name: volume, deleted } => {
                        match self.registry.name_of_volume(&volume)? {
                            Some(fork) => format!("sprite `{fork}` was forked from it"),
                            None if deleted => format!("deleted volume `{volume}` was forked from it and still has forks of its own"),
                            None => format!("volume `{volume}` was forked from it"),
                        }
                    }
                };
                Err(ControlError::Conflict(format!(
                    "checkpoint `{id}` of sprite `{name}` cannot be deleted: {why}"
                )))
            }
            Err(e) => Err(e),
            Ok(()) => {
                tracing::info!(sprite = %name, checkpoint = %id, "checkpoint deleted");
                self.machines.refresh_checkpoints(name, false);
                Ok(())
            }
        }
    }
}

/// Asks an awake sprite's guest to write its dirty pages to the disk, so a
/// live checkpoint holds what programs wrote just before it. A guest that
/// cannot is still checkpointed: what reached the disk is consistent as
/// after a power cut.
async fn sync_guest(name: &str, awake: &Awake) {
    let outcome = awake.agent().run(["sync"]);
    match tokio::time::timeout(Duration::from_secs(30), outcome).await {
        Ok(Ok(out)) if out.status.success() => {}
        Ok(Ok(out)) => {
            tracing::warn!(sprite = %name, code = out.status.shell_code(), "sync in the guest failed before a checkpoint")
        }
        Ok(Err(e)) => {
            tracing::warn!(sprite = %name, error = %e, "sync in the guest failed before a checkpoint")
        }
        Err(_) => tracing::warn!(sprite = %name, "sync in the guest timed out before a checkpoint"),
    }
}

/// Freezes an awake sprite's filesystems for a live checkpoint (see
/// [`wisp_vm::agent::AgentClient::freeze`]); whether they are frozen. A guest
/// that cannot freeze is synced instead (an older agent), and one that fails
/// is still checkpointed: what reached the disk is consistent as after a
/// power cut.
async fn freeze_guest(name: &str, awake: &Awake) -> bool {
    if !awake.agent().can_freeze() {
        sync_guest(name, awake).await;
        return false;
    }
    let frozen = awake.agent().freeze(CHECKPOINT_FREEZE_TIMEOUT);
    match tokio::time::timeout(Duration::from_secs(60), frozen).await {
        // Nothing freezable (no disk filesystem mounted writable): nothing to thaw.
        Ok(Ok(filesystems)) => !filesystems.is_empty(),
        Ok(Err(e)) => {
            tracing::warn!(sprite = %name, error = %e, "cannot freeze the guest's filesystems for a checkpoint");
            false
        }
        Err(_) => {
            tracing::warn!(sprite = %name, "the guest did not freeze its filesystems within 60s");
            // It may still freeze: end it.
            thaw_guest(name, awake).await;
            false
        }
    }
}

/// Ends [`freeze_guest`]'s freeze.
async fn thaw_guest(name: &str, awake: &Awake) {
    match tokio::time::timeout(Duration::from_secs(10), awake.agent().thaw()).await {
        Ok(Ok(false)) => {}
        Ok(Ok(true)) => {
            tracing::warn!(sprite = %name, "the guest had thawed by itself before the checkpoint was taken")
        }
        Ok(Err(e)) => {
            tracing::warn!(sprite = %name, error = %e, "cannot thaw the guest's filesystems")
        }
        Err(_) => tracing::warn!(sprite = %name, "the guest did not answer a thaw within 10s"),
    }
}

/// How long a guest stays frozen for a checkpoint if the host never thaws it.
/// A checkpoint's metadata takes milliseconds, but it first waits for an upload
/// under way to the bucket (`Volume::checkpoint`), which a slow store stretches.
const CHECKPOINT_FREEZE_TIMEOUT: Duration = Duration::from_secs(60);

/// `v12` -> 12, for ordering (`v10` after `v9`).
pub(crate) fn checkpoint_number(id: &str) -> u64 {
    id.strip_prefix('v')
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn not_found(name: &str) -> ControlError {
    ControlError::NotFound(format!("sprite `{name}` does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["a", "my-sprite", "web2", &"x".repeat(63)] {
            validate_name(good).unwrap();
        }
        for bad in ["", "-a", "a-", "My", "a_b", "a.b", "ü", &"x".repeat(64)] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }
}
