//! `wisp-bench`: measures wisp against references in one run (fio through NBD vs nbdkit,
//! checkpoint/fork latency, cold reads vs raw GETs from Garage, metadata size, VM boot) and
//! reports every figure as a ratio or against its target. `make bench` runs it.

pub mod api;
pub mod checkpoint;
pub mod cold_read;
pub mod engine;
pub mod fio;
pub mod history;
pub mod image;
pub mod metadata;
pub mod procs;
pub mod report;
pub mod sdk;
pub mod sleep;
pub mod throughput;
pub mod vm;
pub mod wakes;
pub mod wisp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// Settings every section reads.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Scratch folder for volumes, sockets and sparse files (removed after the run).
    pub work: PathBuf,
    /// Where fio's JSON reports are kept.
    pub reports: PathBuf,
    /// The `wisp` binary under test.
    pub wisp: PathBuf,
    pub fio: PathBuf,
    pub nbdkit: PathBuf,
    /// Bytes of the region the fio jobs cover (1 GiB; less with `--quick`).
    pub region: u64,
    /// Duration of each timed fio job.
    pub runtime: Duration,
    /// Bytes written before the second checkpoint/fork measurement (16 GiB by default).
    pub big: u64,
    /// Bytes written per metadata measurement.
    pub meta_written: u64,
    /// Whether VM rows may run (`--vm`).
    pub vm: bool,
}

impl Ctx {
    /// A fresh, empty scratch sub-folder for one section.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clear `{}`", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create `{}`", dir.display()))?;
        Ok(dir)
    }
}

/// "1 GiB", "512 MiB": sizes as the report shows them.
pub fn human_size(bytes: u64) -> String {
    if bytes >= GIB && bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// A size as `wisp volume create --size` takes it.
pub fn size_arg(bytes: u64) -> String {
    format!("{}M", bytes / MIB)
}

/// Total bytes of the files under `dir` accepted by `keep` (which sees the path).
pub fn tree_bytes(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += tree_bytes(&path, keep);
        } else if meta.is_file() && keep(&path) {
            total += meta.len();
        }
    }
    total
}

/// The median of some durations (the upper one for an even count).
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(human_size(16 * GIB), "16 GiB");
        assert_eq!(human_size(256 * MIB), "256 MiB");
        assert_eq!(size_arg(GIB), "1024M");
    }

    #[test]
    fn median_of_samples() {
        let d = |n| Duration::from_millis(n);
        assert_eq!(median(vec![d(5), d(1), d(3)]), d(3));
        assert_eq!(median(vec![]), Duration::ZERO);
    }

    #[test]
    fn tree_bytes_filters_files() {
        let dir = std::env::temp_dir().join(format!("wisp-bench-tree-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/meta")).unwrap();
        std::fs::write(dir.join("a/meta/x.db"), [0u8; 10]).unwrap();
        std::fs::write(dir.join("a/seg"), [0u8; 7]).unwrap();
        assert_eq!(tree_bytes(&dir, &|_| true), 17);
        assert_eq!(
            tree_bytes(&dir, &|p| p.to_string_lossy().contains("/meta/")),
            10
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
