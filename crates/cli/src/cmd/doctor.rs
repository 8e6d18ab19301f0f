//! `wisp doctor`: what this machine can run and what is missing.

use std::process::ExitCode;

use clap::Args;

use crate::config::GlobalArgs;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(_global: &GlobalArgs, _args: DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`wisp doctor` is not implemented yet")
}
