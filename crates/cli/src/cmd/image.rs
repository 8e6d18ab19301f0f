//! `wisp image`: build the standard images, import your own, list and remove them.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use wisp_vm::image::{self, ImageKind};
use wisp_vm::import::ImportEvent;

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
    /// Import a root filesystem as image NAME: a tar archive (plain, .gz or .zst), an
    /// OCI image layout (a folder, or a tar of one) or a `docker save` archive. Layers
    /// are applied in order with their whiteouts; owners, modes, device nodes, xattrs
    /// and hard links are kept. Needs no root privileges.
    Import {
        /// The image's name (lowercase letters, digits, `.`, `_`, `-`), for
        /// `wisp server --image NAME` and `"image": "NAME"` in `POST /v1/sprites`.
        name: String,
        /// The archive or OCI layout folder.
        file: PathBuf,
        /// Replace an image of that name (its sprites keep their disks).
        #[arg(long)]
        force: bool,
    },
    /// Remove an image: its record and its volume (sprites already made from it keep
    /// their disks whole).
    #[command(alias = "remove")]
    Rm {
        /// The image's name.
        name: String,
    },
    /// List the standard and imported images.
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
        ImageCommand::Import { name, file, force } => {
            std::fs::create_dir_all(&global.home)
                .with_context(|| format!("cannot create WISP_HOME `{}`", global.home.display()))?;
            let store = open_store(global).await?;
            let bars = Bars::default();
            let info = wisp_vm::import::import(&store, &global.home, &name, &file, force, &|e| {
                bars.event(e)
            })
            .await;
            bars.clear();
            let info = info
                .with_context(|| format!("cannot import `{}` as image `{name}`", file.display()))?;
            // As after a build: the kernel too, so that the image is bootable right away
            // (after the import, so that a bad archive fails before any download).
            let home = global.home.clone();
            let kernel =
                tokio::task::spawn_blocking(move || wisp_vm::Kernel::ensure(&home)).await??;
            eprintln!("wisp: guest kernel {}", kernel.version);
            println!("{}\t{}@{}", info.name, info.volume, info.checkpoint);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Rm { name } => {
            let store = open_store(global).await?;
            let info = image::remove(&store, &global.home, &name)
                .await
                .with_context(|| format!("cannot remove image `{name}`"))?;
            println!("removed image {} (volume {})", info.name, info.volume);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::List { json } => {
            let images = image::list(&global.home)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                use crate::table::Align::{Left, Right};
                let mut table = crate::table::Table::new(&[
                    ("NAME", Left),
                    ("KIND", Left),
                    ("VOLUME", Left),
                    ("CKPT", Left),
                    ("FS MiB", Right),
                    ("BUILT", Left),
                    ("FROM", Left),
                ]);
                for i in &images {
                    let (kind, from) = match &i.source {
                        Some(s) => ("imported", format!("{} ({})", s.file, s.format)),
                        None => ("standard", "-".to_string()),
                    };
                    table.row([
                        i.name.clone(),
                        kind.to_string(),
                        i.volume.clone(),
                        i.checkpoint.clone(),
                        (i.fs_size >> 20).to_string(),
                        humantime_secs(i.built_at),
                        from,
                    ]);
                }
                table.print();
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Import progress: a bar per step measured in bytes on a terminal, plain lines
/// otherwise.
#[derive(Default)]
struct Bars {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
}

impl Bars {
    fn event(&self, e: ImportEvent) {
        let mut bar = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            ImportEvent::Note(line) => match bar.as_ref() {
                Some(b) => b.println(format!("wisp: {line}")),
                None => eprintln!("wisp: {line}"),
            },
            ImportEvent::Start { what, total } => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                if !std::io::stderr().is_terminal() {
                    return;
                }
                let b = indicatif::ProgressBar::new(total);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                ) {
                    b.set_style(style.progress_chars("=> "));
                }
                b.set_message(what);
                *bar = Some(b);
            }
            ImportEvent::Advance(done) => {
                if let Some(b) = bar.as_ref() {
                    b.set_position(done);
                }
            }
            ImportEvent::Finish => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
        }
    }

    fn clear(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
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
