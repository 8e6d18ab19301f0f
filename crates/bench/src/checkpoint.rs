//! Checkpoint and fork latency on a volume with a small and a large amount of data written
//! (1 GiB and 16 GiB): both must stay under 50 ms and must not grow with the data. Timed
//! around the library calls (`Volume::checkpoint`, `Store::fork`), so process start-up is
//! not part of the figure; the data is synced first, so no upload is either.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::engine;
use crate::report::{Row, Target};
use crate::wisp::Wisp;
use crate::{human_size, median, ms, Ctx, GIB};

const SECTION: &str = "checkpoint";
const SAMPLES: usize = 5;
/// A checkpoint or fork slower than this is reported as a failure (a hang), not timed.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Awaits `fut`, failing with a message naming `what` if it takes over [`CALL_TIMEOUT`].
async fn bounded<T, E>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("{what} did not return within {CALL_TIMEOUT:?}"),
    }
}

/// Latencies measured on one volume.
struct Latency {
    checkpoint: Duration,
    fork: Duration,
    /// Bytes per second of the initial write (information only).
    fill_rate: f64,
}

fn measure(wisp: &Wisp, name: &str, written: u64) -> Result<Latency> {
    let (url, cache) = (wisp.store_url()?, wisp.cache_dir());
    engine::runtime().block_on(async {
        let store = engine::open_store(&url, &cache, &wisp.env).await?;
        store.create_volume(name, 100 * GIB).await?;
        let volume = store.open_volume(name).await?;
        let start = Instant::now();
        engine::fill(&volume, written).await?;
        volume.sync().await?;
        let fill_rate = written as f64 / start.elapsed().as_secs_f64();

        let mut checkpoint = Vec::new();
        for i in 0..SAMPLES {
            let t = Instant::now();
            bounded(
                "Volume::checkpoint",
                volume.checkpoint(Some(format!("bench {i}"))),
            )
            .await?;
            checkpoint.push(t.elapsed());
        }
        let mut fork = Vec::new();
        for i in 0..SAMPLES {
            let t = Instant::now();
            let fork_name = format!("{name}-fork{i}");
            bounded(
                "Store::fork",
                store.fork(name, &format!("v{i}"), &fork_name),
            )
            .await?;
            fork.push(t.elapsed());
        }
        volume.close().await?;
        anyhow::Ok(Latency {
            checkpoint: median(checkpoint),
            fork: median(fork),
            fill_rate,
        })
    })
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.scratch("checkpoint")?;
    let wisp = Wisp::new(&ctx.wisp, &dir.join("home"))?;
    let small_bytes = GIB.min(ctx.big);
    let small = measure(&wisp, "small", small_bytes)?;
    let big = measure(&wisp, "big", ctx.big)?;

    let mut rows = Vec::new();
    for (bytes, l) in [(small_bytes, &small), (ctx.big, &big)] {
        let label = human_size(bytes);
        let note = format!("library call, median of {SAMPLES}, local folder store");
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
        rows.push(Row::info(
            SECTION,
            &format!("write + sync of the {label} (library, 1M writes, 16 in flight)"),
            l.fill_rate / 1e6,
            "MB/s",
        ));
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
