//! `wisp server` as a user runs it: a real process on a free port.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `wisp server` on port 0 and returns it with the URL it printed.
fn start_server(home: &std::path::Path) -> (Daemon, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["server", "--listen", "127.0.0.1:0"])
        .env("WISP_HOME", home)
        .env_remove("WISP_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn wisp server");
    let stdout = child.stdout.take().unwrap();
    let daemon = Daemon(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("wisp server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from wisp server: {line:?}"))
        .to_string();
    (daemon, url)
}

#[tokio::test]
async fn health_answers_json() {
    let home = tempfile::tempdir().unwrap();
    let (_daemon, url) = start_server(home.path());
    let response = reqwest::get(format!("{url}/v1/health")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let store = body["store"].as_str().unwrap();
    assert!(
        store.starts_with("file://"),
        "default store should be a local folder: {store}"
    );
    assert!(home.path().join("store").is_dir());
}

#[tokio::test]
async fn unknown_route_is_a_json_404_naming_the_path() {
    let home = tempfile::tempdir().unwrap();
    let (_daemon, url) = start_server(home.path());
    let response = reqwest::get(format!("{url}/v1/nonsense")).await.unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("/v1/nonsense"));
}

#[test]
fn bad_listen_address_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["server", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not-an-address"), "stderr: {stderr}");
}

#[test]
fn version_and_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("wisp {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["server", "volume", "image", "vm", "doctor"] {
        assert!(help.contains(sub), "help lacks `{sub}`: {help}");
    }
}
