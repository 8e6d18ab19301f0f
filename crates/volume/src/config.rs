//! Public configuration and report types of the volume engine.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When an NBD FLUSH (or FUA write) returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// FLUSH fsyncs the local cache file and the local metadata: acknowledged
    /// writes survive a process crash; upload follows within `upload_delay`.
    #[default]
    Local,
    /// FLUSH also waits until the dirty data is uploaded and the metadata
    /// shipped: acknowledged writes survive losing the host.
    Remote,
}

/// Compression of stored extents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    /// zstd level 1 (fast); an extent is stored compressed only when that saves space.
    #[default]
    Zstd,
}

/// How to reach a store and how to cache it locally.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `file:///path`, `s3://bucket/prefix` (endpoint and credentials from
    /// `AWS_*` variables) or `memory://` (tests only).
    pub url: String,
    /// Local folder holding one sub-folder per open volume: cache file,
    /// metadata database, lock file.
    pub cache_dir: PathBuf,
    /// Bound on the bytes of clean cached data per volume (dirty data is never evicted).
    pub cache_size: u64,
    /// Bound on the bytes of dirty (not yet uploaded) data per volume: a write
    /// that would dirty one more chunk waits for the uploader beyond it.
    pub dirty_limit: u64,
    pub durability: Durability,
    /// Delay between background upload cycles.
    pub upload_delay: Duration,
    pub compression: Compression,
    /// How long object-store calls are retried before an operation fails with
    /// [`crate::VolumeError::StoreUnavailable`].
    pub store_timeout: Duration,
}

impl StoreConfig {
    /// A configuration with the defaults: 10 GiB cache, 5 GiB dirty limit
    /// (half the cache), local durability, 1 s upload delay, zstd, 60 s store timeout.
    pub fn new(url: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            url: url.into(),
            cache_dir: cache_dir.into(),
            cache_size: 10 << 30,
            dirty_limit: 5 << 30,
            durability: Durability::Local,
            upload_delay: Duration::from_secs(1),
            compression: Compression::Zstd,
            store_timeout: Duration::from_secs(60),
        }
    }
}

/// What `Store::volume_info` and `list_volumes` return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// Stable id; the volume's objects live under `volumes/<id>/`.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// Block-map granularity in bytes.
    pub chunk_size: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// `volume@checkpoint` this volume was forked from, if any.
    pub origin: Option<String>,
    /// The one URL that addresses the volume's durable state.
    pub url: String,
}

/// One checkpoint of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// `v0`, `v1`, ...
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub comment: Option<String>,
}

/// What a `sync` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    pub chunks_uploaded: u64,
    pub bytes_uploaded: u64,
    pub segments_written: u64,
}

/// Options of [`crate::Store::gc`].
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced objects younger than this are kept: a writer may have
    /// uploaded them and not yet shipped the metadata that references them.
    pub grace: std::time::Duration,
    /// Rewrite segments whose live fraction is below this (0.0 disables compaction).
    pub compact_below: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            compact_below: 0.5,
        }
    }
}

/// What a gc run freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub objects_deleted: u64,
    pub bytes_freed: u64,
    pub segments_compacted: u64,
    pub volumes_purged: u64,
    /// Volumes skipped because a writer holds them (their segments are kept).
    pub volumes_skipped: Vec<String>,
    /// Unreferenced segments kept because a running fork of their volume may
    /// still read them (it opened before they were compacted away).
    pub segments_held: u64,
}
