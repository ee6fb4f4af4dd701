//! The daemon's command line, shared by both executables: run a member or a witness, check a
//! configuration, show a running daemon's status, move the service or put a node in standby.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{control, daemon, settings, status};

/// The `steadfast` executable's command line; also what its man pages and shell completions are
/// generated from (`cargo xtask assets`).
#[derive(Parser)]
#[command(
    name = "steadfast",
    version,
    about = "Keeps TCP services answering through the crash of the host that serves them"
)]
pub struct Cli {
    /// How log lines on stderr look: text, or one JSON object per line for a log collector.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: DaemonCommand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event; colours only on a terminal.
    Text,
    /// One JSON object per event: timestamp, level, target, fields.
    Json,
}

#[derive(Subcommand)]
pub enum DaemonCommand {
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
    /// Planned switchover: the primary hands its open connections to member NODE, which
    /// carries them on (duplex: none is reset), and stays a backup. Run it on the primary.
    /// Prints how long the service stalled.
    Move {
        /// The member to move the service to (in duplex, the primary's backup).
        #[arg(long, value_name = "NODE")]
        to: u16,
        #[command(flatten)]
        daemon: DaemonSocket,
    },
    /// Standby on: this node serves nothing and never stands (a primary first hands its
    /// connections over, as `move` does); kept over a restart of the daemon. Off: it may
    /// serve again.
    Standby {
        #[arg(value_enum)]
        state: Switch,
        #[command(flatten)]
        daemon: DaemonSocket,
    },
}

/// Which daemon a command talks to.
#[derive(clap::Args)]
pub struct DaemonSocket {
    /// The daemon's control socket.
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Read the control socket's path from this configuration.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl DaemonSocket {
    fn path(self) -> anyhow::Result<PathBuf> {
        control_socket(self.socket, self.config)
    }
}

fn control_socket(socket: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => settings::Settings::load(&c)?.control_socket,
        (None, None) => PathBuf::from(steadfast_core::config::DEFAULT_CONTROL_SOCKET),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl DaemonCommand {
    /// Whether the command's whole work is printing what it reads.
    pub fn only_prints(&self) -> bool {
        matches!(
            self,
            DaemonCommand::Status { .. } | DaemonCommand::CheckConfig { .. }
        )
    }

    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            DaemonCommand::Run { config } => {
                daemon::run(&config, false).map(|()| ExitCode::SUCCESS)
            }
            DaemonCommand::Witness { config } => {
                daemon::run(&config, true).map(|()| ExitCode::SUCCESS)
            }
            DaemonCommand::CheckConfig { file } => match settings::Settings::load(&file) {
                Ok(s) => {
                    s.refuse_unimplemented_modes(&file)?;
                    println!("{}: ok", file.display());
                    // Active mode's choices, defaults included: what the group will run.
                    for service in s.services.iter().filter(|s| s.active) {
                        println!(
                            "service {}: mode active, delivery = \"{}\", read_policy = \"{}\"",
                            service.name,
                            service.delivery.name(),
                            service.read_policy.name()
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e:#}");
                    Ok(ExitCode::FAILURE)
                }
            },
            DaemonCommand::Status { ruleset: true, .. } => {
                print!("{}", status::ruleset_text()?);
                Ok(ExitCode::SUCCESS)
            }
            DaemonCommand::Status {
                socket,
                config,
                json,
                ruleset: false,
            } => {
                let socket = control_socket(socket, config)?;
                let status = control::query_status(&socket)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print!("{}", status.render());
                }
                Ok(ExitCode::SUCCESS)
            }
            DaemonCommand::Move { to, daemon } => {
                let answer = control::command(&daemon.path()?, &format!("move {to}"))?;
                println!(
                    "moved to node {to}: {} connections handed over in {:.1} ms; node {to} \
                     primary {:.1} ms after the hand-over began (the service's stall until \
                     its election; its own status gives the rebuild that follows)",
                    answer["handed_over"],
                    answer["hand_over_ms"].as_f64().unwrap_or(f64::NAN),
                    answer["stall_ms"].as_f64().unwrap_or(f64::NAN),
                );
                Ok(ExitCode::SUCCESS)
            }
            DaemonCommand::Standby { state, daemon } => {
                let on = state == Switch::On;
                let line = format!("standby {}", if on { "on" } else { "off" });
                let answer = control::command(&daemon.path()?, &line)?;
                match answer.get("handed_over") {
                    Some(handed) => println!(
                        "standby on: stepped down, {handed} connections handed over in {:.1} ms",
                        answer["hand_over_ms"].as_f64().unwrap_or(f64::NAN)
                    ),
                    None => println!("standby {}", if on { "on" } else { "off" }),
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Logs to stderr in `format`, filtered by `STEADFAST_LOG` (default: info).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEADFAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            // Colour codes only for a person at a terminal: journald and log files get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

/// For a command that only prints: `steadfast status | head` ends quietly, like any Unix tool,
/// instead of panicking on the closed pipe (Rust ignores SIGPIPE). Not for the daemons and the
/// lab tools: their sockets rely on write errors, not the signal. Call before any thread starts.
pub fn die_on_closed_pipe() {
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// The exit code of a command's result; an error is printed first, after the program's name.
pub fn exit_code(program: &str, result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
