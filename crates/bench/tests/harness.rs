//! The harness against real tools: fio through libnbd against two nbdkit servers (the
//! reference compared with itself), and a clear error when a server is not there.

use std::time::Duration;

use wisp_bench::report::Target;
use wisp_bench::{fio, throughput, Ctx, MIB};

fn ctx(dir: &std::path::Path) -> Ctx {
    Ctx {
        work: dir.join("work"),
        reports: dir.join("reports"),
        wisp: "/nonexistent/wisp".into(),
        fio: wisp_testkit::require_tool("fio", "fio"),
        nbdkit: wisp_testkit::require_tool("nbdkit", "nbdkit"),
        region: 32 * MIB,
        runtime: Duration::from_secs(1),
        big: 64 * MIB,
        meta_written: 32 * MIB,
        vm: false,
    }
}

#[test]
fn nbdkit_against_itself_gives_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    std::fs::create_dir_all(&ctx.reports).unwrap();
    let _a = throughput::start_nbdkit(&ctx.nbdkit, dir.path(), "a", ctx.region).unwrap();
    let _b = throughput::start_nbdkit(&ctx.nbdkit, dir.path(), "b", ctx.region).unwrap();
    let rows = throughput::compare(
        &ctx,
        &fio::unix_uri(&dir.path().join("a.sock")),
        &fio::unix_uri(&dir.path().join("b.sock")),
    )
    .unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
    assert_eq!(
        names,
        [
            "first write 1M (cold, fills the region)",
            "seq-write-1M",
            "seq-read-1M",
            "randwrite-4k-qd16",
            "randread-4k-qd16"
        ]
    );
    for r in &rows[1..] {
        assert!(r.value > 0.0 && r.reference.unwrap() > 0.0, "{r:?}");
        assert!(r.ratio.unwrap() > 0.0, "{r:?}");
        assert_eq!(r.target, Target::RatioAtLeast(0.8));
        assert!(r.pass.is_some());
    }
    // fio's reports are kept for inspection.
    assert!(ctx
        .reports
        .join("fio-wisp-2-randread-4k-qd16.json")
        .exists());
}

#[test]
fn fio_against_a_missing_server_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    std::fs::create_dir_all(&ctx.reports).unwrap();
    let err = fio::run(
        &ctx.fio,
        &fio::fill_job(MIB),
        &fio::unix_uri(&dir.path().join("nobody.sock")),
        &ctx.reports,
        "missing",
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("fio job `fill-1M`"), "{err:#}");
}
