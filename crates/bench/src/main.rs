//! `wisp-bench`: runs the benchmark sections, prints the table and writes the JSON report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::Parser;
use wisp_bench::report::{Machine, Report, SectionError};
use wisp_bench::{
    api, checkpoint, cold_read, history, image, metadata, sdk, sleep, throughput, vm, wakes, wisp,
    Ctx, GIB, MIB,
};

/// Measures wisp against references in one run and reports ratios and targets.
#[derive(Debug, Parser)]
#[command(name = "wisp-bench")]
struct Args {
    /// Small sizes and short jobs (256 MiB region, 3 s jobs, 2 GiB large volume): a
    /// minute-scale smoke run, not figures to publish.
    #[arg(long)]
    quick: bool,
    /// Also run the VM sections (`wisp vm run`, the SDK, warm sleep).
    #[arg(long)]
    vm: bool,
    /// Run only these sections (comma-separated): fio, checkpoint, cold, metadata, image, api, vm,
    /// sdk, sleep, history, wakes (`wakes` runs only when named: 200 wakes, about 20 minutes).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The `wisp` binary to measure. Default: the one next to this binary.
    #[arg(long)]
    wisp: Option<PathBuf>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Scratch folder (volumes, sparse files, sockets); emptied per section.
    #[arg(long, default_value = "target/bench/work")]
    work: PathBuf,
    /// Seconds per timed fio job.
    #[arg(long)]
    runtime: Option<u64>,
    /// GiB written before the second checkpoint/fork measurement.
    #[arg(long)]
    big_gib: Option<u64>,
    /// Keep the scratch folder after the run.
    #[arg(long)]
    keep_work: bool,
}

const SECTIONS: [&str; 11] = [
    "fio",
    "checkpoint",
    "cold",
    "metadata",
    "image",
    "api",
    "vm",
    "sdk",
    "sleep",
    "history",
    "wakes",
];

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wisp-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    for s in &args.only {
        if !SECTIONS.contains(&s.as_str()) {
            anyhow::bail!(
                "unknown section `{s}`; sections are {}",
                SECTIONS.join(", ")
            );
        }
    }
    let wanted = |s: &str| {
        if args.only.is_empty() {
            (!matches!(s, "vm" | "sdk" | "sleep") || args.vm) && s != "wakes"
        } else {
            args.only.iter().any(|o| o == s)
        }
    };
    let ctx = Ctx {
        work: std::path::absolute(&args.work)?,
        reports: std::path::absolute(args.out.with_file_name("fio"))?,
        wisp: match &args.wisp {
            Some(p) => std::path::absolute(p)?,
            None => wisp::default_binary()?,
        },
        fio: wisp_testkit::require_tool("fio", "fio"),
        nbdkit: wisp_testkit::require_tool("nbdkit", "nbdkit"),
        region: if args.quick { 256 * MIB } else { GIB },
        runtime: Duration::from_secs(args.runtime.unwrap_or(if args.quick { 3 } else { 10 })),
        big: args.big_gib.unwrap_or(if args.quick { 2 } else { 16 }) * GIB,
        meta_written: if args.quick { 256 * MIB } else { GIB },
        vm: args.vm,
    };
    std::fs::create_dir_all(&ctx.reports)?;
    std::fs::create_dir_all(&ctx.work)?;

    let started = SystemTime::now();
    let mut report = Report {
        started: humantime::format_rfc3339_seconds(started).to_string(),
        finished: String::new(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::detect(),
        served_by: wisp::Wisp::new(&ctx.wisp, &ctx.work.join("probe"))?
            .mode()
            .to_string(),
        rows: Vec::new(),
        errors: Vec::new(),
    };
    type Section = fn(&Ctx) -> Result<Vec<wisp_bench::report::Row>>;
    let sections: [(&str, Section); 11] = [
        ("fio", throughput::run),
        ("checkpoint", checkpoint::run),
        ("cold", cold_read::run),
        ("metadata", metadata::run),
        ("image", image::run),
        ("api", api::run),
        ("vm", vm::run),
        ("sdk", sdk::run),
        ("sleep", sleep::run),
        ("history", history::run),
        ("wakes", wakes::run),
    ];
    for (name, section) in sections {
        if !wanted(name) {
            continue;
        }
        eprintln!("wisp-bench: running section `{name}`");
        let t = std::time::Instant::now();
        match section(&ctx) {
            Ok(rows) => report.rows.extend(rows),
            Err(e) => {
                eprintln!("wisp-bench: section `{name}` failed: {e:#}");
                report.errors.push(SectionError {
                    section: name.to_string(),
                    error: format!("{e:#}"),
                });
            }
        }
        eprintln!(
            "wisp-bench: section `{name}` took {:.0} s",
            t.elapsed().as_secs_f64()
        );
        // The checkpoint section alone leaves tens of GiB of cache and store
        // behind: free them before the next section needs the disk.
        if !args.keep_work {
            let _ = std::fs::remove_dir_all(&ctx.work);
        }
    }
    report.finished = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();

    println!("volumes served by {}", report.served_by);
    print!("{}", report.table());
    report.write_json(&args.out)?;
    eprintln!("wisp-bench: wrote {}", args.out.display());
    if !args.keep_work {
        let _ = std::fs::remove_dir_all(&ctx.work);
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
