//! Exec sessions: a command in a sprite that lives apart from the connection
//! that started it. Its recent output is kept (the last [`HISTORY`] bytes) so
//! a client can attach later, get it replayed, and go on live; a client that
//! goes away leaves it running: a TTY or `detachable` session until it ends
//! (unless `max_run_after_disconnect` says otherwise), any other for
//! `max_run_after_disconnect` (default 10 s), after which it gets SIGHUP and,
//! 5 s later, SIGKILL. A running session keeps its sprite awake; an ended one
//! stays listed for [`KEEP_ENDED`] so a client can still fetch its end.
//!
//! Output reaches attached clients with backpressure: a slow client slows the
//! command (through the agent's window) rather than losing bytes. With no
//! client attached, output only fills the history.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use wisp_vm::agent::{ExecEvent, ExecInput, ExecSession};

use crate::machines::Activity;
use crate::ControlError;

/// Output kept per session for a client that attaches later, in bytes.
pub const HISTORY: usize = 256 << 10;
/// How long an ended session stays listed.
pub const KEEP_ENDED: Duration = Duration::from_secs(60);
/// How long a non-TTY session runs after its last client went away, unless
/// the request says otherwise.
pub const DEFAULT_AFTER_DISCONNECT: Duration = Duration::from_secs(10);
/// Between SIGHUP and SIGKILL for a session past its time after disconnect.
const HANGUP_GRACE: Duration = Duration::from_secs(5);
/// Output waiting for one client before the command is slowed down, in messages.
const CLIENT_QUEUE: usize = 64;

/// What a session sends its clients.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The shell's exit code (128 + N for signal N).
    Exit(i32),
    /// The session broke (its sprite stopped, the agent went away).
    Error(String),
}

impl Output {
    fn len(&self) -> usize {
        match self {
            Output::Stdout(d) | Output::Stderr(d) => d.len(),
            _ => 0,
        }
    }
}

/// How long a session may run with no client attached: `None` is forever.
pub type AfterDisconnect = Option<Duration>;

/// What `GET /exec` lists of a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub command: String,
    pub workdir: String,
    pub tty: bool,
    pub created: SystemTime,
    pub last_activity: SystemTime,
    /// Average output rate over the session's life.
    pub bytes_per_second: u64,
    /// Whether the command still runs.
    pub is_active: bool,
    pub attached: usize,
}

struct State {
    history: VecDeque<Output>,
    history_bytes: usize,
    clients: Vec<(u64, tokio::sync::mpsc::Sender<Output>)>,
    next_client: u64,
    bytes: u64,
    last_activity: SystemTime,
    /// Set once the command ended: its last message.
    end: Option<Output>,
    /// Bumped at every attach: a disconnect timer that finds it changed stops.
    generation: u64,
}

/// One session.
pub struct Session {
    pub id: String,
    pub sprite: String,
    pub command: String,
    pub workdir: String,
    pub tty: bool,
    pub pid: u32,
    pub created: SystemTime,
    input: ExecInput,
    after_disconnect: AfterDisconnect,
    state: Mutex<State>,
}

/// A client's view of a session: its output, and detaching when dropped.
pub struct Attached {
    pub session: Arc<Session>,
    /// What the session wrote before this client attached (empty for the
    /// client that started it).
    pub replay: Vec<Output>,
    pub output: tokio::sync::mpsc::Receiver<Output>,
    id: u64,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.session.detach(self.id);
    }
}

impl Session {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The command's input (stdin, terminal size, signals).
    pub fn input(&self) -> &ExecInput {
        &self.input
    }

    pub fn info(&self) -> SessionInfo {
        let st = self.state();
        let age = self
            .created
            .elapsed()
            .unwrap_or_default()
            .as_secs_f64()
            .max(1.0);
        SessionInfo {
            id: self.id.clone(),
            command: self.command.clone(),
            workdir: self.workdir.clone(),
            tty: self.tty,
            created: self.created,
            last_activity: st.last_activity,
            bytes_per_second: (st.bytes as f64 / age) as u64,
            is_active: st.end.is_none(),
            attached: st.clients.len(),
        }
    }

    /// Whether the command ended.
    pub fn ended(&self) -> bool {
        self.state().end.is_some()
    }

    /// Attaches a client: the output kept so far (and the end, if it came),
    /// then everything from now on.
    pub fn attach(self: &Arc<Self>, replay: bool) -> Attached {
        let (tx, rx) = tokio::sync::mpsc::channel(CLIENT_QUEUE);
        let mut st = self.state();
        let mut past: Vec<Output> = if replay {
            st.history.iter().cloned().collect()
        } else {
            Vec::new()
        };
        if let Some(end) = &st.end {
            past.push(end.clone());
        }
        let id = st.next_client;
        st.next_client += 1;
        st.generation += 1;
        if st.end.is_none() {
            st.clients.push((id, tx));
        }
        drop(st);
        Attached {
            session: self.clone(),
            replay: past,
            output: rx,
            id,
        }
    }

    fn detach(self: &Arc<Self>, client: u64) {
        let mut st = self.state();
        st.clients.retain(|(id, _)| *id != client);
        if !st.clients.is_empty() || st.end.is_some() {
            return;
        }
        let Some(limit) = self.after_disconnect else {
            return;
        };
        let generation = st.generation;
        drop(st);
        let session = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let still_alone = {
                let st = session.state();
                st.generation == generation && st.clients.is_empty() && st.end.is_none()
            };
            if still_alone {
                tracing::info!(sprite = %session.sprite, session = %session.id, "ending a session nobody attached to within its time");
                let _ = session.input.signal(SIGHUP).await;
                tokio::time::sleep(HANGUP_GRACE).await;
                if !session.ended() {
                    let _ = session.input.signal(SIGKILL).await;
                }
            }
        });
    }

    /// Keeps `message` in the history and hands it to every attached client,
    /// waiting for room in their queues.
    async fn publish(&self, message: Output) {
        let clients = {
            let mut st = self.state();
            st.bytes += message.len() as u64;
            st.last_activity = SystemTime::now();
            match &message {
                Output::Exit(_) | Output::Error(_) => st.end = Some(message.clone()),
                _ => {
                    st.history_bytes += message.len();
                    st.history.push_back(message.clone());
                    while st.history_bytes > HISTORY {
                        match st.history.pop_front() {
                            Some(old) => st.history_bytes -= old.len(),
                            None => break,
                        }
                    }
                }
            }
            st.clients.clone()
        };
        for (id, client) in clients {
            if client.send(message.clone()).await.is_err() {
                self.state().clients.retain(|(c, _)| *c != id);
            }
        }
        if self.ended() {
            // The channels close: attached clients see the end.
            self.state().clients.clear();
        }
    }
}

const SIGHUP: i32 = 1;
const SIGKILL: i32 = 9;

/// The sessions of every sprite on this host.
#[derive(Default)]
pub struct Sessions {
    by_sprite: Mutex<HashMap<String, BTreeMap<String, Arc<Session>>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// What starts a session besides its command.
pub struct Start {
    pub command: String,
    pub workdir: String,
    pub tty: bool,
    pub after_disconnect: AfterDisconnect,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, Arc<Session>>>> {
        self.by_sprite.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the running `exec` of sprite `sprite` as a session and
    /// attaches the client that started it. The session holds `activity`
    /// (the sprite stays awake) until the command ends.
    pub fn start(
        self: &Arc<Self>,
        sprite: &str,
        exec: ExecSession,
        activity: Activity,
        start: Start,
    ) -> Attached {
        let id = (self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1)
        .to_string();
        let session = Arc::new(Session {
            id: id.clone(),
            sprite: sprite.to_string(),
            command: start.command,
            workdir: start.workdir,
            tty: start.tty,
            pid: exec.pid,
            created: SystemTime::now(),
            input: exec.input(),
            after_disconnect: start.after_disconnect,
            state: Mutex::new(State {
                history: VecDeque::new(),
                history_bytes: 0,
                clients: Vec::new(),
                next_client: 0,
                bytes: 0,
                last_activity: SystemTime::now(),
                end: None,
                generation: 0,
            }),
        });
        let attached = session.attach(false);
        self.map()
            .entry(sprite.to_string())
            .or_default()
            .insert(id.clone(), session.clone());
        let sessions = self.clone();
        tokio::spawn(async move {
            pump(&session, exec).await;
            drop(activity);
            tokio::time::sleep(KEEP_ENDED).await;
            let mut map = sessions.map();
            if let Some(list) = map.get_mut(&session.sprite) {
                list.remove(&session.id);
                if list.is_empty() {
                    map.remove(&session.sprite);
                }
            }
        });
        attached
    }

    /// Session `id` of sprite `sprite`.
    pub fn get(&self, sprite: &str, id: &str) -> Result<Arc<Session>, ControlError> {
        self.map()
            .get(sprite)
            .and_then(|list| list.get(id))
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!("sprite `{sprite}` has no exec session `{id}`"))
            })
    }

    /// The sessions of sprite `sprite`, oldest first.
    pub fn list(&self, sprite: &str) -> Vec<SessionInfo> {
        let mut list: Vec<SessionInfo> = self
            .map()
            .get(sprite)
            .map(|l| l.values().map(|s| s.info()).collect())
            .unwrap_or_default();
        list.sort_by_key(|s| s.created);
        list
    }

    /// Forgets every session of sprite `sprite` (it was deleted).
    pub fn forget(&self, sprite: &str) {
        self.map().remove(sprite);
    }
}

/// Copies the command's output into the session until it ends.
async fn pump(session: &Session, mut exec: ExecSession) {
    loop {
        let message = match exec.recv().await {
            Ok(Some(ExecEvent::Stdout(d))) => Output::Stdout(d),
            Ok(Some(ExecEvent::Stderr(d))) => Output::Stderr(d),
            Ok(Some(ExecEvent::Exit(status))) => Output::Exit(status.shell_code()),
            Ok(None) => Output::Error(format!(
                "the command in sprite `{}` ended without an exit status",
                session.sprite
            )),
            Err(source) => Output::Error(
                ControlError::Exec {
                    name: session.sprite.clone(),
                    source,
                }
                .chain(),
            ),
        };
        let last = matches!(message, Output::Exit(_) | Output::Error(_));
        session.publish(message).await;
        if last {
            return;
        }
    }
}
