//! `wisp image import`: a user's root filesystem (a tar archive, an OCI image layout as a
//! folder or an archive, or a `docker save` archive: [`crate::archive`] finds the layers)
//! turned into an image like the standard ones, without root privileges or loop mounts: the layers are applied in order
//! to a folder under `$WISP_HOME/cache` ([`crate::layer`]), `mke2fs -d` makes the ext4
//! filesystem from it, one `debugfs -w -f` run sets what an unprivileged extraction
//! cannot (owners, modes, device nodes, extended attributes), and the filesystem is
//! imported into a 100 GiB volume and checkpointed.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use wisp_volume::Store;

use crate::archive::{decompress, open_layers, sniff, Blob, Compression, Format};
use crate::image::{self, ImageError, ImageInfo, ImageKind, ImageSource, ROOT_DISK_SIZE};
use crate::layer::{Fixup, Kind, LayerError, Tree};
use crate::rootfs;

/// Errors of an import that are about its input.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The archive is damaged, cut short or not what it claims to be.
    #[error("`{file}` is corrupt: {what}")]
    Corrupt { file: PathBuf, what: String },
    /// The input is readable but not a format wisp imports.
    #[error("`{file}`: {what}")]
    Unsupported { file: PathBuf, what: String },
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot build the folder tree: {0}")]
    Tree(LayerError),
    /// `debugfs` refused some of the fixes.
    #[error("debugfs could not set owners, modes, devices or attributes: {0}")]
    Debugfs(String),
}

/// What an import reports as it goes. `Start` opens a step measured in bytes,
/// `Advance` gives the bytes done so far in it, `Finish` closes it; `Note` is a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportEvent {
    Note(String),
    Start { what: String, total: u64 },
    Advance(u64),
    Finish,
}

/// Imports `file` as image `name` into `store` and records it in `home`. An existing
/// image of that name is replaced only with `force` (its volume is deleted; forks of
/// it keep the data they need). Standard image names (`tiny`, `debian`) are refused.
pub async fn import(
    store: &Store,
    home: &Path,
    name: &str,
    file: &Path,
    force: bool,
    progress: &(dyn Fn(ImportEvent) + Sync),
) -> Result<ImageInfo, ImageError> {
    image::validate_name(name)?;
    if name.parse::<ImageKind>().is_ok() {
        return Err(ImageError::Standard(name.to_string()));
    }
    if !force && image::find(home, name)?.is_some() {
        return Err(ImageError::Exists(name.to_string()));
    }
    let work_root = scratch_root(home, file);
    tracing::debug!(scratch = %work_root.display(), "import scratch folder");
    std::fs::create_dir_all(&work_root).map_err(|source| ImageError::Io {
        path: work_root.clone(),
        source,
    })?;
    let work = tempfile::Builder::new()
        .prefix(&format!("wisp-import-{name}-"))
        .tempdir_in(&work_root)
        .map_err(|source| ImageError::Io {
            path: work_root.clone(),
            source,
        })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ImportEvent>();
    let (dir, input) = (work.path().to_path_buf(), file.to_path_buf());
    let job = tokio::task::spawn_blocking(move || {
        let send = |e: ImportEvent| {
            let _ = tx.send(e);
        };
        build_filesystem(&input, &dir, &send)
    });
    while let Some(event) = rx.recv().await {
        progress(event);
    }
    let source = job.await.map_err(|e| ImageError::Io {
        path: file.to_path_buf(),
        source: io::Error::other(e),
    })??;
    let stored = image::store_filesystem(
        store,
        name,
        &work.path().join("root.ext4"),
        &format!("wisp image import {name}"),
        progress,
    )
    .await?;
    let info = ImageInfo {
        name: name.to_string(),
        volume: stored.volume,
        checkpoint: stored.checkpoint,
        built_at: image::now(),
        kernel_version: None,
        fs_size: ROOT_DISK_SIZE,
        url: stored.url,
        source: Some(source),
    };
    image::save_record(home, &info)?;
    progress(ImportEvent::Note(format!(
        "image `{name}` imported: volume `{}`@{}",
        info.volume, info.checkpoint
    )));
    Ok(info)
}

/// Where an import's scratch folder (the tree, then the ext4 file) goes:
/// `$WISP_IMPORT_SCRATCH` when set; else the tmpfs `/dev/shm` when both it and the
/// available memory hold three times the estimated tree (the input's size, four times
/// that when compressed), because writing and reading the tree there is several times
/// faster than on a disk filesystem; else `$WISP_HOME/cache`.
fn scratch_root(home: &Path, file: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("WISP_IMPORT_SCRATCH") {
        return PathBuf::from(dir);
    }
    let fallback = home.join("cache");
    let input = input_bytes(file);
    let compressed = File::open(file)
        .and_then(|mut f| {
            let mut head = [0u8; 8];
            let n = f.read(&mut head)?;
            Ok(!matches!(sniff(&head[..n]), Compression::None))
        })
        .unwrap_or(true);
    let need = input.saturating_mul(if compressed { 12 } else { 3 });
    let shm = Path::new("/dev/shm");
    let shm_free = free_bytes(shm).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    if shm_free >= need && mem >= need {
        shm.to_path_buf()
    } else {
        fallback
    }
}

/// Bytes of a file, or of every file under a folder.
fn input_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| input_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// Free bytes of the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills a plain struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The blocking part: layers into `work/root`, `mke2fs -d` into `work/root.ext4`,
/// `debugfs` fixes.
fn build_filesystem(
    file: &Path,
    work: &Path,
    progress: &dyn Fn(ImportEvent),
) -> Result<ImageSource, ImageError> {
    let t = std::time::Instant::now();
    let (format, blobs) = open_layers(file, work)?;
    progress(ImportEvent::Note(format!(
        "{}: {} layer{}",
        format.name(),
        blobs.len(),
        if blobs.len() == 1 { "" } else { "s" }
    )));
    let mut tree = Tree::new(&work.join("root")).map_err(ImportError::Tree)?;
    let count = blobs.len();
    for (i, blob) in blobs.iter().enumerate() {
        let label = if format == Format::RootfsTar {
            "the tar stream".to_string()
        } else if count == 1 {
            blob.name.clone()
        } else {
            format!("layer {} of {count} ({})", i + 1, blob.name)
        };
        progress(ImportEvent::Start {
            what: format!("layer {}/{count}", i + 1),
            total: blob.len,
        });
        apply_blob(&mut tree, blob, &label, file, progress)?;
        progress(ImportEvent::Finish);
    }
    tracing::debug!(took = ?t.elapsed(), "layers applied");
    tree.add_sprite_dirs().map_err(ImportError::Tree)?;
    tree.finish();
    let fixups = tree.fixups().map_err(ImportError::Tree)?;
    let image = work.join("root.ext4");
    progress(ImportEvent::Note(format!(
        "building a sparse {} GiB ext4 filesystem ({} owner, mode, device or xattr fixes)",
        ROOT_DISK_SIZE >> 30,
        fixups.len()
    )));
    rootfs::make_ext4(tree.root(), &image, ROOT_DISK_SIZE, "wisp-root")?;
    tracing::debug!(took = ?t.elapsed(), "mke2fs done");
    // The tree is in the filesystem now: free its space before the volume copy.
    let _ = std::fs::remove_dir_all(tree.root());
    run_debugfs(&image, &fixups, work)?;
    tracing::debug!(took = ?t.elapsed(), "debugfs done");
    Ok(ImageSource {
        file: file.display().to_string(),
        format: format.name().to_string(),
        layers: count,
    })
}

pub(crate) fn corrupt(file: &Path, what: impl Into<String>) -> ImportError {
    ImportError::Corrupt {
        file: file.to_path_buf(),
        what: what.into(),
    }
}

pub(crate) fn read_err(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn apply_blob(
    tree: &mut Tree,
    blob: &Blob,
    label: &str,
    file: &Path,
    progress: &dyn Fn(ImportEvent),
) -> Result<(), ImportError> {
    let mut f = File::open(&blob.path).map_err(read_err(&blob.path))?;
    f.seek(SeekFrom::Start(blob.offset))
        .map_err(read_err(&blob.path))?;
    let counted = Counting {
        inner: f.take(blob.len),
        done: 0,
        reported: 0,
        hash: blob.digest.as_ref().map(|_| Sha256::new()),
        progress,
    };
    let mut reader = BufReader::with_capacity(1 << 20, counted);
    let stream = decompress(&mut reader).map_err(|e| corrupt(file, format!("{label}: {e}")))?;
    tree.apply(stream, label).map_err(|e| match e {
        LayerError::Corrupt { layer, what } => corrupt(file, format!("{layer}: {what}")),
        e => ImportError::Tree(e),
    })?;
    // Whatever follows the tar's end blocks (padding) belongs to the digest too.
    io::copy(&mut reader, &mut io::sink()).map_err(|e| corrupt(file, format!("{label}: {e}")))?;
    let counted = reader.into_inner();
    if let (Some(want), Some(hash)) = (&blob.digest, counted.hash) {
        let got = format!("sha256:{:x}", hash.finalize());
        if &got != want {
            return Err(corrupt(
                file,
                format!("{label}: its content has digest {got}, not {want}"),
            ));
        }
    }
    Ok(())
}

/// Counts (and hashes) the bytes read, reporting progress every MiB.
struct Counting<'a, R> {
    inner: R,
    done: u64,
    reported: u64,
    hash: Option<Sha256>,
    progress: &'a dyn Fn(ImportEvent),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hash {
            h.update(&buf[..n]);
        }
        self.done += n as u64;
        if self.done - self.reported >= 1 << 20 || n == 0 {
            self.reported = self.done;
            (self.progress)(ImportEvent::Advance(self.done));
        }
        Ok(n)
    }
}

/// `"path"` for debugfs, which splits its arguments on spaces and reads `""` quotes.
fn quote(path: &str) -> Result<String, ImportError> {
    if path.contains('"') || path.contains('\n') {
        return Err(ImportError::Debugfs(format!(
            "cannot name `{path}` in a debugfs script (a quote or a newline in it)"
        )));
    }
    Ok(format!("\"{path}\""))
}

/// Applies `fixups` to the ext4 image with one `debugfs -w -f` run. debugfs answers 0
/// even when a command fails, so anything on its stderr but its banner is an error.
fn run_debugfs(image: &Path, fixups: &[Fixup], work: &Path) -> Result<(), ImageError> {
    if fixups.is_empty() {
        return Ok(());
    }
    let script_path = work.join("fixups.debugfs");
    let mut script = String::new();
    let mut values = 0usize;
    for f in fixups {
        let line = match f {
            Fixup::Mknod { dir, name, kind } => {
                let spec = match kind {
                    Kind::Char(ma, mi) => format!("c {ma} {mi}"),
                    Kind::Block(ma, mi) => format!("b {ma} {mi}"),
                    _ => "p".to_string(),
                };
                format!("cd {}\nmknod {} {spec}\ncd /", quote(dir)?, quote(name)?)
            }
            Fixup::Uid(p, uid) => format!("sif {} uid {uid}", quote(p)?),
            Fixup::Gid(p, gid) => format!("sif {} gid {gid}", quote(p)?),
            Fixup::Mode(p, mode) => format!("sif {} mode 0{mode:o}", quote(p)?),
            Fixup::Xattr(p, name, value) => {
                let vf = work.join(format!("xattr-{values}"));
                values += 1;
                std::fs::write(&vf, value).map_err(|source| ImageError::Io {
                    path: vf.clone(),
                    source,
                })?;
                format!(
                    "ea_set -f {} {} {}",
                    quote(&vf.display().to_string())?,
                    quote(p)?,
                    quote(name)?
                )
            }
        };
        script.push_str(&line);
        script.push('\n');
    }
    let mut f = File::create(&script_path).map_err(|source| ImageError::Io {
        path: script_path.clone(),
        source,
    })?;
    f.write_all(script.as_bytes())
        .map_err(|source| ImageError::Io {
            path: script_path.clone(),
            source,
        })?;
    drop(f);
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(image)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| rootfs::RootfsError::Tool {
            tool: "debugfs".into(),
            package: "e2fsprogs",
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !errors.is_empty() {
        let shown = errors
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ImportError::Debugfs(format!(
            "{} error(s), first: {shown} ({})",
            errors.len(),
            out.status
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::tests::{entry, tar_of};
    use tar::EntryType as T;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn sha(data: &[u8]) -> String {
        format!("{:x}", Sha256::digest(data))
    }

    /// `debugfs -R CMD image`'s output.
    fn debugfs(image: &Path, cmd: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", cmd])
            .arg(image)
            .output()
            .expect("debugfs (Debian package e2fsprogs)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn layers() -> (Vec<u8>, Vec<u8>) {
        let mut owned = entry("home/app/", T::Directory, b"");
        owned.uid = 1000;
        let mut tagged = entry("bin/ping", T::Regular, b"ping");
        tagged.xattr = Some(("user.wisp", b"kept"));
        let lower = tar_of(&[
            entry("bin/", T::Directory, b""),
            entry("bin/gone", T::Regular, b"x"),
            owned,
            tagged,
            entry("dev/null", T::Char, b""),
        ]);
        let upper = tar_of(&[
            entry("bin/.wh.gone", T::Regular, b""),
            entry("bin/new", T::Regular, b"new"),
        ]);
        (lower, upper)
    }

    fn check_image(image: &Path) {
        let root = debugfs(image, "ls -l /bin");
        assert!(root.contains(" new") && !root.contains(" gone"), "{root}");
        let app = debugfs(image, "stat /home/app");
        assert!(app.contains("User:  1000   Group:  1000"), "{app}");
        let null = debugfs(image, "stat /dev/null");
        assert!(null.contains("character special"), "{null}");
        let ea = debugfs(image, "ea_get /bin/ping user.wisp");
        assert!(ea.contains("kept"), "{ea}");
        assert!(debugfs(image, "ls -l /.sprite").contains("bin"));
    }

    #[test]
    fn docker_save_archive_builds_an_ext4_with_owners_and_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = layers();
        let manifest =
            br#"[{"Config":"c.json","RepoTags":["t:1"],"Layers":["aa/layer.tar","bb/layer.tar"]}]"#;
        let archive = tar_of(&[
            entry("aa/layer.tar", T::Regular, &lower),
            entry("bb/layer.tar", T::Regular, &upper),
            entry("manifest.json", T::Regular, manifest),
        ]);
        let file = dir.path().join("image.tar");
        std::fs::write(&file, &archive).unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let source = build_filesystem(&file, &work, &|_| {}).unwrap();
        assert_eq!(
            (source.format.as_str(), source.layers),
            ("docker save archive", 2)
        );
        check_image(&work.join("root.ext4"));
    }

    #[test]
    fn oci_layout_checks_digests() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = layers();
        let (lower, upper) = (gzip(&lower), upper);
        let layout = dir.path().join("layout");
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join(sha(&lower)), &lower).unwrap();
        std::fs::write(blobs.join(sha(&upper)), &upper).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", sha(&lower)), "size": lower.len()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha(&upper)), "size": upper.len()},
            ]
        })
        .to_string();
        std::fs::write(blobs.join(sha(manifest.as_bytes())), &manifest).unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha(manifest.as_bytes())), "size": manifest.len(),
             "platform": {"os": "linux", "architecture": "amd64"}}]});
        std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        build_filesystem(&layout, &work, &|_| {}).unwrap();
        check_image(&work.join("root.ext4"));
        // A blob whose file data changed (same size, valid tar) is caught by its digest.
        let mut bad = upper.clone();
        let at = bad.windows(3).rposition(|w| w == b"new").unwrap();
        bad[at] = b'N';
        std::fs::write(blobs.join(sha(&upper)), &bad).unwrap();
        let work2 = dir.path().join("work2");
        std::fs::create_dir_all(&work2).unwrap();
        let err = build_filesystem(&layout, &work2, &|_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is corrupt") && err.contains("digest"),
            "{err}"
        );
    }

    #[test]
    fn zstd_oci_archive_and_shared_docker_layers() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = layers();
        // A tar of an OCI layout, compressed with zstd: unpacked, then read in place.
        let manifest = serde_json::json!({"schemaVersion": 2, "layers": [
            {"digest": format!("sha256:{}", sha(&lower)), "size": lower.len()},
            {"digest": format!("sha256:{}", sha(&upper)), "size": upper.len()},
        ]})
        .to_string();
        let index = serde_json::json!({"manifests": [
            {"digest": format!("sha256:{}", sha(manifest.as_bytes()))}]})
        .to_string();
        let names = [
            format!("blobs/sha256/{}", sha(&lower)),
            format!("blobs/sha256/{}", sha(&upper)),
            format!("blobs/sha256/{}", sha(manifest.as_bytes())),
        ];
        let archive = tar_of(&[
            entry(
                "oci-layout",
                T::Regular,
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            ),
            entry("blobs/sha256/", T::Directory, b""),
            entry(&names[0], T::Regular, &lower),
            entry(&names[1], T::Regular, &upper),
            entry(&names[2], T::Regular, manifest.as_bytes()),
            entry("index.json", T::Regular, index.as_bytes()),
        ]);
        let file = dir.path().join("oci.tar.zst");
        std::fs::write(&file, zstd::encode_all(&archive[..], 1).unwrap()).unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let source = build_filesystem(&file, &work, &|_| {}).unwrap();
        assert_eq!((source.format.as_str(), source.layers), ("OCI archive", 2));
        check_image(&work.join("root.ext4"));
        // docker save writes a layer shared with another image as a symlink to it.
        let manifest = br#"[{"Layers":["aa/layer.tar","bb/layer.tar","cc/layer.tar"]}]"#;
        let archive = tar_of(&[
            entry("aa/layer.tar", T::Regular, &lower),
            entry("bb/layer.tar", T::Regular, &upper),
            entry("cc/layer.tar", T::Symlink, b"../aa/layer.tar"),
            entry("manifest.json", T::Regular, manifest),
        ]);
        let file = dir.path().join("docker.tar");
        std::fs::write(&file, &archive).unwrap();
        let work = dir.path().join("work2");
        std::fs::create_dir_all(&work).unwrap();
        let source = build_filesystem(&file, &work, &|_| {}).unwrap();
        assert_eq!(source.layers, 3);
        // The third layer (the first again) brings back what the second whited out.
        let bin = debugfs(&work.join("root.ext4"), "ls -l /bin");
        assert!(bin.contains(" gone") && bin.contains(" new"), "{bin}");
    }

    #[test]
    fn truncated_and_bogus_archives_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, _) = layers();
        let gz = gzip(&lower);
        let cut = dir.path().join("root.tar.gz");
        std::fs::write(&cut, &gz[..gz.len() / 2]).unwrap();
        let empty = dir.path().join("empty.tar");
        std::fs::write(&empty, b"").unwrap();
        let xz = dir.path().join("root.tar.xz");
        std::fs::write(&xz, b"\xfd7zXZ\x00rest").unwrap();
        let folder = dir.path().join("folder");
        std::fs::create_dir_all(&folder).unwrap();
        for (file, want) in [
            (&cut, "is corrupt"),
            (&empty, "the file is empty"),
            (&xz, "xz compression is not supported"),
            (&folder, "not an OCI image layout"),
        ] {
            let work = tempfile::tempdir().unwrap();
            let err = build_filesystem(file, work.path(), &|_| {})
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`{}`", file.display())) && err.contains(want),
                "{err}"
            );
        }
    }
}
