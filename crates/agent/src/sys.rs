//! Thin safe wrappers over the few libc calls the agent needs.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;

/// Set in channel mode (tests on the host): processes the agent starts get SIGKILL when
/// the agent dies, so a killed test agent leaves nothing running on the host.
pub static KILL_CHILDREN_WITH_AGENT: AtomicBool = AtomicBool::new(false);

/// Turns a `-1` return into the `errno` error.
pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in string"))
}

/// Sends `sig` to process group `pgid` (ignoring a group that is already gone).
pub fn kill_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// A new pseudo-terminal `(master, slave)` of the given size, both close-on-exec.
pub fn openpty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    let ws = winsize(rows, cols);
    // SAFETY: out-pointers are valid; name and termios may be null.
    cvt(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    })?;
    // SAFETY: openpty returned two fresh descriptors we now own.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    set_cloexec(&m)?;
    set_cloexec(&s)?;
    Ok((m, s))
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

pub fn set_cloexec(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor we hold.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) }).map(|_| ())
}

pub fn set_winsize(fd: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = winsize(rows, cols);
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(|_| ())
}

/// Foreground process group of the terminal behind `fd`.
pub fn tcgetpgrp(fd: &impl AsRawFd) -> Option<i32> {
    // SAFETY: no memory effects.
    let g = unsafe { libc::tcgetpgrp(fd.as_raw_fd()) };
    (g > 0).then_some(g)
}

/// Waits up to `timeout_ms` for any of `fds` to be readable (or hung up); returns the
/// revents per fd. EINTR counts as "nothing ready".
pub fn poll_read(fds: &[i32], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: p is a valid array of p.len() pollfds.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![0; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|p| p.revents).collect())
}

/// `read(2)` that retries on EINTR and maps EIO (a PTY whose slave side is gone) to EOF.
pub fn read_fd(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EIO) => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Writes all of `buf` to `fd`, retrying on EINTR.
pub fn write_all_fd(fd: i32, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Decodes a `waitpid` status word.
pub fn exit_status(status: libc::c_int) -> wisp_proto::ExitStatus {
    if libc::WIFSIGNALED(status) {
        wisp_proto::ExitStatus {
            code: None,
            signal: Some(libc::WTERMSIG(status)),
        }
    } else {
        wisp_proto::ExitStatus {
            code: Some(libc::WEXITSTATUS(status)),
            signal: None,
        }
    }
}

/// Sets `CLOCK_REALTIME` to `unix_ns` nanoseconds since the Unix epoch.
pub fn set_realtime(unix_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec for the duration of the call.
    cvt(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(|_| ())
}

/// mount(2); an empty `fstype` or `data` is passed as NULL.
pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (
        cstring(src)?,
        cstring(target)?,
        cstring(fstype)?,
        cstring(data)?,
    );
    let fstype = if fstype.is_empty() {
        std::ptr::null()
    } else {
        f.as_ptr()
    };
    let data = if data.is_empty() {
        std::ptr::null()
    } else {
        d.as_ptr().cast()
    };
    // SAFETY: all pointers are valid C strings (or null) for the duration of the call.
    cvt(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), fstype, flags, data) }).map(|_| ())
}
