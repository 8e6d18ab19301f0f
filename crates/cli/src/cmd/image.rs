//! `wisp image`: build and list the standard images sprites are forked from.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use wisp_vm::image::{self, ImageKind};

use crate::config::{open_store, GlobalArgs};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a standard image: `tiny` (busybox, seconds) or `debian` (Debian 12, minutes).
    Build {
        /// `tiny` or `debian`.
        name: String,
        /// Rebuild even if the image is already built.
        #[arg(long)]
        force: bool,
    },
    /// List the built images.
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(global: &GlobalArgs, command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Build { name, force } => {
            let kind: ImageKind = name.parse()?;
            std::fs::create_dir_all(&global.home)
                .with_context(|| format!("cannot create WISP_HOME `{}`", global.home.display()))?;
            // The kernel comes first so that the image is bootable right away.
            let home = global.home.clone();
            let kernel =
                tokio::task::spawn_blocking(move || wisp_vm::Kernel::ensure(&home)).await??;
            eprintln!("wisp: guest kernel {}", kernel.version);
            let store = open_store(global).await?;
            let info = image::build(&store, &global.home, kind, force, &|line| {
                eprintln!("wisp: {line}")
            })
            .await
            .with_context(|| format!("cannot build image `{kind}`"))?;
            println!("{}\t{}@{}", info.name, info.volume, info.checkpoint);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::List { json } => {
            let images = image::list(&global.home)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                println!(
                    "{:<8} {:<24} {:<6} {:>8}  BUILT",
                    "NAME", "VOLUME", "CKPT", "FS MiB"
                );
                for i in &images {
                    println!(
                        "{:<8} {:<24} {:<6} {:>8}  {}",
                        i.name,
                        i.volume,
                        i.checkpoint,
                        i.fs_size >> 20,
                        humantime_secs(i.built_at)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` without a date crate.
fn humantime_secs(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_print_in_utc() {
        assert_eq!(super::humantime_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::humantime_secs(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
