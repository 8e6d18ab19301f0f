//! Runs fio jobs through its `nbd` engine (libnbd) against an NBD URI and parses the JSON
//! report into throughput, IOPS and completion-latency percentiles.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One fio job over the region `[0, size)` of the export.
#[derive(Debug, Clone)]
pub struct Job {
    /// Short name used in reports and file names (`seq-write-1M`).
    pub name: &'static str,
    /// fio `rw=`: `write`, `read`, `randwrite`, `randread`.
    pub rw: &'static str,
    /// fio `bs=`.
    pub bs: &'static str,
    pub iodepth: u32,
    /// Bytes of the export the job covers.
    pub size: u64,
    /// Run for this long, wrapping around the region; `None` covers the region once.
    pub runtime: Option<Duration>,
}

impl Job {
    /// Whether the job reads (its figures are under `read` in fio's report).
    pub fn reads(&self) -> bool {
        self.rw.contains("read")
    }
}

/// What one job measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FioResult {
    pub bw_bytes_per_s: f64,
    pub iops: f64,
    /// Completion latency percentiles in microseconds (absent when fio reports none).
    pub clat_p50_us: Option<f64>,
    pub clat_p99_us: Option<f64>,
}

impl FioResult {
    /// The average of two runs of the same job.
    pub fn mean(&self, other: &FioResult) -> FioResult {
        let avg = |a: f64, b: f64| (a + b) / 2.0;
        let avg_opt = |a: Option<f64>, b: Option<f64>| Some(avg(a?, b?));
        FioResult {
            bw_bytes_per_s: avg(self.bw_bytes_per_s, other.bw_bytes_per_s),
            iops: avg(self.iops, other.iops),
            clat_p50_us: avg_opt(self.clat_p50_us, other.clat_p50_us),
            clat_p99_us: avg_opt(self.clat_p99_us, other.clat_p99_us),
        }
    }
}

/// The four warm-cache jobs of the benchmark over a region of `size` bytes.
pub fn standard_jobs(size: u64, runtime: Duration) -> Vec<Job> {
    let job = |name, rw, bs, iodepth| Job {
        name,
        rw,
        bs,
        iodepth,
        size,
        runtime: Some(runtime),
    };
    vec![
        job("seq-write-1M", "write", "1M", 16),
        job("seq-read-1M", "read", "1M", 16),
        job("randwrite-4k-qd16", "randwrite", "4k", 16),
        job("randread-4k-qd16", "randread", "4k", 16),
    ]
}

/// Writes the whole region once with 1 MiB sequential writes (warms the cache).
pub fn fill_job(size: u64) -> Job {
    Job {
        name: "fill-1M",
        rw: "write",
        bs: "1M",
        iodepth: 16,
        size,
        runtime: None,
    }
}

/// The libnbd URI of a unix-socket export.
pub fn unix_uri(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

/// Runs `job` against `uri`, keeping fio's JSON report in `out_dir`.
pub fn run(fio: &Path, job: &Job, uri: &str, out_dir: &Path, tag: &str) -> Result<FioResult> {
    let report: PathBuf = out_dir.join(format!("fio-{tag}-{}.json", job.name));
    let mut cmd = Command::new(fio);
    cmd.arg(format!("--name={}", job.name))
        .arg("--ioengine=nbd")
        .arg(format!("--uri={uri}"))
        .arg(format!("--rw={}", job.rw))
        .arg(format!("--bs={}", job.bs))
        .arg(format!("--iodepth={}", job.iodepth))
        .arg(format!("--size={}", job.size))
        .arg("--output-format=json")
        .arg(format!("--output={}", report.display()));
    if let Some(runtime) = job.runtime {
        cmd.arg("--time_based")
            .arg(format!("--runtime={}", runtime.as_secs().max(1)));
    }
    crate::procs::run(&mut cmd)
        .with_context(|| format!("fio job `{}` against `{uri}`", job.name))?;
    let text = std::fs::read_to_string(&report)
        .with_context(|| format!("read fio report `{}`", report.display()))?;
    parse(&text, job.reads()).with_context(|| format!("fio report `{}`", report.display()))
}

/// Extracts the figures of the first job from fio's `--output-format=json` text.
pub fn parse(json: &str, reads: bool) -> Result<FioResult> {
    // fio may print warnings before the JSON document.
    let start = json.find('{').context("no JSON object in fio output")?;
    let doc: serde_json::Value = serde_json::from_str(&json[start..]).context("fio JSON")?;
    let job = doc
        .get("jobs")
        .and_then(|j| j.get(0))
        .context("fio report has no jobs")?;
    if let Some(err) = job.get("error").and_then(|e| e.as_i64()) {
        if err != 0 {
            bail!("fio job failed with error {err}");
        }
    }
    let side = job
        .get(if reads { "read" } else { "write" })
        .context("fio job has no read/write section")?;
    let num = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_f64);
    let bw = num(side.get("bw_bytes")).context("no bw_bytes")?;
    let iops = num(side.get("iops")).context("no iops")?;
    if bw <= 0.0 {
        bail!("fio moved no data");
    }
    let pct = side.get("clat_ns").and_then(|c| c.get("percentile"));
    let p = |k: &str| num(pct.and_then(|p| p.get(k))).map(|ns| ns / 1000.0);
    Ok(FioResult {
        bw_bytes_per_s: bw,
        iops,
        clat_p50_us: p("50.000000"),
        clat_p99_us: p("99.000000"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "jobs" : [ { "jobname" : "w", "error" : 0,
    "read" : { "bw_bytes" : 0, "iops" : 0.0 },
    "write" : { "bw_bytes" : 197760383, "iops" : 48281.34,
      "clat_ns" : { "percentile" : { "50.000000" : 321536, "99.000000" : 1003520 } } } } ]
}"#;

    #[test]
    fn parses_write_figures_after_a_warning() {
        let r = parse(REPORT, false).unwrap();
        assert_eq!(r.bw_bytes_per_s, 197760383.0);
        assert_eq!(r.iops, 48281.34);
        assert_eq!(r.clat_p50_us, Some(321.536));
        assert_eq!(r.clat_p99_us, Some(1003.52));
    }

    #[test]
    fn a_side_with_no_data_is_an_error() {
        let err = parse(REPORT, true).unwrap_err();
        assert!(err.to_string().contains("no data"), "{err}");
    }

    #[test]
    fn job_errors_are_reported() {
        let r = r#"{"jobs":[{"error":5,"write":{"bw_bytes":1,"iops":1}}]}"#;
        assert!(parse(r, false).unwrap_err().to_string().contains("error 5"));
        assert!(parse("garbage", false).is_err());
    }
}
