//! What the tests of the `wisp` binary share: running it, a `wisp server`
//! that dies with the test, its token, and talking to its sprites.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A child process killed when the test ends, even by a panic; for a `wisp
/// server`, with the QEMU processes it left (they outlive a daemon, for the
/// next one to adopt).
pub struct Daemon(pub Child, pub Option<PathBuf>);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(home) = &self.1 {
            wisp_vm::machine::kill_recorded(&home.join("run"));
        }
    }
}

/// Starts `wisp server` on port 0 with `extra` flags and returns it with
/// the URL it printed.
pub fn start_server(home: &Path, extra: &[&str]) -> (Daemon, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["server", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("WISP_HOME", home)
        .env_remove("WISP_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn wisp server");
    let line = first_stdout_line(&mut child);
    let daemon = Daemon(child, Some(home.to_path_buf()));
    let url = line
        .trim()
        .strip_prefix("wisp server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from wisp server: {line:?}"))
        .to_string();
    let token = std::fs::read_to_string(home.join("token"))
        .expect("wisp server writes $WISP_HOME/token before its ready line");
    TOKENS
        .lock()
        .unwrap()
        .insert(url.clone(), token.trim().to_string());
    (daemon, url)
}

/// The token of each server [`start_server`] started, by its URL.
static TOKENS: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The host token of the server at `url` (started by [`start_server`]).
pub fn token_of(url: &str) -> String {
    let tokens = TOKENS.lock().unwrap();
    tokens
        .iter()
        .find(|(base, _)| url.starts_with(base.as_str()))
        .map(|(_, token)| token.clone())
        .unwrap_or_else(|| panic!("no server started at {url}"))
}

/// An HTTP client that sends the host token of the server at `url`, as the
/// API wants by default.
pub fn client(url: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {}", token_of(url));
    headers.insert(reqwest::header::AUTHORIZATION, value.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The first line a child printed on its piped stdout: the ready line of
/// `wisp server` and `wisp volume serve`.
pub fn first_stdout_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .unwrap();
    line
}

/// Runs `wisp ARGS` against `home` and returns its stdout; panics with its
/// stderr when it fails.
pub fn wisp_ok(home: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(args)
        .env("WISP_HOME", home)
        .env_remove("WISP_STORE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wisp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A WISP_HOME named `name` in the target folder, kept between runs for its kernel
/// (with its initramfs) and the accelerator verdict (`cache/accel.json`); the
/// sprites, volumes, registry and token of an earlier run are removed first.
pub fn vm_home(name: &str) -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_wisp"));
    let home = exe.ancestors().nth(2).unwrap().join(name);
    std::fs::create_dir_all(&home).unwrap();
    let accel = std::fs::read(home.join("cache/accel.json")).ok();
    for entry in std::fs::read_dir(&home).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n != "kernel") {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    if let Some(verdict) = accel {
        std::fs::create_dir_all(home.join("cache")).unwrap();
        std::fs::write(home.join("cache/accel.json"), verdict).unwrap();
    }
    home
}

/// What one exec gave back.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
    /// A text `error` event.
    pub error: Option<String>,
    /// From the `session_info` message that comes first.
    pub session_id: Option<String>,
}

/// The exec WebSocket URL of sprite `name` for `argv`, with `extra` parameters.
pub fn exec_url(url: &str, name: &str, argv: &[&str], extra: &[(&str, &str)]) -> String {
    format!(
        "{}/v1/sprites/{name}/exec?{}",
        url.replacen("http", "ws", 1),
        query(argv, extra)
    )
}

/// A WebSocket request to `ws_url` carrying the host token of the server at `url`.
pub fn ws_request(
    url: &str,
    ws_url: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = ws_url.into_client_request().unwrap();
    let value = format!("Bearer {}", token_of(url));
    request
        .headers_mut()
        .insert("authorization", value.parse().unwrap());
    request
}

pub fn query(argv: &[&str], extra: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for a in argv {
        q.append_pair("cmd", a);
    }
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    q.finish()
}

/// Runs `argv` in sprite `name` over the exec WebSocket, sending `stdin`
/// (then end of stdin) when given; non-TTY framing.
pub async fn exec(url: &str, name: &str, argv: &[&str], stdin: Option<&[u8]>) -> Output {
    let extra: &[(&str, &str)] = if stdin.is_some() {
        &[("stdin", "true")]
    } else {
        &[]
    };
    let ws_url = exec_url(url, name, argv, extra);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(url, &ws_url))
        .await
        .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"));
    if let Some(data) = stdin {
        let mut frame = vec![0u8];
        frame.extend_from_slice(data);
        ws.send(Message::Binary(frame.into())).await.unwrap();
        ws.send(Message::Binary(vec![4u8].into())).await.unwrap();
    }
    let mut out = Output::default();
    let mut first = true;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(120), ws.next())
        .await
        .expect("exec answered within 120 s")
    {
        let message = message.unwrap();
        let was_first = std::mem::replace(&mut first, false);
        match message {
            Message::Binary(b) => match b.split_first() {
                Some((1, d)) => out.stdout.push_str(&String::from_utf8_lossy(d)),
                Some((2, d)) => out.stderr.push_str(&String::from_utf8_lossy(d)),
                Some((3, d)) => out.code = Some(d[0] as i32),
                // A keepalive.
                None => {}
                other => panic!("unexpected frame {other:?}"),
            },
            Message::Text(t) => {
                let event: serde_json::Value = serde_json::from_str(&t).unwrap();
                match event["type"].as_str() {
                    Some("session_info") => {
                        assert!(was_first, "session_info comes first: {t}");
                        out.session_id = event["session_id"].as_str().map(str::to_string);
                    }
                    Some("port_opened" | "port_closed") => {}
                    Some("error") => out.error = event["error"].as_str().map(str::to_string),
                    _ => panic!("unexpected text frame {t}"),
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    out
}

/// Runs `argv` in sprite `name` and returns its stdout as bytes (exit 0 asserted).
pub async fn exec_bytes(url: &str, name: &str, argv: &[&str]) -> Vec<u8> {
    let ws_url = exec_url(url, name, argv, &[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(url, &ws_url))
        .await
        .unwrap();
    let (mut out, mut code) = (Vec::new(), None);
    while let Some(message) = ws.next().await {
        match message.unwrap() {
            Message::Binary(b) => match b.split_first() {
                Some((1, d)) => out.extend_from_slice(d),
                Some((3, d)) => code = d.first().copied(),
                _ => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(code, Some(0), "{argv:?}");
    out
}

/// Sprite `name`'s JSON (`GET /v1/sprites/{name}`).
pub async fn sprite_json(url: &str, name: &str) -> serde_json::Value {
    get_json(url, &format!("/v1/sprites/{name}")).await
}

/// The JSON answer of `GET {url}{path}`.
pub async fn get_json(url: &str, path: &str) -> serde_json::Value {
    client(url)
        .get(format!("{url}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn status(url: &str, name: &str) -> String {
    let body = sprite_json(url, name).await;
    body["status"].as_str().unwrap_or_default().to_string()
}

/// Waits (at most 120 s) until sprite `name` is asleep (warm or cold).
pub async fn until_asleep(url: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while status(url, name).await == "running" {
        assert!(
            Instant::now() < deadline,
            "sprite `{name}` did not go to sleep"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// POSTs `body` as JSON to `path` on the server at `url`: the status and the JSON
/// answer (`null` when there is none).
pub async fn post_json(url: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = client(url)
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or_default())
}

pub async fn post(url: &str) -> u16 {
    client(url)
        .post(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Creates sprite `name` on the server at `url`; returns the HTTP status.
pub async fn create_sprite(url: &str, name: &str) -> u16 {
    client(url)
        .post(format!("{url}/v1/sprites"))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Asserts that a table the CLI printed has its cells under their headings: a
/// cell of a left-aligned column starts where its heading starts, one of a
/// right-aligned column (named in `right`) ends where its heading ends.
pub fn assert_aligned(table: &str, headings: &[&str], right: &[&str]) {
    let mut lines = table.lines();
    let heading: Vec<char> = lines.next().unwrap_or_default().chars().collect();
    let heading_text: String = heading.iter().collect();
    let mut spans = Vec::new();
    let mut from = 0;
    for h in headings {
        let at = heading_text[from..]
            .find(h)
            .map(|i| heading_text[..from + i].chars().count())
            .unwrap_or_else(|| panic!("no heading {h} in:\n{table}"));
        let end = at + h.chars().count();
        spans.push((at, end, right.contains(h)));
        from = heading_text
            .char_indices()
            .nth(end)
            .map_or(heading_text.len(), |(i, _)| i);
    }
    let rows: Vec<Vec<char>> = lines.map(|l| l.chars().collect()).collect();
    assert!(!rows.is_empty(), "no rows in:\n{table}");
    let blank = |row: &[char], i: usize| row.get(i).is_none_or(|c| *c == ' ');
    for row in &rows {
        let line: String = row.iter().collect();
        for (i, &(start, end, right_aligned)) in spans.iter().enumerate() {
            // An empty cell is blank across its heading.
            if (start..end).all(|i| blank(row, i)) {
                continue;
            }
            let ok = if right_aligned {
                !blank(row, end - 1) && blank(row, end)
            } else {
                !blank(row, start) && (start == 0 || blank(row, start - 1))
            };
            assert!(
                ok,
                "column {} is not under its heading in row `{line}` of:\n{table}",
                headings[i]
            );
        }
    }
}
