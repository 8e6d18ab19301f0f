//! The protocol server: reads frames from the channel, dispatches them to sessions.
//! One reader thread; each session's blocking work runs on its own threads.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use wisp_proto::{Control, Frame, FrameReader, Kind, CAPABILITIES, PROTOCOL_VERSION};

use crate::channel::{Credit, Out};
use crate::exec::{self, ExecHandle};
use crate::files::{self, Writer};
use crate::reaper::Reaper;
use crate::services::Services;
use crate::{fsops, ports, tunnel, watch};

enum Session {
    Exec(Arc<ExecHandle>),
    Write(Writer),
    Read(Arc<Credit>),
    Tunnel(Arc<tunnel::Tunnel>),
    /// A port or file watch: closing it stops its thread.
    Ports(Arc<std::sync::atomic::AtomicBool>),
    /// The host's `guest_requests` session: the guest's requests go out on it and the
    /// host's `guest_reply` answers come back.
    Requests,
}

/// What `shutdown` does after services are stopped and data synced.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// PID 1: remount the root read-only and power the machine off.
    PowerOff,
    /// Channel mode: exit the agent process.
    Exit,
}

pub struct Agent {
    pub out: Out,
    pub reaper: Arc<Reaper>,
    pub services: Arc<Services>,
    /// Keep-awake tasks and the in-sprite API's route to the host.
    pub hub: Arc<crate::api::Hub>,
    /// The filesystems frozen for a host's snapshot.
    freezer: Arc<crate::freeze::Freezer>,
    sessions: Mutex<HashMap<u32, Session>>,
    /// The highest session number the host has opened on this connection: a frame
    /// for a lower one that is not open is for a session that just ended (its end
    /// raced with the host's frame) and is dropped, not answered with an error.
    highest: std::sync::atomic::AtomicU32,
    /// The number of the host connection whose `hello` was answered last.
    connection: std::sync::atomic::AtomicU64,
    on_shutdown: OnShutdown,
}

impl Agent {
    pub fn new(
        out: Out,
        reaper: Arc<Reaper>,
        hub: Arc<crate::api::Hub>,
        on_shutdown: OnShutdown,
    ) -> Arc<Agent> {
        Arc::new(Agent {
            out,
            reaper,
            services: hub.services().clone(),
            hub,
            freezer: Arc::default(),
            sessions: Mutex::new(HashMap::new()),
            highest: std::sync::atomic::AtomicU32::new(0),
            connection: std::sync::atomic::AtomicU64::new(0),
            on_shutdown,
        })
    }

    /// A session's threads are done with it.
    pub fn finish(&self, session: u32) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session);
    }

    /// Serves frames from `r` until EOF, then abandons every open session (the host that
    /// owned them is gone).
    ///
    /// On the virtio port (PID 1) a read of 0 bytes is no end: the port reads 0 while no
    /// host is connected, and also once for a host disconnect that the guest learns of
    /// late, after a new host's first frames (seen after resuming a saved machine). So
    /// there it waits and reads on with the same frame reader, and a new host's `hello`
    /// is what ends the sessions of an earlier one.
    ///
    /// Frames are handled in order on a dispatch thread, except `thaw`, which the
    /// reading thread acts on at once: a frame ahead of it may be waiting on a frozen
    /// filesystem (a file write opening its file), and only the thaw frees it.
    pub fn serve(self: &Arc<Self>, r: &mut dyn Read) -> io::Result<()> {
        let (queue, queued) = std::sync::mpsc::channel::<Frame>();
        let me = self.clone();
        let dispatch = std::thread::Builder::new()
            .name("dispatch".into())
            .spawn(move || {
                for f in queued {
                    me.handle(f);
                }
            })?;
        let result = self.read_frames(r, &queue);
        drop(queue);
        let _ = dispatch.join();
        self.abandon_all();
        result
    }

    fn read_frames(
        self: &Arc<Self>,
        r: &mut dyn Read,
        queue: &std::sync::mpsc::Sender<Frame>,
    ) -> io::Result<()> {
        let mut frames = FrameReader::new();
        let mut tmp = vec![0u8; 256 * 1024];
        let result = loop {
            let n = match r.read(&mut tmp) {
                Ok(0) if self.on_shutdown == OnShutdown::PowerOff => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            };
            frames.feed(&tmp[..n], |item| match item {
                Ok(f) if is_thaw(&f) => {
                    let early = self.freezer.thaw();
                    self.out.control(f.session, &Control::Thawed { early });
                }
                Ok(f) => {
                    let _ = queue.send(f);
                }
                Err(error) => self
                    .out
                    .error(0, format!("bad frame, resynchronising: {error}")),
            });
        };
        result
    }

    fn abandon_all(&self) {
        let all: Vec<(u32, Session)> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, s) in all {
            close_session(s);
        }
    }

    /// Ends `session` with an error answer.
    fn fail(&self, session: u32, message: String) {
        self.fail_with(session, |out| out.error(session, message));
    }

    /// Ends `session` with the error answer `send` sends.
    fn fail_with(&self, session: u32, send: impl FnOnce(&Out)) {
        let s = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session);
        // The error goes out before the session is closed: closing an exec
        // session kills its process, whose exit status would otherwise reach
        // the host first and end the session as if nothing had gone wrong
        // (seen once under load).
        send(&self.out);
        if let Some(s) = s {
            close_session(s);
        }
    }

    fn handle(self: &Arc<Self>, f: Frame) {
        let s = f.session;
        match f.kind {
            Kind::Control => match f.to_control() {
                Ok(msg) => self.control(s, msg),
                Err(e) => self.fail(s, format!("bad control message: {e}")),
            },
            Kind::Data => self.data(s, f.payload),
            Kind::Eof => self.eof(s),
            Kind::Window => {
                let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                match sessions.get(&s) {
                    Some(Session::Exec(h)) => h.credit.grant(f.window_bytes()),
                    Some(Session::Read(c)) => c.grant(f.window_bytes()),
                    Some(Session::Tunnel(t)) => t.credit.grant(f.window_bytes()),
                    // A grant racing with the end of a session is normal.
                    _ => {}
                }
            }
            Kind::Stderr => self.fail(s, "stderr frames only go from agent to host".into()),
        }
    }

    fn data(&self, s: u32, payload: Vec<u8>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let err = match sessions.get_mut(&s) {
            Some(Session::Exec(h)) => h.stdin(payload).err(),
            Some(Session::Write(w)) => match w.write(&payload) {
                Ok(()) => {
                    self.out.window(s, payload.len() as u32);
                    None
                }
                Err(e) => {
                    // With the errno, as every failed system call is answered.
                    drop(sessions);
                    return self.fail_with(s, |out| out.error_io(s, "writing file", &e));
                }
            },
            Some(Session::Read(_)) => Some("data frame on a read session".into()),
            Some(Session::Tunnel(t)) => t.send(payload).err(),
            Some(Session::Ports(_)) => Some("data frame on a port watch".into()),
            Some(Session::Requests) => Some("data frame on the guest requests session".into()),
            None if self.ended(s) => None,
            None => Some(format!("data frame for session `{s}`, which is not open")),
        };
        drop(sessions);
        if let Some(e) = err {
            self.fail(s, e);
        }
    }

    /// Whether session `s`, not open, is one that was open on this connection.
    fn ended(&self, s: u32) -> bool {
        s <= self.highest.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn eof(&self, s: u32) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.remove(&s) {
            Some(Session::Exec(h)) => {
                h.close_stdin();
                sessions.insert(s, Session::Exec(h));
            }
            Some(Session::Tunnel(t)) => {
                t.close_write();
                sessions.insert(s, Session::Tunnel(t));
            }
            Some(Session::Write(w)) => {
                drop(sessions);
                match w.finish() {
                    Ok(bytes) => self.out.control(s, &Control::Done { bytes }),
                    Err(e) => self.out.error(s, format!("completing file: {e}")),
                }
            }
            Some(other) => {
                sessions.insert(s, other);
                drop(sessions);
                self.fail(s, "eof frame on a read session".into());
            }
            None if self.ended(s) => {}
            None => {
                drop(sessions);
                self.out
                    .error(s, format!("eof frame for session `{s}`, which is not open"));
            }
        }
    }

    fn control(self: &Arc<Self>, s: u32, msg: Control) {
        match msg {
            Control::Ping => return self.out.control(s, &Control::Pong),
            Control::Hello {
                version,
                connection,
                ..
            } if s == 0 => {
                if version == PROTOCOL_VERSION {
                    // A host's `hello` opens its connection: sessions of an earlier
                    // one (a daemon that restarted, a machine resumed from a saved
                    // state) have nobody to talk to, and their numbers are the new
                    // host's to use. Services run on. A `hello` the host re-sent
                    // while it waited for the answer names the connection already
                    // open: the sessions it opened since are kept (ending them lost
                    // a reply to the guest after a warm resume).
                    let previous = self
                        .connection
                        .swap(connection, std::sync::atomic::Ordering::SeqCst);
                    if connection == 0 || connection != previous {
                        let old: Vec<Session> = {
                            let mut sessions =
                                self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                            sessions.drain().map(|(_, v)| v).collect()
                        };
                        old.into_iter().for_each(close_session);
                        // The new host numbers its sessions afresh.
                        self.highest.store(0, std::sync::atomic::Ordering::SeqCst);
                        // Requests the guest sent to the old host are sent again
                        // once the new one opens its `guest_requests` session.
                        self.hub.disconnect();
                    }
                    self.announce();
                } else {
                    self.out.error(
                        0,
                        format!(
                            "protocol version `{version}` is not supported; this agent speaks {PROTOCOL_VERSION}"
                        ),
                    );
                }
                return;
            }
            Control::SetClock { unix_ns } if s == 0 => {
                // Only the guest's own clock: an agent in channel mode runs on a host.
                if std::process::id() == 1 {
                    if let Err(e) = crate::sys::set_realtime(unix_ns) {
                        self.out.error(0, format!("cannot set the clock: {e}"));
                    }
                }
                return;
            }
            _ if s == 0 => {
                return self
                    .out
                    .error(0, format!("unexpected message on session 0: {msg:?}"))
            }
            _ => {}
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = sessions.get(&s) {
            let err = match (existing, msg) {
                (Session::Exec(h), Control::Resize { rows, cols }) => {
                    h.resize(rows, cols).err().map(|e| format!("resize: {e}"))
                }
                (Session::Exec(h), Control::Signal { signal }) => {
                    if (1..=64).contains(&signal) {
                        h.signal(signal);
                        None
                    } else {
                        Some(format!("bad signal number `{signal}`"))
                    }
                }
                (Session::Requests, Control::GuestReply { id, result, error }) => {
                    self.hub.reply(
                        id,
                        match (result, error) {
                            (_, Some(e)) => Err(e),
                            (Some(r), None) => Ok(r),
                            (None, None) => Ok("null".into()),
                        },
                    );
                    None
                }
                (_, Control::Close) => {
                    if let Some(old) = sessions.remove(&s) {
                        if matches!(old, Session::Requests) {
                            self.hub.disconnect();
                        }
                        close_session(old);
                    }
                    None
                }
                (_, other) => Some(format!("unexpected {other:?} on open session `{s}`")),
            };
            drop(sessions);
            if let Some(e) = err {
                self.fail(s, e);
            }
            return;
        }
        // A new session. The map stays locked while it starts so that a session that ends
        // at once cannot be removed before it is inserted.
        // Errors are a sentence and, for a failed system call, the error itself.
        let io_err = |context: String| move |e: std::io::Error| (context, Some(e));
        let opens = !matches!(
            msg,
            Control::Close
                | Control::Resize { .. }
                | Control::Signal { .. }
                | Control::GuestReply { .. }
        );
        if opens {
            self.highest
                .fetch_max(s, std::sync::atomic::Ordering::SeqCst);
        }
        let started: Result<Option<Session>, (String, Option<std::io::Error>)> = match msg {
            Control::Exec(req) => exec::start(self, s, &req)
                .map(|h| Some(Session::Exec(h)))
                .map_err(io_err(format!(
                    "exec `{}`",
                    req.argv.first().map(String::as_str).unwrap_or("")
                ))),
            Control::FileWrite {
                path,
                mode,
                uid,
                gid,
                mkdir_parents,
                keep_existing,
            } => {
                let options = files::WriteOptions {
                    mkdir_parents,
                    keep_existing,
                };
                files::open_write(s, &path, mode, uid, gid, options)
                    .map(|w| Some(Session::Write(w)))
                    .map_err(io_err(format!("open `{path}` for writing")))
            }
            Control::FileRead { path } => files::start_read(self, s, &path, None)
                .map(|c| Some(Session::Read(c)))
                .map_err(io_err(format!("read `{path}`"))),
            Control::Connect { host, port } => tunnel::open(self, s, &host, port)
                .map(|t| Some(Session::Tunnel(t)))
                .map_err(io_err(format!("connect to `{host}:{port}`"))),
            Control::WatchFiles { paths, recursive } => watch::watch(self, s, &paths, recursive)
                .map(|stop| Some(Session::Ports(stop)))
                .map_err(io_err("watch files".to_string())),
            Control::WatchPorts => ports::watch(self, s)
                .map(|stop| Some(Session::Ports(stop)))
                .map_err(io_err("watch ports".to_string())),
            Control::Fs(op) => fsops::start(self, s, op)
                .map(|()| None)
                .map_err(io_err("filesystem operation".to_string())),
            Control::ServiceLogs { name, tail, offset } => self
                .services
                .log_path(&name)
                .and_then(|p| files::start_read_at(self, s, &p.to_string_lossy(), tail, offset))
                .map(|c| Some(Session::Read(c)))
                .map_err(io_err(format!("logs of service `{name}`"))),
            Control::ServiceDefine(spec) => {
                let name = spec.name.clone();
                self.services
                    .define(spec)
                    .map(|()| {
                        self.out.control(s, &Control::Ok);
                        None
                    })
                    .map_err(io_err(format!("define service `{name}`")))
            }
            Control::ServiceRemove { name } => self
                .services
                .remove(&name)
                .map(|()| {
                    self.out.control(s, &Control::Ok);
                    None
                })
                .map_err(io_err(format!("remove service `{name}`"))),
            Control::ServiceStart { name } => self
                .services
                .start(&name)
                .map(|()| {
                    self.out.control(s, &Control::Ok);
                    None
                })
                .map_err(io_err(format!("start service `{name}`"))),
            Control::ServiceStop { name } => {
                // Waiting for the end takes up to seconds: not on the dispatch thread.
                let (me, n) = (self.clone(), name.clone());
                std::thread::Builder::new()
                    .name(format!("stop-{name}"))
                    .spawn(move || match me.services.stop(&n) {
                        Ok(()) => me.out.control(s, &Control::Ok),
                        Err(e) => me.out.error_io(s, &format!("stop service `{n}`"), &e),
                    })
                    .map(|_| None)
                    .map_err(io_err(format!("stop service `{name}`")))
            }
            Control::ServiceSignal { name, signal } => self
                .services
                .signal(&name, signal)
                .map(|()| {
                    self.out.control(s, &Control::Ok);
                    None
                })
                .map_err(io_err(format!("signal service `{name}`"))),
            Control::TaskSet {
                name,
                ttl_secs,
                description,
            } => match self.hub.tasks.set(
                &name,
                std::time::Duration::from_secs(ttl_secs),
                description,
            ) {
                Ok(_) => {
                    let tasks = self.hub.tasks.list();
                    self.out.control(s, &Control::Tasks { tasks });
                    Ok(None)
                }
                Err(message) => Err((message, None)),
            },
            Control::TaskDelete { name } => {
                if self.hub.tasks.remove(&name) {
                    let tasks = self.hub.tasks.list();
                    self.out.control(s, &Control::Tasks { tasks });
                    Ok(None)
                } else {
                    Err((
                        format!("no task `{name}`"),
                        Some(std::io::Error::from_raw_os_error(libc::ENOENT)),
                    ))
                }
            }
            // On threads of their own, as filesystem operations: a mount reads
            // its disk from the host and must not hold up the other sessions.
            Control::MountCheckpoint { serial, name } => {
                crate::checkpoints::start(self, s, move || {
                    crate::checkpoints::mount(&serial, &name)
                        .map_err(|e| (format!("cannot mount checkpoint `{name}`"), e))
                })
                .map(|()| None)
                .map_err(io_err("checkpoint mount".to_string()))
            }
            Control::UnmountCheckpoint { name } => crate::checkpoints::start(self, s, move || {
                crate::checkpoints::unmount(&name)
                    .map_err(|e| (format!("cannot unmount checkpoint `{name}`"), e))
            })
            .map(|()| None)
            .map_err(io_err("checkpoint unmount".to_string())),
            Control::Freeze { timeout_ms } => {
                // Writing the dirty pages takes a while: not on the dispatch thread.
                let me = self.clone();
                std::thread::Builder::new()
                    .name("freeze".into())
                    .spawn(move || {
                        match me
                            .freezer
                            .freeze(std::time::Duration::from_millis(timeout_ms))
                        {
                            Ok(filesystems) => me.out.control(s, &Control::Frozen { filesystems }),
                            Err(e) => me.out.error_io(s, "freeze the filesystems", &e),
                        }
                    })
                    .map(|_| None)
                    .map_err(io_err("freeze".to_string()))
            }
            Control::TaskList => {
                let tasks = self.hub.tasks.list();
                self.out.control(s, &Control::Tasks { tasks });
                Ok(None)
            }
            Control::GuestRequests => {
                // `ok` first: the requests waiting for a host go out on the route.
                self.out.control(s, &Control::Ok);
                self.hub.set_route(self, s);
                Ok(Some(Session::Requests))
            }
            Control::ServiceList => {
                let services = self.services.list();
                self.out.control(s, &Control::Services { services });
                Ok(None)
            }
            Control::Shutdown => {
                let me = self.clone();
                let _ = std::thread::Builder::new()
                    .name("shutdown".into())
                    .spawn(move || me.shutdown(s));
                Ok(None)
            }
            // Closing a session that already ended is not an error; nor is a resize,
            // a signal or an answer racing with its end.
            Control::Close => Ok(None),
            Control::Resize { .. } | Control::Signal { .. } | Control::GuestReply { .. }
                if self.ended(s) =>
            {
                Ok(None)
            }
            other => Err((format!("unexpected {other:?} to open session `{s}`"), None)),
        };
        match started {
            Ok(Some(sess)) => {
                sessions.insert(s, sess);
            }
            Ok(None) => {}
            Err((context, Some(e))) => {
                let context: String = context;
                drop(sessions);
                self.out.error_io(s, &context, &e);
            }
            Err((message, None)) => {
                drop(sessions);
                self.out.error(s, message);
            }
        }
    }

    /// Sends this agent's `hello` on session 0: the answer to the host's, and (PID 1) an
    /// unsolicited one when the port opens, so a host whose first `hello` was lost before
    /// the guest opened its port learns at once that the agent is up.
    pub fn announce(&self) {
        self.out.control(
            0,
            &Control::Hello {
                version: PROTOCOL_VERSION,
                agent: format!("wisp-agent {}", env!("CARGO_PKG_VERSION")),
                capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
                connection: 0,
            },
        );
    }

    fn shutdown(&self, s: u32) {
        self.services.stop_all();
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        match self.on_shutdown {
            OnShutdown::Exit => {
                self.out.control(s, &Control::Ok);
                std::process::exit(0);
            }
            OnShutdown::PowerOff => crate::init::power_off(&self.out, s),
        }
    }
}

/// A `thaw` request (see [`Agent::serve`]).
fn is_thaw(f: &Frame) -> bool {
    f.kind == Kind::Control && f.payload.len() < 64 && matches!(f.to_control(), Ok(Control::Thaw))
}

fn close_session(s: Session) {
    match s {
        Session::Exec(h) => h.close(),
        Session::Write(w) => w.abort(),
        Session::Read(c) => c.close(),
        Session::Tunnel(t) => t.close(),
        Session::Ports(stop) => stop.store(true, std::sync::atomic::Ordering::SeqCst),
        Session::Requests => {}
    }
}
