//! `wisp image`: not built yet.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List them.
    List,
}

pub async fn run(_global: &GlobalArgs, command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::List => anyhow::bail!("`wisp image list` is not implemented yet"),
    }
}
