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

fn measure(ctx: &Ctx, pattern: &str, job: Job) -> Result<Vec<Row>> {
    let dir = ctx.scratch(&format!("metadata-{}", job.rw))?;
    let home = dir.join("home");
    let wisp = Wisp::new(&ctx.wisp, &home)?;
    wisp.create("meta", "100G")?;
    let socket = dir.join("wisp.sock");
    let serve = wisp.serve("meta", &socket)?;
    fio::run(
        &ctx.fio,
        &job,
        &fio::unix_uri(&socket),
        &ctx.reports,
        "metadata",
    )?;
    // SIGTERM flushes, uploads and ships the metadata.
    serve.terminate(Duration::from_secs(600))?;

    let local = tree_bytes(&home, &|p| is_local_db(&home, p));
    let shipped = tree_bytes(&home.join("store"), &|p| {
        p.to_string_lossy().contains("/meta/")
    });
    let gib_written = job.size as f64 / GIB as f64;
    let per_100_gib = |bytes: u64| bytes as f64 / gib_written * 100.0 / MIB as f64;
    let written = human_size(job.size);
    Ok(vec![
        Row::bounded(
            SECTION,
            &format!("local SQLite, {pattern}, per 100 GiB"),
            per_100_gib(local),
            "MiB",
            LIMIT_MIB,
        )
        .with_note(format!(
            "{:.2} MiB after {written} written",
            local as f64 / MIB as f64
        )),
        Row::bounded(
            SECTION,
            &format!("shipped to bucket, {pattern}, per 100 GiB"),
            per_100_gib(shipped),
            "MiB",
            LIMIT_MIB,
        )
        .with_note(format!(
            "{:.2} MiB after {written} written",
            shipped as f64 / MIB as f64
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
    let mut rows = measure(ctx, "random 4k", random)?;
    rows.extend(measure(ctx, "sequential 1M", sequential)?);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

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
