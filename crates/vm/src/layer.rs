//! Applies root filesystem layers (tar streams) in order to a folder tree without root
//! privileges, the way a container runtime stacks image layers: whiteouts (`.wh.NAME`
//! deletes `NAME` of lower layers, `.wh..wh..opq` hides every lower child of its folder),
//! hard links, symlinks resolved inside the tree (a link to `/usr/lib` never reaches the
//! host's), and, for each path, what an unprivileged extraction cannot set: owner, group,
//! exact mode bits, device nodes and extended attributes. [`Tree::fixups`] lists those
//! for `debugfs` to apply to the ext4 filesystem made from the tree.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Errors while applying a layer. `layer` names the layer as the caller described it.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The tar stream is damaged or cut short.
    #[error("{layer}: {what}")]
    Corrupt { layer: String, what: String },
    /// The tree on the host could not be written.
    #[error("cannot write `{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What a path in the tree should be once in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid, setgid and sticky (`0o7777` mask).
    pub mode: u32,
    pub kind: Kind,
    /// Extended attributes `(name, value)`, from PAX `SCHILY.xattr.*` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Seconds since the Unix epoch.
    pub mtime: u64,
}

/// The kinds of paths a layer holds. Device nodes exist only in [`Meta`] until
/// `debugfs` makes them (an unprivileged `mknod` fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
}

impl Kind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => 0o100000,
            Kind::Dir => 0o040000,
            Kind::Symlink => 0o120000,
            Kind::Fifo => 0o010000,
            Kind::Char(..) => 0o020000,
            Kind::Block(..) => 0o060000,
        }
    }
}

/// A change `debugfs` makes to the filesystem built from the tree. Paths are absolute
/// inside the image (`/etc/shadow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fixup {
    /// Create a device node `name` in folder `dir`.
    Mknod {
        dir: String,
        name: String,
        kind: Kind,
    },
    Uid(String, u32),
    Gid(String, u32),
    /// Full `i_mode`: type bits and permission bits.
    Mode(String, u32),
    Xattr(String, String, Vec<u8>),
}

/// A folder tree being built from layers, with what each path should be.
pub struct Tree {
    root: PathBuf,
    meta: BTreeMap<PathBuf, Meta>,
    /// Paths written by the layer being applied (an opaque folder keeps them).
    this_layer: HashSet<PathBuf>,
}

/// Paths the agent uses on a root disk, made when a layer did not bring them:
/// `(path, mode)`, owned by root.
pub const SPRITE_DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("etc", 0o755),
    ("etc/wisp", 0o755),
    ("etc/wisp/services", 0o755),
    ("var", 0o755),
    ("var/log", 0o755),
    ("var/log/wisp", 0o755),
    ("usr", 0o755),
    ("usr/local", 0o755),
    ("usr/local/bin", 0o755),
    (".sprite", 0o755),
    (".sprite/bin", 0o755),
];

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `path` made relative with `.` and leading `/` dropped; `None` when it climbs with `..`.
pub fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

impl Tree {
    /// A tree at `root`, which must be an empty folder.
    pub fn new(root: &Path) -> Result<Tree, LayerError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        let mut meta = BTreeMap::new();
        meta.insert(PathBuf::new(), dir_meta(0o755));
        Ok(Tree {
            root: root.to_path_buf(),
            meta,
            this_layer: HashSet::new(),
        })
    }

    /// The folder on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What path `rel` (relative to the tree) should be, if it exists.
    pub fn meta(&self, rel: &Path) -> Option<&Meta> {
        self.meta.get(rel)
    }

    /// Applies one layer, a tar stream, on top of what is there. `layer` names it in
    /// errors (`layer 2 of 3 (blobs/sha256/ab12...)`).
    pub fn apply(&mut self, reader: impl Read, layer: &str) -> Result<(), LayerError> {
        let corrupt = |what: String| LayerError::Corrupt {
            layer: layer.to_string(),
            what,
        };
        self.this_layer.clear();
        let mut eof = EofWatch {
            inner: reader,
            hit_eof: false,
        };
        let mut entries = 0usize;
        let mut archive = tar::Archive::new(&mut eof);
        for entry in archive
            .entries()
            .map_err(|e| corrupt(format!("not a tar stream: {e}")))?
        {
            let entry = entry.map_err(|e| corrupt(format!("bad entry header: {e}")))?;
            let name = entry.path_bytes().into_owned();
            self.entry(entry)
                .map_err(|e| annotate(e, layer, &String::from_utf8_lossy(&name)))?;
            entries += 1;
        }
        // A tar ends with zero blocks; a stream that simply stops was cut short
        // (the tar crate takes a clean end of input as the end of the archive).
        if eof.hit_eof {
            return Err(corrupt(if entries == 0 {
                "empty or not a tar archive".into()
            } else {
                format!("truncated after {entries} entries (no end-of-archive blocks)")
            }));
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), EntryError> {
        let raw = entry.path().map_err(EntryError::Read)?.into_owned();
        let Some(rel) = normalize(&raw) else {
            return Err(EntryError::Bad("climbs out of the root with `..`".into()));
        };
        let header = entry.header().clone();
        let mut meta = Meta {
            uid: header.uid().map_err(EntryError::Read)? as u32,
            gid: header.gid().map_err(EntryError::Read)? as u32,
            mode: header.mode().map_err(EntryError::Read)? & 0o7777,
            kind: Kind::File,
            xattrs: Vec::new(),
            mtime: header.mtime().unwrap_or(0),
        };
        if let Some(pax) = entry.pax_extensions().map_err(EntryError::Read)? {
            for ext in pax {
                let ext = ext.map_err(EntryError::Read)?;
                let Ok(key) = ext.key() else { continue };
                let number = || ext.value().ok().and_then(|v| v.parse::<u64>().ok());
                match key {
                    "uid" => meta.uid = number().unwrap_or(meta.uid as u64) as u32,
                    "gid" => meta.gid = number().unwrap_or(meta.gid as u64) as u32,
                    _ => {
                        if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                            meta.xattrs
                                .push((attr.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        let Some(file_name) = rel.file_name().map(OsStr::to_owned) else {
            // The root itself (`./`): only its metadata.
            if header.entry_type().is_dir() {
                meta.kind = Kind::Dir;
                self.meta.insert(PathBuf::new(), meta);
            }
            return Ok(());
        };
        let parent = self.resolve(rel.parent().unwrap_or(Path::new("")), true)?;
        let name = file_name.as_bytes();
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            if hidden == b".wh..opq" {
                return self.opaque(&parent);
            }
            if hidden.starts_with(b".wh.") {
                return Ok(()); // aufs bookkeeping (`.wh..wh.plnk`, ...)
            }
            let target = parent.join(OsStr::from_bytes(hidden));
            if !self.this_layer.contains(&target) {
                self.remove(&target)?;
            }
            return Ok(());
        }
        let rel = parent.join(&file_name);
        let dst = self.root.join(&rel);
        let kind = header.entry_type();
        use tar::EntryType as T;
        let existing = fs::symlink_metadata(&dst).ok();
        if !(kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir())) && existing.is_some() {
            self.remove(&rel)?;
        }
        let io = |e: io::Error| EntryError::Io(dst.clone(), e);
        match kind {
            T::Directory => {
                meta.kind = Kind::Dir;
                if existing.is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&dst).map_err(io)?;
                }
                fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode | 0o700))
                    .map_err(io)?;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let mut f = fs::File::create(&dst).map_err(io)?;
                let want = entry.size();
                let got = io::copy(&mut entry, &mut f).map_err(EntryError::Read)?;
                if kind != T::GNUSparse && got != want {
                    return Err(EntryError::Bad(format!(
                        "cut short: {got} of its {want} bytes"
                    )));
                }
                drop(f);
                fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode | 0o600))
                    .map_err(io)?;
                set_mtime(&dst, meta.mtime);
            }
            T::Symlink => {
                meta.kind = Kind::Symlink;
                let target = entry
                    .link_name()
                    .map_err(EntryError::Read)?
                    .ok_or_else(|| EntryError::Bad("symlink without a target".into()))?;
                std::os::unix::fs::symlink(&target, &dst).map_err(io)?;
                set_mtime(&dst, meta.mtime);
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(EntryError::Read)?
                    .ok_or_else(|| EntryError::Bad("hard link without a target".into()))?;
                let target = normalize(&target)
                    .ok_or_else(|| EntryError::Bad("hard link climbs out with `..`".into()))?;
                let tparent = self.resolve(target.parent().unwrap_or(Path::new("")), false)?;
                let target = tparent.join(target.file_name().unwrap_or_default());
                let Some(tmeta) = self.meta.get(&target).cloned() else {
                    return Err(EntryError::Bad(format!(
                        "hard link to `{}`, which no earlier entry made",
                        target.display()
                    )));
                };
                fs::hard_link(self.root.join(&target), &dst).map_err(io)?;
                meta = tmeta;
            }
            T::Fifo => {
                meta.kind = Kind::Fifo;
                let c = std::ffi::CString::new(dst.as_os_str().as_bytes())
                    .map_err(|_| EntryError::Bad("nul byte in the name".into()))?;
                // SAFETY: a valid C string; mkfifo needs no privileges.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(io(io::Error::last_os_error()));
                }
            }
            T::Char | T::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                meta.kind = if kind == T::Char {
                    Kind::Char(major, minor)
                } else {
                    Kind::Block(major, minor)
                };
            }
            // Global PAX headers and other bookkeeping: nothing to make.
            _ => return Ok(()),
        }
        self.this_layer.insert(rel.clone());
        self.meta.insert(rel, meta);
        Ok(())
    }

    /// Resolves folder `rel` inside the tree: symlinks among its components are
    /// followed as if the tree were `/` (never outside it). With `create`, missing
    /// folders are made (owned by root, mode 0755).
    fn resolve(&mut self, rel: &Path, create: bool) -> Result<PathBuf, EntryError> {
        let mut pending: Vec<PathBuf> = rel.components().map(|c| c.as_os_str().into()).collect();
        pending.reverse();
        let mut cur = PathBuf::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part.as_os_str() == ".." {
                cur.pop();
                continue;
            }
            if part.as_os_str() == "." || part.as_os_str().is_empty() {
                continue;
            }
            let next = cur.join(&part);
            let host = self.root.join(&next);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return Err(EntryError::Bad(format!(
                            "too many symlinks under `{}`",
                            next.display()
                        )));
                    }
                    let target = fs::read_link(&host).map_err(|e| EntryError::Io(host, e))?;
                    if target.is_absolute() {
                        cur = PathBuf::new();
                    }
                    let mut parts: Vec<PathBuf> =
                        target.components().map(|c| c.as_os_str().into()).collect();
                    parts.retain(|p| p.as_os_str() != "/");
                    pending.extend(parts.into_iter().rev());
                }
                Ok(m) if m.is_dir() => cur = next,
                Ok(_) => {
                    return Err(EntryError::Bad(format!(
                        "`{}` is not a folder",
                        next.display()
                    )))
                }
                Err(_) if create => {
                    fs::create_dir(&host).map_err(|e| EntryError::Io(host.clone(), e))?;
                    self.meta.insert(next.clone(), dir_meta(0o755));
                    self.this_layer.insert(next.clone());
                    cur = next;
                }
                Err(e) => return Err(EntryError::Io(host, e)),
            }
        }
        Ok(cur)
    }

    /// Removes `rel` and everything under it, from the tree and from the metadata.
    fn remove(&mut self, rel: &Path) -> Result<(), EntryError> {
        let host = self.root.join(rel);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => {
                make_removable(&host);
                fs::remove_dir_all(&host).map_err(|e| EntryError::Io(host.clone(), e))?
            }
            Ok(_) => fs::remove_file(&host).map_err(|e| EntryError::Io(host.clone(), e))?,
            Err(_) => {}
        }
        let gone: Vec<PathBuf> = self
            .meta
            .range(rel.to_path_buf()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(rel))
            .cloned()
            .collect();
        for k in gone {
            self.meta.remove(&k);
        }
        Ok(())
    }

    /// `.wh..wh..opq` in `dir`: every child from lower layers goes, this layer's stay.
    fn opaque(&mut self, dir: &Path) -> Result<(), EntryError> {
        let lower: Vec<PathBuf> = self
            .meta
            .range(dir.to_path_buf()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(dir))
            .filter(|k| k.as_path() != dir && !self.this_layer.contains(*k))
            .cloned()
            .collect();
        for k in lower {
            // Already gone with a folder removed before it.
            if self.meta.contains_key(&k) {
                self.remove(&k)?;
            }
        }
        Ok(())
    }

    /// Makes the folders a sprite's agent uses when no layer brought them
    /// ([`SPRITE_DIRS`]); a path that exists (as a folder or a symlink) is left alone.
    pub fn add_sprite_dirs(&mut self) -> Result<(), LayerError> {
        for (dir, mode) in SPRITE_DIRS {
            // Only inside real folders: a host path through an image's symlink
            // (`var -> /srv`) would lead out of the tree, onto the host.
            let parent = Path::new(dir).parent().unwrap_or(Path::new(""));
            if self.meta.get(parent).is_none_or(|m| m.kind != Kind::Dir) {
                continue; // under a symlink, a file or nothing: leave it to the image
            }
            let host = self.root.join(dir);
            if fs::symlink_metadata(&host).is_ok() {
                continue;
            }
            fs::create_dir(&host).map_err(io_err(&host))?;
            fs::set_permissions(&host, fs::Permissions::from_mode(mode | 0o700))
                .map_err(io_err(&host))?;
            self.meta.insert(PathBuf::from(dir), dir_meta(*mode));
        }
        Ok(())
    }

    /// Sets the folders' times (their entries changed them while children were written).
    pub fn finish(&self) {
        for (rel, m) in &self.meta {
            if m.kind == Kind::Dir {
                set_mtime(&self.root.join(rel), m.mtime);
            }
        }
    }

    /// What `mke2fs -d` of the tree will not get right, for `debugfs`: owners and
    /// modes that differ from the host files', device nodes, extended attributes.
    pub fn fixups(&self) -> Result<Vec<Fixup>, LayerError> {
        let mut out = Vec::new();
        for (rel, m) in &self.meta {
            let path = format!("/{}", rel.display());
            let (uid, gid, mode) = match m.kind {
                Kind::Char(..) | Kind::Block(..) => {
                    let dir = rel.parent().unwrap_or(Path::new(""));
                    out.push(Fixup::Mknod {
                        dir: format!("/{}", dir.display()),
                        name: rel
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned(),
                        kind: m.kind,
                    });
                    (0, 0, 0)
                }
                _ => {
                    let host = self.root.join(rel);
                    let st = fs::symlink_metadata(&host).map_err(io_err(&host))?;
                    (st.uid(), st.gid(), st.mode() & 0o7777)
                }
            };
            if m.uid != uid {
                out.push(Fixup::Uid(path.clone(), m.uid));
            }
            if m.gid != gid {
                out.push(Fixup::Gid(path.clone(), m.gid));
            }
            if m.kind != Kind::Symlink && m.mode != mode {
                out.push(Fixup::Mode(path.clone(), m.kind.type_bits() | m.mode));
            }
            for (name, value) in &m.xattrs {
                out.push(Fixup::Xattr(path.clone(), name.clone(), value.clone()));
            }
        }
        Ok(out)
    }
}

/// A folder no layer described: root's, made now.
fn dir_meta(mode: u32) -> Meta {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Meta {
        uid: 0,
        gid: 0,
        mode,
        kind: Kind::Dir,
        xattrs: Vec::new(),
        mtime: now,
    }
}

/// Gives the owner write and search permission on every folder under `dir`, so an
/// unprivileged `remove_dir_all` can empty them.
fn make_removable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_removable(&e.path());
            }
        }
    }
}

fn set_mtime(path: &Path, mtime: u64) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: a valid path and two timespecs; the link itself, not its target.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}

/// A failure on one entry, before it is given the layer's and the entry's names.
enum EntryError {
    Read(io::Error),
    Bad(String),
    Io(PathBuf, io::Error),
}

fn annotate(e: EntryError, layer: &str, entry: &str) -> LayerError {
    match e {
        EntryError::Read(e) => LayerError::Corrupt {
            layer: layer.to_string(),
            what: format!("entry `{entry}`: {e}"),
        },
        EntryError::Bad(what) => LayerError::Corrupt {
            layer: layer.to_string(),
            what: format!("entry `{entry}`: {what}"),
        },
        EntryError::Io(path, source) => LayerError::Io { path, source },
    }
}

/// Notes whether the reader reached the end of its input.
struct EofWatch<R> {
    inner: R,
    hit_eof: bool,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar stream built in memory: `(path, kind, mode, uid, body or link target)`.
    pub(crate) struct TarSpec<'a> {
        pub path: &'a str,
        pub kind: tar::EntryType,
        pub mode: u32,
        pub uid: u64,
        pub data: &'a [u8],
        pub xattr: Option<(&'a str, &'a [u8])>,
    }

    pub(crate) fn entry<'a>(path: &'a str, kind: tar::EntryType, data: &'a [u8]) -> TarSpec<'a> {
        TarSpec {
            path,
            kind,
            mode: if kind.is_dir() { 0o755 } else { 0o644 },
            uid: 0,
            data,
            xattr: None,
        }
    }

    pub(crate) fn tar_of(entries: &[TarSpec<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            if let Some((name, value)) = e.xattr {
                let key = format!("SCHILY.xattr.{name}");
                b.append_pax_extensions([(key.as_str(), value)]).unwrap();
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(e.kind);
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.uid);
            h.set_mtime(1_700_000_000);
            let body: &[u8] = if e.kind.is_file() { e.data } else { &[] };
            h.set_size(body.len() as u64);
            if e.kind == tar::EntryType::Char {
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
            }
            if matches!(e.kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                b.append_link(&mut h, e.path, std::str::from_utf8(e.data).unwrap())
                    .unwrap();
            } else {
                b.append_data(&mut h, e.path, body).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    use tar::EntryType as T;

    #[test]
    fn layers_stack_with_whiteouts_links_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(&dir.path().join("root")).unwrap();
        let mut suid = entry("usr/bin/tool", T::Regular, b"#!tool");
        suid.mode = 0o4755;
        let mut owned = entry("home/app/data", T::Regular, b"mine");
        owned.uid = 1000;
        let mut secret = entry("etc/shadow", T::Regular, b"root:*:");
        secret.mode = 0o000;
        let mut tagged = entry("usr/bin/ping", T::Regular, b"ping");
        tagged.xattr = Some(("security.capability", b"\x01\x02"));
        let lower = tar_of(&[
            entry("./", T::Directory, b""),
            entry("etc/", T::Directory, b""),
            entry("etc/gone", T::Regular, b"x"),
            entry("etc/kept", T::Regular, b"kept"),
            entry("opq/", T::Directory, b""),
            entry("opq/old", T::Regular, b"old"),
            entry("opq/sub/", T::Directory, b""),
            entry("opq/sub/deep", T::Regular, b"deep"),
            entry("usr/lib/", T::Directory, b""),
            entry("lib", T::Symlink, b"usr/lib"),
            entry("escape", T::Symlink, b"/tmp"),
            suid,
            owned,
            secret,
            tagged,
            entry("usr/bin/tool2", T::Link, b"usr/bin/tool"),
            entry("dev/null", T::Char, b""),
        ]);
        tree.apply(&lower[..], "lower").unwrap();
        let upper = tar_of(&[
            entry("etc/.wh.gone", T::Regular, b""),
            entry("opq/.wh..wh..opq", T::Regular, b""),
            entry("opq/new", T::Regular, b"new"),
            entry("lib/libnew.so", T::Regular, b"elf"),
            entry("escape/inside", T::Regular, b"stays in the tree"),
        ]);
        tree.apply(&upper[..], "upper").unwrap();
        let root = dir.path().join("root");
        assert!(!root.join("etc/gone").exists());
        assert_eq!(fs::read(root.join("etc/kept")).unwrap(), b"kept");
        assert!(!root.join("opq/old").exists() && !root.join("opq/sub").exists());
        assert!(tree.meta(Path::new("opq/sub/deep")).is_none());
        assert_eq!(fs::read(root.join("opq/new")).unwrap(), b"new");
        // Through the symlinks, inside the tree: `lib` is `usr/lib`, `/tmp` is `tmp`.
        assert_eq!(fs::read(root.join("usr/lib/libnew.so")).unwrap(), b"elf");
        assert!(root.join("tmp/inside").is_file());
        assert!(fs::symlink_metadata(root.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink());
        let a = fs::metadata(root.join("usr/bin/tool")).unwrap();
        let b = fs::metadata(root.join("usr/bin/tool2")).unwrap();
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        // Unreadable on the host would stop mke2fs: the tree file is owner-readable.
        assert_eq!(
            fs::metadata(root.join("etc/shadow")).unwrap().mode() & 0o600,
            0o600
        );
        assert!(!root.join("dev/null").exists());
        let fixups = tree.fixups().unwrap();
        let has = |f: Fixup| fixups.contains(&f);
        assert!(has(Fixup::Uid("/home/app/data".into(), 1000)), "{fixups:?}");
        assert!(has(Fixup::Gid("/home/app/data".into(), 1000)));
        assert!(has(Fixup::Mode("/etc/shadow".into(), 0o100000)));
        assert!(has(Fixup::Mknod {
            dir: "/dev".into(),
            name: "null".into(),
            kind: Kind::Char(1, 3)
        }));
        assert!(has(Fixup::Mode("/dev/null".into(), 0o020644)));
        assert!(has(Fixup::Xattr(
            "/usr/bin/ping".into(),
            "security.capability".into(),
            vec![1, 2]
        )));
        // Root runs this test: a setuid bit it could set needs no fix.
        let st = fs::metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!(
            has(Fixup::Mode("/usr/bin/tool".into(), 0o104755)),
            st.mode() & 0o7777 != 0o4755
        );
    }

    #[test]
    fn a_file_replaces_a_folder_and_sprite_dirs_are_added() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(&dir.path().join("root")).unwrap();
        let lower = tar_of(&[
            entry("var/run/", T::Directory, b""),
            entry("var/run/x", T::Regular, b"x"),
        ]);
        tree.apply(&lower[..], "lower").unwrap();
        let upper = tar_of(&[entry("var/run", T::Symlink, b"/run")]);
        tree.apply(&upper[..], "upper").unwrap();
        assert!(tree.meta(Path::new("var/run/x")).is_none());
        // An image whose `var` leads to a host folder: nothing is made there.
        let host = tempfile::tempdir().unwrap();
        let outside = host.path().to_str().unwrap().as_bytes();
        let links = tar_of(&[entry("var", T::Symlink, outside)]);
        tree.apply(&links[..], "links").unwrap();
        tree.add_sprite_dirs().unwrap();
        assert_eq!(fs::read_dir(host.path()).unwrap().count(), 0);
        let root = dir.path().join("root");
        for d in [".sprite/bin", "etc/wisp/services", "proc", "tmp"] {
            assert!(root.join(d).is_dir(), "{d}");
        }
        assert!(tree.meta(Path::new("var/log")).is_none());
        assert_eq!(tree.meta(Path::new("tmp")).unwrap().mode, 0o1777);
    }

    #[test]
    fn damaged_streams_are_corrupt_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(&dir.path().join("root")).unwrap();
        let good = tar_of(&[
            entry("a", T::Regular, &[7u8; 3000]),
            entry("b", T::Regular, b"b"),
        ]);
        // Cut inside a file's data, at a header boundary, and garbage.
        for (cut, want) in [(1200, "entry `a`"), (512 * 7, "truncated"), (0, "empty")] {
            let err = tree.apply(&good[..cut], "layer 1").unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, LayerError::Corrupt { .. }), "{text}");
            assert!(
                text.starts_with("layer 1: ") && text.contains(want),
                "{text}"
            );
        }
        let err = tree.apply(&[0x55u8; 2048][..], "junk").unwrap_err();
        assert!(matches!(err, LayerError::Corrupt { .. }), "{err}");
        let bad = tar_of(&[entry("x", T::Link, b"nowhere")]);
        let err = tree.apply(&bad[..], "links").unwrap_err().to_string();
        assert!(err.contains("no earlier entry made"), "{err}");
    }
}
