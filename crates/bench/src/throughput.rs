//! fio through NBD: `wisp volume serve` against `nbdkit file` on a local sparse file (the
//! reference), same jobs, same region, warm cache, in the same run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::fio::{self, Job};
use crate::procs::Server;
use crate::report::{Row, Target};
use crate::wisp::Wisp;
use crate::Ctx;

const SECTION: &str = "fio";

/// Starts `nbdkit file` on a sparse file of `size` bytes and waits until it listens.
pub fn start_nbdkit(nbdkit: &Path, dir: &Path, name: &str, size: u64) -> Result<Server> {
    let image = dir.join(format!("{name}.img"));
    let file =
        std::fs::File::create(&image).with_context(|| format!("create `{}`", image.display()))?;
    file.set_len(size)?;
    let socket = dir.join(format!("{name}.sock"));
    let mut cmd = Command::new(nbdkit);
    cmd.arg("--foreground")
        .arg("file")
        .arg(&image)
        .arg("--unix")
        .arg(&socket);
    let mut server = Server::spawn("nbdkit", cmd, &dir.join(format!("{name}.log")))?;
    server.wait_for_socket(&socket, Duration::from_secs(20))?;
    Ok(server)
}

/// Runs the fill job and the standard jobs against both URIs and returns one row per job,
/// candidate/reference (each the mean of two runs).
pub fn compare(ctx: &Ctx, reference_uri: &str, candidate_uri: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let fill = fio::fill_job(ctx.region);
    let r = fio::run(&ctx.fio, &fill, reference_uri, &ctx.reports, "reference")?;
    let c = fio::run(&ctx.fio, &fill, candidate_uri, &ctx.reports, "wisp")?;
    rows.push(
        Row::ratio(
            SECTION,
            "first write 1M (cold, fills the region)",
            c.bw_bytes_per_s / 1e6,
            r.bw_bytes_per_s / 1e6,
            "MB/s",
            Target::None,
        )
        .with_note(format!("{} once", crate::human_size(ctx.region))),
    );
    for job in fio::standard_jobs(ctx.region, ctx.runtime) {
        // Reference, wisp, wisp, reference: load from other processes on this small
        // machine drifts over a minute, and the symmetric order cancels a linear drift.
        let r1 = fio::run(&ctx.fio, &job, reference_uri, &ctx.reports, "reference-1")?;
        let c1 = fio::run(&ctx.fio, &job, candidate_uri, &ctx.reports, "wisp-1")?;
        let c2 = fio::run(&ctx.fio, &job, candidate_uri, &ctx.reports, "wisp-2")?;
        let r2 = fio::run(&ctx.fio, &job, reference_uri, &ctx.reports, "reference-2")?;
        rows.push(row(&job, &c1.mean(&c2), &r1.mean(&r2)));
    }
    Ok(rows)
}

fn row(job: &Job, candidate: &fio::FioResult, reference: &fio::FioResult) -> Row {
    let note = match (candidate.clat_p99_us, reference.clat_p99_us) {
        (Some(c), Some(r)) => format!("p99 {c:.0} us vs {r:.0} us"),
        _ => String::new(),
    };
    // 4k jobs are about operations, 1M jobs about bandwidth.
    let row = if job.bs == "4k" {
        Row::ratio(
            SECTION,
            job.name,
            candidate.iops,
            reference.iops,
            "IOPS",
            Target::RatioAtLeast(0.8),
        )
    } else {
        Row::ratio(
            SECTION,
            job.name,
            candidate.bw_bytes_per_s / 1e6,
            reference.bw_bytes_per_s / 1e6,
            "MB/s",
            Target::RatioAtLeast(0.8),
        )
    };
    row.with_note(note)
}

/// The section: nbdkit vs `wisp volume serve` on a default (local folder) store.
pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.scratch("fio")?;
    let nbdkit = start_nbdkit(&ctx.nbdkit, &dir, "reference", ctx.region)?;
    let wisp = Wisp::new(&ctx.wisp, &dir.join("home"))?;
    wisp.create("bench", 100 * crate::GIB)?;
    let socket = dir.join("wisp.sock");
    let serve = wisp.serve("bench", &socket)?;
    let mut rows = compare(
        ctx,
        &fio::unix_uri(&dir.join("reference.sock")),
        &fio::unix_uri(&socket),
    )?;
    let stop = serve.terminate(Duration::from_secs(300))?;
    rows.push(
        Row::info(
            SECTION,
            "serve shutdown (flush + upload)",
            stop.as_secs_f64(),
            "s",
        )
        .with_note("SIGTERM to exit"),
    );
    drop(nbdkit);
    Ok(rows)
}
