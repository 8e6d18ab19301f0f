//! The files added, changed and deleted between two states of a sprite's root
//! filesystem, read on the host (no VM booted) with `ext4-view`, which also
//! replays the ext4 journal in memory, so a disk saved without an unmount (a
//! live checkpoint, a sprite that slept) reads as the guest saw it.
//!
//! Cost: nothing at all when the volume's block diff is empty; otherwise one
//! walk of both directory trees (metadata: time grows with the number of
//! files, never with the disk's size) and a byte comparison of the regular
//! files present in both with the same type, mode, owner and size (stopping at
//! the first difference). Files added or deleted are never read.
//! `ext4-view` exposes neither inode numbers nor timestamps nor block maps, so
//! an unchanged file cannot be told from a same-size rewrite without reading
//! it; `docs/API.md` gives the measured times.

use std::ops::Range;
use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error, Ext4Read, File, FileType, Metadata, PathBuf};
use serde::{Deserialize, Serialize};

/// Reads `buf.len()` bytes at a byte offset of a disk (a checkpoint or the
/// current state); the error is a message naming what failed.
pub type ReadAt = Arc<dyn Fn(u64, &mut [u8]) -> Result<(), String> + Send + Sync>;

/// What happened to a path between the two states (Docker's `diff` kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

/// One changed path. `path` is absolute in the guest (`/root/f`); names that
/// are not UTF-8 are shown with replacement characters. `file_type` is `file`,
/// `dir`, `symlink` or `special` (devices, fifos, sockets), as of the newer
/// state (the older for a deletion).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
    #[serde(rename = "type")]
    pub file_type: String,
}

/// Errors of [`diff`].
#[derive(Debug, thiserror::Error)]
pub enum FsDiffError {
    #[error("cannot read the ext4 filesystem of {side}: {source}")]
    Ext4 {
        side: &'static str,
        #[source]
        source: Ext4Error,
    },
    #[error("cannot read the disk of {side}: {message}")]
    Read { side: &'static str, message: String },
}

/// The changes from state `a` to state `b`, sorted by path. `changed` is the
/// volume's block diff between them (byte ranges, sorted, merged): bytes
/// outside it are equal in both.
pub fn diff(a: ReadAt, b: ReadAt, changed: &[Range<u64>]) -> Result<Vec<Change>, FsDiffError> {
    let mut out = Vec::new();
    if changed.is_empty() {
        return Ok(out);
    }
    let a = Side::load("the older state", a)?;
    let b = Side::load("the newer state", b)?;
    let root = PathBuf::new("/");
    compare_dirs(&a, &b, &root, &mut out)?;
    out.sort_by(|x, y| x.path.cmp(&y.path));
    Ok(out)
}

/// [`diff`] on a blocking thread (the readers may block on the runtime).
pub async fn diff_blocking(
    a: ReadAt,
    b: ReadAt,
    changed: Vec<Range<u64>>,
) -> Result<Vec<Change>, FsDiffError> {
    tokio::task::spawn_blocking(move || diff(a, b, &changed))
        .await
        .map_err(|e| FsDiffError::Read {
            side: "both states",
            message: format!("the diff task failed: {e}"),
        })?
}

/// A [`ReadAt`] over a checkpoint, for [`diff_blocking`] (it blocks on the
/// current tokio runtime).
pub fn checkpoint_source(reader: wisp_volume::CheckpointReader) -> ReadAt {
    let handle = tokio::runtime::Handle::current();
    let reader = Arc::new(reader);
    Arc::new(move |offset, buf: &mut [u8]| {
        handle
            .block_on(reader.read_at(offset, buf))
            .map_err(|e| e.to_string())
    })
}

/// A [`ReadAt`] over an open volume's current state, for [`diff_blocking`].
pub fn volume_source(volume: wisp_volume::Volume) -> ReadAt {
    use wisp_nbd::BlockDevice;
    let handle = tokio::runtime::Handle::current();
    Arc::new(move |offset, buf: &mut [u8]| {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(1 << 20);
            let data = handle
                .block_on(volume.read(offset + done as u64, n as u32))
                .map_err(|e| e.to_string())?;
            buf[done..done + n].copy_from_slice(&data);
            done += n;
        }
        Ok(())
    })
}

/// One state's filesystem.
struct Side {
    name: &'static str,
    fs: Ext4,
}

struct Reader(ReadAt);

impl Ext4Read for Reader {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        (self.0)(start, dst).map_err(|m| m.into())
    }
}

impl Side {
    fn load(name: &'static str, read: ReadAt) -> Result<Side, FsDiffError> {
        let fs = Ext4::load(Box::new(Reader(read)))
            .map_err(|source| FsDiffError::Ext4 { side: name, source })?;
        Ok(Side { name, fs })
    }

    fn err(&self) -> impl Fn(Ext4Error) -> FsDiffError + '_ {
        move |source| FsDiffError::Ext4 {
            side: self.name,
            source,
        }
    }

    /// `(name, file type)` of every entry of directory `dir`, sorted by name.
    fn entries(&self, dir: &PathBuf) -> Result<Vec<(Vec<u8>, FileType)>, FsDiffError> {
        let mut out = Vec::new();
        for entry in self.fs.read_dir(dir).map_err(self.err())? {
            let entry = entry.map_err(self.err())?;
            let name = entry.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            out.push((name, entry.file_type().map_err(self.err())?));
        }
        out.sort();
        Ok(out)
    }

    fn metadata(&self, path: &PathBuf) -> Result<Metadata, FsDiffError> {
        self.fs.symlink_metadata(path).map_err(self.err())
    }
}

fn kind_name(t: FileType) -> &'static str {
    if t.is_dir() {
        "dir"
    } else if t.is_regular_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "special"
    }
}

fn path_text(p: &PathBuf) -> String {
    String::from_utf8_lossy(p.as_ref()).into_owned()
}

fn push(out: &mut Vec<Change>, path: &PathBuf, kind: ChangeKind, t: FileType) {
    out.push(Change {
        path: path_text(path),
        kind,
        file_type: kind_name(t).to_string(),
    });
}

/// Every path under directory `dir` of `side`, as `kind`.
fn all_under(
    side: &Side,
    dir: &PathBuf,
    kind: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<(), FsDiffError> {
    for (name, t) in side.entries(dir)? {
        let path = dir.join(&name);
        push(out, &path, kind, t);
        if t.is_dir() {
            all_under(side, &path, kind, out)?;
        }
    }
    Ok(())
}

fn compare_dirs(
    a: &Side,
    b: &Side,
    dir: &PathBuf,
    out: &mut Vec<Change>,
) -> Result<(), FsDiffError> {
    let left = a.entries(dir)?;
    let right = b.entries(dir)?;
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        let order = match (left.get(i), right.get(j)) {
            (Some(l), Some(r)) => l.0.cmp(&r.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let (name, t) = &left[i];
                let path = dir.join(name);
                push(out, &path, ChangeKind::Deleted, *t);
                if t.is_dir() {
                    all_under(a, &path, ChangeKind::Deleted, out)?;
                }
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let (name, t) = &right[j];
                let path = dir.join(name);
                push(out, &path, ChangeKind::Added, *t);
                if t.is_dir() {
                    all_under(b, &path, ChangeKind::Added, out)?;
                }
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (name, ta) = &left[i];
                let tb = right[j].1;
                let path = dir.join(name);
                if kind_name(*ta) != kind_name(tb) {
                    // Replaced by another kind of file: the old one and
                    // everything under it went, the new one came.
                    push(out, &path, ChangeKind::Changed, tb);
                    if ta.is_dir() {
                        all_under(a, &path, ChangeKind::Deleted, out)?;
                    }
                    if tb.is_dir() {
                        all_under(b, &path, ChangeKind::Added, out)?;
                    }
                } else if same_entry(a, b, &path, tb)? {
                    if tb.is_dir() {
                        compare_dirs(a, b, &path, out)?;
                    }
                } else {
                    push(out, &path, ChangeKind::Changed, tb);
                    if tb.is_dir() {
                        compare_dirs(a, b, &path, out)?;
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// Whether `path`, of the same kind in both, is unchanged: type, mode and
/// owner (and for anything but a directory its size), a symlink's target, a
/// regular file's bytes.
fn same_entry(a: &Side, b: &Side, path: &PathBuf, t: FileType) -> Result<bool, FsDiffError> {
    let (ma, mb) = (a.metadata(path)?, b.metadata(path)?);
    let owner = |m: &Metadata| (m.file_type(), m.mode(), m.uid(), m.gid());
    if owner(&ma) != owner(&mb) {
        return Ok(false);
    }
    if t.is_dir() {
        // A directory's size follows its entries, compared one by one.
        return Ok(true);
    }
    if ma.len() != mb.len() {
        return Ok(false);
    }
    if t.is_symlink() {
        let target = |s: &Side| s.fs.read_link(path).map_err(s.err());
        return Ok(target(a)?.as_ref() == target(b)?.as_ref());
    }
    if !t.is_regular_file() {
        return Ok(true);
    }
    same_content(a, b, path)
}

fn same_content(a: &Side, b: &Side, path: &PathBuf) -> Result<bool, FsDiffError> {
    let (mut fa, mut fb) = (
        a.fs.open(path).map_err(a.err())?,
        b.fs.open(path).map_err(b.err())?,
    );
    let (mut da, mut db) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = fill(a, &mut fa, &mut da)?;
        let nb = fill(b, &mut fb, &mut db)?;
        if na != nb || da[..na] != db[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// Reads up to `buf.len()` bytes of `file` (fewer only at its end).
fn fill(side: &Side, file: &mut File, buf: &mut [u8]) -> Result<usize, FsDiffError> {
    let mut n = 0;
    while n < buf.len() {
        let got = file.read_bytes(&mut buf[n..]).map_err(side.err())?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}
