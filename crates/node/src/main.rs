//! `steadfast`: the node daemon, the witness, and the commands that inspect them. What a user
//! installs; the lab, the demo and the benchmarks are `steadfast-lab`'s.

use std::process::ExitCode;

use clap::Parser;
use steadfast::commands::{self, DaemonCommand};

#[derive(Parser)]
#[command(
    name = "steadfast",
    version,
    about = "Keeps TCP services answering through the crash of the host that serves them"
)]
struct Cli {
    #[command(subcommand)]
    command: DaemonCommand,
}

fn main() -> ExitCode {
    commands::init_logging();
    let cli = Cli::parse();
    if cli.command.only_prints() {
        commands::die_on_closed_pipe();
    }
    commands::exit_code("steadfast", cli.command.run())
}
