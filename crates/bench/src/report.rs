//! The benchmark's results: rows with a value, the reference measured in the same run, the
//! ratio and the target; printed as a table and written as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// Which way a figure is good.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The ratio value/reference must be at least this.
    RatioAtLeast(f64),
    /// The ratio value/reference must be at most this.
    RatioAtMost(f64),
    /// The value itself must be at most this (in the row's unit).
    ValueAtMost(f64),
    /// Informational: no target.
    None,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub section: String,
    pub metric: String,
    pub value: f64,
    /// The same figure for the reference (nbdkit, raw GETs, bare QEMU), same run.
    pub reference: Option<f64>,
    pub unit: String,
    pub ratio: Option<f64>,
    pub target: Target,
    /// Whether the target is met (`None` without a target).
    pub pass: Option<bool>,
    pub note: Option<String>,
}

impl Row {
    /// A figure with no reference and no target.
    pub fn info(section: &str, metric: &str, value: f64, unit: &str) -> Row {
        Row {
            section: section.into(),
            metric: metric.into(),
            value,
            reference: None,
            unit: unit.into(),
            ratio: None,
            target: Target::None,
            pass: None,
            note: None,
        }
    }

    /// A figure compared with its reference.
    pub fn ratio(
        section: &str,
        metric: &str,
        value: f64,
        reference: f64,
        unit: &str,
        target: Target,
    ) -> Row {
        let ratio = (reference > 0.0).then(|| value / reference);
        let pass = match (target, ratio) {
            (Target::RatioAtLeast(t), Some(r)) => Some(r >= t),
            (Target::RatioAtMost(t), Some(r)) => Some(r <= t),
            (Target::ValueAtMost(t), _) => Some(value <= t),
            _ => None,
        };
        Row {
            reference: Some(reference),
            ratio,
            target,
            pass,
            ..Row::info(section, metric, value, unit)
        }
    }

    /// A figure with an absolute bound.
    pub fn bounded(section: &str, metric: &str, value: f64, unit: &str, at_most: f64) -> Row {
        Row {
            target: Target::ValueAtMost(at_most),
            pass: Some(value <= at_most),
            ..Row::info(section, metric, value, unit)
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }
}

/// Everything one run produced.
#[derive(Debug, Serialize)]
pub struct Report {
    pub started: String,
    pub finished: String,
    pub command: String,
    pub machine: Machine,
    /// What served the volumes: `wisp volume serve` or the in-process engine.
    pub served_by: String,
    pub rows: Vec<Row>,
    /// Sections that could not run, with the reason.
    pub errors: Vec<SectionError>,
}

#[derive(Debug, Serialize)]
pub struct SectionError {
    pub section: String,
    pub error: String,
}

/// Where the figures were measured.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub cpu_model: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (mem_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu_model,
        }
    }
}

impl Report {
    /// The table printed at the end of a run (also pasted into docs/PERFORMANCE.md).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| section | metric | wisp | reference | ratio | target | ok |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---|---|");
        for r in &self.rows {
            let target = match r.target {
                Target::RatioAtLeast(t) => format!("ratio >= {t}"),
                Target::RatioAtMost(t) => format!("ratio <= {t}"),
                Target::ValueAtMost(t) => format!("<= {} {}", fmt_num(t), r.unit),
                Target::None => String::new(),
            };
            let ok = match r.pass {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            let note = r
                .note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {}{} | {} {} | {} | {} | {} | {} |",
                r.section,
                r.metric,
                note,
                fmt_num(r.value),
                r.unit,
                r.reference
                    .map(|v| format!("{} {}", fmt_num(v), r.unit))
                    .unwrap_or_default(),
                r.ratio.map(|v| format!("{v:.2}")).unwrap_or_default(),
                target,
                ok
            );
        }
        for e in &self.errors {
            let first = e.error.lines().next().unwrap_or_default();
            let _ = writeln!(out, "| {} | NOT MEASURED: {} | | | | | |", e.section, first);
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create `{}`", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("write `{}`", path.display()))
    }
}

/// Three significant digits, no exponent: 1234, 123, 12.3, 1.23, 0.123.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_rows_judge_their_target() {
        let r = Row::ratio("fio", "x", 80.0, 100.0, "MB/s", Target::RatioAtLeast(0.8));
        assert_eq!(r.ratio, Some(0.8));
        assert_eq!(r.pass, Some(true));
        let r = Row::ratio("vm", "x", 1.4, 1.0, "s", Target::RatioAtMost(1.3));
        assert_eq!(r.pass, Some(false));
        let r = Row::ratio("fio", "x", 1.0, 0.0, "MB/s", Target::RatioAtLeast(0.8));
        assert_eq!((r.ratio, r.pass), (None, None));
        assert_eq!(Row::bounded("c", "x", 51.0, "ms", 50.0).pass, Some(false));
    }

    #[test]
    fn table_lists_rows_and_errors() {
        let report = Report {
            started: "s".into(),
            finished: "f".into(),
            command: "c".into(),
            machine: Machine::detect(),
            served_by: "x".into(),
            rows: vec![Row::bounded("checkpoint", "1 GiB", 3.21, "ms", 50.0)],
            errors: vec![SectionError {
                section: "vm".into(),
                error: "no `wisp vm`\ndetails".into(),
            }],
        };
        let t = report.table();
        assert!(
            t.contains("| checkpoint | 1 GiB | 3.21 ms |  |  | <= 50.0 ms | yes |"),
            "{t}"
        );
        assert!(t.contains("| vm | NOT MEASURED: no `wisp vm` |"), "{t}");
    }

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(fmt_num(1234.5), "1234");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(0.01234), "0.012");
    }
}
