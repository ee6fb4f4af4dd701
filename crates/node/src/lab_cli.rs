//! `steadfast lab …` and `steadfast demo`: the command line over the steadfast-lab crate.

use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum LabCommand {}

#[derive(Args)]
pub struct DemoArgs {}

pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {}
}

pub fn demo(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the demo is not wired yet")
}
