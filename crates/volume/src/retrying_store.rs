//! All object-store access of the engine: opening a store from its URL, and
//! [`Blobs`], which retries every call with backoff until a deadline so that a
//! store outage becomes one clear error instead of lost data.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, PutPayload};

use crate::error::VolumeError;

/// Opens the object store named by `url`: `file:///dir`, `s3://bucket/prefix`
/// or `memory://`.
pub fn open_url(url: &str) -> Result<Arc<dyn ObjectStore>, VolumeError> {
    let bad = |reason: &str| VolumeError::InvalidStoreUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad(
                "a file store needs an absolute path, like file:///var/lib/wisp/store",
            ));
        }
        std::fs::create_dir_all(rest).map_err(|e| VolumeError::io(rest, e))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(rest)
            .map_err(|e| bad(&e.to_string()))?;
        return Ok(Arc::new(fs));
    }
    if url == "memory://" || url.starts_with("memory://") {
        return Ok(Arc::new(object_store::memory::InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            return Err(bad("missing bucket name, like s3://bucket/prefix"));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            // Garage's default region; real AWS users set AWS_REGION.
            builder = builder.with_region("garage");
        }
        let s3 = builder.build().map_err(|e| bad(&e.to_string()))?;
        let store: Arc<dyn ObjectStore> = Arc::new(s3);
        if prefix.is_empty() {
            return Ok(store);
        }
        return Ok(Arc::new(object_store::prefix::PrefixStore::new(
            store,
            Path::from(prefix),
        )));
    }
    Err(bad("use file:///path, s3://bucket/prefix or memory://"))
}

/// Retrying access to the object store. Errors that cannot heal (not found,
/// bad request) are returned at once; everything else is retried with
/// exponential backoff (50 ms doubling to 2 s) until `timeout` has passed.
#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    timeout: Duration,
}

fn permanent(err: &object_store::Error) -> bool {
    matches!(
        err,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

impl Blobs {
    pub fn new(store: Arc<dyn ObjectStore>, timeout: Duration) -> Self {
        Blobs { store, timeout }
    }

    async fn retry<T, F, Fut>(
        &self,
        action: &'static str,
        key: &str,
        mut f: F,
    ) -> Result<T, VolumeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if permanent(&e) => {
                    return Err(VolumeError::Store {
                        action,
                        key: key.to_string(),
                        source: Box::new(e),
                    })
                }
                Err(e) => {
                    let elapsed = start.elapsed();
                    if elapsed + delay > self.timeout {
                        return Err(VolumeError::StoreUnavailable {
                            action,
                            key: key.to_string(),
                            after: elapsed,
                            source: Box::new(e),
                        });
                    }
                    tracing::warn!(action, key, error = %e, "object store call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), VolumeError> {
        self.put_parts(key, vec![data]).await
    }

    /// Writes `key` as the concatenation of `parts`, without joining them.
    pub async fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<(), VolumeError> {
        let path = Path::from(key);
        self.retry("writing", key, || {
            let payload: PutPayload = parts.iter().cloned().collect();
            let path = &path;
            async move { self.store.put(path, payload).await.map(|_| ()) }
        })
        .await
    }

    /// Whole object; `Ok(None)` when it does not exist.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>, VolumeError> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, VolumeError> {
        let path = Path::from(key);
        self.retry("reading", key, || {
            let path = &path;
            async move { self.store.get(path).await?.bytes().await }
        })
        .await
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, VolumeError> {
        let path = Path::from(key);
        self.retry("reading", key, || {
            let path = &path;
            let range = range.clone();
            async move { self.store.get_range(path, range).await }
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), VolumeError> {
        let path = Path::from(key);
        let res = self
            .retry("deleting", key, || {
                let path = &path;
                async move { self.store.delete(path).await }
            })
            .await;
        match res {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Every object under `prefix` (recursively).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, VolumeError> {
        let path = Path::from(prefix);
        self.retry("listing", prefix, || {
            let path = &path;
            async move { self.store.list(Some(path)).try_collect::<Vec<_>>().await }
        })
        .await
    }

    /// The names of the "folders" directly under `prefix` (one delimited LIST).
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, VolumeError> {
        let path = Path::from(prefix);
        let listing = self
            .retry("listing", prefix, || {
                let path = &path;
                async move { self.store.list_with_delimiter(Some(path)).await }
            })
            .await?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }
}
