//! `wisp vm run`: fork an image into a fresh volume, boot it, run one command
//! through the agent with stdio passed through, stop cleanly, delete the fork
//! (like `docker run --rm`, but a real VM).

use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
use wisp_vm::agent::{ExecEvent, ExecRequest, TtySize};
use wisp_vm::image;
use wisp_vm::{Machine, Runtime};
use wisp_volume::Store;

use crate::config::{open_store, GlobalArgs};

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a VM from an image, run CMD in it, stop it and delete its disk.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image to fork: a standard one (`tiny`, `debian`) or one made with `wisp image import`.
    #[arg(long, default_value = "debian")]
    pub image: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Guest memory: `1G`, `512M` or a number of MiB.
    #[arg(long, default_value = "1G")]
    pub memory: String,
    /// Keep the disk as volume NAME; if NAME exists, boot it instead of a new fork.
    #[arg(long, value_name = "NAME")]
    pub keep: Option<String>,
    /// Pass stdin through to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run the command on a terminal (PTY) in the guest.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub async fn run(global: &GlobalArgs, command: VmCommand) -> anyhow::Result<ExitCode> {
    match command {
        VmCommand::Run(args) => run_vm(global, args).await,
    }
}

/// `1G`, `512M`, `2048` (MiB) -> MiB.
fn parse_memory(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'G' | 'g')) => (&s[..i], 1024),
        Some((i, 'M' | 'm')) => (&s[..i], 1),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("bad memory size `{s}`; use e.g. `1G` or `512M`"))?;
    let mib = n * mult;
    anyhow::ensure!(
        (128..=1 << 20).contains(&mib),
        "memory size `{s}` out of range; use 128M to 1024G"
    );
    Ok(mib)
}

async fn run_vm(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let memory_mib = parse_memory(&args.memory)?;
    anyhow::ensure!(
        (1..=64).contains(&args.cpus),
        "bad cpu count `{}`; use 1 to 64",
        args.cpus
    );
    let kind = args.image.as_str();
    image::validate_name(kind)?;
    std::fs::create_dir_all(&global.home)
        .with_context(|| format!("cannot create WISP_HOME `{}`", global.home.display()))?;
    let store = open_store(global).await?;
    let runtime = Runtime::prepare(&global.home).await?;

    // The disk: an existing kept volume, or a fresh fork of the image.
    let (name, fresh) = match &args.keep {
        Some(name) if store.volume_info(name).await.is_ok() => (name.clone(), false),
        Some(name) => (name.clone(), true),
        None => (
            format!(
                "vm-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            ),
            true,
        ),
    };
    // From here on an interrupt (Ctrl-C, SIGTERM, SIGHUP) must not kill wisp outright:
    // the VM is stopped and the fork deleted first.
    let mut interrupts = Interrupts::new().context("cannot install signal handlers")?;
    if fresh {
        let img = image::get(&global.home, kind)?;
        store
            .fork(&img.volume, &img.checkpoint, &name)
            .await
            .with_context(|| format!("cannot fork image `{kind}`"))?;
    }
    let run_dir = runtime.home.join("run").join(&name);
    let result = match interrupts.pending() {
        Some(sig) => Ok(signal_exit(sig)),
        None => boot_and_run(&store, &runtime, &name, memory_mib, &args, &mut interrupts).await,
    };
    if args.keep.is_none() {
        if let Err(e) = store.delete_volume(&name).await {
            tracing::warn!(volume = %name, error = %e, "cannot delete the VM's volume");
        }
        // Sockets are gone with the machine; the logs of a deleted VM go too.
        if let Err(e) = std::fs::remove_dir_all(&run_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %run_dir.display(), error = %e, "cannot remove the VM's run folder");
            }
        }
    }
    result
}

/// SIGINT, SIGTERM and SIGHUP, caught so that each ends the run the clean way.
struct Interrupts {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Interrupts {
    fn new() -> std::io::Result<Interrupts> {
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next one and returns its number.
    async fn recv(&mut self) -> i32 {
        let kind = tokio::select! {
            _ = self.int.recv() => SignalKind::interrupt(),
            _ = self.term.recv() => SignalKind::terminate(),
            _ = self.hup.recv() => SignalKind::hangup(),
        };
        kind.as_raw_value()
    }

    /// One that already arrived, without waiting.
    fn pending(&mut self) -> Option<i32> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        [
            (&mut self.int, SignalKind::interrupt()),
            (&mut self.term, SignalKind::terminate()),
            (&mut self.hup, SignalKind::hangup()),
        ]
        .into_iter()
        .find_map(|(s, k)| s.poll_recv(&mut cx).is_ready().then(|| k.as_raw_value()))
    }
}

/// The shell's exit code for a process ended by signal `sig`.
fn signal_exit(sig: i32) -> ExitCode {
    ExitCode::from((128 + sig).clamp(0, 255) as u8)
}

async fn boot_and_run(
    store: &Store,
    runtime: &Runtime,
    name: &str,
    memory_mib: u64,
    args: &RunArgs,
    interrupts: &mut Interrupts,
) -> anyhow::Result<ExitCode> {
    let volume = Arc::new(store.open_volume(name).await?);
    let mut config = runtime.machine_config(volume.clone(), name).await;
    config.cpus = args.cpus;
    config.memory_mib = memory_mib;
    let started = tokio::select! {
        r = Machine::start(config) => Ok(r),
        sig = interrupts.recv() => Err(sig),
    };
    let outcome = match started {
        Ok(Ok(machine)) => {
            let code = tokio::select! {
                code = exec(&machine, args) => code,
                sig = interrupts.recv() => Ok(signal_exit(sig)),
            };
            let stopped = machine.stop().await;
            code.and_then(|c| stopped.map(|()| c).map_err(Into::into))
        }
        Ok(Err(e)) => Err(e.into()),
        // Interrupted during boot: dropping the half-started machine killed QEMU and
        // stopped its disk server; nothing in the guest is worth a clean stop yet.
        Err(sig) => Ok(signal_exit(sig)),
    };
    // The machine and its NBD server are gone (the server lets go of the volume once
    // its last connection closed): this is the last reference.
    match wisp_vm::machine::reclaim_volume(volume).await {
        Some(v) => v.close().await.context("cannot close the VM's volume")?,
        None => tracing::warn!(volume = %name, "volume still referenced; not closed"),
    }
    outcome
}

/// Runs the command through the agent, copying stdio, and maps its end to
/// an exit code (128 + signal for a killed process, as shells do).
async fn exec(machine: &Machine, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let stdin_fd = std::io::stdin().as_raw_fd();
    let tty = args.tty.then(|| {
        let (rows, cols) = wisp_vm::terminal::size(stdin_fd).unwrap_or((24, 80));
        TtySize { rows, cols }
    });
    let req = ExecRequest {
        argv: args.command.clone(),
        tty,
        ..Default::default()
    };
    let mut session = machine.agent().exec(req).await?;
    let input = session.input();
    let _raw = if args.tty && args.interactive {
        wisp_vm::terminal::RawMode::enable(stdin_fd)
    } else {
        None
    };
    if args.interactive {
        let mut rx = crate::stdio::stdin_chunks();
        let input = input.clone();
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if input.write(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = input.close_stdin().await;
        });
    } else {
        input.close_stdin().await?;
    }
    if args.tty {
        let input = input.clone();
        if let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        {
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some((rows, cols)) = wisp_vm::terminal::size(stdin_fd) {
                        let _ = input.resize(rows, cols).await;
                    }
                }
            });
        }
    }
    let mut output = crate::stdio::Output::new();
    loop {
        match session.recv().await? {
            Some(ExecEvent::Stdout(d)) => output.stdout(&d).await?,
            Some(ExecEvent::Stderr(d)) => output.stderr(&d).await?,
            Some(ExecEvent::Exit(st)) => {
                let code = match (st.code, st.signal) {
                    (Some(c), _) => c,
                    (None, Some(s)) => 128 + s,
                    (None, None) => 1,
                };
                return Ok(ExitCode::from((code & 0xff) as u8));
            }
            None => anyhow::bail!("the command's session ended without an exit status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_memory;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("1G").unwrap(), 1024);
        assert_eq!(parse_memory("512M").unwrap(), 512);
        assert_eq!(parse_memory("2048").unwrap(), 2048);
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("12X").is_err());
        assert!(parse_memory("64M").is_err());
    }
}
