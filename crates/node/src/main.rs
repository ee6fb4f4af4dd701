//! `steadfast`: the node daemon, the witness, and the commands that inspect them. What a user
//! installs; the lab, the demo and the benchmarks are `steadfast-lab`'s.

use std::process::ExitCode;

use clap::Parser;
use steadfast::commands::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::init_logging(cli.log_format);
    if cli.command.only_prints() {
        commands::die_on_closed_pipe();
    }
    commands::exit_code("steadfast", cli.command.run())
}
