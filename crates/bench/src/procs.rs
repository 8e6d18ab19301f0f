//! Child processes of the benchmark: servers (nbdkit, `wisp volume serve`) that are killed
//! when dropped or when the benchmark dies, and one-shot commands with checked exit status.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A long-running child with its output in a log file.
pub struct Server {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    /// For a `wisp server`: its `$WISP_HOME`, whose running QEMUs (which outlive their
    /// daemon) are killed when it is dropped without a clean stop.
    machines_of: Option<PathBuf>,
}

impl Server {
    /// Kills the QEMUs this `wisp server` on `home` leaves running when it is dropped
    /// (they outlive their daemon).
    pub fn owning_machines_of(mut self, home: &Path) -> Server {
        self.machines_of = Some(home.to_path_buf());
        self
    }

    /// Leaves this server's QEMUs running when it is dropped (for the next daemon to
    /// adopt).
    pub fn keep_machines(&mut self) {
        self.machines_of = None;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Server> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open log `{}`", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Server {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
            machines_of: None,
        })
    }

    /// Waits until `socket` accepts connections (the server is ready to serve).
    pub fn wait_for_socket(&mut self, socket: &Path, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if UnixStream::connect(socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.exited()? {
                bail!(
                    "{} exited ({status}) before listening on `{}`\n{}",
                    self.name,
                    socket.display(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on `{}` within {timeout:?}\n{}",
                    self.name,
                    socket.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for a clean exit (wisp flushes and uploads on SIGTERM);
    /// returns how long the shutdown took.
    pub fn terminate(mut self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() && status.code().is_some() {
                    bail!(
                        "{} exited with {status} on SIGTERM\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if let Some(home) = &self.machines_of {
                wisp_vm::machine::kill_recorded(&home.join("run"));
            }
        }
    }
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(30);
    format!("--- {} ---\n{}", path.display(), lines[start..].join("\n"))
}

/// Runs `cmd` to completion; fails with its output unless it exits 0. Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    die_with_parent(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({})\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` like [`run`] and returns how long it took, process start to exit.
pub fn timed(cmd: &mut Command) -> Result<(Duration, String)> {
    let start = Instant::now();
    let out = run(cmd)?;
    Ok((start.elapsed(), out))
}

/// Children get SIGKILL if the benchmark dies, so no server outlives an aborted run.
/// (Children are spawned from the main thread only, which lives as long as the process.)
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
