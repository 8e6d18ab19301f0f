//! The public Sprites JavaScript SDK (`@fly/sprites`, the version pinned in
//! `tests/sdk-js/package.json`) against a real `wisp server` and a real VM (the
//! tiny image, TCG here): `tests/sdk-js/conformance.mjs` calls every public
//! method wisp serves and checks each answer; this test installs the SDK with
//! npm, runs the script, and fails naming every check that failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

use common::wisp_ok as wisp;

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk-js")
}

/// Runs `program args` and panics naming it when it cannot be started.
fn tool(program: &str, args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{program}` ({e}): the JS SDK test needs Node.js and npm \
                 (scripts/install-deps.sh --test installs them)"
            )
        })
}

/// The flags Node needs for a global `WebSocket` that takes headers: none on 22+,
/// `--experimental-websocket` on 20; older ones get the `ws` package from the script.
fn node_flags(dir: &Path) -> Vec<&'static str> {
    let flagged = tool(
        "node",
        &[
            "--experimental-websocket",
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ],
        dir,
    );
    if flagged.status.success() {
        vec!["--experimental-websocket"]
    } else {
        vec![]
    }
}

#[test]
fn every_sdk_method_wisp_serves_works() {
    let dir = sdk_dir();
    // The lock file pins the SDK and its one dependency; `npm ci` installs exactly them.
    let install = tool("npm", &["ci", "--no-audit", "--no-fund"], &dir);
    assert!(
        install.status.success(),
        "npm ci in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&install.stderr)
    );
    let flags = node_flags(&dir);

    let home = common::vm_home("wisp-sdk-js-test-home");
    wisp(&home, &["image", "build", "tiny"]);
    let (_daemon, url) = common::start_server(&home, &["--image", "tiny"]);
    let run = Command::new("node")
        .args(&flags)
        .arg("conformance.mjs")
        .current_dir(&dir)
        .env("WISP_URL", &url)
        .env("WISP_TOKEN", common::token_of(&url))
        .env("WISP_SPRITE", "sdk-js")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    print!("{stdout}");
    let summary = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| panic!("the conformance script printed no summary: {stdout}"));
    let checks = summary["summary"]["checks"].as_u64().unwrap_or(0);
    let failed = &summary["summary"]["failed"];
    assert!(
        run.status.success() && failed.as_array().is_some_and(Vec::is_empty),
        "SDK checks failed: {failed} (see each FAIL line above)"
    );
    // Every check ran: a script that stopped early is a failure too.
    assert!(checks >= 40, "only {checks} checks ran");
}
