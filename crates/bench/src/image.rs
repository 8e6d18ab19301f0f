//! `wisp image import` of a 500 MiB root filesystem archive (a plain tar of a tree of
//! files of mixed sizes, symlinks and folders) against what a user would do by hand with
//! root-free tools: `mke2fs -d` of the same tree into a raw file, then `wisp volume
//! import` of that file. Target: at most 1.3 times as long. Both are whole processes,
//! timed alternately in the same run (median of five each).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::procs;
use crate::report::{Row, Target};
use crate::wisp::Wisp;
use crate::{human_size, median, Ctx, GIB, MIB};

const SECTION: &str = "image";
/// Target: import time over the reference's.
const LIMIT: f64 = 1.3;
const ROUNDS: usize = 5;

/// Writes a root-like tree of `total` bytes under `dir`: 16 top folders, files from
/// 1 KiB to 256 KiB (incompressible bytes, as binaries mostly are), a symlink per
/// folder. Returns the number of files.
fn make_tree(dir: &Path, total: u64) -> Result<usize> {
    let mut written = 0u64;
    let mut files = 0usize;
    let sizes = [1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10];
    while written < total {
        let folder = dir.join(format!("usr/lib/pkg{:02}", files % 16));
        std::fs::create_dir_all(&folder)?;
        let len = sizes[files % sizes.len()].min((total - written) as usize);
        let data = wisp_testkit::pattern(files as u64, len);
        std::fs::write(folder.join(format!("file{files:05}.so")), data)?;
        if files < 16 {
            std::os::unix::fs::symlink(
                format!("file{files:05}.so"),
                folder.join(format!("link{files:05}.so")),
            )?;
        }
        written += len as u64;
        files += 1;
    }
    for d in ["bin", "etc", "var/log", "tmp"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::write(dir.join("etc/os-release"), "ID=bench\n")?;
    Ok(files)
}

/// The reference: `mke2fs -d` with the options wisp uses, into a raw file twice the
/// tree's size (rounded up to a GiB), then `wisp volume import` of it.
fn reference(wisp: &Wisp, tree: &Path, image: &Path, name: &str, size: u64) -> Result<Duration> {
    let _ = std::fs::remove_file(image);
    let t = std::time::Instant::now();
    std::fs::File::create(image)?.set_len(size)?;
    procs::run(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "wisp-root", "-E"])
            .arg("root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0")
            .arg("-d")
            .arg(tree)
            .arg(image),
    )?;
    wisp.run(&["volume", "import", name, &image.display().to_string()])?;
    Ok(t.elapsed())
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    wisp_testkit::require_tool("mke2fs", "e2fsprogs");
    wisp_testkit::require_tool("tar", "tar");
    let total = if ctx.region < GIB {
        64 * MIB
    } else {
        500 * MIB
    };
    let dir = ctx.scratch("image")?;
    let tree = dir.join("tree");
    let files = make_tree(&tree, total)?;
    let archive = dir.join("rootfs.tar");
    procs::run(
        Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .arg("-cf")
            .arg(&archive)
            .arg("."),
    )?;
    let wisp = Wisp::new(&ctx.wisp, &dir.join("home"))?;
    let archive_arg = archive.display().to_string();
    // Untimed: fetches the guest kernel into this home and warms the page cache.
    wisp.run(&["image", "import", "warm", &archive_arg])?;
    wisp.run(&["image", "rm", "warm"])?;
    let raw = dir.join("ref.ext4");
    let raw_size = (total * 2).div_ceil(GIB) * GIB;
    let (mut ours, mut refs) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let name = format!("bench-{i}");
        ours.push(wisp.timed(&["image", "import", &name, &archive_arg])?);
        wisp.run(&["image", "rm", &name])?;
        refs.push(reference(
            &wisp,
            &tree,
            &raw,
            &format!("ref-{i}"),
            raw_size,
        )?);
        wisp.run(&["volume", "delete", &format!("ref-{i}")])?;
    }
    let range = |v: &[Duration]| {
        let secs = |d: Option<&Duration>| d.map_or(0.0, Duration::as_secs_f64);
        (secs(v.iter().min()), secs(v.iter().max()))
    };
    let (ours_range, refs_range) = (range(&ours), range(&refs));
    let (ours, refs) = (median(ours), median(refs));
    let archive_bytes = std::fs::metadata(&archive)?.len();
    Ok(vec![Row::ratio(
        SECTION,
        &format!(
            "wisp image import of a {} tar ({files} files) vs mke2fs -d + wisp volume import",
            human_size(archive_bytes)
        ),
        ours.as_secs_f64(),
        refs.as_secs_f64(),
        "s",
        Target::RatioAtMost(LIMIT),
    )
    .with_note(format!(
        "median of {ROUNDS}, import {:.2}-{:.2} s, reference {:.2}-{:.2} s; the reference's raw file is {} GiB",
        ours_range.0,
        ours_range.1,
        refs_range.0,
        refs_range.1,
        raw_size / GIB
    ))])
}
