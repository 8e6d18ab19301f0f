//! An open, writable volume: the local cache file and chunk states, the
//! in-memory block map, read-through fetches with prefetch, the background
//! uploader, checkpoint/restore/diff, and the NBD `BlockDevice` face.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::config::{CheckpointInfo, Compression, Durability, SyncReport, VolumeInfo};
use crate::error::{to_io, VolumeError};
use crate::meta::{self, now, poisoned, Meta, Op, FLAG_ZERO, FLAG_ZSTD};

/// The `meta` key of [`Volume::generation`].
const GENERATION_KEY: &str = "content_gen";
use crate::store::{Extent, Store};

/// Chunks packed into one segment object at most (64 x 256 KiB = 16 MiB).
const CHUNKS_PER_SEGMENT: usize = 64;
/// Segments uploaded in parallel.
const UPLOAD_PARALLELISM: usize = 4;
/// Chunks kept cached or in flight ahead of a sequential reader (64 MiB):
/// enough ranged GETs in parallel to approach the store's parallel throughput.
const READAHEAD: u64 = 256;
/// Chunks fetched with one ranged GET at most by the readahead (8 MiB).
const READAHEAD_RUN: usize = 32;
/// How long readahead bytes nobody read stay in memory.
/// A sequential reader reaches them within milliseconds; what waits longer
/// was read ahead for nobody (a booting guest's scattered reads).
const RECENT_TTL: std::time::Duration = std::time::Duration::from_millis(500);
/// Metadata logs between two full snapshots.
const LOGS_PER_SNAPSHOT: u32 = 32;

/// Where the bytes [`Inner::install`] puts into the cache come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Fetched for a reader or writer waiting for them.
    Fetched,
    /// Fetched ahead of a sequential reader: also kept in memory for it.
    Readahead,
    /// Already in the cache file from an earlier run, checksum verified.
    Cached,
}

/// A locally cached chunk (absent chunks have no entry).
#[derive(Debug)]
struct Chunk {
    dirty: bool,
    /// Bumped when a write completes; the uploader marks a chunk clean only
    /// if it is unchanged since it read the data.
    gen: u64,
    writers: u32,
    readers: u32,
    tick: u64,
}

#[derive(Default)]
struct State {
    chunks: HashMap<u64, Chunk>,
    map: HashMap<u64, Extent>,
    head: i64,
    tick: u64,
    /// Clean chunks by last use, oldest first.
    lru: BTreeMap<u64, u64>,
    /// Chunks being fetched (or verified), with the readers waiting for them.
    /// Writers wait too: the fetch owns the chunk's range of the cache file.
    inflight: HashMap<u64, Vec<oneshot::Sender<Fetched>>>,
    /// Dirty chunks not yet recorded in the local database.
    unpersisted: HashSet<u64>,
    /// Chunks of the cache file kept from an earlier run, trusted only once
    /// their CRC-32C matches the stored extent's (checked on first use).
    unverified: HashSet<u64>,
    /// Number of dirty chunks (bounded by `dirty_limit`).
    ndirty: u64,
    /// The bytes of chunks the readahead fetched (at most `READAHEAD`, with
    /// when), so that a sequential reader gets them from memory instead of
    /// reading back from the cache file what was just written to it with
    /// `O_DIRECT`. Only clean chunks; a write or an eviction drops the entry,
    /// a reader reaching a chunk's end drops it, and the background loop
    /// and the readahead drop entries older than `RECENT_TTL` (readahead
    /// nobody read).
    recent: BTreeMap<u64, (Bytes, Instant)>,
    /// When the readahead last dropped old `recent` entries.
    recent_purged: Option<Instant>,
    /// Chunk of the previous read, for sequential detection.
    last_read: Option<u64>,
    /// End (exclusive) of the chunks the readahead has issued.
    ra_end: u64,
}

impl State {
    /// Drops readahead bytes older than `RECENT_TTL` (read ahead for nobody).
    fn drop_stale_readahead(&mut self) {
        self.recent.retain(|_, (_, at)| at.elapsed() < RECENT_TTL);
        self.recent_purged = Some(Instant::now());
    }
}

/// What a fetch hands to the readers waiting for it: the chunk's bytes,
/// `None` when they should look again (the chunk changed meanwhile), or the
/// error message.
type Fetched = Result<Option<Bytes>, String>;

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) info: VolumeInfo,
    dir: PathBuf,
    chunk: u64,
    pub(crate) meta: Mutex<Meta>,
    file: File,
    /// The cache file opened with `O_DIRECT` (when the file system allows it)
    /// for filling fetched chunks: data read once from the store does not go
    /// through the page cache, whose fresh pages cost more than the copy.
    direct: Option<File>,
    /// Signalled when uploads clean chunks, for writers held by `dirty_limit`.
    drained: tokio::sync::Notify,
    state: Mutex<State>,
    /// Writes and reads take it shared; checkpoint/restore exclusively.
    pub(crate) gate: tokio::sync::RwLock<()>,
    pub(crate) upload: tokio::sync::Mutex<u32>,
    next_segment: AtomicI64,
    closed: AtomicBool,
    /// Whether this open has bumped the content generation (see
    /// [`Volume::generation`]): the first write of each open does.
    written: AtomicBool,
    lock_file: Mutex<Option<File>>,
    token: String,
    wake: Arc<tokio::sync::Notify>,
}

/// An open volume. Cheap to clone; the writer lease is held until [`Volume::close`].
#[derive(Clone)]
pub struct Volume {
    pub(crate) inner: Arc<Inner>,
}

enum Presence {
    /// Cached locally; a reader pin was taken.
    Cached,
    /// Just fetched (or verified): the whole chunk's bytes.
    Data(Bytes),
    /// Reads as zeros (unmapped, trimmed, or beyond the data).
    Zero,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, VolumeError> {
    m.lock().map_err(|_| poisoned())
}

fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a descriptor we own; the range is within i64.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The byte ranges of `file` (below `size`) that hold data, not holes.
fn data_ranges(file: &File, size: u64) -> io::Result<Vec<Range<u64>>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a descriptor we own; offsets are within i64.
        let start = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(io::Error::last_os_error());
        }
        out.push(start as u64..(end as u64).min(size));
        pos = end as u64;
    }
    Ok(out)
}

/// Chunks of a cache file left by an earlier run that may still hold a clean
/// copy of their stored extent (at most `limit`). They are trusted only once
/// their CRC-32C matches on first use (an unclean shutdown may have torn
/// them). Every other range with data is punched out, except the dirty
/// chunks, which the local database vouches for (FLUSH fsynced them).
fn cache_candidates(
    file: &File,
    dirty: &HashSet<u64>,
    map: &HashMap<u64, Extent>,
    chunk: u64,
    size: u64,
    limit: usize,
) -> io::Result<HashSet<u64>> {
    let mut keep = HashSet::new();
    for range in data_ranges(file, size)? {
        let mut c = range.start / chunk;
        while c * chunk < range.end {
            if !dirty.contains(&c) && !keep.contains(&c) {
                let stored = map.get(&c).is_some_and(|e| e.flags & FLAG_ZERO == 0);
                if stored && keep.len() < limit {
                    keep.insert(c);
                } else {
                    punch(file, c * chunk, chunk.min(size - c * chunk))?;
                }
            }
            c += 1;
        }
    }
    Ok(keep)
}

/// A page-aligned buffer for `O_DIRECT` writes.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl AlignedBuf {
    const ALIGN: usize = 4096;

    fn new(len: usize) -> Option<AlignedBuf> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), Self::ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        std::ptr::NonNull::new(ptr).map(|ptr| AlignedBuf { ptr, len })
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: the allocation holds `self.len` initialised bytes, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len.min(self.len)) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = std::alloc::Layout::from_size_align(self.len.max(1), Self::ALIGN) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

// SAFETY: an AlignedBuf owns its allocation; nothing else points into it.
unsafe impl Send for AlignedBuf {}

/// Bounce buffers reused across fills (fresh memory is slow to touch), a few
/// for the whole process: one per blocking thread kept a chunk per thread of
/// tokio's pool resident for as long as the thread lived.
static DIRECT_BUFS: std::sync::Mutex<Vec<AlignedBuf>> = std::sync::Mutex::new(Vec::new());
/// Bounce buffers kept for reuse at most.
const DIRECT_BUFS_KEPT: usize = 4;

fn take_direct_buf(len: usize) -> Option<AlignedBuf> {
    let pooled = DIRECT_BUFS.lock().ok().and_then(|mut pool| pool.pop());
    match pooled {
        Some(buf) if buf.len >= len => Some(buf),
        _ => AlignedBuf::new(len),
    }
}

fn return_direct_buf(buf: AlignedBuf) {
    if let Ok(mut pool) = DIRECT_BUFS.lock() {
        if pool.len() < DIRECT_BUFS_KEPT {
            pool.push(buf);
        }
    }
}

impl Volume {
    /// Called by `Store::open_volume` once the lease is held and the
    /// metadata database is current.
    pub(crate) async fn start(
        store: Store,
        info: VolumeInfo,
        dir: PathBuf,
        meta: Meta,
        lock_file: File,
        token: String,
    ) -> Result<Volume, VolumeError> {
        let cache_path = dir.join("cache");
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&cache_path)
            .map_err(|e| VolumeError::io(cache_path.display(), e))?;
        let dirty = meta.dirty_chunks()?;
        let head = meta.head()?;
        let next_segment = meta.next_id("segments")?;
        let chunk = info.chunk_size;
        let meta = Mutex::new(meta);
        let map = store.materialise(&info.id, &meta, head, &dir).await?;
        let ioerr = |e| VolumeError::io(cache_path.display(), e);
        file.set_len(info.size).map_err(ioerr)?;
        let dirty_set: HashSet<u64> = dirty.iter().copied().collect();
        let limit = (store.config().cache_size / chunk).max(16) as usize;
        let unverified =
            cache_candidates(&file, &dirty_set, &map, chunk, info.size, limit).map_err(ioerr)?;
        let direct = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&cache_path)
            .ok();
        let mut state = State {
            head,
            map,
            unverified,
            ndirty: dirty.len() as u64,
            ..State::default()
        };
        for c in dirty {
            state.chunks.insert(
                c,
                Chunk {
                    dirty: true,
                    gen: 1,
                    writers: 0,
                    readers: 0,
                    tick: 0,
                },
            );
        }
        let inner = Arc::new(Inner {
            store,
            info,
            dir,
            chunk,
            meta,
            file,
            direct,
            drained: tokio::sync::Notify::new(),
            state: Mutex::new(state),
            gate: tokio::sync::RwLock::new(()),
            upload: tokio::sync::Mutex::new(0),
            next_segment: AtomicI64::new(next_segment),
            closed: AtomicBool::new(false),
            written: AtomicBool::new(false),
            lock_file: Mutex::new(Some(lock_file)),
            token,
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        tokio::spawn(background(Arc::downgrade(&inner)));
        Ok(Volume { inner })
    }

    pub fn info(&self) -> VolumeInfo {
        self.inner.info.clone()
    }

    /// The volume's content generation: a number that changes whenever what the
    /// disk reads may have changed (the first write of every open, a restore) and
    /// stays put otherwise (opens, reads, checkpoints, compaction). A saved VM
    /// state records it, and is resumed only over the same generation.
    pub fn generation(&self) -> Result<u64, VolumeError> {
        Ok(lock(&self.inner.meta)?.get_i64(GENERATION_KEY)?.max(0) as u64)
    }

    /// Freezes the current state as checkpoint `v<N>`: uploads dirty data,
    /// then records the checkpoint and starts a new empty head layer.
    pub async fn checkpoint(&self, comment: Option<String>) -> Result<CheckpointInfo, VolumeError> {
        let inner = &self.inner;
        inner.check_open()?;
        let _gate = inner.gate.write().await;
        inner.sync_inner().await?;
        let _up = inner.upload.lock().await;
        let created = now();
        let (num, new_layer) = {
            let mut meta = lock(&inner.meta)?;
            let num = meta.next_id("checkpoints")?;
            let new_layer = meta.next_id("layers")?;
            let head = meta.head()?;
            meta.commit(&[
                Op::Checkpoint {
                    num,
                    layer: head,
                    created,
                    comment: comment.clone(),
                },
                Op::AddLayer {
                    id: new_layer,
                    parent_volume: None,
                    parent_layer: Some(head),
                    created,
                },
                Op::SetInfo {
                    key: "head".into(),
                    value: new_layer.to_string(),
                },
            ])?;
            (num, new_layer)
        };
        lock(&inner.state)?.head = new_layer;
        // One log object (not a full snapshot) keeps checkpoint time independent
        // of the metadata size; other hosts replay it on open.
        crate::ship::ship_log(&inner.store.blobs(), &inner.info.id, &inner.meta).await?;
        Ok(CheckpointInfo {
            id: format!("v{num}"),
            created,
            comment,
        })
    }

    pub async fn checkpoints(&self) -> Result<Vec<CheckpointInfo>, VolumeError> {
        let meta = lock(&self.inner.meta)?;
        Ok(meta
            .checkpoints()?
            .into_iter()
            .map(|(num, _, created, comment)| CheckpointInfo {
                id: format!("v{num}"),
                created,
                comment,
            })
            .collect())
    }

    pub(crate) fn checkpoint_layer(&self, checkpoint: &str) -> Result<i64, VolumeError> {
        lock(&self.inner.meta)?
            .checkpoint_layer(checkpoint)?
            .ok_or_else(|| VolumeError::CheckpointNotFound {
                volume: self.inner.info.name.clone(),
                checkpoint: checkpoint.to_string(),
            })
    }

    /// Makes the volume's current state equal to `checkpoint`. Changes since
    /// the last checkpoint are discarded; every checkpoint stays available.
    pub async fn restore(&self, checkpoint: &str) -> Result<(), VolumeError> {
        let inner = &self.inner;
        inner.check_open()?;
        let target = self.checkpoint_layer(checkpoint)?;
        let _gate = inner.gate.write().await;
        let _up = inner.upload.lock().await;
        let new_layer = {
            let mut meta = lock(&inner.meta)?;
            let old_head = meta.head()?;
            let new_layer = meta.next_id("layers")?;
            let generation = meta.get_i64(GENERATION_KEY)?.max(0) + 1;
            meta.commit(&[
                Op::SetInfo {
                    key: GENERATION_KEY.into(),
                    value: generation.to_string(),
                },
                Op::DropLayer { layer: old_head },
                Op::AddLayer {
                    id: new_layer,
                    parent_volume: None,
                    parent_layer: Some(target),
                    created: now(),
                },
                Op::SetInfo {
                    key: "head".into(),
                    value: new_layer.to_string(),
                },
            ])?;
            let dirty = meta.dirty_chunks()?;
            meta.update_dirty(&[], &dirty)?;
            new_layer
        };
        let map = inner.layer_map(new_layer).await?;
        {
            let mut st = lock(&inner.state)?;
            st.chunks.clear();
            st.lru.clear();
            st.unpersisted.clear();
            st.unverified.clear();
            st.recent.clear();
            st.ndirty = 0;
            st.ra_end = 0;
            st.map = map;
            st.head = new_layer;
            let path = inner.dir.join("cache");
            inner
                .file
                .set_len(0)
                .and_then(|_| inner.file.set_len(inner.info.size))
                .map_err(|e| VolumeError::io(path.display(), e))?;
        }
        crate::ship::ship_log(&inner.store.blobs(), &inner.info.id, &inner.meta)
            .await
            .map(|_| ())
    }

    /// Byte ranges (chunk granularity, merged) that differ between checkpoint
    /// `from` and checkpoint `to`, or the current state when `to` is `None`.
    pub async fn diff(&self, from: &str, to: Option<&str>) -> Result<Vec<Range<u64>>, VolumeError> {
        let inner = &self.inner;
        let a = inner.layer_map(self.checkpoint_layer(from)?).await?;
        match to {
            Some(to) => {
                let b = inner.layer_map(self.checkpoint_layer(to)?).await?;
                Ok(crate::store::diff_maps(
                    &a,
                    &b,
                    &[],
                    inner.chunk,
                    inner.info.size,
                ))
            }
            None => self.diff_now(&a),
        }
    }

    /// [`Volume::diff`] from a checkpoint already read by `older` (a reader of
    /// this volume) to the current state.
    pub fn changed_since(
        &self,
        older: &crate::CheckpointReader,
    ) -> Result<Vec<Range<u64>>, VolumeError> {
        self.diff_now(older.map())
    }

    /// Ranges where the current state differs from map `a` (locally dirty
    /// chunks count as different).
    fn diff_now(&self, a: &HashMap<u64, Extent>) -> Result<Vec<Range<u64>>, VolumeError> {
        let inner = &self.inner;
        let st = lock(&inner.state)?;
        let dirty: Vec<u64> = st
            .chunks
            .iter()
            .filter(|(_, c)| c.dirty)
            .map(|(k, _)| *k)
            .collect();
        Ok(crate::store::diff_maps(
            a,
            &st.map,
            &dirty,
            inner.chunk,
            inner.info.size,
        ))
    }

    /// Uploads every dirty chunk and ships the metadata.
    pub async fn sync(&self) -> Result<SyncReport, VolumeError> {
        self.inner.check_open()?;
        self.inner.sync_inner().await
    }

    /// Syncs, ships a snapshot of the metadata and releases the lease. On a
    /// sync error the lease is still released and the dirty data stays in the
    /// local cache (it is uploaded by the next open on this host).
    pub async fn close(self) -> Result<(), VolumeError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let result = async {
            inner.flush_local().await?;
            inner.sync_inner().await?;
            inner.ship_snapshot().await
        }
        .await;
        inner.closed.store(true, Ordering::SeqCst);
        inner.wake.notify_one();
        let _ = inner
            .store
            .release_lease(&inner.info.id, &inner.token)
            .await;
        if let Ok(mut lf) = inner.lock_file.lock() {
            lf.take();
        }
        result
    }

    /// Writes `data` into the volume from `offset` (used by import).
    pub(crate) async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), VolumeError> {
        self.inner.write(offset, data).await
    }

    pub(crate) async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, VolumeError> {
        self.inner.read(offset, len).await
    }

    /// Whether the chunk holding `offset` has any data (locally or mapped).
    pub(crate) fn has_data(&self, chunk: u64) -> bool {
        match self.inner.state.lock() {
            Ok(st) => {
                st.chunks.contains_key(&chunk)
                    || st.map.get(&chunk).is_some_and(|e| e.flags & FLAG_ZERO == 0)
            }
            Err(_) => true,
        }
    }

    /// Bytes of dirty data waiting for upload.
    pub fn dirty_bytes(&self) -> u64 {
        self.inner
            .state
            .lock()
            .map(|st| st.ndirty * self.inner.chunk)
            .unwrap_or(0)
    }

    /// Rewrites the segments of this volume whose live fraction is below
    /// `threshold`; returns how many were rewritten.
    pub(crate) async fn compact(&self, threshold: f64) -> Result<u64, VolumeError> {
        self.inner.compact(threshold).await
    }
}

async fn background(weak: Weak<Inner>) {
    let mut last_renew = Instant::now();
    loop {
        let (delay, renew_every) = match weak.upgrade() {
            Some(inner) => (
                inner.store.config().upload_delay,
                crate::lease::LEASE_TTL / 3,
            ),
            None => return,
        };
        // Hold only the notifier while sleeping, so that dropping the last
        // `Volume` drops the volume (and its flock) right away.
        let wake = match weak.upgrade() {
            Some(inner) => Arc::clone(&inner.wake),
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wake.notified() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut st) = inner.state.lock() {
            st.drop_stale_readahead();
        }
        if let Err(e) = inner.upload_cycle().await {
            tracing::warn!(volume = %inner.info.name, error = %e, "background upload failed; data stays dirty locally");
        }
        if last_renew.elapsed() >= renew_every {
            last_renew = Instant::now();
            if let Err(e) = inner.store.renew_lease(&inner.info.id, &inner.token).await {
                tracing::warn!(volume = %inner.info.name, error = %e, "lease renewal failed");
            }
        }
    }
}

struct Uploaded {
    key: String,
    segment: i64,
    size: u64,
    /// (chunk, gen read, row)
    rows: Vec<(u64, u64, meta::Row)>,
}

impl Inner {
    pub(crate) fn check_open(&self) -> Result<(), VolumeError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(VolumeError::Closed(self.info.name.clone()))
        } else {
            Ok(())
        }
    }

    fn cache_err(&self, e: io::Error) -> VolumeError {
        VolumeError::io(self.dir.join("cache").display(), e)
    }

    fn chunk_len(&self, c: u64) -> u64 {
        self.chunk.min(self.info.size - c * self.chunk)
    }

    async fn layer_map(&self, layer: i64) -> Result<HashMap<u64, Extent>, VolumeError> {
        let meta = Mutex::new(Meta::open(&self.dir.join("meta.db"))?);
        self.store
            .materialise(&self.info.id, &meta, layer, &self.dir)
            .await
    }

    /// Makes chunk `c` readable: `Cached` (pinned for a reader), `Data` (just
    /// fetched or verified) or `Zero`.
    async fn present(self: &Arc<Self>, c: u64) -> Result<Presence, VolumeError> {
        enum Next {
            Wait(oneshot::Receiver<Fetched>),
            Fill(Extent, bool),
        }
        loop {
            let next = {
                let mut st = lock(&self.state)?;
                st.tick += 1;
                let tick = st.tick;
                if let Some(ch) = st.chunks.get_mut(&c) {
                    let dirty = ch.dirty;
                    if !dirty {
                        let old = std::mem::replace(&mut ch.tick, tick);
                        st.lru.remove(&old);
                        st.lru.insert(tick, c);
                        if let Some((data, _)) = st.recent.get(&c) {
                            return Ok(Presence::Data(data.clone()));
                        }
                    }
                    if let Some(ch) = st.chunks.get_mut(&c) {
                        ch.readers += 1;
                    }
                    return Ok(Presence::Cached);
                }
                let ext = match st.map.get(&c) {
                    None => return Ok(Presence::Zero),
                    Some(e) if e.flags & FLAG_ZERO != 0 => return Ok(Presence::Zero),
                    Some(e) => e.clone(),
                };
                if let Some(waiters) = st.inflight.get_mut(&c) {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Next::Wait(rx)
                } else {
                    st.inflight.insert(c, Vec::new());
                    let local = st.unverified.remove(&c);
                    Next::Fill(ext, local)
                }
            };
            match next {
                Next::Fill(ext, local) => {
                    if let Some(data) = self.fill(c, ext, local).await? {
                        return Ok(Presence::Data(data));
                    }
                }
                Next::Wait(rx) => match rx.await {
                    Ok(Ok(Some(data))) => return Ok(Presence::Data(data)),
                    Ok(Ok(None)) | Err(_) => {}
                    Ok(Err(msg)) => {
                        return Err(VolumeError::io(format!("chunk {c}"), io::Error::other(msg)))
                    }
                },
            }
        }
    }

    /// Fills chunk `c` (marked in flight by the caller): from the copy an
    /// earlier run left in the cache file when `local` and its checksum
    /// matches, otherwise from the store.
    async fn fill(
        self: &Arc<Self>,
        c: u64,
        ext: Extent,
        local: bool,
    ) -> Result<Option<Bytes>, VolumeError> {
        let me = Arc::clone(self);
        let join =
            |e: tokio::task::JoinError| VolumeError::io(format!("chunk {c}"), io::Error::other(e));
        if local {
            let (m, e) = (Arc::clone(self), ext.clone());
            if let Some(data) = tokio::task::spawn_blocking(move || m.verify_cached(c, &e))
                .await
                .map_err(join)?
            {
                return tokio::task::spawn_blocking(move || {
                    me.install(c, &ext, Ok(data), Source::Cached)
                })
                .await
                .map_err(join)?;
            }
        }
        let result = self.store.fetch_extent(&ext).await;
        tokio::task::spawn_blocking(move || me.install(c, &ext, result, Source::Fetched))
            .await
            .map_err(join)?
    }

    /// The chunk's bytes from the cache file if they match `ext`'s checksum.
    fn verify_cached(&self, c: u64, ext: &Extent) -> Option<Bytes> {
        let len = self.chunk_len(c) as usize;
        if ext.raw_len as usize != len {
            return None;
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, c * self.chunk).ok()?;
        (crc32c::crc32c(&buf) == ext.crc).then(|| Bytes::from(buf))
    }

    /// Writes a fetched chunk into the cache file, through `O_DIRECT` when
    /// possible (through a pooled aligned bounce buffer).
    fn write_fill(&self, c: u64, data: &[u8]) -> io::Result<()> {
        let offset = c * self.chunk;
        if let Some(direct) = self.direct.as_ref().filter(|_| data.len() % 4096 == 0) {
            let written = take_direct_buf(data.len()).map(|mut buf| {
                let s = buf.slice(data.len());
                s.copy_from_slice(data);
                let written = direct.write_all_at(s, offset);
                return_direct_buf(buf);
                written
            });
            match written {
                Some(Ok(())) => return Ok(()),
                // Not supported for this file after all: buffered below.
                Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        self.file.write_all_at(data, offset)
    }

    /// Puts a fetched or verified chunk into the cache unless the volume
    /// moved on (a restore changed its extent) and wakes the waiters. Runs on
    /// a blocking thread: it writes the cache file.
    fn install(
        &self,
        c: u64,
        ext: &Extent,
        result: Result<Bytes, VolumeError>,
        source: Source,
    ) -> Result<Option<Bytes>, VolumeError> {
        let write = source != Source::Cached;
        let wanted = {
            let st = lock(&self.state)?;
            !st.chunks.contains_key(&c) && st.map.get(&c) == Some(ext)
        };
        let mut result = result.map(|d| wanted.then_some(d));
        if let (Ok(Some(data)), true) = (&result, write) {
            // The chunk is in flight: writers wait for it, the range is ours.
            if let Err(e) = self.write_fill(c, data) {
                result = Err(self.cache_err(e));
            }
        }
        let mut st = lock(&self.state)?;
        let waiters = st.inflight.remove(&c).unwrap_or_default();
        if let Ok(Some(_)) = &result {
            if !st.chunks.contains_key(&c) && st.map.get(&c) == Some(ext) {
                st.tick += 1;
                let tick = st.tick;
                st.chunks.insert(
                    c,
                    Chunk {
                        dirty: false,
                        gen: 0,
                        writers: 0,
                        readers: 0,
                        tick,
                    },
                );
                st.lru.insert(tick, c);
                st.unverified.remove(&c);
                if let (Ok(Some(data)), Source::Readahead) = (&result, source) {
                    if st.recent.len() >= READAHEAD as usize {
                        st.recent.pop_first();
                    }
                    st.recent.insert(c, (data.clone(), Instant::now()));
                }
            } else {
                if write && !st.chunks.contains_key(&c) {
                    // Restored meanwhile: what was just written is stale.
                    if let Err(e) = punch(&self.file, c * self.chunk, self.chunk_len(c)) {
                        tracing::warn!(error = %e, "punching a hole in the cache file failed");
                    }
                }
                result = Ok(None);
            }
        }
        self.evict(&mut st);
        drop(st);
        for w in waiters {
            let _ = w.send(match &result {
                Ok(d) => Ok(d.clone()),
                Err(e) => Err(e.to_string()),
            });
        }
        result
    }

    /// Installs the chunks of one readahead GET.
    fn install_run(&self, run: Vec<(u64, Extent)>, fetched: Result<Vec<Bytes>, VolumeError>) {
        match fetched {
            Ok(parts) => {
                for ((n, ext), data) in run.into_iter().zip(parts) {
                    let decoded = crate::store::decode_extent(&ext, data);
                    if let Err(e) = self.install(n, &ext, decoded, Source::Readahead) {
                        tracing::debug!(chunk = n, error = %e, "readahead failed");
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (n, ext) in run {
                    let err = VolumeError::io(format!("chunk {n}"), io::Error::other(msg.clone()));
                    let _ = self.install(n, &ext, Err(err), Source::Readahead);
                }
            }
        }
    }

    /// Drops the least recently used clean chunks beyond the cache bound.
    fn evict(&self, st: &mut State) {
        let limit = (self.store.config().cache_size / self.chunk).max(16) as usize;
        let mut skipped = Vec::new();
        while st.lru.len() > limit {
            let Some((tick, c)) = st.lru.pop_first() else {
                break;
            };
            let busy = st
                .chunks
                .get(&c)
                .is_none_or(|ch| ch.dirty || ch.readers > 0 || ch.writers > 0);
            if busy {
                if st.chunks.get(&c).is_some_and(|ch| !ch.dirty) {
                    skipped.push((tick, c));
                }
                continue;
            }
            st.chunks.remove(&c);
            st.recent.remove(&c);
            if let Err(e) = punch(&self.file, c * self.chunk, self.chunk_len(c)) {
                tracing::warn!(error = %e, "punching a hole in the cache file failed");
            }
        }
        for (tick, c) in skipped {
            st.lru.insert(tick, c);
        }
    }

    fn unpin_reader(&self, c: u64) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(ch) = st.chunks.get_mut(&c) {
                ch.readers = ch.readers.saturating_sub(1);
            }
        }
    }

    /// On a sequential read, fetches the chunks ahead (from `c` itself on):
    /// extents stored back to back in one segment are fetched with one ranged
    /// GET (up to `READAHEAD_RUN` chunks), all GETs in parallel. A read counts
    /// as sequential when it is near the previous one: many requests in flight
    /// (fio or a guest with a deep queue) arrive slightly out of order. New
    /// GETs are issued only when less than half the window is ahead of the
    /// reader, so they stay large.
    fn readahead(self: &Arc<Self>, c: u64) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if !st.recent.is_empty()
            && st
                .recent_purged
                .is_none_or(|at| at.elapsed() >= RECENT_TTL / 2)
        {
            st.drop_stale_readahead();
        }
        let near = st.last_read.is_some_and(|l| l.abs_diff(c) <= READAHEAD / 2);
        st.last_read = Some(c);
        if !near {
            return;
        }
        let start = match st.ra_end.checked_sub(c) {
            Some(ahead) if ahead > READAHEAD / 2 && ahead <= READAHEAD => return,
            Some(ahead) if ahead > 0 && ahead <= READAHEAD => st.ra_end,
            _ => c,
        };
        let nchunks = self.info.size.div_ceil(self.chunk);
        let end = (c + READAHEAD).min(nchunks);
        st.ra_end = end;
        let mut runs: Vec<Vec<(u64, Extent)>> = Vec::new();
        for n in start..end {
            if st.chunks.contains_key(&n)
                || st.inflight.contains_key(&n)
                || st.unverified.contains(&n)
            {
                continue;
            }
            let Some(ext) = st.map.get(&n).filter(|e| e.flags & FLAG_ZERO == 0).cloned() else {
                continue;
            };
            st.inflight.insert(n, Vec::new());
            let extends = runs.last().and_then(|r| r.last()).is_some_and(|(pn, pe)| {
                *pn + 1 == n && pe.key == ext.key && pe.offset + pe.stored_len as u64 == ext.offset
            }) && runs.last().is_some_and(|r| r.len() < READAHEAD_RUN);
            match runs.last_mut() {
                Some(run) if extends => run.push((n, ext)),
                _ => runs.push(vec![(n, ext)]),
            }
        }
        drop(st);
        for run in runs {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let exts: Vec<Extent> = run.iter().map(|(_, e)| e.clone()).collect();
                let fetched = me.store.fetch_run(&exts).await;
                let _ = tokio::task::spawn_blocking(move || me.install_run(run, fetched)).await;
            });
        }
    }

    async fn read(self: &Arc<Self>, offset: u64, len: usize) -> Result<Bytes, VolumeError> {
        let _gate = self.gate.read().await;
        let mut buf = BytesMut::zeroed(len);
        let end = offset + len as u64;
        let mut pos = offset;
        while pos < end {
            let c = pos / self.chunk;
            let chunk_end = ((c + 1) * self.chunk).min(end);
            let piece = &mut buf[(pos - offset) as usize..(chunk_end - offset) as usize];
            self.readahead(c);
            match self.present(c).await? {
                Presence::Zero => {}
                Presence::Cached => {
                    let r = self.file.read_exact_at(piece, pos);
                    self.unpin_reader(c);
                    r.map_err(|e| self.cache_err(e))?;
                }
                Presence::Data(data) => {
                    let at = (pos - c * self.chunk) as usize;
                    piece.copy_from_slice(&data[at..at + piece.len()]);
                    if chunk_end == c * self.chunk + self.chunk_len(c) {
                        // A sequential reader is done with this chunk: later
                        // readers use the cache file, memory goes back.
                        if let Ok(mut st) = self.state.lock() {
                            st.recent.remove(&c);
                        }
                    }
                }
            }
            pos = chunk_end;
        }
        Ok(buf.freeze())
    }

    /// Pins chunk `c` for a writer, fetching it first unless `full` (the
    /// write covers the whole chunk) or it has no stored data. A write that
    /// would dirty one more chunk beyond `dirty_limit` first waits for the
    /// uploader (and wakes it).
    async fn begin_write(self: &Arc<Self>, c: u64, full: bool) -> Result<(), VolumeError> {
        enum Next {
            Wait(oneshot::Receiver<Fetched>),
            Throttled(u64),
            Fetch,
        }
        let limit = (self.store.config().dirty_limit / self.chunk).max(1);
        let mut throttled: Option<Instant> = None;
        loop {
            let drained = self.drained.notified();
            let next = {
                let mut st = lock(&self.state)?;
                let needs_fetch = !full
                    && !st.chunks.contains_key(&c)
                    && st.map.get(&c).is_some_and(|e| e.flags & FLAG_ZERO == 0);
                let becomes_dirty = st.chunks.get(&c).is_none_or(|ch| !ch.dirty);
                if let Some(waiters) = st.inflight.get_mut(&c) {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Next::Wait(rx)
                } else if needs_fetch {
                    Next::Fetch
                } else if becomes_dirty && st.ndirty >= limit {
                    Next::Throttled(st.ndirty * self.chunk)
                } else {
                    st.unpersisted.insert(c);
                    st.unverified.remove(&c);
                    st.recent.remove(&c);
                    if becomes_dirty {
                        st.ndirty += 1;
                    }
                    match st.chunks.get_mut(&c) {
                        Some(ch) => {
                            ch.writers += 1;
                            if !ch.dirty {
                                ch.dirty = true;
                                let tick = ch.tick;
                                st.lru.remove(&tick);
                            }
                        }
                        None => {
                            st.chunks.insert(
                                c,
                                Chunk {
                                    dirty: true,
                                    gen: 0,
                                    writers: 1,
                                    readers: 0,
                                    tick: 0,
                                },
                            );
                        }
                    }
                    return Ok(());
                }
            };
            match next {
                Next::Wait(rx) => {
                    let _ = rx.await;
                }
                Next::Fetch => {
                    if let Presence::Cached = self.present(c).await? {
                        self.unpin_reader(c);
                    }
                }
                Next::Throttled(dirty) => {
                    // The write buffer is full: wake the uploader and wait
                    // for it to clean chunks, failing only if none finishes
                    // within the store timeout. The uploader is woken again
                    // every 200 ms: a round may clean nothing (chunks
                    // rewritten while uploading) and sleep `upload_delay`.
                    self.wake.notify_one();
                    let since = *throttled.get_or_insert_with(Instant::now);
                    let timeout = self.store.config().store_timeout;
                    let left = timeout.saturating_sub(since.elapsed());
                    let nap = left.min(std::time::Duration::from_millis(200));
                    if tokio::time::timeout(nap, drained).await.is_ok() {
                        throttled = None;
                    } else if since.elapsed() < timeout {
                        continue;
                    } else {
                        return Err(VolumeError::WriteBufferFull {
                            volume: self.info.name.clone(),
                            dirty,
                            limit: self.store.config().dirty_limit,
                            waited: since.elapsed(),
                        });
                    }
                }
            }
        }
    }

    fn end_write(&self, c: u64) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(ch) = st.chunks.get_mut(&c) {
                ch.writers = ch.writers.saturating_sub(1);
                ch.gen += 1;
            }
        }
    }

    /// Applies `op(start, end)` to each chunk's piece of `offset..offset+len`
    /// with the chunk pinned for writing (fetched first when partly covered).
    async fn write_pieces(
        self: &Arc<Self>,
        offset: u64,
        len: u64,
        op: impl Fn(u64, u64) -> io::Result<()> + Send,
    ) -> Result<(), VolumeError> {
        self.check_open()?;
        if !self.written.swap(true, Ordering::SeqCst) {
            let bumped = lock(&self.meta).and_then(|mut meta| {
                let generation = meta.get_i64(GENERATION_KEY)?.max(0) + 1;
                meta.commit(&[Op::SetInfo {
                    key: GENERATION_KEY.into(),
                    value: generation.to_string(),
                }])
            });
            if let Err(e) = bumped {
                self.written.store(false, Ordering::SeqCst);
                return Err(e);
            }
        }
        let _gate = self.gate.read().await;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let c = pos / self.chunk;
            let chunk_start = c * self.chunk;
            let chunk_end = (chunk_start + self.chunk_len(c)).min(end);
            let full = pos == chunk_start && chunk_end == chunk_start + self.chunk_len(c);
            self.begin_write(c, full).await?;
            let r = op(pos, chunk_end);
            self.end_write(c);
            r.map_err(|e| self.cache_err(e))?;
            pos = chunk_end;
        }
        Ok(())
    }

    async fn write(self: &Arc<Self>, offset: u64, data: Bytes) -> Result<(), VolumeError> {
        self.write_pieces(offset, data.len() as u64, |pos, end| {
            let piece = &data[(pos - offset) as usize..(end - offset) as usize];
            self.file.write_all_at(piece, pos)
        })
        .await
    }

    async fn write_zeroes(self: &Arc<Self>, offset: u64, len: u64) -> Result<(), VolumeError> {
        // A punched hole reads as zeros and frees the cache space.
        self.write_pieces(offset, len, |pos, end| punch(&self.file, pos, end - pos))
            .await
    }

    /// fdatasync the cache file, then record the dirty set in the local
    /// database: what FLUSH promises with local durability.
    async fn flush_local(self: &Arc<Self>) -> Result<(), VolumeError> {
        let pending: Vec<u64> = {
            let mut st = lock(&self.state)?;
            std::mem::take(&mut st.unpersisted).into_iter().collect()
        };
        let me = Arc::clone(self);
        let synced = tokio::task::spawn_blocking(move || me.file.sync_data())
            .await
            .map_err(|e| self.cache_err(io::Error::other(e)))?;
        if let Err(e) = synced {
            // Put them back: they are still not durable.
            if let Ok(mut st) = self.state.lock() {
                st.unpersisted.extend(pending);
            }
            return Err(self.cache_err(e));
        }
        let still_dirty: Vec<u64> = {
            let st = lock(&self.state)?;
            pending
                .into_iter()
                .filter(|c| st.chunks.get(c).is_some_and(|ch| ch.dirty))
                .collect()
        };
        if !still_dirty.is_empty() {
            lock(&self.meta)?.update_dirty(&still_dirty, &[])?;
        }
        Ok(())
    }

    async fn flush(self: &Arc<Self>) -> Result<(), VolumeError> {
        self.flush_local().await?;
        if self.store.config().durability == Durability::Remote {
            self.sync_inner().await?;
        }
        Ok(())
    }

    async fn sync_inner(&self) -> Result<SyncReport, VolumeError> {
        let mut report = SyncReport::default();
        // Writers may keep dirtying chunks; a few rounds catch up with a
        // quiescent volume and bound the time under a write storm.
        for _ in 0..8 {
            let r = self.upload_cycle().await?;
            report.chunks_uploaded += r.chunks_uploaded;
            report.bytes_uploaded += r.bytes_uploaded;
            report.segments_written += r.segments_written;
            if r.chunks_uploaded == 0 {
                break;
            }
        }
        Ok(report)
    }

    /// One upload round: packs the dirty chunks into segments, uploads them,
    /// commits the map, marks unchanged chunks clean and ships a metadata log.
    async fn upload_cycle(&self) -> Result<SyncReport, VolumeError> {
        let mut logs = self.upload.lock().await;
        let candidates: Vec<(u64, u64)> = {
            let st = lock(&self.state)?;
            let mut v: Vec<(u64, u64)> = st
                .chunks
                .iter()
                .filter(|(_, ch)| ch.dirty && ch.writers == 0)
                .map(|(c, ch)| (*c, ch.gen))
                .collect();
            v.sort_unstable();
            v
        };
        let mut report = SyncReport::default();
        if !candidates.is_empty() {
            let groups: Vec<Vec<(u64, u64)>> = candidates
                .chunks(CHUNKS_PER_SEGMENT)
                .map(|g| g.to_vec())
                .collect();
            let mut uploads =
                futures::stream::iter(groups.into_iter().map(|g| self.upload_group(g)))
                    .buffer_unordered(UPLOAD_PARALLELISM);
            let mut first_err = None;
            while let Some(res) = uploads.next().await {
                match res {
                    Ok(up) => {
                        report.chunks_uploaded += up.rows.len() as u64;
                        report.bytes_uploaded += up.size;
                        if up.size > 0 {
                            report.segments_written += 1;
                        }
                        self.commit_upload(up)?;
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        if crate::ship::ship_log(&self.store.blobs(), &self.info.id, &self.meta).await? > 0 {
            *logs += 1;
            if *logs >= LOGS_PER_SNAPSHOT {
                *logs = 0;
                drop(logs);
                self.ship_snapshot_locked().await?;
            }
        }
        Ok(report)
    }

    async fn upload_group(&self, group: Vec<(u64, u64)>) -> Result<Uploaded, VolumeError> {
        let segment = self.next_segment.fetch_add(1, Ordering::SeqCst);
        let key = format!(
            "volumes/{}/segments/{segment:016}-{}",
            self.info.id,
            uuid::Uuid::new_v4().simple()
        );
        let compression = self.store.config().compression;
        // The segment is uploaded as the list of its extents: no contiguous
        // copy of up to 16 MiB per upload (and none of a growing Vec).
        let mut body: Vec<Bytes> = Vec::with_capacity(group.len());
        let mut size = 0u64;
        let mut rows = Vec::with_capacity(group.len());
        for (c, gen) in group {
            let len = self.chunk_len(c) as usize;
            let mut raw = vec![0u8; len];
            self.file
                .read_exact_at(&mut raw, c * self.chunk)
                .map_err(|e| self.cache_err(e))?;
            let mut row = meta::Row {
                chunk: c,
                segment,
                offset: size,
                stored_len: 0,
                raw_len: len as u32,
                crc: 0,
                flags: 0,
            };
            if raw.iter().all(|b| *b == 0) {
                row.flags = FLAG_ZERO;
                row.offset = 0;
                rows.push((c, gen, row));
                continue;
            }
            row.crc = crc32c::crc32c(&raw);
            let stored = match compression {
                Compression::Zstd => match zstd::bulk::compress(&raw, 1) {
                    Ok(z) if z.len() < raw.len() => {
                        row.flags |= FLAG_ZSTD;
                        z
                    }
                    _ => raw,
                },
                Compression::None => raw,
            };
            row.stored_len = stored.len() as u32;
            size += stored.len() as u64;
            body.push(Bytes::from(stored));
            rows.push((c, gen, row));
        }
        if size > 0 {
            self.store.blobs().put_parts(&key, body).await?;
        }
        Ok(Uploaded {
            key,
            segment,
            size,
            rows,
        })
    }

    fn commit_upload(&self, up: Uploaded) -> Result<(), VolumeError> {
        let key: Arc<str> = Arc::from(up.key.as_str());
        let mut cleaned = Vec::new();
        let head = {
            let mut st = lock(&self.state)?;
            for (c, gen, row) in &up.rows {
                st.map.insert(*c, Extent::from_row(row, &key));
                st.tick += 1;
                let tick = st.tick;
                if let Some(ch) = st.chunks.get_mut(c) {
                    if ch.dirty && ch.gen == *gen && ch.writers == 0 {
                        ch.dirty = false;
                        ch.tick = tick;
                        st.lru.insert(tick, *c);
                        st.ndirty = st.ndirty.saturating_sub(1);
                        cleaned.push(*c);
                    }
                }
            }
            self.evict(&mut st);
            st.head
        };
        if !cleaned.is_empty() {
            self.drained.notify_waiters();
        }
        let mut ops = Vec::new();
        if up.size > 0 {
            ops.push(Op::AddSegment {
                id: up.segment,
                key: up.key.clone(),
                size: up.size,
                created: now(),
            });
        }
        ops.push(Op::Extents {
            layer: head,
            rows: up.rows.iter().map(|(_, _, r)| r.tuple()).collect(),
        });
        let mut meta = lock(&self.meta)?;
        meta.commit(&ops)?;
        meta.update_dirty(&[], &cleaned)
    }

    async fn ship_snapshot(&self) -> Result<(), VolumeError> {
        let mut logs = self.upload.lock().await;
        *logs = 0;
        drop(logs);
        self.ship_snapshot_locked().await
    }

    async fn ship_snapshot_locked(&self) -> Result<(), VolumeError> {
        crate::ship::ship_snapshot(
            &self.store.blobs(),
            &self.info.id,
            &self.meta,
            &self.dir.join("snapshot.tmp"),
        )
        .await
    }

    async fn compact(&self, threshold: f64) -> Result<u64, VolumeError> {
        let _gate = self.gate.write().await;
        let _up = self.upload.lock().await;
        let (victims, rows) = {
            let meta = lock(&self.meta)?;
            let live: HashMap<i64, u64> = meta.live_bytes()?.into_iter().collect();
            let mut victims = Vec::new();
            for (id, key, size, _) in meta.segments()? {
                let l = live.get(&id).copied().unwrap_or(0);
                if size > 0 && (l as f64) < threshold * size as f64 {
                    victims.push((id, key));
                }
            }
            let ids: HashSet<i64> = victims.iter().map(|v| v.0).collect();
            let rows: Vec<(i64, meta::Row)> = meta
                .data_rows()?
                .into_iter()
                .filter(|(_, row)| ids.contains(&row.segment))
                .collect();
            (victims, rows)
        };
        if victims.is_empty() {
            return Ok(0);
        }
        let keys: HashMap<i64, Arc<str>> = victims
            .iter()
            .map(|(id, k)| (*id, Arc::from(k.as_str())))
            .collect();
        // Copy the stored bytes as they are (already checksummed/compressed).
        let segment = self.next_segment.fetch_add(1, Ordering::SeqCst);
        let key = format!(
            "volumes/{}/segments/{segment:016}-{}",
            self.info.id,
            uuid::Uuid::new_v4().simple()
        );
        let mut body = Vec::new();
        let mut by_layer: BTreeMap<i64, Vec<meta::RowTuple>> = BTreeMap::new();
        for (layer, row) in &rows {
            let ext = Extent::from_row(row, &keys[&row.segment]);
            let stored = self
                .store
                .blobs()
                .get_range(&ext.key, ext.offset..ext.offset + ext.stored_len as u64)
                .await?;
            let offset = body.len() as u64;
            body.extend_from_slice(&stored);
            by_layer.entry(*layer).or_default().push(
                meta::Row {
                    segment,
                    offset,
                    ..*row
                }
                .tuple(),
            );
        }
        let size = body.len() as u64;
        if size > 0 {
            self.store.blobs().put(&key, body.into()).await?;
        }
        let mut ops = vec![Op::AddSegment {
            id: segment,
            key,
            size,
            created: now(),
        }];
        for (layer, rows) in by_layer {
            ops.push(Op::Extents { layer, rows });
        }
        for (id, _) in &victims {
            ops.push(Op::DropSegment { id: *id });
        }
        let head = {
            let mut meta = lock(&self.meta)?;
            meta.commit(&ops)?;
            meta.head()?
        };
        let meta = Mutex::new(Meta::open(&self.dir.join("meta.db"))?);
        let map = self
            .store
            .materialise(&self.info.id, &meta, head, &self.dir)
            .await?;
        lock(&self.state)?.map = map;
        self.ship_snapshot_locked().await?;
        Ok(victims.len() as u64)
    }
}

fn check_range(size: u64, offset: u64, len: u64) -> io::Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{len} is beyond the volume size {size}"),
        ));
    }
    Ok(())
}

#[async_trait]
impl wisp_nbd::BlockDevice for Volume {
    fn size(&self) -> u64 {
        self.inner.info.size
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        check_range(self.inner.info.size, offset, len as u64)?;
        self.inner.read(offset, len as usize).await.map_err(to_io)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> io::Result<()> {
        check_range(self.inner.info.size, offset, data.len() as u64)?;
        self.inner.write(offset, data).await.map_err(to_io)?;
        if fua {
            self.inner.flush().await.map_err(to_io)?;
        }
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        self.inner.flush().await.map_err(to_io)
    }

    async fn trim(&self, offset: u64, len: u32) -> io::Result<()> {
        check_range(self.inner.info.size, offset, len as u64)?;
        self.inner
            .write_zeroes(offset, len as u64)
            .await
            .map_err(to_io)
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> io::Result<()> {
        check_range(self.inner.info.size, offset, len as u64)?;
        self.inner
            .write_zeroes(offset, len as u64)
            .await
            .map_err(to_io)?;
        if fua {
            self.inner.flush().await.map_err(to_io)?;
        }
        Ok(())
    }
}
