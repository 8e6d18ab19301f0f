//! Saved machine states of sleeping sprites: the "warm" stage of sleep.
//!
//! A warm sprite's QEMU wrote its device and memory state to
//! `$WISP_HOME/warm/<volume>.state` (QEMU's migration stream, see
//! [`wisp_vm::Machine::save`]) and exited; `<volume>.json` beside it is a
//! [`SavedState`] saying what the state needs to be resumed: the volume's content
//! generation it was saved over, the machine's size and accelerator. The JSON is
//! written last, so a state without one is an unfinished save and is ignored.
//!
//! A sprite with `keep_memory` that goes cold keeps its state in the bucket, as
//! two attachments of its volume ([`wisp_volume::Store::put_attachment`]):
//! `memory.json` (the [`SavedState`] plus the stream's length and CRC-32C) and
//! `memory.zst` (the stream, zstd-compressed). Any host can resume it.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use wisp_vm::Accel;
use wisp_volume::Store;

use crate::ControlError;

/// What a saved state needs to be resumed, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedState {
    /// The sprite it belongs to (for logs; states are found by volume).
    pub sprite: String,
    /// [`wisp_volume::Volume::generation`] when the state was saved: the disk the
    /// guest's memory agrees with.
    pub generation: u64,
    pub cpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    /// When it was saved, in seconds since the Unix epoch.
    pub saved_at: u64,
    /// The state file's size in bytes.
    pub bytes: u64,
    /// The guest's listening TCP ports when it was saved: listening again the moment
    /// it resumes, so a request to one need not wait for the guest to say so.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Which checkpoint each of the machine's checkpoint slots showed
    /// ([`crate::checkpoint_mounts`]); `None` for a state saved by a wisp
    /// without them, whose machine had other devices (it boots instead).
    #[serde(default)]
    pub checkpoint_slots: Option<Vec<Option<String>>>,
    /// The machine's devices and CPU model ([`wisp_vm::qemu::MACHINE_LAYOUT`]) when it
    /// was saved: a state of another layout does not resume (it boots instead).
    /// Empty for a state saved by a wisp that did not record it.
    #[serde(default)]
    pub layout: String,
}

/// The bucket copy's description (`memory.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct BucketState {
    #[serde(flatten)]
    state: SavedState,
    /// CRC-32C of the uncompressed stream.
    crc32c: u32,
}

const BUCKET_META: &str = "memory.json";
const BUCKET_DATA: &str = "memory.zst";

/// The saved states on this host's disk.
#[derive(Debug, Clone)]
pub struct WarmStates {
    dir: PathBuf,
}

impl WarmStates {
    /// States under `home/warm`.
    pub fn new(home: &Path) -> WarmStates {
        WarmStates {
            dir: home.join("warm"),
        }
    }

    /// Where volume `volume`'s state file goes (the folder is created).
    pub fn state_path(&self, volume: &str) -> Result<PathBuf, ControlError> {
        std::fs::create_dir_all(&self.dir).map_err(ControlError::Io)?;
        Ok(self.dir.join(format!("{volume}.state")))
    }

    fn meta_path(&self, volume: &str) -> PathBuf {
        self.dir.join(format!("{volume}.json"))
    }

    /// Volume `volume`'s complete saved state, if there is one.
    pub fn get(&self, volume: &str) -> Option<SavedState> {
        let meta = std::fs::read(self.meta_path(volume)).ok()?;
        let state: SavedState = serde_json::from_slice(&meta).ok()?;
        self.dir
            .join(format!("{volume}.state"))
            .exists()
            .then_some(state)
    }

    /// Marks volume `volume`'s state file complete.
    pub fn record(&self, volume: &str, state: &SavedState) -> Result<(), ControlError> {
        let path = self.meta_path(volume);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(state).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(ControlError::Io)
    }

    /// Deletes volume `volume`'s state (description first: a state without one
    /// is never used).
    pub fn remove(&self, volume: &str) {
        let _ = std::fs::remove_file(self.meta_path(volume));
        let _ = std::fs::remove_file(self.dir.join(format!("{volume}.state")));
    }

    /// Every complete state here, by volume.
    pub fn list(&self) -> Vec<(String, SavedState)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(String, SavedState)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".json")?.to_string();
                let state = self.get(&name)?;
                Some((name, state))
            })
            .collect();
        out.sort_by_key(|(_, s)| s.saved_at);
        out
    }

    /// Copies volume `volume`'s local state to the bucket (compressed, with a
    /// checksum), so that any host can resume it. Returns the compressed size.
    pub async fn upload(&self, store: &Store, volume: &str) -> Result<u64, ControlError> {
        let state = self.get(volume).ok_or_else(|| {
            ControlError::NotFound(format!("no saved state of volume `{volume}` here"))
        })?;
        let path = self.dir.join(format!("{volume}.state"));
        let (crc, compressed) = tokio::task::spawn_blocking(move || {
            let raw = std::fs::read(&path)?;
            let crc = crc32c::crc32c(&raw);
            Ok::<_, std::io::Error>((crc, zstd::bulk::compress(&raw, 1)?))
        })
        .await
        .map_err(|e| ControlError::Io(std::io::Error::other(e)))?
        .map_err(ControlError::Io)?;
        let size = compressed.len() as u64;
        let meta = BucketState { state, crc32c: crc };
        let volume_err = |source| ControlError::Volume {
            context: format!("cannot keep volume `{volume}`'s machine state in the bucket"),
            source,
        };
        // Data first, description last: a description always has its data.
        store
            .put_attachment(volume, BUCKET_DATA, vec![Bytes::from(compressed)])
            .await
            .map_err(volume_err)?;
        store
            .put_attachment(
                volume,
                BUCKET_META,
                vec![Bytes::from(serde_json::to_vec(&meta).unwrap_or_default())],
            )
            .await
            .map_err(volume_err)?;
        Ok(size)
    }

    /// Brings volume `volume`'s state from the bucket to this host, checking its
    /// length and checksum. `Ok(None)` when the bucket has none.
    pub async fn download(
        &self,
        store: &Store,
        volume: &str,
    ) -> Result<Option<SavedState>, ControlError> {
        let volume_err = |source| ControlError::Volume {
            context: format!("cannot read volume `{volume}`'s machine state from the bucket"),
            source,
        };
        let Some(meta) = store
            .get_attachment(volume, BUCKET_META)
            .await
            .map_err(volume_err)?
        else {
            return Ok(None);
        };
        let meta: BucketState = serde_json::from_slice(&meta).map_err(|e| {
            ControlError::Unavailable(format!(
                "volume `{volume}`'s machine state description is not valid: {e}"
            ))
        })?;
        let Some(data) = store
            .get_attachment(volume, BUCKET_DATA)
            .await
            .map_err(volume_err)?
        else {
            return Ok(None);
        };
        let path = self.state_path(volume)?;
        let expected = (meta.state.bytes, meta.crc32c);
        let written = tokio::task::spawn_blocking(move || {
            let raw = zstd::bulk::decompress(&data, expected.0 as usize)?;
            if raw.len() as u64 != expected.0 || crc32c::crc32c(&raw) != expected.1 {
                return Ok(false);
            }
            std::fs::write(&path, &raw)?;
            Ok::<_, std::io::Error>(true)
        })
        .await
        .map_err(|e| ControlError::Io(std::io::Error::other(e)))?
        .map_err(ControlError::Io)?;
        if !written {
            return Err(ControlError::Unavailable(format!(
                "volume `{volume}`'s machine state in the bucket is corrupt (length or CRC-32C differ)"
            )));
        }
        self.record(volume, &meta.state)?;
        Ok(Some(meta.state))
    }

    /// Deletes volume `volume`'s state from the bucket (description first).
    pub async fn delete_from_bucket(store: &Store, volume: &str) -> Result<(), ControlError> {
        for file in [BUCKET_META, BUCKET_DATA] {
            store
                .delete_attachment(volume, file)
                .await
                .map_err(|source| ControlError::Volume {
                    context: format!("cannot delete volume `{volume}`'s machine state"),
                    source,
                })?;
        }
        Ok(())
    }
}
