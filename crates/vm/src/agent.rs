//! Host side of the guest agent protocol (`docs/AGENT.md`): an async client over any byte
//! stream (QEMU's virtio-serial chardev socket, or a test agent's stdio).
//!
//! One reader task demultiplexes frames into per-session queues. Every frame from the
//! guest is size-capped and validated by `wisp-proto`; data beyond the window we granted
//! is a protocol violation that ends the session, so a hostile guest cannot make the host
//! buffer more than one window per session.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use wisp_proto::{encode, Frame, FrameReader, CHUNK, INITIAL_WINDOW, PROTOCOL_VERSION};

mod fs;
mod net;
mod tasks;
pub use fs::{FileStream, FileWatch, WriteOptions, MAX_LISTING};
pub use net::{PortWatch, Tunnel, TunnelReader, TunnelWriter};
pub use tasks::{GuestReplier, GuestRequests};

pub use wisp_proto::{
    Control, ExecRequest, ExitStatus, FsEntry, FsOp, GuestRequest, Kind, ListeningPort,
    ServiceSpec, ServiceStatus, TaskInfo, TtySize,
};

/// Default time [`AgentClient::connect`] waits for the agent's `hello` (covers a TCG boot).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often `hello` is re-sent while the agent has not answered.
const HELLO_RETRY: Duration = Duration::from_millis(500);

/// The first session number of connection `connection`: spread over the whole
/// space, so the sessions of two connections (a machine saved and resumed, a
/// daemon restarted) do not share numbers. Work the agent started for an earlier
/// connection can outlive it (a checkpoint mount that was under way when the
/// sprite went to sleep) and answer, or end its session, after the resume: with
/// numbers counted from 1 on every connection, that answer landed in the new
/// connection's session of the same number (its `guest_requests` session, whose
/// replies were then dropped: a guest request unanswered for 120 s).
fn first_session(connection: u64) -> u32 {
    // splitmix64's finaliser: consecutive connection numbers land far apart.
    let mut x = connection.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    // Below 2^31, never 0, and 2^31 sessions from wrapping.
    (x as u32 & 0x7FFF_FFFF).max(1)
}

/// A number for a new agent connection's `hello` that no earlier connection of
/// this process had, and that a connection of an earlier process (a daemon that
/// restarted) had only by a 2^-64 chance: a counter started from the clock.
fn connection_number() -> u64 {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let _ = NEXT.compare_exchange(
        0,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ ((std::process::id() as u64) << 40)
            | 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    NEXT.fetch_add(2, Ordering::SeqCst)
}

/// Errors of the agent client. `Disconnected` means the channel is gone (the VM stopped or
/// crashed); `Remote` is the agent refusing one request (the connection stays usable).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent channel i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the agent connection is closed")]
    Disconnected,
    #[error("the agent did not answer hello within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the agent refused protocol version {PROTOCOL_VERSION}: {0}")]
    Version(String),
    #[error("agent: {0}")]
    Remote(String),
    /// A system call in the guest failed: `errno` is its name (`ENOENT`, ...).
    #[error("agent: {message}")]
    Os { errno: String, message: String },
    #[error("agent protocol violation: {0}")]
    Protocol(String),
    /// The session's process exited or the session was dropped: its input is no longer
    /// read, so a writer waiting for window room gives up instead of waiting forever.
    #[error("the session has ended; it takes no more input")]
    SessionEnded,
}

/// What the agent announced in its `hello` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub version: u32,
    pub agent: String,
    pub capabilities: Vec<String>,
}

/// Collected result of [`AgentClient::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

enum Event {
    Control(Control),
    Data(Vec<u8>),
    Stderr(Vec<u8>),
    Eof,
    /// The connection ended, or this session broke the protocol.
    Closed(AgentError),
}

/// How many more data bytes we may send on a session, and whether the session still
/// takes any (it ends with its exit, its error or its drop).
#[derive(Default)]
struct SendWindow {
    avail: Mutex<u64>,
    notify: Notify,
    ended: AtomicBool,
}

impl SendWindow {
    fn new() -> Arc<SendWindow> {
        Arc::new(SendWindow {
            avail: Mutex::new(INITIAL_WINDOW as u64),
            notify: Notify::new(),
            ended: AtomicBool::new(false),
        })
    }

    /// No more input is read: wakes every writer waiting for room, which then fails.
    fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn grant(&self, n: u32) {
        let mut a = self.avail.lock().unwrap_or_else(|e| e.into_inner());
        *a = a.saturating_add(n as u64);
        self.notify.notify_waiters();
    }
}

struct SessionTx {
    events: mpsc::UnboundedSender<Event>,
    window: Arc<SendWindow>,
    /// Data bytes received and not yet granted back: bounded by the window we gave.
    unacked: u64,
}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

struct Inner {
    writer: tokio::sync::Mutex<Writer>,
    sessions: Mutex<HashMap<u32, SessionTx>>,
    next_session: AtomicU32,
    closed: AtomicBool,
    closed_notify: Notify,
    hello: Mutex<Option<Result<AgentInfo, String>>>,
    hello_notify: Notify,
    /// Recent errors the agent reported on session 0 (frames it could not decode).
    conn_errors: Mutex<VecDeque<String>>,
}

impl Inner {
    async fn send(&self, kind: Kind, session: u32, payload: &[u8]) -> Result<(), AgentError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(AgentError::Disconnected);
        }
        // One buffer, one write: the frame reaches QEMU (and the guest) in one piece
        // rather than as a header and a payload that may travel separately.
        let bytes =
            encode(kind, session, payload).map_err(|e| AgentError::Protocol(e.to_string()))?;
        let mut w = self.writer.lock().await;
        let r = async {
            w.write_all(&bytes).await?;
            w.flush().await
        }
        .await;
        r.map_err(|e| {
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                AgentError::Disconnected
            } else {
                AgentError::Io(e)
            }
        })
    }

    async fn send_control(&self, session: u32, msg: &Control) -> Result<(), AgentError> {
        let f = Frame::control(session, msg);
        self.send(Kind::Control, session, &f.payload).await
    }

    /// Data consumed by the caller: give the agent room for that much more.
    async fn grant(&self, session: u32, n: usize) {
        if n == 0 {
            return;
        }
        if let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&session)
        {
            s.unacked = s.unacked.saturating_sub(n as u64);
        }
        let _ = self
            .send(Kind::Window, session, &(n as u32).to_le_bytes())
            .await;
    }

    fn dispatch(&self, f: Frame) {
        if f.session == 0 {
            return self.session0(f);
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = sessions.get_mut(&f.session) else {
            // Late frames of a session we already dropped.
            return;
        };
        let ev = match f.kind {
            Kind::Window => {
                s.window.grant(f.window_bytes());
                return;
            }
            Kind::Data | Kind::Stderr => {
                s.unacked += f.payload.len() as u64;
                if s.unacked > INITIAL_WINDOW as u64 {
                    Event::Closed(AgentError::Protocol(format!(
                        "session `{}` overran its window: `{}` bytes unacknowledged",
                        f.session, s.unacked
                    )))
                } else if f.kind == Kind::Data {
                    Event::Data(f.payload)
                } else {
                    Event::Stderr(f.payload)
                }
            }
            Kind::Eof => Event::Eof,
            Kind::Control => match f.to_control() {
                Ok(c) => {
                    if matches!(c, Control::Exit(_) | Control::Error { .. }) {
                        // The process is gone: stdin still queued for it is never read,
                        // and no more window will come.
                        s.window.end();
                    }
                    Event::Control(c)
                }
                Err(e) => Event::Closed(AgentError::Protocol(format!("bad control message: {e}"))),
            },
        };
        let fatal = matches!(ev, Event::Closed(_));
        if fatal {
            s.window.end();
        }
        let _ = s.events.send(ev);
        if fatal {
            sessions.remove(&f.session);
        }
    }

    fn session0(&self, f: Frame) {
        let msg = match (f.kind, f.to_control()) {
            (Kind::Control, Ok(m)) => m,
            (kind, r) => {
                tracing::warn!(?kind, error = ?r.err(), "unexpected frame from the agent on session 0");
                return;
            }
        };
        match msg {
            Control::Hello {
                version,
                agent,
                capabilities,
                ..
            } => {
                let mut h = self.hello.lock().unwrap_or_else(|e| e.into_inner());
                if h.is_none() {
                    // The agent may announce itself unasked; only a version we speak counts.
                    *h = Some(if version == PROTOCOL_VERSION {
                        Ok(AgentInfo {
                            version,
                            agent,
                            capabilities,
                        })
                    } else {
                        Err(format!("the agent speaks protocol version {version}"))
                    });
                }
                self.hello_notify.notify_waiters();
            }
            Control::Error { message, .. } => {
                tracing::warn!(%message, "agent reported a connection error");
                let mut h = self.hello.lock().unwrap_or_else(|e| e.into_inner());
                if h.is_none() && message.contains("protocol version") {
                    *h = Some(Err(message.clone()));
                    self.hello_notify.notify_waiters();
                }
                let mut errs = self.conn_errors.lock().unwrap_or_else(|e| e.into_inner());
                if errs.len() >= 16 {
                    errs.pop_front();
                }
                errs.push_back(message);
            }
            other => tracing::debug!(?other, "ignored session-0 message"),
        }
    }

    fn close_all(&self, why: &str) {
        self.closed.store(true, Ordering::SeqCst);
        self.closed_notify.notify_waiters();
        self.hello_notify.notify_waiters();
        let all: Vec<SessionTx> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in all {
            let _ = s.events.send(Event::Closed(AgentError::Disconnected));
            s.window.end();
        }
        tracing::debug!(why, "agent connection closed");
    }
}

async fn read_loop<R: AsyncRead + Unpin>(inner: Arc<Inner>, mut r: R) {
    let mut frames = FrameReader::new();
    let mut tmp = vec![0u8; 256 * 1024];
    let why = loop {
        let n = match r.read(&mut tmp).await {
            Ok(0) => break "eof".to_string(),
            Ok(n) => n,
            Err(e) => break e.to_string(),
        };
        frames.feed(&tmp[..n], |item| match item {
            Ok(f) => inner.dispatch(f),
            // The guest's console may leak onto the port before the agent runs;
            // resynchronise rather than give up.
            Err(error) => {
                tracing::warn!(%error, "garbage from the agent channel; resynchronising")
            }
        });
    };
    inner.close_all(&why);
}

/// One open session: its event queue and a guard that forgets it (and tells the agent to
/// abandon it, if it is still running) on drop.
struct Session {
    inner: Arc<Inner>,
    id: u32,
    events: mpsc::UnboundedReceiver<Event>,
    window: Arc<SendWindow>,
    finished: bool,
}

impl Session {
    async fn next(&mut self) -> Result<Event, AgentError> {
        match self.events.recv().await {
            Some(Event::Closed(e)) => {
                self.finished = true;
                Err(e)
            }
            Some(ev) => Ok(ev),
            None => Err(AgentError::Disconnected),
        }
    }

    /// The next control message; data frames are unexpected here.
    async fn next_control(&mut self) -> Result<Control, AgentError> {
        match self.next().await? {
            Event::Control(Control::Error { message, errno }) => {
                self.finished = true;
                Err(remote(message, errno))
            }
            Event::Control(c) => Ok(c),
            _ => Err(AgentError::Protocol(format!(
                "data frame on session `{}` where a control message was expected",
                self.id
            ))),
        }
    }

    async fn reserve(&mut self, want: usize) -> Result<usize, AgentError> {
        reserve(&self.inner, &self.window, want).await
    }
}

async fn reserve(inner: &Inner, window: &SendWindow, want: usize) -> Result<usize, AgentError> {
    loop {
        let notified = window.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if inner.closed.load(Ordering::SeqCst) {
            return Err(AgentError::Disconnected);
        }
        if window.ended.load(Ordering::SeqCst) {
            return Err(AgentError::SessionEnded);
        }
        {
            let mut a = window.avail.lock().unwrap_or_else(|e| e.into_inner());
            if *a > 0 {
                let n = (*a).min(want as u64) as usize;
                *a -= n as u64;
                return Ok(n);
            }
        }
        notified.await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.window.end();
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if !self.finished && !self.inner.closed.load(Ordering::SeqCst) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let inner = self.inner.clone();
                let id = self.id;
                rt.spawn(async move {
                    let _ = inner.send_control(id, &Control::Close).await;
                });
            }
        }
    }
}

/// A connection to one guest agent. Cheap to share: wrap it in an `Arc`; every method
/// takes `&self` and many sessions run concurrently.
pub struct AgentClient {
    inner: Arc<Inner>,
    info: AgentInfo,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl AgentClient {
    /// Handshakes over `stream` (retrying `hello` until the agent answers) with the
    /// default timeout, [`CONNECT_TIMEOUT`].
    pub async fn connect<S>(stream: S) -> Result<AgentClient, AgentError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::connect_timeout(stream, CONNECT_TIMEOUT).await
    }

    pub async fn connect_timeout<S>(stream: S, timeout: Duration) -> Result<AgentClient, AgentError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        let connection = connection_number();
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(Box::new(w)),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU32::new(first_session(connection)),
            closed: AtomicBool::new(false),
            closed_notify: Notify::new(),
            hello: Mutex::new(None),
            hello_notify: Notify::new(),
            conn_errors: Mutex::new(VecDeque::new()),
        });
        let reader = tokio::spawn(read_loop(inner.clone(), r));
        // Every re-sent `hello` of this connection carries the same number, so a
        // late one does not end the sessions opened after the first was answered.
        let hello = Control::Hello {
            version: PROTOCOL_VERSION,
            agent: format!("wisp-vm {}", env!("CARGO_PKG_VERSION")),
            capabilities: vec![],
            connection,
        };
        let deadline = Instant::now() + timeout;
        let info = loop {
            let notified = inner.hello_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(h) = inner
                .hello
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                break h.map_err(AgentError::Version);
            }
            if inner.closed.load(Ordering::SeqCst) {
                break Err(AgentError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(AgentError::HandshakeTimeout(timeout));
            }
            // Re-sent because bytes written before the guest opens its port may be lost.
            // Bounded by the deadline: while the guest has not opened its port QEMU
            // reads nothing, so the socket fills after a few hundred hellos (a guest
            // hung in boot) and a write would then wait forever.
            match tokio::time::timeout(deadline - now, inner.send_control(0, &hello)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break Err(e),
                Err(_) => break Err(AgentError::HandshakeTimeout(timeout)),
            }
            let wait = HELLO_RETRY.min(deadline - now);
            let _ = tokio::time::timeout(wait, notified).await;
        };
        match info {
            Ok(info) => Ok(AgentClient {
                inner,
                info,
                reader,
            }),
            Err(e) => {
                reader.abort();
                Err(e)
            }
        }
    }

    /// What the agent announced.
    pub fn info(&self) -> &AgentInfo {
        &self.info
    }

    /// Steps the guest's wall clock to the host's (the guest's RTC has whole seconds
    /// only, and a resumed guest's clock stood still while it slept). Unanswered: a
    /// guest that cannot set it reports an error on session 0.
    pub async fn set_clock(&self) -> Result<(), AgentError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let unix_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.inner
            .send_control(0, &Control::SetClock { unix_ns })
            .await
    }

    /// Whether the connection has ended (the VM stopped, or the stream broke).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Waits until the connection ends.
    pub async fn closed(&self) {
        loop {
            let n = self.inner.closed_notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }

    /// Errors the agent reported about frames it could not decode (most recent last).
    pub fn connection_errors(&self) -> Vec<String> {
        self.inner
            .conn_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Writes raw bytes to the channel, bypassing the codec: for tests of the agent's
    /// handling of malformed frames.
    #[doc(hidden)]
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), AgentError> {
        let mut w = self.inner.writer.lock().await;
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    /// Allocates a session number for a frame sent by hand (tests).
    #[doc(hidden)]
    pub fn raw_session(&self) -> u32 {
        self.inner.next_session.fetch_add(1, Ordering::SeqCst)
    }

    /// Opens a session, sends one frame of `kind` with `payload` as is (no validation of
    /// the payload), and returns the agent's first control answer: for tests of malformed
    /// requests.
    #[doc(hidden)]
    pub async fn raw_request(&self, kind: Kind, payload: &[u8]) -> Result<Control, AgentError> {
        let mut s = self.open();
        self.inner.send(kind, s.id, payload).await?;
        let r = s.next_control().await;
        s.finished = true;
        r
    }

    fn open(&self) -> Session {
        let id = self.inner.next_session.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel();
        let window = SendWindow::new();
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                SessionTx {
                    events: tx,
                    window: window.clone(),
                    unacked: 0,
                },
            );
        Session {
            inner: self.inner.clone(),
            id,
            events: rx,
            window,
            finished: false,
        }
    }

    /// One request, one control answer.
    async fn request(&self, msg: &Control) -> Result<Control, AgentError> {
        let mut s = self.open();
        self.inner.send_control(s.id, msg).await?;
        let r = s.next_control().await;
        s.finished = true;
        r
    }

    /// Round-trip time of a `ping`.
    pub async fn ping(&self) -> Result<Duration, AgentError> {
        let t0 = Instant::now();
        match self.request(&Control::Ping).await? {
            Control::Pong => Ok(t0.elapsed()),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts a process. Its output must be consumed ([`ExecSession::recv`]) for it to
    /// make progress: the agent only sends as much as the host has room for.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecSession, AgentError> {
        let mut s = self.open();
        self.inner.send_control(s.id, &Control::Exec(req)).await?;
        match s.next_control().await? {
            Control::Started { pid } => Ok(ExecSession {
                pid,
                input: ExecInput {
                    inner: s.inner.clone(),
                    id: s.id,
                    window: s.window.clone(),
                },
                session: s,
                done: false,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs `argv` to completion with empty stdin and collects its output.
    pub async fn run<I, A>(&self, argv: I) -> Result<Output, AgentError>
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        let req = ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        };
        let e = self.exec(req).await?;
        e.input().close_stdin().await?;
        e.output().await
    }

    /// Writes a file of any size from `reader`, streamed; replaces `path` atomically when
    /// complete (creating missing parent folders). Returns the number of bytes written.
    pub async fn write_file<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
        reader: R,
    ) -> Result<u64, AgentError> {
        let options = WriteOptions {
            mode,
            uid,
            gid,
            mkdir_parents: true,
            keep_existing: false,
        };
        self.write_file_with(path, options, reader).await
    }

    /// Sends `request` (a `file_write`), then `reader`'s bytes, then the end.
    async fn write_stream<R: AsyncRead + Unpin>(
        &self,
        request: Control,
        mut reader: R,
    ) -> Result<u64, AgentError> {
        let mut s = self.open();
        self.inner.send_control(s.id, &request).await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            // An early refusal (cannot create the file) arrives as an error event.
            if let Ok(ev) = s.events.try_recv() {
                return match ev {
                    Event::Control(Control::Error { message, errno }) => {
                        s.finished = true;
                        Err(remote(message, errno))
                    }
                    Event::Closed(e) => Err(e),
                    _ => Err(AgentError::Protocol(
                        "unexpected frame during a file write".into(),
                    )),
                };
            }
            let want = s.reserve(CHUNK).await?;
            let n = reader.read(&mut buf[..want]).await?;
            if n < want {
                s.window.grant((want - n) as u32);
            }
            if n == 0 {
                break;
            }
            self.inner.send(Kind::Data, s.id, &buf[..n]).await?;
        }
        self.inner.send(Kind::Eof, s.id, &[]).await?;
        match s.next_control().await? {
            Control::Done { bytes } => {
                s.finished = true;
                Ok(bytes)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Reads a whole file into `writer`, streamed. Returns the number of bytes.
    pub async fn read_file<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        writer: W,
    ) -> Result<u64, AgentError> {
        self.read_stream(
            &Control::FileRead {
                path: path.to_string(),
            },
            writer,
        )
        .await
    }

    async fn read_stream<W: AsyncWrite + Unpin>(
        &self,
        req: &Control,
        mut writer: W,
    ) -> Result<u64, AgentError> {
        let mut s = self.open();
        self.inner.send_control(s.id, req).await?;
        match s.next_control().await? {
            Control::FileInfo { .. } => {}
            other => return Err(unexpected(&other)),
        }
        let mut got = 0u64;
        loop {
            match s.next().await? {
                Event::Data(d) => {
                    writer.write_all(&d).await?;
                    got += d.len() as u64;
                    self.inner.grant(s.id, d.len()).await;
                }
                Event::Eof => {}
                Event::Control(Control::Done { bytes }) => {
                    s.finished = true;
                    writer.flush().await?;
                    if bytes != got {
                        return Err(AgentError::Protocol(format!(
                            "agent reported `{bytes}` bytes but sent `{got}`"
                        )));
                    }
                    return Ok(got);
                }
                Event::Control(Control::Error { message, errno }) => {
                    s.finished = true;
                    return Err(remote(message, errno));
                }
                Event::Control(other) => return Err(unexpected(&other)),
                Event::Stderr(_) => {
                    return Err(AgentError::Protocol("stderr frame in a file read".into()))
                }
                Event::Closed(e) => return Err(e),
            }
        }
    }

    /// Creates or replaces a service (persisted in the guest, started at every boot).
    pub async fn define_service(&self, spec: ServiceSpec) -> Result<(), AgentError> {
        expect_ok(self.request(&Control::ServiceDefine(spec)).await?)
    }

    /// Stops and forgets a service.
    pub async fn remove_service(&self, name: &str) -> Result<(), AgentError> {
        expect_ok(
            self.request(&Control::ServiceRemove {
                name: name.to_string(),
            })
            .await?,
        )
    }

    pub async fn list_services(&self) -> Result<Vec<ServiceStatus>, AgentError> {
        match self.request(&Control::ServiceList).await? {
            Control::Services { services } => Ok(services),
            other => Err(unexpected(&other)),
        }
    }

    /// A service's log (the last `tail` bytes, or all of it).
    pub async fn service_logs(&self, name: &str, tail: Option<u64>) -> Result<Vec<u8>, AgentError> {
        let mut v = Vec::new();
        self.read_stream(
            &Control::ServiceLogs {
                name: name.to_string(),
                tail,
                offset: None,
            },
            &mut v,
        )
        .await?;
        Ok(v)
    }

    /// A service's log from byte `offset` on, and the log's size when read: call again
    /// with `offset + bytes` to follow it. (A log that was rotated meanwhile is smaller
    /// than `offset`: nothing is read and the size says where it starts again.)
    pub async fn service_log_from(
        &self,
        name: &str,
        offset: u64,
    ) -> Result<(Vec<u8>, u64), AgentError> {
        let mut stream = self
            .open_stream(&Control::ServiceLogs {
                name: name.to_string(),
                tail: None,
                offset: Some(offset),
            })
            .await?;
        let size = stream.size;
        let mut v = Vec::new();
        while let Some(chunk) = stream.chunk().await? {
            v.extend_from_slice(&chunk);
        }
        Ok((v, size))
    }

    /// Starts a stopped service again.
    pub async fn start_service(&self, name: &str) -> Result<(), AgentError> {
        let name = name.to_string();
        expect_ok(self.request(&Control::ServiceStart { name }).await?)
    }

    /// Stops a service (keeping its definition); returns once it ended.
    pub async fn stop_service(&self, name: &str) -> Result<(), AgentError> {
        let name = name.to_string();
        expect_ok(self.request(&Control::ServiceStop { name }).await?)
    }

    /// Sends signal number `signal` to a running service.
    pub async fn signal_service(&self, name: &str, signal: i32) -> Result<(), AgentError> {
        let name = name.to_string();
        expect_ok(
            self.request(&Control::ServiceSignal { name, signal })
                .await?,
        )
    }

    /// Mounts the disk with serial `serial` read-only at
    /// `/.sprite/checkpoints/<name>` in the guest. Errors: `AgentError::Os`
    /// (`EEXIST` when mounted, `ENOENT` for no such disk), an older agent's
    /// refusal.
    pub async fn mount_checkpoint(&self, serial: &str, name: &str) -> Result<(), AgentError> {
        let request = Control::MountCheckpoint {
            serial: serial.to_string(),
            name: name.to_string(),
        };
        match self.request(&request).await? {
            Control::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Unmounts `/.sprite/checkpoints/<name>` in the guest (`EBUSY` while a
    /// process uses it).
    pub async fn unmount_checkpoint(&self, name: &str) -> Result<(), AgentError> {
        let request = Control::UnmountCheckpoint {
            name: name.to_string(),
        };
        match self.request(&request).await? {
            Control::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Whether the agent freezes filesystems ([`AgentClient::freeze`]).
    pub fn can_freeze(&self) -> bool {
        self.info.capabilities.iter().any(|c| c == "fsfreeze")
    }

    /// Writes the guest's dirty pages and freezes its writable disk filesystems
    /// (see [`Control::Freeze`]); the mount points frozen. The guest thaws by itself
    /// `timeout` (of its running time) later unless [`AgentClient::thaw`] comes
    /// first. Errors: `AgentError::Os` when a filesystem cannot be frozen (nothing
    /// stays frozen then), `EBUSY` while another freeze holds.
    pub async fn freeze(&self, timeout: Duration) -> Result<Vec<String>, AgentError> {
        let request = Control::Freeze {
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.request(&request).await? {
            Control::Frozen { filesystems } => Ok(filesystems),
            other => Err(unexpected(&other)),
        }
    }

    /// Ends a freeze; `true` when the guest had thawed by itself already (its
    /// timeout passed: writes may have reached the disk meanwhile).
    pub async fn thaw(&self) -> Result<bool, AgentError> {
        match self.request(&Control::Thaw).await? {
            Control::Thawed { early } => Ok(early),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the agent to stop services, sync and power the guest off. Returns when the
    /// agent confirmed (root read-only, about to power off) or the channel closed.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        match self.request(&Control::Shutdown).await {
            Ok(Control::Ok) | Err(AgentError::Disconnected) => Ok(()),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(e),
        }
    }
}

/// The error of an `error` answer.
fn remote(message: String, errno: Option<String>) -> AgentError {
    match errno {
        Some(errno) => AgentError::Os { errno, message },
        None => AgentError::Remote(message),
    }
}

fn expect_ok(c: Control) -> Result<(), AgentError> {
    match c {
        Control::Ok => Ok(()),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(c: &Control) -> AgentError {
    AgentError::Protocol(format!("unexpected answer {c:?}"))
}

/// Output or end of an exec session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitStatus),
}

/// A running process in the guest.
pub struct ExecSession {
    pub pid: u32,
    input: ExecInput,
    session: Session,
    done: bool,
}

/// The input side of an exec session: stdin, window size, signals. Clone it into the
/// task that copies stdin while another reads the output.
#[derive(Clone)]
pub struct ExecInput {
    inner: Arc<Inner>,
    id: u32,
    window: Arc<SendWindow>,
}

impl ExecInput {
    /// Writes stdin bytes, waiting while the agent's window is full.
    pub async fn write(&self, mut data: &[u8]) -> Result<(), AgentError> {
        while !data.is_empty() {
            let n = reserve(&self.inner, &self.window, data.len().min(CHUNK)).await?;
            self.inner.send(Kind::Data, self.id, &data[..n]).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Closes stdin (the process reads EOF). No effect in PTY mode.
    pub async fn close_stdin(&self) -> Result<(), AgentError> {
        self.inner.send(Kind::Eof, self.id, &[]).await
    }

    /// New terminal size (PTY mode).
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), AgentError> {
        self.inner
            .send_control(self.id, &Control::Resize { rows, cols })
            .await
    }

    /// Sends signal number `signal` to the process group (PTY: the foreground group).
    pub async fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.inner
            .send_control(self.id, &Control::Signal { signal })
            .await
    }
}

impl ExecSession {
    /// The session number on the wire (for tests that send frames by hand).
    #[doc(hidden)]
    pub fn session_id(&self) -> u32 {
        self.session.id
    }

    pub fn input(&self) -> ExecInput {
        self.input.clone()
    }

    /// The next piece of output, or the exit status; `None` after the exit was returned.
    pub async fn recv(&mut self) -> Result<Option<ExecEvent>, AgentError> {
        if self.done {
            return Ok(None);
        }
        loop {
            match self.session.next().await? {
                Event::Data(d) => {
                    self.session.inner.grant(self.session.id, d.len()).await;
                    return Ok(Some(ExecEvent::Stdout(d)));
                }
                Event::Stderr(d) => {
                    self.session.inner.grant(self.session.id, d.len()).await;
                    return Ok(Some(ExecEvent::Stderr(d)));
                }
                Event::Eof => continue,
                Event::Control(Control::Exit(st)) => {
                    self.done = true;
                    self.session.finished = true;
                    return Ok(Some(ExecEvent::Exit(st)));
                }
                Event::Control(Control::Error { message, errno }) => {
                    self.session.finished = true;
                    return Err(remote(message, errno));
                }
                Event::Control(other) => return Err(unexpected(&other)),
                Event::Closed(e) => return Err(e),
            }
        }
    }

    /// Waits for the exit, discarding output.
    pub async fn wait(mut self) -> Result<ExitStatus, AgentError> {
        loop {
            match self.recv().await? {
                Some(ExecEvent::Exit(st)) => return Ok(st),
                Some(_) => {}
                None => return Err(AgentError::Protocol("exec session ended twice".into())),
            }
        }
    }

    /// Waits for the exit, collecting output.
    pub async fn output(mut self) -> Result<Output, AgentError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.recv().await? {
                Some(ExecEvent::Stdout(d)) => stdout.extend_from_slice(&d),
                Some(ExecEvent::Stderr(d)) => stderr.extend_from_slice(&d),
                Some(ExecEvent::Exit(status)) => {
                    return Ok(Output {
                        status,
                        stdout,
                        stderr,
                    })
                }
                None => return Err(AgentError::Protocol("exec session ended twice".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The client against a hostile "guest": a peer on an in-memory pipe that speaks the
    //! framing but breaks the rules. (The well-behaved agent is tested for real in
    //! `tests/agent_host.rs` and `tests/agent_vm.rs`.)

    use super::*;
    use tokio::io::DuplexStream;
    use wisp_proto::{decode, Decoded};

    /// Connections of one process have distinct numbers, and their session
    /// numbers start far apart: work the agent started for one connection that
    /// answers after the next began cannot land in one of the next's sessions.
    #[test]
    fn connections_number_their_sessions_apart() {
        let numbers: Vec<u64> = (0..1000).map(|_| connection_number()).collect();
        let mut unique = numbers.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), numbers.len());
        assert!(numbers.iter().all(|n| *n != 0));
        // First sessions of consecutive connection numbers (fixed ones: the clock
        // seeds the real ones), as one process makes them.
        let sequence: Vec<u64> = (0..1000).map(|i| 1 + 2 * i).collect();
        for pair in sequence.windows(2) {
            let (a, b) = (first_session(pair[0]), first_session(pair[1]));
            assert!(a != 0 && b != 0 && a < 1 << 31 && b < 1 << 31);
            // A connection's first hundred thousand sessions stay clear of the next's.
            assert!(a.abs_diff(b) > 100_000, "{a} and {b}");
        }
    }

    async fn read_frame(peer: &mut DuplexStream, buf: &mut Vec<u8>) -> Frame {
        loop {
            if let Decoded::Frame(f, n) = decode(buf) {
                buf.drain(..n);
                return f;
            }
            let mut tmp = [0u8; 4096];
            let n = peer.read(&mut tmp).await.unwrap();
            assert!(n > 0, "client closed the stream");
            buf.extend_from_slice(&tmp[..n]);
        }
    }

    async fn send(peer: &mut DuplexStream, f: &Frame) {
        peer.write_all(&f.encode().unwrap()).await.unwrap();
    }

    /// Answers the handshake and returns the peer side.
    async fn connected() -> (AgentClient, DuplexStream, Vec<u8>) {
        let (host, mut peer) = tokio::io::duplex(8 << 20);
        let server = tokio::spawn(async move {
            let mut buf = Vec::new();
            let f = read_frame(&mut peer, &mut buf).await;
            assert!(matches!(f.to_control(), Ok(Control::Hello { .. })));
            // Garbage first: the client must resynchronise, not give up.
            peer.write_all(b"\r\nconsole noise\r\n").await.unwrap();
            let hello = Control::Hello {
                version: PROTOCOL_VERSION,
                agent: "fake".into(),
                capabilities: vec![],
                connection: 0,
            };
            send(&mut peer, &Frame::control(0, &hello)).await;
            (peer, buf)
        });
        let client = AgentClient::connect_timeout(host, Duration::from_secs(10))
            .await
            .unwrap();
        let (peer, buf) = server.await.unwrap();
        (client, peer, buf)
    }

    #[tokio::test]
    async fn data_beyond_the_granted_window_ends_that_session_only() {
        let (client, mut peer, mut buf) = connected().await;
        assert_eq!(client.info().agent, "fake");
        let server = tokio::spawn(async move {
            let f = read_frame(&mut peer, &mut buf).await;
            assert!(matches!(f.to_control(), Ok(Control::Exec(_))));
            let s = f.session;
            send(&mut peer, &Frame::control(s, &Control::Started { pid: 9 })).await;
            // 3 MiB without waiting for grants: more than the 2 MiB window.
            let chunk = vec![7u8; CHUNK];
            for _ in 0..24 {
                let f = Frame {
                    session: s,
                    kind: Kind::Data,
                    payload: chunk.clone(),
                };
                send(&mut peer, &f).await;
            }
            // Then answer a ping on another session: the connection must still work.
            loop {
                let f = read_frame(&mut peer, &mut buf).await;
                if let Ok(Control::Ping) = f.to_control() {
                    send(&mut peer, &Frame::control(f.session, &Control::Pong)).await;
                    return peer;
                }
            }
        });
        let mut e = client
            .exec(ExecRequest {
                argv: vec!["x".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(e.pid, 9);
        // Consume nothing until the reader has seen the overrun (it then forgets the session).
        while client
            .inner
            .sessions
            .lock()
            .unwrap()
            .contains_key(&e.session.id)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut got = 0usize;
        let err = loop {
            match e.recv().await {
                Ok(Some(ExecEvent::Stdout(d))) => got += d.len(),
                Ok(other) => panic!("{other:?}"),
                Err(err) => break err,
            }
        };
        assert!(
            matches!(err, AgentError::Protocol(ref m) if m.contains("window")),
            "{err}"
        );
        assert!(got <= INITIAL_WINDOW as usize);
        client.ping().await.unwrap();
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn malformed_answers_are_errors_not_panics() {
        let (client, mut peer, mut buf) = connected().await;
        let server = tokio::spawn(async move {
            // A control frame that is not JSON, then one with the wrong answer type.
            let f = read_frame(&mut peer, &mut buf).await;
            let bad = Frame {
                session: f.session,
                kind: Kind::Control,
                payload: b"{nope".to_vec(),
            };
            send(&mut peer, &bad).await;
            let f = read_frame(&mut peer, &mut buf).await;
            send(
                &mut peer,
                &Frame::control(f.session, &Control::Started { pid: 1 }),
            )
            .await;
            peer
        });
        let e = client.ping().await.unwrap_err();
        assert!(matches!(e, AgentError::Protocol(_)), "{e}");
        let e = client.list_services().await.unwrap_err();
        assert!(matches!(e, AgentError::Protocol(_)), "{e}");
        let peer = server.await.unwrap();
        // The guest going away ends the connection: calls fail, nothing hangs.
        drop(peer);
        client.closed().await;
        assert!(matches!(client.ping().await, Err(AgentError::Disconnected)));
    }

    /// Readiness is event-driven: the agent's `hello` wakes the client at once, not at its
    /// next re-send. Time is paused and only moves when every task waits, so the clock
    /// shows whether the client sat out a retry interval.
    #[tokio::test(start_paused = true)]
    async fn the_agents_hello_makes_the_client_ready_at_once() {
        let (host, mut peer) = tokio::io::duplex(1 << 16);
        let start = tokio::time::Instant::now();
        let server = tokio::spawn(async move {
            let mut buf = Vec::new();
            let f = read_frame(&mut peer, &mut buf).await;
            assert!(matches!(f.to_control(), Ok(Control::Hello { .. })));
            let hello = Control::Hello {
                version: PROTOCOL_VERSION,
                agent: "prompt".into(),
                capabilities: vec![],
                connection: 0,
            };
            send(&mut peer, &Frame::control(0, &hello)).await;
            peer
        });
        let client = AgentClient::connect_timeout(host, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(client.info().agent, "prompt");
        assert!(start.elapsed() < HELLO_RETRY, "{:?}", start.elapsed());
        drop(server.await.unwrap());
    }

    /// A guest hung in boot never opens its port, so QEMU reads nothing and the
    /// re-sent hellos fill the socket: the handshake must still end at its deadline.
    #[tokio::test(start_paused = true)]
    async fn a_guest_that_never_reads_ends_the_handshake_at_its_deadline() {
        let (host, _peer) = tokio::io::duplex(64);
        let handshake = AgentClient::connect_timeout(host, Duration::from_secs(10));
        let outcome = tokio::time::timeout(Duration::from_secs(60), handshake)
            .await
            .expect("the handshake outlived its deadline");
        assert!(
            matches!(outcome, Err(AgentError::HandshakeTimeout(_))),
            "{:?}",
            outcome.err()
        );
    }

    #[tokio::test]
    async fn an_agent_of_another_version_fails_the_handshake() {
        let (host, mut peer) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let hello = Control::Hello {
                version: PROTOCOL_VERSION + 1,
                agent: "future".into(),
                capabilities: vec![],
                connection: 0,
            };
            // Announced unasked, as the agent does when its port opens.
            send(&mut peer, &Frame::control(0, &hello)).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let r = AgentClient::connect_timeout(host, Duration::from_secs(10)).await;
        assert!(matches!(r, Err(AgentError::Version(_))), "{:?}", r.err());
    }

    #[tokio::test]
    async fn a_refused_version_fails_the_handshake() {
        let (host, mut peer) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = read_frame(&mut peer, &mut buf).await;
            let err = Control::Error {
                message: "protocol version `1` is not supported; this agent speaks 2".into(),
                errno: None,
            };
            send(&mut peer, &Frame::control(0, &err)).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let r = AgentClient::connect_timeout(host, Duration::from_secs(10)).await;
        assert!(matches!(r, Err(AgentError::Version(_))), "{:?}", r.err());
    }
}
