//! `GET /v1/sprites/{name}/exec` upgraded to a WebSocket: a command in the
//! sprite, waking it first if it sleeps, in the wire format of the Sprites
//! SDKs.
//!
//! Query: `cmd` (repeated: argv), `path` (the program, default the first
//! `cmd`), `tty`, `stdin` (default: true with a TTY, false without), `rows`,
//! `cols`, `env` (repeated `KEY=VALUE`), `dir` (working directory).
//!
//! Without a TTY every binary message is `[stream, payload...]`: 0 stdin,
//! 1 stdout, 2 stderr, 3 exit (one byte: the exit code), 4 end of stdin.
//! With a TTY binary messages are raw terminal bytes both ways; the client
//! sends `{"type":"resize","rows":R,"cols":C}` as text and the server ends
//! with `{"type":"exit","exit_code":N}` as text. The server closes the socket
//! with code 1000 after the exit. A client that goes away ends the command
//! (SIGHUP, then the session is dropped).
//!
//! The upgrade is answered at once and the sprite woken after it: a client
//! with a short handshake timeout (the SDKs' is 10 s) never cancels a wake,
//! and a wake that fails ends the socket with an `error` message and close
//! code 1011. Stdin is copied beside the output, never in its way: a command
//! that stops reading its input still delivers its output and exit status.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::response::IntoResponse;
use serde::Deserialize;
use wisp_vm::agent::{ExecEvent, ExecInput, ExecRequest, TtySize};

use std::sync::Arc;

use futures::{SinkExt, StreamExt};

use crate::machines::{Activity, PortEvent};
use crate::sessions::{AfterDisconnect, Attached, Output, Start, DEFAULT_AFTER_DISCONNECT};
use crate::ControlError;
use crate::Sprites;

/// What `X-Sprite-Capabilities` announces on the exec upgrade: the client may
/// send `{"type":"signal"}`.
pub(crate) const CAPABILITIES: &str = "signal";

pub(crate) const STDIN: u8 = 0;
pub(crate) const STDOUT: u8 = 1;
pub(crate) const STDERR: u8 = 2;
pub(crate) const EXIT: u8 = 3;
pub(crate) const STDIN_EOF: u8 = 4;

/// The command of one exec request, from its query string.
#[derive(Debug)]
pub(crate) struct ExecParams {
    pub request: ExecRequest,
    /// Whether the client sends stdin; without, stdin is closed at once.
    pub stdin: bool,
    /// How long the command runs with no client attached (`None`: until it ends).
    pub after_disconnect: AfterDisconnect,
    /// `id`: attach to this session instead of starting a command.
    pub attach: Option<String>,
}

pub(crate) fn parse_bool(key: &str, value: &str) -> Result<bool, ControlError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ControlError::BadRequest(format!(
            "bad `{key}` value `{value}`: use true or false"
        ))),
    }
}

fn parse_size(key: &str, value: &str) -> Result<u16, ControlError> {
    value.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ControlError::BadRequest(format!("bad `{key}` value `{value}`: use 1 to 65535"))
    })
}

impl ExecParams {
    /// Parses the query string; repeated keys (`cmd`, `env`) keep their order.
    pub fn parse(query: &str) -> Result<ExecParams, ControlError> {
        let mut cmd = Vec::new();
        let mut env = Vec::new();
        let (mut path, mut dir) = (None, None);
        let (mut tty, mut stdin) = (false, None);
        let (mut rows, mut cols) = (24, 80);
        let (mut detachable, mut after_disconnect, mut attach) = (false, None, None);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "cmd" => cmd.push(value.into_owned()),
                "path" => path = Some(value.into_owned()),
                "dir" => dir = Some(value.into_owned()),
                "tty" => tty = parse_bool("tty", &value)?,
                "stdin" => stdin = Some(parse_bool("stdin", &value)?),
                "rows" => rows = parse_size("rows", &value)?,
                "cols" => cols = parse_size("cols", &value)?,
                "env" => match value.split_once('=') {
                    Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
                    _ => {
                        return Err(ControlError::BadRequest(format!(
                            "bad `env` value `{value}`: use KEY=VALUE"
                        )))
                    }
                },
                "detachable" => detachable = parse_bool("detachable", &value)?,
                // Control mode (`cc`): answered per request here; nothing to change.
                "cc" => {
                    parse_bool("cc", &value)?;
                }
                "max_run_after_disconnect" => {
                    let limit = crate::services::parse_duration(&value).ok_or_else(|| {
                        ControlError::BadRequest(format!(
                            "bad `max_run_after_disconnect` value `{value}`: use a duration such as 10s, or 0 for no limit"
                        ))
                    })?;
                    after_disconnect = Some(limit);
                }
                "id" => attach = Some(value.into_owned()),
                other => {
                    return Err(ControlError::BadRequest(format!(
                        "unknown exec parameter `{other}`"
                    )))
                }
            }
        }
        if cmd.is_empty() && path.is_none() {
            // As in Sprites, no command is a shell: the user's login shell.
            cmd = ["/bin/sh", "-c", "exec \"${SHELL:-/bin/sh}\" -l"]
                .map(String::from)
                .to_vec();
        }
        // As Sprites documents it, a request's `env` replaces the default
        // environment (the program is still found on the default PATH).
        let replace_env = !env.is_empty();
        // `path` is the program; `cmd` is its argv, whose first entry is the
        // program's name as the program sees it.
        if let Some(path) = path {
            if cmd.is_empty() {
                cmd.push(path);
            } else {
                cmd[0] = path;
            }
        }
        Ok(ExecParams {
            request: ExecRequest {
                argv: cmd,
                env,
                cwd: dir,
                user: None,
                tty: tty.then_some(TtySize { rows, cols }),
                replace_env,
            },
            stdin: stdin.unwrap_or(tty),
            // As in Sprites: a terminal (or a detachable session) runs until it ends,
            // anything else 10 s after its last client; an explicit 0 is no limit.
            after_disconnect: match after_disconnect {
                Some(limit) if limit.is_zero() => None,
                Some(limit) => Some(limit),
                None if tty || detachable => None,
                None => Some(DEFAULT_AFTER_DISCONNECT),
            },
            attach,
        })
    }

    /// Gives the command the sprite's `environment` under the default one,
    /// unless the request's `env` replaces it all.
    pub fn with_sprite_environment(
        mut self,
        environment: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        if !self.request.replace_env {
            let given = std::mem::take(&mut self.request.env);
            self.request.env = environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(given)
                .collect();
        }
        self
    }
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number (`15`), as the
/// SDKs send it: its Linux number.
pub(crate) fn signal_number(signal: &str) -> Option<i32> {
    if let Ok(n) = signal.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = signal.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        _ => return None,
    };
    Some(n)
}

/// A text message from the client: `{"type":"resize","rows":R,"cols":C}` or
/// `{"type":"signal","signal":"TERM"}` (a name, `SIGTERM`, or a number).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Resize { rows: u16, cols: u16 },
    Signal { signal: serde_json::Value },
}

/// A message that ends the exchange: an `error` event the SDKs print.
fn error_message(error: String) -> Message {
    Message::Text(
        serde_json::json!({ "type": "error", "error": error })
            .to_string()
            .into(),
    )
}

/// What the server sends for one output of the session, and after the last
/// one (the exit, or a failure) the close frame that ends the socket.
fn outgoing(output: Output, tty: bool) -> (Message, Option<CloseFrame>) {
    match output {
        Output::Stdout(data) | Output::Stderr(data) if tty => (Message::Binary(data.into()), None),
        Output::Stdout(data) => (Message::Binary(framed(STDOUT, &data).into()), None),
        Output::Stderr(data) => (Message::Binary(framed(STDERR, &data).into()), None),
        Output::Exit(code) => {
            if tty {
                let message = Message::Text(
                    serde_json::json!({ "type": "exit", "exit_code": code })
                        .to_string()
                        .into(),
                );
                (message, Some(tty_close(code)))
            } else {
                let message = Message::Binary(vec![EXIT, (code & 0xff) as u8].into());
                (message, Some(normal_close()))
            }
        }
        Output::Error(error) => (error_message(error), Some(normal_close())),
    }
}

/// The close after a terminal's exit: 1000 for exit code 0, else 4000 + the
/// code (an application close code). The JS SDK reads a terminal's exit code
/// from the close code alone (1000 is 0, anything else 1); the Go and Python
/// SDKs read the `exit` message.
fn tty_close(code: i32) -> CloseFrame {
    CloseFrame {
        code: if code == 0 {
            axum::extract::ws::close_code::NORMAL
        } else {
            4000 + (code & 0xff) as u16
        },
        reason: "".into(),
    }
}

/// Passes one client message to the command. Input the command no longer
/// takes (it exited) is dropped: the client may still be sending it.
async fn incoming(message: Message, input: &ExecInput, tty: bool, stdin: bool) {
    match message {
        Message::Binary(data) if tty => {
            let _ = input.write(&data).await;
        }
        Message::Binary(data) => match data.split_first() {
            Some((&STDIN, rest)) if stdin => {
                let _ = input.write(rest).await;
            }
            Some((&STDIN_EOF, _)) => {
                let _ = input.close_stdin().await;
            }
            // stdin the command was not given, or an unknown stream: dropped.
            _ => {}
        },
        Message::Text(text) => match serde_json::from_str::<ClientMessage>(&text) {
            Ok(ClientMessage::Resize { rows, cols }) if tty => {
                let _ = input.resize(rows, cols).await;
            }
            Ok(ClientMessage::Signal { signal }) => {
                let number = match &signal {
                    serde_json::Value::String(name) => signal_number(name),
                    serde_json::Value::Number(n) => {
                        n.as_i64().and_then(|n| signal_number(&n.to_string()))
                    }
                    _ => None,
                };
                match number {
                    Some(number) => {
                        let _ = input.signal(number).await;
                    }
                    None => tracing::debug!(%signal, "unknown signal from an exec client"),
                }
            }
            // Unknown messages (and a resize without a terminal) are ignored.
            _ => {}
        },
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {}
    }
}

/// Copies the client's messages to the command until the client closes the
/// socket or it breaks. Runs beside the output loop, never in its way: a
/// command that stops reading stdin fills its window and blocks this copy, not
/// the delivery of its output or its exit status; once the command has exited,
/// its window is gone and the rest of the client's input is read and dropped.
async fn pump_input(
    mut from_client: futures::stream::SplitStream<WebSocket>,
    input: ExecInput,
    tty: bool,
    stdin: bool,
) {
    use futures::StreamExt;
    while let Some(Ok(message)) = from_client.next().await {
        if matches!(message, Message::Close(_)) {
            return;
        }
        incoming(message, &input, tty, stdin).await;
    }
}

/// How long the server waits, after its close frame, for the client's close: the
/// client may still be sending stdin the command never read, and closing the TCP
/// connection on unread data resets it, which can destroy the exit status on its
/// way to the client.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest silence on an exec socket: after it an empty binary frame goes out.
/// The JS SDK drops a connection with no message for 45 s.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Wakes the sprite (a wake started here runs to completion even if the client
/// goes away), starts the command as a session, and serves it to `socket`
/// (see [`serve`]). A sprite that cannot wake gets an `error` message and
/// close code 1011.
pub(crate) async fn run(
    socket: WebSocket,
    sprites: Arc<Sprites>,
    wake: tokio::task::JoinHandle<Result<Activity, ControlError>>,
    name: String,
    params: ExecParams,
) {
    let (mut to_client, from_client) = socket.split();
    let activity = match wake.await {
        Ok(Ok(activity)) => activity,
        Ok(Err(error)) => return fail(&mut to_client, error.chain()).await,
        Err(join) => {
            return fail(
                &mut to_client,
                format!("waking sprite `{name}` failed: {join}"),
            )
            .await
        }
    };
    let tty = params.request.tty.is_some();
    let start = Start {
        command: params.request.argv.join(" "),
        workdir: params.request.cwd.clone().unwrap_or_default(),
        tty,
        after_disconnect: params.after_disconnect,
    };
    let exec = match activity.agent().exec(params.request).await {
        Ok(exec) => exec,
        Err(source) => {
            let error = ControlError::Exec { name, source }.chain();
            return fail(&mut to_client, error).await;
        }
    };
    if !params.stdin {
        let _ = exec.input().close_stdin().await;
    }
    // The client's own hold on the sprite, for as long as it is attached.
    let connection = activity.another();
    let attached = sprites.sessions().start(&name, exec, activity, start);
    serve(
        to_client,
        from_client,
        attached,
        Some(connection),
        params.stdin,
    )
    .await
}

/// Attaches `socket` to session `id` of sprite `name`: the output it kept is
/// replayed, then it goes on live (see [`serve`]).
pub(crate) async fn attach(socket: WebSocket, sprites: Arc<Sprites>, name: String, id: String) {
    let (mut to_client, from_client) = socket.split();
    let session = match sprites.sessions().get(&name, &id) {
        Ok(session) => session,
        Err(e) => return fail(&mut to_client, e.chain()).await,
    };
    // A running session's sprite is awake: this only holds it so.
    let connection = if session.ended() {
        None
    } else {
        sprites.activity(&name).await.ok()
    };
    let attached = session.attach(true);
    serve(to_client, from_client, attached, connection, true).await
}

/// Serves a session to one client: `session_info` first, the replayed output,
/// then the live output, port notifications and keepalives, until the exit
/// (then close code 1000, or 4000 + code for a failed TTY command) or until
/// the client goes away, which leaves the session running (see
/// [`crate::sessions`]). The client's input goes to the command beside it.
async fn serve(
    mut to_client: futures::stream::SplitSink<WebSocket, Message>,
    from_client: futures::stream::SplitStream<WebSocket>,
    mut attached: Attached,
    connection: Option<Activity>,
    stdin: bool,
) {
    let session = attached.session.clone();
    let tty = session.tty;
    // First, as in Sprites: which session this is and whether it has a terminal.
    let info = serde_json::json!({
        "type": "session_info",
        "session_id": session.id,
        "tty": tty,
        "pid": session.pid,
        "command": session.command,
    });
    if to_client
        .send(Message::Text(info.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    // Ports that open or close while the client is attached, as Sprites reports them.
    let awake = connection.as_ref().map(Activity::awake);
    let mut ports = Box::pin(futures::stream::unfold(None, move |rx| async move {
        let mut rx: tokio::sync::broadcast::Receiver<PortEvent> = match rx {
            Some(rx) => rx,
            None => awake?.ports().await.ok()?.1,
        };
        loop {
            match rx.recv().await {
                Ok(event) => return Some((event, Some(rx))),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }));
    let replay = std::mem::take(&mut attached.replay);
    let mut output = Box::pin(async {
        for past in replay {
            let (message, close) = outgoing(past, tty);
            let sent = to_client.send(message).await.is_ok();
            if let Some(close) = close {
                let _ = to_client.send(Message::Close(Some(close))).await;
                return true;
            }
            if !sent {
                return false;
            }
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.reset();
        loop {
            let next = tokio::select! {
                next = attached.output.recv() => next,
                Some(port) = ports.next() => {
                    let text = crate::api::port_message(&port).to_string();
                    if to_client.send(Message::Text(text.into())).await.is_err() {
                        return false;
                    }
                    continue;
                }
                _ = keepalive.tick() => {
                    // An empty binary frame: every SDK skips it, and it tells the JS
                    // SDK (which sees no pings) that the connection is alive.
                    if to_client.send(Message::Binary(Vec::new().into())).await.is_err() {
                        return false;
                    }
                    continue;
                }
            };
            keepalive.reset();
            let (message, close) = match next {
                Some(output) => outgoing(output, tty),
                None => (
                    error_message("the session ended without an exit status".into()),
                    Some(normal_close()),
                ),
            };
            let sent = to_client.send(message).await.is_ok();
            if let Some(close) = close {
                let _ = to_client.send(Message::Close(Some(close))).await;
                return true;
            }
            if !sent {
                // The client is gone.
                return false;
            }
        }
    });
    let input = session.input().clone();
    let mut pump = Box::pin(pump_input(from_client, input, tty, stdin));
    let finished = tokio::select! {
        finished = &mut output => finished,
        () = &mut pump => false,
    };
    if !finished {
        // The client went away: the session goes on without it.
        return;
    }
    // The exit and the close frame are sent: the sprite is free to sleep while the
    // client's close comes (see CLOSE_LINGER).
    drop(output);
    drop(ports);
    drop(connection);
    let _ = tokio::time::timeout(CLOSE_LINGER, pump).await;
}

/// Runs the command of a `POST .../exec`: `body` is its stdin (when the query
/// asks for stdin, else it is closed at once), and the answer streams its
/// output as the WebSocket's non-TTY frames, one HTTP chunk each, ending with
/// the exit frame. A client that goes away drops the stream, which ends the
/// command.
pub(crate) async fn run_http(
    activity: Activity,
    name: String,
    params: ExecParams,
    body: axum::body::Body,
) -> Result<axum::response::Response, ControlError> {
    use futures::StreamExt;
    let session = activity
        .agent()
        .exec(params.request)
        .await
        .map_err(|source| ControlError::Exec {
            name: name.clone(),
            source,
        })?;
    let input = session.input();
    if params.stdin {
        let mut chunks = body.into_data_stream();
        tokio::spawn(async move {
            while let Some(Ok(chunk)) = chunks.next().await {
                if input.write(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = input.close_stdin().await;
        });
    } else {
        let _ = input.close_stdin().await;
    }
    // The activity lives in the stream: the sprite stays awake while it runs.
    let frames = HttpFrames {
        events: Box::pin(futures::stream::unfold(session, |mut session| async move {
            let event = session.recv().await;
            Some((event, session))
        })),
        queue: std::collections::VecDeque::new(),
        last_sent: None,
        ended: false,
        _activity: activity,
        name,
    };
    let frames = futures::stream::unfold(frames, |mut frames| async move {
        let next = frames.next_frame().await?;
        Some((next, frames))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        axum::body::Body::from_stream(frames),
    )
        .into_response())
}

/// Least time between two frames of an HTTP exec answer. The protocol has no
/// lengths: a client must see each HTTP chunk apart, and the JS SDK's fetch
/// merges chunks that reach it together (seen here: 2 answers in 30 merged
/// when the frames were written back to back), which loses the exit frame or
/// puts frame bytes into the output. Output that comes meanwhile joins the
/// frame waiting to go (up to `HTTP_FRAME_MAX`), so the pause costs latency
/// (this long before the exit frame) but little throughput.
const HTTP_FRAME_GAP: std::time::Duration = std::time::Duration::from_millis(25);
const HTTP_FRAME_MAX: usize = 1 << 20;

type Events = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<Option<ExecEvent>, wisp_vm::agent::AgentError>> + Send>,
>;

/// The frames of an HTTP exec answer, paced by [`HTTP_FRAME_GAP`].
struct HttpFrames {
    events: Events,
    /// Frames ready to go: `[stream, bytes...]`.
    queue: std::collections::VecDeque<Vec<u8>>,
    last_sent: Option<tokio::time::Instant>,
    /// The exit (or a failure) was queued: no more events.
    ended: bool,
    /// Keeps the sprite awake while the answer streams.
    _activity: Activity,
    name: String,
}

impl HttpFrames {
    /// Queues `data` on `stream`, joining the frame at the back when it is of the same
    /// stream and has room.
    fn push(&mut self, stream: u8, data: &[u8]) {
        match self.queue.back_mut() {
            Some(back) if back[0] == stream && back.len() + data.len() <= HTTP_FRAME_MAX => {
                back.extend_from_slice(data)
            }
            _ => self.queue.push_back(framed(stream, data)),
        }
    }

    /// The next frame, once the gap since the last one has passed; `None` at the end.
    async fn next_frame(&mut self) -> Option<Result<axum::body::Bytes, std::io::Error>> {
        use futures::StreamExt;
        loop {
            let due = self.last_sent.map(|t| t + HTTP_FRAME_GAP);
            let ready = due.is_none_or(|due| tokio::time::Instant::now() >= due);
            if ready {
                if let Some(frame) = self.queue.pop_front() {
                    self.last_sent = Some(tokio::time::Instant::now());
                    return Some(Ok(frame.into()));
                }
            }
            if self.ended {
                if self.queue.is_empty() {
                    return None;
                }
                tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await;
                continue;
            }
            let wait = async {
                match (due, self.queue.is_empty()) {
                    (Some(due), false) => tokio::time::sleep_until(due).await,
                    _ => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                event = self.events.next() => event,
                () = wait => continue,
            };
            match event {
                Some(Ok(Some(ExecEvent::Stdout(data)))) => self.push(STDOUT, &data),
                Some(Ok(Some(ExecEvent::Stderr(data)))) => self.push(STDERR, &data),
                Some(Ok(Some(ExecEvent::Exit(status)))) => {
                    self.queue
                        .push_back(vec![EXIT, (status.shell_code() & 0xff) as u8]);
                    self.ended = true;
                }
                Some(Ok(None)) | None => self.ended = true,
                Some(Err(source)) => {
                    let name = self.name.clone();
                    return Some(Err(std::io::Error::other(
                        ControlError::Exec { name, source }.chain(),
                    )));
                }
            }
        }
    }
}

/// Sends `error` as an `error` message, then closes with 1011 (internal error).
async fn fail(to_client: &mut futures::stream::SplitSink<WebSocket, Message>, error: String) {
    use futures::SinkExt;
    let _ = to_client.send(error_message(error)).await;
    let close = axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::ERROR,
        reason: "".into(),
    };
    let _ = to_client.send(Message::Close(Some(close))).await;
}

/// Close code 1000 after the exit.
fn normal_close() -> CloseFrame {
    CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }
}

/// A non-TTY binary message: the stream id, then the bytes.
pub(crate) fn framed(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(stream);
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_gives_argv_env_and_terminal() {
        let p = ExecParams::parse(
            "path=%2Fbin%2Fsh&cmd=sh&cmd=-c&cmd=echo+%24A&env=A%3Db%3Dc&dir=%2Ftmp&tty=true&rows=40&cols=100",
        )
        .unwrap();
        assert_eq!(p.request.argv, ["/bin/sh", "-c", "echo $A"]);
        assert_eq!(p.request.env, [("A".to_string(), "b=c".to_string())]);
        assert_eq!(p.request.cwd.as_deref(), Some("/tmp"));
        assert_eq!(
            p.request.tty,
            Some(TtySize {
                rows: 40,
                cols: 100
            })
        );
        assert!(p.stdin, "stdin defaults to on with a tty");
        let p = ExecParams::parse("cmd=true").unwrap();
        assert_eq!(p.request.tty, None);
        // What the SDKs send besides: accepted.
        ExecParams::parse("cmd=true&detachable=false&cc=true&max_run_after_disconnect=10s&id=7")
            .unwrap();
        assert!(!p.stdin, "and off without");
    }

    #[test]
    fn no_command_is_a_login_shell_and_env_replaces_the_default() {
        let p = ExecParams::parse("tty=true").unwrap();
        assert_eq!(p.request.argv[..2], ["/bin/sh", "-c"]);
        assert!(p.request.argv[2].contains("${SHELL:-/bin/sh}\" -l"));
        let sprite_env = [("A".to_string(), "sprite".to_string())]
            .into_iter()
            .collect();
        let p = ExecParams::parse("cmd=env")
            .unwrap()
            .with_sprite_environment(&sprite_env);
        assert!(!p.request.replace_env);
        assert_eq!(p.request.env, [("A".to_string(), "sprite".to_string())]);
        let p = ExecParams::parse("cmd=env&env=B%3D1")
            .unwrap()
            .with_sprite_environment(&sprite_env);
        assert!(
            p.request.replace_env,
            "a request's env is the whole environment"
        );
        assert_eq!(p.request.env, [("B".to_string(), "1".to_string())]);
    }

    #[test]
    fn signals_by_name_or_number() {
        for (given, number) in [
            ("TERM", 15),
            ("SIGKILL", 9),
            ("sigint", 2),
            ("HUP", 1),
            ("10", 10),
        ] {
            assert_eq!(signal_number(given), Some(number), "{given}");
        }
        for bad in ["", "SIGFOO", "0", "65", "-1"] {
            assert_eq!(signal_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_queries_are_named() {
        for (query, names) in [
            ("cmd=x&tty=maybe", "bad `tty` value `maybe`"),
            ("cmd=x&rows=0", "bad `rows` value `0`"),
            ("cmd=x&env=NOEQUALS", "bad `env` value `NOEQUALS`"),
            ("cmd=x&color=red", "unknown exec parameter `color`"),
            (
                "cmd=x&detachable=sometimes",
                "bad `detachable` value `sometimes`",
            ),
        ] {
            let err = ExecParams::parse(query).unwrap_err().to_string();
            assert!(err.contains(names), "{query}: {err}");
        }
    }
}
