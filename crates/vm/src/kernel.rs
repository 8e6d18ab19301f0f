//! The guest kernel: Debian's `linux-image-cloud-amd64` dependency package,
//! downloaded with `apt-get download`, unpacked with `dpkg -x` (never
//! installed on the host) and cached under `$WISP_HOME/kernel/<version>/`
//! with the virtio modules the guest needs, in load order.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The meta-package whose single dependency is the current cloud kernel.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the guest needs on a `microvm` machine: virtio over MMIO, the block
/// device, the network device and the console (the agent channel). Their
/// dependencies are added and ordered from each module's `depends=` field.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_balloon",
];

/// Errors while fetching or reading the guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot run `{command}`: {source}; install the Debian package `{package}`")]
    Spawn {
        command: String,
        package: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error(
        "cannot find the kernel package behind `{KERNEL_META_PACKAGE}` in the apt lists; run `apt-get update`"
    )]
    NoPackage,
    #[error("kernel package `{package}` holds no `{what}`")]
    Missing { package: String, what: String },
    #[error("kernel module `{name}` depends on `{dependency}`, which the package does not have")]
    MissingDependency { name: String, dependency: String },
    #[error("kernel module dependencies form a cycle at `{0}`")]
    Cycle(String),
    #[error("no kernel cached under `{0}`; run `wisp image build tiny` (it fetches one)")]
    NotCached(PathBuf),
    #[error("cannot read or write `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel manifest `{path}` is corrupt: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A cached guest kernel: the bzImage and the modules to load, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    /// The Debian package version it came from, e.g. `6.1.192-2`.
    pub package_version: String,
    /// Folder holding `vmlinuz`, `modules/` and `kernel.json`.
    #[serde(skip)]
    pub dir: PathBuf,
    /// Module file names under `modules/`, in load order.
    pub modules: Vec<String>,
}

impl Kernel {
    /// The bzImage QEMU boots.
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// Paths of the modules, in load order.
    pub fn module_paths(&self) -> Vec<PathBuf> {
        self.modules
            .iter()
            .map(|m| self.dir.join("modules").join(m))
            .collect()
    }

    /// The newest kernel already cached under `home`, if any. Never downloads.
    pub fn cached(home: &Path) -> Result<Option<Kernel>, KernelError> {
        let root = home.join("kernel");
        let entries = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&root)(e)),
        };
        let mut versions: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("kernel.json").is_file())
            .collect();
        // Release strings sort well enough by ABI number within one series;
        // compare numerically where we can so `-100-` beats `-56-`.
        versions.sort_by_key(|p| version_key(&p.file_name().unwrap_or_default().to_string_lossy()));
        match versions.pop() {
            // A kernel cached by a wisp that loaded fewer modules is fetched again.
            Some(dir) => {
                let kernel = Self::load(&dir)?;
                Ok(kernel.has_every_module().then_some(kernel))
            }
            None => Ok(None),
        }
    }

    /// Whether every one of [`GUEST_MODULES`] is among the cached modules.
    pub fn has_every_module(&self) -> bool {
        GUEST_MODULES.iter().all(|want| {
            self.modules
                .iter()
                .any(|file| file.strip_suffix(".ko").unwrap_or(file).replace('-', "_") == *want)
        })
    }

    /// Reads the manifest of one cached kernel folder.
    pub fn load(dir: &Path) -> Result<Kernel, KernelError> {
        let path = dir.join("kernel.json");
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let mut kernel: Kernel =
            serde_json::from_str(&text).map_err(|source| KernelError::Manifest {
                path: path.clone(),
                source,
            })?;
        kernel.dir = dir.to_path_buf();
        Ok(kernel)
    }

    /// The cached kernel, fetching the current one first if none is cached.
    pub fn ensure(home: &Path) -> Result<Kernel, KernelError> {
        match Self::cached(home)? {
            Some(kernel) => Ok(kernel),
            None => Self::fetch(home),
        }
    }

    /// Resolves the current kernel package through apt and caches it, unless
    /// that exact release is cached already.
    pub fn fetch(home: &Path) -> Result<Kernel, KernelError> {
        let package = resolve_package()?;
        let release = package
            .strip_prefix("linux-image-")
            .unwrap_or(&package)
            .to_string();
        let dir = home.join("kernel").join(&release);
        if dir.join("kernel.json").is_file() {
            let cached = Self::load(&dir)?;
            if cached.has_every_module() {
                return Ok(cached);
            }
            tracing::info!(version = %release, "the cached guest kernel lacks modules wisp loads now; fetching it again");
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let root = home.join("kernel");
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        let work = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(&root)
            .map_err(io_err(&root))?;
        // apt drops privileges to `_apt` for downloads; let it write here.
        let _ = fs::set_permissions(
            work.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        );
        tracing::info!(%package, "downloading guest kernel");
        run(
            Command::new("apt-get")
                .arg("download")
                .arg(&package)
                .current_dir(work.path()),
            "apt",
        )?;
        let deb = fs::read_dir(work.path())
            .map_err(io_err(work.path()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| KernelError::Missing {
                package: package.clone(),
                what: ".deb file after apt-get download".into(),
            })?;
        let package_version = deb
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('_').nth(1))
            .unwrap_or("unknown")
            .to_string();
        let unpacked = work.path().join("root");
        run(
            Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked),
            "dpkg",
        )?;
        let staging = work.path().join("out");
        let modules_out = staging.join("modules");
        fs::create_dir_all(&modules_out).map_err(io_err(&modules_out))?;
        let vmlinuz = unpacked.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.is_file() {
            return Err(KernelError::Missing {
                package,
                what: format!("boot/vmlinuz-{release}"),
            });
        }
        let target = staging.join("vmlinuz");
        fs::copy(&vmlinuz, &target).map_err(io_err(&target))?;
        let module_root = unpacked.join("lib/modules").join(&release);
        let available = index_modules(&module_root)?;
        let order = load_order(&available, GUEST_MODULES)?;
        let mut files = Vec::new();
        for name in &order {
            let src = &available[name].path;
            let file = src
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("{name}.ko"));
            let dst = modules_out.join(&file);
            fs::copy(src, &dst).map_err(io_err(&dst))?;
            files.push(file);
        }
        let kernel = Kernel {
            version: release.clone(),
            package_version,
            dir: dir.clone(),
            modules: files,
        };
        let manifest = staging.join("kernel.json");
        let json =
            serde_json::to_string_pretty(&kernel).map_err(|source| KernelError::Manifest {
                path: manifest.clone(),
                source,
            })?;
        fs::write(&manifest, json).map_err(io_err(&manifest))?;
        // Publish atomically: a concurrent fetch of the same release loses the
        // rename race harmlessly and uses the winner's copy.
        match fs::rename(&staging, &dir) {
            Ok(()) => {}
            Err(_) if dir.join("kernel.json").is_file() => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        tracing::info!(version = %release, modules = kernel.modules.len(), "guest kernel cached");
        Self::load(&dir)
    }
}

/// Sort key for kernel release strings: numbers compare as numbers.
fn version_key(s: &str) -> Vec<(u64, String)> {
    s.split(['.', '-'])
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (0, part.to_string()),
        })
        .collect()
}

/// Runs a command, mapping failure to a [`KernelError`] with its stderr.
fn run(cmd: &mut Command, package: &'static str) -> Result<String, KernelError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| KernelError::Spawn {
        command: command.clone(),
        package,
        source,
    })?;
    if !out.status.success() {
        return Err(KernelError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versioned package `linux-image-cloud-amd64` currently depends on.
pub fn resolve_package() -> Result<String, KernelError> {
    let out = run(
        Command::new("apt-cache")
            .arg("depends")
            .arg(KERNEL_META_PACKAGE),
        "apt",
    )?;
    parse_depends(&out).ok_or(KernelError::NoPackage)
}

fn parse_depends(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|p| p.trim().to_string())
        .find(|p| p.starts_with("linux-image-") && p != KERNEL_META_PACKAGE)
}

/// One module found in the package.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    pub path: PathBuf,
    pub depends: Vec<String>,
}

/// Every `.ko` under `root`, by module name (file stem, `-` read as `_`).
fn index_modules(root: &Path) -> Result<BTreeMap<String, ModuleInfo>, KernelError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                // Compressed modules would need decompressing before insmod;
                // the Debian 6.1 cloud kernel ships plain `.ko` files.
                if let Some(stem) = name.strip_suffix(".ko") {
                    let data = fs::read(&path).map_err(io_err(&path))?;
                    out.insert(
                        stem.replace('-', "_"),
                        ModuleInfo {
                            depends: module_depends(&data),
                            path,
                        },
                    );
                }
            }
        }
    }
    Ok(out)
}

/// The `depends=` entry of a module's `.modinfo` section: NUL-separated
/// `key=value` strings, so a scan for `\0depends=` finds it.
pub fn module_depends(data: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = data.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &data[start + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(|s| s.trim().replace('-', "_"))
        .filter(|s| !s.is_empty())
        .collect()
}

/// `wanted` plus their dependencies, each after everything it depends on.
pub fn load_order(
    available: &BTreeMap<String, ModuleInfo>,
    wanted: &[&str],
) -> Result<Vec<String>, KernelError> {
    fn visit(
        name: &str,
        available: &BTreeMap<String, ModuleInfo>,
        done: &mut BTreeSet<String>,
        active: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), KernelError> {
        if done.contains(name) {
            return Ok(());
        }
        if !active.insert(name.to_string()) {
            return Err(KernelError::Cycle(name.to_string()));
        }
        let info = available
            .get(name)
            .ok_or_else(|| KernelError::MissingDependency {
                name: name.to_string(),
                dependency: name.to_string(),
            })?;
        for dep in &info.depends {
            if !available.contains_key(dep) {
                return Err(KernelError::MissingDependency {
                    name: name.to_string(),
                    dependency: dep.clone(),
                });
            }
            visit(dep, available, done, active, out)?;
        }
        active.remove(name);
        done.insert(name.to_string());
        out.push(name.to_string());
        Ok(())
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    let mut active = BTreeSet::new();
    for name in wanted {
        visit(name, available, &mut done, &mut active, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(deps: &[&str]) -> ModuleInfo {
        ModuleInfo {
            path: PathBuf::new(),
            depends: deps.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn depends_is_read_from_modinfo_strings() {
        let blob = b"\x7fELF junk\0license=GPL\0depends=virtio_ring,virtio\0retpoline=Y\0";
        assert_eq!(module_depends(blob), vec!["virtio_ring", "virtio"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"no modinfo here").is_empty());
    }

    #[test]
    fn order_puts_dependencies_first() {
        let mut m = BTreeMap::new();
        m.insert("virtio_ring".into(), info(&[]));
        m.insert("virtio".into(), info(&["virtio_ring"]));
        m.insert("failover".into(), info(&[]));
        m.insert("net_failover".into(), info(&["failover"]));
        m.insert(
            "virtio_net".into(),
            info(&["virtio_ring", "virtio", "net_failover"]),
        );
        m.insert("virtio_blk".into(), info(&["virtio", "virtio_ring"]));
        let order = load_order(&m, &["virtio_blk", "virtio_net"]).unwrap();
        assert_eq!(
            order,
            vec![
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
    }

    #[test]
    fn missing_dependency_and_cycle_are_errors() {
        let mut m = BTreeMap::new();
        m.insert("a".into(), info(&["b"]));
        assert!(matches!(
            load_order(&m, &["a"]),
            Err(KernelError::MissingDependency { .. })
        ));
        m.insert("b".into(), info(&["a"]));
        assert!(matches!(load_order(&m, &["a"]), Err(KernelError::Cycle(_))));
    }

    #[test]
    fn apt_depends_output_is_parsed() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n"), None);
    }

    #[test]
    fn release_numbers_sort_numerically() {
        assert!(version_key("6.1.0-100-cloud-amd64") > version_key("6.1.0-56-cloud-amd64"));
    }
}
