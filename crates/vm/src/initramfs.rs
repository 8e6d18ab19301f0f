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
    #[error("cannot read the guest agent WISP_AGENT=`{}`: {source}", path.display())]
    NoAgent {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The kernel runs the agent as `/init` with no libc and no loader: a dynamically
    /// linked one ends in "Failed to execute /init (error -2)" and a kernel panic.
    #[error(
        "the guest agent {origin} is not a static x86-64 executable ({why}); the guest can \
         only run a static one: unset WISP_AGENT to use the agent built into wisp, or build \
         one with `make agent` (cargo build --release -p wisp-agent --target \
         x86_64-unknown-linux-gnu with RUSTFLAGS=\"-C target-feature=+crt-static\")"
    )]
    NotStatic { origin: String, why: String },
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

/// The agent built into this binary by `build.rs`: static, for x86-64.
static EMBEDDED_AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wisp-agent"));

/// The guest agent a VM boots with: its bytes and where they came from.
#[derive(Debug, Clone)]
pub struct AgentBinary {
    /// `built into wisp` or `WISP_AGENT=<path>`, for messages.
    pub origin: String,
    pub bytes: std::borrow::Cow<'static, [u8]>,
}

impl AgentBinary {
    /// Writes the agent to `path` as an executable (for running it on the host in
    /// channel mode, as the agent tests do).
    pub fn write_to(&self, path: &Path) -> Result<(), InitramfsError> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, &self.bytes).map_err(io_err(&tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    }
}

/// The guest agent: the static one built into wisp, or `$WISP_AGENT` (for agent
/// development), which must be a static x86-64 executable too.
pub fn find_agent() -> Result<AgentBinary, InitramfsError> {
    let agent = match std::env::var_os("WISP_AGENT") {
        Some(p) => {
            let path = PathBuf::from(p);
            let bytes = fs::read(&path).map_err(|source| InitramfsError::NoAgent {
                path: path.clone(),
                source,
            })?;
            AgentBinary {
                origin: format!("WISP_AGENT=`{}`", path.display()),
                bytes: bytes.into(),
            }
        }
        None => AgentBinary {
            origin: "built into wisp".into(),
            bytes: EMBEDDED_AGENT.into(),
        },
    };
    check_static(&agent.bytes).map_err(|why| InitramfsError::NotStatic {
        origin: agent.origin.clone(),
        why,
    })?;
    Ok(agent)
}

/// Whether `bytes` are an x86-64 ELF executable that needs no program interpreter
/// (no `PT_INTERP`: statically linked, static-pie included); `Err` says why not.
pub fn check_static(bytes: &[u8]) -> Result<(), String> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    use object::{Object, ObjectKind};
    // The ELF reader wants its headers aligned, which embedded or read bytes need not be.
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    let aligned = &mut as_bytes_mut(&mut words)[..bytes.len()];
    aligned.copy_from_slice(bytes);
    let bytes: &[u8] = aligned;
    let elf = ElfFile64::<object::Endianness>::parse(bytes)
        .map_err(|e| format!("not a 64-bit ELF file: {e}"))?;
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(format!("built for {:?}", elf.architecture()));
    }
    if !matches!(elf.kind(), ObjectKind::Executable | ObjectKind::Dynamic) {
        return Err(format!("a {:?} file, not an executable", elf.kind()));
    }
    let endian = elf.endian();
    let interp = elf
        .elf_program_headers()
        .iter()
        .find(|ph| ph.p_type(endian) == object::elf::PT_INTERP);
    if let Some(ph) = interp {
        let loader = ph
            .data(endian, bytes)
            .ok()
            .map(|d| {
                String::from_utf8_lossy(d)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .unwrap_or_default();
        return Err(format!("dynamically linked, needs the loader `{loader}`"));
    }
    Ok(())
}

/// `words` as bytes.
fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    let len = std::mem::size_of_val(words);
    // SAFETY: u64 has no padding and every byte pattern is a valid u8; the slice covers
    // exactly the words' memory, borrowed mutably for as long as the result.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

/// The initramfs for `kernel` with `agent` as `/init`, built once and cached as
/// `$kernel_dir/initramfs-<hash>.cpio` (the hash of the agent and the layout).
pub fn ensure(kernel: &Kernel, agent: &AgentBinary) -> Result<PathBuf, InitramfsError> {
    let data: &[u8] = &agent.bytes;
    let mut hasher = Sha256::new();
    hasher.update(data);
    // Bump when the layout above changes so stale archives are not reused.
    hasher.update(b"wisp-initramfs-v2");
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let path = kernel.dir.join(format!("initramfs-{hex}.cpio"));
    if !path.is_file() {
        write_archive(&path, &entries(kernel, data)?)?;
        tracing::info!(path = %path.display(), agent = %agent.origin, "initramfs built");
    }
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
        let agent = |bytes: &'static [u8]| AgentBinary {
            origin: "test".into(),
            bytes: bytes.into(),
        };
        let a = ensure(&kernel, &agent(b"first agent")).unwrap();
        assert_eq!(ensure(&kernel, &agent(b"first agent")).unwrap(), a);
        let b = ensure(&kernel, &agent(b"other agent")).unwrap();
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

    /// The agent built into wisp is static; a dynamically linked executable (any
    /// host program, like the agent `cargo build` makes without `+crt-static`) is
    /// refused with the reason and how to build the right one.
    #[test]
    fn only_static_agents_are_accepted() {
        assert_eq!(check_static(EMBEDDED_AGENT), Ok(()));
        let dynamic = fs::read("/bin/sh").unwrap();
        let why = check_static(&dynamic).unwrap_err();
        assert!(why.contains("dynamically linked"), "{why}");
        assert!(why.contains("ld-linux"), "{why}");
        assert!(check_static(b"#!/bin/sh\n")
            .unwrap_err()
            .contains("not a 64-bit ELF"));
        let err = InitramfsError::NotStatic {
            origin: "WISP_AGENT=`x`".into(),
            why,
        }
        .to_string();
        assert!(
            err.contains("make agent") && err.contains("crt-static"),
            "{err}"
        );
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
