//! The `sleep` section (`--vm`): warm sleep, issue 10's targets in one run, each
//! against a reference measured here.
//!
//! - Warm wake vs cold wake of the same sprite: a GET through the daemon's router
//!   to a server in the guest (busybox httpd, a service), from the request to the
//!   response, after `POST .../sleep` warm or cold. Target: at most 0.35, and the
//!   warm wake under 0.5 s.
//! - Warm sleep: `POST .../sleep` warm, which returns once QEMU has exited (its memory
//!   back to the host) and the disk is flushed and uploaded. Target: under 1.5 s for
//!   the 1 GiB guest.
//! - State size: a guest that wrote and freed 300 MiB, then holds 200 MiB and idles 3 s: the state
//!   file vs the guest's memory in use (its RAM less MemFree: the kernel's code and
//!   page tables, which MemTotal leaves out, are in use). Target: at most 1.1.
//! - A warm wake on a second host from the bucket (`keep_memory`) vs a local warm
//!   wake. Target: at most 2.
//! - A daemon killed with SIGKILL while 3 sprites run: the longest of the first execs
//!   on each through the next daemon. Target: under 1 s.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wisp_control::client::{Client, ExecOptions, ExecOutput};
use wisp_control::registry::UrlAuth;

use crate::report::{Row, Target};
use crate::vm::api_exec;
use crate::wisp::Wisp;
use crate::{engine, median, Ctx};

const SECTION: &str = "sleep";
/// Wakes of each kind measured.
const SAMPLES: usize = 5;
/// The sprites' memory (the server's default), in MiB.
const GUEST_MIB: u64 = 1024;

/// GETs the sprite's URL through the daemon until it answers 200; how long that took.
async fn get_until_ok(
    http: &reqwest::Client,
    client: &Client,
    name: &str,
    token: &str,
) -> Result<Duration> {
    let port = client
        .base()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let url = format!("http://127.0.0.1:{port}/index.html");
    let t = Instant::now();
    loop {
        let r = http
            .get(&url)
            .header("host", format!("{name}.localhost"))
            .bearer_auth(token)
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == 200 {
                r.bytes().await?;
                return Ok(t.elapsed());
            }
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(120),
            "GET {url} for `{name}` never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sleep_now(client: &Client, name: &str, cold: bool) -> Result<Duration> {
    let t = Instant::now();
    let view = client.sleep(name, cold).await?;
    anyhow::ensure!(
        view.status != "running",
        "`{name}` is still running after a sleep"
    );
    Ok(t.elapsed())
}

/// Runs `script` in the sprite; its stdout.
async fn sh(client: &Client, name: &str, script: &str) -> Result<String> {
    let options = ExecOptions {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    let (_input, mut output) = client.exec(name, &options).await?;
    let mut stdout = Vec::new();
    loop {
        match output.recv().await? {
            Some(ExecOutput::Stdout(b)) => stdout.extend_from_slice(&b),
            Some(ExecOutput::Exit(0)) => return Ok(String::from_utf8_lossy(&stdout).into_owned()),
            Some(ExecOutput::Exit(code)) => anyhow::bail!("`{script}` exited with {code}"),
            Some(_) => {}
            None => anyhow::bail!("`{script}`: the exec ended without an exit code"),
        }
    }
}

fn state_bytes(home: &Path) -> u64 {
    std::fs::read_dir(home.join("warm"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "state"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// Save and resume of a bare guest (1 GiB, no disk, idle after boot) as a plain
/// migration to a file or with its RAM in a shared file (`x-ignore-shared`): the
/// save, the resume until its agent answers, and the bytes on disk.
async fn bare_save_resume(
    rt: &wisp_vm::Runtime,
    dir: &Path,
    shared: bool,
) -> Result<(Duration, Duration, u64)> {
    use wisp_vm::qemu::{Qemu, QemuConfig, Qmp};
    let run = dir.join(if shared { "shared-ram" } else { "migration" });
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run)?;
    let mut config = QemuConfig {
        binary: QemuConfig::default_binary(),
        accel: wisp_vm::Accel::Tcg,
        cpus: 2,
        memory_mib: 1024,
        kernel: rt.kernel.vmlinuz(),
        initrd: rt.initramfs.clone(),
        cmdline_extra: vec![],
        disk: None,
        dir: run.clone(),
        agent_socket: Some("agent.sock".into()),
        qmp_socket: Some("qmp.sock".into()),
        serial_log: run.join("console.log"),
        network: false,
        incoming: None,
        outlive_parent: false,
        memory_file: shared.then(|| run.join("ram")),
        extra_disks: Vec::new(),
    };
    let agent = async |run: &Path| -> Result<wisp_vm::agent::AgentClient> {
        let t = Instant::now();
        let stream = loop {
            match tokio::net::UnixStream::connect(run.join("agent.sock")).await {
                Ok(s) => break s,
                Err(e) if t.elapsed() > Duration::from_secs(60) => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        Ok(wisp_vm::agent::AgentClient::connect_timeout(stream, Duration::from_secs(60)).await?)
    };
    let mut qemu = Qemu::spawn(&config, &run.join("qemu.log"))?;
    agent(&run).await.context("the bare guest did not boot")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut qmp = Qmp::connect(&run.join("qmp.sock"), Duration::from_secs(10)).await?;
    if shared {
        qmp.set_capability("x-ignore-shared", true).await?;
    }
    let state = run.join("state");
    let save = qmp.save_state(&state).await?;
    qmp.quit().await?;
    qemu.wait().await?;
    let allocated = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
    };
    let bytes = allocated(&state) + allocated(&run.join("ram"));
    config.incoming = Some(state);
    let t = Instant::now();
    let mut qemu = Qemu::spawn(&config, &run.join("qemu-resume.log"))?;
    let mut qmp = Qmp::connect(&run.join("qmp.sock"), Duration::from_secs(10)).await?;
    if shared {
        qmp.set_capability("x-ignore-shared", true).await?;
    }
    qmp.resume().await?;
    agent(&run)
        .await
        .context("the resumed bare guest did not answer")?;
    let resume = t.elapsed();
    qemu.kill().await;
    let _ = std::fs::remove_file(run.join("ram"));
    Ok((save, resume, bytes))
}

struct Figures {
    cold_wake: Duration,
    warm_wake: Duration,
    warm_sleep: Duration,
    state: u64,
    in_use: u64,
    bucket_wake: Duration,
    restart_exec: Duration,
    /// (save, resume, bytes) of a bare guest: plain migration, shared RAM file.
    migration: (Duration, Duration, u64),
    shared_ram: (Duration, Duration, u64),
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.scratch(SECTION)?;
    let wisp = Wisp::new(&ctx.wisp, &dir.join("home"))?;
    wisp.run(&["image", "build", "tiny"])?;
    let never = ["--idle-timeout", "0", "--cold-after", "0"];
    let (server, client) = wisp.server(&dir, &never)?;
    let token = std::fs::read_to_string(wisp.home.join("token"))?
        .trim()
        .to_string();
    let http = reqwest::Client::new();
    let name = "web";
    let first = engine::runtime().block_on(async {
        client.create(name, UrlAuth::Sprite).await?;
        let httpd = [
            "sh",
            "-c",
            "echo ok > /tmp/index.html; exec busybox httpd -f -p 8080 -h /tmp",
        ];
        client
            .put_service(name, "httpd", &httpd.map(String::from))
            .await?;
        get_until_ok(&http, &client, name, &token).await?;
        let (mut cold, mut warm, mut sleeps) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..SAMPLES {
            sleep_now(&client, name, true).await?;
            cold.push(get_until_ok(&http, &client, name, &token).await?);
            sleeps.push(sleep_now(&client, name, false).await?);
            warm.push(get_until_ok(&http, &client, name, &token).await?);
        }
        // 300 MiB written and freed, then 200 MiB held (random bytes: no page is zero),
        // then 3 s idle: the guest reports freed pages 2 s after their free (a sprite
        // goes warm after its idle timeout, seconds at the least).
        // In use: the guest's RAM less its free pages (MemTotal leaves out what the
        // kernel reserved at boot, its code and page tables, which is in use too).
        let free: u64 = sh(
            &client,
            name,
            "head -c 314572800 /dev/urandom > /dev/shm/junk && rm /dev/shm/junk && \
             head -c 209715200 /dev/urandom > /dev/shm/fill && \
             sleep 3 && awk '/MemFree/{print $2*1024}' /proc/meminfo",
        )
        .await?
        .trim()
        .parse()
        .context("the guest's free memory")?;
        let used = (GUEST_MIB << 20).saturating_sub(free);
        sleep_now(&client, name, false).await?;
        let state = state_bytes(&wisp.home);
        get_until_ok(&http, &client, name, &token).await?;
        sh(&client, name, "rm /dev/shm/fill").await?;
        // Three running sprites for the restart.
        for i in 0..3 {
            let sprite = format!("run{i}");
            client.create(&sprite, UrlAuth::Sprite).await?;
            api_exec(&client, &sprite).await?;
        }
        anyhow::Ok((median(cold), median(warm), median(sleeps), state, used))
    })?;
    // The daemon killed outright: the next one adopts the three running sprites.
    let pid = server.pid().context("wisp server is not running")?;
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let mut server = server;
    server.keep_machines();
    drop(server);
    let (server, client) = wisp.server(&dir, &never)?;
    let restart_exec = engine::runtime().block_on(async {
        let mut longest = Duration::ZERO;
        for i in 0..3 {
            longest = longest.max(api_exec(&client, &format!("run{i}")).await?);
        }
        // The memory goes to the bucket for the second host.
        client
            .update(name, serde_json::json!({ "keep_memory": true }))
            .await?;
        let view = client.sleep(name, true).await?;
        anyhow::ensure!(
            view.sleep.memory.as_deref() == Some("bucket"),
            "the memory did not go to the bucket: {:?}",
            view.sleep
        );
        anyhow::Ok(longest)
    })?;
    server.terminate(Duration::from_secs(120))?;

    // A second host: its own home (the kernel and the accelerator verdict copied, the
    // volume cache empty), the same bucket, and a copy of the registry standing in
    // for a shared one.
    let mut other = Wisp::new(&ctx.wisp, &dir.join("home2"))?;
    other.store = Some(wisp.store_url()?);
    copy_tree(&wisp.home.join("kernel"), &other.home.join("kernel"))?;
    std::fs::create_dir_all(other.home.join("cache"))?;
    std::fs::copy(
        wisp.home.join("cache/accel.json"),
        other.home.join("cache/accel.json"),
    )?;
    for entry in std::fs::read_dir(&wisp.home)? {
        let file = entry?.file_name();
        if file.to_string_lossy().starts_with("registry.db") {
            std::fs::copy(wisp.home.join(&file), other.home.join(&file))?;
        }
    }
    let second_dir = dir.join("second");
    std::fs::create_dir_all(&second_dir)?;
    let (server, client) = other.server(&second_dir, &never)?;
    let token = std::fs::read_to_string(other.home.join("token"))?
        .trim()
        .to_string();
    let bucket_wake = engine::runtime().block_on(get_until_ok(&http, &client, name, &token))?;
    server.terminate(Duration::from_secs(120))?;
    // The design choice: plain migration vs RAM in a shared file, on a bare guest.
    let (migration, shared_ram) = engine::runtime().block_on(async {
        let rt = wisp_vm::Runtime::prepare(&wisp.home).await?;
        let reference = dir.join("bare");
        let migration = bare_save_resume(&rt, &reference, false).await?;
        let shared = bare_save_resume(&rt, &reference, true).await?;
        anyhow::Ok((migration, shared))
    })?;
    let (cold_wake, warm_wake, warm_sleep, state, in_use) = first;
    rows(Figures {
        cold_wake,
        warm_wake,
        warm_sleep,
        state,
        in_use,
        bucket_wake,
        restart_exec,
        migration,
        shared_ram,
    })
}

fn rows(f: Figures) -> Result<Vec<Row>> {
    let s = |d: Duration| d.as_secs_f64();
    Ok(vec![
        Row::ratio(
            SECTION,
            "warm wake vs cold wake (GET to a guest server)",
            s(f.warm_wake),
            s(f.cold_wake),
            "s",
            Target::RatioAtMost(0.35),
        )
        .with_note(format!(
            "median of {SAMPLES}; busybox httpd as a service in a 1 GiB tiny sprite, GET through the daemon's router right after POST .../sleep"
        )),
        Row::bounded(SECTION, "warm wake (GET to a guest server)", s(f.warm_wake), "s", 0.5),
        Row::bounded(SECTION, "warm sleep (POST .../sleep returns: QEMU gone, disk uploaded)", s(f.warm_sleep), "s", 1.5)
            .with_note("1 GiB guest; includes flushing and uploading the disk"),
        Row::ratio(
            SECTION,
            "state file vs guest memory in use",
            f.state as f64 / (1 << 20) as f64,
            f.in_use as f64 / (1 << 20) as f64,
            "MiB",
            Target::RatioAtMost(1.1),
        )
        .with_note("the guest wrote and freed 300 MiB, then holds 200 MiB of random bytes, idle 3 s (free pages are reported 2 s after their free); in use = its 1024 MiB of RAM - MemFree"),
        Row::ratio(
            SECTION,
            "warm wake on a second host from the bucket vs a local warm wake",
            s(f.bucket_wake),
            s(f.warm_wake),
            "s",
            Target::RatioAtMost(2.0),
        )
        .with_note("keep_memory: the state compressed in the bucket; the second host's cache empty"),
        Row::bounded(
            SECTION,
            "first exec per sprite after the daemon was killed (3 running), the longest",
            s(f.restart_exec),
            "s",
            1.0,
        )
        .with_note("SIGKILL; the next daemon adopts the QEMUs"),
        Row::ratio(
            SECTION,
            "shared RAM file vs migration to a file: save",
            s(f.shared_ram.0),
            s(f.migration.0),
            "s",
            Target::None,
        )
        .with_note("a bare 1 GiB guest (no disk) idle after boot; memory-backend-file,share=on + x-ignore-shared"),
        Row::ratio(
            SECTION,
            "shared RAM file vs migration to a file: resume to the agent's answer",
            s(f.shared_ram.1),
            s(f.migration.1),
            "s",
            Target::None,
        ),
        Row::ratio(
            SECTION,
            "shared RAM file vs migration to a file: bytes on disk",
            f.shared_ram.2 as f64 / (1 << 20) as f64,
            f.migration.2 as f64 / (1 << 20) as f64,
            "MiB",
            Target::None,
        )
        .with_note("why sprites use migration to a file: docs/VM.md"),
    ])
}
