//! Cold reads: a volume written on one "host", uploaded to a real Garage, then read
//! sequentially by a second host with an empty cache, against raw parallel ranged GETs of
//! the same segment objects (object_store, 8 in flight) in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use wisp_testkit::Garage;

use crate::fio;
use crate::report::{Row, Target};
use crate::wisp::Wisp;
use crate::{human_size, Ctx, MIB};

const SECTION: &str = "cold read";
const PARALLEL_GETS: usize = 8;
const GET_SIZE: u64 = 8 * MIB;
const PREFIX: &str = "bench-cold";

/// Objects holding volume data: everything of the volume but its metadata (`/meta/`) and
/// small control objects.
fn is_segment(key: &str, size: u64) -> bool {
    !key.contains("/meta/") && size >= 64 * 1024
}

/// Reads every segment object once with ranged GETs, `PARALLEL_GETS` in flight; returns
/// bytes read and the time it took.
async fn raw_gets(store: Arc<dyn ObjectStore>) -> Result<(u64, Duration)> {
    let objects: Vec<_> = store
        .list(Some(&ObjectPath::from(PREFIX)))
        .try_collect()
        .await
        .context("list the bucket")?;
    let mut ranges = Vec::new();
    for o in objects
        .iter()
        .filter(|o| is_segment(o.location.as_ref(), o.size))
    {
        let mut at = 0;
        while at < o.size {
            let end = (at + GET_SIZE).min(o.size);
            ranges.push((o.location.clone(), at..end));
            at = end;
        }
    }
    if ranges.is_empty() {
        bail!("no segment objects under `{PREFIX}/` in the bucket");
    }
    let start = Instant::now();
    let bytes: Vec<u64> = futures::stream::iter(ranges)
        .map(|(path, range)| {
            let store = store.clone();
            async move {
                let data = store.get_range(&path, range).await?;
                Ok::<u64, object_store::Error>(data.len() as u64)
            }
        })
        .buffer_unordered(PARALLEL_GETS)
        .try_collect()
        .await
        .context("ranged GET")?;
    Ok((bytes.iter().sum(), start.elapsed()))
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.scratch("cold")?;
    let garage = Garage::start();
    let on_host = |host: &str| -> Result<Wisp> {
        let mut wisp = Wisp::new(&ctx.wisp, &dir.join(host))?;
        wisp.store = Some(garage.store_url(PREFIX));
        wisp.env = garage.env_vars();
        Ok(wisp)
    };

    // Host A writes the region and uploads it (SIGTERM flushes and uploads).
    let host_a = on_host("host-a")?;
    host_a.create("cold", 100 * crate::GIB)?;
    let socket_a = dir.join("a.sock");
    let serve = host_a.serve("cold", &socket_a)?;
    fio::run(
        &ctx.fio,
        &fio::fill_job(ctx.region),
        &fio::unix_uri(&socket_a),
        &ctx.reports,
        "cold-write",
    )?;
    let upload = serve.terminate(Duration::from_secs(600))?;

    let store: Arc<dyn ObjectStore> = Arc::new(garage.s3_builder().build()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (ref_bytes, ref_time_1) = runtime.block_on(raw_gets(store.clone()))?;

    // Host B: empty home, empty cache, same bucket.
    let host_b = on_host("host-b")?;
    let socket_b = dir.join("b.sock");
    let serve = host_b.serve("cold", &socket_b)?;
    let read = fio::Job {
        name: "cold-seq-read-1M",
        rw: "read",
        bs: "1M",
        iodepth: 16,
        size: ctx.region,
        runtime: None,
    };
    let cold = fio::run(
        &ctx.fio,
        &read,
        &fio::unix_uri(&socket_b),
        &ctx.reports,
        "wisp",
    )?;
    drop(serve);

    // Again after the volume read, so that neither side alone profits from a warm
    // Garage; the better of the two reference runs counts.
    let (_, ref_time_2) = runtime.block_on(raw_gets(store))?;
    let ref_time = ref_time_1.min(ref_time_2);
    let reference = ref_bytes as f64 / ref_time.as_secs_f64() / 1e6;

    Ok(vec![
        Row::ratio(
            SECTION,
            &format!("sequential read 1M qd16, {} from Garage", human_size(ctx.region)),
            cold.bw_bytes_per_s / 1e6,
            reference,
            "MB/s",
            Target::RatioAtLeast(0.5),
        )
        .with_note(format!(
            "reference: {PARALLEL_GETS} parallel {} MiB ranged GETs of the {} MiB of segment objects",
            GET_SIZE / MIB,
            ref_bytes / MIB
        )),
        Row::info(
            SECTION,
            "upload on serve shutdown",
            upload.as_secs_f64(),
            "s",
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_exclude_metadata() {
        assert!(is_segment("bench-cold/volumes/x/seg/0001", 4 << 20));
        assert!(!is_segment(
            "bench-cold/volumes/x/meta/snapshot-1.db",
            4 << 20
        ));
        assert!(!is_segment("bench-cold/volumes/x/lease", 100));
    }
}
