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
    start_server_with(home, &[])
}

fn start_server_with(home: &std::path::Path, extra: &[&str]) -> (Daemon, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["server", "--listen", "127.0.0.1:0"])
        .args(extra)
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
    assert_eq!(body["sprites"], 0);
    let registry = body["registry"].as_str().unwrap();
    assert_eq!(
        std::path::Path::new(registry),
        home.path().join("registry.db")
    );
    assert!(home.path().join("registry.db").is_file());
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

/// Runs `wisp ARGS` against `home` and returns its stdout; panics with its
/// stderr when it fails.
fn wisp_ok(home: &std::path::Path, args: &[&str]) -> String {
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

/// Sends `method url` with an optional JSON body; returns the status and
/// the JSON answer (`null` for an empty body).
async fn call(method: reqwest::Method, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, value)
}

fn error_of(value: &serde_json::Value) -> &str {
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {value}"))
}

/// The Sprites v1 sprite endpoints against a real daemon, registry and
/// volume store: create forks the standard image, the registry survives a
/// restart, delete removes the disk; bad requests get errors naming the
/// problem.
#[tokio::test]
async fn sprites_are_created_listed_updated_and_deleted() {
    use reqwest::Method;
    let home = tempfile::tempdir().unwrap();
    let (daemon, url) = start_server_with(home.path(), &["--image", "tiny"]);
    let sprites = format!("{url}/v1/sprites");

    // No image yet: the error says how to get one.
    let (status, body) = call(Method::POST, &sprites, Some(r#"{"name":"web"}"#)).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        error_of(&body).contains("run `wisp image build tiny`"),
        "{body}"
    );

    // The image is looked up at each create, so building it now is enough.
    wisp_ok(home.path(), &["image", "build", "tiny"]);
    let (status, web) = call(Method::POST, &sprites, Some(r#"{"name":"web"}"#)).await;
    assert_eq!(status, 201, "{web}");
    assert_eq!(web["name"], "web");
    assert_eq!(web["status"], "cold");
    assert_eq!(web["organization"], "personal");
    assert_eq!(web["url_settings"]["auth"], "sprite");
    assert_eq!(web["created_at"], web["updated_at"]);
    assert!(web["created_at"].as_str().unwrap().ends_with('Z'), "{web}");
    let id = web["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let port = url.rsplit(':').next().unwrap();
    assert_eq!(web["url"], format!("http://web.localhost:{port}"));

    // Its disk is a fork of the image's checkpoint.
    let volume = format!("sprite-{id}");
    let info: serde_json::Value = serde_json::from_str(&wisp_ok(
        home.path(),
        &["volume", "info", &volume, "--json"],
    ))
    .unwrap();
    let origin = info["origin"].as_str().unwrap_or_default();
    assert!(origin.starts_with("image-tiny@"), "origin {origin}");

    // The name is taken now.
    let (status, body) = call(Method::POST, &sprites, Some(r#"{"name":"web"}"#)).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        error_of(&body).contains("sprite `web` already exists"),
        "{body}"
    );

    // Bad requests, each named.
    for (request, names) in [
        (r#"{"name":"Web_1"}"#, "bad sprite name `Web_1`"),
        (r#"{"nme":"x"}"#, "nme"),
        (r#"{"name":"x","url_settings":{"auth":"open"}}"#, "open"),
        (r#"{"name":"#, "EOF"),
    ] {
        let (status, body) = call(Method::POST, &sprites, Some(request)).await;
        assert_eq!(status, 400, "{request}: {body}");
        assert!(error_of(&body).contains(names), "{request}: {body}");
    }

    // Public at creation, then listed in pages by name.
    let (status, body) = call(
        Method::POST,
        &sprites,
        Some(r#"{"name":"api","url_settings":{"auth":"public"},"wait_for_capacity":true}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["url_settings"]["auth"], "public");
    for name in ["db", "worker"] {
        let (status, body) = call(
            Method::POST,
            &sprites,
            Some(&format!(r#"{{"name":"{name}"}}"#)),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["sprites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, page) = call(Method::GET, &format!("{sprites}?max_results=3"), None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(names(&page), ["api", "db", "web"]);
    assert_eq!(page["has_more"], true);
    let token = page["next_continuation_token"].as_str().unwrap();
    let (_, page) = call(
        Method::GET,
        &format!("{sprites}?max_results=3&continuation_token={token}"),
        None,
    )
    .await;
    assert_eq!(names(&page), ["worker"]);
    assert_eq!(page["has_more"], false);
    assert!(page["next_continuation_token"].is_null());
    let (_, page) = call(Method::GET, &format!("{sprites}?prefix=w"), None).await;
    assert_eq!(names(&page), ["web", "worker"]);
    let (status, body) = call(Method::GET, &format!("{sprites}?max_results=0"), None).await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("max_results"), "{body}");

    // Update: only url_settings.
    let web_url = format!("{sprites}/web");
    let (status, body) = call(
        Method::PUT,
        &web_url,
        Some(r#"{"url_settings":{"auth":"public"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["url_settings"]["auth"], "public");
    assert_eq!(body["id"], id.as_str());
    let (status, body) = call(Method::PUT, &web_url, Some(r#"{"name":"other"}"#)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(
        Method::PUT,
        &format!("{sprites}/nope"),
        Some(r#"{"url_settings":{"auth":"public"}}"#),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        error_of(&body).contains("sprite `nope` does not exist"),
        "{body}"
    );
    let (status, body) = call(Method::PATCH, &web_url, None).await;
    assert_eq!(status, 405, "{body}");
    assert!(error_of(&body).contains("PATCH /v1/sprites/web"), "{body}");

    // The registry outlives the daemon.
    drop(daemon);
    let (_daemon, url) = start_server_with(home.path(), &["--image", "tiny"]);
    let sprites = format!("{url}/v1/sprites");
    let web_url = format!("{sprites}/web");
    let (status, body) = call(Method::GET, &web_url, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["url_settings"]["auth"], "public");
    let (_, health) = call(Method::GET, &format!("{url}/v1/health"), None).await;
    assert_eq!(health["sprites"], 4);

    // Delete removes the name and the disk.
    let (status, body) = call(Method::DELETE, &web_url, None).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = call(Method::GET, &web_url, None).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = call(Method::DELETE, &web_url, None).await;
    assert_eq!(status, 404);
    let volumes = wisp_ok(home.path(), &["volume", "list"]);
    assert!(
        !volumes.contains(&volume),
        "{volume} still listed: {volumes}"
    );
    // The name can be taken again, by a new sprite with a new disk.
    let (status, again) = call(Method::POST, &sprites, Some(r#"{"name":"web"}"#)).await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["id"], id.as_str());
}
