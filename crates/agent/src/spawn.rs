//! The fast way to start a plain exec (no PTY, no user change): `posix_spawn`, which glibc
//! implements with `clone(CLONE_VM | CLONE_VFORK)`. The child shares the agent's memory
//! until it execs, so no page table is copied. Under TCG emulation a `fork` of the agent
//! (copying its page tables, then faulting every page it touches until exec) costs several
//! milliseconds; this path is what keeps an exec round trip short.
//!
//! `std::process::Command` would take the same road only without a pre-exec hook, without
//! a `PATH` in a cleared environment for a bare program name, and with a working directory
//! only where it can find `posix_spawn_file_actions_addchdir_np` through a dynamic symbol
//! lookup, which a static binary (the agent) does not have: so it always forked here.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;

use crate::sys::{cstring, cvt};

/// A process started with pipes on its stdin, stdout and stderr (our ends).
pub struct Piped {
    pub pid: i32,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What to start: every string already validated (no NUL bytes).
pub struct Spec {
    /// The program's file (a path: resolved against `PATH` by [`resolve`]).
    pub path: CString,
    pub argv: Vec<CString>,
    /// `KEY=value` strings: the whole environment of the new process.
    pub envp: Vec<CString>,
    pub cwd: CString,
}

/// Finds `prog` the way `execvp` would: as given when it holds a `/`, else in the first
/// `PATH` folder that has an executable file of that name.
pub fn resolve(prog: &str, path: &str) -> io::Result<CString> {
    if prog.contains('/') {
        return cstring(prog);
    }
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = format!("{dir}/{prog}");
        if let Ok(m) = std::fs::metadata(&candidate) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return cstring(&candidate);
            }
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// Turns a non-zero `posix_spawn*` return code (an errno value) into an error.
fn cvt_nz(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// A close-on-exec pipe `(read, write)` whose descriptors are above 2, so that mapping
/// them onto the child's 0, 1 and 2 never maps a descriptor onto itself (which would
/// keep its close-on-exec flag and close it in the child).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid out-array of two descriptors.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl on a descriptor we hold; the result is a fresh descriptor we own.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

struct FileActions(MaybeUninit<libc::posix_spawn_file_actions_t>);

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised by posix_spawn_file_actions_init before this guard exists.
        unsafe { libc::posix_spawn_file_actions_destroy(self.0.as_mut_ptr()) };
    }
}

struct Attr(MaybeUninit<libc::posix_spawnattr_t>);

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised by posix_spawnattr_init before this guard exists.
        unsafe { libc::posix_spawnattr_destroy(self.0.as_mut_ptr()) };
    }
}

fn ptrs(v: &[CString]) -> Vec<*mut libc::c_char> {
    v.iter()
        .map(|s| s.as_ptr() as *mut libc::c_char)
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

/// Starts `spec` in a new session (it leads its own process group, as the fork path's
/// `setsid` does), with every signal at its default and none blocked, and pipes on its
/// standard descriptors. An exec failure (no such file, not executable) is returned here.
pub fn spawn_piped(spec: &Spec) -> io::Result<Piped> {
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    let mut fa = FileActions(MaybeUninit::uninit());
    // SAFETY: initialises the struct in place; destroyed by the guard's drop.
    cvt_nz(unsafe { libc::posix_spawn_file_actions_init(fa.0.as_mut_ptr()) })?;
    let mut attr = Attr(MaybeUninit::uninit());
    // SAFETY: as above.
    cvt_nz(unsafe { libc::posix_spawnattr_init(attr.0.as_mut_ptr()) })?;
    // SAFETY: every pointer below is to an initialised struct or a NUL-terminated string
    // that outlives the posix_spawn call.
    unsafe {
        let fa = fa.0.as_mut_ptr();
        cvt_nz(libc::posix_spawn_file_actions_adddup2(
            fa,
            in_r.as_raw_fd(),
            0,
        ))?;
        cvt_nz(libc::posix_spawn_file_actions_adddup2(
            fa,
            out_w.as_raw_fd(),
            1,
        ))?;
        cvt_nz(libc::posix_spawn_file_actions_adddup2(
            fa,
            err_w.as_raw_fd(),
            2,
        ))?;
        cvt_nz(libc::posix_spawn_file_actions_addchdir_np(
            fa,
            spec.cwd.as_ptr(),
        ))?;

        let at = attr.0.as_mut_ptr();
        let mut none = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(none.as_mut_ptr());
        cvt_nz(libc::posix_spawnattr_setsigmask(at, none.as_ptr()))?;
        // The agent ignores SIGPIPE (Rust's runtime does) and PID 1 may hold other
        // dispositions: the new program starts with the defaults.
        let mut all = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(all.as_mut_ptr());
        cvt_nz(libc::posix_spawnattr_setsigdefault(at, all.as_ptr()))?;
        let flags = libc::POSIX_SPAWN_SETSID
            | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
            | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
        cvt_nz(libc::posix_spawnattr_setflags(at, flags))?;
    }
    let argv = ptrs(&spec.argv);
    let envp = ptrs(&spec.envp);
    let mut pid: libc::pid_t = 0;
    // SAFETY: argv and envp are NULL-terminated arrays of valid strings; fa and attr are
    // initialised.
    cvt_nz(unsafe {
        libc::posix_spawn(
            &mut pid,
            spec.path.as_ptr(),
            fa.0.as_ptr(),
            attr.0.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    })?;
    // The child's ends close here: only the child holds them now.
    drop((in_r, out_w, err_w));
    Ok(Piped {
        pid,
        stdin: in_w,
        stdout: out_r,
        stderr: err_r,
    })
}

/// `KEY=value` for the environment array.
pub fn env_entry(k: &str, v: &str) -> io::Result<CString> {
    cstring(&format!("{k}={v}"))
}
