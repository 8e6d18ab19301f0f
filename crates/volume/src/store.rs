//! A store: the bucket layout (format file, names index, volumes), volume
//! lifecycle (create, list, delete, fork, open), block-map materialisation
//! along layer chains, extent fetching with checksum verification. Gc and
//! compaction are in `gc.rs`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::config::{StoreConfig, VolumeInfo};
use crate::error::VolumeError;
use crate::lease;
use crate::meta::{self, now, Meta, Op, Row, FLAG_ZERO, FLAG_ZSTD};
use crate::retrying_store::{open_url, Blobs};
use crate::volume::Volume;

/// Version of the on-bucket format described in docs/STORAGE.md.
pub const FORMAT_VERSION: u32 = 1;
/// Block-map granularity: 256 KiB (see docs/STORAGE.md for why).
pub const CHUNK_SIZE: u64 = 256 * 1024;
const MAX_SIZE: u64 = 16 << 40;

/// Where one chunk's data is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub key: Arc<str>,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub crc: u32,
    pub flags: u8,
}

impl Extent {
    pub fn from_row(row: &Row, key: &Arc<str>) -> Extent {
        Extent {
            key: Arc::clone(key),
            offset: row.offset,
            stored_len: row.stored_len,
            raw_len: row.raw_len,
            crc: row.crc,
            flags: row.flags,
        }
    }

    fn same_data(a: Option<&Extent>, b: Option<&Extent>) -> bool {
        let zero = |e: Option<&Extent>| e.is_none_or(|e| e.flags & FLAG_ZERO != 0);
        match (zero(a), zero(b)) {
            (true, true) => true,
            (false, false) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct FormatFile {
    format: String,
    version: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct NameEntry {
    id: String,
}

/// A handle on one object store plus the local cache folder. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<StoreInner>,
}

pub(crate) struct StoreInner {
    pub(crate) config: StoreConfig,
    pub(crate) blobs: Blobs,
    pub(crate) host: String,
}

pub(crate) fn validate_name(name: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::InvalidName(name.to_string()))
    }
}

fn attachment_key(volume_id: &str, file: &str) -> String {
    format!("volumes/{volume_id}/attachments/{file}")
}

impl Store {
    /// Opens the store named by `config.url`, writing `format.json` if the
    /// store is empty and refusing a store of another format version.
    pub async fn open(config: StoreConfig) -> Result<Store, VolumeError> {
        let object_store = open_url(&config.url)?;
        Store::open_with_object_store(config, object_store).await
    }

    /// Like [`Store::open`] over an already-built object store (tests wrap
    /// stores to inject faults). `config.url` is only used for display.
    pub async fn open_with_object_store(
        config: StoreConfig,
        object_store: Arc<dyn ObjectStore>,
    ) -> Result<Store, VolumeError> {
        std::fs::create_dir_all(&config.cache_dir)
            .map_err(|e| VolumeError::io(config.cache_dir.display(), e))?;
        let blobs = Blobs::new(object_store, config.store_timeout);
        match blobs.get_opt("format.json").await? {
            Some(bytes) => {
                let f: FormatFile =
                    serde_json::from_slice(&bytes).map_err(|e| VolumeError::BadMetadata {
                        key: "format.json".into(),
                        reason: e.to_string(),
                    })?;
                if f.version != FORMAT_VERSION {
                    return Err(VolumeError::UnsupportedFormat {
                        found: f.version,
                        supported: FORMAT_VERSION,
                    });
                }
            }
            None => {
                let f = FormatFile {
                    format: "wisp-volume".into(),
                    version: FORMAT_VERSION,
                };
                blobs
                    .put(
                        "format.json",
                        serde_json::to_vec(&f).unwrap_or_default().into(),
                    )
                    .await?;
            }
        }
        Ok(Store {
            inner: Arc::new(StoreInner {
                config,
                blobs,
                host: lease::host_name(),
            }),
        })
    }

    pub(crate) fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub(crate) fn blobs(&self) -> Blobs {
        self.inner.blobs.clone()
    }

    fn url_of(&self, id: &str) -> String {
        format!(
            "{}/volumes/{id}",
            self.inner.config.url.trim_end_matches('/')
        )
    }

    pub(crate) async fn volume_id(&self, name: &str) -> Result<String, VolumeError> {
        validate_name(name)?;
        let key = format!("names/{name}");
        let bytes = self
            .inner
            .blobs
            .get_opt(&key)
            .await?
            .ok_or_else(|| VolumeError::NotFound(name.to_string()))?;
        let entry: NameEntry =
            serde_json::from_slice(&bytes).map_err(|e| VolumeError::BadMetadata {
                key,
                reason: e.to_string(),
            })?;
        Ok(entry.id)
    }

    pub(crate) async fn info_by_id(&self, id: &str) -> Result<VolumeInfo, VolumeError> {
        let key = format!("volumes/{id}/volume.json");
        let bytes = self.inner.blobs.get(&key).await?;
        serde_json::from_slice(&bytes).map_err(|e| VolumeError::BadMetadata {
            key,
            reason: e.to_string(),
        })
    }

    /// Writes a new volume whose root layer has `parent` (for forks); with
    /// `first_checkpoint`, that root layer is already checkpoint `v0` (with that
    /// comment) and the head a new layer on it.
    async fn make_volume(
        &self,
        name: &str,
        size: u64,
        parent: Option<(String, i64)>,
        origin: Option<String>,
        first_checkpoint: Option<String>,
    ) -> Result<VolumeInfo, VolumeError> {
        validate_name(name)?;
        if size == 0 || size % 4096 != 0 || size > MAX_SIZE {
            return Err(VolumeError::InvalidSize(size));
        }
        if self
            .inner
            .blobs
            .get_opt(&format!("names/{name}"))
            .await?
            .is_some()
        {
            return Err(VolumeError::AlreadyExists(name.to_string()));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let info = VolumeInfo {
            name: name.to_string(),
            id: id.clone(),
            size,
            chunk_size: CHUNK_SIZE,
            created: now(),
            origin,
            url: self.url_of(&id),
        };
        let dir = self.inner.config.cache_dir.join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| VolumeError::io(dir.display(), e))?;
        let db = dir.join("meta.db");
        let meta = std::sync::Mutex::new({
            let mut meta = Meta::open(&db)?;
            let (pv, pl) = match parent {
                Some((v, l)) => (Some(v), Some(l)),
                None => (None, None),
            };
            let mut ops = vec![
                Op::SetInfo {
                    key: "volume".into(),
                    value: serde_json::to_string(&info).unwrap_or_default(),
                },
                Op::AddLayer {
                    id: 0,
                    parent_volume: pv,
                    parent_layer: pl,
                    created: info.created,
                },
            ];
            let head = match first_checkpoint {
                Some(comment) => {
                    ops.push(Op::Checkpoint {
                        num: 0,
                        layer: 0,
                        created: info.created,
                        comment: Some(comment),
                    });
                    ops.push(Op::AddLayer {
                        id: 1,
                        parent_volume: None,
                        parent_layer: Some(0),
                        created: info.created,
                    });
                    "1"
                }
                None => "0",
            };
            ops.push(Op::SetInfo {
                key: "head".into(),
                value: head.into(),
            });
            meta.commit(&ops)?;
            meta
        });
        crate::ship::ship_snapshot(&self.inner.blobs, &id, &meta, &dir.join("snapshot.tmp"))
            .await?;
        self.inner
            .blobs
            .put(
                &format!("volumes/{id}/volume.json"),
                serde_json::to_vec_pretty(&info).unwrap_or_default().into(),
            )
            .await?;
        // The name last: a crash before this leaves an unnamed volume that gc removes.
        self.inner
            .blobs
            .put(
                &format!("names/{name}"),
                serde_json::to_vec(&NameEntry { id })
                    .unwrap_or_default()
                    .into(),
            )
            .await?;
        Ok(info)
    }

    pub async fn create_volume(&self, name: &str, size: u64) -> Result<VolumeInfo, VolumeError> {
        self.make_volume(name, size, None, None, None).await
    }

    pub async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let mut out = Vec::new();
        for obj in self.inner.blobs.list("names").await? {
            let Some(name) = obj.location.filename() else {
                continue;
            };
            match self.volume_info(name).await {
                Ok(info) => out.push(info),
                Err(VolumeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn volume_info(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        let id = self.volume_id(name).await?;
        self.info_by_id(&id).await
    }

    /// Keeps `parts` (concatenated) as volume `name`'s attachment `file`: data that
    /// belongs with the disk in the bucket but is not on it (a sprite's saved
    /// machine state). Stored at `volumes/<id>/attachments/<file>`; replaces an
    /// earlier one.
    pub async fn put_attachment(
        &self,
        name: &str,
        file: &str,
        parts: Vec<Bytes>,
    ) -> Result<(), VolumeError> {
        let id = self.volume_id(name).await?;
        self.inner
            .blobs
            .put_parts(&attachment_key(&id, file), parts)
            .await
    }

    /// Volume `name`'s attachment `file`, or `None` (see [`Store::put_attachment`]).
    pub async fn get_attachment(
        &self,
        name: &str,
        file: &str,
    ) -> Result<Option<Bytes>, VolumeError> {
        let id = self.volume_id(name).await?;
        self.inner.blobs.get_opt(&attachment_key(&id, file)).await
    }

    /// Deletes volume `name`'s attachment `file`; one that is not there is no error.
    pub async fn delete_attachment(&self, name: &str, file: &str) -> Result<(), VolumeError> {
        let id = self.volume_id(name).await?;
        self.inner.blobs.delete(&attachment_key(&id, file)).await
    }

    /// Removes the volume's name; its objects are deleted by gc once no fork
    /// depends on them.
    pub async fn delete_volume(&self, name: &str) -> Result<(), VolumeError> {
        let id = self.volume_id(name).await?;
        if let Some(l) = lease::read_lease(&self.inner.blobs, &id).await? {
            if l.blocks(&self.inner.host) {
                return Err(l.in_use_error(name));
            }
        }
        let dir = self.inner.config.cache_dir.join(&id);
        if dir.exists() && lease::try_lock(&dir.join("lock"))?.is_none() {
            return Err(VolumeError::DeleteRefused {
                name: name.to_string(),
                reason: "a process on this host has it open".into(),
            });
        }
        self.inner
            .blobs
            .put(&format!("volumes/{id}/deleted"), Bytes::from_static(b"{}"))
            .await?;
        self.inner.blobs.delete(&format!("names/{name}")).await?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Opens a volume for writing: takes the lease, brings the local metadata
    /// up to date with the bucket, recovers dirty chunks of a crashed run.
    pub async fn open_volume(&self, name: &str) -> Result<Volume, VolumeError> {
        let id = self.volume_id(name).await?;
        let info = self.info_by_id(&id).await?;
        let dir = self.inner.config.cache_dir.join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| VolumeError::io(dir.display(), e))?;
        let blobs = &self.inner.blobs;
        let Some(lock_file) = lease::try_lock(&dir.join("lock"))? else {
            let l = lease::read_lease(blobs, &id)
                .await?
                .unwrap_or(lease::Lease {
                    host: self.inner.host.clone(),
                    pid: 0,
                    token: String::new(),
                    expires: now(),
                });
            return Err(l.in_use_error(name));
        };
        if let Some(l) = lease::read_lease(blobs, &id).await? {
            if l.blocks(&self.inner.host) {
                return Err(l.in_use_error(name));
            }
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        lease::write_lease(blobs, &id, &self.inner.host, &token).await?;
        let db = dir.join("meta.db");
        let local_seq = if db.exists() {
            Some(Meta::open(&db)?.applied_seq()?)
        } else {
            None
        };
        let remote = crate::ship::remote_seq(blobs, &id).await?;
        let meta = match (local_seq, remote) {
            (Some(l), Some(r)) if l >= r => Meta::open(&db)?,
            (Some(_), None) => Meta::open(&db)?,
            (local, _) => {
                if local.is_some() {
                    tracing::warn!(
                        volume = name,
                        "local metadata is older than the bucket's; discarding the local cache"
                    );
                }
                let _ = std::fs::remove_file(dir.join("cache"));
                crate::ship::load_from_bucket(blobs, &id, &db)
                    .await?
                    .ok_or_else(|| VolumeError::BadMetadata {
                        key: format!("volumes/{id}/meta/"),
                        reason: "no metadata snapshot".into(),
                    })?
            }
        };
        Volume::start(self.clone(), info, dir, meta, lock_file, token).await
    }

    pub(crate) async fn renew_lease(&self, id: &str, token: &str) -> Result<(), VolumeError> {
        lease::write_lease(&self.inner.blobs, id, &self.inner.host, token).await
    }

    pub(crate) async fn release_lease(&self, id: &str, token: &str) -> Result<(), VolumeError> {
        if let Some(l) = lease::read_lease(&self.inner.blobs, id).await? {
            if l.token == token {
                self.inner.blobs.delete(&lease::lease_key(id)).await?;
            }
        }
        Ok(())
    }

    /// A read-only copy of another volume's metadata, fresh from the bucket.
    pub(crate) async fn load_readonly(
        &self,
        id: &str,
        scratch: &Path,
    ) -> Result<Meta, VolumeError> {
        let dest = scratch.join(format!("ro-{id}-{}.db", uuid::Uuid::new_v4().simple()));
        let meta = crate::ship::load_from_bucket(&self.inner.blobs, id, &dest)
            .await?
            .ok_or_else(|| VolumeError::BadMetadata {
                key: format!("volumes/{id}/meta/"),
                reason: "no metadata snapshot".into(),
            })?;
        Ok(meta)
    }

    /// The chunk -> extent map of `layer` of volume `id` (whose database is
    /// `own`), walking parent layers, into other volumes for forks.
    ///
    /// `own` is behind a mutex, locked only between awaits, so that the
    /// future stays `Send` (a SQLite connection is not `Sync`).
    pub(crate) async fn materialise(
        &self,
        id: &str,
        own: &std::sync::Mutex<Meta>,
        layer: i64,
        scratch: &Path,
    ) -> Result<HashMap<u64, Extent>, VolumeError> {
        let mut foreign: HashMap<String, Meta> = HashMap::new();
        let mut chain: Vec<(Option<String>, i64)> = Vec::new();
        let mut cur: (Option<String>, i64) = (None, layer);
        loop {
            if chain.len() > 100_000 {
                return Err(VolumeError::BadMetadata {
                    key: format!("volumes/{id}/meta/"),
                    reason: "layer chain loops".into(),
                });
            }
            chain.push(cur.clone());
            let parent = match &cur.0 {
                None => own.lock().map_err(|_| meta::poisoned())?.parent(cur.1)?,
                Some(v) => {
                    if !foreign.contains_key(v) {
                        let m = self.load_readonly(v, scratch).await?;
                        foreign.insert(v.clone(), m);
                    }
                    foreign[v].parent(cur.1)?
                }
            };
            let Some(p) = parent else { break };
            cur = match p.volume {
                // A parent "in this volume" of a foreign layer is in that foreign volume.
                None => (cur.0.clone(), p.layer),
                Some(v) if v == id => (None, p.layer),
                Some(v) => (Some(v), p.layer),
            };
        }
        let mut map = HashMap::new();
        let mut keys: HashMap<String, Arc<str>> = HashMap::new();
        let own = own.lock().map_err(|_| meta::poisoned())?;
        for (vol, layer) in chain.iter().rev() {
            let m = match vol {
                None => &*own,
                Some(v) => &foreign[v],
            };
            for (row, key) in m.layer_rows(*layer)? {
                let k = keys
                    .entry(key.clone())
                    .or_insert_with(|| Arc::from(key.as_str()))
                    .clone();
                map.insert(row.chunk, Extent::from_row(&row, &k));
            }
        }
        for (_, m) in foreign {
            let path = m.path.clone();
            drop(m);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        Ok(map)
    }

    /// Reads one extent, verifying length and checksum: corrupt or missing
    /// data is an error naming the object, never wrong bytes.
    pub(crate) async fn fetch_extent(&self, ext: &Extent) -> Result<Bytes, VolumeError> {
        let data = self
            .inner
            .blobs
            .get_range(&ext.key, ext.offset..ext.offset + ext.stored_len as u64)
            .await?;
        decode_extent(ext, data)
    }

    /// Reads a run of extents stored back to back in one segment with one
    /// ranged GET (sequential prefetch), returning each extent's stored bytes.
    pub(crate) async fn fetch_run(&self, run: &[Extent]) -> Result<Vec<Bytes>, VolumeError> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(Vec::new());
        };
        let end = last.offset + last.stored_len as u64;
        let data = self
            .inner
            .blobs
            .get_range(&first.key, first.offset..end)
            .await?;
        let mut out = Vec::with_capacity(run.len());
        for ext in run {
            let a = (ext.offset - first.offset) as usize;
            let b = a + ext.stored_len as usize;
            out.push(data.slice(a.min(data.len())..b.min(data.len())));
        }
        Ok(out)
    }
}

/// Checks and decodes one extent's stored bytes.
pub(crate) fn decode_extent(ext: &Extent, data: Bytes) -> Result<Bytes, VolumeError> {
    let corrupt = |reason: String| VolumeError::Corrupt {
        key: ext.key.to_string(),
        offset: ext.offset,
        reason,
    };
    if data.len() != ext.stored_len as usize {
        return Err(corrupt(format!(
            "short read: {} of {} bytes",
            data.len(),
            ext.stored_len
        )));
    }
    let raw = if ext.flags & FLAG_ZSTD != 0 {
        Bytes::from(
            zstd::bulk::decompress(&data, ext.raw_len as usize)
                .map_err(|e| corrupt(format!("cannot decompress: {e}")))?,
        )
    } else {
        data
    };
    if raw.len() != ext.raw_len as usize || crc32c::crc32c(&raw) != ext.crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(raw)
}

impl Store {
    /// Loads a volume's metadata read-only and resolves a checkpoint to its layer.
    async fn checkpoint_of(
        &self,
        name: &str,
        checkpoint: &str,
        scratch: &Path,
    ) -> Result<(VolumeInfo, Meta, i64), VolumeError> {
        let info = self.volume_info(name).await?;
        let meta = self.load_readonly(&info.id, scratch).await?;
        let layer =
            meta.checkpoint_layer(checkpoint)?
                .ok_or_else(|| VolumeError::CheckpointNotFound {
                    volume: name.to_string(),
                    checkpoint: checkpoint.to_string(),
                })?;
        Ok((info, meta, layer))
    }

    /// The layer of `checkpoint` read from this host's copy of the volume's
    /// metadata, when that copy holds exactly what the bucket holds (same
    /// last operation): then forking costs a LIST and one indexed query
    /// instead of downloading the metadata, whatever the volume holds. `None`
    /// sends the caller to the bucket (no local copy, a copy that is behind or
    /// ahead of the bucket, an unknown checkpoint, any error).
    async fn local_checkpoint_layer(&self, id: &str, checkpoint: &str) -> Option<i64> {
        let db = self.inner.config.cache_dir.join(id).join("meta.db");
        if !db.exists() {
            return None;
        }
        let remote = crate::ship::remote_seq(&self.inner.blobs, id)
            .await
            .ok()??;
        let local = Meta::open(&db).ok()?;
        if local.applied_seq().ok()? != remote {
            return None;
        }
        local.checkpoint_layer(checkpoint).ok()?
    }

    pub(crate) fn scratch(&self) -> Result<PathBuf, VolumeError> {
        let dir = self.inner.config.cache_dir.join("scratch");
        std::fs::create_dir_all(&dir).map_err(|e| VolumeError::io(dir.display(), e))?;
        Ok(dir)
    }

    /// Creates `new_name` as a writable copy of `source`@`checkpoint`,
    /// sharing all data: only metadata is written.
    pub async fn fork(
        &self,
        source: &str,
        checkpoint: &str,
        new_name: &str,
    ) -> Result<VolumeInfo, VolumeError> {
        self.fork_sized(source, checkpoint, new_name, None).await
    }

    /// [`Store::fork`], the new volume `size` bytes (a multiple of 4 KiB) when
    /// that is larger than the source: the space past the source's end reads as
    /// zeros and costs nothing until written.
    pub async fn fork_sized(
        &self,
        source: &str,
        checkpoint: &str,
        new_name: &str,
        size: Option<u64>,
    ) -> Result<VolumeInfo, VolumeError> {
        self.fork_inner(source, checkpoint, new_name, size, None)
            .await
    }

    /// [`Store::fork`] whose new volume starts with checkpoint `v0` = the fork
    /// point (commented `comment`), written with the rest of its metadata: a
    /// fork with its own first checkpoint at no extra cost (no open, no close).
    pub async fn fork_with_checkpoint(
        &self,
        source: &str,
        checkpoint: &str,
        new_name: &str,
        comment: String,
    ) -> Result<VolumeInfo, VolumeError> {
        self.fork_inner(source, checkpoint, new_name, None, Some(comment))
            .await
    }

    async fn fork_inner(
        &self,
        source: &str,
        checkpoint: &str,
        new_name: &str,
        size: Option<u64>,
        first_checkpoint: Option<String>,
    ) -> Result<VolumeInfo, VolumeError> {
        validate_name(new_name)?;
        let info = self.volume_info(source).await?;
        let layer = match self.local_checkpoint_layer(&info.id, checkpoint).await {
            Some(layer) => layer,
            None => {
                let scratch = self.scratch()?;
                let (_, meta, layer) = self.checkpoint_of(source, checkpoint, &scratch).await?;
                remove_db(meta);
                layer
            }
        };
        self.make_volume(
            new_name,
            size.map_or(info.size, |s| s.max(info.size)),
            Some((info.id.clone(), layer)),
            Some(format!("{source}@{checkpoint}")),
            first_checkpoint,
        )
        .await
    }

    /// The chunk map of `name`@`checkpoint`, read from the bucket.
    pub(crate) async fn checkpoint_map(
        &self,
        name: &str,
        checkpoint: &str,
    ) -> Result<(VolumeInfo, HashMap<u64, Extent>), VolumeError> {
        let scratch = self.scratch()?;
        let (info, meta, layer) = self.checkpoint_of(name, checkpoint, &scratch).await?;
        let meta = std::sync::Mutex::new(meta);
        let map = self.materialise(&info.id, &meta, layer, &scratch).await;
        if let Ok(meta) = meta.into_inner() {
            remove_db(meta);
        }
        Ok((info, map?))
    }
}

pub(crate) fn remove_db(meta: Meta) {
    let path = meta.path.clone();
    drop(meta);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Chunk ranges whose data differs between maps `a` and `b` (plus `dirty`
/// chunks of `b`, which differ by definition), merged and clamped to `size`.
pub(crate) fn diff_maps(
    a: &HashMap<u64, Extent>,
    b: &HashMap<u64, Extent>,
    dirty: &[u64],
    chunk: u64,
    size: u64,
) -> Vec<Range<u64>> {
    let mut chunks: Vec<u64> = a
        .keys()
        .chain(b.keys())
        .copied()
        .filter(|c| !Extent::same_data(a.get(c), b.get(c)))
        .chain(dirty.iter().copied())
        .collect();
    chunks.sort_unstable();
    chunks.dedup();
    let mut out: Vec<Range<u64>> = Vec::new();
    for c in chunks {
        let start = c * chunk;
        let end = ((c + 1) * chunk).min(size);
        match out.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => out.push(start..end),
        }
    }
    out
}
