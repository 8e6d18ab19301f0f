//! Reaps every child (as PID 1, also orphans re-parented to us) with `waitpid(-1)` and
//! hands exit statuses to whoever spawned the process.
//!
//! Spawning happens under the same lock the reaper takes before looking a pid up, so an
//! exit can never be reaped before its waiter is registered.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wisp_proto::ExitStatus;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, Sender<ExitStatus>>,
    /// Bumped at every spawn; wakes the reaper when it had no children.
    generation: u64,
}

#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
    spawned: Condvar,
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> Arc<Reaper> {
        let r = Arc::new(Reaper::default());
        let r2 = r.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r2.run())
            .expect("spawn reaper thread");
        r
    }

    /// Spawns `cmd` and returns the child with a receiver of its exit status. Never call
    /// `Child::wait` on it: the reaper owns reaping.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, Receiver<ExitStatus>)> {
        self.spawn_with(|| cmd.spawn(), |c| c.id() as i32)
    }

    /// Starts a process with `start` (which returns something holding its pid, `pid_of`)
    /// and returns it with a receiver of its exit status.
    pub fn spawn_with<T>(
        &self,
        start: impl FnOnce() -> io::Result<T>,
        pid_of: impl Fn(&T) -> i32,
    ) -> io::Result<(T, Receiver<ExitStatus>)> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let child = start()?;
        let (tx, rx) = channel();
        st.waiters.insert(pid_of(&child), tx);
        st.generation += 1;
        self.spawned.notify_all();
        Ok((child, rx))
    }

    fn run(&self) {
        loop {
            let generation = self.state.lock().map(|s| s.generation).unwrap_or(0);
            // Peek at the next dead child without reaping it: if it is a child `spawn` is
            // still creating (std reaps a child whose exec failed, and panics if someone
            // else already did), taking the lock below waits for `spawn` to finish.
            // SAFETY: siginfo_t is plain data; waitid fills it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid out-pointer.
            let r =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if r == 0 {
                // SAFETY: waitid succeeded, so si_pid is set.
                let pid = unsafe { info.si_pid() };
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let mut status = 0;
                // SAFETY: status is a valid out-pointer.
                let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if got == pid {
                    if let Some(tx) = st.waiters.remove(&pid) {
                        let _ = tx.send(crate::sys::exit_status(status));
                    }
                }
                continue;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ECHILD) {
                // No children at all: sleep until the next spawn.
                let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let _ = self
                    .spawned
                    .wait_timeout_while(st, Duration::from_secs(5), |s| s.generation == generation);
            }
        }
    }
}
