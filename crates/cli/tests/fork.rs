//! Forks of sprites with real VMs (TCG here): a fork has its checkpoint's data and
//! its own future, both ways; forks of forks; forks outlive their source; many forks
//! of one checkpoint share its data. Sprites sleep cold 2 s after use, so at most a
//! VM or two run at once.

use std::path::Path;

mod common;

use common::wisp_ok as wisp;
use common::{client, exec, sprite_json, status};

async fn sh(url: &str, name: &str, script: &str) -> String {
    let out = exec(url, name, &["sh", "-c", script], None).await;
    assert_eq!(out.code, Some(0), "`{script}` in `{name}`: {out:?}");
    out.stdout
}

async fn fork(url: &str, name: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let mut body = body;
    body["name"] = name.into();
    common::post_json(url, "/v1/sprites", body).await
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            tree_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[tokio::test]
async fn forks_share_a_checkpoint_and_have_their_own_future() {
    let home = common::vm_home("wisp-fork-test-home");
    wisp(&home, &["image", "build", "tiny"]);
    let (_daemon, url) = common::start_server(
        &home,
        &[
            "--image",
            "tiny",
            "--idle-timeout",
            "2s",
            "--sleep-mode",
            "cold",
        ],
    );
    assert_eq!(common::create_sprite(&url, "a").await, 201);
    sh(&url, "a", "echo one > /root/f; sync").await;
    let checkpoint = client(&url)
        .post(format!("{url}/v1/sprites/a/checkpoint"))
        .send()
        .await
        .unwrap();
    assert_eq!(checkpoint.status().as_u16(), 200);
    sh(&url, "a", "echo two > /root/f; sync").await;

    // A fork of a checkpoint, through the API; a fork of the current state of the
    // running source, through the CLI (a live checkpoint: the source keeps running).
    let (code, b) = fork(
        &url,
        "b",
        serde_json::json!({ "source": { "sprite": "a", "checkpoint": "v0" } }),
    )
    .await;
    assert_eq!(code, 201, "{b}");
    assert_eq!(
        b["source"],
        serde_json::json!({ "sprite": "a", "checkpoint": "v0" })
    );
    assert_eq!(b["status"], "cold");
    assert_eq!(b["image"], "tiny", "a fork shows its source's image: {b}");
    assert_ne!(b["id"], sprite_json(&url, "a").await["id"]);
    let out = wisp(&home, &["sprite", "--api", &url, "fork", "a", "c"]);
    assert!(out.contains("from a@v1"), "{out}");
    assert_eq!(status(&url, "a").await, "running");

    // Each has its checkpoint's data, then its own future, both ways.
    assert_eq!(sh(&url, "b", "cat /root/f").await, "one\n");
    assert_eq!(sh(&url, "c", "cat /root/f").await, "two\n");
    sh(&url, "b", "echo bee > /root/f; sync").await;
    sh(&url, "a", "echo new > /root/g; sync").await;
    assert_eq!(sh(&url, "a", "cat /root/f").await, "two\n");
    assert_eq!(
        sh(
            &url,
            "c",
            "cat /root/f; test -e /root/g && echo g || echo no-g"
        )
        .await,
        "two\nno-g\n"
    );
    // Its own history, starting at the fork point.
    let out = wisp(&home, &["sprite", "--api", &url, "checkpoints", "b"]);
    assert!(
        out.contains("v0") && out.contains("fork of `a`@v0"),
        "{out}"
    );
    // A fork of a fork.
    let (code, d) = fork(
        &url,
        "d",
        serde_json::json!({ "source": { "sprite": "b", "checkpoint": "v0" } }),
    )
    .await;
    assert_eq!(code, 201, "{d}");
    assert_eq!(sh(&url, "d", "cat /root/f").await, "one\n");

    // What changed between two checkpoints, and since the last one, read on the
    // host: exactly the files the commands touched.
    let checkpoint = async |name: &str| {
        let made = client(&url)
            .post(format!("{url}/v1/sprites/{name}/checkpoint"))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status().as_u16(), 200);
    };
    checkpoint("d").await; // v1, after the boot's own writes
    sh(
        &url,
        "d",
        "echo x > /root/new; rm /root/f; mkdir /root/dir; echo y > /root/dir/z; sync",
    )
    .await;
    checkpoint("d").await; // v2
    let out = wisp(&home, &["sprite", "--api", &url, "diff", "d", "v1", "v2"]);
    assert_eq!(
        out, "A /root/dir\nA /root/dir/z\nD /root/f\nA /root/new\n",
        "{out}"
    );
    // The newest checkpoints, read-only inside the sprite: each as it was.
    let mounted = sh(
        &url,
        "d",
        "for i in $(seq 100); do test -e /.sprite/checkpoints/v2/root/new && break; sleep 0.1; done; ls /.sprite/checkpoints",
    )
    .await;
    assert_eq!(mounted, "v0\nv1\nv2\n");
    assert_eq!(
        sh(
            &url,
            "d",
            "cat /.sprite/checkpoints/v0/root/f /.sprite/checkpoints/v1/root/f /.sprite/checkpoints/v2/root/new"
        )
        .await,
        "one\none\nx\n"
    );
    let out = exec(
        &url,
        "d",
        &["sh", "-c", "echo no > /.sprite/checkpoints/v1/root/f"],
        None,
    )
    .await;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("Read-only"), "{out:?}");
    sh(&url, "d", "echo changed > /root/new; sync").await;
    let diff = client(&url)
        .get(format!("{url}/v1/sprites/d/checkpoints/v2/diff"))
        .send()
        .await
        .unwrap();
    assert_eq!(diff.status().as_u16(), 200);
    let diff: serde_json::Value = diff.json().await.unwrap();
    assert_eq!(
        diff,
        serde_json::json!({ "from": "v2", "to": null, "changes": [
            { "path": "/root/new", "kind": "changed", "type": "file" }
        ] })
    );
    let bad = client(&url)
        .get(format!("{url}/v1/sprites/d/checkpoints/v9/diff"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 404);

    // Bad forks, each with a clear error.
    for (name, body, want) in [
        (
            "e",
            serde_json::json!({ "source": { "sprite": "a", "checkpoint": "v9" } }),
            404,
        ),
        (
            "e",
            serde_json::json!({ "source": { "sprite": "nope" } }),
            404,
        ),
        ("b", serde_json::json!({ "source": { "sprite": "a" } }), 409),
        (
            "e",
            serde_json::json!({ "source": { "sprite": "a" }, "config": { "cpus": 1 } }),
            400,
        ),
    ] {
        let (code, body) = fork(&url, name, body).await;
        assert_eq!(code, want, "{body}");
    }

    // Checkpoints: deleting one that a fork or the current state stands on is
    // refused naming it; one in between goes, and what came after it stays whole.
    for _ in 0..2 {
        let made = client(&url)
            .post(format!("{url}/v1/sprites/a/checkpoint"))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status().as_u16(), 200);
    }
    let delete_checkpoint = async |id: &str| {
        let answer = client(&url)
            .delete(format!("{url}/v1/sprites/a/checkpoints/{id}"))
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    };
    let (code, body) = delete_checkpoint("v0").await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("sprite `b` was forked from it"), "{body}");
    let (code, body) = delete_checkpoint("v1").await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("sprite `c` was forked from it"), "{body}");
    let (code, body) = delete_checkpoint("v3").await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("current state stands on it"), "{body}");
    assert_eq!(delete_checkpoint("v9").await.0, 404);
    let out = wisp(
        &home,
        &["sprite", "--api", &url, "delete-checkpoint", "a", "v2"],
    );
    assert!(out.contains("deleted checkpoint v2"), "{out}");
    assert_eq!(delete_checkpoint("v2").await.0, 404);
    let restored = client(&url)
        .post(format!("{url}/v1/sprites/a/checkpoints/v3/restore"))
        .send()
        .await
        .unwrap();
    assert_eq!(restored.status().as_u16(), 200);
    assert_eq!(sh(&url, "a", "cat /root/f /root/g").await, "two\nnew\n");

    // Deleting the source keeps its forks whole.
    let deleted = client(&url)
        .delete(format!("{url}/v1/sprites/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(sh(&url, "c", "cat /root/f").await, "two\n");
    assert_eq!(sh(&url, "b", "cat /root/f").await, "bee\n");

    // Fifty forks of one checkpoint: each works, and they share its data.
    let store = home.join("store");
    let before = tree_bytes(&store);
    for i in 0..50 {
        let (code, body) = fork(
            &url,
            &format!("many{i}"),
            serde_json::json!({ "source": { "sprite": "d", "checkpoint": "v0" } }),
        )
        .await;
        assert_eq!(code, 201, "{body}");
    }
    let growth = tree_bytes(&store) - before;
    assert_eq!(sh(&url, "many49", "cat /root/f").await, "one\n");
    let image = tree_bytes(&store);
    assert!(
        growth / 50 < 512 << 10,
        "50 forks grew the bucket by {growth} bytes (it holds {image})"
    );
}
