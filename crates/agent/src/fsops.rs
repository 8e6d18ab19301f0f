//! Filesystem operations for the host's filesystem API: list, delete, rename, copy,
//! chmod, chown. Each runs on a thread of its own (a recursive one can take long) and
//! answers `ok`, a listing stream, or an `error` carrying the errno name.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wisp_proto::{Control, FsEntry, FsOp};

use crate::server::Agent;

/// The errno name of a failed system call (`ENOENT`, ...), if it is one the API names.
pub fn errno_name(error: &io::Error) -> Option<&'static str> {
    let name = match error.raw_os_error()? {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::EIO => "EIO",
        libc::EXDEV => "EXDEV",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EBUSY => "EBUSY",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        _ => return None,
    };
    Some(name)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn absolute(path: &str) -> io::Result<PathBuf> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(invalid(format!("path `{path}` is not absolute")));
    }
    Ok(PathBuf::from(path))
}

/// Runs `op` on a thread; the answer goes to session `session`.
pub fn start(agent: &Arc<Agent>, session: u32, op: FsOp) -> io::Result<()> {
    let a = agent.clone();
    std::thread::Builder::new()
        .name(format!("fs-{session}"))
        .spawn(move || {
            let what = describe(&op);
            let result = run(&a, session, op);
            match result {
                Ok(true) => a.out.control(session, &Control::Ok),
                // A listing answered with its own stream.
                Ok(false) => {}
                Err(e) => a.out.error_io(session, &what, &e),
            }
        })?;
    Ok(())
}

fn describe(op: &FsOp) -> String {
    match op {
        FsOp::List { path, .. } => format!("list `{path}`"),
        FsOp::Delete { path, .. } => format!("delete `{path}`"),
        FsOp::Rename { from, to } => format!("rename `{from}` to `{to}`"),
        FsOp::Copy { from, to, .. } => format!("copy `{from}` to `{to}`"),
        FsOp::Chmod { path, .. } => format!("chmod `{path}`"),
        FsOp::Chown { path, .. } => format!("chown `{path}`"),
    }
}

/// Runs one operation: `Ok(true)` when it wants a plain `ok` answer.
fn run(agent: &Arc<Agent>, session: u32, op: FsOp) -> io::Result<bool> {
    match op {
        FsOp::List {
            path,
            recursive,
            pattern,
        } => {
            let path = absolute(&path)?;
            let pattern = pattern.map(CString::new).transpose()?;
            let entries = list(&path, recursive, pattern.as_ref())?;
            let json = serde_json::to_vec(&entries).map_err(io::Error::other)?;
            crate::files::start_stream(
                agent,
                session,
                io::Cursor::new(json.clone()),
                json.len() as u64,
                0,
                format!("the listing of `{}`", path.display()),
            )?;
            Ok(false)
        }
        FsOp::Delete { path, recursive } => {
            let path = absolute(&path)?;
            if path.parent().is_none() {
                return Err(invalid("refusing to delete `/`".into()));
            }
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                if recursive {
                    fs::remove_dir_all(&path)?;
                } else {
                    fs::remove_dir(&path)?;
                }
            } else {
                fs::remove_file(&path)?;
            }
            Ok(true)
        }
        FsOp::Rename { from, to } => {
            fs::rename(absolute(&from)?, absolute(&to)?)?;
            Ok(true)
        }
        FsOp::Copy {
            from,
            to,
            recursive,
            preserve,
        } => {
            let (from, to) = (absolute(&from)?, absolute(&to)?);
            let meta = fs::symlink_metadata(&from)?;
            if meta.is_dir() && !recursive {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            if meta.is_dir() && to.starts_with(&from) {
                return Err(invalid(format!(
                    "cannot copy `{}` into itself",
                    from.display()
                )));
            }
            copy(&from, &to, preserve)?;
            Ok(true)
        }
        FsOp::Chmod {
            path,
            mode,
            recursive,
        } => {
            let path = absolute(&path)?;
            walk(&path, recursive, &mut |p, meta| {
                // A symlink has no mode of its own.
                if meta.file_type().is_symlink() {
                    return Ok(());
                }
                fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777))
            })?;
            Ok(true)
        }
        FsOp::Chown {
            path,
            user,
            group,
            recursive,
        } => {
            let path = absolute(&path)?;
            let uid = user.as_deref().map(resolve_user).transpose()?;
            let gid = group.as_deref().map(resolve_group).transpose()?;
            if uid.is_none() && gid.is_none() {
                return Err(invalid("chown needs a user or a group".into()));
            }
            walk(&path, recursive, &mut |p, _| {
                std::os::unix::fs::lchown(p, uid, gid)
            })?;
            Ok(true)
        }
    }
}

fn resolve_user(spec: &str) -> io::Result<u32> {
    match spec.parse() {
        Ok(uid) => Ok(uid),
        Err(_) => Ok(crate::users::lookup(spec)?.uid),
    }
}

fn resolve_group(spec: &str) -> io::Result<u32> {
    if let Ok(gid) = spec.parse() {
        return Ok(gid);
    }
    let groups = fs::read_to_string("/etc/group").unwrap_or_default();
    groups
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == spec)
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("group `{spec}` is not in /etc/group"),
            )
        })
}

/// Calls `f` on `path` and, with `recursive` and a folder, on everything below it
/// (symlinks are not followed).
fn walk(
    path: &Path,
    recursive: bool,
    f: &mut dyn FnMut(&Path, &fs::Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    f(path, &meta)?;
    if recursive && meta.is_dir() {
        for entry in fs::read_dir(path)? {
            walk(&entry?.path(), true, f)?;
        }
    }
    Ok(())
}

fn kind(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "file"
    } else {
        "other"
    }
}

fn entry(name: String, path: &Path, meta: &fs::Metadata) -> FsEntry {
    FsEntry {
        name,
        path: path.to_string_lossy().into_owned(),
        kind: kind(meta).to_string(),
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
    }
}

/// `fnmatch(3)`: whether `name` matches the shell glob `pattern`.
fn matches(pattern: &CString, name: &str) -> bool {
    let Ok(name) = CString::new(name.as_bytes()) else {
        return false;
    };
    // SAFETY: both are valid NUL-terminated strings.
    unsafe { libc::fnmatch(pattern.as_ptr(), name.as_ptr(), 0) == 0 }
}

/// The entries of a folder (all below it with `recursive`, named by their path below
/// it), or the one entry of anything else; sorted by name.
fn list(path: &Path, recursive: bool, pattern: Option<&CString>) -> io::Result<Vec<FsEntry>> {
    let meta = fs::symlink_metadata(path)?;
    // A symlink to a folder is listed as the folder, as `ls` does.
    let followed = if meta.file_type().is_symlink() {
        fs::metadata(path).unwrap_or(meta.clone())
    } else {
        meta.clone()
    };
    let mut out = Vec::new();
    if !followed.is_dir() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        out.push(entry(name, path, &meta));
        return Ok(out);
    }
    let mut stack = vec![(path.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for item in fs::read_dir(&dir)? {
            let item = item?;
            let meta = item.metadata()?;
            let base = item.file_name().to_string_lossy().into_owned();
            let name = format!("{prefix}{base}");
            if recursive && meta.is_dir() {
                stack.push((item.path(), format!("{name}/")));
            }
            if pattern.is_none_or(|p| matches(p, &base)) {
                out.push(entry(name, &item.path(), &meta));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Copies `from` to exactly `to`: a file's bytes and mode, a symlink as a symlink, a
/// folder with all it holds (merged into `to` when that exists). With `preserve`, owners
/// and modification times too.
fn copy(from: &Path, to: &Path, preserve: bool) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let t = meta.file_type();
    if t.is_symlink() {
        let target = fs::read_link(from)?;
        if fs::symlink_metadata(to).is_ok() {
            fs::remove_file(to)?;
        }
        std::os::unix::fs::symlink(target, to)?;
    } else if t.is_dir() {
        match fs::create_dir(to) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && fs::metadata(to)?.is_dir() => {}
            other => other?,
        }
        for item in fs::read_dir(from)? {
            let item = item?;
            copy(&item.path(), &to.join(item.file_name()), preserve)?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else {
        // Copies the permission bits too.
        fs::copy(from, to)?;
    }
    if preserve {
        std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
        set_mtime(to, meta.atime(), meta.mtime())?;
    }
    Ok(())
}

/// Sets access and modification times (whole seconds) without following a symlink.
fn set_mtime(path: &Path, atime: i64, mtime: i64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let times = [
        libc::timespec {
            tv_sec: atime,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    ];
    // SAFETY: a valid path and two timespecs, as utimensat(2) wants.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_is_sorted_recursive_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("sub/deep")).unwrap();
        fs::write(root.join("a.txt"), b"12345").unwrap();
        fs::write(root.join("sub/b.rs"), b"x").unwrap();
        fs::write(root.join("sub/deep/c.txt"), b"").unwrap();
        let names = |recursive, pattern: Option<&str>| {
            let pattern = pattern.map(|p| CString::new(p).unwrap());
            list(root, recursive, pattern.as_ref())
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(false, None), ["a.txt", "sub"]);
        assert_eq!(
            names(true, None),
            ["a.txt", "sub", "sub/b.rs", "sub/deep", "sub/deep/c.txt"]
        );
        assert_eq!(names(true, Some("*.txt")), ["a.txt", "sub/deep/c.txt"]);
        let file = list(&root.join("a.txt"), false, None).unwrap();
        assert_eq!(file.len(), 1);
        assert_eq!((file[0].name.as_str(), file[0].size), ("a.txt", 5));
        assert_eq!(file[0].kind, "file");
        let err = list(&root.join("missing"), false, None).unwrap_err();
        assert_eq!(errno_name(&err), Some("ENOENT"));
    }

    #[test]
    fn copy_keeps_modes_and_links_and_refuses_itself() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/inner")).unwrap();
        fs::write(root.join("src/inner/run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(
            root.join("src/inner/run.sh"),
            fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("inner/run.sh", root.join("src/link")).unwrap();
        copy(&root.join("src"), &root.join("dst"), false).unwrap();
        assert_eq!(
            fs::read(root.join("dst/inner/run.sh")).unwrap(),
            b"#!/bin/sh\n"
        );
        let mode = fs::metadata(root.join("dst/inner/run.sh")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o750);
        assert_eq!(
            fs::read_link(root.join("dst/link")).unwrap(),
            Path::new("inner/run.sh")
        );
    }

    #[test]
    fn errno_names() {
        assert_eq!(
            errno_name(&io::Error::from_raw_os_error(libc::EISDIR)),
            Some("EISDIR")
        );
        assert_eq!(errno_name(&io::Error::other("x")), None);
    }
}
