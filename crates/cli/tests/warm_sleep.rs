//! Warm sleep with real VMs (TCG here): a sprite that idles is saved (QEMU's
//! migration stream) and resumed with its processes, memory and clock right; cold
//! sleep restarts it; a saved state is never resumed over a changed disk; keep-awake
//! tasks, from outside and from inside (`sprite-env`); sprites survive a daemon killed
//! with SIGKILL; a state kept in the bucket resumes on a second host. One test runs
//! the steps in order, so one VM runs at a time.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::wisp_ok as wisp;
use common::{client, exec, post_json, sprite_json, status};

/// A loop whose command line names it (`ps` finds it by `warm-loop`), counting in
/// `/tmp/loop` five times a second, started in a session of its own so it outlives
/// the exec that started it.
/// (Files are written whole, through a rename, so a probe never reads one half written.)
/// The exec returns once the loop has counted once.
const START_LOOP: &str = "rm -f /tmp/loop.pid /tmp/loop; \
     setsid sh -c 'echo $$ > /tmp/l.tmp; mv /tmp/l.tmp /tmp/loop.pid; i=0; \
     while :; do : warm-loop; i=$((i+1)); echo $i > /tmp/c.tmp; mv /tmp/c.tmp /tmp/loop; \
     sleep 0.2; done' </dev/null >/dev/null 2>&1 & \
     while [ ! -e /tmp/loop ]; do sleep 0.05; done; echo started";

/// What the guest says about itself: `LOOP_PID COUNT SERVICE_PID BOOT_ID EPOCH LOOPS`.
const PROBE: &str = "echo $(cat /tmp/loop.pid 2>/dev/null || echo none) \
     $(cat /tmp/loop 2>/dev/null || echo 0) $(cat /tmp/svc.pid 2>/dev/null || echo none) \
     $(cat /proc/sys/kernel/random/boot_id) $(date +%s) $(ps | grep -c '[w]arm-loop')";

#[derive(Debug, PartialEq)]
struct Probe {
    loop_pid: String,
    count: u64,
    service_pid: String,
    boot_id: String,
    epoch: u64,
    loops: u64,
}

async fn probe(url: &str, name: &str) -> Probe {
    let out = exec(url, name, &["sh", "-c", PROBE], None).await;
    let w: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(w.len(), 6, "probe: {out:?}");
    Probe {
        loop_pid: w[0].into(),
        count: w[1].parse().unwrap(),
        service_pid: w[2].into(),
        boot_id: w[3].into(),
        epoch: w[4].parse().unwrap(),
        loops: w[5].parse().unwrap(),
    }
}

fn host_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits (at most 120 s) until sprite `name`'s status is `want`.
async fn until_status(url: &str, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = status(url, name).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sprite `{name}` is `{now}`, not `{want}`, after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[tokio::test]
async fn warm_sleep_keeps_processes_and_cold_sleep_does_not() {
    let home = common::vm_home("wisp-warm-test-home");
    wisp(&home, &["image", "build", "tiny"]);
    let flags = [
        "--image",
        "tiny",
        "--idle-timeout",
        "3s",
        "--cold-after",
        "0",
    ];
    let (daemon, url) = common::start_server(&home, &flags);
    assert_eq!(common::create_sprite(&url, "box").await, 201);
    wisp(
        &home,
        &[
            "sprite",
            "--api",
            &url,
            "service-set",
            "box",
            "svc",
            "--",
            "sh",
            "-c",
            "echo $$ > /tmp/s.tmp; mv /tmp/s.tmp /tmp/svc.pid; while :; do sleep 1; done",
        ],
    );
    let out = exec(&url, "box", &["sh", "-c", START_LOOP], None).await;
    assert_eq!(out.stdout, "started\n", "{out:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = probe(&url, "box").await;
    assert_eq!(before.loops, 1, "{before:?}");
    assert_ne!(before.service_pid, "none", "{before:?}");

    // Idle: warm after the timeout, its memory on this host.
    until_status(&url, "box", "warm").await;
    let sprite = sprite_json(&url, "box").await;
    assert_eq!(sprite["sleep"]["memory"], "local", "{sprite}");
    // A minute asleep, then an exec resumes it: the same processes, the loop carrying
    // on from its count, the same boot, and the guest's clock stepped to the host's.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(status(&url, "box").await, "warm");
    let after = probe(&url, "box").await;
    let host = host_epoch();
    assert_eq!(after.loop_pid, before.loop_pid, "{before:?} {after:?}");
    assert_eq!(after.service_pid, before.service_pid);
    assert_eq!(after.boot_id, before.boot_id, "a warm wake is no boot");
    assert!(
        after.count >= before.count && after.count < before.count + 100,
        "the loop carried on from its count: {before:?} {after:?}"
    );
    assert!(
        after.epoch.abs_diff(host) <= 2,
        "guest clock {} vs host {host}",
        after.epoch
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        probe(&url, "box").await.count > after.count,
        "still counting"
    );

    // Forced sleeps through the API and the CLI.
    let (code, body) = post_json(&url, "/v1/sprites/box/sleep", serde_json::json!({})).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("warm")),
        "{body}"
    );
    let out = wisp(&home, &["sprite", "--api", &url, "wake", "box"]);
    assert_eq!(out.trim(), "sprite box: running");
    assert_eq!(probe(&url, "box").await.loop_pid, before.loop_pid);
    let (code, body) = post_json(
        &url,
        "/v1/sprites/box/sleep",
        serde_json::json!({ "mode": "tepid" }),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("`tepid`"));

    // Cold: the loop is gone, the service started again by a new boot.
    let out = wisp(&home, &["sprite", "--api", &url, "sleep", "box", "--cold"]);
    assert_eq!(out.trim(), "sprite box: cold");
    let cold = probe(&url, "box").await;
    assert_eq!(cold.loops, 0, "{cold:?}");
    assert_ne!(cold.boot_id, before.boot_id);
    assert_ne!(cold.service_pid, "none", "services start at boot: {cold:?}");

    // A saved state is not resumed over a disk that changed after it: a restore by
    // `wisp volume` while the sprite is warm (the daemon does not see it happen).
    let sprite = sprite_json(&url, "box").await;
    let volume = format!("sprite-{}", sprite["id"].as_str().unwrap());
    exec(
        &url,
        "box",
        &["sh", "-c", "echo one > /root/one; sync"],
        None,
    )
    .await;
    let (code, _) = post_json(&url, "/v1/sprites/box/checkpoint", serde_json::json!({})).await;
    assert_eq!(code, 200);
    exec(
        &url,
        "box",
        &[
            "sh",
            "-c",
            &format!("echo two > /root/two; sync; {START_LOOP}"),
        ],
        None,
    )
    .await;
    let (code, _) = post_json(&url, "/v1/sprites/box/sleep", serde_json::json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(status(&url, "box").await, "warm");
    wisp(&home, &["volume", "restore", &volume, "v0"]);
    let out = exec(
        &url,
        "box",
        &[
            "sh",
            "-c",
            "cat /root/one; test -e /root/two && echo two || echo no-two; ps | grep -c '[w]arm-loop'",
        ],
        None,
    )
    .await;
    assert_eq!(
        out.stdout, "one\nno-two\n0\n",
        "booted cold over the restored disk: {out:?}"
    );
    // A restore through the API drops the state at once.
    exec(&url, "box", &["sh", "-c", START_LOOP], None).await;
    post_json(&url, "/v1/sprites/box/sleep", serde_json::json!({})).await;
    assert_eq!(status(&url, "box").await, "warm");
    let (code, _) = post_json(
        &url,
        "/v1/sprites/box/checkpoints/v0/restore",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(status(&url, "box").await, "cold");
    assert_eq!(probe(&url, "box").await.loops, 0);

    // A checkpoint mounted inside reads the same after a warm sleep (the new disk
    // slot shows the same checkpoint, and the wake mounts it afresh).
    let read_v0 = "for i in $(seq 100); do test -e /.sprite/checkpoints/v0/root/one && break; sleep 0.1; done; cat /.sprite/checkpoints/v0/root/one /proc/sys/kernel/random/boot_id";
    let before = exec(&url, "box", &["sh", "-c", read_v0], None).await;
    assert!(before.stdout.starts_with("one\n"), "{before:?}");
    post_json(&url, "/v1/sprites/box/sleep", serde_json::json!({})).await;
    assert_eq!(status(&url, "box").await, "warm");
    let after = exec(&url, "box", &["sh", "-c", read_v0], None).await;
    assert_eq!(after.stdout, before.stdout, "the same boot, the same file");
    // A saved state that cannot be resumed (damaged here) boots instead, and the
    // boot mounts the checkpoints afresh.
    post_json(&url, "/v1/sprites/box/sleep", serde_json::json!({})).await;
    assert_eq!(status(&url, "box").await, "warm");
    let state = home.join("warm").join(format!("{volume}.state"));
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::write(&state, vec![0u8; len as usize]).unwrap();
    let booted = exec(&url, "box", &["sh", "-c", read_v0], None).await;
    assert!(booted.stdout.starts_with("one\n"), "{booted:?}");
    assert_ne!(booted.stdout, before.stdout, "a new boot");
    assert_eq!(sprite_json(&url, "box").await["status"], "running");

    // A task keeps the sprite awake past its idle timeout until it expires; tasks set
    // from inside through /.sprite/api.sock count the same.
    let (code, task) = post_json(
        &url,
        "/v1/sprites/box/tasks",
        serde_json::json!({ "name": "outside", "ttl": "8s" }),
    )
    .await;
    assert_eq!(code, 200, "{task}");
    assert_eq!(task["ttl_secs"], 8);
    let out = exec(
        &url,
        "box",
        &[
            "sh",
            "-c",
            "sprite-env tasks set inside --ttl 4 --description 'from the guest' && sprite-env tasks",
        ],
        None,
    )
    .await;
    assert!(out.stdout.contains("\"name\":\"inside\""), "{out:?}");
    assert!(out.stdout.contains("\"name\":\"outside\""), "{out:?}");
    let listed = wisp(&home, &["sprite", "--api", &url, "tasks", "list", "box"]);
    assert!(listed.contains("from the guest"), "{listed}");
    let held = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(status(&url, "box").await, "running", "the task holds it");
    until_status(&url, "box", "warm").await;
    assert!(
        held.elapsed() >= Duration::from_secs(8),
        "asleep only once the task expired"
    );
    // A checkpoint asked for from inside the sprite.
    let out = exec(
        &url,
        "box",
        &["sprite-env", "checkpoints", "create", "--comment", "inside"],
        None,
    )
    .await;
    assert!(out.stdout.contains("\"comment\":\"inside\""), "{out:?}");
    let out = wisp(&home, &["sprite", "--api", &url, "checkpoints", "box"]);
    assert!(out.contains("inside"), "{out}");

    // The daemon killed outright while a loop runs: the next daemon adopts the
    // machine, and the loop is still counting.
    exec(&url, "box", &["sh", "-c", START_LOOP], None).await;
    let (code, _) = client(&url)
        .put(format!("{url}/v1/sprites/box"))
        .json(&serde_json::json!({ "idle_timeout": "never" }))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(code, 200);
    let running = probe(&url, "box").await;
    let mut daemon = daemon;
    daemon.1 = None;
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    drop(daemon);
    let (daemon, url) = common::start_server(&home, &flags);
    assert_eq!(status(&url, "box").await, "running", "adopted");
    let adopted = probe(&url, "box").await;
    assert_eq!(adopted.boot_id, running.boot_id);
    assert_eq!(adopted.loop_pid, running.loop_pid);
    assert!(adopted.count >= running.count, "{running:?} {adopted:?}");
    let out = exec(
        &url,
        "box",
        &[
            "sh",
            "-c",
            "echo after > /root/after; sync; cat /root/after",
        ],
        None,
    )
    .await;
    assert_eq!(out.stdout, "after\n", "{out:?}");

    // Memory kept in the bucket: a second host with an empty cache, sharing the
    // bucket (and, standing in for a shared registry, a copy of this one's), resumes
    // it warm.
    let (code, _) = client(&url)
        .put(format!("{url}/v1/sprites/box"))
        .json(&serde_json::json!({ "keep_memory": true, "idle_timeout": null }))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(code, 200);
    let kept = probe(&url, "box").await;
    let (code, body) = post_json(
        &url,
        "/v1/sprites/box/sleep",
        serde_json::json!({ "mode": "cold" }),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["sleep"]["memory"], "bucket", "{body}");
    assert_eq!(body["status"], "warm", "resumable: {body}");
    drop(daemon);
    let other = common::vm_home("wisp-warm-test-home-second-host");
    copy_dir(&home.join("kernel"), &other.join("kernel"));
    // The accelerator verdict only: the volume cache stays empty.
    std::fs::create_dir_all(other.join("cache")).unwrap();
    std::fs::copy(
        home.join("cache/accel.json"),
        other.join("cache/accel.json"),
    )
    .unwrap();
    for entry in std::fs::read_dir(&home).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().starts_with("registry.db") {
            std::fs::copy(home.join(&name), other.join(&name)).unwrap();
        }
    }
    let store = format!(
        "file://{}",
        std::fs::canonicalize(home.join("store")).unwrap().display()
    );
    let mut second_flags = flags.to_vec();
    second_flags.extend(["--store", &store]);
    let (_second, url) = common::start_server(&other, &second_flags);
    assert_eq!(status(&url, "box").await, "warm");
    let resumed = probe(&url, "box").await;
    assert_eq!(resumed.boot_id, kept.boot_id, "resumed, not booted");
    assert_eq!(resumed.loop_pid, kept.loop_pid);
    assert!(resumed.count >= kept.count);
    let sprite = sprite_json(&url, "box").await;
    assert_eq!(sprite["sleep"]["memory"], serde_json::Value::Null, "spent");
}
