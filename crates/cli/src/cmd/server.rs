//! `wisp server`: the daemon.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::GlobalArgs;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address for the REST API.
    #[arg(long, env = "WISP_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Interval of background gc and compaction of the store, like 10m or 1h (0 disables).
    #[arg(long, env = "WISP_GC_INTERVAL", default_value = "10m", value_parser = crate::cmd::volume::humantime_like)]
    pub gc_interval: std::time::Duration,
    /// Put a sprite to sleep (warm: memory kept) after this long without a request,
    /// like 30s or 5m; 0 never. A sprite's own `idle_timeout` overrides it.
    #[arg(long, env = "WISP_IDLE_TIMEOUT", default_value = "30s", value_parser = crate::cmd::volume::humantime_like)]
    pub idle_timeout: std::time::Duration,
    /// A warm sprite goes cold (its memory dropped, or kept in the bucket with
    /// `keep_memory`) after this long; 0 never. A sprite's own `cold_after` overrides it.
    #[arg(long, env = "WISP_COLD_AFTER", default_value = "10m", value_parser = crate::cmd::volume::humantime_like)]
    pub cold_after: std::time::Duration,
    /// Disk space warm sprites' saved states may take on this host, like 20G; past it
    /// the longest-sleeping ones go cold first.
    #[arg(long, env = "WISP_WARM_BUDGET", default_value = "20G", value_parser = crate::cmd::volume::parse_size)]
    pub warm_budget: u64,
    /// How idle sprites sleep: `warm` (memory kept on this host's disk; the next wake
    /// resumes) or `cold` (memory dropped; the next wake boots).
    #[arg(long, env = "WISP_SLEEP_MODE", default_value = "warm", value_parser = ["warm", "cold"])]
    pub sleep_mode: String,
    /// Sprite URLs are http://NAME.DOMAIN:PORT; the default resolves to loopback.
    #[arg(long, env = "WISP_SPRITE_DOMAIN", default_value = "localhost")]
    pub sprite_domain: String,
    /// Whether API calls need the token in $WISP_HOME/token: `yes` (the default, on
    /// loopback too: any local user could otherwise run commands as root in every
    /// sprite), `auto` (only when listening beyond loopback) or `no` (anyone who reaches
    /// the port may do anything).
    #[arg(long, env = "WISP_REQUIRE_TOKEN", default_value = "yes", value_parser = ["yes", "auto", "no"])]
    pub require_token: String,
    /// The image new sprites fork when a create names none: a standard image
    /// (`debian`, `tiny`) or one made with `wisp image import`.
    #[arg(long, env = "WISP_IMAGE", default_value = "debian", value_parser = parse_image_name)]
    pub image: String,
    /// Sprites booting (or resuming) at once; more wait their turn. Default: this
    /// host's cores (a boot keeps its vCPUs busy; more at once than cores starve
    /// each other).
    #[arg(long, env = "WISP_BOOTS_AT_ONCE", value_parser = clap::value_parser!(u32).range(1..))]
    pub boots_at_once: Option<u32>,
    /// Wakes that may wait for a boot to end; one more is refused with a 503 and
    /// `Retry-After` (the client retries) rather than left to fail.
    #[arg(long, env = "WISP_MAX_QUEUED_WAKES", default_value_t = wisp_control::boot_queue::DEFAULT_MAX_QUEUED)]
    pub max_queued_wakes: usize,
}

pub async fn run(global: &GlobalArgs, args: ServerArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&global.home)
        .with_context(|| format!("cannot create WISP_HOME `{}`", global.home.display()))?;
    let config = wisp_control::ServerConfig {
        listen: args.listen,
        home: global.home.clone(),
        store: global.store_url()?,
        image: args.image,
        gc_interval: args.gc_interval,
        sleep: wisp_control::sleep::SleepPolicy {
            idle_timeout: args.idle_timeout,
            cold_after: args.cold_after,
            warm_budget: args.warm_budget,
            // A restarted daemon adopts the machines: sprites survive it.
            outlive_daemon: true,
            mode: if args.sleep_mode == "cold" {
                wisp_control::machines::SleepMode::Cold
            } else {
                wisp_control::machines::SleepMode::Warm
            },
        },
        wakes: wisp_control::boot_queue::WakeLimits {
            boots_at_once: args
                .boots_at_once
                .map_or_else(wisp_control::boot_queue::host_cores, |n| n as usize),
            max_queued: args.max_queued_wakes,
        },
        sprite_domain: args.sprite_domain,
        require_token: match args.require_token.as_str() {
            "yes" => true,
            "no" => false,
            _ => !args.listen.ip().is_loopback(),
        },
    };
    let server = wisp_control::Server::bind(config).await?;
    let addr = server.local_addr()?;
    // The line tests and scripts wait for; keep its shape stable.
    println!("wisp server listening on http://{addr}");
    tracing::info!(%addr, "wisp server ready");
    server.serve(shutdown_signal()).await?;
    tracing::info!("wisp server stopped");
    Ok(ExitCode::SUCCESS)
}

fn parse_image_name(name: &str) -> Result<String, String> {
    wisp_vm::image::validate_name(name)
        .map(|()| name.to_string())
        .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
