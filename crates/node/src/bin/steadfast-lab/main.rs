//! `steadfast-lab`: groups of hosts in network namespaces to build, crash and heal, the demo,
//! the benchmarks, and the builtin backend they serve. Its lab hosts run their daemons from this
//! same executable (the daemon's commands, `steadfast`'s own, are here too), so a lab needs
//! nothing else built; the `steadfast` a user installs links none of this.

mod bench_cli;
mod lab_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use steadfast::commands::{self, DaemonCommand};

#[derive(Parser)]
#[command(
    name = "steadfast-lab",
    version,
    about = "Steadfast's lab: hosts in network namespaces, crashes, the demo and the benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, crash and heal groups of hosts in network namespaces.
    Lab {
        #[command(subcommand)]
        command: lab_cli::LabCommand,
    },
    /// Duplex beside unreplicated: the same load, the same crash of the primary's host, a heal,
    /// and a report side by side.
    Demo(lab_cli::DemoArgs),
    /// Measure failover and overhead in namespace labs, beside the reference systems.
    Bench {
        #[command(subcommand)]
        command: bench_cli::BenchCommand,
    },
    /// The builtin HTTP backend the lab and the demo use.
    Backend {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        node_name: String,
        #[arg(long)]
        data_tier: PathBuf,
    },
    #[command(flatten)]
    Daemon(DaemonCommand),
}

fn main() -> ExitCode {
    commands::init_logging(commands::LogFormat::Text);
    let cli = Cli::parse();
    let only_prints = match &cli.command {
        Command::Daemon(daemon) => daemon.only_prints(),
        Command::Lab {
            command: lab_cli::LabCommand::Status { .. },
        } => true,
        _ => false,
    };
    if only_prints {
        commands::die_on_closed_pipe();
    }
    commands::exit_code("steadfast-lab", dispatch(cli.command))
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Daemon(daemon) => daemon.run(),
        Command::Backend {
            listen,
            node_name,
            data_tier,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("building the backend's runtime")?;
            runtime
                .block_on(steadfast_lab::backend::serve(
                    steadfast_lab::backend::BackendConfig {
                        listen,
                        node_name,
                        data_tier,
                    },
                ))
                .context("builtin backend")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab { command } => lab_cli::run(command),
        Command::Demo(args) => lab_cli::demo(args),
        Command::Bench { command } => bench_cli::run(command),
    }
}
