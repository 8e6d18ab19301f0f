//! What the tests of the `wisp` binary share: running it, and a `wisp server`
//! that dies with the test.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process killed when the test ends, even by a panic.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    let daemon = Daemon(child);
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
