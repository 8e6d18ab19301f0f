//! The guest initramfs: a `newc` cpio archive written here in Rust, holding the
//! agent as `/init`, the kernel's virtio modules and the list of modules to
//! load in order. Cached next to the kernel, keyed by the agent binary's hash.
//!
//! Layout (the contract with `wisp-agent`, see `docs/AGENT.md`):
//! - `/init`: the agent binary; it loads the modules, mounts `/dev/vda`,
//!   switches root and stays PID 1.
//! - `/lib/modules/<name>.ko`: the modules, uncompressed.
//! - `/etc/wisp-modules`: one path per line (`/lib/modules/virtio_ring.ko`, ...),
//!   in load order.
//! - `/dev/console`: so the kernel can open the console before devtmpfs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::kernel::Kernel;

/// Where the module list lives inside the initramfs.
pub const MODULE_LIST: &str = "etc/wisp-modules";

/// Errors while building the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot read or write `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("archive entry name `{0}` is not a relative path")]
    BadName(String),
    #[error("cannot find the guest agent `wisp-agent` (looked in {looked}); build it with `make agent` or set WISP_AGENT")]
    NoAgent { looked: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One entry of a `newc` archive.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        name: String,
        mode: u32,
    },
    File {
        name: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        name: String,
        target: String,
    },
    CharDev {
        name: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// Writes a `newc` (SVR4, no checksum) cpio archive.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            written: 0,
        }
    }

    /// Appends one entry. Names are relative (`bin/sh`), as the kernel expects.
    pub fn entry(&mut self, entry: &Entry) -> std::io::Result<()> {
        const S_IFDIR: u32 = 0o040000;
        const S_IFREG: u32 = 0o100000;
        const S_IFLNK: u32 = 0o120000;
        const S_IFCHR: u32 = 0o020000;
        let (name, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir { name, mode } => (name, S_IFDIR | mode, &[], (0, 0)),
            Entry::File { name, mode, data } => (name, S_IFREG | mode, data, (0, 0)),
            Entry::Symlink { name, target } => (name, S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
            Entry::CharDev {
                name,
                mode,
                major,
                minor,
            } => (name, S_IFCHR | mode, &[], (*major, *minor)),
        };
        let nlink = if matches!(entry, Entry::Dir { .. }) {
            2
        } else {
            1
        };
        let ino = self.ino;
        self.ino += 1;
        self.raw(name, ino, mode, nlink, data, rdev)
    }

    fn raw(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> std::io::Result<()> {
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            size = data.len(),
            dmaj = 0,
            dmin = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            namesize = name.len() + 1,
            check = 0,
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let rem = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..rem])
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.raw("TRAILER!!!", 0, 0, 1, &[], (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The entries of a guest initramfs: directories, `/dev/console`, the modules
/// with their list, and `init` (the agent, or any other init program).
pub fn entries(kernel: &Kernel, init: &[u8]) -> Result<Vec<Entry>, InitramfsError> {
    let mut out: Vec<Entry> = [
        "dev",
        "proc",
        "sys",
        "etc",
        "lib",
        "lib/modules",
        "newroot",
        "run",
        "tmp",
    ]
    .iter()
    .map(|d| Entry::Dir {
        name: d.to_string(),
        mode: 0o755,
    })
    .collect();
    out.push(Entry::CharDev {
        name: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    let mut list = String::new();
    for (file, path) in kernel.modules.iter().zip(kernel.module_paths()) {
        let data = fs::read(&path).map_err(io_err(&path))?;
        out.push(Entry::File {
            name: format!("lib/modules/{file}"),
            mode: 0o644,
            data,
        });
        list.push_str(&format!("/lib/modules/{file}\n"));
    }
    out.push(Entry::File {
        name: MODULE_LIST.into(),
        mode: 0o644,
        data: list.into_bytes(),
    });
    out.push(Entry::File {
        name: "init".into(),
        mode: 0o755,
        data: init.to_vec(),
    });
    Ok(out)
}

/// Writes `entries` as a cpio archive at `path` (atomically, via a temp file).
pub fn write_archive(path: &Path, entries: &[Entry]) -> Result<(), InitramfsError> {
    for e in entries {
        let name = match e {
            Entry::Dir { name, .. }
            | Entry::File { name, .. }
            | Entry::Symlink { name, .. }
            | Entry::CharDev { name, .. } => name,
        };
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c == "..") {
            return Err(InitramfsError::BadName(name.clone()));
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    let mut writer = CpioWriter::new(std::io::BufWriter::new(tmp));
    for e in entries {
        writer.entry(e).map_err(io_err(path))?;
    }
    let tmp = writer
        .finish()
        .map_err(io_err(path))?
        .into_inner()
        .map_err(|e| io_err(path)(e.into_error()))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

/// The static guest agent: `$WISP_AGENT`, else `wisp-agent` next to the
/// running executable, else the cargo layout around it
/// (`target/x86_64-unknown-linux-gnu/{release,debug}/wisp-agent`, the newest).
pub fn find_agent() -> Result<PathBuf, InitramfsError> {
    if let Some(p) = std::env::var_os("WISP_AGENT") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(InitramfsError::NoAgent {
            looked: format!("WISP_AGENT=`{}`", p.display()),
        });
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("wisp-agent"));
    }
    for dir in exe.ancestors().skip(1).take(4) {
        for profile in ["release", "debug"] {
            candidates.push(
                dir.join("x86_64-unknown-linux-gnu")
                    .join(profile)
                    .join("wisp-agent"),
            );
        }
    }
    let newest = candidates
        .iter()
        .filter_map(|p| Some((fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p.clone());
    newest.ok_or_else(|| InitramfsError::NoAgent {
        looked: candidates
            .iter()
            .map(|p| format!("`{}`", p.display()))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The initramfs for `kernel` with `init` (the agent binary) as `/init`,
/// built once and cached as `$kernel_dir/initramfs-<hash>.cpio`.
pub fn ensure(kernel: &Kernel, init: &Path) -> Result<PathBuf, InitramfsError> {
    // Hashing a debug agent (~14 MiB) costs more than a boot step should;
    // remember the hash per (path, size, mtime) in a small index file.
    let meta = fs::metadata(init).map_err(io_err(init))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = format!("{}\t{}\t{mtime}", init.display(), meta.len());
    let index = kernel.dir.join("initramfs.index");
    let known = fs::read_to_string(&index).unwrap_or_default();
    if let Some(hex) = known
        .lines()
        .find_map(|l| l.strip_prefix(key.as_str())?.strip_prefix('\t'))
    {
        let path = kernel.dir.join(format!("initramfs-{hex}.cpio"));
        if path.is_file() {
            return Ok(path);
        }
    }
    let data = fs::read(init).map_err(io_err(init))?;
    let mut hasher = Sha256::new();
    hasher.update(&data);
    // Bump when the layout above changes so stale archives are not reused.
    hasher.update(b"wisp-initramfs-v2");
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let path = kernel.dir.join(format!("initramfs-{hex}.cpio"));
    if !path.is_file() {
        write_archive(&path, &entries(kernel, &data)?)?;
        tracing::info!(path = %path.display(), "initramfs built");
    }
    // Best effort: a lost index entry only costs one more hash.
    let mut lines: Vec<&str> = known.lines().rev().take(15).collect();
    lines.reverse();
    let entry = format!("{key}\t{hex}");
    lines.push(&entry);
    let _ = fs::write(&index, lines.join("\n") + "\n");
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn archive_is_readable_by_cpio() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        let entries = vec![
            Entry::Dir {
                name: "etc".into(),
                mode: 0o755,
            },
            Entry::File {
                name: "etc/hello".into(),
                mode: 0o644,
                data: b"hello world\n".to_vec(),
            },
            Entry::File {
                name: "odd".into(),
                mode: 0o600,
                data: vec![7u8; 5],
            },
            Entry::Symlink {
                name: "link".into(),
                target: "etc/hello".into(),
            },
        ];
        write_archive(&path, &entries).unwrap();
        let listing = Command::new("cpio")
            .args(["-itv", "-F"])
            .arg(&path)
            .output()
            .expect("cpio (Debian package `cpio`) must be installed");
        assert!(listing.status.success(), "{listing:?}");
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.contains("etc/hello"), "{text}");
        assert!(text.contains("link -> etc/hello"), "{text}");
        let out = dir.path().join("x");
        fs::create_dir(&out).unwrap();
        let st = Command::new("cpio")
            .args(["-id", "--quiet", "-F"])
            .arg(&path)
            .current_dir(&out)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(fs::read(out.join("etc/hello")).unwrap(), b"hello world\n");
        assert_eq!(fs::read(out.join("odd")).unwrap(), vec![7u8; 5]);
    }

    #[test]
    fn ensure_caches_by_agent_content() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = Kernel {
            version: "test".into(),
            package_version: "0".into(),
            dir: dir.path().to_path_buf(),
            modules: vec![],
        };
        let agent = dir.path().join("agent");
        fs::write(&agent, b"first agent").unwrap();
        let a = ensure(&kernel, &agent).unwrap();
        assert_eq!(ensure(&kernel, &agent).unwrap(), a);
        // Same size, new content and mtime: a new archive.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&agent, b"other agent").unwrap();
        let b = ensure(&kernel, &agent).unwrap();
        assert_ne!(a, b);
        let listing = Command::new("cpio")
            .args(["-it", "--quiet", "-F"])
            .arg(&b)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.lines().any(|l| l == "init"), "{text}");
        assert!(text.lines().any(|l| l == "etc/wisp-modules"), "{text}");
    }

    #[test]
    fn absolute_and_parent_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["/etc", "a/../b", ""] {
            let e = vec![Entry::Dir {
                name: bad.into(),
                mode: 0o755,
            }];
            assert!(matches!(
                write_archive(&dir.path().join("a"), &e),
                Err(InitramfsError::BadName(_))
            ));
        }
    }
}
