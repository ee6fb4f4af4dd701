//! `steadfast-lab lab …` and `steadfast-lab demo`: the command line over the steadfast-lab crate.
//! The `lab` words and flags are a contract: scripts outside the project drive them as written.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use steadfast_core::active_order::{DeliveryStrategy, ReadPolicy};
use steadfast_lab::demo::{interrupt_on_ctrl_c, run_demo, DemoOptions};
use steadfast_lab::{BackendKind, CrashKind, HealReport, Mode, UpOptions};

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build a lab, start its daemons and backends, and wait until the VIP answers.
    Up {
        #[arg(long)]
        name: String,
        #[arg(long)]
        nodes: u8,
        /// Add a witness voter (NAME-w).
        #[arg(long)]
        witness: bool,
        /// unreplicated | simplex | duplex | active (active: with --backend redis)
        #[arg(long)]
        mode: Mode,
        /// builtin | nginx | apache2 | redis (redis: unreplicated or active mode, port 6379)
        #[arg(long)]
        backend: BackendKind,
        #[arg(long)]
        heartbeat_ms: Option<u32>,
        /// Link relay: a private network between the members (eth1) and a [relay] table in
        /// their configurations.
        #[arg(long)]
        relay: bool,
        /// Limit each member (its daemon and backend) to this many cores, in a cgroup of its
        /// own (0.5: half a core), so members on one machine behave like slower hosts.
        #[arg(long)]
        cpu_quota: Option<steadfast_lab::cpu_quota::CpuQuota>,
        /// Active mode: best-effort | safe (the service's `delivery`; default best-effort).
        #[arg(long, value_parser = parse_delivery)]
        delivery: Option<DeliveryStrategy>,
        /// Active mode: with-primary | without-primary (the service's `read_policy`; default
        /// with-primary).
        #[arg(long, value_parser = parse_read_policy)]
        read_policy: Option<ReadPolicy>,
    },
    /// Show every host of a lab: namespace, link, crash, backend, daemon status, VIP holder.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Crash a node (`n1` … or its namespace name, or `primary`).
    Crash {
        name: String,
        node: String,
        /// host | process | freeze | link | backend | link-down | link-blackhole
        #[arg(long)]
        how: CrashKind,
    },
    /// Undo a crash: the node restarts and rejoins as a backup.
    Heal { name: String, node: String },
    /// Remove a lab (or every lab with --all): processes, namespaces, state.
    #[command(override_usage = "steadfast-lab lab down NAME\n       steadfast-lab lab down --all")]
    Down {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Drop every frame between two hosts of a lab (split-brain experiments).
    Partition {
        name: String,
        a: String,
        b: String,
        /// Only the frames from A to B: B still reaches A.
        #[arg(long)]
        one_way: bool,
    },
    /// Lift a partition (with --one-way, the one-way cut from A to B).
    Unpartition {
        name: String,
        a: String,
        b: String,
        #[arg(long)]
        one_way: bool,
    },
}

#[derive(Args)]
pub struct DemoArgs {
    /// Show one mode alone: duplex | unreplicated (default: both, duplex first, and a table
    /// side by side).
    #[arg(long, value_parser = parse_demo_mode)]
    pub mode: Option<Mode>,
    /// Member nodes in each lab (with 2, a witness is added). Duplex runs with 2 only.
    #[arg(long, default_value_t = 2)]
    pub nodes: u8,
    /// Heartbeat interval of the daemons, in both modes alike.
    #[arg(long, default_value_t = steadfast_lab::demo::DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u32,
    /// Leave the labs running at the end (remove them with `steadfast-lab lab down NAME`).
    #[arg(long)]
    pub keep: bool,
}

fn parse_delivery(word: &str) -> Result<DeliveryStrategy, String> {
    DeliveryStrategy::parse(word)
        .ok_or_else(|| format!("unknown delivery {word:?}: expected best-effort or safe"))
}

fn parse_read_policy(word: &str) -> Result<ReadPolicy, String> {
    ReadPolicy::parse(word).ok_or_else(|| {
        format!("unknown read policy {word:?}: expected with-primary or without-primary")
    })
}

/// The modes the demo shows: simplex has nothing to show a client.
fn parse_demo_mode(word: &str) -> Result<Mode, String> {
    match word.parse::<Mode>() {
        Ok(mode @ (Mode::Duplex | Mode::Unreplicated)) => Ok(mode),
        Ok(mode) => Err(format!(
            "the demo shows duplex or unreplicated mode, not {mode}"
        )),
        Err(_) => Err(format!(
            "unknown mode {word:?}: the demo shows duplex or unreplicated"
        )),
    }
}

pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Up {
            name,
            nodes,
            witness,
            mode,
            backend,
            heartbeat_ms,
            relay,
            cpu_quota,
            delivery,
            read_policy,
        } => {
            if mode != Mode::Active && (delivery.is_some() || read_policy.is_some()) {
                anyhow::bail!(
                    "--delivery and --read-policy choose how an active group orders updates and \
                     spreads reads; mode {mode} has no such group: use --mode active"
                );
            }
            let exe = std::env::current_exe().context("finding the steadfast executable")?;
            let mut opts = UpOptions::new(name, nodes, exe);
            opts.witness = witness;
            opts.mode = mode;
            opts.backend = backend;
            opts.heartbeat_ms = heartbeat_ms;
            opts.relay = relay;
            opts.cpu_quota = cpu_quota;
            opts.delivery = delivery;
            opts.read_policy = read_policy;
            let info = steadfast_lab::up(&opts)?;
            print!("{info}");
        }
        LabCommand::Status { name, json } => {
            let status = steadfast_lab::status(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
        LabCommand::Crash { name, node, how } => {
            let report = steadfast_lab::crash(&name, &node, how)?;
            print!("{report}");
        }
        LabCommand::Heal { name, node } => match steadfast_lab::heal(&name, &node)? {
            report @ HealReport::NotCrashed { .. } => eprintln!("{report}"),
            report => print!("{report}"),
        },
        LabCommand::Down { name, all } => {
            let reports = if all {
                steadfast_lab::down_all()?
            } else {
                vec![steadfast_lab::down(name.as_deref().unwrap_or_default())?]
            };
            for report in reports {
                println!("{report}");
            }
        }
        LabCommand::Partition {
            name,
            a,
            b,
            one_way,
        } => {
            if one_way {
                steadfast_lab::cut_one_way(&name, &a, &b)?;
                println!("cut {a} -> {b} (one way) in lab {name}");
            } else {
                steadfast_lab::partition(&name, &a, &b)?;
                println!("partitioned {a} and {b} in lab {name}");
            }
        }
        LabCommand::Unpartition {
            name,
            a,
            b,
            one_way,
        } => {
            if one_way {
                steadfast_lab::mend_one_way(&name, &a, &b)?;
                println!("lifted the one-way cut {a} -> {b} in lab {name}");
            } else {
                steadfast_lab::unpartition(&name, &a, &b)?;
                println!("lifted the partition between {a} and {b} in lab {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the steadfast executable")?;
    let mut opts = DemoOptions::new(exe);
    if let Some(mode) = args.mode {
        opts.modes = vec![mode];
    }
    opts.nodes = args.nodes;
    opts.heartbeat_ms = Some(args.heartbeat_ms);
    opts.keep = args.keep;
    opts.interrupt = interrupt_on_ctrl_c(&opts.lab_names())?;
    let summary = run_demo(opts, &mut std::io::stdout().lock())?;
    if summary.interrupted {
        // 128 + SIGINT, as a shell reports a command ended by Ctrl-C.
        return Ok(ExitCode::from(130));
    }
    let failures = summary.failures();
    if !failures.is_empty() {
        for failure in failures {
            eprintln!("steadfast-lab demo: {failure}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
