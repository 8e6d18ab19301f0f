//! Fault injection: a wrapper object store that fails and delays calls proves
//! that the engine retries, never loses acknowledged data, and reports a clear
//! error once the store stays down past the timeout.

mod common;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use wisp_nbd::BlockDevice;
use wisp_volume::{Store, VolumeError};

/// Fails every `fail_every`-th call (0: never), every call while `down`, and
/// delays every call by `delay_ms`.
#[derive(Debug)]
struct FailingStore {
    inner: Arc<dyn ObjectStore>,
    calls: AtomicU64,
    fail_every: AtomicU64,
    failures: AtomicU64,
    down: AtomicBool,
    delay_ms: AtomicU64,
}

impl fmt::Display for FailingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingStore({})", self.inner)
    }
}

impl FailingStore {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_intermittent_faults_and_an_outage_loses_no_acknowledged_data() {
    let env = Env::new();
    let fs = wisp_volume::open_url(&env.url()).unwrap();
    let failing = Arc::new(FailingStore {
        inner: fs,
        calls: AtomicU64::new(0),
        fail_every: AtomicU64::new(3),
        failures: AtomicU64::new(0),
        down: AtomicBool::new(false),
        delay_ms: AtomicU64::new(5),
    });
    let mut config = env.config("a");
    config.store_timeout = Duration::from_secs(2);
    let store = Store::open_with_object_store(config, failing.clone())
        .await
        .unwrap();
    store.create_volume("f", 16 * MIB).await.unwrap();
    let vol = store.open_volume("f").await.unwrap();
    let a = pattern(70, 2 * MIB as usize);
    write(&vol, 0, &a).await;
    vol.flush().await.unwrap();
    vol.sync().await.unwrap();
    assert!(
        failing.failures.load(Ordering::SeqCst) > 0,
        "no fault was injected"
    );

    // The store goes down: writes and flushes still succeed locally...
    failing.fail_every.store(0, Ordering::SeqCst);
    failing.down.store(true, Ordering::SeqCst);
    let b = pattern(71, MIB as usize);
    write(&vol, 8 * MIB, &b).await;
    vol.flush().await.unwrap();
    assert_eq!(read(&vol, 8 * MIB, b.len()).await, b);
    // ...and sync fails with a clear error once the timeout has passed.
    let err = vol.sync().await.unwrap_err();
    assert!(
        matches!(err, VolumeError::StoreUnavailable { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("object store unavailable for"),
        "{err}"
    );
    assert!(vol.dirty_bytes() > 0);

    // The store comes back: everything acknowledged reaches it.
    failing.down.store(false, Ordering::SeqCst);
    vol.sync().await.unwrap();
    vol.close().await.unwrap();
    let fresh = env.store("b").await;
    let vol = fresh.open_volume("f").await.unwrap();
    assert_eq!(read(&vol, 0, a.len()).await, a);
    assert_eq!(read(&vol, 8 * MIB, b.len()).await, b);
    vol.close().await.unwrap();
}
