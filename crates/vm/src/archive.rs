//! The inputs `wisp image import` reads, and the layers in them: a root filesystem tar
//! (plain, gzip or zstd), an OCI image layout (a folder or a tar of one: `index.json`,
//! manifests, `blobs/<alg>/<hex>`) or a `docker save` archive (`manifest.json` and layer
//! tars). Members of an uncompressed archive are read in place (offset and length), so a
//! layer is never copied out before it is applied.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::import::{corrupt, read_err, ImportError};

/// The formats [`crate::import::import`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One tar stream holding the root (plain, gzip or zstd).
    RootfsTar,
    /// An OCI image layout folder (`oci-layout`, `index.json`, `blobs/`).
    OciLayout,
    /// A tar of an OCI image layout.
    OciArchive,
    /// `docker save`: `manifest.json` and layer tars.
    DockerArchive,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::RootfsTar => "rootfs tar",
            Format::OciLayout => "OCI layout",
            Format::OciArchive => "OCI archive",
            Format::DockerArchive => "docker save archive",
        }
    }
}

/// One layer's bytes: `len` bytes at `offset` of `path` (a blob file, or a member
/// of an uncompressed archive), possibly compressed.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// `sha256:<hex>` when the format names the layer by its digest.
    pub(crate) digest: Option<String>,
}

/// The stream `r` as a tar stream: gzip and zstd are decompressed, by their magic.
pub(crate) fn decompress<'a, R: io::BufRead + 'a>(r: &'a mut R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?.to_vec();
    Ok(match sniff(&head) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::None => Box::new(r),
        Compression::Other(what) => {
            return Err(io::Error::other(format!(
                "{what} compression is not supported; decompress it first, or use gzip or zstd"
            )))
        }
    })
}

pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
    Other(&'static str),
}

pub(crate) fn sniff(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Other("xz"),
        [b'B', b'Z', b'h', ..] => Compression::Other("bzip2"),
        _ => Compression::None,
    }
}

/// Finds the format of `file` and its layers, in order (lowest first).
pub(crate) fn open_layers(file: &Path, work: &Path) -> Result<(Format, Vec<Blob>), ImportError> {
    let meta = std::fs::metadata(file).map_err(read_err(file))?;
    if meta.is_dir() {
        if !file.join("index.json").is_file() {
            return Err(ImportError::Unsupported {
                file: file.to_path_buf(),
                what: "a folder, but not an OCI image layout (no index.json)".into(),
            });
        }
        let layers = oci_layers(file, &|p| {
            let path = file.join(p);
            let len = std::fs::metadata(&path).map_err(read_err(&path))?.len();
            Ok(Some((path, 0, len)))
        })?;
        return Ok((Format::OciLayout, layers));
    }
    if meta.len() == 0 {
        return Err(corrupt(file, "the file is empty"));
    }
    let mut f = File::open(file).map_err(read_err(file))?;
    let mut head = [0u8; 8];
    let n = f.read(&mut head).map_err(read_err(file))?;
    let whole = Blob {
        name: file.display().to_string(),
        path: file.to_path_buf(),
        offset: 0,
        len: meta.len(),
        digest: None,
    };
    let archive = match sniff(&head[..n]) {
        Compression::None => file.to_path_buf(),
        Compression::Other(what) => {
            return Err(ImportError::Unsupported {
                file: file.to_path_buf(),
                what: format!("{what} compression is not supported; use gzip, zstd or none"),
            })
        }
        // Compressed: a root filesystem is streamed once; an image archive (whose
        // first member is a blob, a layer folder or a layout file) is unpacked to
        // a plain tar first, to be read member by member.
        _ => {
            if !first_member_is_image_part(file)? {
                return Ok((Format::RootfsTar, vec![whole]));
            }
            let plain = work.join("archive.tar");
            let mut out = File::create(&plain).map_err(read_err(&plain))?;
            let mut r = BufReader::new(File::open(file).map_err(read_err(file))?);
            let mut stream = decompress(&mut r).map_err(|e| corrupt(file, e.to_string()))?;
            io::copy(&mut stream, &mut out).map_err(|e| corrupt(file, e.to_string()))?;
            plain
        }
    };
    let members = index_tar(&archive).map_err(|e| corrupt(file, e))?;
    let lookup = |p: &str| Ok(members.get(p).map(|&(o, l)| (archive.clone(), o, l)));
    if members.contains_key("manifest.json") {
        Ok((Format::DockerArchive, docker_layers(file, &lookup)?))
    } else if members.contains_key("index.json") {
        Ok((Format::OciArchive, oci_layers(file, &lookup)?))
    } else {
        Ok((Format::RootfsTar, vec![whole]))
    }
}

/// Where a member of an image is: `(file, offset, length)`, or `None` if absent.
type Lookup<'a> = dyn Fn(&str) -> Result<Option<(PathBuf, u64, u64)>, ImportError> + 'a;

fn first_member_is_image_part(file: &Path) -> Result<bool, ImportError> {
    let mut r = BufReader::new(File::open(file).map_err(read_err(file))?);
    let stream = decompress(&mut r).map_err(|e| corrupt(file, e.to_string()))?;
    let mut archive = tar::Archive::new(stream);
    let mut entries = archive
        .entries()
        .map_err(|e| corrupt(file, e.to_string()))?;
    let Some(first) = entries.next() else {
        return Err(corrupt(file, "no tar entries after decompression"));
    };
    let first = first.map_err(|e| corrupt(file, format!("bad first tar header: {e}")))?;
    let name = String::from_utf8_lossy(&first.path_bytes()).into_owned();
    let name = name.trim_start_matches("./");
    let top = name.split('/').next().unwrap_or("");
    Ok([
        "blobs",
        "oci-layout",
        "index.json",
        "manifest.json",
        "repositories",
    ]
    .contains(&top)
        || (top.len() == 64 && top.bytes().all(|b| b.is_ascii_hexdigit())))
}

/// The members of an uncompressed tar: normalised name -> (data offset, length).
/// Symlinked members (docker's shared layers) point at their target's data.
fn index_tar(path: &Path) -> Result<HashMap<String, (u64, u64)>, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(BufReader::new(f));
    let mut out = HashMap::new();
    let mut links = Vec::new();
    for entry in archive.entries_with_seek().map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| format!("bad tar header: {e}"))?;
        let Some(name) = crate::layer::normalize(&entry.path().map_err(|e| e.to_string())?) else {
            continue;
        };
        let name = name.to_string_lossy().into_owned();
        if entry.header().entry_type().is_symlink() {
            if let Ok(Some(target)) = entry.link_name() {
                let base = Path::new(&name).parent().unwrap_or(Path::new(""));
                let mut joined = PathBuf::new();
                for c in base.join(target).components() {
                    match c {
                        std::path::Component::ParentDir => {
                            joined.pop();
                        }
                        std::path::Component::Normal(n) => joined.push(n),
                        _ => {}
                    }
                }
                links.push((name, joined.to_string_lossy().into_owned()));
            }
            continue;
        }
        out.insert(name, (entry.raw_file_position(), entry.size()));
    }
    for (name, target) in links {
        if let Some(&v) = out.get(&target) {
            out.insert(name, v);
        }
    }
    Ok(out)
}

fn read_member(file: &Path, lookup: &Lookup<'_>, name: &str) -> Result<Vec<u8>, ImportError> {
    let Some((path, offset, len)) = lookup(name)? else {
        return Err(corrupt(file, format!("`{name}` is missing")));
    };
    if len > 64 << 20 {
        return Err(corrupt(file, format!("`{name}` is {len} bytes: too large")));
    }
    let mut f = File::open(&path).map_err(read_err(&path))?;
    f.seek(SeekFrom::Start(offset)).map_err(read_err(&path))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf).map_err(read_err(&path))?;
    if (buf.len() as u64) < len {
        return Err(corrupt(file, format!("`{name}` is cut short")));
    }
    Ok(buf)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    file: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<T, ImportError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(file, format!("`{name}`: {e}")))
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// An OCI index or manifest: an index has `manifests`, a manifest `layers`.
#[derive(Debug, Deserialize)]
struct OciDocument {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// `sha256:<hex>` as the blob path `blobs/sha256/<hex>`, refusing anything else.
fn blob_path(file: &Path, digest: &str) -> Result<String, ImportError> {
    let ok = digest.split_once(':').filter(|(alg, hex)| {
        !alg.is_empty()
            && alg.bytes().all(|b| b.is_ascii_alphanumeric())
            && !hex.is_empty()
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    match ok {
        Some((alg, hex)) => Ok(format!("blobs/{alg}/{hex}")),
        None => Err(corrupt(file, format!("bad digest `{digest}`"))),
    }
}

/// The layers of the OCI image at `index.json` (for `linux/amd64` when it lists several).
fn oci_layers(file: &Path, lookup: &Lookup<'_>) -> Result<Vec<Blob>, ImportError> {
    let mut doc: OciDocument = parse_json(
        file,
        "index.json",
        &read_member(file, lookup, "index.json")?,
    )?;
    for _ in 0..4 {
        if let Some(layers) = doc.layers.take() {
            return layers
                .into_iter()
                .map(|d| {
                    let name = blob_path(file, &d.digest)?;
                    let Some((path, offset, len)) = lookup(&name)? else {
                        return Err(corrupt(file, format!("layer `{name}` is missing")));
                    };
                    if d.size.is_some_and(|s| s != len) {
                        return Err(corrupt(
                            file,
                            format!(
                                "layer `{name}` is {len} bytes, its manifest says {:?}",
                                d.size
                            ),
                        ));
                    }
                    let _ = d.media_type;
                    Ok(Blob {
                        name,
                        path,
                        offset,
                        len,
                        digest: Some(d.digest),
                    })
                })
                .collect();
        }
        let manifests = doc.manifests.take().unwrap_or_default();
        let pick = manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .or_else(|| manifests.iter().find(|d| d.platform.is_none()))
            .or(manifests.first());
        let Some(pick) = pick else {
            return Err(corrupt(file, "the OCI index lists no manifest"));
        };
        let name = blob_path(file, &pick.digest)?;
        doc = parse_json(file, &name, &read_member(file, lookup, &name)?)?;
    }
    Err(corrupt(file, "OCI indexes nest too deep"))
}

#[derive(Debug, Deserialize)]
struct DockerImage {
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The layers of the first image of a `docker save` archive's `manifest.json`.
fn docker_layers(file: &Path, lookup: &Lookup<'_>) -> Result<Vec<Blob>, ImportError> {
    let images: Vec<DockerImage> = parse_json(
        file,
        "manifest.json",
        &read_member(file, lookup, "manifest.json")?,
    )?;
    let Some(first) = images.into_iter().next() else {
        return Err(corrupt(file, "`manifest.json` lists no image"));
    };
    first
        .layers
        .into_iter()
        .map(|l| {
            let name = crate::layer::normalize(Path::new(&l))
                .ok_or_else(|| corrupt(file, format!("layer path `{l}` climbs out")))?
                .to_string_lossy()
                .into_owned();
            let Some((path, offset, len)) = lookup(&name)? else {
                return Err(corrupt(file, format!("layer `{name}` is missing")));
            };
            // Newer docker names layers by digest (`blobs/sha256/<hex>`): check them.
            let digest = name
                .strip_prefix("blobs/sha256/")
                .map(|hex| format!("sha256:{hex}"));
            Ok(Blob {
                name,
                path,
                offset,
                len,
                digest,
            })
        })
        .collect()
}
