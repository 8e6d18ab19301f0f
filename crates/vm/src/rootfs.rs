//! Root filesystem builders for the standard images: a folder tree (busybox
//! for `tiny`, debootstrap for `debian`) turned into a sparse ext4 image with
//! `mke2fs -d`, and the copy of that image into the start of a block device.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use wisp_nbd::BlockDevice;

/// Errors while building a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot run `{tool}`: {source}; install the Debian package `{package}`")]
    Tool {
        tool: String,
        package: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot read or write `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the image into the volume at offset {offset}: {source}")]
    Device { offset: u64, source: std::io::Error },
    #[error("image `{path}` ({size} bytes) does not fit a device of {device} bytes")]
    TooBig {
        path: PathBuf,
        size: u64,
        device: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a command to completion; stdout/stderr are captured for the error.
pub(crate) fn run(cmd: &mut Command, package: &'static str) -> Result<(), RootfsError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RootfsError::Tool {
            tool: tool.clone(),
            package,
            source,
        })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.trim().is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let keep = stderr.len().saturating_sub(2000);
        return Err(RootfsError::Command {
            command: format!("{cmd:?}"),
            status: out.status.to_string(),
            stderr: stderr[keep..].trim().to_string(),
        });
    }
    Ok(())
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), RootfsError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    fs::write(path, text).map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Host programs copied into `tiny` with their shared libraries: the agent
/// grows the root with `resize2fs` on first boot, and `e2fsck` lets a test or
/// a user check a second disk. Busybox has neither.
const TINY_HOST_TOOLS: &[&str] = &["/sbin/resize2fs", "/sbin/e2fsck"];

/// Fills `dir` with the `tiny` root: busybox-static and its applet links,
/// the usual folders, `root` and `sprite` users, and e2fsprogs' resize2fs.
pub fn populate_tiny(dir: &Path) -> Result<(), RootfsError> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return Err(RootfsError::Tool {
            tool: "/bin/busybox".into(),
            package: "busybox-static",
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/wisp/services",
        "proc",
        "sys",
        "dev",
        "run",
        "var/log",
        "var/tmp",
        "root",
        "home/sprite",
        "lib/x86_64-linux-gnu",
        "lib64",
        "mnt",
        "www",
    ] {
        let p = dir.join(d);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(io_err(&tmp))?;
    let target = dir.join("bin/busybox");
    fs::copy(busybox, &target).map_err(io_err(&target))?;
    // `busybox --list-full` names every applet with its usual folder.
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| RootfsError::Tool {
            tool: "busybox".into(),
            package: "busybox-static",
            source,
        })?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let link = dir.join(applet);
        if link.exists() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        symlink("/bin/busybox", &link).map_err(io_err(&link))?;
    }
    for tool in TINY_HOST_TOOLS {
        copy_with_libs(Path::new(tool), dir)?;
    }
    write(
        &dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nsprite:x:1000:1000:sprite:/home/sprite:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    write(
        &dir.join("etc/group"),
        "root:x:0:\ntty:x:5:\nsprite:x:1000:\nnogroup:x:65534:\n",
        0o644,
    )?;
    write(
        &dir.join("etc/shadow"),
        "root:*:19000:0:99999:7:::\nsprite:*:19000:0:99999:7:::\n",
        0o600,
    )?;
    write(&dir.join("etc/hostname"), "sprite\n", 0o644)?;
    write(&dir.join("etc/hosts"), "127.0.0.1 localhost\n", 0o644)?;
    write(
        &dir.join("etc/profile"),
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\h:\\w\\$ '\n",
        0o644,
    )?;
    write(
        &dir.join("etc/os-release"),
        "NAME=\"wisp tiny\"\nID=wisp-tiny\n",
        0o644,
    )?;
    let home = dir.join("home/sprite");
    let _ = std::os::unix::fs::chown(&home, Some(1000), Some(1000));
    Ok(())
}

/// Copies a dynamically linked host program and the libraries `ldd` names
/// into the same paths under `root`.
fn copy_with_libs(program: &Path, root: &Path) -> Result<(), RootfsError> {
    if !program.is_file() {
        return Err(RootfsError::Tool {
            tool: program.display().to_string(),
            package: "e2fsprogs",
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|source| RootfsError::Tool {
            tool: "ldd".into(),
            package: "libc-bin",
            source,
        })?;
    let mut files = vec![program.to_path_buf()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libx.so => /lib/.../libx.so (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|s| s.starts_with('/'));
        if let Some(p) = path {
            files.push(PathBuf::from(p));
        }
    }
    for f in files {
        let rel = f.strip_prefix("/").unwrap_or(&f);
        let dst = root.join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        // Resolve symlinks (libfoo.so.2 -> libfoo.so.2.3) by copying the content.
        fs::copy(&f, &dst).map_err(io_err(&dst))?;
    }
    Ok(())
}

/// Builds a sparse ext4 image of `size` bytes at `image` holding `dir`.
pub fn make_ext4(dir: &Path, image: &Path, size: u64, label: &str) -> Result<(), RootfsError> {
    let _ = fs::remove_file(image);
    let f = fs::File::create(image).map_err(io_err(image))?;
    f.set_len(size).map_err(io_err(image))?;
    drop(f);
    run(
        Command::new("mke2fs")
            // Inode tables and journal zeroed now (mke2fs punches them as
            // holes in the sparse file, so they cost nothing) instead of by
            // the guest kernel's lazy-init thread, which would write
            // gigabytes of zeros through the volume after the first boot.
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                label,
                "-E",
                "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
                "-d",
            ])
            .arg(dir)
            .arg(image),
        "e2fsprogs",
    )
}

/// The data extents of a sparse file, as `(offset, len)`, found with
/// `SEEK_DATA`/`SEEK_HOLE` so a 100 GiB image with a few MiB of data is not
/// read in full.
fn data_extents(file: &fs::File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut off: i64 = 0;
    while (off as u64) < size {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `off`
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.push((data as u64, (hole - data) as u64));
        off = hole;
    }
    Ok(out)
}

/// Bytes in the data extents of the sparse file `image` (what
/// [`import_image`] reads, and reports progress against).
pub fn data_bytes(image: &Path) -> Result<u64, RootfsError> {
    let file = fs::File::open(image).map_err(io_err(image))?;
    let size = file.metadata().map_err(io_err(image))?.len();
    let extents = data_extents(&file, size).map_err(io_err(image))?;
    Ok(extents.iter().map(|(_, len)| len).sum())
}

/// Copies the raw image `image` into the start of `dev`: only its data
/// extents, and of those only the non-zero 256 KiB pieces (the device reads
/// zeros elsewhere; a piece is one chunk of a volume, which stores whole
/// chunks, so a smaller piece would save nothing and cost four writes).
/// `progress` gets the bytes of data extents read so far (up to
/// [`data_bytes`]). Returns the bytes written. It does not flush: the caller
/// makes the data durable its own way (a volume's `sync` uploads it, and an
/// fdatasync of the volume's cache file on the way would cost as long again).
pub async fn import_image(
    image: &Path,
    dev: &dyn BlockDevice,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, RootfsError> {
    use std::os::unix::fs::FileExt;
    const PIECE: u64 = wisp_volume::CHUNK_SIZE;
    let file = fs::File::open(image).map_err(io_err(image))?;
    let size = file.metadata().map_err(io_err(image))?.len();
    if size > dev.size() {
        return Err(RootfsError::TooBig {
            path: image.to_path_buf(),
            size,
            device: dev.size(),
        });
    }
    let extents = data_extents(&file, size).map_err(io_err(image))?;
    let mut buf = vec![0u8; PIECE as usize];
    let mut written = 0u64;
    let mut done = 0u64;
    let mut next = 0u64;
    for (start, len) in extents {
        // Align to pieces so every write is a whole, aligned piece (or the tail).
        // Two extents in one piece: the first one's write covered it.
        let mut at = (start / PIECE * PIECE).max(next);
        let end = (start + len).min(size);
        while at < end {
            let n = PIECE.min(size - at) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .map_err(io_err(image))?;
            if buf[..n].iter().any(|&b| b != 0) {
                dev.write(at, Bytes::copy_from_slice(&buf[..n]), false)
                    .await
                    .map_err(|source| RootfsError::Device { offset: at, source })?;
                written += n as u64;
            }
            at += n as u64;
        }
        next = at;
        done += len;
        progress(done);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_tree_has_busybox_users_and_resize2fs() {
        let dir = tempfile::tempdir().unwrap();
        populate_tiny(dir.path()).unwrap();
        let sh = fs::read_link(dir.path().join("bin/sh")).unwrap();
        assert_eq!(sh, Path::new("/bin/busybox"));
        assert!(dir.path().join("sbin/resize2fs").is_file());
        assert!(dir.path().join("lib64/ld-linux-x86-64.so.2").is_file());
        let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert!(passwd.contains("sprite:x:1000:1000"));
    }

    #[tokio::test]
    async fn ext4_image_is_clean_and_imports_into_a_bigger_device() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::write(tree.join("etc/hello"), "hello\n").unwrap();
        let image = dir.path().join("root.ext4");
        make_ext4(&tree, &image, 64 << 20, "wisp-test").unwrap();
        let st = Command::new("e2fsck")
            .arg("-fn")
            .arg(&image)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        let disk = dir.path().join("disk.raw");
        let dev = wisp_nbd::FileDevice::create(&disk, 256 << 20).unwrap();
        let written = import_image(&image, &dev, &|_| {}).await.unwrap();
        assert!(written > 0 && written < 64 << 20, "{written}");
        // The first 64 MiB of the device now equal the image.
        let a = fs::read(&image).unwrap();
        let b = fs::read(&disk).unwrap();
        assert_eq!(&b[..a.len()], &a[..]);
        let small = wisp_nbd::FileDevice::create(&dir.path().join("small"), 1 << 20).unwrap();
        assert!(matches!(
            import_image(&image, &small, &|_| {}).await,
            Err(RootfsError::TooBig { .. })
        ));
    }
}
