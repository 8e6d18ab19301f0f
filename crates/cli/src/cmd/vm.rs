//! `wisp vm`: not built yet.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// List them.
    List,
}

pub async fn run(_global: &GlobalArgs, command: VmCommand) -> anyhow::Result<ExitCode> {
    match command {
        VmCommand::List => anyhow::bail!("`wisp vm list` is not implemented yet"),
    }
}
