//! The control plane through its REST API, against the volume engine's own calls in the
//! same run: creating a sprite (HTTP + registry + fork of the image) against
//! `Store::fork`, and checkpoint and restore of a cold sprite with 1 GiB written (HTTP +
//! open + the operation + close, which ships the metadata) against `Volume::checkpoint`
//! and `Volume::restore` on an open volume. The API must stay in milliseconds: each
//! figure's target is 50 ms.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wisp_control::registry::UrlAuth;
use wisp_vm::image::{self, ImageKind};

use crate::engine;
use crate::report::{Row, Target};
use crate::wisp::Wisp;
use crate::{median, ms, Ctx, GIB};

const SECTION: &str = "api";
const SAMPLES: usize = 5;
/// The API's operations touch metadata only: milliseconds, like the engine's.
const AT_MOST_MS: f64 = 50.0;

/// Times `SAMPLES` runs of `op(i)`; the median.
async fn timed<F, Fut, T>(mut op: F) -> Result<Duration>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut samples = Vec::new();
    for i in 0..SAMPLES {
        let t = Instant::now();
        op(i).await?;
        samples.push(t.elapsed());
    }
    Ok(median(samples))
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.scratch(SECTION)?;
    let wisp = Wisp::new(&ctx.wisp, &dir.join("home"))?;
    wisp.run(&["image", "build", "tiny"])
        .context("build the tiny image")?;
    let base = image::get(&wisp.home, ImageKind::Tiny)?;
    let (server, client) = wisp.server(&dir, &[])?;
    let (url, cache) = (wisp.store_url()?, wisp.cache_dir());

    let rows = engine::runtime().block_on(async {
        let store = engine::open_store(&url, &cache, &wisp.env).await?;

        // Create through the API, and the fork it does, straight.
        let api_create = timed(|i| {
            let client = &client;
            async move { Ok(client.create(&format!("s{i}"), UrlAuth::Sprite).await?) }
        })
        .await?;
        let lib_fork = timed(|i| {
            let (store, base) = (&store, &base);
            async move {
                Ok(store
                    .fork(&base.volume, &base.checkpoint, &format!("ref-fork{i}"))
                    .await?)
            }
        })
        .await?;

        // A sprite with 1 GiB written, cold (its volume closed).
        let sprite = client.get("s0").await?;
        let volume_name = format!("sprite-{}", sprite.id);
        let volume = store.open_volume(&volume_name).await?;
        engine::fill(&volume, GIB).await?;
        volume.sync().await?;
        let lib_checkpoint = timed(|i| {
            let volume = &volume;
            async move { Ok(volume.checkpoint(Some(format!("ref {i}"))).await?) }
        })
        .await?;
        let lib_restore = timed(|_| {
            let volume = &volume;
            async move { Ok(volume.restore("v0").await?) }
        })
        .await?;
        volume.close().await?;
        let api_checkpoint = timed(|_| {
            let client = &client;
            async move { Ok(client.checkpoint("s0", None).await?) }
        })
        .await?;
        let api_restore = timed(|_| {
            let client = &client;
            async move { Ok(client.restore("s0", "v0").await?) }
        })
        .await?;
        // A fork of that sprite's checkpoint (issue 11): the API's adds the fork's own
        // first checkpoint and its registry row.
        let api_fork = timed(|i| {
            let client = &client;
            async move {
                Ok(client
                    .fork(&format!("f{i}"), "s0", Some("v0"), UrlAuth::Sprite)
                    .await?)
            }
        })
        .await?;
        let lib_sprite_fork = timed(|i| {
            let (store, volume_name) = (&store, &volume_name);
            async move {
                Ok(store
                    .fork(volume_name, "v0", &format!("ref-sprite-fork{i}"))
                    .await?)
            }
        })
        .await?;

        // A sprite with `ctx.big` written (16 GiB; compressible data, since a fork
        // touches metadata only: one block-map row per 256 KiB chunk either way).
        // Filled through a store with a 1 GiB cache, so the local disk holds little.
        client.create("big", UrlAuth::Sprite).await?;
        let big = client.get("big").await?;
        let big_volume = format!("sprite-{}", big.id);
        {
            let mut config = wisp_volume::StoreConfig::new(url.as_str(), cache.as_path());
            config.cache_size = GIB;
            config.dirty_limit = GIB / 2;
            let filler = wisp_volume::Store::open(config).await?;
            let volume = filler.open_volume(&big_volume).await?;
            engine::fill_compressible(&volume, ctx.big).await?;
            volume.sync().await?;
            volume.close().await?;
        }
        client.checkpoint("big", None).await?;
        let api_fork_big = timed(|i| {
            let client = &client;
            async move {
                Ok(client
                    .fork(&format!("g{i}"), "big", Some("v0"), UrlAuth::Sprite)
                    .await?)
            }
        })
        .await?;
        let lib_fork_big = timed(|i| {
            let (store, big_volume) = (&store, &big_volume);
            async move {
                Ok(store
                    .fork(big_volume, "v0", &format!("ref-big-fork{i}"))
                    .await?)
            }
        })
        .await?;

        let note = format!("median of {SAMPLES}; reference: the engine call in this process");
        let row = |metric: &str, value: Duration, reference: Duration| {
            Row::ratio(
                SECTION,
                metric,
                ms(value),
                ms(reference),
                "ms",
                Target::ValueAtMost(AT_MOST_MS),
            )
            .with_note(note.clone())
        };
        anyhow::Ok(vec![
            row(
                "POST /v1/sprites (create = fork of the image)",
                api_create,
                lib_fork,
            ),
            row(
                "POST checkpoint, cold sprite, 1 GiB written",
                api_checkpoint,
                lib_checkpoint,
            ),
            row(
                "POST checkpoints/v0/restore, cold sprite, 1 GiB written",
                api_restore,
                lib_restore,
            ),
            row(
                "POST /v1/sprites with source (fork of a sprite's v0, 1 GiB written)",
                api_fork,
                lib_sprite_fork,
            ),
            row(
                &format!(
                    "POST /v1/sprites with source (fork of a sprite's v0, {} GiB written)",
                    ctx.big / GIB
                ),
                api_fork_big,
                lib_fork_big,
            ),
        ])
    })?;
    server.terminate(Duration::from_secs(30))?;
    Ok(rows)
}
