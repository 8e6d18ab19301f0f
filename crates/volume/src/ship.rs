//! Shipping a volume's metadata to the bucket and reading it back
//! (Litestream-style, `docs/STORAGE.md`): the operation log as
//! `meta/log-<first>-<last>` objects, full snapshots as `meta/snapshot-<seq>.db`,
//! and the reader that rebuilds the database from the newest snapshot and the logs
//! after it, listing again when a writer compacted them under it.

use std::path::Path;

use crate::error::VolumeError;
use crate::meta::{apply, db_err, poisoned, Meta, Op};
use crate::retrying_store::Blobs;

fn meta_prefix(volume_id: &str) -> String {
    format!("volumes/{volume_id}/meta/")
}

/// Parses `snapshot-<seq>.db` and `log-<first>-<last>` object names.
enum MetaObject {
    Snapshot(i64),
    Log(i64, i64),
}

fn parse_meta_name(name: &str) -> Option<MetaObject> {
    if let Some(rest) = name.strip_prefix("snapshot-") {
        return rest
            .strip_suffix(".db")
            .and_then(|s| s.parse().ok())
            .map(MetaObject::Snapshot);
    }
    let rest = name.strip_prefix("log-")?;
    let (a, b) = rest.split_once('-')?;
    Some(MetaObject::Log(a.parse().ok()?, b.parse().ok()?))
}

/// Ships the pending operations as one log object; returns how many.
pub async fn ship_log(
    blobs: &Blobs,
    volume_id: &str,
    meta: &std::sync::Mutex<Meta>,
) -> Result<usize, VolumeError> {
    let pending = meta.lock().map_err(|_| poisoned())?.pending()?;
    let (Some(first), Some(last)) = (pending.first(), pending.last()) else {
        return Ok(0);
    };
    let (first, last) = (first.0, last.0);
    let mut body = String::new();
    for (seq, op) in &pending {
        body.push_str(&format!("{seq} {op}\n"));
    }
    let key = format!("{}log-{first:020}-{last:020}", meta_prefix(volume_id));
    blobs.put(&key, body.into_bytes().into()).await?;
    meta.lock().map_err(|_| poisoned())?.mark_shipped(last)?;
    Ok(pending.len())
}

/// Ships a full snapshot and deletes the snapshots and logs it supersedes.
pub async fn ship_snapshot(
    blobs: &Blobs,
    volume_id: &str,
    meta: &std::sync::Mutex<Meta>,
    scratch: &Path,
) -> Result<(), VolumeError> {
    // Logs first, so that nothing is only in the snapshot we are about to write.
    ship_log(blobs, volume_id, meta).await?;
    let seq = meta.lock().map_err(|_| poisoned())?.snapshot_to(scratch)?;
    let data = std::fs::read(scratch).map_err(|e| VolumeError::io(scratch.display(), e))?;
    let _ = std::fs::remove_file(scratch);
    let prefix = meta_prefix(volume_id);
    blobs
        .put(&format!("{prefix}snapshot-{seq:020}.db"), data.into())
        .await?;
    for obj in blobs.list(&prefix).await? {
        let name = obj.location.filename().unwrap_or("").to_string();
        let stale = match parse_meta_name(&name) {
            Some(MetaObject::Snapshot(s)) => s < seq,
            Some(MetaObject::Log(_, last)) => last <= seq,
            None => false,
        };
        if stale {
            blobs.delete(obj.location.as_ref()).await?;
        }
    }
    Ok(())
}

/// How many listings a reader of a volume's metadata goes through, each
/// one taken because the writer replaced what the previous one showed,
/// before it gives up with [`VolumeError::MetadataUnsettled`].
const LOAD_ATTEMPTS: u32 = 16;

/// A volume's metadata objects as one listing saw them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Listing {
    /// The newest snapshot: `(seq, key)`.
    snapshot: Option<(i64, String)>,
    /// Every log: `(first, last, key)`, oldest first.
    logs: Vec<(i64, i64, String)>,
}

impl Listing {
    /// Highest operation sequence number the listed objects hold.
    fn seq(&self) -> Option<i64> {
        let logs = self.logs.iter().map(|(_, last, _)| *last);
        logs.chain(self.snapshot.as_ref().map(|(s, _)| *s)).max()
    }
}

async fn list_meta(blobs: &Blobs, volume_id: &str) -> Result<Listing, VolumeError> {
    let mut listing = Listing::default();
    for obj in blobs.list(&meta_prefix(volume_id)).await? {
        let name = obj.location.filename().unwrap_or("").to_string();
        match parse_meta_name(&name) {
            Some(MetaObject::Snapshot(s))
                if listing.snapshot.as_ref().is_none_or(|(b, _)| s > *b) =>
            {
                listing.snapshot = Some((s, obj.location.to_string()))
            }
            Some(MetaObject::Log(first, last)) => {
                listing.logs.push((first, last, obj.location.to_string()))
            }
            _ => {}
        }
    }
    listing.logs.sort();
    Ok(listing)
}

/// Highest operation sequence number present in the bucket for the volume
/// (`None` if it has no metadata at all).
pub async fn remote_seq(blobs: &Blobs, volume_id: &str) -> Result<Option<i64>, VolumeError> {
    Ok(list_meta(blobs, volume_id).await?.seq())
}

/// What one read of a listing gave.
enum Attempt {
    /// The database, as of operation `applied`.
    Loaded(Meta, i64),
    /// The listing holds no snapshot.
    NoSnapshot,
    /// The listing was out of date when read: an object it named is gone, or
    /// the logs it named leave a gap. The error says which.
    Stale(VolumeError),
}

/// Rebuilds the volume's database at `dest` from the bucket: the newest
/// snapshot plus every newer log. `Ok(None)` when the bucket has no snapshot.
///
/// The volume's writer may ship a snapshot and delete the objects it replaces
/// at any moment, so what a listing names can be gone when it is read, and a
/// listing taken while that happens (a `file://` store's is a walk of a
/// folder) can miss both the new snapshot and the deleted logs. So every read
/// is checked against a fresh listing: an object gone, a gap in the logs, no
/// snapshot, or a snapshot newer than what was read, are read again from the
/// fresh listing as long as listings keep changing (the writer is at work),
/// and are errors only once two listings in a row agree.
pub async fn load_from_bucket(
    blobs: &Blobs,
    volume_id: &str,
    dest: &Path,
) -> Result<Option<Meta>, VolumeError> {
    let mut listing = list_meta(blobs, volume_id).await?;
    let mut reason = String::new();
    for _ in 0..LOAD_ATTEMPTS {
        let attempt = load_listed(blobs, &listing, dest).await?;
        let fresh = list_meta(blobs, volume_id).await?;
        let settled = fresh == listing;
        match attempt {
            Attempt::Loaded(meta, applied) => match &fresh.snapshot {
                Some((seq, key)) if *seq > applied => {
                    // Compacted since the listing: logs it missed may be gone.
                    drop(meta);
                    reason =
                        format!("snapshot `{key}` appeared after operation {applied} was read");
                }
                _ => return Ok(Some(meta)),
            },
            Attempt::NoSnapshot if settled => return Ok(None),
            Attempt::NoSnapshot => reason = "no snapshot was listed".into(),
            Attempt::Stale(e) if settled => {
                remove_db_files(dest);
                return Err(e);
            }
            Attempt::Stale(e) => reason = e.to_string(),
        }
        tracing::debug!(
            volume = volume_id,
            %reason,
            "metadata changed while being read; reading it again"
        );
        listing = fresh;
    }
    remove_db_files(dest);
    Err(VolumeError::MetadataUnsettled {
        prefix: meta_prefix(volume_id),
        attempts: LOAD_ATTEMPTS,
        reason,
    })
}

/// Removes the database at `dest` with its WAL and shared-memory files.
fn remove_db_files(dest: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", dest.display()));
    }
}

/// Reads what `listing` names into `dest`.
async fn load_listed(
    blobs: &Blobs,
    listing: &Listing,
    dest: &Path,
) -> Result<Attempt, VolumeError> {
    let Some((snap_seq, snap_key)) = &listing.snapshot else {
        return Ok(Attempt::NoSnapshot);
    };
    let data = match blobs.get(snap_key).await {
        Ok(data) => data,
        Err(e) if e.is_not_found() => return Ok(Attempt::Stale(e)),
        Err(e) => return Err(e),
    };
    remove_db_files(dest);
    let tmp = dest.with_extension("download");
    std::fs::write(&tmp, &data).map_err(|e| VolumeError::io(tmp.display(), e))?;
    std::fs::rename(&tmp, dest).map_err(|e| VolumeError::io(dest.display(), e))?;
    let mut meta = Meta::open(dest)?;
    meta.conn
        .execute_batch("DELETE FROM dirty; DELETE FROM oplog;")
        .map_err(db_err(dest))?;
    let mut applied = meta.applied_seq()?.max(*snap_seq);
    for (_, last, key) in &listing.logs {
        if *last <= applied {
            continue;
        }
        let body = match blobs.get(key).await {
            Ok(body) => body,
            Err(e) if e.is_not_found() => return Ok(Attempt::Stale(e)),
            Err(e) => return Err(e),
        };
        let text = String::from_utf8_lossy(&body);
        let path = dest.to_path_buf();
        let tx = meta.conn.transaction().map_err(db_err(&path))?;
        for line in text.lines() {
            let bad = |reason: String| VolumeError::BadMetadata {
                key: key.clone(),
                reason,
            };
            let (seq, op) = line
                .split_once(' ')
                .ok_or_else(|| bad("line without sequence number".into()))?;
            let seq: i64 = seq
                .parse()
                .map_err(|_| bad(format!("bad sequence number `{seq}`")))?;
            if seq <= applied {
                continue;
            }
            if seq != applied + 1 {
                // The logs in between may have been deleted after a
                // snapshot replaced them while the listing was taken.
                return Ok(Attempt::Stale(bad(format!(
                    "gap in metadata log: expected operation {} found {seq}",
                    applied + 1
                ))));
            }
            let op: Op = serde_json::from_str(op).map_err(|e| bad(e.to_string()))?;
            apply(&tx, &op).map_err(db_err(&path))?;
            applied = seq;
        }
        Meta::set_local(&tx, "applied_seq", &applied.to_string()).map_err(db_err(&path))?;
        tx.commit().map_err(db_err(&path))?;
    }
    Ok(Attempt::Loaded(meta, applied))
}
