//! File watches: inotify on the paths the host names (and, with `recursive`, every
//! folder below them, including folders made later), reported as `file_events`
//! messages until the host closes the session.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wisp_proto::{Control, FileEvent};

use crate::server::Agent;

const MASK: u32 = libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB;

struct Inotify {
    fd: i32,
    /// Watch descriptor -> the folder (or file) it watches.
    watched: HashMap<i32, PathBuf>,
    recursive: bool,
}

impl Drop for Inotify {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

impl Inotify {
    fn add(&mut self, path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd, c.as_ptr(), MASK) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        self.watched.insert(wd, path.to_path_buf());
        if self.recursive && path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        // A folder that vanished meanwhile is no error.
                        let _ = self.add(&e.path());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Starts watching `paths` for session `session`: answers `ok` once every path is
/// watched (an error naming the first that cannot be), then sends `file_events`.
/// Storing `true` in the returned flag stops it.
pub fn watch(
    agent: &Arc<Agent>,
    session: u32,
    paths: &[String],
    recursive: bool,
) -> io::Result<Arc<AtomicBool>> {
    // SAFETY: no preconditions.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut inotify = Inotify {
        fd,
        watched: HashMap::new(),
        recursive,
    };
    for p in paths {
        if !p.starts_with('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("path `{p}` is not absolute"),
            ));
        }
        inotify.add(Path::new(p))?;
    }
    agent.out.control(session, &Control::Ok);
    let stop = Arc::new(AtomicBool::new(false));
    let (a, done) = (agent.clone(), stop.clone());
    std::thread::Builder::new()
        .name(format!("watch-{session}"))
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while !done.load(Ordering::SeqCst) {
                let mut pfd = libc::pollfd {
                    fd: inotify.fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let ready = unsafe { libc::poll(&mut pfd, 1, 250) };
                if ready <= 0 {
                    continue;
                }
                // SAFETY: reading into our buffer of its length.
                let n = unsafe { libc::read(inotify.fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    continue;
                }
                let events = parse(&mut inotify, &buf[..n as usize]);
                if events.is_empty() {
                    continue;
                }
                if a.out
                    .send(&wisp_proto::Frame::control(
                        session,
                        &Control::FileEvents { events },
                    ))
                    .is_err()
                {
                    break;
                }
            }
            a.finish(session);
        })?;
    Ok(stop)
}

/// The events in one read of the inotify descriptor; folders made under a recursive
/// watch are watched from now on.
fn parse(inotify: &mut Inotify, mut buf: &[u8]) -> Vec<FileEvent> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut out = Vec::new();
    while buf.len() >= HEADER {
        // SAFETY: the kernel writes whole inotify_event records; read_unaligned copies one.
        let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let len = ev.len as usize;
        let name_bytes = buf.get(HEADER..HEADER + len).unwrap_or(&[]);
        buf = buf.get(HEADER + len..).unwrap_or(&[]);
        let Some(base) = inotify.watched.get(&ev.wd).cloned() else {
            continue;
        };
        let name = name_bytes.split(|b| *b == 0).next().unwrap_or(&[]);
        let path = if name.is_empty() {
            base
        } else {
            base.join(std::ffi::OsStr::from_bytes(name))
        };
        let is_dir = ev.mask & libc::IN_ISDIR != 0;
        let kind = if ev.mask & libc::IN_CREATE != 0 {
            "create"
        } else if ev.mask & (libc::IN_DELETE | libc::IN_DELETE_SELF) != 0 {
            "remove"
        } else if ev.mask & (libc::IN_MOVED_FROM | libc::IN_MOVED_TO) != 0 {
            "rename"
        } else if ev.mask & libc::IN_ATTRIB != 0 {
            "chmod"
        } else if ev.mask & (libc::IN_MODIFY | libc::IN_CLOSE_WRITE) != 0 {
            "write"
        } else {
            continue;
        };
        if ev.mask & libc::IN_IGNORED != 0 {
            inotify.watched.remove(&ev.wd);
        }
        if is_dir && inotify.recursive && (kind == "create" || ev.mask & libc::IN_MOVED_TO != 0) {
            let _ = inotify.add(&path);
        }
        let size = std::fs::symlink_metadata(&path)
            .map(|m| m.len())
            .unwrap_or(0);
        out.push(FileEvent {
            path: path.to_string_lossy().into_owned(),
            kind: kind.to_string(),
            is_dir,
            size,
        });
    }
    out
}
