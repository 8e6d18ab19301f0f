//! Checkpoint and fork latency on a volume with a small and a large amount of data written:
//! both must stay under 50 ms and must not grow with the data.

use std::time::Duration;

use anyhow::Result;

use crate::fio;
use crate::report::{Row, Target};
use crate::wisp::Wisp;
use crate::{human_size, median, ms, Ctx, GIB};

const SECTION: &str = "checkpoint";
const SAMPLES: usize = 5;

/// Latencies measured on one volume.
struct Latency {
    checkpoint: Duration,
    fork: Duration,
    /// The same process doing a read-only command on the same volume: start-up and store
    /// opening, which every CLI call pays and which does not depend on the data written.
    baseline: Duration,
}

fn measure(ctx: &Ctx, wisp: &Wisp, name: &str, written: u64) -> Result<Latency> {
    wisp.create(name, "100G")?;
    let socket = wisp.home.join(format!("{name}.sock"));
    let serve = wisp.serve(name, &socket)?;
    fio::run(
        &ctx.fio,
        &fio::fill_job(written),
        &fio::unix_uri(&socket),
        &ctx.reports,
        &format!("checkpoint-{name}"),
    )?;
    serve.terminate(Duration::from_secs(900))?;

    let mut baseline = Vec::new();
    let mut checkpoint = Vec::new();
    let mut fork = Vec::new();
    for i in 0..SAMPLES {
        baseline.push(wisp.timed(&["volume", "checkpoints", name, "--json"])?);
        checkpoint.push(wisp.timed(&[
            "volume",
            "checkpoint",
            name,
            "-m",
            &format!("bench {i}"),
        ])?);
    }
    for i in 0..SAMPLES {
        fork.push(wisp.timed(&[
            "volume",
            "fork",
            &format!("{name}@v{i}"),
            &format!("{name}-fork{i}"),
        ])?);
    }
    Ok(Latency {
        checkpoint: median(checkpoint),
        fork: median(fork),
        baseline: median(baseline),
    })
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.scratch("checkpoint")?;
    let wisp = Wisp::new(&ctx.wisp, &dir.join("home"))?;
    let small_bytes = GIB.min(ctx.big);
    let small = measure(ctx, &wisp, "small", small_bytes)?;
    let big = measure(ctx, &wisp, "big", ctx.big)?;

    let mut rows = Vec::new();
    for (bytes, l) in [(small_bytes, &small), (ctx.big, &big)] {
        let label = human_size(bytes);
        let note = format!(
            "whole `wisp` process, median of {SAMPLES}; a read-only `wisp volume checkpoints` takes {:.1} ms",
            ms(l.baseline)
        );
        rows.push(
            Row::bounded(
                SECTION,
                &format!("checkpoint, {label} written"),
                ms(l.checkpoint),
                "ms",
                50.0,
            )
            .with_note(note.clone()),
        );
        rows.push(
            Row::bounded(
                SECTION,
                &format!("fork, {label} written"),
                ms(l.fork),
                "ms",
                50.0,
            )
            .with_note(note),
        );
    }
    // "Not growing with data": the large volume against the small one, in the same run.
    let growth = format!("{} vs {}", human_size(ctx.big), human_size(small_bytes));
    rows.push(Row::ratio(
        SECTION,
        &format!("checkpoint growth, {growth}"),
        ms(big.checkpoint),
        ms(small.checkpoint),
        "ms",
        Target::RatioAtMost(1.5),
    ));
    rows.push(Row::ratio(
        SECTION,
        &format!("fork growth, {growth}"),
        ms(big.fork),
        ms(small.fork),
        "ms",
        Target::RatioAtMost(1.5),
    ));
    Ok(rows)
}
