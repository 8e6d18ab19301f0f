//! `wisp volume` through the real binary and real NBD clients: nbdinfo,
//! qemu-io, qemu-img, fio, mkfs.ext4/e2fsck, and kill -9 during a write storm.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;

const WISP: &str = env!("CARGO_BIN_EXE_wisp");

/// Fails with the Debian package to install when `tool` is missing.
fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file()
        || Path::new("/sbin").join(tool).is_file();
    assert!(
        found,
        "`{tool}` is missing: install the Debian package `{package}` (apt-get install {package})"
    );
}

fn sbin(tool: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin"] {
        let p = Path::new(d).join(tool);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(tool)
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn wisp(&self, args: &[&str]) -> Command {
        let mut c = Command::new(WISP);
        c.env("WISP_HOME", self.dir.path().join("home"))
            .env("WISP_UPLOAD_DELAY", "200ms")
            .env_remove("WISP_STORE")
            .args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.wisp(args).output().unwrap();
        assert!(
            out.status.success(),
            "wisp {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }

    fn uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.sock().display())
    }

    /// `wisp volume serve`, returned once it printed its ready line.
    fn serve(&self, name: &str) -> Child {
        let sock = format!("unix:{}", self.sock().display());
        let mut child = self
            .wisp(&["volume", "serve", name, "--nbd", &sock])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = common::first_stdout_line(&mut child);
        assert_eq!(line.trim(), format!("serving volume {name} on {sock}"));
        child
    }
}

fn stop(mut child: Child) {
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc_kill(child.id() as i32, 15) };
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nbdinfo_qemu_io_and_qemu_img_round_trip() {
    require("nbdinfo", "libnbd-bin");
    require("qemu-io", "qemu-utils");
    let env = Env::new();
    env.ok(&["volume", "create", "disk", "--size", "64M"]);
    let serve = env.serve("disk");
    let info = run(Command::new("nbdinfo").arg(env.uri("disk")));
    assert!(info.contains("export-size: 67108864"), "{info}");
    let uri = env.uri("disk");
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "write -P 0xab 1M 3M",
        "-c",
        "write -P 0x11 100k 8k",
        "-c",
        "flush",
    ]));
    let out = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "read -P 0xab 1M 1M",
        "-c",
        "read -P 0x11 100k 8k",
        "-c",
        "read -P 0 200k 100k",
    ]));
    assert!(!out.contains("verification failed"), "{out}");
    // qemu-img convert out of and into the export.
    let img = env.dir.path().join("out.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&img));
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes.len(), 64 << 20);
    assert!(bytes[1 << 20..4 << 20].iter().all(|b| *b == 0xab));
    stop(serve);
    // Data survives the restart; then convert a file in.
    let serve = env.serve("disk");
    let out = run(Command::new("qemu-io").args(["-f", "raw", &uri, "-c", "read -P 0xab 3M 1M"]));
    assert!(!out.contains("verification failed"), "{out}");
    let src = env.dir.path().join("in.raw");
    let mut data = vec![0u8; 8 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(&src, &data).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&uri));
    stop(serve);
    let back = env.dir.path().join("back.raw");
    env.ok(&["volume", "export", "disk", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap()[..8 << 20], data[..]);
    // Checkpoint, change, export the checkpoint: it is the old content.
    assert_eq!(
        env.ok(&["volume", "checkpoint", "disk", "-m", "converted"])
            .trim(),
        "v0"
    );
    let cp = env.dir.path().join("cp.raw");
    env.ok(&["volume", "export", "disk@v0", cp.to_str().unwrap()]);
    assert_eq!(std::fs::read(&cp).unwrap()[..8 << 20], data[..]);
    env.ok(&["volume", "fork", "disk@v0", "copy"]);
    let list = env.ok(&["volume", "list", "--json"]);
    assert!(list.contains("\"disk@v0\""), "{list}");
}

#[test]
fn fio_verify_and_ext4_on_the_export() {
    require("fio", "fio");
    require("mkfs.ext4", "e2fsprogs");
    require("qemu-img", "qemu-utils");
    let env = Env::new();
    env.ok(&["volume", "create", "fs", "--size", "128M"]);
    let serve = env.serve("fs");
    let uri = env.uri("fs");
    let out = run(Command::new("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=32M",
        "--offset=64M",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
    ]));
    assert!(out.contains("verify"), "{out}");
    // mkfs.ext4 needs a file: make one, copy it in, copy it back out, fsck.
    let img = env.dir.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    run(Command::new(sbin("mkfs.ext4")).args(["-q", "-F"]).arg(&img));
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&img)
        .arg(&uri));
    stop(serve);
    let out = env.dir.path().join("fs-out.img");
    env.ok(&["volume", "export", "fs", out.to_str().unwrap()]);
    let f = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
    f.set_len(48 << 20).unwrap();
    drop(f);
    run(Command::new(sbin("e2fsck")).args(["-fn"]).arg(&out));
}

#[test]
fn acknowledged_flushes_survive_kill_9_during_a_write_storm() {
    require("qemu-io", "qemu-utils");
    require("qemu-img", "qemu-utils");
    let env = Env::new();
    env.ok(&["volume", "create", "storm", "--size", "256M"]);
    let mut serve = env.serve("storm");
    let uri = env.uri("storm");
    // Write block i (64 KiB of byte (i % 251) + 1) then flush, repeatedly.
    // qemu-io runs commands in order, so a printed "wrote ... at offset" of
    // block i+1 proves the flush after block i completed.
    let blocks = 3000u64;
    let mut args = vec!["-f".to_string(), "raw".to_string(), uri.clone()];
    for i in 0..blocks {
        args.push("-c".into());
        args.push(format!("write -P {} {} 64k", (i % 251) + 1, i * 65536));
        args.push("-c".into());
        args.push("flush".into());
    }
    let log = env.dir.path().join("storm.log");
    let mut writer = Command::new("qemu-io")
        .args(&args)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the server once a few hundred flushes have completed.
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("wrote").count() > 200 || writer.try_wait().unwrap().is_some() {
            break;
        }
        // qemu-io buffers its stdout; a slow start still ends the wait.
        if serve.try_wait().unwrap().is_some() {
            panic!("serve died on its own");
        }
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    let _ = writer.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let mut written: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split(" at offset ").nth(1))
        .filter_map(|o| o.trim().parse::<u64>().ok())
        .map(|o| o / 65536)
        .collect();
    written.sort_unstable();
    assert!(written.len() > 10, "too few writes before the kill: {text}");
    // Every block before the last printed one had its flush acknowledged.
    let acked = written.len() as u64 - 1;
    eprintln!(
        "{} of {blocks} writes completed before kill -9",
        written.len()
    );
    let serve = env.serve("storm");
    let img = env.dir.path().join("storm.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&img));
    stop(serve);
    let bytes = std::fs::read(&img).unwrap();
    for i in 0..acked {
        let want = ((i % 251) + 1) as u8;
        let block = &bytes[(i * 65536) as usize..((i + 1) * 65536) as usize];
        assert!(
            block.iter().all(|b| *b == want),
            "block {i} (acknowledged) lost after kill -9"
        );
    }
}

#[test]
fn bad_input_gets_errors_naming_it() {
    let env = Env::new();
    let out = env
        .wisp(&["volume", "create", "x", "--size", "12Q"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`12Q`"));
    let out = env.wisp(&["volume", "info", "missing"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("volume `missing` does not exist"));
    env.ok(&["volume", "create", "x", "--size", "1M"]);
    let out = env
        .wisp(&["volume", "restore", "x", "v3"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("checkpoint `v3` of volume `x` does not exist"));
    let out = env.wisp(&["volume", "fork", "x", "y"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME@CHECKPOINT"));
}

/// `wisp volume import NAME FILE` creates NAME when it does not exist: as large as the
/// file (rounded up to 4 KiB) or `--size`; the bytes round-trip through export. An
/// import that cannot fit leaves no volume behind; `--size` on an existing volume is
/// refused rather than ignored.
#[test]
fn import_creates_the_volume_it_names() {
    let env = Env::new();
    let dir = env.dir.path();
    let mut data: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    data.truncate(39_999); // not a multiple of 4 KiB
    std::fs::write(dir.join("disk.raw"), &data).unwrap();
    let out = env.ok(&[
        "volume",
        "import",
        "fresh",
        dir.join("disk.raw").to_str().unwrap(),
    ]);
    assert!(out.contains("created volume fresh (40960 bytes)"), "{out}");
    let info: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "info", "fresh", "--json"])).unwrap();
    assert_eq!(info["size"], 40960);
    let exported = dir.join("out.raw");
    env.ok(&["volume", "export", "fresh", exported.to_str().unwrap()]);
    let back = std::fs::read(&exported).unwrap();
    assert_eq!(&back[..data.len()], &data[..]);
    assert!(back[data.len()..].iter().all(|b| *b == 0));

    env.ok(&[
        "volume",
        "import",
        "big",
        dir.join("disk.raw").to_str().unwrap(),
        "--size",
        "1G",
    ]);
    let info: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "info", "big", "--json"])).unwrap();
    assert_eq!(info["size"], 1u64 << 30);

    let out = env
        .wisp(&[
            "volume",
            "import",
            "small",
            dir.join("disk.raw").to_str().unwrap(),
            "--size",
            "4096",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than volume `small`"));
    let out = env.wisp(&["volume", "info", "small"]).output().unwrap();
    assert!(
        !out.status.success(),
        "the failed import left volume `small` behind"
    );

    let out = env
        .wisp(&[
            "volume",
            "import",
            "fresh",
            dir.join("disk.raw").to_str().unwrap(),
            "--size",
            "1G",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("volume `fresh` exists"),
        "{out:?}"
    );
}
