//! What planned operations do to a sprite's data, with a real daemon and a real VM
//! (TCG here): every write a command or an API call finished before a warm sleep is
//! on the disk after any sequence of warm sleep, cold sleep, fork and daemon
//! restart (the guest's dirty page cache used to live only in the saved memory,
//! and going cold dropped it); a checkpoint of a running sprite holds a state its
//! filesystem could have been in (a file being appended to ended in NUL bytes it
//! never had); a request from inside the guest is answered after each of 50 warm
//! resumes in a row (an answer was lost when a late copy of the host's `hello` ended
//! the session it was to come back on). One test runs the steps in order, so one VM
//! runs at a time.

use std::time::{Duration, Instant};

mod common;

use common::wisp_ok as wisp;
use common::{client, exec, exec_bytes, get_json, post_json, status};

async fn sh(url: &str, name: &str, script: &str) -> String {
    let out = exec(url, name, &["sh", "-c", script], None).await;
    assert_eq!(out.code, Some(0), "`{script}`: {out:?}");
    out.stdout
}

async fn sleep(url: &str, name: &str, mode: &str) {
    let (code, body) = post_json(
        url,
        &format!("/v1/sprites/{name}/sleep"),
        serde_json::json!({ "mode": mode }),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(url, name).await, mode);
}

/// Writes `body` to `path` in sprite `name` through the filesystem API.
async fn api_write(url: &str, name: &str, path: &str, body: &str) {
    let answer = client(url)
        .put(format!("{url}/v1/sprites/{name}/fs/write?path={path}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200, "{:?}", answer.text().await);
}

/// `/root/counter` as a checkpoint holds it must be what a program appending
/// `1\n2\n3\n...` could have left: whole lines counting up from 1, no NUL bytes.
fn assert_counter_consistent(checkpoint: &str, bytes: &[u8]) {
    assert!(
        !bytes.contains(&0),
        "checkpoint {checkpoint}: /root/counter holds {} NUL bytes the live file never had",
        bytes.iter().filter(|b| **b == 0).count()
    );
    let text = String::from_utf8_lossy(bytes);
    let whole = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    for (i, line) in whole.lines().enumerate() {
        assert_eq!(
            line.parse::<u64>().ok(),
            Some(i as u64 + 1),
            "checkpoint {checkpoint}: line {} of /root/counter is `{line}`",
            i + 1
        );
    }
}

#[tokio::test]
async fn planned_operations_lose_nothing_and_capture_consistent_states() {
    let home = common::vm_home("wisp-consistency-test-home");
    wisp(&home, &["image", "build", "tiny"]);
    // No idle sleep: every sleep here is asked for.
    let flags = [
        "--image",
        "tiny",
        "--idle-timeout",
        "0",
        "--cold-after",
        "0",
    ];
    let (daemon, url) = common::start_server(&home, &flags);
    assert_eq!(common::create_sprite(&url, "box").await, 201);

    // Written by a command and by the API, never synced; warm, then cold: there.
    sh(&url, "box", "echo command > /root/x").await;
    api_write(&url, "box", "/root/y", "api").await;
    sleep(&url, "box", "warm").await;
    sleep(&url, "box", "cold").await;
    assert_eq!(sh(&url, "box", "cat /root/x /root/y").await, "command\napi");

    // Warm, then a fork of its state now: the fork has it.
    sh(&url, "box", "echo before-fork > /root/z").await;
    sleep(&url, "box", "warm").await;
    let (code, body) = post_json(
        &url,
        "/v1/sprites",
        serde_json::json!({ "name": "copy", "source": { "sprite": "box" } }),
    )
    .await;
    assert!(code == 200 || code == 201, "{code} {body}");
    assert_eq!(sh(&url, "copy", "cat /root/z").await, "before-fork\n");
    sleep(&url, "copy", "cold").await;

    // A daemon stopped (every running sprite sleeps warm), another started, then
    // cold: there.
    sh(&url, "box", "echo before-restart > /root/w").await;
    let mut daemon = daemon;
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    daemon.0.wait().unwrap();
    drop(daemon);
    let (daemon, url) = common::start_server(&home, &flags);
    sleep(&url, "box", "cold").await;
    assert_eq!(sh(&url, "box", "cat /root/w").await, "before-restart\n");

    // Checkpoints of a sprite appending to a file as fast as it can: each holds
    // whole lines.
    sh(
        &url,
        "box",
        "rm -f /root/counter; setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i >> /root/counter; done' \
         </dev/null >/dev/null 2>&1 & sleep 1",
    )
    .await;
    let mut taken = Vec::new();
    for _ in 0..3 {
        let made = client(&url)
            .post(format!("{url}/v1/sprites/box/checkpoint"))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status().as_u16(), 200);
        let list = get_json(&url, "/v1/sprites/box/checkpoints").await;
        taken.push(list[0]["id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    for id in &taken {
        let path = format!("/.sprite/checkpoints/{id}/root/counter");
        sh(
            &url,
            "box",
            &format!("for i in $(seq 300); do test -e {path} && exit 0; sleep 0.1; done; exit 1"),
        )
        .await;
        let bytes = exec_bytes(&url, "box", &["cat", &path]).await;
        assert!(bytes.len() > 100, "checkpoint {id}: {} bytes", bytes.len());
        assert_counter_consistent(id, &bytes);
    }
    sh(&url, "box", "pkill -f 'echo \\$i' ; true").await;
    sleep(&url, "box", "cold").await;

    // A request from inside, right after each of 50 warm resumes: 50 answers.
    sh(&url, "box", "true").await;
    for round in 0..50 {
        sleep(&url, "box", "warm").await;
        let started = Instant::now();
        let out = exec(&url, "box", &["sprite-env", "checkpoints", "list"], None).await;
        assert!(
            out.code == Some(0) && out.stdout.contains(&format!("\"id\":\"{}\"", taken[2])),
            "resume {round}: the in-sprite API after {:?}: {out:?}",
            started.elapsed()
        );
    }
    drop(daemon);
}
