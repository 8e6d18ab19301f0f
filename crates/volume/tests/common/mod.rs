//! Shared helpers of the engine tests: temporary file:// stores and data patterns.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
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

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
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
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
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
