//! Faults users hit on their first day or reported against comparable systems,
//! each turned into an assertion of its right value against a real daemon and a
//! real VM (TCG here): the accelerator probe runs at server start, not on a
//! request's path; the API wants the host token by default; a wake outlives the
//! client that started it; the guest's clocks keep the host's time; a command that
//! stops reading stdin still exits at once and lets its sprite sleep. One test
//! runs the VM steps in order, so that one VM runs at a time.

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
