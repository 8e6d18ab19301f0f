//! The wisp guest agent: PID 1 inside every sprite VM. See `docs/AGENT.md`.
//!
//! Modes:
//! - PID 1 (no arguments): boot the guest (see `init.rs`), then serve the protocol on the
//!   virtio-serial port named `org.wisp.agent` for the life of the machine.
//! - `--stdio` / `--listen PATH`: channel mode for tests on the host: serve the protocol on
//!   stdin/stdout or on a unix socket, with PID-1 duties disabled.

mod api;
mod channel;
mod checkpoints;
mod exec;
mod files;
mod freeze;
mod fsops;
mod init;
mod net;
mod ports;
mod reaper;
mod server;
mod services;
mod spawn;
mod sys;
mod tasks;
mod tunnel;
mod users;
mod watch;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use channel::Out;
use reaper::Reaper;
use server::{Agent, OnShutdown};
use services::Services;

const USAGE: &str =
    "usage: wisp-agent                      (as PID 1: boot the guest and serve the agent port)
       wisp-agent --stdio [--state-dir DIR]        (serve on stdin/stdout)
       wisp-agent --listen PATH [--state-dir DIR]  (serve on a unix socket)
       wisp-agent --version";

enum Mode {
    Pid1,
    Stdio,
    Listen(PathBuf),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // One binary, two programs: `sprite-env` (in the guest's PATH) is the in-sprite
    // API's client.
    let argv0 = std::env::args().next().unwrap_or_default();
    if Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "sprite-env")
    {
        std::process::exit(api::client_main(&args));
    }
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    let mut mode = None;
    let mut state_dir: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--version" => {
                println!(
                    "wisp-agent {} (protocol {})",
                    env!("CARGO_PKG_VERSION"),
                    wisp_proto::PROTOCOL_VERSION
                );
                return;
            }
            "--stdio" => mode = Some(Mode::Stdio),
            "--listen" => match it.next() {
                Some(p) => mode = Some(Mode::Listen(p.into())),
                None => usage_exit("--listen needs a socket path"),
            },
            "--state-dir" => match it.next() {
                Some(p) => state_dir = Some(p.into()),
                None => usage_exit("--state-dir needs a folder"),
            },
            // Kernels pass unknown command-line words to init as arguments: ignore them as PID 1.
            _ if pid1 => {}
            other => usage_exit(&format!("unknown argument `{other}`")),
        }
    }
    let mode = match mode {
        Some(m) => m,
        None if pid1 => Mode::Pid1,
        None => usage_exit("not PID 1: choose --stdio or --listen"),
    };
    match mode {
        Mode::Pid1 => run_pid1(),
        Mode::Stdio | Mode::Listen(_) => {
            // Orphans of our children come to us, as they would to PID 1.
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            sys::KILL_CHILDREN_WITH_AGENT.store(true, std::sync::atomic::Ordering::Relaxed);
            let dir = state_dir.unwrap_or_else(|| std::env::temp_dir().join("wisp-agent-state"));
            let reaper = Reaper::start();
            let services = Services::new(dir.join("services"), dir.join("log"), reaper.clone());
            services.start_all();
            let hub = api::Hub::new(services.clone());
            if let Err(e) = api::serve(hub.clone(), &dir.join("api.sock")) {
                eprintln!("wisp-agent: cannot serve the in-sprite API: {e}");
            }
            let r = match mode {
                Mode::Listen(path) => serve_listen(&path, &reaper, &hub),
                _ => {
                    let agent = Agent::new(
                        Out::new(Box::new(io::stdout())),
                        reaper,
                        hub,
                        OnShutdown::Exit,
                    );
                    agent.serve(&mut io::stdin().lock())
                }
            };
            if let Err(e) = r {
                eprintln!("wisp-agent: {e}");
                std::process::exit(1);
            }
        }
    }
}

fn usage_exit(msg: &str) -> ! {
    eprintln!("wisp-agent: {msg}\n{USAGE}");
    std::process::exit(2);
}

fn serve_listen(path: &PathBuf, reaper: &Arc<Reaper>, hub: &Arc<api::Hub>) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    for conn in l.incoming() {
        let conn = conn?;
        let w = conn.try_clone()?;
        let agent = Agent::new(
            Out::new(Box::new(w)),
            reaper.clone(),
            hub.clone(),
            OnShutdown::Exit,
        );
        let mut r = conn;
        if let Err(e) = agent.serve(&mut r) {
            eprintln!("wisp-agent: connection: {e}");
        }
    }
    Ok(())
}

fn run_pid1() -> ! {
    let reaper = Reaper::start();
    init::boot(&reaper);
    let services = Services::new(
        "/etc/wisp/services".into(),
        "/var/log/wisp".into(),
        reaper.clone(),
    );
    // Services start before the port opens: they do not depend on a host connecting.
    services.start_all();
    let port = init::open_port();
    let out = match port.try_clone() {
        Ok(w) => Out::new(Box::new(w)),
        Err(e) => {
            init::log(&format!("cannot duplicate the agent port: {e}"));
            Out::new(Box::new(io::sink()))
        }
    };
    let hub = api::Hub::new(services);
    init::install_sprite_env();
    checkpoints::prepare();
    if let Err(e) = api::serve(hub.clone(), Path::new(api::SOCKET)) {
        init::log(&format!(
            "cannot serve the in-sprite API on {}: {e}",
            api::SOCKET
        ));
    }
    let agent = Agent::new(out, reaper, hub, OnShutdown::PowerOff);
    // Guest uptime at this point: compare with the kernel's timestamps on the console.
    init::log(&format!("ready (uptime {} s)", init::uptime()));
    // In its own thread: a write to the port blocks until a host is connected.
    let a = agent.clone();
    let _ = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || a.announce());
    let mut port = port;
    loop {
        // PID 1 must never exit (the kernel would panic): survive even a bug.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| agent.serve(&mut port)));
        match r {
            // `serve` reads on through EOF on the port (see `Agent::serve`): not reached.
            Ok(Ok(())) => std::thread::sleep(Duration::from_millis(20)),
            Ok(Err(e)) => {
                init::log(&format!("agent port: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => init::log("serve loop panicked; restarting it"),
        }
    }
}
