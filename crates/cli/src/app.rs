//! Argument parsing, logging set-up and dispatch to one subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cmd;
use crate::config::GlobalArgs;

/// wisp: Linux VMs ("sprites") that start in seconds, sleep when idle and
/// checkpoint like git.
#[derive(Debug, Parser)]
#[command(name = "wisp", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the wisp daemon: REST API, sprites, sleep and wake.
    Server(cmd::server::ServerArgs),
    /// Create, list, checkpoint and delete sprites through the daemon's API.
    Sprite(cmd::sprite::SpriteArgs),
    /// Manage block volumes (create, serve over NBD, checkpoint, fork, ...).
    #[command(subcommand)]
    Volume(cmd::volume::VolumeCommand),
    /// Build the standard images, import your own, list and remove them: what sprites fork.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Run commands in real VMs without a daemon.
    #[command(subcommand)]
    Vm(cmd::vm::VmCommand),
    /// Check what this machine can run and what is missing.
    Doctor(cmd::doctor::DoctorArgs),
    /// Print a shell completion script: `wisp completions bash > /etc/bash_completion.d/wisp`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Gives memory that glibc keeps after frees back to the system, once a
/// second. The volume engine moves data in 256 KiB chunks and multi-MiB
/// buffers; glibc keeps such frees in per-thread arenas (its mmap threshold
/// rises after the first large free), so an idle sprite held 8-16 MiB of
/// freed garbage. Trimming off the data path costs the hot path nothing,
/// unlike a fixed mmap threshold, which cost seq-read throughput a third.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe { libc::malloc_trim(0) };
    }
}

/// Parses arguments, runs one command and maps its outcome to an exit code.
/// Errors print as `wisp: <message>: <cause>...` on stderr.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.spawn(return_freed_memory());
            rt.block_on(dispatch(cli))
        });
    match result {
        Ok(code) => code,
        Err(err) => {
            let mut message = format!("wisp: {err}");
            for cause in err.chain().skip(1) {
                message.push_str(&format!(": {cause}"));
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Server(args) => cmd::server::run(&global, args).await,
        Command::Sprite(args) => cmd::sprite::run(&global, args).await,
        Command::Volume(command) => cmd::volume::run(&global, command).await,
        Command::Image(command) => cmd::image::run(&global, command).await,
        Command::Vm(command) => cmd::vm::run(&global, command).await,
        Command::Doctor(args) => cmd::doctor::run(&global, args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics when its writer fails (a
            // closed pipe, as with `| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "wisp", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG`. Default: `info` for the CLI's own messages
/// (the binary's modules, `wisp::cmd::*`; a target matches by prefix, so a bare `wisp`
/// would take in every `wisp_*` crate) and for the control plane (the daemon's sprites
/// waking and sleeping), `warn` for the other libraries, whose routine events would mix
/// into the stderr of a command run with `wisp vm run`.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // An empty RUST_LOG counts as unset (tracing would read it as "everything").
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new("warn,wisp::cmd=info,wisp_control=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
