//! The `sdk` section (`--vm`): the Sprites API as its users call it, against the
//! same work done another way in the same run, on one awake tiny sprite (TCG):
//! - exec of `true` from the public JS SDK's `execFile` call to its exit (median of
//!   [`EXECS`]; `tests/sdk-js/bench-exec.mjs`, Node.js): < 20 ms;
//! - 64 MiB written and read through the filesystem API against the same bytes through
//!   an exec of `cat` (stdin in, stdout out): throughput ratio >= 0.8 each way;
//! - [`SESSIONS`] concurrent exec sessions on the sprite: all exit 0, and the daemon's
//!   resident memory grows by < 50 MiB.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wisp_control::client::{ExecOptions, ExecOutput};

use crate::report::{Row, Target};
use crate::wisp::Wisp;
use crate::{engine, Ctx};

const SECTION: &str = "sdk";
/// Execs the JS SDK times.
const EXECS: usize = 50;
/// Bytes through the filesystem API and through exec.
const FILE_BYTES: usize = 64 << 20;
/// Concurrent sessions on one sprite.
const SESSIONS: usize = 100;

fn sdk_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk-js")
}

/// `execFile('true')` through the JS SDK, `EXECS` times: the median in ms.
fn js_exec_median(url: &str, token: &str, name: &str) -> Result<f64> {
    let dir = sdk_dir();
    let install = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .context("run npm (the sdk section needs Node.js and npm)")?;
    anyhow::ensure!(
        install.status.success(),
        "npm ci: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let flagged = Command::new("node")
        .args(["--experimental-websocket", "-e", "0"])
        .status()
        .is_ok_and(|s| s.success());
    let mut node = Command::new("node");
    if flagged {
        node.arg("--experimental-websocket");
    }
    let out = node
        .arg("bench-exec.mjs")
        .current_dir(&dir)
        .env("WISP_URL", url)
        .env("WISP_TOKEN", token)
        .env("WISP_SPRITE", name)
        .env("WISP_EXECS", EXECS.to_string())
        .output()
        .context("run node")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "bench-exec.mjs failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(text.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("bench-exec.mjs printed `{text}`"))?;
    line["median_ms"]
        .as_f64()
        .context("no median_ms in bench-exec.mjs's answer")
}

/// Runs `argv` with `stdin` and collects stdout; the time until the exit.
async fn exec_bytes(
    client: &wisp_control::client::Client,
    name: &str,
    argv: &[&str],
    stdin: Option<&[u8]>,
) -> Result<(Vec<u8>, Duration)> {
    let t = Instant::now();
    let options = ExecOptions {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        stdin: stdin.is_some(),
        ..Default::default()
    };
    let (mut sender, mut receiver) = client.exec(name, &options).await?;
    let feed = async {
        if let Some(data) = stdin {
            for chunk in data.chunks(1 << 20) {
                sender.stdin(chunk).await?;
            }
            sender.close_stdin().await?;
        }
        anyhow::Ok(sender)
    };
    let collect = async {
        let mut out = Vec::new();
        loop {
            match receiver.recv().await? {
                Some(ExecOutput::Stdout(d)) => out.extend_from_slice(&d),
                Some(ExecOutput::Stderr(_)) => {}
                Some(ExecOutput::Exit(0)) => return anyhow::Ok(out),
                Some(ExecOutput::Exit(code)) => bail!("{argv:?} exited with {code}"),
                None => bail!("{argv:?} ended without an exit code"),
            }
        }
    };
    let (_, out) = tokio::try_join!(feed, collect)?;
    Ok((out, t.elapsed()))
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.scratch(SECTION)?;
    let wisp = Wisp::new(&ctx.wisp, &dir.join("home"))?;
    wisp.run(&["image", "build", "tiny"])?;
    let (server, client) = wisp.server(&dir, &[])?;
    let pid = server.pid().context("wisp server is not running")?;
    let token = std::fs::read_to_string(wisp.home.join("token"))?
        .trim()
        .to_string();
    let name = "sdk";
    let rows = engine::runtime().block_on(async {
        client
            .create(name, wisp_control::registry::UrlAuth::Sprite)
            .await?;
        // Wake it; the first exec is not a sample.
        crate::vm::api_exec(&client, name).await?;
        // Held awake for the whole section.
        let hold = ExecOptions {
            argv: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        };
        let holding = client.exec(name, &hold).await?;

        let js_ms = tokio::task::block_in_place(|| js_exec_median(client.base(), &token, name))?;

        // 64 MiB each way: the filesystem API, then exec `cat`.
        let data: Vec<u8> = (0..FILE_BYTES as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let t = Instant::now();
        client
            .write_file(name, "/root/bench.bin", reqwest::Body::from(data.clone()))
            .await?;
        let fs_write = t.elapsed();
        let t = Instant::now();
        let read = client
            .read_file(name, "/root/bench.bin")
            .await?
            .bytes()
            .await?;
        let fs_read = t.elapsed();
        anyhow::ensure!(read.as_ref() == data.as_slice(), "fs read gave other bytes");
        let (_, exec_write) =
            exec_bytes(&client, name, &["sh", "-c", "cat > /root/bench2.bin"], Some(&data)).await?;
        let (back, exec_read) = exec_bytes(&client, name, &["cat", "/root/bench2.bin"], None).await?;
        anyhow::ensure!(back == data, "exec cat gave other bytes");

        // Concurrent sessions: the daemon's memory before and at the peak.
        let rss = move || crate::vm::status_bytes(pid, "VmRSS").unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let runs = (0..SESSIONS).map(|i| {
            let client = &client;
            async move {
                let script = format!("sleep 3; echo {i}");
                let (out, _) = exec_bytes(client, name, &["sh", "-c", &script], None).await?;
                anyhow::ensure!(out == format!("{i}\n").into_bytes(), "session {i}: {out:?}");
                anyhow::Ok(())
            }
        });
        let results = futures::future::join_all(runs).await;
        sampler.abort();
        let failed = results.iter().filter(|r| r.is_err()).count();
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            bail!("{failed} of {SESSIONS} concurrent sessions failed; first: {e:#}");
        }
        let growth = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(before);
        drop(holding);

        let mbps = |d: Duration| FILE_BYTES as f64 / (1 << 20) as f64 / d.as_secs_f64();
        anyhow::Ok(vec![
            Row::bounded(SECTION, "exec of `true` from the JS SDK's execFile to its exit", js_ms, "ms", 20.0)
                .with_note(format!("median of {EXECS} on an awake sprite, @fly/sprites 0.1.0 under Node.js")),
            Row::ratio(
                SECTION,
                "64 MiB written through the filesystem API vs exec `cat >`",
                mbps(fs_write),
                mbps(exec_write),
                "MiB/s",
                Target::RatioAtLeast(0.8),
            ),
            Row::ratio(
                SECTION,
                "64 MiB read through the filesystem API vs exec `cat`",
                mbps(fs_read),
                mbps(exec_read),
                "MiB/s",
                Target::RatioAtLeast(0.8),
            ),
            Row::bounded(
                SECTION,
                "daemon memory growth with 100 concurrent sessions",
                growth as f64 / (1 << 20) as f64,
                "MiB",
                50.0,
            )
            .with_note(format!("{SESSIONS} execs of `sleep 3; echo i` at once on one sprite, all exited 0 with their output; peak RSS minus RSS before")),
        ])
    });
    server.terminate(Duration::from_secs(60))?;
    rows
}
