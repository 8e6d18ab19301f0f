//! `wisp image`, `wisp vm run` and `wisp doctor` as a user runs them: the real
//! binary, a real VM (QEMU; TCG here) booted from a fork of the `tiny` image.
//! One test runs the steps in order, so that only one VM runs at a time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A WISP_HOME shared by the runs of this test in one target folder, so the
/// kernel and the image are built by `wisp` once and then reused.
fn home() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_wisp"));
    let target = exe.ancestors().nth(2).unwrap().to_path_buf();
    let home = target.join("wisp-cli-test-home");
    std::fs::create_dir_all(&home).unwrap();
    home
}

fn wisp(home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(args)
        .env("WISP_HOME", home)
        .env_remove("WISP_STORE")
        // The default log filter is under test: library logs must not reach CMD's stderr.
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wisp");
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "wisp failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn image_build_vm_run_and_doctor() {
    let home = home();
    let built = ok(&wisp(&home, &["image", "build", "tiny"], None));
    assert!(built.starts_with("tiny\t"), "{built}");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&wisp(&home, &["image", "list", "--json"], None))).unwrap();
    let tiny = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "tiny")
        .expect("tiny listed");
    assert_eq!(tiny["checkpoint"], "v0");

    // stdout, stderr and the exit code pass through.
    let out = wisp(
        &home,
        &[
            "vm",
            "run",
            "--image",
            "tiny",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 5",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(5), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    // Only CMD's stderr: no log lines of wisp's libraries mixed in.
    assert_eq!(text(&out.stderr), "err\n");

    // -i passes stdin through.
    let out = wisp(
        &home,
        &[
            "vm", "run", "--image", "tiny", "-i", "--memory", "512M", "--cpus", "1", "--", "tr",
            "a-z", "A-Z",
        ],
        Some(b"quiet sprite\n"),
    );
    assert_eq!(ok(&out), "QUIET SPRITE\n");

    // -t gives the command a terminal.
    let out = wisp(
        &home,
        &["vm", "run", "--image", "tiny", "-t", "--", "tty"],
        None,
    );
    assert!(ok(&out).contains("/dev/pts/"));

    // Forks without --keep are deleted; with --keep the disk lives on and boots again.
    let names = home.join("store").join("names");
    let leftovers: Vec<_> = std::fs::read_dir(&names)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("vm-"))
        .collect();
    assert!(leftovers.is_empty(), "forks left behind: {leftovers:?}");
    let keep = format!("kept-{}", std::process::id());
    ok(&wisp(
        &home,
        &[
            "vm",
            "run",
            "--image",
            "tiny",
            "--keep",
            &keep,
            "--",
            "sh",
            "-c",
            "echo $PPID > /root/mark",
        ],
        None,
    ));
    // The second boot finds the file; the root filesystem fills the 100 GiB disk (grown on
    // first boot, in the background: the guest waits for it).
    let grown = "cat /root/mark; for i in $(seq 300); do \
        s=$(df -k / | awk 'NR==2 {print $2}'); [ $s -gt 94371840 ] && break; sleep 0.2; done; \
        echo $s; cat /sys/block/vda/size";
    let again = ok(&wisp(
        &home,
        &["vm", "run", "--keep", &keep, "--", "sh", "-c", grown],
        None,
    ));
    let lines: Vec<&str> = again.lines().collect();
    assert_eq!(lines.len(), 3, "{again}");
    assert!(!lines[0].trim().is_empty());
    let fs_kib: u64 = lines[1].parse().unwrap();
    assert!(
        fs_kib > 90 << 20,
        "root filesystem of {fs_kib} KiB: {again}"
    );
    assert_eq!(
        lines[2],
        (100u64 << 30 >> 9).to_string(),
        "disk sectors: {again}"
    );

    // Ctrl-C (SIGINT) while CMD runs stops the VM, deletes the fork and removes the
    // machine's sockets and run folder.
    let (code, stderr, fork) = interrupt(&home, "INT");
    assert_eq!(code, Some(130), "stderr: {stderr}");
    let volumes = ok(&wisp(&home, &["volume", "list", "--json"], None));
    assert!(
        !volumes.contains(&fork),
        "fork `{fork}` left behind: {volumes}"
    );
    let run = home.join("run").join(&fork);
    assert!(!run.exists(), "run folder left behind: {:?}", ls(&run));
    // No socket of it is bound any more (the kernel's list of unix sockets).
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    assert!(!unix.contains(&fork), "a socket of `{fork}` is still bound");

    // Bad input is an error that names it, not a crash.
    let out = wisp(&home, &["vm", "run", "--image", "nope", "--", "true"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no image `nope`"),
        "{}",
        text(&out.stderr)
    );
    let out = wisp(
        &home,
        &["vm", "run", "--memory", "lots", "--", "true"],
        None,
    );
    assert!(text(&out.stderr).contains("bad memory size `lots`"));

    // doctor: the accelerator, the kernel and the tiny image are reported.
    let out = wisp(&home, &["doctor", "--json"], None);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor json: {e}: {}", text(&out.stdout)));
    let accel = report["accelerator"].as_str().unwrap();
    assert!(accel == "tcg" || accel == "kvm", "{report}");
    let checks = report["checks"].as_array().unwrap();
    let find = |n: &str| checks.iter().find(|c| c["name"] == n).unwrap().clone();
    assert_eq!(find("kernel")["ok"], true);
    assert_eq!(find("image tiny")["ok"], true);
    if find("image debian")["ok"] == false {
        assert_eq!(find("image debian")["fix"], "wisp image build debian");
    }
}

/// Starts `wisp vm run -- sh -c 'echo started; sleep 100'`, sends it `SIG` once the
/// command runs, and returns its exit code, its stderr and the name of its fork.
fn interrupt(home: &Path, sig: &str) -> (Option<i32>, String, String) {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["vm", "run", "--image", "tiny", "--"])
        .args(["sh", "-c", "echo started; sleep 100"])
        .env("WISP_HOME", home)
        .env_remove("WISP_STORE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wisp");
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    // The fork is named after wisp's pid; it exists while the VM runs.
    let volumes = ok(&wisp(home, &["volume", "list", "--json"], None));
    let prefix = format!("vm-{pid}-");
    let list: serde_json::Value = serde_json::from_str(&volumes).unwrap();
    let fork = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .find(|n| n.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no volume `{prefix}*` while the VM runs: {volumes}"))
        .to_string();
    assert!(home.join("run").join(&fork).join("agent.sock").exists());
    let killed = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code(), stderr, fork)
}

fn ls(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}
