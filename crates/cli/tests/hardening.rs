//! Faults users hit on their first day or reported against comparable systems,
//! each turned into an assertion of its right value against a real daemon and a
//! real VM (TCG here): the accelerator probe runs at server start, not on a
//! request's path; the API wants the host token by default; a wake outlives the
//! client that started it; the guest's clocks keep the host's time; a command that
//! stops reading stdin still exits at once and lets its sprite sleep; a sprite's
//! URL and `wisp sprite proxy` reach a server bound to any of the guest's
//! addresses; six first wakes at once all succeed, and a wake past the boot queue
//! is a 503 with `Retry-After`; a full disk is 507 `ENOSPC` and a file on a path's
//! way 400 `ENOTDIR` for every filesystem call; the CLI's tables line up; a
//! deleted sprite leaves nothing on the host. Each test runs its VM steps in order
//! and the tests take turns, so that their VMs do not share the cores.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{exec, exec_url, status, until_asleep, wisp_ok as wisp, ws_request};

fn home() -> PathBuf {
    common::vm_home("wisp-hardening-test-home")
}

/// The tests of this file take turns: each boots VMs, and one measures the
/// guest's clock against the host's.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Seconds since the Unix epoch on the host.
fn host_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `head -c SIZE /dev/zero | wisp sprite exec -i NAME -- ARGV...`: the bytes are
/// written by a thread that stops when the pipe breaks (the command exited).
fn piped_exec(url: &str, size: usize, name: &str, argv: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["sprite", "exec", "--api", url, "-i", name, "--"])
        .args(argv)
        .env("WISP_TOKEN", common::token_of(url))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            if stdin.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n;
        }
    });
    // A hang is the fault: give up (and fail) long after a right answer would come.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`{argv:?}` with {size} bytes of stdin hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

/// Reads the guest's wall clock twice, `seconds` apart (`sleep`), and returns for
/// each reading the guest's time and the host's when its line arrived. (busybox
/// `date` has no `%N`; `adjtimex` with no arguments reads the clock to the
/// microsecond and changes nothing.)
async fn timed_dates(url: &str, name: &str, seconds: u32) -> [(f64, f64); 2] {
    let now = "busybox adjtimex | busybox awk '/time.tv_sec/ { s = $2 } /time.tv_usec/ { u = $2 } END { printf \"%d.%06d\\n\", s, u }'";
    let script = format!("{now}; sleep {seconds}; {now}");
    let ws_url = exec_url(url, name, &["sh", "-c", &script], &[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(url, &ws_url))
        .await
        .unwrap();
    let mut stamps = Vec::new();
    while let Some(message) = ws.next().await {
        match message.unwrap() {
            Message::Binary(b) if b.first() == Some(&1) => {
                let arrived = host_now();
                for line in String::from_utf8_lossy(&b[1..]).lines() {
                    stamps.push((line.trim().parse::<f64>().unwrap(), arrived));
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(stamps.len(), 2, "{stamps:?}");
    [stamps[0], stamps[1]]
}

#[tokio::test]
async fn first_day_and_field_faults_have_their_right_values() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let home = home();
    wisp(&home, &["image", "build", "tiny"]);
    // A new host: no accelerator verdict yet.
    let _ = std::fs::remove_file(home.join("cache/accel.json"));
    // Default flags but the image and a short idle timeout: the token is required.
    let (_daemon, url) = common::start_server(&home, &["--image", "tiny", "--idle-timeout", "4s"]);
    let sprites = format!("{url}/v1/sprites");

    // The token, by default, on loopback too.
    let anonymous = reqwest::get(&sprites).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = reqwest::Client::new()
        .get(&sprites)
        .bearer_auth("0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(common::create_sprite(&url, "box").await, 201);

    // The accelerator is chosen at server start, with no request asking.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !home.join("cache/accel.json").is_file() {
        assert!(
            Instant::now() < deadline,
            "no accelerator verdict 60 s after the server started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&url, "box").await, "cold", "nothing woke it");

    // The upgrade is answered before the sprite is awake, and a client that goes
    // away at once does not cancel the wake.
    let ws_url = exec_url(&url, "box", &["true"], &[]);
    let (ws, response) = tokio_tungstenite::connect_async(ws_request(&url, &ws_url))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 101);
    assert_eq!(
        status(&url, "box").await,
        "cold",
        "the upgrade came before the wake"
    );
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(120);
    while status(&url, "box").await != "running" {
        assert!(
            Instant::now() < deadline,
            "the wake was abandoned with its client"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The guest's wall clock is the host's after boot, and its clocks run at the
    // host's rate: `sleep 20` takes 20 s of host time (+-1 %) and `date` advances
    // as the host's does.
    let [(guest0, host0), (guest1, host1)] = timed_dates(&url, "box", 20).await;
    assert!(
        (guest0 - host0).abs() < 0.5,
        "guest clock {guest0:.3} vs host {host0:.3} after boot"
    );
    let host_elapsed = host1 - host0;
    assert!(
        (host_elapsed - 20.0).abs() < 0.2,
        "`sleep 20` in the guest took {host_elapsed:.3} s of host time"
    );
    let rate = (guest1 - guest0) / host_elapsed;
    assert!(
        (rate - 1.0).abs() < 0.01,
        "the guest's date advanced {:.3} s in {host_elapsed:.3} s of host time",
        guest1 - guest0
    );

    // A command that stops reading stdin: its output and exit come at once, for
    // any amount of stdin behind it, through the CLI ...
    for (size, argv, want) in [
        (20 << 20, &["head", "-c", "1"][..], &[0u8][..]),
        (8 << 20, &["head", "-c", "1"][..], &[0u8][..]),
        (6 << 20, &["true"][..], &[][..]),
        (20 << 20, &["true"][..], &[][..]),
    ] {
        for _ in 0..2 {
            let out = piped_exec(&url, size, "box", argv);
            assert_eq!(
                (out.status.code(), out.stdout.as_slice()),
                (Some(0), want),
                "{argv:?} with {size} bytes of stdin: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // ... and over the WebSocket with a client that sends stdin without reading.
    let ws_url = exec_url(&url, "box", &["head", "-c", "1"], &[("stdin", "true")]);
    let (ws, _) = tokio_tungstenite::connect_async(ws_request(&url, &ws_url))
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        let mut frame = vec![0u8; 64 * 1024 + 1];
        frame[0] = 0; // stdin
        for _ in 0..320 {
            if tx
                .send(Message::Binary(frame.clone().into()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let (mut stdout, mut code) = (Vec::new(), None);
    while let Some(message) = tokio::time::timeout(Duration::from_secs(120), rx.next())
        .await
        .expect("the exit came")
    {
        match message.unwrap() {
            Message::Binary(b) => match b.split_first() {
                Some((1, d)) => stdout.extend_from_slice(d),
                Some((3, d)) => code = Some(d[0]),
                _ => {}
            },
            Message::Close(frame) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                break;
            }
            _ => {}
        }
    }
    assert_eq!((stdout.as_slice(), code), (&[0u8][..], Some(0)));
    sender.abort();
    // No session is left behind: the sprite goes to sleep.
    until_asleep(&url, "box").await;
    // Cold, so that the next wake is a boot (a warm one resumes without a new console).
    let cold = common::client(&url)
        .post(format!("{url}/v1/sprites/box/sleep"))
        .json(&serde_json::json!({ "mode": "cold" }))
        .send()
        .await
        .unwrap();
    assert_eq!(cold.status().as_u16(), 200);

    // Two requests for the sleeping sprite join one wake: both answered, one boot
    // (each boot writes its own console log in the sprite's run folder).
    let sprite = common::sprite_json(&url, "box").await;
    let run = home
        .join("run")
        .join(format!("sprite-{}", sprite["id"].as_str().unwrap()));
    let boots = || {
        std::fs::read_dir(&run)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("console-")
            })
            .count()
    };
    let before = boots();
    let (a, b) = tokio::join!(
        exec(&url, "box", &["echo", "a"], None),
        exec(&url, "box", &["echo", "b"], None)
    );
    assert_eq!((a.stdout.as_str(), a.code), ("a\n", Some(0)), "{a:?}");
    assert_eq!((b.stdout.as_str(), b.code), ("b\n", Some(0)), "{b:?}");
    assert_eq!(boots(), before + 1, "one boot served both requests");
}

/// `wisp sprite --api URL ARGS...` against `home`: its stdout (success asserted).
fn sprite_cli(home: &Path, url: &str, args: &[&str]) -> String {
    let all: Vec<&str> = ["sprite", "--api", url]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    wisp(home, &all)
}

/// GETs `target` until it answers 200 or 60 s passed (a server just started may
/// not listen yet): the last status and body. `host` is sent as the Host header.
async fn get_until_ok(target: &str, host: Option<&str>, token: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut request = reqwest::Client::new().get(target).bearer_auth(token);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let (status, body) = match request.send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        };
        if status == 200 || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `path` of sprite `name`'s URL, through the daemon at `url` (see [`get_until_ok`]).
async fn get_sprite_url(url: &str, name: &str, path: &str) -> (u16, String) {
    let port = url.rsplit(':').next().unwrap();
    let host = format!("{name}.localhost:{port}");
    get_until_ok(&format!("{url}{path}"), Some(&host), &common::token_of(url)).await
}

/// Serves `/root/www` of sprite `web` as service `service`: busybox httpd bound to
/// `address:port` only, owning the sprite's URL when `owns_url`.
async fn httpd(url: &str, service: &str, address: &str, port: u16, owns_url: bool) {
    let bind = format!("{address}:{port}");
    let mut body = serde_json::json!({
        "cmd": "busybox",
        "args": ["httpd", "-f", "-p", bind, "-h", "/root/www"],
    });
    if owns_url {
        body["http_port"] = port.into();
    }
    let response = common::client(url)
        .put(format!(
            "{url}/v1/sprites/web/services/{service}?duration=0s"
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(status, 200, "{service}: {}", response.text().await.unwrap());
    response.text().await.unwrap();
}

/// Asserts that sprite `web`'s URL serves `/root/www`.
async fn url_serves_www(url: &str, what: &str) {
    assert_eq!(
        get_sprite_url(url, "web", "/index.html").await,
        (200, "hello\n".into()),
        "{what}"
    );
}

async fn remove_service(url: &str, sprite: &str, service: &str) {
    let response = common::client(url)
        .delete(format!("{url}/v1/sprites/{sprite}/services/{service}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204, "removing {service}");
}

/// A filesystem call on sprite `sprite`: `method` on `/fs/{call}` with `body`
/// (bytes for a write, else JSON): the status and the JSON answer.
async fn fs_call(
    url: &str,
    sprite: &str,
    method: reqwest::Method,
    call: &str,
    body: Option<serde_json::Value>,
    bytes: Option<Vec<u8>>,
) -> (u16, serde_json::Value) {
    let mut request =
        common::client(url).request(method, format!("{url}/v1/sprites/{sprite}/fs/{call}"));
    if let Some(json) = body {
        request = request.json(&json);
    }
    if let Some(bytes) = bytes {
        request = request.body(bytes);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// A server bound to the guest's loopback or to its own address answers through
/// the sprite's URL and through `wisp sprite proxy`, on port 8080 and any other;
/// a full disk is 507 `ENOSPC` and a file where a folder should be 400 `ENOTDIR`,
/// for every filesystem call; the CLI's tables line up; a deleted sprite leaves
/// nothing in `$WISP_HOME`.
#[tokio::test]
async fn urls_files_tables_and_deletes_have_their_right_values() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let home = common::vm_home("wisp-hardening-fields-test-home");
    wisp(&home, &["image", "build", "tiny"]);
    let (_daemon, url) = common::start_server(&home, &["--image", "tiny", "--idle-timeout", "10m"]);
    assert_eq!(common::create_sprite(&url, "web").await, 201);
    let out = exec(
        &url,
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /root/www && echo hello > /root/www/index.html && \
             ip -4 -o addr | awk '$2 != \"lo\" { sub(/\\/.*/, \"\", $4); print $4; exit }'",
        ],
        None,
    )
    .await;
    let guest_ip = out.stdout.trim().to_string();
    assert!(guest_ip.parse::<std::net::Ipv4Addr>().is_ok(), "{out:?}");

    // The URL's port 8080, served on the guest's loopback only (daytonaio/daytona#1973).
    httpd(&url, "lo", "127.0.0.1", 8080, true).await;
    url_serves_www(&url, "8080 on the guest's loopback").await;
    // Another port, on the guest's own address only, through `wisp sprite proxy`;
    // and the loopback server through it too.
    httpd(&url, "own", &guest_ip, 3000, false).await;
    let token = common::token_of(&url);
    for port in [3000, 8080] {
        let local = wisp_testkit::free_port();
        let ports = format!("{port}:{local}");
        let proxy = Command::new(env!("CARGO_BIN_EXE_wisp"))
            .args(["sprite", "proxy", "--api", &url, "web", &ports])
            .env("WISP_TOKEN", &token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _proxy = common::Daemon(proxy, None);
        let target = format!("http://127.0.0.1:{local}/index.html");
        assert_eq!(
            get_until_ok(&target, None, &token).await,
            (200, "hello\n".into()),
            "port {port} through `wisp sprite proxy`"
        );
    }
    // The URL on a server bound to the guest's own address, on 8080 and on another port.
    remove_service(&url, "web", "lo").await;
    httpd(&url, "own8080", &guest_ip, 8080, true).await;
    url_serves_www(&url, "8080 on the guest's address").await;
    remove_service(&url, "web", "own8080").await;
    httpd(&url, "own", &guest_ip, 3000, true).await;
    url_serves_www(&url, "3000 on the guest's address").await;

    // A full disk (anthropics/claude-code#59856): a 1 MiB tmpfs of 64 inodes, its
    // blocks filled. A write whose data finds no room is 507 ENOSPC, not 500.
    use reqwest::Method;
    exec(
        &url,
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /root/full && mount -t tmpfs -o size=1m,nr_inodes=64 tmpfs /root/full && \
             dd if=/dev/zero of=/root/full/fill bs=4k 2>/dev/null; echo plain > /root/plain",
        ],
        None,
    )
    .await;
    let full = |(status, body): (u16, serde_json::Value), what: &str| {
        assert_eq!(
            (status, body["code"].as_str()),
            (507, Some("ENOSPC")),
            "{what}: {body}"
        );
    };
    full(
        fs_call(
            &url,
            "web",
            Method::PUT,
            "write?path=/root/full/new",
            None,
            Some(vec![7u8; 64 << 10]),
        )
        .await,
        "write",
    );
    // Its inodes used up too: making a folder, a file, a copy find no room either.
    exec(
        &url,
        "web",
        &[
            "sh",
            "-c",
            "i=0; while touch /root/full/f$i 2>/dev/null; do i=$((i+1)); done",
        ],
        None,
    )
    .await;
    for (call, what) in [
        ("write?path=/root/full/dir/.keep", "mkdir"),
        ("write?path=/root/full/empty", "create"),
    ] {
        let answer = fs_call(&url, "web", Method::PUT, call, None, Some(Vec::new())).await;
        full(answer, what);
    }
    let copy = serde_json::json!({ "source": "/root/www/index.html", "dest": "/root/full/copy" });
    full(
        fs_call(&url, "web", Method::POST, "copy", Some(copy), None).await,
        "copy",
    );

    // A file on a path's way (/root/plain is a file): 400 ENOTDIR for every call,
    // not 409 EEXIST where the call makes folders on its way.
    let not_a_folder = |(status, body): (u16, serde_json::Value), what: &str| {
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("ENOTDIR")),
            "{what}: {body}"
        );
    };
    for (query, what) in [
        ("path=/root/plain/child", "write making parents"),
        ("path=/root/plain/a/b", "write making grandparents"),
        (
            "path=/root/plain/child&mkdirParents=false",
            "write without parents",
        ),
    ] {
        not_a_folder(
            fs_call(
                &url,
                "web",
                Method::PUT,
                &format!("write?{query}"),
                None,
                Some(b"x".to_vec()),
            )
            .await,
            what,
        );
    }
    for (method, call, what) in [
        (Method::GET, "read?path=/root/plain/x", "read"),
        (Method::GET, "list?path=/root/plain/x", "list"),
        (Method::DELETE, "delete?path=/root/plain/x", "delete"),
    ] {
        not_a_folder(fs_call(&url, "web", method, call, None, None).await, what);
    }
    for (call, body) in [
        (
            "rename",
            serde_json::json!({ "source": "/root/www/index.html", "dest": "/root/plain/x" }),
        ),
        (
            "copy",
            serde_json::json!({ "source": "/root/www/index.html", "dest": "/root/plain/x" }),
        ),
        (
            "copy",
            serde_json::json!({ "source": "/root/www", "dest": "/root/plain", "recursive": true }),
        ),
        (
            "chmod",
            serde_json::json!({ "path": "/root/plain/x", "mode": "0644" }),
        ),
    ] {
        let what = format!("{call} {body}");
        not_a_folder(
            fs_call(&url, "web", Method::POST, call, Some(body), None).await,
            &what,
        );
    }

    // The CLI's tables: each heading over its cells, however long a cell.
    for (task, ttl) in [
        ("a-long-build-task-named-past-its-column", "1h"),
        ("t", "10m"),
    ] {
        sprite_cli(
            &home,
            &url,
            &[
                "tasks",
                "set",
                "web",
                task,
                "--ttl",
                ttl,
                "--description",
                "kept awake",
            ],
        );
    }
    let tasks = sprite_cli(&home, &url, &["tasks", "list", "web"]);
    assert_eq!(tasks.lines().count(), 3, "{tasks}");
    common::assert_aligned(
        &tasks,
        &["TASK", "TTL", "EXPIRES IN", "DESCRIPTION"],
        &["TTL", "EXPIRES IN"],
    );
    let services = sprite_cli(&home, &url, &["services", "web"]);
    common::assert_aligned(
        &services,
        &["NAME", "STATUS", "PID", "RESTARTS", "COMMAND"],
        &["PID", "RESTARTS"],
    );
    let sessions = sprite_cli(&home, &url, &["sessions", "list", "web"]);
    common::assert_aligned(
        &sessions,
        &["ID", "STATE", "TTY", "CREATED", "COMMAND"],
        &[],
    );

    // A deleted sprite leaves nothing of it on the host: its run folder (console
    // logs, records) and saved state are gone with it.
    let volume = format!(
        "sprite-{}",
        common::sprite_json(&url, "web").await["id"]
            .as_str()
            .unwrap()
    );
    let run = home.join("run").join(&volume);
    assert!(run.is_dir(), "the running sprite has its run folder");
    sprite_cli(&home, &url, &["delete", "web"]);
    assert!(!run.exists(), "{} is left after the delete", run.display());
    for folder in ["run", "warm"] {
        let left: Vec<_> = std::fs::read_dir(home.join(folder))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&volume))
            .collect();
        assert!(left.is_empty(), "{folder}/ still holds {left:?}");
    }
}

/// Six first wakes at once, on however few cores (cloudflare/sandbox-sdk#794:
/// 5 of 6 failed, their boots starved past the boot watch's limit): every one
/// succeeds. A wake past the boot queue's limit is refused at once with a 503 and
/// `Retry-After`, and the wake it queued behind is not disturbed.
#[tokio::test]
async fn six_first_wakes_at_once_succeed_and_a_full_boot_queue_is_a_503() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let home = common::vm_home("wisp-hardening-wakes-test-home");
    wisp(&home, &["image", "build", "tiny"]);
    let names: Vec<String> = (1..=6).map(|i| format!("c{i}")).collect();
    {
        let (_daemon, url) =
            common::start_server(&home, &["--image", "tiny", "--idle-timeout", "10m"]);
        for name in &names {
            assert_eq!(common::create_sprite(&url, name).await, 201);
        }
        // A daemon that has booted a few already, as one in use has: its boot watch
        // knows how long a boot alone takes (and allows a few times that).
        for name in &names[..3] {
            assert_eq!(exec(&url, name, &["true"], None).await.code, Some(0));
            let (code, body) = common::post_json(
                &url,
                &format!("/v1/sprites/{name}/sleep"),
                serde_json::json!({ "mode": "cold" }),
            )
            .await;
            assert_eq!(code, 200, "{body}");
        }
        let mut children: Vec<_> = names
            .iter()
            .map(|name| {
                Command::new(env!("CARGO_BIN_EXE_wisp"))
                    .args(["sprite", "exec", "--api", &url, name, "--", "hostname"])
                    .env("WISP_TOKEN", common::token_of(&url))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(900);
        while !children.iter_mut().all(|c| c.try_wait().unwrap().is_some()) {
            assert!(
                Instant::now() < deadline,
                "six wakes did not end in 15 minutes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (name, child) in names.iter().zip(children) {
            let out = child.wait_with_output().unwrap();
            assert_eq!(
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned()
                ),
                (Some(0), format!("{name}\n")),
                "`wisp sprite exec {name} -- hostname`: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // One boot at a time, none may wait: a wake behind a boot is refused.
    let (_daemon, url) = common::start_server(
        &home,
        &[
            "--image",
            "tiny",
            "--idle-timeout",
            "10m",
            "--boots-at-once",
            "1",
            "--max-queued-wakes",
            "0",
        ],
    );
    let wake = |name: &str| {
        let (url, name) = (url.clone(), name.to_string());
        async move {
            common::client(&url)
                .post(format!("{url}/v1/sprites/{name}/wake"))
                .send()
                .await
                .unwrap()
        }
    };
    let first = tokio::spawn(wake("c1"));
    // Its boot has the one slot well before it ends (a boot takes seconds).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = wake("c2").await;
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sprite `c2`") && message.contains("--max-queued-wakes"),
        "{body}"
    );
    // An exec's WebSocket is refused before its upgrade, with the same answer.
    let ws_url = exec_url(&url, "c3", &["true"], &[]);
    match tokio_tungstenite::connect_async(ws_request(&url, &ws_url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!(
            "an exec past the boot queue: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    // A request for the sprite being woken joins its wake: not refused.
    let joined = exec(&url, "c1", &["true"], None).await;
    assert_eq!(joined.code, Some(0), "{joined:?}");
    assert_eq!(
        first.await.unwrap().status().as_u16(),
        200,
        "the queued-behind wake"
    );
    assert_eq!(status(&url, "c2").await, "cold", "nothing woke it");
    assert_eq!(
        wake("c2").await.status().as_u16(),
        200,
        "with the slot free again"
    );
}

/// `wisp doctor` and every boot refuse a dynamically linked agent and say how to
/// get the right one; the agent built into wisp is static.
#[test]
fn a_dynamic_agent_is_refused_with_how_to_build_the_right_one() {
    let home = tempfile::tempdir().unwrap();
    let doctor = |agent: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wisp"));
        cmd.args(["doctor", "--json"]).env("WISP_HOME", home.path());
        match agent {
            Some(a) => cmd.env("WISP_AGENT", a),
            None => cmd.env_remove("WISP_AGENT"),
        };
        let out = cmd.output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}: {out:?}"));
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "agent")
            .cloned()
            .unwrap()
    };
    let builtin = doctor(None);
    assert_eq!(builtin["ok"], true, "{builtin}");
    assert!(
        builtin["detail"]
            .as_str()
            .unwrap()
            .contains("built into wisp"),
        "{builtin}"
    );
    let dynamic = doctor(Some(Path::new("/bin/sh")));
    assert_eq!(dynamic["ok"], false, "{dynamic}");
    let detail = dynamic["detail"].as_str().unwrap();
    assert!(
        detail.contains("dynamically linked") && detail.contains("crt-static"),
        "{detail}"
    );
}

/// The install script's verification step passes on a machine it set up, and
/// fails naming what is missing where something is.
#[test]
fn install_script_verifies_every_package_and_command() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-deps.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--verify", "--test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A PATH holding only what the script itself runs: every command is missing,
    // and the first one is named.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["bash", "dpkg-query", "grep"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        std::os::unix::fs::symlink(path, bin.path().join(tool)).unwrap();
    }
    let out = Command::new(bin.path().join("bash"))
        .arg(&script)
        .args(["--verify", "--test"])
        .env("PATH", bin.path())
        .env("HOME", bin.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("missing command: gcc (from Debian package gcc)"),
        "{stderr}"
    );
}
