//! Exec sessions: spawn a process (pipes or a PTY), stream stdin in and output out under
//! flow control, report how it ended.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wisp_proto::{Control, ExecRequest, ExitStatus, Kind, CHUNK, INITIAL_WINDOW};

use crate::channel::Credit;
use crate::server::Agent;
use crate::spawn;
use crate::sys;
use crate::users;

/// After the process exits, how long its output may stay open (a background child holding
/// the pipe) before the session ends anyway.
const OUTPUT_GRACE: Duration = Duration::from_millis(1000);

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the reader thread needs to reach a running exec session.
pub struct ExecHandle {
    pub pid: i32,
    pty: Option<OwnedFd>,
    /// `Some(bytes)` to write, `None` to close stdin.
    stdin: Mutex<Option<Sender<Option<Vec<u8>>>>>,
    /// Stdin bytes received but not yet written (and so not yet granted back).
    stdin_inflight: Arc<AtomicU64>,
    pub credit: Arc<Credit>,
}

impl ExecHandle {
    /// Queues stdin bytes; `Err` if the host overran the window it was granted.
    pub fn stdin(&self, data: Vec<u8>) -> Result<(), String> {
        let len = data.len() as u64;
        let before = self.stdin_inflight.fetch_add(len, Ordering::SeqCst);
        if before + len > INITIAL_WINDOW as u64 {
            return Err(format!(
                "stdin overran the flow-control window: `{}` bytes in flight",
                before + len
            ));
        }
        if let Some(tx) = &*self.stdin.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(Some(data));
        }
        Ok(())
    }

    pub fn close_stdin(&self) {
        if let Some(tx) = self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(None);
        }
    }

    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        match &self.pty {
            Some(m) => sys::set_winsize(m, rows, cols),
            None => Ok(()),
        }
    }

    pub fn signal(&self, sig: i32) {
        let group = self
            .pty
            .as_ref()
            .and_then(sys::tcgetpgrp)
            .unwrap_or(self.pid);
        sys::kill_group(group, sig);
    }

    /// The host abandoned the session: kill the process, drop its output.
    pub fn close(&self) {
        self.credit.close();
        self.close_stdin();
        sys::kill_group(self.pid, libc::SIGKILL);
    }
}

/// A process to start, resolved: program, environment, working directory, user.
pub struct Plan {
    argv: Vec<String>,
    /// The whole environment of the new process.
    env: Vec<(String, String)>,
    cwd: String,
    user: users::User,
    /// Whether the process runs as another user than the agent.
    switch_user: bool,
}

/// Resolves `argv` as `user` with the agent's default environment plus `env`, or with
/// `env` alone when `replace_env`.
pub fn plan(
    argv: &[String],
    env: &[(String, String)],
    replace_env: bool,
    cwd: Option<&str>,
    user: Option<&str>,
    tty: bool,
) -> io::Result<Plan> {
    if argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
    }
    for a in argv {
        if a.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "nul byte in an argument",
            ));
        }
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let u = match user {
        Some(spec) => users::lookup(spec)?,
        None if euid == 0 => users::User::root(),
        None => users::User {
            name: std::env::var("USER").unwrap_or_default(),
            uid: euid,
            // SAFETY: getegid has no preconditions.
            gid: unsafe { libc::getegid() },
            home: std::env::var("HOME").unwrap_or_else(|_| "/".into()),
            shell: "/bin/sh".into(),
            groups: vec![],
        },
    };
    let mut vars: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), u.home.clone()),
        ("USER".into(), u.name.clone()),
        ("LOGNAME".into(), u.name.clone()),
        ("SHELL".into(), u.shell.clone()),
    ];
    if tty {
        vars.push(("TERM".into(), "xterm-256color".into()));
    }
    if replace_env {
        vars.clear();
    }
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad environment variable `{k}`"),
            ));
        }
        // A later value replaces an earlier one, as `Command::env` does.
        vars.retain(|(name, _)| name != k);
        vars.push((k.clone(), v.clone()));
    }
    let dir = match cwd {
        Some(d) => d.to_string(),
        None if std::path::Path::new(&u.home).is_dir() => u.home.clone(),
        None => "/".into(),
    };
    if dir.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte in the working directory",
        ));
    }
    let switch_user = user.is_some() && u.uid != euid;
    Ok(Plan {
        argv: argv.to_vec(),
        env: vars,
        cwd: dir,
        user: u,
        switch_user,
    })
}

impl Plan {
    /// Whether [`spawn::spawn_piped`] can start it: no terminal to attach, no user to
    /// switch to, no death signal to arm (channel mode), so no code has to run in the
    /// child between fork and exec.
    pub fn fast(&self, tty: bool) -> bool {
        !tty && !self.switch_user && !sys::KILL_CHILDREN_WITH_AGENT.load(Ordering::Relaxed)
    }

    /// The `posix_spawn` form of this plan.
    fn spec(&self) -> io::Result<spawn::Spec> {
        let path = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_PATH);
        Ok(spawn::Spec {
            path: spawn::resolve(&self.argv[0], path)?,
            argv: self
                .argv
                .iter()
                .map(|a| sys::cstring(a))
                .collect::<io::Result<_>>()?,
            envp: self
                .env
                .iter()
                .map(|(k, v)| spawn::env_entry(k, v))
                .collect::<io::Result<_>>()?,
            cwd: sys::cstring(&self.cwd)?,
        })
    }

    /// The fork path: a command whose pre-exec hook starts a new session, takes the
    /// terminal, arms the death signal and switches user as needed.
    pub fn command(&self, tty: bool) -> Command {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).env_clear();
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.current_dir(&self.cwd);
        let switch_user = self.switch_user;
        let groups: Vec<libc::gid_t> = self.user.groups.clone();
        let (uid, gid) = (self.user.uid, self.user.gid);
        let pdeathsig = sys::KILL_CHILDREN_WITH_AGENT.load(Ordering::Relaxed);
        // SAFETY: the closure only makes async-signal-safe system calls and does not
        // allocate.
        unsafe {
            cmd.pre_exec(move || {
                // A new session: the process leads its own group (signals reach the whole
                // group) and can take a controlling terminal.
                sys::cvt(libc::setsid())?;
                // Every signal at its default, as on the posix_spawn path: an ignored
                // disposition survives exec, and what started the agent (a shell's
                // background job ignores SIGINT and SIGQUIT) must not decide whether
                // Ctrl-C works. SIGKILL and SIGSTOP refuse the call; that is fine.
                for sig in 1..=64 {
                    libc::signal(sig, libc::SIG_DFL);
                }
                if pdeathsig {
                    sys::cvt(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
                }
                if tty {
                    sys::cvt(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
                }
                if switch_user {
                    sys::cvt(libc::setgroups(groups.len(), groups.as_ptr()))?;
                    sys::cvt(libc::setgid(gid))?;
                    sys::cvt(libc::setuid(uid))?;
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Spawns the process of session `session` and its pump threads.
pub fn start(agent: &Arc<Agent>, session: u32, req: &ExecRequest) -> io::Result<Arc<ExecHandle>> {
    let plan = plan(
        &req.argv,
        &req.env,
        req.replace_env,
        req.cwd.as_deref(),
        req.user.as_deref(),
        req.tty.is_some(),
    )?;
    let credit = Arc::new(Credit::default());
    let inflight = Arc::new(AtomicU64::new(0));
    let (stdin_tx, stdin_rx) = channel::<Option<Vec<u8>>>();

    let fast = if req.tty.is_none() && plan.fast(false) {
        let spec = plan.spec()?;
        match agent
            .reaper
            .spawn_with(|| spawn::spawn_piped(&spec), |p| p.pid)
        {
            Ok(started) => Some(started),
            // A script without `#!`: only `execvp`'s fallback to `/bin/sh` runs it, on
            // the fork path below.
            Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let (handle, outputs, stdin_fd, exit_rx) = if let Some(tty) = req.tty {
        let mut cmd = plan.command(true);
        let (master, slave) = sys::openpty(tty.rows, tty.cols)?;
        if let Some(spec) = &req.user {
            // The terminal belongs to its user, as after a login (screen, mesg check it).
            let u = users::lookup(spec)?;
            std::os::unix::fs::fchown(&slave, Some(u.uid), None)?;
        }
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        let (child, exit_rx) = agent.reaper.spawn(&mut cmd)?;
        // The parent's copies of the PTY slave must close now, or the output never
        // reaches EOF.
        drop(cmd);
        let stdin_fd = master.try_clone()?;
        let reader = master.try_clone()?;
        let h = ExecHandle {
            pid: child.id() as i32,
            pty: Some(master),
            stdin: Mutex::new(Some(stdin_tx)),
            stdin_inflight: inflight.clone(),
            credit: credit.clone(),
        };
        (h, vec![(reader, Kind::Data)], stdin_fd, exit_rx)
    } else if let Some((p, exit_rx)) = fast {
        let h = ExecHandle {
            pid: p.pid,
            pty: None,
            stdin: Mutex::new(Some(stdin_tx)),
            stdin_inflight: inflight.clone(),
            credit: credit.clone(),
        };
        (
            h,
            vec![(p.stdout, Kind::Data), (p.stderr, Kind::Stderr)],
            p.stdin,
            exit_rx,
        )
    } else {
        let mut cmd = plan.command(false);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, exit_rx) = agent.reaper.spawn(&mut cmd)?;
        let missing = || io::Error::other("child pipes missing");
        let stdin: OwnedFd = child.stdin.take().ok_or_else(missing)?.into();
        let out: OwnedFd = child.stdout.take().ok_or_else(missing)?.into();
        let err: OwnedFd = child.stderr.take().ok_or_else(missing)?.into();
        let h = ExecHandle {
            pid: child.id() as i32,
            pty: None,
            stdin: Mutex::new(Some(stdin_tx)),
            stdin_inflight: inflight.clone(),
            credit: credit.clone(),
        };
        (
            h,
            vec![(out, Kind::Data), (err, Kind::Stderr)],
            stdin,
            exit_rx,
        )
    };
    let handle = Arc::new(handle);
    agent.out.control(
        session,
        &Control::Started {
            pid: handle.pid as u32,
        },
    );

    let a = agent.clone();
    let is_pty = req.tty.is_some();
    std::thread::Builder::new()
        .name(format!("stdin-{session}"))
        .spawn(move || stdin_pump(&a, session, stdin_fd, stdin_rx, &inflight, is_pty))?;
    let a = agent.clone();
    std::thread::Builder::new()
        .name(format!("exec-{session}"))
        .spawn(move || {
            let status = output_pump(&a, session, outputs, &credit, &exit_rx);
            a.out.control(session, &Control::Exit(status));
            a.finish(session);
        })?;
    Ok(handle)
}

fn stdin_pump(
    agent: &Agent,
    session: u32,
    fd: OwnedFd,
    rx: Receiver<Option<Vec<u8>>>,
    inflight: &AtomicU64,
    is_pty: bool,
) {
    let mut fd = Some(fd);
    let mut broken = false;
    while let Ok(msg) = rx.recv() {
        let Some(data) = msg else {
            // A PTY has no stdin to close: the terminal stays until the process ends.
            if !is_pty {
                fd = None;
            }
            continue;
        };
        if !broken {
            if let Some(f) = &fd {
                // The process stopped reading (EPIPE): drop the rest, keep granting.
                broken = sys::write_all_fd(f.as_raw_fd(), &data).is_err();
            }
        }
        inflight.fetch_sub(data.len() as u64, Ordering::SeqCst);
        agent.out.window(session, data.len() as u32);
    }
}

/// Forwards output until every stream hits EOF (or the grace period after exit runs out),
/// then returns the exit status.
fn output_pump(
    agent: &Agent,
    session: u32,
    mut outputs: Vec<(OwnedFd, Kind)>,
    credit: &Credit,
    exit_rx: &Receiver<ExitStatus>,
) -> ExitStatus {
    let mut exit: Option<(ExitStatus, Instant)> = None;
    let mut buf = vec![0u8; CHUNK];
    let mut abandoned = false;
    while !outputs.is_empty() {
        let timeout = match &exit {
            Some((_, at)) => {
                let left = OUTPUT_GRACE.saturating_sub(at.elapsed());
                if left.is_zero() {
                    break;
                }
                left.as_millis() as i32
            }
            // Wake now and then to notice an exit while a background child holds the output.
            None => 250,
        };
        let fds: Vec<i32> = outputs.iter().map(|(f, _)| f.as_raw_fd()).collect();
        let revents = match sys::poll_read(&fds, timeout) {
            Ok(r) => r,
            Err(_) => break,
        };
        let mut closed = vec![];
        for (i, ev) in revents.iter().enumerate() {
            if *ev == 0 {
                continue;
            }
            let want = if abandoned {
                Some(CHUNK)
            } else {
                credit.take(CHUNK)
            };
            let Some(n) = want else {
                abandoned = true;
                continue;
            };
            let (fd, kind) = &outputs[i];
            match sys::read_fd(fd.as_raw_fd(), &mut buf[..n]) {
                Ok(0) | Err(_) => {
                    if !abandoned {
                        credit.give_back(n);
                    }
                    closed.push(i);
                }
                Ok(got) => {
                    if !abandoned {
                        credit.give_back(n - got);
                        if agent.out.send_raw(*kind, session, &buf[..got]).is_err() {
                            abandoned = true;
                        }
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            outputs.remove(i);
        }
        if exit.is_none() {
            if let Ok(s) = exit_rx.try_recv() {
                exit = Some((s, Instant::now()));
            }
        }
    }
    drop(outputs);
    let _ = agent.out.send_raw(Kind::Eof, session, &[]);
    match exit {
        Some((s, _)) => s,
        None => exit_rx.recv().unwrap_or(ExitStatus {
            code: None,
            signal: None,
        }),
    }
}
