//! Control messages: the JSON payloads of [`crate::Kind::Control`] frames.

use serde::{Deserialize, Serialize};

/// Capabilities the agent announces in its `hello` answer.
pub const CAPABILITIES: &[&str] = &[
    "exec",
    "pty",
    "files",
    "services",
    "shutdown",
    "clock",
    "fs",
    "tunnel",
    "ports",
    "watch",
    "tasks",
    "guest_requests",
    "checkpoint_mounts",
    "fsfreeze",
];

/// A control message. Serialised as JSON with a `type` field (`{"type":"ping"}`).
/// Unknown fields are rejected so that a typo is an error, not a silent default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Session 0. Host to agent: the protocol version the host speaks. Agent to host: the
    /// version the agent speaks, its build and capabilities. Answered hello = agent ready.
    ///
    /// `connection` (host to agent) names the host's connection: every `hello` the host
    /// re-sends while it waits for the answer carries the same number, and only a
    /// number the agent has not seen last ends the sessions of an earlier connection.
    /// 0 (an older host, or the agent's own `hello`) always ends them.
    Hello {
        version: u32,
        #[serde(default)]
        agent: String,
        #[serde(default)]
        capabilities: Vec<String>,
        #[serde(default, skip_serializing_if = "is_zero")]
        connection: u64,
    },
    /// Session 0, host to agent, unanswered: set the guest's wall clock (`CLOCK_REALTIME`)
    /// to `unix_ns` nanoseconds since the Unix epoch. Sent after every boot, since the
    /// guest's RTC gives whole seconds only. An agent that is not PID 1 (channel mode on
    /// a host) ignores it.
    SetClock {
        unix_ns: u64,
    },
    /// Session 0 (or any): liveness check, answered with `pong` on the same session.
    Ping,
    Pong,
    /// Opens an exec session: the agent answers `started` (or `error`), then streams
    /// `Data`/`Stderr`/`Eof` frames and finally `exit`.
    Exec(ExecRequest),
    /// The process of an exec session was spawned.
    Started {
        pid: u32,
    },
    /// The process ended and its output was drained; the session is over.
    Exit(ExitStatus),
    /// PTY sessions: new window size.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Deliver a signal (number) to the session's process group (the PTY's foreground
    /// group in PTY mode).
    Signal {
        signal: i32,
    },
    /// Opens a file-write session: the host then sends `Data` chunks and `Eof`; the agent
    /// answers `done` with the byte count once the file is complete.
    FileWrite {
        path: String,
        mode: u32,
        #[serde(default)]
        uid: Option<u32>,
        #[serde(default)]
        gid: Option<u32>,
        /// Create missing parent folders (mode 0755); without, only a missing immediate
        /// parent is made and a missing grandparent is `ENOENT`.
        #[serde(default = "yes")]
        mkdir_parents: bool,
        /// When the file exists, keep its mode and owner instead of `mode`/`uid`/`gid`.
        #[serde(default)]
        keep_existing: bool,
    },
    /// Opens a file-read session: the agent answers `file_info`, then `Data` chunks,
    /// `Eof`, and `done`.
    FileRead {
        path: String,
    },
    FileInfo {
        size: u64,
        mode: u32,
    },
    /// Filesystem operations (capability "fs"), answered with `ok` or an `error` that
    /// carries the errno name. `list` is answered like `file_read`: `file_info`, data
    /// chunks holding a JSON array of [`FsEntry`], `eof`, `done`.
    Fs(FsOp),
    /// Opens a TCP tunnel to `host:port` in the guest (capability "tunnel"): the agent
    /// answers `ok` once connected (or `error`, with the errno), then both sides send
    /// `Data` under flow control; the host's `Eof` half-closes the connection; when the
    /// guest side closes, the agent sends `Eof` and `done`.
    Connect {
        host: String,
        port: u16,
    },
    /// Watches files (capability "watch"): `paths` (absolute), and with `recursive`
    /// every folder below them. The agent answers `ok` once all are watched, then
    /// `file_events` as things change, until the host closes the session.
    WatchFiles {
        paths: Vec<String>,
        #[serde(default)]
        recursive: bool,
    },
    FileEvents {
        events: Vec<FileEvent>,
    },
    /// Watches the guest's listening TCP ports (capability "ports"): the agent answers
    /// `ports` with every port listening now, then another `ports` whenever ports open or
    /// close, until the host closes the session.
    WatchPorts,
    Ports {
        opened: Vec<ListeningPort>,
        #[serde(default)]
        closed: Vec<ListeningPort>,
    },
    /// A transfer (file write, file read, service log read) finished.
    Done {
        bytes: u64,
    },
    /// Creates or replaces a service; persisted in the guest, started now and at every boot.
    ServiceDefine(ServiceSpec),
    /// Stops and forgets a service.
    ServiceRemove {
        name: String,
    },
    /// Asks for the list of services; answered with `services`.
    ServiceList,
    Services {
        services: Vec<ServiceStatus>,
    },
    /// Reads a service's log: like `file_read`, starting `tail` bytes before the end,
    /// or at byte `offset` (whole log when neither is given).
    ServiceLogs {
        name: String,
        #[serde(default)]
        tail: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Starts a stopped service (no change for a running one); answered `ok`.
    ServiceStart {
        name: String,
    },
    /// Stops a service and keeps its definition (it starts again at the next boot or
    /// `service_start`); answered `ok` once it ended.
    ServiceStop {
        name: String,
    },
    /// Sends signal number `signal` to a running service's process group; answered `ok`.
    ServiceSignal {
        name: String,
        signal: i32,
    },
    /// Stop services, sync, freeze/remount the root read-only, power off. Answered with
    /// `ok` just before power-off (channel mode: the agent exits instead).
    Shutdown,
    /// Host to agent (capability "fsfreeze"): writes every dirty page of the guest's
    /// writable disk filesystems and freezes them (`FIFREEZE`, as QEMU's guest agent
    /// `guest-fsfreeze-freeze`): writes from programs wait until `thaw`, and what the
    /// disk holds is a state the filesystems could have been in. Answered `frozen` once
    /// done. The agent thaws by itself `timeout_ms` milliseconds of guest time later
    /// if no `thaw` came (a host that died mid-checkpoint).
    Freeze {
        timeout_ms: u64,
    },
    /// The filesystems (mount points) that `freeze` froze.
    Frozen {
        filesystems: Vec<String>,
    },
    /// Host to agent: thaws what `freeze` froze; answered `thawed`. Read and acted on
    /// as soon as it arrives, before frames queued ahead of it (one of those may be
    /// waiting on a frozen filesystem).
    Thaw,
    /// `early`: the agent had already thawed by itself (the freeze's timeout passed),
    /// so writes may have reached the disk while the host thought it frozen.
    Thawed {
        early: bool,
    },
    /// Generic success answer.
    Ok,
    /// The request on this session failed; the session is closed. On session 0: a frame
    /// could not be decoded.
    Error {
        message: String,
        /// The errno name (`ENOENT`, `EISDIR`, ...) when a system call failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        errno: Option<String>,
    },
    /// Host to agent: abandon this session (kill its process, stop its transfer).
    Close,
    /// Creates keep-awake task `name`, or refreshes it (a heartbeat): it lives `ttl_secs`
    /// seconds of the guest's running time from now. Answered with `tasks`.
    TaskSet {
        name: String,
        ttl_secs: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// Ends keep-awake task `name` (an `error` with `ENOENT` when there is none);
    /// answered with `tasks`.
    TaskDelete {
        name: String,
    },
    /// Asks for the live keep-awake tasks; answered with `tasks`.
    TaskList,
    /// Host to agent: mounts the disk whose virtio serial is `serial` (an ext4
    /// copy of checkpoint `name`) read-only at `/.sprite/checkpoints/<name>`,
    /// replacing nothing: answered `ok`, or `error` (`EEXIST` when mounted).
    MountCheckpoint {
        serial: String,
        name: String,
    },
    /// Host to agent: unmounts `/.sprite/checkpoints/<name>`; answered `ok`, or
    /// `error` (`EBUSY` while a process uses it, `ENOENT` when not mounted).
    UnmountCheckpoint {
        name: String,
    },
    Tasks {
        tasks: Vec<TaskInfo>,
    },
    /// Host to agent: opens the session on which the guest asks the host for things
    /// only the host can do (capability "guest_requests"); the agent answers `ok`, then
    /// sends a `guest_request` per request, and the host answers each with a
    /// `guest_reply` on the same session. One such session at a time: a new one
    /// replaces the last.
    GuestRequests,
    GuestRequest {
        id: u64,
        request: GuestRequest,
    },
    GuestReply {
        id: u64,
        /// The answer's JSON on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        /// Why it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// What a program in the guest asks the host for (through the agent's
/// `/.sprite/api.sock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GuestRequest {
    /// A checkpoint of this sprite, with an optional comment.
    Checkpoint {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// This sprite's checkpoints.
    ListCheckpoints,
}

/// A live keep-awake task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Seconds each refresh gives it.
    pub ttl_secs: u64,
    /// Seconds of running time left before it expires.
    pub expires_in_secs: u64,
}

fn yes() -> bool {
    true
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A filesystem operation in the guest. Paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum FsOp {
    /// A folder's entries (all below it with `recursive`), or the one entry of a file;
    /// `pattern` (a shell glob) filters on entry names.
    List {
        path: String,
        #[serde(default)]
        recursive: bool,
        #[serde(default)]
        pattern: Option<String>,
    },
    /// Removes a file, a symlink, or a folder (with its contents when `recursive`, else
    /// only an empty one).
    Delete {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// `rename(2)`: `to` is replaced if it exists.
    Rename { from: String, to: String },
    /// Copies a file (or, with `recursive`, a folder) to exactly `to`; with `preserve`
    /// owners and times are copied too (modes always are).
    Copy {
        from: String,
        to: String,
        #[serde(default)]
        recursive: bool,
        #[serde(default)]
        preserve: bool,
    },
    /// Sets permission bits (`mode & 0o7777`), of everything below with `recursive`.
    Chmod {
        path: String,
        mode: u32,
        #[serde(default)]
        recursive: bool,
    },
    /// Sets owner and/or group, each a name or a number; symlinks themselves, not their
    /// targets.
    Chown {
        path: String,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        recursive: bool,
    },
}

/// One change to a watched file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEvent {
    pub path: String,
    /// `write`, `create`, `remove`, `rename` or `chmod`.
    pub kind: String,
    pub is_dir: bool,
    /// The size after the change (0 when it is gone).
    pub size: u64,
}

/// A TCP port a process in the guest listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListeningPort {
    pub port: u16,
    /// The address it is bound to (`0.0.0.0`, `127.0.0.1`, `::`, ...).
    pub address: String,
    /// The listening process, when the agent could find it.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// One entry of an [`FsOp::List`] answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsEntry {
    /// The path below the listed folder (`a/b.txt` in a recursive listing), or the
    /// file's name when a file was listed.
    pub name: String,
    /// Absolute path.
    pub path: String,
    /// `file`, `directory`, `symlink` or `other`.
    pub kind: String,
    /// Bytes (of the link itself for a symlink).
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Last modification, seconds since the Unix epoch.
    pub mtime: i64,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Extra environment on top of the agent's default (`PATH`, `HOME`, `USER`, `TERM`).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (default: the user's home, else `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// User name or numeric uid (default: root).
    #[serde(default)]
    pub user: Option<String>,
    /// Allocate a PTY of this size; stdout carries the terminal output, no stderr.
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// `env` is the whole environment instead of additions to the agent's default
    /// (the program is still looked up in the default `PATH` when `env` has none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace_env: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// How a process ended: an exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The shell convention: the code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// A declared long-running process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `[A-Za-z0-9_.-]{1,64}`, not starting with a dot: it names files in the guest.
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// Services that must be running before this one starts (no cycles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
}

impl ServiceSpec {
    /// Whether `name` is safe as a file name.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    }
}

/// A service as the agent sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStatus {
    pub spec: ServiceSpec,
    /// Pid of the running process, if any.
    pub pid: Option<u32>,
    /// How many times it was (re)started since the agent started.
    pub starts: u32,
    /// How the last run ended.
    pub last_exit: Option<ExitStatus>,
    /// When the running process started, milliseconds since the Unix epoch.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// Why the last start failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
    /// Stopped on request (`service_stop`): not restarted until started again.
    #[serde(default)]
    pub stopped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let msgs = vec![
            Control::Hello {
                version: 1,
                agent: "x".into(),
                capabilities: vec!["exec".into()],
                connection: 7,
            },
            Control::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec![("A".into(), "b".into())],
                cwd: Some("/tmp".into()),
                user: Some("root".into()),
                tty: Some(TtySize { rows: 24, cols: 80 }),
                replace_env: true,
            }),
            Control::Exit(ExitStatus {
                code: None,
                signal: Some(9),
            }),
            Control::ServiceDefine(ServiceSpec {
                name: "web".into(),
                argv: vec!["httpd".into()],
                ..Default::default()
            }),
            Control::Shutdown,
            Control::Error {
                message: "no".into(),
                errno: Some("ENOENT".into()),
            },
            Control::Fs(FsOp::Chown {
                path: "/a".into(),
                user: Some("root".into()),
                group: None,
                recursive: true,
            }),
        ];
        for m in msgs {
            let j = serde_json::to_vec(&m).unwrap();
            assert_eq!(serde_json::from_slice::<Control>(&j).unwrap(), m);
        }
        let ping: Control = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert_eq!(ping, Control::Ping);
    }

    #[test]
    fn unknown_types_and_fields_are_errors() {
        assert!(serde_json::from_str::<Control>(r#"{"type":"launch"}"#).is_err());
        assert!(serde_json::from_str::<Control>(r#"{"type":"exec","argv":[],"bogus":1}"#).is_err());
        assert!(
            serde_json::from_str::<Control>(r#"{"type":"resize","rows":-1,"cols":2}"#).is_err()
        );
    }

    #[test]
    fn service_names_are_file_safe() {
        assert!(ServiceSpec::valid_name("web-1.api_x"));
        for bad in ["", ".hidden", "a/b", "..", "x y", &"a".repeat(65)] {
            assert!(!ServiceSpec::valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn exit_status_shell_code() {
        let s = ExitStatus {
            code: None,
            signal: Some(15),
        };
        assert_eq!(s.shell_code(), 143);
        assert!(!s.success());
    }
}
