//! `wisp image import` end to end with the real binary, a real daemon and real VMs
//! (TCG here): archives this test builds itself (a busybox root as a `.tar.gz`, an OCI
//! layout of two layers with whiteouts and owners, an Alpine-like root with one
//! musl-linked program and no shell at all) become images; sprites made from them by
//! name boot, run commands and a service; an imported image is the server's default;
//! `wisp image rm` leaves the sprites made from it whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::wisp_ok as wisp;
use common::{client, exec, post_json};

/// A program for a root with no shell: `hello ARGS` greets, `hello cat FILE` prints
/// FILE, `hello exists PATH` says yes or no, `hello serve` prints a line and waits.
const HELLO_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "serve")) {
        printf("serving as pid %d\n", getpid());
        fflush(stdout);
        for (;;) pause();
    }
    if (argc > 2 && !strcmp(argv[1], "cat")) {
        FILE *f = fopen(argv[2], "r");
        if (!f) { perror(argv[2]); return 1; }
        int c;
        while ((c = fgetc(f)) != EOF) putchar(c);
        return 0;
    }
    if (argc > 2 && !strcmp(argv[1], "exists")) {
        puts(access(argv[2], F_OK) == 0 ? "yes" : "no");
        return 0;
    }
    printf("hello from musl:");
    for (int i = 1; i < argc; i++) printf(" %s", argv[i]);
    printf("\n");
    return 0;
}
"#;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A busybox root (the `tiny` image's tree) packed by GNU tar with gzip.
fn busybox_tar_gz(dir: &Path) -> PathBuf {
    let tree = dir.join("busybox-tree");
    wisp_vm::rootfs::populate_tiny(&tree).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=imported-busybox\n").unwrap();
    let file = dir.join("busybox.tar.gz");
    wisp_testkit::require_tool("tar", "tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-czf")
        .arg(&file)
        .arg("."));
    file
}

/// One layer: `(path, mode, uid, content)`; a path ending in `/` is a folder.
fn layer(entries: &[(&str, u32, u64, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, uid, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_uid(*uid);
        h.set_gid(*uid);
        h.set_mtime(1_700_000_000);
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, path, &[][..]).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(content.len() as u64);
            b.append_data(&mut h, path, content.as_bytes()).unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// An OCI image layout: layer 1 is the busybox root plus `/data`, layer 2 deletes
/// `/data/gone` (a whiteout), hides `/data/opq`'s lower files (an opaque whiteout)
/// and adds files with their own owners and modes.
fn oci_layout(dir: &Path, busybox: &Path) -> PathBuf {
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    // Layer 1: the busybox tar.gz as it is (gzip), then a plain tar of /data.
    let base = std::fs::read(busybox).unwrap();
    let data = layer(&[
        ("data/", 0o755, 0, ""),
        ("data/keep", 0o640, 1000, "kept\n"),
        ("data/gone", 0o644, 0, "deleted in layer 3\n"),
        ("data/opq/", 0o755, 0, ""),
        ("data/opq/old", 0o644, 0, "hidden by layer 3\n"),
    ]);
    let top = layer(&[
        ("data/.wh.gone", 0o644, 0, ""),
        ("data/opq/.wh..wh..opq", 0o644, 0, ""),
        ("data/opq/new", 0o644, 0, "new\n"),
        ("data/secret", 0o4711, 1234, "s\n"),
    ]);
    let mut layers = Vec::new();
    for (bytes, media) in [(&base, "tar+gzip"), (&data, "tar"), (&top, "tar")] {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest), bytes).unwrap();
        layers.push(serde_json::json!({
            "mediaType": format!("application/vnd.oci.image.layer.v1.{media}"),
            "digest": format!("sha256:{digest}"),
            "size": bytes.len(),
        }));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:00", "size": 0},
        "layers": layers,
    })
    .to_string();
    let digest = sha256(manifest.as_bytes());
    std::fs::write(blobs.join(&digest), &manifest).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{digest}"),
        "size": manifest.len(),
        "platform": {"os": "linux", "architecture": "amd64"},
    }]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout
}

/// An Alpine-minirootfs-like root: one program linked against musl, musl's loader
/// `/lib/ld-musl-x86_64.so.1`, `/etc`, and no shell.
fn musl_root(dir: &Path) -> PathBuf {
    let musl_gcc = wisp_testkit::require_tool("musl-gcc", "musl-tools");
    let src = dir.join("hello.c");
    std::fs::write(&src, HELLO_C).unwrap();
    let tree = dir.join("musl-tree");
    for d in ["bin", "lib", "etc"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    run(Command::new(musl_gcc)
        .args(["-O2", "-o"])
        .arg(tree.join("bin/hello"))
        .arg(&src));
    let loader = std::fs::canonicalize("/lib/ld-musl-x86_64.so.1")
        .expect("musl's loader /lib/ld-musl-x86_64.so.1 (Debian package musl)");
    std::fs::copy(loader, tree.join("lib/ld-musl-x86_64.so.1")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=alpine-like\n").unwrap();
    std::fs::write(
        tree.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\n",
    )
    .unwrap();
    let file = dir.join("musl.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&file)
        .arg("."));
    file
}

async fn create(url: &str, name: &str, image: Option<&str>) -> (u16, serde_json::Value) {
    let mut body = serde_json::json!({ "name": name });
    if let Some(image) = image {
        body["image"] = image.into();
    }
    post_json(url, "/v1/sprites", body).await
}

async fn stdout_of(url: &str, name: &str, argv: &[&str]) -> String {
    let out = exec(url, name, argv, None).await;
    assert_eq!(out.code, Some(0), "{argv:?} in `{name}`: {out:?}");
    out.stdout
}

#[tokio::test]
async fn imported_images_boot_by_name_without_a_shell_and_outlive_their_removal() {
    let home = common::vm_home("wisp-image-import-test-home");
    let work = tempfile::tempdir().unwrap();
    let busybox = busybox_tar_gz(work.path());
    let oci = oci_layout(work.path(), &busybox);
    let musl = musl_root(work.path());
    let out = wisp(&home, &["image", "import", "bb", busybox.to_str().unwrap()]);
    assert!(out.starts_with("bb\timage-bb@"), "{out}");
    wisp(
        &home,
        &["image", "import", "layered", oci.to_str().unwrap()],
    );
    wisp(&home, &["image", "import", "nosh", musl.to_str().unwrap()]);

    // A cut archive fails naming the file and the damage; a standard name is refused.
    let bytes = std::fs::read(&busybox).unwrap();
    let cut = work.path().join("cut.tar.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let failed = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["image", "import", "cut"])
        .arg(&cut)
        .env("WISP_HOME", &home)
        .env_remove("WISP_STORE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        err.contains(&format!("`{}` is corrupt", cut.display())) && !err.contains("panicked"),
        "{err}"
    );
    let list = wisp(&home, &["image", "list"]);
    for name in ["bb ", "layered ", "nosh "] {
        assert!(list.contains(name), "{list}");
    }
    assert!(!list.contains("cut "), "{list}");

    // The server's default image is an imported one, by name.
    let (_daemon, url) = common::start_server(
        &home,
        &[
            "--image",
            "bb",
            "--idle-timeout",
            "2s",
            "--sleep-mode",
            "cold",
        ],
    );
    let (code, body) = create(&url, "plain", None).await;
    assert_eq!(code, 201);
    assert_eq!(
        body["image"], "bb",
        "the server's default, recorded: {body}"
    );
    let os = stdout_of(&url, "plain", &["cat", "/etc/os-release"]).await;
    assert_eq!(os, "ID=imported-busybox\n");
    assert_eq!(
        stdout_of(&url, "plain", &["ls", "-d", "/.sprite"]).await,
        "/.sprite\n"
    );

    // Unknown and malformed image names are refused, naming them.
    let (code, body) = create(&url, "nope", Some("no-such-image")).await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no-such-image"),
        "{body}"
    );
    let (code, body) = create(&url, "nope", Some("Bad/Name")).await;
    assert_eq!(code, 400, "{body}");

    // Layers: whiteouts applied, owners and modes kept.
    let (code, body) = create(&url, "layers", Some("layered")).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["image"], "layered", "{body}");
    let listing = stdout_of(&url, "layers", &["ls", "/data", "/data/opq"]).await;
    assert!(
        !listing.contains("gone") && !listing.contains("old"),
        "{listing}"
    );
    assert!(
        listing.contains("keep") && listing.contains("new"),
        "{listing}"
    );
    let modes = stdout_of(
        &url,
        "layers",
        &[
            "stat",
            "-c",
            "%n %u %g %a",
            "/data/keep",
            "/data/secret",
            "/bin/busybox",
        ],
    )
    .await;
    assert_eq!(
        modes,
        "/data/keep 1000 1000 640\n/data/secret 1234 1234 4711\n/bin/busybox 0 0 755\n"
    );

    // No shell: commands and a service are the image's own binary.
    let (code, body) = create(&url, "musl", Some("nosh")).await;
    assert_eq!(code, 201, "{body}");
    let greeting = stdout_of(&url, "musl", &["/bin/hello", "a", "b"]).await;
    assert_eq!(greeting, "hello from musl: a b\n");
    assert_eq!(
        stdout_of(&url, "musl", &["hello", "exists", "/bin/sh"]).await,
        "no\n"
    );
    let r = client(&url)
        .put(format!("{url}/v1/sprites/musl/services/svc?duration=0s"))
        .json(&serde_json::json!({ "cmd": "/bin/hello", "args": ["serve"] }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = exec(
            &url,
            "musl",
            &["hello", "cat", "/var/log/wisp/svc.log"],
            None,
        )
        .await;
        if log.stdout.contains("serving as pid") {
            break;
        }
        assert!(Instant::now() < deadline, "the service never ran: {log:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Removing an image leaves the sprites made from it whole, asleep or not.
    common::until_asleep(&url, "layers").await;
    let removed = wisp(&home, &["image", "rm", "layered"]);
    assert!(removed.contains("removed image layered"), "{removed}");
    assert!(!wisp(&home, &["image", "list"]).contains("layered "));
    let (code, body) = create(&url, "late", Some("layered")).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        stdout_of(&url, "layers", &["cat", "/data/keep", "/data/opq/new"]).await,
        "kept\nnew\n"
    );
    std::io::stderr().flush().unwrap();
    drop(_daemon);
    import_as_nobody(&home, &oci);
}

/// The import needs no root privileges: as `nobody` (this test runs as root in CI
/// and on the project's machines), the OCI layout becomes an image whose files keep
/// their owners and modes (checked on an export of its volume with debugfs).
fn import_as_nobody(home_with_kernel: &Path, oci: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Already unprivileged: the imports above were the proof.
        return;
    }
    let setpriv = wisp_testkit::require_tool("setpriv", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    run(Command::new("cp")
        .arg("-r")
        .arg(home_with_kernel.join("kernel"))
        .arg(&home));
    let layout = dir.path().join("oci");
    run(Command::new("cp").arg("-r").arg(oci).arg(&layout));
    run(Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dir.path()));
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new(&setpriv);
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_wisp"))
            .args(args)
            .env("WISP_HOME", &home)
            .env("WISP_IMPORT_SCRATCH", dir.path().join("scratch"))
            .env_remove("WISP_STORE");
        run(&mut cmd);
    };
    as_nobody(&["image", "import", "unprivileged", layout.to_str().unwrap()]);
    let raw = dir.path().join("disk.raw");
    as_nobody(&[
        "volume",
        "export",
        "image-unprivileged@v0",
        raw.to_str().unwrap(),
    ]);
    let out = Command::new("debugfs")
        .args(["-R", "ls -l /data"])
        .arg(&raw)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("no /data/{name} in {listing}"))
            .split_whitespace()
            .skip(1)
            .take(4)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("keep"), "100640 (1) 1000 1000");
    assert_eq!(line("secret"), "104711 (1) 1234 1234");
    assert!(!listing.contains(" gone"), "{listing}");
}
