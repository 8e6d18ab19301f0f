//! `wisp volume`: create, inspect, serve over NBD, checkpoint, fork and
//! collect garbage of block volumes (thin glue over `wisp_volume`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use wisp_volume::{Durability, GcOptions, Store, StoreConfig};

use crate::config::GlobalArgs;

/// Local cache settings shared by every volume subcommand.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// Folder for volume caches and local metadata [default: $WISP_HOME/cache].
    #[arg(long, global = true, env = "WISP_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Bound on clean cached data per volume, like 10G or 512M.
    #[arg(long, global = true, env = "WISP_CACHE_SIZE", default_value = "10G", value_parser = parse_size)]
    pub cache_size: u64,
    /// Bound on dirty (not yet uploaded) data per volume; writes beyond it wait
    /// for the uploader [default: half of --cache-size].
    #[arg(long, global = true, env = "WISP_DIRTY_LIMIT", value_parser = parse_size)]
    pub dirty_limit: Option<u64>,
    /// `local`: FLUSH waits for the local disk; `remote`: also for the upload.
    #[arg(long, global = true, env = "WISP_DURABILITY", default_value = "local", value_parser = parse_durability)]
    pub durability: Durability,
    /// Delay between background uploads of dirty data, like 1s or 500ms.
    #[arg(long, global = true, env = "WISP_UPLOAD_DELAY", default_value = "1s", value_parser = humantime_like)]
    pub upload_delay: Duration,
    /// How long object-store outages are retried before an operation fails.
    #[arg(long, global = true, env = "WISP_STORE_TIMEOUT", default_value = "60s", value_parser = humantime_like)]
    pub store_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty, thin-provisioned volume.
    Create {
        name: String,
        /// Size, like 100G, 512M or 4096 (bytes).
        #[arg(long, default_value = "100G", value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// List volumes.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Show a volume: size, origin, checkpoints and the URL of its durable state.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Delete a volume (its data goes at the next gc, unless forks need it).
    Delete {
        name: String,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Copy a raw image file into a volume (all-zero chunks stay unmapped), creating the
    /// volume when it does not exist (as large as the file, rounded up to 4 KiB, or --size).
    Import {
        name: String,
        file: PathBuf,
        /// Size of the volume to create, like 100G (only when NAME does not exist yet).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Copy a volume, or one checkpoint with NAME@CHECKPOINT, to a raw file.
    Export {
        source: String,
        file: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Serve a volume over NBD until SIGTERM/SIGINT, then upload and release it.
    Serve {
        name: String,
        /// `unix:PATH` or `tcp:HOST:PORT`.
        #[arg(long)]
        nbd: wisp_nbd::Listen,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Freeze the current state as the next checkpoint (v0, v1, ...).
    Checkpoint {
        name: String,
        #[arg(short = 'm', long = "message")]
        comment: Option<String>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// List a volume's checkpoints.
    Checkpoints {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Make a volume's state equal to a checkpoint (later checkpoints stay).
    Restore {
        name: String,
        checkpoint: String,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Create NEWNAME as a copy-on-write fork of NAME@CHECKPOINT.
    Fork {
        source: String,
        new_name: String,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Byte ranges that differ between checkpoints A and B (or A and now).
    Diff {
        name: String,
        a: String,
        b: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Upload all dirty data of a volume and ship its metadata.
    Sync {
        name: String,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Delete unreferenced objects and compact sparse segments.
    Gc {
        /// Keep unreferenced objects younger than this, like 1h or 0s.
        #[arg(long, default_value = "1h", value_parser = humantime_like)]
        grace: Duration,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

/// Parses `100G`, `512M`, `64K`, `1T` (powers of 1024) or plain bytes.
pub fn parse_size(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let mult: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => {
                    return Err(format!(
                        "invalid size `{input}`: unknown unit; use K, M, G or T"
                    ))
                }
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size `{input}`: expected a number like 100G or 512M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size `{input}`: too large"))
}

fn parse_durability(input: &str) -> Result<Durability, String> {
    match input {
        "local" => Ok(Durability::Local),
        "remote" => Ok(Durability::Remote),
        _ => Err(format!("invalid durability `{input}`: use local or remote")),
    }
}

/// Parses `1h`, `30s`, `500ms`, `2m`, `0`.
pub fn humantime_like(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split]
        .parse()
        .map_err(|_| format!("invalid duration `{input}`: expected like 1h, 30s or 500ms"))?;
    let d = match &s[split..] {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("invalid duration `{input}`: use ms, s, m or h")),
    };
    Ok(d)
}

async fn open_store(global: &GlobalArgs, cache: &CacheArgs) -> anyhow::Result<Store> {
    let url = global.store_url()?;
    let cache_dir = cache
        .cache_dir
        .clone()
        .unwrap_or_else(|| global.home.join("cache"));
    let mut config = StoreConfig::new(url.clone(), cache_dir);
    config.cache_size = cache.cache_size;
    config.dirty_limit = cache.dirty_limit.unwrap_or(cache.cache_size / 2);
    config.durability = cache.durability;
    config.upload_delay = cache.upload_delay;
    config.store_timeout = cache.store_timeout;
    Store::open(config)
        .await
        .with_context(|| format!("cannot open store `{url}`"))
}

fn progress_bar(total: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    Some(bar)
}

/// Copies `file` (`total` bytes) into volume `name` with a progress bar; returns the
/// bytes imported.
async fn import(store: &Store, name: &str, file: &Path, total: u64) -> anyhow::Result<u64> {
    let vol = store.open_volume(name).await?;
    let bar = progress_bar(total, "import");
    let res = vol
        .import_file(file, &|done, _| {
            if let Some(b) = &bar {
                b.set_position(done);
            }
        })
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let closed = vol.close().await;
    let n = res?;
    closed?;
    Ok(n)
}

fn split_at_checkpoint(source: &str) -> (&str, Option<&str>) {
    match source.split_once('@') {
        Some((n, c)) => (n, Some(c)),
        None => (source, None),
    }
}

pub async fn run(global: &GlobalArgs, command: VolumeCommand) -> anyhow::Result<ExitCode> {
    match command {
        VolumeCommand::Create { name, size, cache } => {
            let store = open_store(global, &cache).await?;
            let info = store.create_volume(&name, size).await?;
            println!(
                "created volume {} ({} bytes) at {}",
                info.name, info.size, info.url
            );
        }
        VolumeCommand::List { json, cache } => {
            let store = open_store(global, &cache).await?;
            let list = store.list_volumes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                use crate::table::Align::{Left, Right};
                let mut table = crate::table::Table::new(&[
                    ("NAME", Left),
                    ("SIZE", Right),
                    ("ORIGIN", Left),
                    ("URL", Left),
                ]);
                for v in list {
                    table.row([
                        v.name,
                        v.size.to_string(),
                        v.origin.unwrap_or_else(|| "-".into()),
                        v.url,
                    ]);
                }
                table.print();
            }
        }
        VolumeCommand::Info { name, json, cache } => {
            let store = open_store(global, &cache).await?;
            let info = store.volume_info(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("name:       {}", info.name);
                println!("id:         {}", info.id);
                println!("size:       {}", info.size);
                println!("chunk size: {}", info.chunk_size);
                println!("origin:     {}", info.origin.as_deref().unwrap_or("-"));
                println!("url:        {}", info.url);
            }
        }
        VolumeCommand::Delete { name, cache } => {
            let store = open_store(global, &cache).await?;
            store.delete_volume(&name).await?;
            println!("deleted volume {name}");
        }
        VolumeCommand::Import {
            name,
            file,
            size,
            cache,
        } => {
            let store = open_store(global, &cache).await?;
            let total = std::fs::metadata(&file)
                .with_context(|| format!("cannot read `{}`", file.display()))?
                .len();
            let created = match store.volume_info(&name).await {
                Ok(info) => {
                    if let Some(size) = size {
                        anyhow::bail!(
                            "volume `{name}` exists ({} bytes); --size {size} applies only when \
                             import creates the volume",
                            info.size
                        );
                    }
                    false
                }
                Err(wisp_volume::VolumeError::NotFound(_)) => {
                    let size = size.unwrap_or_else(|| total.div_ceil(4096).max(1) * 4096);
                    let info = store.create_volume(&name, size).await?;
                    println!("created volume {} ({} bytes)", info.name, info.size);
                    true
                }
                Err(e) => return Err(e.into()),
            };
            let imported = import(&store, &name, &file, total).await;
            if imported.is_err() && created {
                // No half-imported volume is left behind by the import that made it.
                if let Err(e) = store.delete_volume(&name).await {
                    tracing::warn!(volume = %name, error = %e, "cannot delete the volume this import created");
                }
            }
            let n = imported?;
            println!("imported {n} bytes into volume {name}");
        }

        VolumeCommand::Export {
            source,
            file,
            cache,
        } => {
            let store = open_store(global, &cache).await?;
            let (name, checkpoint) = split_at_checkpoint(&source);
            let info = store.volume_info(name).await?;
            let bar = progress_bar(info.size, "export");
            let progress = |done: u64, total: u64| {
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done);
                }
            };
            let n = match checkpoint {
                Some(c) => store.export_checkpoint(name, c, &file, &progress).await?,
                None => {
                    let vol = store.open_volume(name).await?;
                    let res = vol.export_file(&file, &progress).await;
                    let closed = vol.close().await;
                    let n = res?;
                    closed?;
                    n
                }
            };
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            println!("exported {n} bytes of {source} to {}", file.display());
        }
        VolumeCommand::Serve { name, nbd, cache } => {
            let store = open_store(global, &cache).await?;
            let vol = store.open_volume(&name).await?;
            let mut server = wisp_nbd::Server::new();
            server.add_export(&name, Arc::new(vol.clone()));
            let bound = match server.bind(&nbd).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = vol.close().await;
                    return Err(e).with_context(|| format!("cannot listen on {nbd}"));
                }
            };
            println!("serving volume {name} on {}", bound.local_addr());
            let served = bound.serve(shutdown_signal()).await;
            let closed = vol.close().await;
            served.context("nbd server failed")?;
            closed.with_context(|| {
                format!(
                    "volume `{name}` could not be synced; its dirty data stays in the local cache"
                )
            })?;
            eprintln!("volume {name} synced and released");
        }
        VolumeCommand::Checkpoint {
            name,
            comment,
            cache,
        } => {
            let store = open_store(global, &cache).await?;
            let vol = store.open_volume(&name).await?;
            let res = vol.checkpoint(comment).await;
            let closed = vol.close().await;
            let cp = res?;
            closed?;
            println!("{}", cp.id);
        }
        VolumeCommand::Checkpoints { name, json, cache } => {
            let store = open_store(global, &cache).await?;
            let vol = store.open_volume(&name).await?;
            let res = vol.checkpoints().await;
            let closed = vol.close().await;
            let list = res?;
            closed?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for c in list {
                    let when = wisp_volume::format_time(c.created);
                    println!("{:<6} {} {}", c.id, when, c.comment.unwrap_or_default());
                }
            }
        }
        VolumeCommand::Restore {
            name,
            checkpoint,
            cache,
        } => {
            let store = open_store(global, &cache).await?;
            let vol = store.open_volume(&name).await?;
            let res = vol.restore(&checkpoint).await;
            let closed = vol.close().await;
            res?;
            closed?;
            println!("restored volume {name} to {checkpoint}");
        }
        VolumeCommand::Fork {
            source,
            new_name,
            cache,
        } => {
            let (name, checkpoint) = split_at_checkpoint(&source);
            let Some(checkpoint) = checkpoint else {
                anyhow::bail!(
                    "invalid fork source `{source}`: expected NAME@CHECKPOINT, like base@v0"
                );
            };
            let store = open_store(global, &cache).await?;
            let info = store.fork(name, checkpoint, &new_name).await?;
            println!("forked {source} into volume {} at {}", info.name, info.url);
        }
        VolumeCommand::Diff {
            name,
            a,
            b,
            json,
            cache,
        } => {
            let store = open_store(global, &cache).await?;
            let vol = store.open_volume(&name).await?;
            let res = vol.diff(&a, b.as_deref()).await;
            let closed = vol.close().await;
            let ranges = res?;
            closed?;
            if json {
                let v: Vec<[u64; 2]> = ranges.iter().map(|r| [r.start, r.end]).collect();
                println!("{}", serde_json::to_string(&v)?);
            } else {
                for r in ranges {
                    println!("{}-{} ({} bytes)", r.start, r.end, r.end - r.start);
                }
            }
        }
        VolumeCommand::Sync { name, cache } => {
            let store = open_store(global, &cache).await?;
            let vol = store.open_volume(&name).await?;
            let res = vol.sync().await;
            let closed = vol.close().await;
            let report = res?;
            closed?;
            println!(
                "synced volume {name}: {} chunks, {} bytes in {} segments",
                report.chunks_uploaded, report.bytes_uploaded, report.segments_written
            );
        }
        VolumeCommand::Gc { grace, cache } => {
            let store = open_store(global, &cache).await?;
            let bar = progress_bar(0, "gc");
            let report = store
                .gc_with_progress(
                    GcOptions {
                        grace,
                        ..GcOptions::default()
                    },
                    &|done, total| {
                        if let Some(b) = &bar {
                            b.set_length(total);
                            b.set_position(done);
                        }
                    },
                )
                .await?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            println!(
                "gc: deleted {} objects ({} bytes), compacted {} segments, purged {} volumes",
                report.objects_deleted,
                report.bytes_freed,
                report.segments_compacted,
                report.volumes_purged
            );
            for v in report.volumes_skipped {
                println!("gc: skipped volume {v} (in use)");
            }
            if report.segments_held > 0 {
                println!(
                    "gc: kept {} unreferenced segments that running forks may still read",
                    report.segments_held
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_size("100G"), Ok(100 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("12Q").unwrap_err().contains("`12Q`"));
        assert!(parse_size("abc").unwrap_err().contains("`abc`"));
    }
}
