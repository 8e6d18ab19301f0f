//! Metadata bytes per GiB written (random 4k and sequential 1M writes), extrapolated to a
//! fully written 100 GiB volume: the local SQLite database and the metadata shipped to the
//! bucket (snapshot plus log objects under `volumes/<id>/meta/`).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::fio::{self, Job};
use crate::report::Row;
use crate::wisp::Wisp;
use crate::{human_size, tree_bytes, Ctx, GIB, MIB};

const SECTION: &str = "metadata";
/// Target: at most this many MiB of metadata for 100 GiB written.
const LIMIT_MIB: f64 = 64.0;

/// A local SQLite file (database, WAL or shared memory), outside the store folder.
fn is_local_db(home: &Path, path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let sqlite = [
        ".db",
        ".db-wal",
        ".db-shm",
        ".sqlite",
        ".sqlite-wal",
        ".sqlite-shm",
    ]
    .iter()
    .any(|s| name.ends_with(s));
    sqlite && !path.starts_with(home.join("store"))
}

/// Local and shipped metadata bytes of a fresh volume after `job` (none: nothing written)
/// and a clean stop (which flushes, uploads and ships the metadata).
fn sizes(ctx: &Ctx, tag: &str, job: Option<&Job>) -> Result<(u64, u64)> {
    let dir = ctx.scratch(&format!("metadata-{tag}"))?;
    let home = dir.join("home");
    let wisp = Wisp::new(&ctx.wisp, &home)?;
    wisp.create("meta", 100 * GIB)?;
    let socket = dir.join("wisp.sock");
    let serve = wisp.serve("meta", &socket)?;
    if let Some(job) = job {
        fio::run(
            &ctx.fio,
            job,
            &fio::unix_uri(&socket),
            &ctx.reports,
            "metadata",
        )?;
    }
    serve.terminate(Duration::from_secs(600))?;
    let local = tree_bytes(&home, &|p| is_local_db(&home, p));
    let shipped = tree_bytes(&home.join("store"), &|p| {
        p.to_string_lossy().contains("/meta/")
    });
    Ok((local, shipped))
}

/// Extrapolates to 100 GiB written: the empty volume's fixed cost plus the growth per GiB.
fn per_100_gib(empty: u64, after: u64, written: u64) -> f64 {
    let per_gib = after.saturating_sub(empty) as f64 / (written as f64 / GIB as f64);
    (empty as f64 + per_gib * 100.0) / MIB as f64
}

fn measure(ctx: &Ctx, pattern: &str, job: Job, empty: (u64, u64)) -> Result<Vec<Row>> {
    let (local, shipped) = sizes(ctx, job.rw, Some(&job))?;
    let written = human_size(job.size);
    let mib = |b: u64| b as f64 / MIB as f64;
    Ok(vec![
        Row::bounded(
            SECTION,
            &format!("local SQLite (db + wal), {pattern}, at 100 GiB"),
            per_100_gib(empty.0, local, job.size),
            "MiB",
            LIMIT_MIB,
        )
        .with_note(format!(
            "{:.2} MiB empty, {:.2} MiB after {written} written",
            mib(empty.0),
            mib(local)
        )),
        Row::bounded(
            SECTION,
            &format!("shipped to bucket, {pattern}, at 100 GiB"),
            per_100_gib(empty.1, shipped, job.size),
            "MiB",
            LIMIT_MIB,
        )
        .with_note(format!(
            "{:.2} MiB empty, {:.2} MiB after {written} written",
            mib(empty.1),
            mib(shipped)
        )),
    ])
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let random = Job {
        name: "meta-randwrite-4k",
        rw: "randwrite",
        bs: "4k",
        iodepth: 16,
        size: ctx.meta_written,
        runtime: None,
    };
    let sequential = Job {
        name: "meta-write-1M",
        rw: "write",
        bs: "1M",
        iodepth: 16,
        size: ctx.meta_written,
        runtime: None,
    };
    let empty = sizes(ctx, "empty", None)?;
    let mut rows = measure(ctx, "random 4k", random, empty)?;
    rows.extend(measure(ctx, "sequential 1M", sequential, empty)?);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extrapolation_keeps_the_fixed_cost_once() {
        // 1 MiB empty, 2 MiB after 1 GiB: 1 MiB + 100 x 1 MiB.
        assert_eq!(per_100_gib(MIB, 2 * MIB, GIB), 101.0);
        assert_eq!(per_100_gib(MIB, MIB, GIB), 1.0);
    }

    #[test]
    fn local_db_files_exclude_the_store() {
        let home = Path::new("/h");
        assert!(is_local_db(home, Path::new("/h/cache/v1/meta.db")));
        assert!(is_local_db(home, Path::new("/h/cache/v1/meta.db-wal")));
        assert!(!is_local_db(
            home,
            Path::new("/h/store/volumes/x/meta/snapshot-1.db")
        ));
        assert!(!is_local_db(home, Path::new("/h/cache/v1/data.cache")));
    }
}
