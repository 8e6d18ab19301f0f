//! `wisp_vm::fsdiff` over real ext4 images made by e2fsprogs (`mke2fs -d`,
//! then `debugfs -w` edits, as a guest would make them in place), with the
//! block diff computed from the two image files.

use std::ops::Range;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use wisp_vm::fsdiff::{diff, Change, ChangeKind, ReadAt};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (package e2fsprogs): {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

fn reader(image: &Path) -> ReadAt {
    let bytes = Arc::new(std::fs::read(image).unwrap());
    Arc::new(move |offset, buf: &mut [u8]| {
        let start = offset as usize;
        let src = bytes
            .get(start..start + buf.len())
            .ok_or_else(|| format!("read past the end at {offset}"))?;
        buf.copy_from_slice(src);
        Ok(())
    })
}

/// Byte ranges (4 KiB granularity, merged) where the two images differ.
fn block_diff(a: &Path, b: &Path) -> Vec<Range<u64>> {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let mut out: Vec<Range<u64>> = Vec::new();
    for (i, (x, y)) in a.chunks(4096).zip(b.chunks(4096)).enumerate() {
        if x != y {
            let r = (i as u64 * 4096)..((i as u64 + 1) * 4096);
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
    }
    out
}

fn changes(list: &[Change]) -> Vec<(String, ChangeKind, String)> {
    list.iter()
        .map(|c| (c.path.clone(), c.kind, c.file_type.clone()))
        .collect()
}

#[test]
fn lists_exactly_what_changed_between_two_filesystems() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for d in ["etc", "root", "old/deep", "data"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::write(tree.join("etc/hostname"), "alpha\n").unwrap();
    std::fs::write(tree.join("root/same-size"), "aaaa\n").unwrap();
    std::fs::write(tree.join("root/mode"), "m\n").unwrap();
    std::fs::write(tree.join("root/gone"), "bye\n").unwrap();
    std::fs::write(tree.join("old/deep/x"), "x\n").unwrap();
    // A large file that stays, and one whose middle block changes in place.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(tree.join("data/big"), &big).unwrap();
    std::fs::write(tree.join("data/edited"), &big).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", tree.join("root/link")).unwrap();
    let a = dir.path().join("a.ext4");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
        .arg(&tree)
        .arg(&a)
        .arg("64M"));
    let b = dir.path().join("b.ext4");
    std::fs::copy(&a, &b).unwrap();
    // The new state, edited in place as a guest would: new files, a deleted
    // file and directory, same-size new contents, a mode, a symlink target, a
    // few bytes in the middle of a big file.
    let host = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let bbbb = host("bbbb", b"bbbb\n");
    let new = host("new", b"new file\n");
    let mut edited = big.clone();
    edited[1_500_000..1_500_010].copy_from_slice(b"0123456789");
    let edited_file = host("edited", &edited);
    let script = format!(
        "rm /root/gone\nrm /old/deep/x\nrmdir /old/deep\nrmdir /old\n\
         rm /root/same-size\nwrite {} /root/same-size\n\
         sif /root/mode mode 0100600\n\
         rm /root/link\nsymlink /root/link /etc/other\n\
         mkdir /srv\nmkdir /srv/app\nwrite {} /srv/app/new\n\
         rm /data/edited\nwrite {} /data/edited\n",
        bbbb.display(),
        new.display(),
        edited_file.display()
    );
    let script_path = host("script", script.as_bytes());
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(&b));
    let ranges = block_diff(&a, &b);
    let got = diff(reader(&a), reader(&b), &ranges).unwrap();
    use ChangeKind::*;
    let want: Vec<(String, ChangeKind, String)> = [
        ("/data/edited", Changed, "file"),
        ("/old", Deleted, "dir"),
        ("/old/deep", Deleted, "dir"),
        ("/old/deep/x", Deleted, "file"),
        ("/root/gone", Deleted, "file"),
        ("/root/link", Changed, "symlink"),
        ("/root/mode", Changed, "file"),
        ("/root/same-size", Changed, "file"),
        ("/srv", Added, "dir"),
        ("/srv/app", Added, "dir"),
        ("/srv/app/new", Added, "file"),
    ]
    .into_iter()
    .map(|(p, k, t)| (p.to_string(), k, t.to_string()))
    .collect();
    assert_eq!(changes(&got), want);
    // The other way round, the same paths with the opposite kinds.
    let back = diff(reader(&b), reader(&a), &ranges).unwrap();
    assert_eq!(back.len(), want.len());
    assert!(back
        .iter()
        .any(|c| c.path == "/srv/app/new" && c.kind == Deleted));
    // No block changed: nothing is read, nothing listed.
    assert!(diff(reader(&a), reader(&b), &[]).unwrap().is_empty());
    // Two separately built filesystems (every file elsewhere on disk) with the
    // same contents: the bytes are compared and nothing is listed.
    let c = dir.path().join("c.ext4");
    std::fs::write(tree.join("zzz-first"), "moves everything after it\n").unwrap();
    std::fs::remove_file(tree.join("zzz-first")).unwrap();
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(&tree)
        .arg(&c)
        .arg("64M"));
    let ranges = block_diff(&a, &c);
    assert!(!ranges.is_empty());
    assert_eq!(
        changes(&diff(reader(&a), reader(&c), &ranges).unwrap()),
        vec![]
    );
}

#[test]
fn a_disk_that_is_not_ext4_is_a_clear_error() {
    let zeros: ReadAt = Arc::new(|_, buf: &mut [u8]| {
        buf.fill(0);
        Ok(())
    });
    let changed: Vec<std::ops::Range<u64>> = std::iter::once(0..4096).collect();
    let err = diff(zeros.clone(), zeros, &changed)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot read the ext4 filesystem of the older state"),
        "{err}"
    );
}
