//! `/.sprite/checkpoints/v<N>` inside awake sprites: the newest
//! [`SLOTS`] checkpoints, each shown read-only through a
//! [`CheckpointDisk`] slot that the machine has from its boot (QEMU's
//! `microvm` takes no hot-plugged disks), mounted by the agent.
//!
//! [`refresh`] brings the slots in line with the checkpoint list: after a wake
//! (boot, resume, adoption) and after each checkpoint made or deleted while the
//! sprite is awake. A slot whose checkpoint left the newest five is unmounted in
//! the guest first and switched only once that worked (a busy mount, such as a
//! shell whose working directory is in it, stays until the next refresh).
//! Which checkpoint each slot shows is kept with a warm sprite's saved state and
//! in `run/<volume>/checkpoint-slots.json`, so a resumed or adopted guest, which
//! still has them mounted, reads the same bytes from a new daemon; such a wake
//! remounts them all, since what the guest wrote to them (ext4 replaying a
//! journal) lived in the old process's memory.

use std::path::Path;
use std::sync::Arc;

use wisp_vm::agent::{AgentClient, AgentError};
use wisp_vm::checkpoint_disk::CheckpointDisk;
use wisp_vm::BlockDevice;
use wisp_volume::{Store, Volume};

/// How many checkpoints a sprite shows (the reference service shows five).
pub const SLOTS: usize = 5;

/// The slots of one machine: their disks and a lock so that one refresh at a
/// time touches them.
pub struct Slots {
    pub disks: Vec<Arc<CheckpointDisk>>,
    lock: tokio::sync::Mutex<()>,
}

/// The export name and guest serial of slot `i`.
pub fn slot_name(i: usize) -> String {
    format!("wisp-cp{i}")
}

const RECORD: &str = "checkpoint-slots.json";

impl Slots {
    /// Empty slots the size of a `size`-byte disk.
    pub fn new(size: u64) -> Slots {
        Slots {
            disks: (0..SLOTS).map(|_| CheckpointDisk::new(size)).collect(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The machine's extra disks for [`wisp_vm::MachineConfig::extra_disks`].
    pub fn machine_disks(&self) -> Vec<(String, Arc<dyn BlockDevice>)> {
        self.disks
            .iter()
            .enumerate()
            .map(|(i, d)| (slot_name(i), d.clone() as Arc<dyn BlockDevice>))
            .collect()
    }

    /// Empties every slot (a machine about to boot has nothing mounted).
    pub fn clear(&self) {
        for disk in &self.disks {
            disk.set(None);
        }
    }

    /// Which checkpoint each slot shows.
    pub fn shown(&self) -> Vec<Option<String>> {
        self.disks.iter().map(|d| d.checkpoint()).collect()
    }

    /// Shows `shown[i]` in slot `i` (a resumed or adopted machine's mapping).
    /// A checkpoint that cannot be read (deleted meanwhile) leaves its slot
    /// empty: the guest's mount of it then reads zeros and fails its reads
    /// until the refresh unmounts it. Returns whether every slot was filled.
    pub async fn fill(&self, store: &Store, volume: &str, shown: &[Option<String>]) -> bool {
        let mut all = true;
        for (disk, name) in self.disks.iter().zip(shown) {
            match name {
                Some(name) => match store.checkpoint_reader(volume, name).await {
                    Ok(reader) => disk.set(Some((name.clone(), reader))),
                    Err(e) => {
                        tracing::warn!(volume, checkpoint = %name, error = %e, "a mounted checkpoint cannot be read");
                        disk.set(None);
                        all = false;
                    }
                },
                None => disk.set(None),
            }
        }
        all
    }
}

/// The mapping an earlier daemon left in `run_dir`, if any.
pub fn read_record(run_dir: &Path) -> Option<Vec<Option<String>>> {
    let text = std::fs::read(run_dir.join(RECORD)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_record(run_dir: &Path, shown: &[Option<String>]) {
    let path = run_dir.join(RECORD);
    let tmp = run_dir.join(format!("{RECORD}.tmp"));
    let json = serde_json::to_vec(shown).unwrap_or_default();
    if let Err(e) = std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &path)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the checkpoint slots");
    }
}

fn is_errno(e: &AgentError, errno: &str) -> bool {
    matches!(e, AgentError::Os { errno: found, .. } if found == errno)
}

/// Mounts the newest [`SLOTS`] checkpoints of `volume` in the guest and
/// unmounts the others; with `remount`, also remounts what is mounted already
/// (after a resume or an adoption). Failures are logged: the sprite works on
/// without them.
pub async fn refresh(
    sprite: &str,
    store: &Store,
    volume: &Volume,
    agent: &AgentClient,
    slots: &Slots,
    run_dir: &Path,
    remount: bool,
) {
    let _turn = slots.lock.lock().await;
    let volume_name = volume.info().name;
    let mut wanted: Vec<String> = match volume.checkpoints().await {
        Ok(list) => list.into_iter().map(|c| c.id).collect(),
        Err(e) => {
            tracing::warn!(sprite, error = %e, "cannot list checkpoints to mount");
            return;
        }
    };
    wanted.sort_by_key(|id| std::cmp::Reverse(crate::sprites::checkpoint_number(id)));
    wanted.truncate(SLOTS);
    // Unmount what is no longer wanted (and with `remount`, everything).
    for disk in &slots.disks {
        let Some(shown) = disk.checkpoint() else {
            continue;
        };
        if wanted.contains(&shown) && !remount {
            continue;
        }
        match agent.unmount_checkpoint(&shown).await {
            Ok(()) => disk.set(None),
            Err(e) if is_errno(&e, "ENOENT") || is_errno(&e, "EINVAL") => disk.set(None),
            Err(e) => {
                tracing::info!(sprite, checkpoint = %shown, error = %e, "checkpoint mount kept (in use)");
            }
        }
    }
    write_record(run_dir, &slots.shown());
    // Mount what is wanted and not shown, each in a free slot.
    for name in wanted {
        if slots.shown().contains(&Some(name.clone())) {
            continue;
        }
        let Some((i, disk)) = slots
            .disks
            .iter()
            .enumerate()
            .find(|(_, d)| d.checkpoint().is_none())
        else {
            break;
        };
        let reader = match store.checkpoint_reader(&volume_name, &name).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(sprite, checkpoint = %name, error = %e, "cannot read a checkpoint to mount");
                continue;
            }
        };
        disk.set(Some((name.clone(), reader)));
        write_record(run_dir, &slots.shown());
        match agent.mount_checkpoint(&slot_name(i), &name).await {
            Ok(()) => {}
            Err(e) if is_errno(&e, "EEXIST") => {}
            Err(e) => {
                tracing::warn!(sprite, checkpoint = %name, error = %e, "cannot mount a checkpoint in the guest");
                disk.set(None);
                write_record(run_dir, &slots.shown());
            }
        }
    }
}
