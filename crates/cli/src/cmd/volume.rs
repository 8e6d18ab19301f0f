//! `wisp volume`: not built yet.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// List them.
    List,
}

pub async fn run(_global: &GlobalArgs, command: VolumeCommand) -> anyhow::Result<ExitCode> {
    match command {
        VolumeCommand::List => anyhow::bail!("`wisp volume list` is not implemented yet"),
    }
}
