//! Running sprites through the daemon: exec over the Sprites WebSocket
//! protocol wakes a sprite (a real VM, TCG here), an idle sprite goes to
//! sleep and wakes with its disk, live checkpoints and restores, and a
//! stopping daemon leaves nothing unsaved. One test runs the steps in order,
//! so that one VM runs at a time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::wisp_ok as wisp;
use common::{exec, exec_url, post, status, until_asleep, ws_request};

/// This test's WISP_HOME (see [`common::vm_home`]). Its name is long so the sprites' run
/// folders are deeper than a unix socket's path may be (107 bytes), as they were in a
/// CI checkout.
fn home() -> PathBuf {
    common::vm_home("wisp-sprite-exec-test-home-named-to-push-socket-paths-beyond-sun-path")
}

fn start_server(home: &Path) -> (common::Daemon, String) {
    common::start_server(home, &["--image", "tiny", "--idle-timeout", "4s"])
}

#[tokio::test]
async fn exec_wakes_sprites_idle_ones_sleep_and_nothing_is_lost() {
    let home = home();
    wisp(&home, &["image", "build", "tiny"]);
    let (daemon, url) = start_server(&home);
    let sprites = format!("{url}/v1/sprites");
    assert_eq!(common::create_sprite(&url, "box").await, 201);
    assert_eq!(status(&url, "box").await, "cold");

    // The first exec wakes it: stdout, stderr and the exit code, apart.
    let out = exec(
        &url,
        "box",
        &[
            "sh",
            "-c",
            "echo hello; echo oops >&2; echo data > /root/file; exit 3",
        ],
        None,
    )
    .await;
    assert_eq!(out.stdout, "hello\n", "{out:?}");
    assert_eq!(out.stderr, "oops\n", "{out:?}");
    assert_eq!(out.code, Some(3));
    assert_eq!(status(&url, "box").await, "running");
    let out = exec(&url, "box", &["hostname"], None).await;
    assert_eq!(out.stdout.trim(), "box");

    // A guest that powers itself off is booted again by the next exec, disk intact.
    let out = exec(&url, "box", &["poweroff", "-f"], None).await;
    assert_eq!(out.code, None, "poweroff -f does not return: {out:?}");
    let error = out.error.unwrap_or_default();
    assert!(error.contains("agent connection is closed"), "{error}");
    let out = exec(&url, "box", &["cat", "/root/file"], None).await;
    assert_eq!(out.stdout, "data\n", "{out:?}");

    // The same through `wisp sprite exec`: exit code passed through, stdin with -i.
    let cli = |args: &[&str], input: &[u8]| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_wisp"))
            .args(["sprite", "exec", "--api", &url])
            .args(args)
            .env("WISP_TOKEN", common::token_of(&url))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = cli(
        &[
            "box",
            "--",
            "sh",
            "-c",
            "echo from-cli; echo err >&2; exit 5",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = cli(&["-i", "box", "--", "tr", "a-z", "A-Z"], b"piped\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PIPED\n");
    assert_eq!(out.status.code(), Some(0));
    let out = cli(&["nope", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sprite `nope` does not exist"),
        "{out:?}"
    );

    // stdin, then its end.
    let out = exec(&url, "box", &["tr", "a-z", "A-Z"], Some(b"shout\n")).await;
    assert_eq!((out.stdout.as_str(), out.code), ("SHOUT\n", Some(0)));

    // A terminal: raw bytes, the size asked for, exit as a text frame.
    let ws_url = exec_url(
        &url,
        "box",
        &["sh", "-c", "tty; stty size"],
        &[("tty", "true"), ("rows", "30"), ("cols", "90")],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(&url, &ws_url))
        .await
        .unwrap();
    let (mut screen, mut exit) = (String::new(), None);
    while let Some(message) = ws.next().await {
        match message.unwrap() {
            Message::Binary(b) => screen.push_str(&String::from_utf8_lossy(&b)),
            Message::Text(t) => exit = Some(serde_json::from_str::<serde_json::Value>(&t).unwrap()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(
        screen.contains("/dev/pts/") && screen.contains("30 90"),
        "{screen:?}"
    );
    assert_eq!(
        exit.unwrap(),
        serde_json::json!({ "type": "exit", "exit_code": 0 })
    );

    // A live checkpoint keeps the sprite running and holds what was just written.
    assert_eq!(post(&format!("{sprites}/box/checkpoint")).await, 200);
    assert_eq!(status(&url, "box").await, "running");
    exec(&url, "box", &["sh", "-c", "echo later > /root/file2"], None).await;

    // Idle: asleep after the timeout (4 s here), then woken by an exec with its disk.
    until_asleep(&url, "box").await;
    let out = exec(&url, "box", &["cat", "/root/file", "/root/file2"], None).await;
    assert_eq!(out.stdout, "data\nlater\n", "{out:?}");

    // Restore v0 while running: stopped, restored, and the next exec sees v0.
    assert_eq!(
        post(&format!("{sprites}/box/checkpoints/v0/restore")).await,
        200
    );
    assert_eq!(status(&url, "box").await, "cold");
    let out = exec(
        &url,
        "box",
        &[
            "sh",
            "-c",
            "cat /root/file; test -e /root/file2 && echo present || echo absent",
        ],
        None,
    )
    .await;
    assert_eq!(out.stdout, "data\nabsent\n", "{out:?}");

    // Bad exec requests get HTTP errors before any upgrade.
    let ws = url.replacen("http", "ws", 1);
    for (path, want) in [
        (format!("{ws}/v1/sprites/nope/exec?cmd=true"), 404),
        (format!("{ws}/v1/sprites/box/exec?cmd=true&rows=0"), 400),
        (format!("{ws}/v1/sprites/box/exec?cmd=true&tty=maybe"), 400),
    ] {
        match tokio_tungstenite::connect_async(ws_request(&url, &path)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), want, "{path}")
            }
            other => panic!("{path}: {:?}", other.map(|_| "upgraded")),
        }
    }
    // A plain GET lists the sprite's exec sessions: the ended ones are kept a while.
    let plain = common::client(&url)
        .get(format!("{url}/v1/sprites/box/exec"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200, "a plain GET lists sessions");
    let listed: serde_json::Value = plain.json().await.unwrap();
    let sessions = listed["sessions"].as_array().unwrap();
    let last = "sh -c cat /root/file; test -e /root/file2 && echo present || echo absent";
    assert!(
        sessions
            .iter()
            .any(|s| s["command"] == last && s["is_active"] == false && s["tty"] == false),
        "{listed}"
    );

    // A slow reader loses nothing: the command waits for it (backpressure through the
    // session and the agent's window), and every byte arrives once, in order.
    let slow_url = exec_url(
        &url,
        "box",
        &[
            "sh",
            "-c",
            "head -c 8388608 /dev/urandom > /root/slow.bin; cat /root/slow.bin",
        ],
        &[],
    );
    let (mut slow, _) = tokio_tungstenite::connect_async(ws_request(&url, &slow_url))
        .await
        .unwrap();
    let (mut slowly, mut messages) = (Vec::new(), 0);
    while let Some(message) = slow.next().await {
        match message.unwrap() {
            Message::Binary(b) => match b.split_first() {
                Some((1, d)) => {
                    slowly.extend_from_slice(d);
                    messages += 1;
                    if messages <= 40 {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
                Some((3, code)) => assert_eq!(code, [0]),
                _ => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    let fast = common::exec_bytes(&url, "box", &["cat", "/root/slow.bin"]).await;
    assert_eq!(slowly.len(), 8 << 20);
    assert!(
        slowly == fast,
        "the slow reader got other bytes than a fast one"
    );

    // A command outlives its client for max_run_after_disconnect, then ends.
    for (limit, file) in [("30s", "/root/kept"), ("1s", "/root/cut")] {
        let script = format!("sleep 4; echo done > {file}");
        let ws_url = exec_url(
            &url,
            "box",
            &["sh", "-c", &script],
            &[("max_run_after_disconnect", limit)],
        );
        let (ws, _) = tokio_tungstenite::connect_async(ws_request(&url, &ws_url))
            .await
            .unwrap();
        // The session exists once the client got its session_info.
        let (_, mut read) = ws.split();
        let _ = read.next().await;
        drop(read);
    }
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    let out = exec(
        &url,
        "box",
        &[
            "sh",
            "-c",
            "cat /root/kept; test -e /root/cut && echo cut-ran || echo cut-stopped",
        ],
        None,
    )
    .await;
    assert_eq!(out.stdout, "done\ncut-stopped\n", "{out:?}");

    // The router: a request to the sprite's host reaches port 8080 in it,
    // through a service that starts at every boot, and wakes it.
    let web = common::client(&url)
        .post(&sprites)
        .json(&serde_json::json!({ "name": "web", "url_settings": { "auth": "public" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(web.status(), 201);
    exec(
        &url,
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /root/www/cgi-bin && echo 'hello from web' > /root/www/index.html && \
             printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho \"$HTTP_HOST $HTTP_X_FORWARDED_FOR\"\\n' > /root/www/cgi-bin/who && \
             chmod +x /root/www/cgi-bin/who && \
             printf '#!/bin/sh\necho Content-Type: text/plain\necho\nwc -c\n' > /root/www/cgi-bin/count && \
             chmod +x /root/www/cgi-bin/count && \
             printf '#!/bin/sh\nwhile read -r line; do [ \"${line%%%%\r}\" = \"\" ] && break; done\nprintf \"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: echo\\r\\nConnection: Upgrade\\r\\n\\r\\n\"\nexec cat\n' > /root/up.sh && \
             chmod +x /root/up.sh",
        ],
        None,
    )
    .await;
    // Creating a service answers its log as NDJSON events for `duration`.
    let created = common::client(&url)
        .put(format!("{sprites}/web/services/www?duration=1s"))
        .json(&serde_json::json!({
            "cmd": "busybox",
            "args": ["httpd", "-f", "-p", "8080", "-h", "/root/www"],
            "http_port": 8080
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let events = created.text().await.unwrap();
    let kinds: Vec<String> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].to_string())
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("\"started\""),
        "{events}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("\"complete\""),
        "{events}"
    );
    let service: serde_json::Value = common::client(&url)
        .get(format!("{sprites}/web/services/www"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(service["cmd"], "busybox");
    assert_eq!(service["http_port"], 8080);
    assert!(
        ["starting", "running"].contains(&service["state"]["status"].as_str().unwrap()),
        "{service}"
    );
    let port = url.rsplit(':').next().unwrap().to_string();
    let get = |host: String, token: Option<String>| {
        let url = url.clone();
        async move {
            let mut request = reqwest::Client::new()
                .get(format!("{url}/index.html"))
                .header("host", host);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let web_host = format!("web.localhost:{port}");
    // The program in the sprite sees the host asked for and who asked.
    let who = reqwest::Client::new()
        .get(format!("{url}/cgi-bin/who"))
        .header("host", &web_host)
        .send()
        .await
        .unwrap();
    assert_eq!(who.status(), 200);
    assert_eq!(who.text().await.unwrap(), format!("{web_host} 127.0.0.1\n"));
    assert_eq!(
        get(web_host.clone(), None).await,
        (200, "hello from web\n".to_string())
    );
    until_asleep(&url, "web").await;
    assert_eq!(
        get(web_host.clone(), None).await,
        (200, "hello from web\n".to_string()),
        "a request to a sleeping sprite wakes it and its service"
    );
    assert_eq!(status(&url, "web").await, "running");
    // URL auth `sprite`: the host's token, or 401.
    let changed = common::client(&url)
        .put(format!("{sprites}/web"))
        .json(&serde_json::json!({ "url_settings": { "auth": "sprite" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let (code, body) = get(web_host.clone(), None).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("$WISP_HOME/token"), "{body}");
    let token = std::fs::read_to_string(home.join("token")).unwrap();
    let (code, body) = get(web_host.clone(), Some(token.clone())).await;
    assert_eq!((code, body.as_str()), (200, "hello from web\n"));
    let (code, _) = get(web_host.clone(), Some("wrong".into())).await;
    assert_eq!(code, 401);
    let (code, _) = get(format!("nope.localhost:{port}"), None).await;
    assert_eq!(code, 404);
    // One service owns the URL at a time.
    let other = common::client(&url)
        .put(format!("{sprites}/web/services/alt"))
        .json(&serde_json::json!({ "cmd": "true", "http_port": 3000 }))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 409);
    assert!(other.text().await.unwrap().contains("`www`"));
    // Bad service definitions are named.
    for (body, names) in [
        (
            serde_json::json!({ "cmd": "x", "needs": ["db"] }),
            "needs `db`, which does not exist",
        ),
        (
            serde_json::json!({ "cmd": "x", "http_port": 0 }),
            "http_port",
        ),
        (serde_json::json!({ "cmd": "x", "colour": 1 }), "colour"),
    ] {
        let response = common::client(&url)
            .put(format!("{sprites}/web/services/bad"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let text = response.text().await.unwrap();
        assert!(text.contains(names), "{body}: {text}");
    }
    // The service commands of the CLI (the sprite's token comes from $WISP_HOME).
    let sprite_cmd = |args: &[&str]| {
        let args: Vec<&str> = ["sprite", "--api", url.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        wisp(&home, &args)
    };
    let set = sprite_cmd(&[
        "service-set",
        "web",
        "ticker",
        "--",
        "sh",
        "-c",
        "sleep 600",
    ]);
    assert!(set.contains("service ticker of sprite web"), "{set}");
    let listed = sprite_cmd(&["services", "web"]);
    let names: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["ticker", "www"], "{listed}");
    assert!(listed.contains("busybox httpd -f -p 8080"), "{listed}");
    for service in ["ticker", "www"] {
        sprite_cmd(&["service-rm", "web", service]);
    }
    // With www gone, a service on any port can own the URL (reached through an
    // agent tunnel rather than QEMU's forward of port 8080).
    exec(
        &url,
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /root/alt && echo 'hello from 3000' > /root/alt/index.html",
        ],
        None,
    )
    .await;
    let alt = common::client(&url)
        .put(format!("{sprites}/web/services/alt?duration=0s"))
        .json(&serde_json::json!({
            "cmd": "busybox",
            "args": ["httpd", "-f", "-p", "3000", "-h", "/root/alt"],
            "http_port": 3000
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(alt.status(), 200);
    let (code, body) = get(web_host.clone(), Some(token.clone())).await;
    assert_eq!((code, body.as_str()), (200, "hello from 3000\n"));
    sprite_cmd(&["service-rm", "web", "alt"]);

    // Bodies stream through the router with no cap: 100 MB up to a CGI that counts
    // them, and the daemon's memory stays flat.
    let rss = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    let www = common::client(&url)
        .put(format!("{sprites}/web/services/www?duration=0s"))
        .json(&serde_json::json!({
            "cmd": "busybox",
            "args": ["httpd", "-f", "-p", "8080", "-h", "/root/www"],
            "http_port": 8080
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(www.status(), 200);
    let pid = daemon.0.id();
    let before = rss(pid);
    const UPLOAD: usize = 100 << 20;
    let chunks = futures::stream::iter(
        (0..UPLOAD / (1 << 20))
            .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1 << 20]))),
    );
    let counted = reqwest::Client::new()
        .post(format!("{url}/cgi-bin/count"))
        .header("host", &web_host)
        .bearer_auth(token.trim())
        .header("content-length", UPLOAD.to_string())
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), 200);
    assert_eq!(counted.text().await.unwrap().trim(), UPLOAD.to_string());
    let growth = rss(pid).saturating_sub(before);
    assert!(
        growth < 48 << 20,
        "the daemon grew by {growth} bytes for a 100 MB upload"
    );
    sprite_cmd(&["service-rm", "web", "www"]);

    // An upgrade passes through the router (here to a port reached by an agent tunnel):
    // the 101, then bytes both ways.
    let up = common::client(&url)
        .put(format!("{sprites}/web/services/up?duration=0s"))
        .json(&serde_json::json!({
            "cmd": "busybox",
            "args": ["nc", "-ll", "-p", "3001", "-e", "/root/up.sh"],
            "http_port": 3001
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 200);
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .unwrap();
        let request = format!(
            "GET /socket HTTP/1.1\r\nHost: {web_host}\r\nAuthorization: Bearer {}\r\n\
             Connection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            token.trim()
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(conn.read(&mut byte).await.unwrap(), 1, "{head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        conn.write_all(b"ping through the router\n").await.unwrap();
        let mut echoed = vec![0u8; 24];
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            conn.read_exact(&mut echoed),
        )
        .await
        .expect("the echo came back")
        .unwrap();
        assert_eq!(&echoed, b"ping through the router\n");
    }
    sprite_cmd(&["service-rm", "web", "up"]);
    let gone = common::client(&sprites)
        .get(format!("{sprites}/web/services/www"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let listed: serde_json::Value =
        serde_json::from_str(&sprite_cmd(&["services", "web", "--json"])).unwrap();
    assert_eq!(listed, serde_json::json!([]));

    // `wisp sprite cp` both ways, through files and stdin/stdout (streamed).
    let data: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let src = home.join("cp-src.bin");
    std::fs::write(&src, &data).unwrap();
    sprite_cmd(&["cp", src.to_str().unwrap(), "box:/root/copied/deep.bin"]);
    let back = home.join("cp-back.bin");
    sprite_cmd(&["cp", "box:/root/copied/deep.bin", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data, "cp round trip");
    assert_eq!(sprite_cmd(&["cp", "box:/root/file", "-"]), "data\n");
    let missing = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["sprite", "--api", &url, "cp", "box:/root/nope", "-"])
        .env("WISP_HOME", &home)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/root/nope"),
        "{missing:?}"
    );
    // `use` makes a folder's default sprite; `url` and `sessions list` take it.
    let folder = home.join("project");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    let in_folder = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
            .args(["sprite", "--api", &url])
            .args(args)
            .env("WISP_HOME", &home)
            .current_dir(folder.join("sub"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let used = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["sprite", "--api", &url, "use", "box"])
        .env("WISP_HOME", &home)
        .current_dir(&folder)
        .output()
        .unwrap();
    assert!(used.status.success(), "{used:?}");
    assert_eq!(
        in_folder(&["url"]).trim(),
        format!("http://box.localhost:{port}")
    );
    let sessions: serde_json::Value =
        serde_json::from_str(&in_folder(&["sessions", "list", "--json"])).unwrap();
    assert!(!sessions.as_array().unwrap().is_empty(), "{sessions}");
    // `proxy`: a local port to a port in the sprite.
    exec(
        &url,
        "box",
        &["busybox", "httpd", "-p", "8081", "-h", "/root"],
        None,
    )
    .await;
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut proxy = common::Daemon(
        Command::new(env!("CARGO_BIN_EXE_wisp"))
            .args([
                "sprite",
                "--api",
                &url,
                "proxy",
                "box",
                &format!("8081:{local}"),
            ])
            .env("WISP_HOME", &home)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        None,
    );
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.0.stderr.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert!(ready.contains(&format!("127.0.0.1:{local}")), "{ready}");
    let page = reqwest::get(format!("http://127.0.0.1:{local}/file"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page, "data\n");
    drop(proxy);

    // A daemon told to stop (SIGTERM) puts its running sprites to sleep, warm:
    // what the last command wrote is there after a restart.
    exec(&url, "box", &["sh", "-c", "echo kept > /root/file3"], None).await;
    assert_eq!(status(&url, "box").await, "running");
    let mut daemon = daemon;
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    assert!(
        daemon.0.wait().unwrap().success(),
        "wisp server exits 0 on SIGTERM"
    );
    let (_daemon, url) = start_server(&home);
    assert_eq!(status(&url, "box").await, "warm");
    let out = exec(&url, "box", &["cat", "/root/file3"], None).await;
    assert_eq!(out.stdout, "kept\n", "{out:?}");

    // A daemon killed outright (SIGKILL) while a sprite runs, and its QEMU with it (the
    // test's `Daemon` kills both): the next daemon finds the machine gone and boots the
    // sprite with everything the guest had synced. (A QEMU that outlives its daemon is
    // adopted: see tests/warm_sleep.rs.)
    exec(
        &url,
        "box",
        &["sh", "-c", "echo crash > /root/file4; sync"],
        None,
    )
    .await;
    drop(_daemon);
    let (_daemon, url) = start_server(&home);
    let out = exec(&url, "box", &["cat", "/root/file4"], None).await;
    assert_eq!(out.stdout, "crash\n", "{out:?}");

    // Deleting a running sprite stops its VM first.
    for name in ["box", "web"] {
        let deleted = common::client(&url)
            .delete(format!("{url}/v1/sprites/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 204);
    }
    let volumes = wisp(&home, &["volume", "list"]);
    assert!(
        !volumes.lines().any(|l| l.starts_with("sprite-")),
        "{volumes}"
    );
}
