//! Shared helpers of the engine tests: temporary file:// stores and data patterns.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use wisp_nbd::BlockDevice;
use wisp_volume::{Store, StoreConfig, Volume};

pub const MIB: u64 = 1 << 20;

/// A temporary folder holding a file:// store and any number of cache dirs ("hosts").
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Like [`Env::new`], on the memory file system `/dev/shm` where there
    /// is one: the same `file://` store and SQLite files without the cost of
    /// fsync on disk (a fork takes about 5 ms instead of 100 ms), for loops
    /// of many operations.
    pub fn in_memory() -> Env {
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            return Env::new();
        }
        Env {
            dir: tempfile::tempdir_in(shm).expect("temp dir in /dev/shm"),
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.store_path().display())
    }

    pub fn config(&self, host: &str) -> StoreConfig {
        let mut c = StoreConfig::new(self.url(), self.dir.path().join(host));
        c.upload_delay = Duration::from_millis(100);
        c.store_timeout = Duration::from_secs(5);
        c
    }

    pub async fn store(&self, host: &str) -> Store {
        Store::open(self.config(host)).await.expect("open store")
    }

    /// Every segment object file under the store.
    pub fn segment_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.store_path(), &mut out);
        out.retain(|p| p.components().any(|c| c.as_os_str() == "segments"));
        out.sort();
        out
    }
}

fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Deterministic, incompressible-ish bytes identified by `seed`.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    Bytes::from(wisp_testkit::pattern(seed, len))
}

pub async fn write(vol: &Volume, offset: u64, data: &Bytes) {
    vol.write(offset, data.clone(), false).await.expect("write");
}

pub async fn read(vol: &Volume, offset: u64, len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len);
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(8 << 20);
        out.extend_from_slice(&vol.read(offset + pos as u64, n as u32).await.expect("read"));
        pos += n;
    }
    Bytes::from(out)
}

/// A wrapper object store for tests: fails every `fail_every`-th call (0:
/// never), every call while `down`, delays every call by `delay_ms`, and
/// counts the GETs and PUTs of segment objects.
#[derive(Debug)]
pub struct FailingStore {
    pub inner: Arc<dyn ObjectStore>,
    pub calls: AtomicU64,
    pub fail_every: AtomicU64,
    pub failures: AtomicU64,
    pub down: AtomicBool,
    pub delay_ms: AtomicU64,
    pub segment_gets: AtomicU64,
    pub segment_puts: AtomicU64,
}

fn is_segment(location: &Path) -> bool {
    location.as_ref().contains("/segments/")
}

impl fmt::Display for FailingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingStore({})", self.inner)
    }
}

impl FailingStore {
    /// A store that neither fails nor waits (yet) over the store at `url`.
    pub fn over(url: &str) -> Arc<FailingStore> {
        Arc::new(FailingStore {
            inner: wisp_volume::open_url(url).expect("open store url"),
            calls: AtomicU64::new(0),
            fail_every: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            down: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            segment_gets: AtomicU64::new(0),
            segment_puts: AtomicU64::new(0),
        })
    }

    async fn gate(&self) -> object_store::Result<()> {
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let every = self.fail_every.load(Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) || (every > 0 && n % every == 0) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "failing",
                source: "injected fault".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FailingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.gate().await?;
        if is_segment(location) {
            self.segment_puts.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.gate().await?;
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.gate().await?;
        if is_segment(location) {
            self.segment_gets.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get_opts(location, options).await
    }
    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.gate().await?;
        self.inner.delete(location).await
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(futures::stream::once(async {
                Err(object_store::Error::Generic {
                    store: "failing",
                    source: "injected fault".into(),
                })
            }));
        }
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.gate().await?;
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.gate().await?;
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.gate().await?;
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// Where a [`HookStore`] runs its action.
#[derive(Debug, Clone)]
pub enum Hook {
    /// Before the first GET of an object whose key contains the text: the
    /// reader listed the object, the action runs, then the reader reads it.
    BeforeGet(String),
    /// During the first LIST of a prefix containing the text: the listing
    /// runs the action between reading the names of a folder and reading each
    /// object's metadata, as a `file://` store's walk does, so it holds only
    /// the objects present both before and after the action (objects created
    /// by it: names not read; deleted by it: metadata not found).
    TornList(String),
}

/// A wrapper object store that forces an interleaving: it runs a test's
/// action (another party's work, like a writer compacting its metadata) once,
/// at the [`Hook`] point of an access through this store. It also counts the
/// PUTs of metadata snapshots made through it.
pub struct HookStore {
    pub inner: Arc<dyn ObjectStore>,
    armed: Mutex<Option<(Hook, BoxFuture<'static, ()>)>>,
    /// How many times the action ran (0 or 1).
    pub fired: AtomicU64,
    /// PUTs of `.../meta/snapshot-...` objects through this store.
    pub snapshot_puts: AtomicU64,
    /// While set, every LIST of a prefix containing the text also shows a
    /// snapshot that does not exist, a newer one each time: the metadata of a
    /// writer that compacts faster than anyone can read it.
    pub phantom_snapshots: Mutex<Option<String>>,
    phantoms: AtomicU64,
}

impl fmt::Debug for HookStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HookStore({})", self.inner)
    }
}

impl fmt::Display for HookStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HookStore({})", self.inner)
    }
}

impl HookStore {
    /// A store over the store at `url` with no action armed.
    pub fn over(url: &str) -> Arc<HookStore> {
        Arc::new(HookStore {
            inner: wisp_volume::open_url(url).expect("open store url"),
            armed: Mutex::new(None),
            fired: AtomicU64::new(0),
            snapshot_puts: AtomicU64::new(0),
            phantom_snapshots: Mutex::new(None),
            phantoms: AtomicU64::new(0),
        })
    }

    /// Runs `action` once, at `hook`.
    pub fn arm(&self, hook: Hook, action: BoxFuture<'static, ()>) {
        *self.armed.lock().unwrap() = Some((hook, action));
        self.fired.store(0, Ordering::SeqCst);
    }

    /// The armed action if `hook` matches the access, disarming it.
    fn take(&self, matches: impl FnOnce(&Hook) -> bool) -> Option<BoxFuture<'static, ()>> {
        let mut armed = self.armed.lock().unwrap();
        if !armed.as_ref().is_some_and(|(h, _)| matches(h)) {
            return None;
        }
        self.fired.fetch_add(1, Ordering::SeqCst);
        armed.take().map(|(_, action)| action)
    }
}

#[async_trait]
impl ObjectStore for HookStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if location.as_ref().contains("/meta/snapshot-") {
            self.snapshot_puts.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let key = location.as_ref();
        if let Some(action) = self.take(|h| matches!(h, Hook::BeforeGet(t) if key.contains(t))) {
            action.await;
        }
        self.inner.get_opts(location, options).await
    }
    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let text = prefix.map(|p| p.as_ref().to_string()).unwrap_or_default();
        let phantom = self.phantom_snapshots.lock().unwrap().clone();
        if phantom.is_some_and(|t| text.contains(&t)) {
            let n = self.phantoms.fetch_add(1, Ordering::SeqCst) + 1_000_000;
            let listing = self.inner.list(prefix);
            return futures::stream::once(async move {
                let mut objects: Vec<ObjectMeta> = listing.try_collect().await?;
                if let Some(real) = objects.first() {
                    let mut phantom = real.clone();
                    let mut parts: Vec<_> = real.location.parts().collect();
                    parts.pop();
                    phantom.location = Path::from_iter(parts).child(format!("snapshot-{n:020}.db"));
                    objects.push(phantom);
                }
                Ok::<_, object_store::Error>(futures::stream::iter(objects.into_iter().map(Ok)))
            })
            .try_flatten()
            .boxed();
        }
        let Some(action) = self.take(|h| matches!(h, Hook::TornList(t) if text.contains(t))) else {
            return self.inner.list(prefix);
        };
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            let before: Vec<ObjectMeta> = inner.list(prefix.as_ref()).try_collect().await?;
            action.await;
            let after: HashSet<Path> = inner
                .list(prefix.as_ref())
                .map_ok(|o| o.location)
                .try_collect()
                .await?;
            let kept = before
                .into_iter()
                .filter(move |o| after.contains(&o.location));
            Ok::<_, object_store::Error>(futures::stream::iter(kept.map(Ok)))
        })
        .try_flatten()
        .boxed()
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}
