//! `steadfast`: the node daemon, the witness, and the command line around them.

mod announce;
mod bench_cli;
mod control;
mod daemon;
mod dead_man;
mod health;
mod hooks;
mod lab_cli;
mod plane;
mod settings;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "steadfast",
    version,
    about = "Keeps TCP services answering through the crash of the host that serves them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon (a member of the group).
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the witness voter of a two-node group.
    Witness {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file.
    CheckConfig { file: PathBuf },
    /// Show a running daemon's status.
    Status {
        /// The daemon's control socket.
        #[arg(long, conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// Read the control socket's path from this configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Print Steadfast's nftables tables (the dead-man switch, the ingress guard, the lab's
        /// partitions) as the kernel of this network namespace holds them, in `nft list
        /// ruleset` syntax. Reads the kernel directly: no daemon needed, but CAP_NET_ADMIN.
        #[arg(long, conflicts_with_all = ["json", "socket", "config"])]
        ruleset: bool,
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STEADFAST_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error")
            }),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if only_prints(&cli.command) {
        // `steadfast status | head` ends quietly, like any Unix tool, instead of panicking
        // on the closed pipe (Rust ignores SIGPIPE). Not for the daemons and the lab tools:
        // their sockets rely on write errors, not the signal.
        // SAFETY: restores the default disposition of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("steadfast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Commands whose whole work is printing what they read.
fn only_prints(command: &Command) -> bool {
    matches!(
        command,
        Command::Status { .. }
            | Command::CheckConfig { .. }
            | Command::Lab {
                command: lab_cli::LabCommand::Status { .. },
            }
    )
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => daemon::run(&config, false).map(|()| ExitCode::SUCCESS),
        Command::Witness { config } => daemon::run(&config, true).map(|()| ExitCode::SUCCESS),
        Command::CheckConfig { file } => match settings::Settings::load(&file) {
            Ok(s) => {
                s.refuse_unimplemented_modes(&file)?;
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e:#}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Status { ruleset: true, .. } => {
            print!("{}", status::ruleset_text()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            socket,
            config,
            json,
            ruleset: false,
        } => {
            let socket = match (socket, config) {
                (Some(s), _) => s,
                (None, Some(c)) => settings::Settings::load(&c)?.control_socket,
                (None, None) => PathBuf::from(steadfast_core::config::DEFAULT_CONTROL_SOCKET),
            };
            let status = control::query_status(&socket)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
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
