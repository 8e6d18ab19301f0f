//! `wisp server` as a user runs it: a real process on a free port.

use std::process::{Command, Stdio};

mod common;

use common::{start_server, wisp_ok, Daemon};

#[tokio::test]
async fn health_answers_json() {
    let home = tempfile::tempdir().unwrap();
    let (_daemon, url) = start_server(home.path(), &[]);
    let response = common::client(&url)
        .get(format!("{url}/v1/health"))
        .send()
        .await
        .unwrap();
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
    let (_daemon, url) = start_server(home.path(), &[]);
    let response = common::client(&url)
        .get(format!("{url}/v1/nonsense"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not_found", "{body}");
    assert!(body["message"].as_str().unwrap().contains("/v1/nonsense"));
}

/// The API's every call, as the public SDKs make them: each must be in the
/// OpenAPI document.
const SDK_CALLS: &[(&str, &str)] = &[
    ("get", "/v1/sprites"),
    ("post", "/v1/sprites"),
    ("get", "/v1/sprites/{name}"),
    ("put", "/v1/sprites/{name}"),
    ("delete", "/v1/sprites/{name}"),
    ("post", "/v1/sprites/{name}/upgrade"),
    ("post", "/v1/sprites/{name}/restart"),
    ("get", "/v1/sprites/{name}/check"),
    ("get", "/v1/sprites/{name}/exec"),
    ("post", "/v1/sprites/{name}/exec"),
    ("get", "/v1/sprites/{name}/exec/{id}"),
    ("post", "/v1/sprites/{name}/exec/{id}/kill"),
    ("get", "/v1/sprites/{name}/fs/read"),
    ("put", "/v1/sprites/{name}/fs/write"),
    ("get", "/v1/sprites/{name}/fs/list"),
    ("delete", "/v1/sprites/{name}/fs/delete"),
    ("post", "/v1/sprites/{name}/fs/rename"),
    ("post", "/v1/sprites/{name}/fs/copy"),
    ("post", "/v1/sprites/{name}/fs/chmod"),
    ("post", "/v1/sprites/{name}/fs/chown"),
    ("get", "/v1/sprites/{name}/fs/watch"),
    ("get", "/v1/sprites/{name}/services"),
    ("get", "/v1/sprites/{name}/services/{service}"),
    ("put", "/v1/sprites/{name}/services/{service}"),
    ("delete", "/v1/sprites/{name}/services/{service}"),
    ("post", "/v1/sprites/{name}/services/{service}/start"),
    ("post", "/v1/sprites/{name}/services/{service}/stop"),
    ("post", "/v1/sprites/{name}/services/{service}/restart"),
    ("get", "/v1/sprites/{name}/services/{service}/logs"),
    ("post", "/v1/sprites/{name}/services/signal"),
    ("post", "/v1/sprites/{name}/checkpoint"),
    ("get", "/v1/sprites/{name}/checkpoints"),
    ("get", "/v1/sprites/{name}/checkpoints/{id}"),
    ("post", "/v1/sprites/{name}/checkpoints/{id}/restore"),
    ("get", "/v1/sprites/{name}/proxy"),
    ("get", "/v1/sprites/{name}/ports/watch"),
    ("get", "/v1/sprites/{name}/policy/{kind}"),
    ("post", "/v1/sprites/{name}/policy/{kind}"),
    ("delete", "/v1/sprites/{name}/policy/{kind}"),
];

/// `GET /v1/openapi.json` (no token needed) documents every SDK call, and every
/// route it documents is served: called with made-up names, each answers
/// something other than "no route" or "method not allowed".
#[tokio::test]
async fn the_openapi_document_and_the_routes_agree() {
    let home = tempfile::tempdir().unwrap();
    let (_daemon, url) = start_server(home.path(), &[]);
    let doc: serde_json::Value = reqwest::get(format!("{url}/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in SDK_CALLS {
        assert!(
            paths
                .get(*path)
                .is_some_and(|item| item.get(*method).is_some()),
            "{method} {path} is not in the OpenAPI document"
        );
    }
    let mut checked = 0;
    for (path, item) in paths {
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let concrete = path
                .replace("{name}", "no-such-sprite")
                .replace("{service}", "svc")
                .replace("{id}", "v0")
                .replace("{kind}", "network");
            let response = common::client(&url)
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{url}{concrete}"),
                )
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path}: {text}");
            assert!(
                !text.contains("no route for path"),
                "{method} {path}: {text}"
            );
            checked += 1;
        }
    }
    assert!(checked >= SDK_CALLS.len(), "{checked} calls checked");
}

/// Bad input to each endpoint of the Sprites API: a clear 4xx naming the problem, at
/// once (no wake, no hang), never a 500.
#[tokio::test]
async fn bad_input_to_every_endpoint_is_a_clear_4xx() {
    let home = tempfile::tempdir().unwrap();
    wisp_ok(home.path(), &["image", "build", "tiny"]);
    let (_daemon, url) = start_server(home.path(), &["--image", "tiny"]);
    assert_eq!(common::create_sprite(&url, "box").await, 201);
    let s = "/v1/sprites/box";
    let cases: &[(&str, String, Option<&str>, u16, &str)] = &[
        (
            "POST",
            "/v1/sprites".into(),
            Some(r#"{"name":"a","config":{"cpus":0}}"#),
            400,
            "config.cpus",
        ),
        (
            "POST",
            "/v1/sprites".into(),
            Some(r#"{"name":"a","config":{"ram_mb":1}}"#),
            400,
            "config.ram_mb",
        ),
        (
            "POST",
            "/v1/sprites".into(),
            Some(r#"{"name":"a","config":{"storage_gb":20000}}"#),
            400,
            "config.storage_gb",
        ),
        (
            "POST",
            "/v1/sprites".into(),
            Some(r#"{"name":"a","labels":[""]}"#),
            400,
            "labels",
        ),
        (
            "POST",
            "/v1/sprites".into(),
            Some(r#"{"name":"a","environment":{"1X":"y"}}"#),
            400,
            "environment",
        ),
        (
            "POST",
            "/v1/sprites".into(),
            Some(r#"{"name":"a","runtime":"gpu"}"#),
            400,
            "runtime",
        ),
        (
            "POST",
            "/v1/sprites".into(),
            Some(r#"{"name":"a","url_settings":{"private_access":"all"}}"#),
            400,
            "private_access",
        ),
        ("PUT", s.into(), Some("{}"), 400, "nothing to update"),
        ("PUT", s.into(), Some(r#"{"labels":"x"}"#), 400, "labels"),
        (
            "GET",
            "/v1/sprites?max_results=0".into(),
            None,
            400,
            "max_results",
        ),
        ("GET", "/v1/sprites?colour=red".into(), None, 400, "colour"),
        ("POST", format!("{s}/exec?cmd=x&tty=true"), None, 400, "tty"),
        (
            "POST",
            format!("{s}/exec?cmd=x&max_run_after_disconnect=soon"),
            None,
            400,
            "max_run_after_disconnect",
        ),
        (
            "POST",
            format!("{s}/exec/1/kill?signal=NOPE"),
            None,
            400,
            "signal",
        ),
        (
            "POST",
            format!("{s}/exec/99/kill"),
            None,
            404,
            "no exec session `99`",
        ),
        (
            "GET",
            format!("{s}/exec/99"),
            None,
            404,
            "no exec session `99`",
        ),
        ("GET", format!("{s}/fs/read"), None, 400, "path"),
        (
            "GET",
            format!("{s}/fs/read?path=x&workingDir=rel"),
            None,
            400,
            "workingDir",
        ),
        (
            "PUT",
            format!("{s}/fs/write?path=/x&mode=999"),
            Some(""),
            400,
            "mode",
        ),
        (
            "PUT",
            format!("{s}/fs/write?path=/x&mkdirParents=maybe"),
            Some(""),
            400,
            "mkdirParents",
        ),
        (
            "GET",
            format!("{s}/fs/list?path=/&recursive=often"),
            None,
            400,
            "recursive",
        ),
        (
            "POST",
            format!("{s}/fs/chmod"),
            Some(r#"{"path":"/x","mode":"9"}"#),
            400,
            "mode",
        ),
        (
            "POST",
            format!("{s}/fs/chown"),
            Some(r#"{"path":"/x"}"#),
            400,
            "uid",
        ),
        (
            "POST",
            format!("{s}/fs/rename"),
            Some(r#"{"source":"a"}"#),
            400,
            "dest",
        ),
        ("POST", format!("{s}/fs/copy"), Some("not json"), 400, ""),
        ("DELETE", format!("{s}/fs/delete"), None, 400, "path"),
        (
            "PUT",
            format!("{s}/services/.bad"),
            Some(r#"{"cmd":"x"}"#),
            400,
            "service name",
        ),
        (
            "PUT",
            format!("{s}/services/web?duration=forever"),
            Some(r#"{"cmd":"x"}"#),
            400,
            "duration",
        ),
        (
            "PUT",
            format!("{s}/services/web"),
            Some(r#"{"cmd":""}"#),
            400,
            "cmd",
        ),
        (
            "PUT",
            format!("{s}/services/web"),
            Some(r#"{"cmd":"x","http_port":0}"#),
            400,
            "http_port",
        ),
        (
            "POST",
            format!("{s}/services/signal"),
            Some(r#"{"name":"web","signal":"NOPE"}"#),
            400,
            "signal",
        ),
        (
            "GET",
            format!("{s}/services/web/logs?lines=x"),
            None,
            400,
            "lines",
        ),
        (
            "POST",
            format!("{s}/services/web/stop?timeout=x"),
            None,
            400,
            "duration",
        ),
        (
            "GET",
            format!("{s}/policy/network"),
            None,
            501,
            "not implemented",
        ),
        (
            "POST",
            format!("{s}/policy/privileges"),
            Some("{}"),
            501,
            "not implemented",
        ),
        (
            "GET",
            format!("{s}/policy/other"),
            None,
            404,
            "no policy `other`",
        ),
        ("GET", format!("{s}/proxy"), None, 400, "WebSocket"),
        ("GET", format!("{s}/ports/watch"), None, 400, "WebSocket"),
        ("GET", format!("{s}/fs/watch"), None, 400, "WebSocket"),
        (
            "GET",
            "/v1/sprites/nope/check".into(),
            None,
            404,
            "sprite `nope` does not exist",
        ),
        (
            "POST",
            "/v1/sprites/nope/restart".into(),
            None,
            404,
            "sprite `nope` does not exist",
        ),
    ];
    for (method, path, body, want, names) in cases {
        let mut request = common::client(&url)
            .request(method.parse().unwrap(), format!("{url}{path}"))
            .timeout(std::time::Duration::from_secs(10));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no answer within 10 s: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, *want, "{method} {path}: {text}");
        assert!(
            text.contains(names),
            "{method} {path}: `{names}` not in {text}"
        );
    }
    // None of that woke the sprite.
    assert_eq!(common::status(&url, "box").await, "cold");
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
    for sub in ["server", "sprite", "volume", "image", "vm", "doctor"] {
        assert!(help.contains(sub), "help lacks `{sub}`: {help}");
    }
}

/// Sends `method url` with an optional JSON body; returns the status and
/// the JSON answer (`null` for an empty body, an array of events for a
/// progress stream).
async fn call(method: reqwest::Method, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = common::client(url).request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let ndjson = response
        .headers()
        .get("content-type")
        .is_some_and(|t| t == "application/x-ndjson");
    let text = response.text().await.unwrap();
    let value = if ndjson {
        // A progress stream: an array of its events.
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("bad event ({e}): {l}"))
            })
            .collect()
    } else if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, value)
}

/// The sentence of an error body (`{"error": "<code>", "message": "..."}`).
fn error_of(value: &serde_json::Value) -> &str {
    value["message"]
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
    let (daemon, url) = start_server(home.path(), &["--image", "tiny"]);
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
    assert_eq!(body["error"], "conflict", "{body}");
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
        assert_eq!(body["error"], "invalid_request", "{body}");
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
    // More than a page is a page (the SDKs list everything with 100), `bulk_load`
    // is accepted; zero or a word is a 400 naming the field.
    let (status, page) = call(
        Method::GET,
        &format!("{sprites}?max_results=100&bulk_load=true"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(names(&page), ["api", "db", "web", "worker"]);
    for bad in ["0", "many"] {
        let (status, body) = call(Method::GET, &format!("{sprites}?max_results={bad}"), None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(error_of(&body).contains("max_results"), "{body}");
    }

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

    // The registry outlives the daemon, even killed (SIGKILL): a 201 is on disk.
    drop(daemon);
    let (_daemon, url) = start_server(home.path(), &["--image", "tiny"]);
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

/// `wisp volume serve NAME` on a unix socket in `dir`, once it is ready; the
/// way a test writes into a cold sprite's disk without booting it.
fn serve_volume(home: &std::path::Path, name: &str, dir: &std::path::Path) -> (Daemon, String) {
    let sock = dir.join("nbd.sock");
    let listen = format!("unix:{}", sock.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["volume", "serve", name, "--nbd", &listen])
        .env("WISP_HOME", home)
        .env_remove("WISP_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = common::first_stdout_line(&mut child);
    assert!(line.starts_with("serving volume"), "{line}");
    (
        Daemon(child, None),
        format!("nbd+unix:///{name}?socket={}", sock.display()),
    )
}

/// Stops a `wisp volume serve` the way a user does (SIGTERM: flush, upload, release).
fn stop_serving(mut serving: Daemon) {
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(serving.0.id() as i32, libc::SIGTERM) };
    assert!(serving.0.wait().unwrap().success());
}

/// qemu-io commands against `uri`; panics if one fails or a pattern differs.
fn qemu_io(uri: &str, commands: &[&str]) {
    let qemu_io = wisp_testkit::require_tool("qemu-io", "qemu-utils");
    let mut cmd = Command::new(qemu_io);
    cmd.args(["-f", "raw", uri]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {commands:?}: {text}"
    );
}

/// Checkpoint, list, get and restore through the API, on a cold sprite whose
/// disk a test writes over NBD between the steps: restore brings back the
/// bytes of the checkpoint, later checkpoints stay, errors are named.
#[tokio::test]
async fn checkpoints_freeze_and_restore_a_sprites_disk() {
    use reqwest::Method;
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    wisp_ok(home.path(), &["image", "build", "tiny"]);
    let (_daemon, url) = start_server(home.path(), &["--image", "tiny"]);
    let sprites = format!("{url}/v1/sprites");
    let (status, sprite) = call(Method::POST, &sprites, Some(r#"{"name":"box"}"#)).await;
    assert_eq!(status, 201, "{sprite}");
    let volume = format!("sprite-{}", sprite["id"].as_str().unwrap());
    let at = "61G"; // zeros in the image (60G holds ext4 bitmaps)

    // qemu-io commands on the cold sprite's disk: served, run, then released.
    let on_disk = |commands: &[&str]| {
        let (serve, uri) = serve_volume(home.path(), &volume, scratch.path());
        qemu_io(&uri, commands);
        stop_serving(serve);
    };

    // v0: the disk as created. A body is optional.
    let response = common::client(&url)
        .post(format!("{sprites}/box/checkpoint"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let events: Vec<serde_json::Value> = response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.last().unwrap()["type"], "complete", "{events:?}");
    assert_eq!(events.last().unwrap()["data"], "Checkpoint v0 created");

    // v1: after writing 0xab.
    let (serve, uri) = serve_volume(home.path(), &volume, scratch.path());
    qemu_io(
        &uri,
        &[
            &format!("read -P 0 {at} 64k"),
            &format!("write -P 0xab {at} 64k"),
            "flush",
        ],
    );
    // While another process holds the disk, a checkpoint is refused by name.
    let (status, body) = call(Method::POST, &format!("{sprites}/box/checkpoint"), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(error_of(&body).contains("in use"), "{body}");
    stop_serving(serve);
    let (status, _) = call(
        Method::POST,
        &format!("{sprites}/box/checkpoint"),
        Some(r#"{"comment":"wrote ab"}"#),
    )
    .await;
    assert_eq!(status, 200);

    // Then 0xcd, not checkpointed.
    on_disk(&[&format!("write -P 0xcd {at} 64k"), "flush"]);

    let (status, list) = call(Method::GET, &format!("{sprites}/box/checkpoints"), None).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["v1", "v0"], "newest first");
    assert_eq!(list[0]["comment"], "wrote ab");
    assert_eq!(list[1]["comment"], "");
    let (status, v1) = call(Method::GET, &format!("{sprites}/box/checkpoints/v1"), None).await;
    assert_eq!(status, 200);
    assert_eq!(v1, list[0]);
    assert!(v1["create_time"].as_str().unwrap().ends_with('Z'));

    // Restore v1: 0xab again. Restore v0: zeros, and v1 is still there.
    let (status, _) = call(
        Method::POST,
        &format!("{sprites}/box/checkpoints/v1/restore"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    on_disk(&[&format!("read -P 0xab {at} 64k")]);
    let (status, _) = call(
        Method::POST,
        &format!("{sprites}/box/checkpoints/v0/restore"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    on_disk(&[&format!("read -P 0 {at} 64k")]);
    let (_, list) = call(Method::GET, &format!("{sprites}/box/checkpoints"), None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Errors name what is missing or wrong.
    for (method, path, body, status, names) in [
        (
            Method::POST,
            "box/checkpoints/v7/restore",
            None,
            404,
            "checkpoint `v7`",
        ),
        (
            Method::GET,
            "box/checkpoints/v7",
            None,
            404,
            "checkpoint `v7` of sprite `box`",
        ),
        (
            Method::POST,
            "nope/checkpoint",
            None,
            404,
            "sprite `nope` does not exist",
        ),
        (
            Method::GET,
            "nope/checkpoints",
            None,
            404,
            "sprite `nope` does not exist",
        ),
        (
            Method::POST,
            "box/checkpoint",
            Some(r#"{"coment":"x"}"#),
            400,
            "coment",
        ),
    ] {
        let (got, answer) = call(method, &format!("{sprites}/{path}"), body).await;
        assert_eq!(got, status, "{path}: {answer}");
        assert!(error_of(&answer).contains(names), "{path}: {answer}");
    }
}

/// `wisp sprite ...` against `api`: (success, stdout, stderr).
fn sprite_cmd(home: &std::path::Path, api: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .arg("sprite")
        .args(args)
        .args(["--api", api])
        .env("WISP_HOME", home)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The client commands do through the API what a Sprites user does with
/// `sprite create/list/checkpoint/restore/destroy`, and print the daemon's
/// errors as their own.
#[test]
fn sprite_commands_talk_to_the_daemon() {
    let home = tempfile::tempdir().unwrap();
    wisp_ok(home.path(), &["image", "build", "tiny"]);
    let (_daemon, api) = start_server(home.path(), &["--image", "tiny"]);
    let ok = |args: &[&str]| {
        let (success, stdout, stderr) = sprite_cmd(home.path(), &api, args);
        assert!(success, "wisp sprite {args:?}: {stderr}");
        stdout
    };
    let fails = |args: &[&str]| {
        let (success, _, stderr) = sprite_cmd(home.path(), &api, args);
        assert!(!success, "wisp sprite {args:?} should fail");
        stderr
    };

    assert!(ok(&["create", "dev"]).contains("created sprite dev"));
    ok(&["create", "pub", "--public"]);
    let list = ok(&["list"]);
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert!(
        rows[0].starts_with("dev ") && rows[0].contains("cold") && rows[0].contains(" sprite "),
        "{list}"
    );
    assert!(
        rows[1].starts_with("pub ") && rows[1].contains(" public "),
        "{list}"
    );
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", "dev", "--json"])).unwrap();
    assert_eq!(info["name"], "dev");
    assert!(ok(&["set-auth", "dev", "public"]).contains("url auth public"));

    assert_eq!(ok(&["checkpoint", "dev"]).trim(), "Checkpoint v0 created");
    assert_eq!(
        ok(&["checkpoint", "dev", "-m", "second"]).trim(),
        "Checkpoint v1 created"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["checkpoints", "dev", "--json"])).unwrap();
    assert_eq!(listed[0]["id"], "v1");
    assert_eq!(listed[0]["comment"], "second");
    assert!(ok(&["checkpoints", "dev"])
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("v1 "));
    assert_eq!(ok(&["restore", "dev", "v0"]).trim(), "Restored to v0");
    // The tables line up whatever their cells hold (a name past what a fixed width
    // left it shifted every column after it).
    let long = "a-sprite-named-well-past-twenty-four-characters";
    ok(&["create", long]);
    ok(&["checkpoint", long, "-m", "a comment"]);
    common::assert_aligned(
        &ok(&["list"]),
        &["NAME", "STATUS", "AUTH", "CREATED", "URL"],
        &[],
    );
    common::assert_aligned(
        &ok(&["checkpoints", long]),
        &["ID", "CREATED", "COMMENT"],
        &[],
    );
    common::assert_aligned(
        &wisp_ok(home.path(), &["volume", "list"]),
        &["NAME", "SIZE", "ORIGIN", "URL"],
        &["SIZE"],
    );
    common::assert_aligned(
        &wisp_ok(home.path(), &["image", "list"]),
        &["NAME", "KIND", "VOLUME", "CKPT", "FS MiB", "BUILT", "FROM"],
        &["FS MiB"],
    );
    ok(&["delete", long]);

    assert!(fails(&["info", "nope"]).contains("sprite `nope` does not exist"));
    assert!(fails(&["create", "dev"]).contains("sprite `dev` already exists"));
    assert!(fails(&["create", "Bad_Name"]).contains("bad sprite name `Bad_Name`"));
    assert!(fails(&["restore", "dev", "../x"]).contains("bad checkpoint id `../x`"));
    assert!(fails(&["set-auth", "dev", "everyone"]).contains("bad url auth `everyone`"));

    assert!(ok(&["delete", "dev"]).contains("deleted sprite dev"));
    assert!(fails(&["delete", "dev"]).contains("sprite `dev` does not exist"));
    assert_eq!(ok(&["list"]).lines().count(), 2);

    // Nothing listening: the error says where it looked and what to start.
    let port = wisp_testkit::free_port();
    let (success, _, stderr) =
        sprite_cmd(home.path(), &format!("http://127.0.0.1:{port}"), &["list"]);
    assert!(!success);
    assert!(
        stderr.contains(&format!(
            "cannot reach the wisp server at http://127.0.0.1:{port}"
        )) && stderr.contains("is `wisp server` running?"),
        "{stderr}"
    );
}

/// Concurrent requests: two creates of one name give one sprite and one 409
/// (and no stray disk); concurrent checkpoints of one sprite take turns and
/// all succeed with distinct ids.
#[tokio::test]
async fn concurrent_requests_on_one_sprite() {
    use reqwest::Method;
    let home = tempfile::tempdir().unwrap();
    wisp_ok(home.path(), &["image", "build", "tiny"]);
    let (_daemon, url) = start_server(home.path(), &["--image", "tiny"]);
    let sprites = format!("{url}/v1/sprites");

    let creates = (0..4).map(|_| call(Method::POST, &sprites, Some(r#"{"name":"race"}"#)));
    let mut statuses: Vec<u16> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409]);
    let volumes = wisp_ok(home.path(), &["volume", "list"]);
    assert_eq!(
        volumes.lines().filter(|l| l.contains("sprite-")).count(),
        1,
        "one disk for one sprite: {volumes}"
    );

    let checkpoint = format!("{sprites}/race/checkpoint");
    let checkpoints = (0..4).map(|_| call(Method::POST, &checkpoint, None));
    let mut ids = Vec::new();
    for (status, events) in futures::future::join_all(checkpoints).await {
        assert_eq!(status, 200, "{events}");
        ids.push(events[1]["data"].as_str().unwrap().to_string());
    }
    ids.sort();
    assert_eq!(
        ids,
        [
            "Checkpoint v0 created",
            "Checkpoint v1 created",
            "Checkpoint v2 created",
            "Checkpoint v3 created"
        ]
    );
}

/// By default (on loopback too) the API wants the host's token; the CLI sends it
/// from `$WISP_HOME/token`. `--require-token no` is the explicit opt-out.
#[tokio::test]
async fn a_server_that_requires_its_token() {
    let home = tempfile::tempdir().unwrap();
    let (_daemon, url) = start_server(home.path(), &[]);
    let health = reqwest::get(format!("{url}/v1/health")).await.unwrap();
    assert_eq!(health.status(), 200, "the health check stays open");
    let anonymous = reqwest::get(format!("{url}/v1/sprites")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: serde_json::Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized", "{body}");
    assert!(error_of(&body).contains("$WISP_HOME/token"), "{body}");
    let token = std::fs::read_to_string(home.path().join("token")).unwrap();
    let listed = reqwest::Client::new()
        .get(format!("{url}/v1/sprites"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let (success, stdout, stderr) = sprite_cmd(home.path(), &url, &["list"]);
    assert!(success, "the CLI reads the token file: {stderr}");
    assert!(stdout.starts_with("NAME"), "{stdout}");
    let (success, _, stderr) = sprite_cmd(home.path(), &url, &["list", "--token", "wrong"]);
    assert!(!success);
    assert!(stderr.contains("wants its token"), "{stderr}");
}

#[tokio::test]
async fn a_server_can_be_opened_to_anyone_explicitly() {
    let home = tempfile::tempdir().unwrap();
    let (_daemon, url) = start_server(home.path(), &["--require-token", "no"]);
    let anonymous = reqwest::get(format!("{url}/v1/sprites")).await.unwrap();
    assert_eq!(anonymous.status(), 200);
}
