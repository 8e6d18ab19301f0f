//! Images: a root filesystem built once (the standard `tiny` and `debian`) or
//! imported from an archive ([`crate::import`]), imported into a 100 GiB volume
//! and frozen as checkpoint `v0`. A sprite's disk is a fork of that checkpoint
//! (metadata only). Image records live in `$WISP_HOME/images/<name>.json`;
//! images are found by name.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use wisp_volume::{Store, VolumeError};

use crate::rootfs::{self, RootfsError};

/// Size of every sprite's root disk as the guest sees it.
pub const ROOT_DISK_SIZE: u64 = 100 << 30;
/// Debian mirror for the `debian` image.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEBIAN_SUITE: &str = "bookworm";
/// Packages of the `debian` image beyond debootstrap's minimal base.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "procps",
    "iproute2",
    "ca-certificates",
    "curl",
    "git",
    "python3",
    "sudo",
    "tzdata",
    "e2fsprogs",
    "less",
    "nano",
];

/// Errors while building or finding images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "unknown standard image `{0}`: choose `tiny` or `debian` (or `wisp image import` your own)"
    )]
    Unknown(String),
    #[error("image `{0}` is not built; run `wisp image build {0}`")]
    NotBuilt(String),
    /// No standard image and no imported image has this name.
    #[error("no image `{0}`; `wisp image list` shows the images, `wisp image import {0} FILE` makes one")]
    NotFound(String),
    #[error("bad image name `{0}`: use 1 to 63 lowercase letters, digits, `.`, `_` and `-`, starting with a letter or digit")]
    BadName(String),
    #[error("`{0}` is a standard image name; give an imported image another name")]
    Standard(String),
    #[error("image `{0}` exists; `wisp image rm {0}` removes it, or import with --force")]
    Exists(String),
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// Boxed: a volume error is large and this enum travels through `Result`s.
    #[error("volume store: {0}")]
    Volume(Box<VolumeError>),
    #[error("cannot read or write `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image record `{path}` is corrupt: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl From<VolumeError> for ImageError {
    fn from(e: VolumeError) -> Self {
        ImageError::Volume(Box::new(e))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The standard images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// busybox-static: seconds to build, used by the tests.
    Tiny,
    /// Debian 12 via debootstrap: the image users get by default.
    Debian,
}

impl ImageKind {
    pub const ALL: [ImageKind; 2] = [ImageKind::Tiny, ImageKind::Debian];

    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Tiny => "tiny",
            ImageKind::Debian => "debian",
        }
    }

    /// Size of the ext4 filesystem built on the host: the whole disk. The
    /// image is sparse (a few MiB of data for `tiny`), so nothing has to grow
    /// it at first boot; the agent still grows a root that is smaller than
    /// its disk (a fork given a bigger volume).
    fn fs_size(self) -> u64 {
        ROOT_DISK_SIZE
    }
}

impl AsRef<str> for ImageKind {
    fn as_ref(&self) -> &str {
        self.name()
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ImageKind {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        match s {
            "tiny" => Ok(ImageKind::Tiny),
            "debian" => Ok(ImageKind::Debian),
            other => Err(ImageError::Unknown(other.to_string())),
        }
    }
}

/// A built image: which volume checkpoint a new sprite forks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub volume: String,
    pub checkpoint: String,
    /// Seconds since the Unix epoch.
    pub built_at: u64,
    /// Kernel release the image was built next to (informational: the
    /// kernel boots from the initramfs, not from the image).
    pub kernel_version: Option<String>,
    /// Size of the filesystem before the first boot grows it.
    pub fs_size: u64,
    /// The URL of the image volume's durable state.
    pub url: String,
    /// Where an imported image came from; `None` for a standard image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSource>,
}

/// What an imported image was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    /// The file or folder given to `wisp image import`.
    pub file: String,
    /// `rootfs tar`, `OCI layout`, `OCI archive` or `docker save archive`.
    pub format: String,
    /// How many layers were applied.
    pub layers: usize,
}

/// Checks an image name: 1 to 63 of `a-z 0-9 . _ -`, starting with a letter or
/// digit (it names a file under `images/` and a volume). Errors: [`ImageError::BadName`].
pub fn validate_name(name: &str) -> Result<(), ImageError> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadName(name.to_string()))
    }
}

/// Where image records are kept.
pub fn images_dir(home: &Path) -> PathBuf {
    home.join("images")
}

fn record_path(home: &Path, name: &str) -> PathBuf {
    images_dir(home).join(format!("{name}.json"))
}

/// The record of image `name` (a standard [`ImageKind`] or an imported
/// image's name), if it was built or imported. A bad name is
/// [`ImageError::BadName`]; a record that does not parse, [`ImageError::Record`].
pub fn find(home: &Path, name: impl AsRef<str>) -> Result<Option<ImageInfo>, ImageError> {
    let name = name.as_ref();
    validate_name(name)?;
    let path = record_path(home, name);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| ImageError::Record { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// The record of image `name`: [`ImageError::NotBuilt`] for a standard image
/// not built yet, [`ImageError::NotFound`] for any other missing name.
pub fn get(home: &Path, name: impl AsRef<str>) -> Result<ImageInfo, ImageError> {
    let name = name.as_ref();
    find(home, name)?.ok_or_else(|| {
        if name.parse::<ImageKind>().is_ok() {
            ImageError::NotBuilt(name.to_string())
        } else {
            ImageError::NotFound(name.to_string())
        }
    })
}

/// Every built or imported image, by name.
pub fn list(home: &Path) -> Result<Vec<ImageInfo>, ImageError> {
    let dir = images_dir(home);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
            continue;
        };
        if validate_name(name).is_err() {
            continue;
        }
        if let Some(info) = find(home, name)? {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes image `name`: its record, and its volume from `store` (a deleted
/// volume keeps the data its forks need: sprites made from the image stay
/// whole). A volume that is already gone is not an error. Errors:
/// [`ImageError::NotFound`]/[`ImageError::NotBuilt`], store errors.
pub async fn remove(store: &Store, home: &Path, name: &str) -> Result<ImageInfo, ImageError> {
    let info = get(home, name)?;
    match store.delete_volume(&info.volume).await {
        Ok(()) | Err(VolumeError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let path = record_path(home, name);
    std::fs::remove_file(&path).map_err(io_err(&path))?;
    Ok(info)
}

/// Writes `info` as `images/<name>.json` (through a temporary file, so a
/// reader never sees half a record).
pub(crate) fn save_record(home: &Path, info: &ImageInfo) -> Result<(), ImageError> {
    let dir = images_dir(home);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = record_path(home, &info.name);
    let json = serde_json::to_string_pretty(info).map_err(|source| ImageError::Record {
        path: path.clone(),
        source,
    })?;
    let tmp = dir.join(format!(".{}.json.tmp", info.name));
    std::fs::write(&tmp, json).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Where [`store_filesystem`] put an image.
pub(crate) struct Stored {
    pub volume: String,
    pub checkpoint: String,
    pub url: String,
}

/// Imports the ext4 image file `fs` into a new 100 GiB volume `image-<name>`
/// (or `image-<name>-<time>` when the old one cannot be deleted yet) and
/// checkpoints it with `comment`. Progress goes to `progress` in bytes of data.
pub(crate) async fn store_filesystem(
    store: &Store,
    name: &str,
    fs: &Path,
    comment: &str,
    progress: &(dyn Fn(crate::import::ImportEvent) + Sync),
) -> Result<Stored, ImageError> {
    use crate::import::ImportEvent;
    // A rebuild cannot reuse a name that forks may still depend on, so it
    // gets a fresh one; the old volume is deleted when possible and
    // otherwise left to gc.
    let base = format!("image-{name}");
    let mut volume_name = base.clone();
    if store.volume_info(&base).await.is_ok() {
        match store.delete_volume(&base).await {
            Ok(()) => {}
            Err(e) => {
                tracing::info!(error = %e, "keeping the old image volume");
                volume_name = format!("{base}-{}", now());
            }
        }
    }
    progress(ImportEvent::Note(format!(
        "importing into volume `{volume_name}` ({} GiB)",
        ROOT_DISK_SIZE >> 30
    )));
    store.create_volume(&volume_name, ROOT_DISK_SIZE).await?;
    let volume = store.open_volume(&volume_name).await?;
    let url = volume.info().url;
    let data = rootfs::data_bytes(fs)?;
    progress(ImportEvent::Start {
        what: "volume".into(),
        total: data,
    });
    let written =
        rootfs::import_image(fs, &volume, &|done| progress(ImportEvent::Advance(done))).await;
    progress(ImportEvent::Finish);
    let written = written?;
    tracing::debug!(written, "image data written; syncing");
    volume.sync().await?;
    let checkpoint = volume.checkpoint(Some(comment.to_string())).await?;
    volume.close().await?;
    tracing::debug!(volume = %volume_name, "image volume checkpointed and closed");
    Ok(Stored {
        volume: volume_name,
        checkpoint: checkpoint.id,
        url,
    })
}

/// Builds image `kind` into `store` unless it is built already (or `force`).
/// `progress` receives human-readable lines as the build goes.
pub async fn build(
    store: &Store,
    home: &Path,
    kind: ImageKind,
    force: bool,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<ImageInfo, ImageError> {
    if !force {
        if let Some(info) = find(home, kind)? {
            // A record is only good if its volume is in this store.
            if store.volume_info(&info.volume).await.is_ok() {
                progress(&format!(
                    "image `{kind}` is already built (volume `{}`@{})",
                    info.volume, info.checkpoint
                ));
                return Ok(info);
            }
        }
    }
    let kernel_version = crate::kernel::Kernel::cached(home)
        .ok()
        .flatten()
        .map(|k| k.version);
    let work_root = home.join("cache");
    std::fs::create_dir_all(&work_root).map_err(io_err(&work_root))?;
    let work = tempfile::Builder::new()
        .prefix(&format!("image-{kind}-"))
        .tempdir_in(&work_root)
        .map_err(io_err(&work_root))?;
    let tree = work.path().join("root");
    match kind {
        ImageKind::Tiny => {
            progress("populating the busybox root");
            let t = tree.clone();
            tokio::task::spawn_blocking(move || rootfs::populate_tiny(&t))
                .await
                .map_err(|e| io_err(&tree)(std::io::Error::other(e)))??;
        }
        ImageKind::Debian => {
            let t = tree.clone();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let job = tokio::task::spawn_blocking(move || {
                populate_debian(&t, &|l| {
                    let _ = tx.send(l.to_string());
                })
            });
            while let Some(line) = rx.recv().await {
                progress(&line);
            }
            job.await
                .map_err(|e| io_err(&tree)(std::io::Error::other(e)))??;
        }
    }
    let image = work.path().join("root.ext4");
    progress(&format!(
        "building a sparse {} GiB ext4 filesystem",
        kind.fs_size() >> 30
    ));
    {
        let (t, i, size) = (tree.clone(), image.clone(), kind.fs_size());
        tokio::task::spawn_blocking(move || rootfs::make_ext4(&t, &i, size, "wisp-root"))
            .await
            .map_err(|e| io_err(&image)(std::io::Error::other(e)))??;
    }
    let note = |e: crate::import::ImportEvent| {
        if let crate::import::ImportEvent::Note(line) = e {
            progress(&line)
        }
    };
    let stored = store_filesystem(
        store,
        kind.name(),
        &image,
        &format!("wisp image {kind}"),
        &note,
    )
    .await?;
    let info = ImageInfo {
        name: kind.name().to_string(),
        volume: stored.volume,
        checkpoint: stored.checkpoint,
        built_at: now(),
        kernel_version,
        fs_size: kind.fs_size(),
        url: stored.url,
        source: None,
    };
    save_record(home, &info)?;
    progress(&format!(
        "image `{kind}` built: volume `{}`@{}",
        info.volume, info.checkpoint
    ));
    Ok(info)
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// debootstrap `bookworm` into `dir`, then the user, locale, time zone and
/// sudo set-up. Output lines go to `progress` as they come.
pub fn populate_debian(dir: &Path, progress: &dyn Fn(&str)) -> Result<(), RootfsError> {
    progress(&format!(
        "debootstrap {DEBIAN_SUITE} from {DEBIAN_MIRROR} (takes minutes)"
    ));
    let mut child = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", DEBIAN_PACKAGES.join(",")))
        .arg(DEBIAN_SUITE)
        .arg(dir)
        .arg(DEBIAN_MIRROR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RootfsError::Tool {
            tool: "debootstrap".into(),
            package: "debootstrap",
            source,
        })?;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            progress(&line);
        }
    }
    let status = child.wait().map_err(|source| RootfsError::Tool {
        tool: "debootstrap".into(),
        package: "debootstrap",
        source,
    })?;
    let stderr = err_thread.join().unwrap_or_default();
    if !status.success() {
        let log =
            std::fs::read_to_string(dir.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let keep = log.len().saturating_sub(1500);
        return Err(RootfsError::Command {
            command: "debootstrap".into(),
            status: status.to_string(),
            stderr: format!("{}{}", stderr.trim(), &log[keep..]),
        });
    }
    progress("configuring user `sprite`, locale C.UTF-8, time zone UTC");
    let script = r#"set -e
echo sprite > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 sprite\n' > /etc/hosts
echo 'LANG=C.UTF-8' > /etc/default/locale
echo 'Etc/UTC' > /etc/timezone
ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime
id sprite >/dev/null 2>&1 || useradd -m -s /bin/bash -u 1000 -G sudo sprite
passwd -d sprite >/dev/null
echo 'sprite ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/sprite
chmod 0440 /etc/sudoers.d/sprite
mkdir -p /etc/wisp/services /var/log/wisp
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
"#;
    rootfs::run(
        Command::new("chroot")
            .arg(dir)
            .args(["/bin/sh", "-c", script]),
        "coreutils",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        assert_eq!("tiny".parse::<ImageKind>().unwrap(), ImageKind::Tiny);
        assert_eq!(ImageKind::Debian.to_string(), "debian");
        assert!(matches!(
            "ubuntu".parse::<ImageKind>(),
            Err(ImageError::Unknown(_))
        ));
    }

    #[test]
    fn missing_record_is_not_built() {
        let dir = tempfile::tempdir().unwrap();
        assert!(find(dir.path(), ImageKind::Tiny).unwrap().is_none());
        assert!(matches!(
            get(dir.path(), ImageKind::Tiny),
            Err(ImageError::NotBuilt(_))
        ));
        std::fs::create_dir_all(images_dir(dir.path())).unwrap();
        std::fs::write(record_path(dir.path(), "tiny"), "{not json").unwrap();
        assert!(matches!(
            find(dir.path(), ImageKind::Tiny),
            Err(ImageError::Record { .. })
        ));
    }
}
