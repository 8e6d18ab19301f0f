//! The in-sprite API: HTTP/1.1 with JSON bodies on the unix socket
//! `/.sprite/api.sock` (the path the reference service uses), for programs in the
//! guest, and `sprite-env`, its command-line client (this binary under that name).
//!
//! Routes (answers are JSON; errors are `{"error": code, "message": text}`):
//! - `GET /v1/tasks`: the live keep-awake tasks ([`wisp_proto::TaskInfo`]).
//! - `POST /v1/tasks` `{"name", "ttl"?, "description"?}`: creates task `name` or
//!   refreshes it (a heartbeat); `ttl` is seconds or a duration (`"90s"`, `"5m"`,
//!   `"1h"`), by default the task's last one, else 10 minutes; at most an hour.
//! - `DELETE /v1/tasks/{name}`: ends a task (204; 404 when there is none).
//! - `GET /v1/services`: the sprite's services and their state.
//! - `POST /v1/checkpoints` `{"comment"?}` and `GET /v1/checkpoints`: asked of the
//!   host over the agent's channel (a `guest_request`); 503 while no host listens.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use serde_json::{json, Value};
use wisp_proto::{Control, GuestRequest};

use crate::server::Agent;
use crate::services::Services;
use crate::tasks::Tasks;

/// Where the in-sprite API listens in a guest.
pub const SOCKET: &str = "/.sprite/api.sock";
/// A task's life when neither the request nor an earlier set gives one.
const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// How long a request to the host may take (a checkpoint uploads dirty data).
const HOST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest request head and body this API reads.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;

/// How long a request waits for a host that is reconnecting (a machine resumed
/// from a saved state, a daemon that restarted) before it is answered 503.
const RECONNECT_WAIT: Duration = Duration::from_secs(30);

/// What the in-sprite API and the host channel share: the tasks, the services, and
/// the route to the host for requests only it can answer.
///
/// A request lives in `pending` until its answer comes, and goes out on every
/// route the host opens meanwhile: one sent to a host connection that ended
/// before answering (a warm sleep, a daemon restart) is sent again on the next,
/// under the same id, and the host answers a repeated id from what it answered
/// before (`control::tasks`), so it is done once.
pub struct Hub {
    pub tasks: Tasks,
    services: Arc<Services>,
    route: Mutex<Route>,
    route_changed: Condvar,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
}

/// Where requests to the host go.
#[derive(Default)]
struct Route {
    /// The agent connection and session the host opened with `guest_requests`.
    open: Option<(Weak<Agent>, u32)>,
    /// Counts the routes opened: a request sent on route `n` is sent again on `n + 1`.
    generation: u64,
    /// A host had opened a route and its connection ended: requests wait for the
    /// next one (at most [`RECONNECT_WAIT`]) instead of failing at once.
    reconnecting: bool,
}

struct Pending {
    request: GuestRequest,
    answer: mpsc::Sender<Result<String, String>>,
    /// The route generation it last went out on.
    sent_on: Option<u64>,
}

impl Hub {
    pub fn new(services: Arc<Services>) -> Arc<Hub> {
        Arc::new(Hub {
            tasks: Tasks::default(),
            services,
            route: Mutex::new(Route::default()),
            route_changed: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(first_request_id()),
        })
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Requests to the host go through `agent`'s session `session` from now on;
    /// every request still unanswered goes out on it.
    pub fn set_route(&self, agent: &Arc<Agent>, session: u32) {
        {
            let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
            route.open = Some((Arc::downgrade(agent), session));
            route.generation += 1;
            route.reconnecting = false;
        }
        self.route_changed.notify_all();
        self.send_pending();
    }

    /// The host connection ended (a new host said `hello`): requests wait for the
    /// next route.
    pub fn disconnect(&self) {
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        if route.open.take().is_some() {
            route.reconnecting = true;
        }
    }

    /// The host answered request `id`.
    pub fn reply(&self, id: u64, answer: Result<String, String>) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(p) = waiter {
            let _ = p.answer.send(answer);
        }
    }

    /// Sends every pending request that has not gone out on the current route.
    fn send_pending(&self) {
        let (agent, session, generation) = {
            let route = self.route.lock().unwrap_or_else(|e| e.into_inner());
            match route
                .open
                .as_ref()
                .and_then(|(a, s)| Some((a.upgrade()?, *s)))
            {
                Some((agent, session)) => (agent, session, route.generation),
                None => return,
            }
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (id, p) in pending.iter_mut() {
            if p.sent_on != Some(generation) {
                p.sent_on = Some(generation);
                agent.out.control(
                    session,
                    &Control::GuestRequest {
                        id: *id,
                        request: p.request.clone(),
                    },
                );
            }
        }
    }

    /// Asks the host; its answer's JSON text, or why there is none.
    fn ask(&self, request: GuestRequest) -> Result<String, (u16, String)> {
        {
            let route = self.route.lock().unwrap_or_else(|e| e.into_inner());
            let (route, _) = self
                .route_changed
                .wait_timeout_while(route, RECONNECT_WAIT, |r| {
                    r.open.is_none() && r.reconnecting
                })
                .unwrap_or_else(|e| e.into_inner());
            if route.open.is_none() {
                return Err((503, "no host is connected to this sprite's agent".into()));
            }
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Pending {
                    request,
                    answer: tx,
                    sent_on: None,
                },
            );
        self.send_pending();
        let answer = rx.recv_timeout(HOST_TIMEOUT);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match answer {
            Ok(Ok(json)) => Ok(json),
            Ok(Err(message)) => Err((502, message)),
            Err(_) => Err((
                504,
                format!("the host did not answer within {HOST_TIMEOUT:?}"),
            )),
        }
    }
}

/// Where this agent's request ids start: random, so that ids of requests from
/// different boots of a sprite differ (the host remembers answers by id).
fn first_request_id() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for its length; GRND_NONBLOCK never waits.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), libc::GRND_NONBLOCK) };
    let random = if n == 8 {
        u64::from_ne_bytes(bytes)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    };
    // Room to count up without wrapping.
    (random >> 8).max(1)
}

/// Serves the API on `path` in a thread of its own (a stale socket there is
/// replaced). Every local user may connect: the guest is the user's machine.
pub fn serve(hub: Arc<Hub>, path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let hub = hub.clone();
                let _ = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || handle(&hub, conn));
            }
        })?;
    Ok(())
}

fn handle(hub: &Hub, conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let (status, body) = match read_request(conn) {
        Ok((method, path, body)) => route(hub, &method, &path, &body),
        Err(message) => error(400, &message),
    };
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Gateway Timeout",
    };
    let text = if status == 204 {
        String::new()
    } else {
        body.to_string()
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

/// The method, path and body of one request; errors say what is wrong with it.
fn read_request(conn: UnixStream) -> Result<(String, String, Vec<u8>), String> {
    let mut reader = BufReader::new(conn.take((MAX_HEAD + MAX_BODY) as u64));
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("reading the request: {e}"))?;
    let mut words = line.split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        return Err(format!("not an HTTP request line: `{}`", line.trim()));
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut length = 0usize;
    let mut head = line.len();
    loop {
        let mut header = String::new();
        let n = reader
            .read_line(&mut header)
            .map_err(|e| format!("reading the headers: {e}"))?;
        head += n;
        if head > MAX_HEAD {
            return Err(format!("request head over {MAX_HEAD} bytes"));
        }
        if n == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad Content-Length `{}`", value.trim()))?;
            }
        }
    }
    if length > MAX_BODY {
        return Err(format!("body of {length} bytes; at most {MAX_BODY}"));
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok((method, path, body))
}

fn error(status: u16, message: &str) -> (u16, Value) {
    let code = match status {
        400 => "invalid_request",
        404 => "not_found",
        405 => "method_not_allowed",
        503 => "unavailable",
        _ => "host_error",
    };
    (status, json!({ "error": code, "message": message }))
}

fn route(hub: &Hub, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let path = path.split('?').next().unwrap_or("");
    let parsed = || -> Result<Value, (u16, Value)> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        serde_json::from_slice(body).map_err(|e| error(400, &format!("bad JSON body: {e}")))
    };
    match (method, path) {
        ("GET", "/v1/tasks") => (200, json!(hub.tasks.list())),
        ("POST", "/v1/tasks") => {
            let body = match parsed() {
                Ok(b) => b,
                Err(e) => return e,
            };
            let Some(name) = body["name"].as_str() else {
                return error(400, "a task needs a `name`");
            };
            let ttl = match &body["ttl"] {
                Value::Null => None,
                v => match parse_ttl(v) {
                    Some(d) => Some(d),
                    None => {
                        return error(400, &format!("bad `ttl` value `{v}`: seconds or like 5m"))
                    }
                },
            };
            let ttl = ttl
                .or_else(|| {
                    hub.tasks
                        .list()
                        .into_iter()
                        .find(|t| t.name == name)
                        .map(|t| Duration::from_secs(t.ttl_secs))
                })
                .unwrap_or(DEFAULT_TTL);
            let description = body["description"].as_str().map(str::to_string);
            match hub.tasks.set(name, ttl, description) {
                Ok(task) => (200, json!(task)),
                Err(message) => error(400, &message),
            }
        }
        ("DELETE", p) if p.starts_with("/v1/tasks/") => {
            let name = &p["/v1/tasks/".len()..];
            if hub.tasks.remove(name) {
                (204, Value::Null)
            } else {
                error(404, &format!("no task `{name}`"))
            }
        }
        ("GET", "/v1/services") => (200, json!(hub.services.list())),
        ("POST", "/v1/checkpoints") | ("GET", "/v1/checkpoints") => {
            let request = if method == "POST" {
                let body = match parsed() {
                    Ok(b) => b,
                    Err(e) => return e,
                };
                GuestRequest::Checkpoint {
                    comment: body["comment"].as_str().map(str::to_string),
                }
            } else {
                GuestRequest::ListCheckpoints
            };
            match hub.ask(request) {
                Ok(text) => match serde_json::from_str(&text) {
                    Ok(v) => (200, v),
                    Err(_) => error(502, "the host's answer is not JSON"),
                },
                Err((status, message)) => error(status, &message),
            }
        }
        (_, "/v1/tasks" | "/v1/services" | "/v1/checkpoints") => {
            error(405, &format!("{method} is not allowed on `{path}`"))
        }
        _ => error(404, &format!("no route for `{method} {path}`")),
    }
}

/// `30` (seconds), `"30"`, `"90s"`, `"5m"` or `"1h"`.
fn parse_ttl(v: &Value) -> Option<Duration> {
    if let Some(n) = v.as_u64() {
        return Some(Duration::from_secs(n));
    }
    let s = v.as_str()?.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let scale = match &s[split..] {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    Some(Duration::from_secs(n * scale))
}

const CLIENT_USAGE: &str = "usage: sprite-env tasks [list]
       sprite-env tasks set NAME [--ttl 5m] [--description TEXT]
       sprite-env tasks rm NAME
       sprite-env services [list]
       sprite-env checkpoints [list]
       sprite-env checkpoints create [--comment TEXT]
The sprite's own API on /.sprite/api.sock ($SPRITE_API_SOCK to use another).";

/// `sprite-env ARGS`: calls the in-sprite API and prints its JSON answer; exits 1
/// with the API's message on an error, 2 on a usage error.
pub fn client_main(args: &[String]) -> i32 {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let flag = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1).copied())
    };
    let request: (&str, String, Value) = match words.as_slice() {
        ["tasks"] | ["tasks", "list"] => ("GET", "/v1/tasks".into(), Value::Null),
        ["tasks", "set", name, ..] => {
            let mut body = json!({ "name": name });
            if let Some(ttl) = flag("--ttl") {
                body["ttl"] = json!(ttl);
            }
            if let Some(d) = flag("--description") {
                body["description"] = json!(d);
            }
            ("POST", "/v1/tasks".into(), body)
        }
        ["tasks", "rm", name] => ("DELETE", format!("/v1/tasks/{name}"), Value::Null),
        ["services"] | ["services", "list"] => ("GET", "/v1/services".into(), Value::Null),
        ["checkpoints"] | ["checkpoints", "list"] => ("GET", "/v1/checkpoints".into(), Value::Null),
        ["checkpoints", "create", ..] => {
            let body = match flag("--comment") {
                Some(c) => json!({ "comment": c }),
                None => json!({}),
            };
            ("POST", "/v1/checkpoints".into(), body)
        }
        ["-h" | "--help" | "help"] => {
            println!("{CLIENT_USAGE}");
            return 0;
        }
        _ => {
            eprintln!("{CLIENT_USAGE}");
            return 2;
        }
    };
    let socket = std::env::var("SPRITE_API_SOCK").unwrap_or_else(|_| SOCKET.to_string());
    match call(&socket, request.0, &request.1, &request.2) {
        Ok((status, body)) if status < 300 => {
            if !body.is_empty() {
                println!("{body}");
            }
            0
        }
        Ok((status, body)) => {
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(body);
            eprintln!("sprite-env: {message} (HTTP {status})");
            1
        }
        Err(e) => {
            eprintln!("sprite-env: cannot reach the sprite's API at `{socket}`: {e}");
            1
        }
    }
}

/// One request to the API on `socket`: the status and the body.
fn call(socket: &str, method: &str, path: &str, body: &Value) -> io::Result<(u16, String)> {
    let mut conn = UnixStream::connect(socket)?;
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: sprite\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: `{head}`")))?;
    Ok((status, body.to_string()))
}
