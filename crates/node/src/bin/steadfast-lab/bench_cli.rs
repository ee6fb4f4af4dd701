//! `steadfast-lab bench …`: the command line over the lab crate's benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use steadfast_lab::bench::active::{self, ActiveOptions};
use steadfast_lab::bench::availability::{self, AvailabilityOptions};
use steadfast_lab::bench::failover::{
    self, FailoverOptions, KeepalivedChoice, DEFAULT_CRASHES, DEFAULT_FAST_HEARTBEAT_MS,
    QUICK_CRASHES,
};
use steadfast_lab::bench::hostile::{self, HostileOptions};
use steadfast_lab::bench::overhead::{self, OverheadOptions};
use steadfast_lab::bench::relay::{self, RelayBenchOptions};
use steadfast_lab::bench::stall::{self, StallOptions, StallTarget, StallWorkload};
use steadfast_lab::{BackendKind, CrashKind, Mode};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Crash the serving node N times under a probe load (a new connection every 10 ms) and
    /// report the client-visible gaps, beside keepalived's when it is installed.
    Failover(FailoverArgs),
    /// Duplex: crash the primary (or the backup) N times under keep-alive load and report the
    /// longest stall established connections saw, and every client error.
    Stall(StallArgs),
    /// What protection costs when nothing fails: unreplicated, simplex and duplex side by side,
    /// latency (1 connection), throughput and CPU per request, ratios from the same run.
    Overhead(OverheadArgs),
    /// A SYN flood at the service address (50,000 spoofed SYNs a second for 30 s), unreplicated
    /// and duplex in one run: new and established connections during it, recovery, memory.
    Hostile(HostileArgs),
    /// SAPOTI's fault campaign (six hosts cycling fault-free/faulty, its Table 1), time-scaled,
    /// a client sampling every 50 ms: availability, service moves, recovery latency.
    Availability(AvailabilityArgs),
    /// Active mode on Redis: a single redis-server, then active groups of 2, 3 and 4 replicas
    /// with a CPU quota per member: latency, update throughput, an expensive read with 40
    /// clients (redis-benchmark), ratios from the same run, the AR-TCP seed's figures beside.
    Active(ActiveArgs),
    /// Link relay: cut the primary's public link (carrier lost, black hole) N times under
    /// load and restore it; then latency and throughput through the sibling against direct.
    Relay(RelayArgs),
}

#[derive(Args)]
pub struct RelayArgs {
    /// Cuts of each kind (default 20, or 3 with --quick).
    #[arg(long)]
    pub cuts: Option<usize>,
    /// Only this kind of cut: link-down | link-blackhole (default both).
    #[arg(long)]
    pub how: Option<CrashKind>,
    /// builtin | nginx | apache2
    #[arg(long, default_value = "builtin")]
    pub backend: BackendKind,
    /// unreplicated | duplex
    #[arg(long, default_value = "unreplicated")]
    pub mode: Mode,
    /// Keep-alive connections of the load during the cuts.
    #[arg(long, default_value_t = relay::DEFAULT_CONNECTIONS)]
    pub connections: usize,
    /// Rounds of wrk direct against through the sibling (default 3, or 1 with --quick; 0: none).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seconds of each wrk run (default 5, or 2 with --quick).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// 3 cuts of each kind, 1 short round.
    #[arg(long)]
    pub quick: bool,
    /// Print the summary as JSON on stdout instead of the markdown tables.
    #[arg(long)]
    pub json: bool,
    /// Where relay.json (every sample) goes.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct ActiveArgs {
    /// Active group sizes, comma-separated, 2 to 4 (default 2,3,4).
    #[arg(long, value_delimiter = ',')]
    pub replicas: Vec<u8>,
    /// Cores each member (daemon and redis-server) may use (default 0.25).
    #[arg(long, conflicts_with = "no_cpu_quota")]
    pub cpu_quota: Option<steadfast_lab::cpu_quota::CpuQuota>,
    /// No CPU quota: every member may use the whole machine.
    #[arg(long)]
    pub no_cpu_quota: bool,
    /// Rounds; the setups run in turn in each (default 2, or 1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Connections of the throughput and expensive-read runs.
    #[arg(long, default_value_t = active::DEFAULT_CLIENTS)]
    pub clients: u32,
    /// Integers in the list the expensive read sorts.
    #[arg(long, default_value_t = active::DEFAULT_LIST_LEN)]
    pub list_len: u32,
    /// The daemons' heartbeat (default: the daemon's).
    #[arg(long)]
    pub heartbeat_ms: Option<u32>,
    /// The group size (one of --replicas) at which safe delivery and RR-NP are measured
    /// against the defaults (default 3).
    #[arg(long, default_value_t = active::DEFAULT_CHOICES_AT, conflicts_with = "no_choices")]
    pub choices_at: u8,
    /// Measure neither safe delivery nor RR-NP.
    #[arg(long)]
    pub no_choices: bool,
    /// One round with fewer requests: under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Print the summary as JSON on stdout instead of the markdown table.
    #[arg(long)]
    pub json: bool,
    /// Where active.json (every sample) goes.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct AvailabilityArgs {
    /// Real seconds per minute of the paper's schedule.
    #[arg(long, default_value_t = availability::DEFAULT_SECONDS_PER_MINUTE)]
    pub seconds_per_minute: f64,
    /// Length of the campaign in seconds (default 180, or 30 with --quick).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// backend (the paper's fault: the service dies, the host lives) | host
    #[arg(long, default_value = "backend")]
    pub how: CrashKind,
    /// The daemons' heartbeat (default: the daemon's).
    #[arg(long)]
    pub heartbeat_ms: Option<u32>,
    /// 30 s.
    #[arg(long)]
    pub quick: bool,
    /// Print the summary as JSON on stdout instead of the markdown table.
    #[arg(long)]
    pub json: bool,
    /// Where availability.json and availability-cdf.svg go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct OverheadArgs {
    /// Rounds; the modes are interleaved in each (default 3, or 1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Backends, comma-separated (default builtin,nginx, or builtin with --quick).
    #[arg(long, value_delimiter = ',')]
    pub backend: Vec<BackendKind>,
    /// Reply sizes in bytes, comma-separated, among 1024, 10240, 51200, 1048576 and 33554432
    /// (default all but the last, or 1024,51200 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<u64>,
    /// Seconds of each wrk run (default 2 for latency and 3 for throughput, 1 with --quick).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Connections of the throughput runs.
    #[arg(long, default_value_t = overhead::DEFAULT_CONNECTIONS)]
    pub connections: u32,
    /// One round, builtin backend, 1 KB and 50 KB, 1 s runs: under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Print the summary as JSON on stdout instead of the markdown table.
    #[arg(long)]
    pub json: bool,
    /// Where overhead.json (every sample) and overhead-BACKEND.svg go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct HostileArgs {
    /// Spoofed SYNs a second.
    #[arg(long, default_value_t = hostile::DEFAULT_SYN_RATE)]
    pub syn_rate: u32,
    /// Seconds of flood (default 30, or 5 with --quick).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Modes, comma-separated (default unreplicated,duplex).
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<Mode>,
    /// A 5-second flood: under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Print the summary as JSON on stdout instead of the markdown table.
    #[arg(long)]
    pub json: bool,
    /// Where hostile.json goes.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct StallArgs {
    /// Crashes (default 20, or 3 with --quick).
    #[arg(long)]
    pub crashes: Option<usize>,
    /// primary | backup
    #[arg(long, default_value = "primary")]
    pub role: StallTarget,
    /// host | process | freeze
    #[arg(long, default_value = "host")]
    pub how: CrashKind,
    #[arg(long, default_value_t = stall::DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u32,
    /// Keep-alive connections of the load.
    #[arg(long, default_value_t = stall::DEFAULT_CONNECTIONS)]
    pub connections: usize,
    /// builtin | nginx | apache2
    #[arg(long, default_value = "builtin")]
    pub backend: BackendKind,
    /// small | mid-reply (1 MB replies in flight) | mid-request (slow uploads in flight)
    #[arg(long, default_value = "small")]
    pub workload: StallWorkload,
    /// 3 crashes.
    #[arg(long)]
    pub quick: bool,
    /// Print the summary as JSON on stdout instead of the markdown table.
    #[arg(long)]
    pub json: bool,
    /// Where stall-<role>.json (every sample) goes.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct FailoverArgs {
    /// Crashes per row (default 20, or 3 with --quick).
    #[arg(long)]
    pub crashes: Option<usize>,
    /// host | process | freeze | link | backend
    #[arg(long, default_value = "host")]
    pub how: CrashKind,
    /// The fast Steadfast row's heartbeat (the other row uses the daemon's default).
    #[arg(long, default_value_t = DEFAULT_FAST_HEARTBEAT_MS)]
    pub heartbeat_ms: u32,
    /// Fail if keepalived is not installed (otherwise its rows are skipped with a note).
    #[arg(long, conflicts_with = "no_keepalived")]
    pub keepalived: bool,
    /// Steadfast's rows only, even when keepalived is installed.
    #[arg(long)]
    pub no_keepalived: bool,
    /// Only the fast rows, 3 crashes each: under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Print the summary as JSON on stdout instead of the markdown table.
    #[arg(long)]
    pub json: bool,
    /// Where failover.json (every sample) and failover-cdf.svg go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Failover(args) => failover_command(args),
        BenchCommand::Stall(args) => stall_command(args),
        BenchCommand::Overhead(args) => overhead_command(args),
        BenchCommand::Hostile(args) => hostile_command(args),
        BenchCommand::Availability(args) => availability_command(args),
        BenchCommand::Active(args) => active_command(args),
        BenchCommand::Relay(args) => relay_command(args),
    }
}

fn active_command(args: ActiveArgs) -> anyhow::Result<ExitCode> {
    let exe = steadfast_exe()?;
    let mut options = if args.quick {
        ActiveOptions::quick(exe)
    } else {
        ActiveOptions::full(exe)
    };
    if !args.replicas.is_empty() {
        options.replicas = args.replicas;
    }
    if args.no_cpu_quota {
        options.cpu_quota = None;
    } else if let Some(quota) = args.cpu_quota {
        options.cpu_quota = Some(quota);
    }
    if let Some(rounds) = args.rounds {
        options.rounds = rounds;
    }
    options.clients = args.clients;
    options.list_len = args.list_len;
    options.heartbeat_ms = args.heartbeat_ms;
    options.choices_at = (!args.no_choices).then_some(args.choices_at);
    let report = active::run(&options, &mut |line| eprintln!("bench active: {line}"))?;
    publish(
        "active",
        &args.out,
        args.json,
        |dir| report.write(dir),
        || report.summary_json(),
        || report.markdown(),
    )?;
    // An error reply on the normal path is a failure, whatever the speed.
    Ok(if report.errors() == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "bench active: redis-benchmark printed {} error replies",
            report.errors()
        );
        ExitCode::FAILURE
    })
}

fn relay_command(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let options = RelayBenchOptions {
        cuts: args.cuts.unwrap_or(if args.quick {
            relay::QUICK_CUTS
        } else {
            relay::DEFAULT_CUTS
        }),
        kinds: match args.how {
            Some(kind) => vec![kind],
            None => vec![CrashKind::LinkDown, CrashKind::LinkBlackhole],
        },
        backend: args.backend,
        mode: args.mode,
        connections: args.connections,
        rounds: args
            .rounds
            .unwrap_or(if args.quick { 1 } else { relay::DEFAULT_ROUNDS }),
        wrk_duration: std::time::Duration::from_secs(args.seconds.unwrap_or(if args.quick {
            2
        } else {
            5
        })),
        throughput_connections: 32,
        sizes: vec![1024, 1024 * 1024],
        steadfast_exe: steadfast_exe()?,
    };
    let report = relay::run(&options, &mut |line| eprintln!("bench relay: {line}"))?;
    publish(
        "relay",
        &args.out,
        args.json,
        |dir| report.write(dir),
        || report.summary_json(),
        || report.markdown(),
    )?;
    // A failed request is what the relay promises never to cause: the run fails with one.
    Ok(if report.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn availability_command(args: AvailabilityArgs) -> anyhow::Result<ExitCode> {
    let options = AvailabilityOptions {
        seconds_per_minute: args.seconds_per_minute,
        duration: args.seconds.map_or(
            if args.quick {
                availability::QUICK_DURATION
            } else {
                availability::DEFAULT_DURATION
            },
            std::time::Duration::from_secs,
        ),
        how: args.how,
        heartbeat_ms: args.heartbeat_ms,
        quick: args.quick,
        steadfast_exe: steadfast_exe()?,
    };
    let report = availability::run(&options, &mut |line| {
        eprintln!("bench availability: {line}")
    })?;
    publish(
        "availability",
        &args.out,
        args.json,
        |dir| report.write(dir),
        || report.summary_json(),
        || report.markdown(),
    )?;
    Ok(ExitCode::SUCCESS)
}

fn overhead_command(args: OverheadArgs) -> anyhow::Result<ExitCode> {
    let exe = steadfast_exe()?;
    let mut options = if args.quick {
        OverheadOptions::quick(exe)
    } else {
        OverheadOptions::full(exe)
    };
    if let Some(rounds) = args.rounds {
        options.rounds = rounds;
    }
    if !args.backend.is_empty() {
        options.backends = args.backend;
    }
    if !args.sizes.is_empty() {
        options.sizes = args.sizes;
    }
    if let Some(seconds) = args.seconds {
        options.latency_duration = std::time::Duration::from_secs(seconds);
        options.throughput_duration = std::time::Duration::from_secs(seconds);
    }
    options.throughput_connections = args.connections;
    let report = overhead::run(&options, &mut |line| eprintln!("bench overhead: {line}"))?;
    publish(
        "overhead",
        &args.out,
        args.json,
        |dir| report.write(dir),
        || report.summary_json(),
        || report.markdown(),
    )?;
    // A protected mode that loses replies on the normal path is a failure, whatever its speed.
    Ok(if report.errors() == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "bench overhead: wrk saw {} socket errors or non-2xx replies",
            report.errors()
        );
        ExitCode::FAILURE
    })
}

fn hostile_command(args: HostileArgs) -> anyhow::Result<ExitCode> {
    let mut options = HostileOptions::full(steadfast_exe()?);
    options.syns_per_second = args.syn_rate;
    options.flood = match (args.seconds, args.quick) {
        (Some(seconds), _) => std::time::Duration::from_secs(seconds),
        (None, true) => hostile::QUICK_FLOOD,
        (None, false) => hostile::DEFAULT_FLOOD,
    };
    if !args.modes.is_empty() {
        options.modes = args.modes;
    }
    let report = hostile::run(&options, &mut |line| eprintln!("bench hostile: {line}"))?;
    publish(
        "hostile",
        &args.out,
        args.json,
        |dir| report.write(dir),
        || report.summary_json(),
        || report.markdown(),
    )?;
    Ok(if report.meets_bounds() {
        ExitCode::SUCCESS
    } else {
        eprintln!("bench hostile: a mode did not meet the bounds (the table's last column)");
        ExitCode::FAILURE
    })
}

fn stall_command(args: StallArgs) -> anyhow::Result<ExitCode> {
    let options = StallOptions {
        crashes: args.crashes.unwrap_or(if args.quick {
            stall::QUICK_CRASHES
        } else {
            stall::DEFAULT_CRASHES
        }),
        target: args.role,
        how: args.how,
        heartbeat_ms: args.heartbeat_ms,
        connections: args.connections,
        backend: args.backend,
        workload: args.workload,
        steadfast_exe: steadfast_exe()?,
    };
    let report = stall::run(&options, &mut |line| eprintln!("bench stall: {line}"))?;
    publish(
        "stall",
        &args.out,
        args.json,
        |dir| report.write(dir),
        || report.summary_json(),
        || report.markdown(),
    )?;
    // Client errors are what duplex promises never to cause: the run fails with them.
    Ok(if report.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn failover_command(args: FailoverArgs) -> anyhow::Result<ExitCode> {
    let options = FailoverOptions {
        crashes: args.crashes.unwrap_or(if args.quick {
            QUICK_CRASHES
        } else {
            DEFAULT_CRASHES
        }),
        how: args.how,
        heartbeat_ms: args.heartbeat_ms,
        keepalived: if args.keepalived {
            KeepalivedChoice::Required
        } else if args.no_keepalived {
            KeepalivedChoice::Never
        } else {
            KeepalivedChoice::IfInstalled
        },
        quick: args.quick,
        steadfast_exe: steadfast_exe()?,
    };
    let report = failover::run(&options, &mut |line| eprintln!("bench failover: {line}"))?;
    publish(
        "failover",
        &args.out,
        args.json,
        |dir| report.write(dir),
        || report.summary_json(),
        || report.markdown(),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// This executable: the labs the benchmarks build run its daemons.
fn steadfast_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the steadfast executable for the lab")
}

/// Writes a report's raw results into `out`, prints its summary (JSON or the markdown table)
/// on stdout and the written paths on stderr.
fn publish(
    bench: &str,
    out: &std::path::Path,
    json: bool,
    write: impl FnOnce(&std::path::Path) -> Result<Vec<PathBuf>, steadfast_lab::bench::BenchError>,
    summary: impl FnOnce() -> serde_json::Value,
    markdown: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let written =
        write(out).with_context(|| format!("writing the results into {}", out.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary())?);
    } else {
        print!("{}", markdown());
    }
    for path in written {
        eprintln!("bench {bench}: wrote {}", path.display());
    }
    Ok(())
}
