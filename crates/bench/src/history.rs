//! The `history` section: issue 11's diff and fork-boot targets, each against a
//! reference measured in the same run.
//!
//! - Diff of two checkpoints 1 GiB apart on a 16 GiB disk (`ctx.big`): an ext4
//!   filesystem with the tiny image's files (mke2fs -d) as `v0`, then a 1 GiB file
//!   added in place by `debugfs -w` (only the blocks that changed written to the
//!   volume) as `v1`; the diff is what `GET .../checkpoints/v0/diff?to=v1` runs
//!   (block diff from the bucket's metadata, both filesystems read with
//!   `ext4-view`). Target: under 2 s. Reference: reading the 1 GiB that changed
//!   from the checkpoint (what any look at the changed bytes costs).
//! - With `--vm`: the first exec in a fork of a source whose data this host has
//!   cached vs the first exec in that source after a cold sleep (both boot, each
//!   alone on the host; the fork's disk is new to the host). Target: at most 1.1.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use wisp_control::registry::UrlAuth;
use wisp_nbd::BlockDevice;
use wisp_vm::fsdiff;

use crate::report::{Row, Target};
use crate::vm::api_exec;
use crate::wisp::Wisp;
use crate::{engine, median, ms, Ctx, GIB, MIB};

const SECTION: &str = "history";
const SAMPLES: usize = 3;

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.scratch(SECTION)?;
    let mut rows = vec![diff_row(ctx, &dir)?];
    let _ = std::fs::remove_dir_all(&dir);
    if ctx.vm {
        let dir = ctx.scratch(SECTION)?;
        rows.push(fork_exec_row(&ctx.wisp, &dir)?);
    }
    Ok(rows)
}

fn run_tool(cmd: &mut Command, package: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?} (Debian package {package})"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Writes `bytes` of incompressible data to the file `path`.
fn random_file(path: &Path, bytes: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..bytes / MIB {
        f.write_all(&engine::pseudo_random(
            MIB as usize,
            0x2545_f491_4f6c_dd1d ^ (i + 1),
        ))?;
    }
    f.flush()?;
    Ok(())
}

/// Writes to `dev` the 256 KiB pieces of image `b` that differ from image `a`.
async fn write_changes(a: &Path, b: &Path, dev: &dyn BlockDevice) -> Result<u64> {
    const PIECE: usize = 256 << 10;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut pa, mut pb) = (vec![0u8; PIECE], vec![0u8; PIECE]);
    let (mut offset, mut written) = (0u64, 0u64);
    loop {
        let nb = read_full(&mut fb, &mut pb)?;
        let na = read_full(&mut fa, &mut pa)?;
        if nb == 0 {
            return Ok(written);
        }
        if na != nb || pa[..na] != pb[..nb] {
            dev.write(offset, Bytes::copy_from_slice(&pb[..nb]), false)
                .await?;
            written += nb as u64;
        }
        offset += nb as u64;
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = f.read(&mut buf[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

fn diff_row(ctx: &Ctx, dir: &Path) -> Result<Row> {
    let added = if ctx.big < 16 * GIB { 256 * MIB } else { GIB };
    let tree = dir.join("tree");
    wisp_vm::rootfs::populate_tiny(&tree)?;
    let a = dir.join("a.ext4");
    wisp_vm::rootfs::make_ext4(&tree, &a, ctx.big, "wisp-root")?;
    let b = dir.join("b.ext4");
    run_tool(
        Command::new("cp").arg("--sparse=always").arg(&a).arg(&b),
        "coreutils",
    )?;
    let new = dir.join("new.bin");
    random_file(&new, added)?;
    run_tool(
        Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} /root/new.bin", new.display()))
            .arg(&b),
        "e2fsprogs",
    )?;
    std::fs::remove_file(&new)?;
    let url = format!("file://{}", dir.join("store").display());
    std::fs::create_dir_all(dir.join("store"))?;
    let (took, reference, changes) = engine::runtime().block_on(async {
        let store = engine::open_store(&url, &dir.join("cache"), &[]).await?;
        store.create_volume("disk", ctx.big).await?;
        let volume = store.open_volume("disk").await?;
        wisp_vm::rootfs::import_image(&a, &volume, &|_| {}).await?;
        volume.checkpoint(None).await?;
        write_changes(&a, &b, &volume).await?;
        volume.checkpoint(None).await?;
        volume.close().await?;
        let mut samples = Vec::new();
        let mut changes = Vec::new();
        for _ in 0..SAMPLES {
            let t = Instant::now();
            let older = store.checkpoint_reader("disk", "v0").await?;
            let newer = store.checkpoint_reader("disk", "v1").await?;
            let ranges = newer.changed_since(&older);
            let (older, newer) = (
                fsdiff::checkpoint_source(older),
                fsdiff::checkpoint_source(newer),
            );
            changes = fsdiff::diff_blocking(older, newer, ranges).await?;
            samples.push(t.elapsed());
        }
        // Reference: the changed bytes read back from the newer checkpoint.
        let t = Instant::now();
        let reader = store.checkpoint_reader("disk", "v1").await?;
        let ranges = reader.changed_since(&store.checkpoint_reader("disk", "v0").await?);
        let mut buf = vec![0u8; MIB as usize];
        for r in ranges {
            let mut at = r.start;
            while at < r.end {
                let n = (r.end - at).min(MIB) as usize;
                reader.read_at(at, &mut buf[..n]).await?;
                at += n as u64;
            }
        }
        anyhow::Ok((median(samples), t.elapsed(), changes))
    })?;
    let listed: Vec<String> = changes
        .iter()
        .map(|c| format!("{:?} {}", c.kind, c.path))
        .collect();
    if listed != ["Added /root/new.bin"] {
        bail!("the diff listed {listed:?}, not the one added file");
    }
    Ok(Row::ratio(
        SECTION,
        &format!(
            "diff of two checkpoints {} apart on a {} GiB disk",
            crate::human_size(added),
            ctx.big / GIB
        ),
        ms(took),
        ms(reference),
        "ms",
        Target::ValueAtMost(2000.0),
    )
    .with_note(format!(
        "median of {SAMPLES}, file:// store; reference: reading the changed bytes from the checkpoint"
    )))
}

fn fork_exec_row(bin: &Path, dir: &Path) -> Result<Row> {
    let wisp = Wisp::new(bin, &dir.join("home"))?;
    wisp.run(&["image", "build", "tiny"])?;
    let never = ["--idle-timeout", "0", "--cold-after", "0"];
    let (server, client) = wisp.server(dir, &never)?;
    let (cold, forked) = engine::runtime().block_on(async {
        client.create("src", UrlAuth::Sprite).await?;
        api_exec(&client, "src").await?;
        client.checkpoint("src", None).await?;
        let (mut cold, mut forked) = (Vec::new(), Vec::new());
        for i in 0..SAMPLES {
            client.sleep("src", true).await?;
            cold.push(api_exec(&client, "src").await?);
            // Each boot alone on the host: the source sleeps (its cache stays).
            client.sleep("src", true).await?;
            let fork = format!("fork{i}");
            client
                .fork(&fork, "src", Some("v0"), UrlAuth::Sprite)
                .await?;
            forked.push(api_exec(&client, &fork).await?);
            client.delete(&fork).await?;
        }
        anyhow::Ok((median(cold), median(forked)))
    })?;
    server.terminate(Duration::from_secs(60))?;
    Ok(Row::ratio(
        SECTION,
        "first exec in a fork of a cached source vs in the source after a cold sleep",
        ms(forked),
        ms(cold),
        "ms",
        Target::RatioAtMost(1.1),
    )
    .with_note(format!("median of {SAMPLES}, TCG or KVM as probed")))
}
