//! File sessions: write a file from streamed chunks (atomically renamed into place), read a
//! file out in chunks under flow control.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wisp_proto::{Control, Kind, CHUNK};

use crate::channel::Credit;
use crate::server::Agent;

fn check_path(path: &str) -> io::Result<PathBuf> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path `{path}` is not absolute"),
        ));
    }
    Ok(PathBuf::from(path))
}

/// A file being written: chunks go to a temporary sibling renamed over the target at the
/// end, so a reader never sees half a file and a running binary can be replaced.
pub struct Writer {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    bytes: u64,
}

/// How [`open_write`] treats what is already there.
pub struct WriteOptions {
    /// Create missing parent folders; without, only a missing immediate parent is made
    /// (what the SDKs' `mkdir` of one folder needs), and a missing grandparent is `ENOENT`.
    pub mkdir_parents: bool,
    /// An existing file keeps its mode and owner.
    pub keep_existing: bool,
}

/// `create_dir_all` answers `EEXIST` when a component of the path exists as
/// something other than a folder (`/root/file/child` with `/root/file` a file):
/// that is `ENOTDIR`, as `open` and `mkdir` themselves say.
fn not_a_folder_on_the_way(folder: &Path, e: io::Error) -> io::Error {
    let blocked = e.raw_os_error() == Some(libc::EEXIST)
        && folder
            .ancestors()
            .any(|a| std::fs::metadata(a).is_ok_and(|m| !m.is_dir()));
    if blocked {
        io::Error::from_raw_os_error(libc::ENOTDIR)
    } else {
        e
    }
}

pub fn open_write(
    session: u32,
    path: &str,
    mut mode: u32,
    mut uid: Option<u32>,
    mut gid: Option<u32>,
    options: WriteOptions,
) -> io::Result<Writer> {
    let path = check_path(path)?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    if options.mkdir_parents {
        std::fs::create_dir_all(parent).map_err(|e| not_a_folder_on_the_way(parent, e))?;
    } else if !parent.exists() {
        std::fs::create_dir(parent)?;
    }
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
        Ok(meta) if options.keep_existing => {
            mode = meta.mode() & 0o7777;
            uid = Some(meta.uid());
            gid = Some(meta.gid());
        }
        _ => {}
    }
    let tmp = parent.join(format!(
        ".{}.wisp-{}-{session}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o7777)
        .open(&tmp)?;
    let w = Writer {
        file,
        tmp,
        path,
        bytes: 0,
    };
    // The umask may have cleared bits the caller asked for.
    w.file
        .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .inspect_err(|_| w.abort_ref())?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(&w.file, uid, gid).inspect_err(|_| w.abort_ref())?;
    }
    Ok(w)
}

impl Writer {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    pub fn finish(self) -> io::Result<u64> {
        if let Err(e) = std::fs::rename(&self.tmp, &self.path) {
            self.abort_ref();
            return Err(e);
        }
        Ok(self.bytes)
    }

    fn abort_ref(&self) {
        let _ = std::fs::remove_file(&self.tmp);
    }

    pub fn abort(self) {
        self.abort_ref();
    }
}

/// Opens `path` (errors are returned now, so they answer the request) and streams it
/// from a thread: `file_info`, data chunks, `Eof`, `done`. With `tail`, starts that many
/// bytes before the end.
pub fn start_read(
    agent: &Arc<Agent>,
    session: u32,
    path: &str,
    tail: Option<u64>,
) -> io::Result<Arc<Credit>> {
    start_read_at(agent, session, path, tail, None)
}

/// [`start_read`], or from byte `offset` when given (past the end: nothing).
pub fn start_read_at(
    agent: &Arc<Agent>,
    session: u32,
    path: &str,
    tail: Option<u64>,
    offset: Option<u64>,
) -> io::Result<Arc<Credit>> {
    let path = check_path(path)?;
    let mut file = File::open(&path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    let size = meta.len();
    if let Some(t) = tail {
        file.seek(SeekFrom::Start(size.saturating_sub(t)))?;
    }
    if let Some(o) = offset {
        file.seek(SeekFrom::Start(o.min(size)))?;
    }
    start_stream(
        agent,
        session,
        file,
        size,
        meta.mode() & 0o7777,
        path.display().to_string(),
    )
}

/// Streams `source` from a thread under flow control: `file_info` (`size`, `mode`), data
/// chunks, `Eof`, `done`. `what` names the source in a read error.
pub fn start_stream(
    agent: &Arc<Agent>,
    session: u32,
    mut source: impl Read + Send + 'static,
    size: u64,
    mode: u32,
    what: String,
) -> io::Result<Arc<Credit>> {
    agent
        .out
        .control(session, &Control::FileInfo { size, mode });
    let credit = Arc::new(Credit::default());
    let c = credit.clone();
    let a = agent.clone();
    std::thread::Builder::new()
        .name(format!("read-{session}"))
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            let mut bytes = 0u64;
            loop {
                let Some(n) = c.take(CHUNK) else {
                    // Abandoned by the host.
                    a.finish(session);
                    return;
                };
                match source.read(&mut buf[..n]) {
                    Ok(0) => break,
                    Ok(got) => {
                        c.give_back(n - got);
                        bytes += got as u64;
                        if a.out.send_raw(Kind::Data, session, &buf[..got]).is_err() {
                            a.finish(session);
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => c.give_back(n),
                    Err(e) => {
                        a.out.error_io(session, &format!("reading `{what}`"), &e);
                        a.finish(session);
                        return;
                    }
                }
            }
            let _ = a.out.send_raw(Kind::Eof, session, &[]);
            a.out.control(session, &Control::Done { bytes });
            a.finish(session);
        })?;
    Ok(credit)
}
