//! The `wakes` section: many (cold) wakes of one sprite through `wisp server`, to see the
//! tail, not just the median. A guest that stalls during boot (issue 8: one boot in
//! 49 took 65 s) shows here as a wake far above the median; the right value is no
//! wake over twice the median. Not in the default run (200 wakes take about 20
//! minutes under TCG): `wisp-bench --only wakes`, `WISP_BENCH_WAKES=N` for another count.

use anyhow::Result;

use crate::report::{Row, Target};
use crate::vm::{api_exec, until_asleep};
use crate::wisp::Wisp;
use crate::{engine, median, Ctx};

const SECTION: &str = "wakes";

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let count: usize = match std::env::var("WISP_BENCH_WAKES") {
        Err(_) => 200,
        Ok(v) => v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            anyhow::anyhow!("WISP_BENCH_WAKES=`{v}` is not a count of wakes (1 or more)")
        })?,
    };
    let dir = ctx.scratch(SECTION)?;
    let wisp = Wisp::new(&ctx.wisp, &dir.join("home"))?;
    wisp.run(&["image", "build", "tiny"])?;
    let (server, client) = wisp.server(&dir, &["--idle-timeout", "1s", "--sleep-mode", "cold"])?;
    let wakes = engine::runtime().block_on(async {
        let name = "wakes";
        client
            .create(name, wisp_control::registry::UrlAuth::Sprite)
            .await?;
        // The first wake may still build the initramfs: not a sample.
        api_exec(&client, name).await?;
        let mut wakes = Vec::with_capacity(count);
        for i in 0..count {
            until_asleep(&client, name).await?;
            let took = api_exec(&client, name).await?;
            if (i + 1) % 20 == 0 {
                eprintln!(
                    "wisp-bench: {} wakes, last {:.2} s",
                    i + 1,
                    took.as_secs_f64()
                );
            }
            wakes.push(took);
        }
        anyhow::Ok(wakes)
    })?;
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    server.terminate(std::time::Duration::from_secs(60))?;
    let stalls = log.matches("stalled during boot").count();
    let med = median(wakes.clone());
    let max = wakes.iter().copied().max().unwrap_or_default();
    let over = wakes.iter().filter(|w| **w > med * 2).count();
    Ok(vec![
        Row::ratio(
            SECTION,
            "slowest wake vs the median wake",
            max.as_secs_f64(),
            med.as_secs_f64(),
            "s",
            Target::RatioAtMost(2.0),
        )
        .with_note(format!(
            "{count} wakes of one tiny sprite (exec `true` through the API after it went to sleep); {over} over twice the median; boots the server killed as stalled and booted again: {stalls}"
        )),
    ])
}
