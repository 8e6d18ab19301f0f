//! Builds the static guest agent (`crates/agent`) and embeds it in this crate, so that
//! every build of `wisp`, however it is started (`cargo build`, `cargo install`,
//! `make`), carries the one agent that boots: statically linked, for
//! `x86_64-unknown-linux-gnu` with `+crt-static` (the only target the toolchain has).
//!
//! The agent is built by a nested `cargo build --release` in its own target folder
//! (`<target>/wisp-agent-embed`), so it never waits on the outer build's lock; it is
//! rebuilt only when the agent's or the protocol's sources change.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest.join("../..");
    for watched in [
        "crates/agent/src",
        "crates/agent/Cargo.toml",
        "crates/proto/src",
        "crates/proto/Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let target_dir = embed_target_dir(&out);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "-p", "wisp-agent", "--target", TARGET])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        );
    // What the outer build passes to build scripts must not leak into this one: its
    // flags (a clippy run, a coverage build) would change or break the agent.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the guest agent: {e}"));
    assert!(
        status.success(),
        "building the static guest agent failed ({status}); the toolchain needs the \
         `{TARGET}` target and libc.a (Debian package `libc6-dev`)"
    );
    let built = target_dir.join(TARGET).join("release").join("wisp-agent");
    let bytes = std::fs::read(&built)
        .unwrap_or_else(|e| panic!("cannot read the built agent `{}`: {e}", built.display()));
    let embedded = out.join("wisp-agent");
    std::fs::write(&embedded, &bytes)
        .unwrap_or_else(|e| panic!("cannot write `{}`: {e}", embedded.display()));
}

/// `<target>/wisp-agent-embed`, where `<target>` is the outer build's target folder
/// (the ancestor of `OUT_DIR` that holds cargo's `CACHEDIR.TAG`), so every profile of
/// the outer build shares one agent build.
fn embed_target_dir(out: &Path) -> PathBuf {
    out.ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(|target| target.join("wisp-agent-embed"))
        .unwrap_or_else(|| out.join("agent-target"))
}
