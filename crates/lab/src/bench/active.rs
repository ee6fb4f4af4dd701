//! `steadfast-lab bench active`: what active mode costs and gives on Redis, beside the figures
//! of seed `001_5c036edab91a7aeb.txt` (AR-TCP: +15 % round-trip time for 2 nodes, flat to 4;
//! read-only queries with 40 threads 52.3 → 25.9 → 15.7 ms for 2/3/4 nodes; a small cost on
//! updates).
//!
//! One lab per setup, all up at once: a single redis-server (an unreplicated redis lab of one
//! node: the VIP reaches redis-server directly), then active groups of 2, 3 and 4 replicas.
//! Every member (its daemon and its redis-server) gets the same CPU quota in a cgroup of its
//! own, so that replicas sharing one small machine behave like separate slower hosts, and the
//! single server is held to the same quota. Rounds run every setup in turn (the order rotates
//! each round, so drift hits all alike); ratios are taken inside a round against the single
//! server of the same round, and summarised by their median. For each setup, with
//! `redis-benchmark` from the client namespace:
//! - latency of one connection: PING, SET, GET (the average: the seed's round-trip time);
//! - update throughput: SET from many clients;
//! - an expensive read from many clients (40, the seed's): `SORT_RO` of a list of a few
//!   thousand integers, `LIMIT 0 10`: a fraction of a millisecond of server CPU, a reply of
//!   ten numbers, so that the servers' work dominates and the proxy's does not;
//! - during that read, how many of the reads each member's own redis-server ran (`INFO
//!   commandstats`), how often its quota throttled it (its cgroup's `cpu.stat`), and the cores
//!   its daemon and its redis-server used.
//!
//! Beside the default groups (best-effort delivery, reads on every replica in turn: RR-P), two
//! more labs of the same size (3 replicas by default) run the other choices, in the same rounds:
//! safe delivery (a replica runs an update once every replica holds it), to report what it costs
//! in update latency and throughput, and reads kept off the primary (RR-NP), to report what it
//! changes in expensive-read throughput. Their ratios are taken inside a round against the
//! default group of the same size.
//!
//! Before the rounds every lab's read is checked against the list the bench wrote, several
//! times per replica.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cpu;
use super::redis_benchmark::{self, CsvRow};
use super::{percentile, plane_status, unique_lab_name, wait_until, BenchError, BenchLab};
use crate::cpu_quota::{self, CpuQuota};
use crate::options::{BackendKind, Mode, UpOptions};
use steadfast_core::active_order::{DeliveryStrategy, ReadPolicy};

/// The seed's client threads.
pub const DEFAULT_CLIENTS: u32 = 40;
pub const DEFAULT_REPLICAS: [u8; 3] = [2, 3, 4];
/// Safe delivery and RR-NP are measured at 3 replicas: the smallest group where RR-NP still
/// leaves two replicas to read from, and the size the issue's read target names.
pub const DEFAULT_CHOICES_AT: u8 = 3;
/// A quarter of a core: four members take one of the development machine's two cores and leave
/// the other to the load generator and the machine's other users, so that the quota, not the
/// machine, is what limits each member (at half a core, four members would ask for both cores
/// and the quota would stop binding).
pub const DEFAULT_CPU_QUOTA: CpuQuota = CpuQuota { millicores: 250 };
/// About 0.3-0.5 ms of one core per `SORT_RO … LIMIT 0 10` on this machine's redis-server 7.0:
/// at a quarter of a core a single server answers some 600-900 a second, about the seed's
/// two-node rate (40 threads at 52.3 ms is 765 a second).
pub const DEFAULT_LIST_LEN: u32 = 2000;
/// The key the bench writes its list under.
const LIST_KEY: &str = "steadfast:bench:sort";
/// How long every replica of a new active lab may take to serve reads.
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound of each redis-benchmark or redis-cli run.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// What one lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// One redis-server, the VIP straight to it (an unreplicated lab of one node).
    Single,
    /// An active group of this many replicas: best-effort delivery, reads on every replica in
    /// turn (RR-P), the daemon's defaults.
    Active(u8),
    /// The same with safe delivery.
    ActiveSafe(u8),
    /// The same with reads kept off the primary (RR-NP).
    ActiveReadsOffPrimary(u8),
}

impl Setup {
    pub fn label(self) -> String {
        match self {
            Setup::Single => "redis-server alone".into(),
            Setup::Active(n) => format!("active, {n} replicas"),
            Setup::ActiveSafe(n) => format!("active, {n} replicas, safe delivery"),
            Setup::ActiveReadsOffPrimary(n) => format!("active, {n} replicas, RR-NP"),
        }
    }

    /// The active group's size; `None` for the single server.
    fn replicas(self) -> Option<u8> {
        match self {
            Setup::Single => None,
            Setup::Active(n) | Setup::ActiveSafe(n) | Setup::ActiveReadsOffPrimary(n) => Some(n),
        }
    }

    /// The service's `delivery` and `read_policy`; `None`: the daemon's defaults.
    fn choices(self) -> (Option<DeliveryStrategy>, Option<ReadPolicy>) {
        match self {
            Setup::ActiveSafe(_) => (Some(DeliveryStrategy::Safe), None),
            Setup::ActiveReadsOffPrimary(_) => (None, Some(ReadPolicy::WithoutPrimary)),
            Setup::Single | Setup::Active(_) => (None, None),
        }
    }

    fn tag(self) -> String {
        match self {
            Setup::Single => "s".into(),
            Setup::Active(n) => format!("a{n}"),
            Setup::ActiveSafe(n) => format!("f{n}"),
            Setup::ActiveReadsOffPrimary(n) => format!("p{n}"),
        }
    }

    fn nodes(self) -> u8 {
        self.replicas().unwrap_or(1)
    }

    /// The seed's round-trip time against plain TCP (its Fig. 6): +15 % at 2 nodes, "does not
    /// increase significantly" up to 4.
    fn seed_rtt(self) -> &'static str {
        match self {
            Setup::Single => "1.00 (TCP)",
            Setup::Active(2) => "1.15",
            Setup::Active(3 | 4) => "≈1.15",
            _ => "—",
        }
    }

    /// The seed's average response time of read-only queries, 40 threads (its Fig. 8), in ms.
    fn seed_read_ms(self) -> Option<f64> {
        match self {
            Setup::Active(2) => Some(52.3),
            Setup::Active(3) => Some(25.9),
            Setup::Active(4) => Some(15.7),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ActiveOptions {
    /// Sizes of the active groups, beside the single server.
    pub replicas: Vec<u8>,
    /// Each member's CPU limit; `None`: none (every member may use the whole machine).
    pub cpu_quota: Option<CpuQuota>,
    pub rounds: usize,
    /// Requests of each single-connection latency run (per command).
    pub latency_requests: u32,
    /// SETs of the update throughput run.
    pub update_requests: u32,
    /// Reads of the expensive-read run.
    pub read_requests: u32,
    /// Connections of the throughput runs.
    pub clients: u32,
    /// Integers in the sorted list.
    pub list_len: u32,
    /// The group size (one of `replicas`) at which safe delivery and RR-NP are measured
    /// beside the defaults; `None`: not measured.
    pub choices_at: Option<u8>,
    pub heartbeat_ms: Option<u32>,
    pub quick: bool,
    pub steadfast_exe: PathBuf,
}

impl ActiveOptions {
    /// Two rounds: about three minutes on the development machine.
    pub fn full(steadfast_exe: PathBuf) -> Self {
        ActiveOptions {
            replicas: DEFAULT_REPLICAS.to_vec(),
            cpu_quota: Some(DEFAULT_CPU_QUOTA),
            rounds: 2,
            latency_requests: 2000,
            update_requests: 10_000,
            read_requests: 6000,
            clients: DEFAULT_CLIENTS,
            list_len: DEFAULT_LIST_LEN,
            choices_at: Some(DEFAULT_CHOICES_AT),
            heartbeat_ms: None,
            quick: false,
            steadfast_exe,
        }
    }

    /// One round with fewer requests: under a minute.
    pub fn quick(steadfast_exe: PathBuf) -> Self {
        ActiveOptions {
            rounds: 1,
            latency_requests: 300,
            update_requests: 2000,
            read_requests: 1500,
            quick: true,
            ..ActiveOptions::full(steadfast_exe)
        }
    }

    fn setups(&self) -> Vec<Setup> {
        std::iter::once(Setup::Single)
            .chain(self.replicas.iter().map(|&n| Setup::Active(n)))
            .chain(
                self.choices_at
                    .into_iter()
                    .flat_map(|n| [Setup::ActiveSafe(n), Setup::ActiveReadsOffPrimary(n)]),
            )
            .collect()
    }
}

/// One setup measured in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub round: usize,
    pub setup: Setup,
    /// One connection, one request outstanding.
    pub ping: CsvRow,
    pub set: CsvRow,
    pub get: CsvRow,
    /// SET from `clients` connections.
    pub update: CsvRow,
    /// The expensive read from `clients` connections.
    pub read: CsvRow,
    /// How many of the expensive reads each member's redis-server ran (n1 first).
    pub reads_per_member: Vec<u64>,
    /// Of the CFS periods during the read run, the share in which each member's quota
    /// throttled it (n1 first); empty without quotas.
    pub throttled_share: Vec<f64>,
    /// Cores each member's daemon and redis-server used during the read run, n1 first.
    pub read_cores: Vec<MemberCores>,
    /// Error replies redis-benchmark reported (at most about one a second is printed).
    pub error_lines: usize,
}

/// CPU used by one member during a run, in cores (CPU seconds per second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MemberCores {
    pub daemon: f64,
    pub redis: f64,
}

/// A measurement that failed (an error reply ends a redis-benchmark run), kept with the tail of
/// every member's daemon log so the cause can be read after the labs are gone.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub round: usize,
    pub setup: Setup,
    pub error: String,
    /// `nI.daemon.log`'s last lines, n1 first.
    pub daemon_logs: Vec<String>,
}

/// A setup's rounds summarised.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub setup: Setup,
    pub label: String,
    pub ping_us: f64,
    pub ping_p50_us: f64,
    pub ping_ratio: f64,
    pub set_us: f64,
    pub set_p50_us: f64,
    pub set_ratio: f64,
    pub get_us: f64,
    pub get_p50_us: f64,
    pub get_ratio: f64,
    pub update_rps: f64,
    pub update_ratio: f64,
    pub update_p50_ms: f64,
    pub read_rps: f64,
    pub read_ratio: f64,
    pub read_avg_ms: f64,
    pub read_p99_ms: f64,
    pub reads_per_member: Vec<u64>,
    pub throttled_share: Vec<f64>,
    pub read_cores: Vec<MemberCores>,
    pub error_lines: usize,
}

/// Safe delivery or RR-NP against the default group of the same size, as medians of
/// same-round ratios (variant / default): above 1 for a latency is slower, for a rate faster.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub variant: Setup,
    pub base: Setup,
    pub label: String,
    /// One connection's SET, average and median latency.
    pub set_avg_ratio: f64,
    pub set_p50_ratio: f64,
    /// SETs per second from the throughput run's clients, and their median latency.
    pub update_rps_ratio: f64,
    pub update_p50_ratio: f64,
    /// Expensive reads per second, and their average latency.
    pub read_rps_ratio: f64,
    pub read_avg_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveReport {
    pub quick: bool,
    pub rounds: usize,
    pub clients: u32,
    pub list_len: u32,
    pub cpu_quota: Option<CpuQuota>,
    /// Which cgroup mechanism held the quotas.
    pub cpu_quota_mechanism: Option<String>,
    /// Wall-clock start of the run, seconds since the Unix epoch.
    pub started_unix_s: u64,
    pub seconds: f64,
    pub samples: Vec<Sample>,
    pub failures: Vec<Failure>,
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0).unwrap_or(f64::NAN)
}

impl ActiveReport {
    fn setups(&self) -> Vec<Setup> {
        let mut setups: Vec<Setup> = Vec::new();
        for s in &self.samples {
            if !setups.contains(&s.setup) {
                setups.push(s.setup);
            }
        }
        setups
    }

    /// Medians over rounds, and medians of same-round ratios to the single server.
    pub fn rows(&self) -> Vec<Row> {
        let single = |round: usize| {
            self.samples
                .iter()
                .find(|s| s.round == round && s.setup == Setup::Single)
        };
        self.setups()
            .into_iter()
            .map(|setup| {
                let mine: Vec<&Sample> = self.samples.iter().filter(|s| s.setup == setup).collect();
                let value = |f: &dyn Fn(&Sample) -> f64| {
                    median(&mine.iter().map(|s| f(s)).collect::<Vec<_>>())
                };
                let ratio = |f: &dyn Fn(&Sample) -> f64| {
                    median(
                        &mine
                            .iter()
                            .filter_map(|s| single(s.round).map(|b| f(s) / f(b)))
                            .collect::<Vec<_>>(),
                    )
                };
                let last = mine.last().expect("a setup has samples");
                Row {
                    setup,
                    label: setup.label(),
                    ping_us: value(&|s| s.ping.avg_ms * 1e3),
                    ping_p50_us: value(&|s| s.ping.p50_ms * 1e3),
                    ping_ratio: ratio(&|s| s.ping.avg_ms),
                    set_us: value(&|s| s.set.avg_ms * 1e3),
                    set_p50_us: value(&|s| s.set.p50_ms * 1e3),
                    set_ratio: ratio(&|s| s.set.avg_ms),
                    get_us: value(&|s| s.get.avg_ms * 1e3),
                    get_p50_us: value(&|s| s.get.p50_ms * 1e3),
                    get_ratio: ratio(&|s| s.get.avg_ms),
                    update_rps: value(&|s| s.update.rps),
                    update_ratio: ratio(&|s| s.update.rps),
                    update_p50_ms: value(&|s| s.update.p50_ms),
                    read_rps: value(&|s| s.read.rps),
                    read_ratio: ratio(&|s| s.read.rps),
                    read_avg_ms: value(&|s| s.read.avg_ms),
                    read_p99_ms: value(&|s| s.read.p99_ms),
                    reads_per_member: last.reads_per_member.clone(),
                    throttled_share: last.throttled_share.clone(),
                    read_cores: last.read_cores.clone(),
                    error_lines: mine.iter().map(|s| s.error_lines).sum(),
                }
            })
            .collect()
    }

    /// Safe delivery and RR-NP against the default group of the same size: medians of
    /// same-round ratios.
    pub fn comparisons(&self) -> Vec<Comparison> {
        let setups = self.setups();
        setups
            .iter()
            .filter_map(|&variant| {
                let base = match variant {
                    Setup::ActiveSafe(n) | Setup::ActiveReadsOffPrimary(n) => Setup::Active(n),
                    Setup::Single | Setup::Active(_) => return None,
                };
                let pairs: Vec<(&Sample, &Sample)> = self
                    .samples
                    .iter()
                    .filter(|s| s.setup == variant)
                    .filter_map(|v| {
                        self.samples
                            .iter()
                            .find(|b| b.setup == base && b.round == v.round)
                            .map(|b| (v, b))
                    })
                    .collect();
                if pairs.is_empty() {
                    return None;
                }
                let ratio = |f: &dyn Fn(&Sample) -> f64| {
                    median(&pairs.iter().map(|(v, b)| f(v) / f(b)).collect::<Vec<_>>())
                };
                Some(Comparison {
                    variant,
                    base,
                    label: format!("{} against {}", variant.label(), base.label()),
                    set_avg_ratio: ratio(&|s| s.set.avg_ms),
                    set_p50_ratio: ratio(&|s| s.set.p50_ms),
                    update_rps_ratio: ratio(&|s| s.update.rps),
                    update_p50_ratio: ratio(&|s| s.update.p50_ms),
                    read_rps_ratio: ratio(&|s| s.read.rps),
                    read_avg_ratio: ratio(&|s| s.read.avg_ms),
                })
            })
            .collect()
    }

    pub fn errors(&self) -> usize {
        self.samples.iter().map(|s| s.error_lines).sum::<usize>() + self.failures.len()
    }

    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "quick": self.quick,
            "rounds": self.rounds,
            "clients": self.clients,
            "list_len": self.list_len,
            "cpu_quota_cores": self.cpu_quota.map(|q| f64::from(q.millicores) / 1000.0),
            "cpu_quota_mechanism": self.cpu_quota_mechanism,
            "started_unix_s": self.started_unix_s,
            "seconds": self.seconds,
            "rows": self.rows(),
            "comparisons": self.comparisons(),
            "failures": self.failures.iter().map(|f| serde_json::json!({
                "round": f.round,
                "setup": f.setup,
                "error": f.error,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn markdown(&self) -> String {
        let rows = self.rows();
        let quota = match (&self.cpu_quota, &self.cpu_quota_mechanism) {
            (Some(q), Some(how)) => format!("{q} core per member ({how})"),
            _ => "none".into(),
        };
        let mut out = format!(
            "{} round(s), setups in turn; CPU quota: {quota}; latency: redis-benchmark, 1 \
             connection (average); throughput: {} connections; expensive read: `SORT_RO` of \
             {} integers `LIMIT 0 10`; ratios are medians of same-round ratios to the single \
             redis-server; run took {:.0} s\n\n",
            self.rounds, self.clients, self.list_len, self.seconds
        );
        out.push_str(
            "| setup | PING µs avg (p50) | ×single | SET µs avg (p50) | ×single | GET µs avg (p50) | ×single | seed RTT ×TCP | SET/s, 40 clients | ×single | SET p50 ms | errors |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &rows {
            out.push_str(&format!(
                "| {} | {:.0} ({:.0}) | {:.2} | {:.0} ({:.0}) | {:.2} | {:.0} ({:.0}) | {:.2} | {} | {:.0} | {:.2} | {:.2} | {} |\n",
                r.label,
                r.ping_us,
                r.ping_p50_us,
                r.ping_ratio,
                r.set_us,
                r.set_p50_us,
                r.set_ratio,
                r.get_us,
                r.get_p50_us,
                r.get_ratio,
                r.setup.seed_rtt(),
                r.update_rps,
                r.update_ratio,
                r.update_p50_ms,
                r.error_lines
            ));
        }
        let two = rows.iter().find(|r| r.setup == Setup::Active(2));
        out.push_str(
            "\n| setup | reads/s, 40 clients | ×single | ×2 replicas | seed ×2 nodes | avg ms | seed avg ms | p99 ms | reads run by n1/n2/… % | quota throttled n1/n2/… % | cores used, daemon+redis, n1/n2/… |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n");
        let seed_two = Setup::Active(2)
            .seed_read_ms()
            .expect("the seed has 2 nodes");
        for r in &rows {
            let vs_two = two.map_or("—".into(), |t| format!("{:.2}", r.read_rps / t.read_rps));
            let (seed_ratio, seed_ms) = match r.setup.seed_read_ms() {
                Some(ms) => (format!("{:.2}", seed_two / ms), format!("{ms}")),
                None => ("—".into(), "—".into()),
            };
            let total: u64 = r.reads_per_member.iter().sum();
            let spread = r
                .reads_per_member
                .iter()
                .map(|&n| format!("{:.0}", 100.0 * n as f64 / total.max(1) as f64))
                .collect::<Vec<_>>()
                .join("/");
            let throttled = if r.throttled_share.is_empty() {
                "—".into()
            } else {
                r.throttled_share
                    .iter()
                    .map(|s| format!("{:.0}", 100.0 * s))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let cores = r
                .read_cores
                .iter()
                .map(|c| format!("{:.2}+{:.2}", c.daemon, c.redis))
                .collect::<Vec<_>>()
                .join(" / ");
            out.push_str(&format!(
                "| {} | {:.0} | {:.2} | {} | {} | {:.1} | {} | {:.1} | {} | {} | {} |\n",
                r.label,
                r.read_rps,
                r.read_ratio,
                vs_two,
                seed_ratio,
                r.read_avg_ms,
                seed_ms,
                r.read_p99_ms,
                spread,
                throttled,
                cores
            ));
        }
        let comparisons = self.comparisons();
        if !comparisons.is_empty() {
            out.push_str(
                "\n| against the default group of the same size (same-round ratios) | SET µs avg | SET µs p50 | SET/s, 40 clients | SET p50 ms, 40 clients | reads/s, 40 clients | read avg ms |\n",
            );
            out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
            for c in &comparisons {
                out.push_str(&format!(
                    "| {} | ×{:.2} | ×{:.2} | ×{:.2} | ×{:.2} | ×{:.2} | ×{:.2} |\n",
                    c.label,
                    c.set_avg_ratio,
                    c.set_p50_ratio,
                    c.update_rps_ratio,
                    c.update_p50_ratio,
                    c.read_rps_ratio,
                    c.read_avg_ratio
                ));
            }
        }
        if !self.failures.is_empty() {
            out.push_str("\nFailed measurements (left out of the rows above; daemon logs in active.json):\n\n");
            for f in &self.failures {
                // redis-benchmark's CSV header and warnings come first: the error reply says why.
                let first = f
                    .error
                    .lines()
                    .find(|l| l.contains("Error from server"))
                    .or_else(|| f.error.lines().next())
                    .unwrap_or_default();
                out.push_str(&format!(
                    "- round {}, {}: {first}\n",
                    f.round + 1,
                    f.setup.label()
                ));
            }
        }
        out
    }

    pub fn write(&self, dir: &std::path::Path) -> Result<Vec<PathBuf>, BenchError> {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::io("creating", dir, e))?;
        let path = dir.join("active.json");
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "summary": self.summary_json(),
            "samples": self.samples,
            "failures": self.failures,
        }))
        .expect("a report serializes");
        std::fs::write(&path, text).map_err(|e| BenchError::io("writing", &path, e))?;
        Ok(vec![path])
    }
}

/// One setup's lab and what the bench knows of it.
struct SetupLab {
    setup: Setup,
    lab: BenchLab,
    /// Each member's cgroup directory, n1 first, when the lab has quotas.
    cgroups: Vec<PathBuf>,
}

impl SetupLab {
    fn row(&self) -> String {
        self.setup.label()
    }

    fn campaign(&self, reason: String) -> BenchError {
        BenchError::Campaign {
            lab: self.lab.name().to_string(),
            row: self.row(),
            reason,
        }
    }

    fn client(&self) -> &str {
        &self.lab.info.client_ns
    }
}

/// The integers the bench sorts: the same every run (a fixed xorshift), so every run sorts
/// the same work.
fn list_values(len: u32) -> Vec<u64> {
    let mut x: u64 = 0x5EED_0001;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 1_000_000_000
        })
        .collect()
}

pub fn run(
    options: &ActiveOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<ActiveReport, BenchError> {
    for (program, package) in [
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("redis-cli", "redis-tools"),
    ] {
        crate::system::require_program(program, package)?;
    }
    if options.rounds == 0 || options.clients == 0 || options.list_len < 10 {
        return Err(BenchError::Options(
            "rounds and clients must be at least 1, the list at least 10 long".into(),
        ));
    }
    if let Some(&n) = options.replicas.iter().find(|&&n| !(2..=4).contains(&n)) {
        return Err(BenchError::Options(format!(
            "active groups of 2 to 4 replicas are measured, not {n}"
        )));
    }
    if let Some(n) = options.choices_at.filter(|n| !options.replicas.contains(n)) {
        return Err(BenchError::Options(format!(
            "safe delivery and RR-NP are measured against the default group of the same size: \
             {n} replicas must be among the groups measured ({:?})",
            options.replicas
        )));
    }
    let hierarchy = match options.cpu_quota {
        Some(_) => Some(
            cpu_quota::detect().map_err(|e| BenchError::Options(format!("--cpu-quota: {e}")))?,
        ),
        None => None,
    };
    let started = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let values = list_values(options.list_len);
    let mut sorted = values.clone();
    sorted.sort_unstable();
    let expected: Vec<String> = sorted.iter().take(10).map(u64::to_string).collect();

    let mut labs = Vec::new();
    for setup in options.setups() {
        let mut up = UpOptions::new(
            unique_lab_name(&setup.tag()),
            setup.nodes(),
            &options.steadfast_exe,
        );
        up.backend = BackendKind::Redis;
        up.mode = match setup.replicas() {
            None => Mode::Unreplicated,
            Some(_) => Mode::Active,
        };
        (up.delivery, up.read_policy) = setup.choices();
        // Two members alone cannot tell a dead peer from a partition: a witness breaks ties.
        up.witness = setup.replicas() == Some(2);
        up.heartbeat_ms = options.heartbeat_ms;
        up.cpu_quota = options.cpu_quota;
        progress(&format!("{}: lab {} up", setup.label(), up.name));
        let lab = BenchLab::up(&up)?;
        let cgroups = match &hierarchy {
            Some(h) => (1..=setup.nodes())
                .map(|i| h.lab_dir(lab.name()).join(format!("n{i}")))
                .collect(),
            None => Vec::new(),
        };
        let lab = SetupLab {
            setup,
            lab,
            cgroups,
        };
        prepare(&lab, options, &values, &expected)?;
        labs.push(lab);
    }

    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for round in 0..options.rounds {
        let count = labs.len();
        for i in 0..count {
            let lab = &labs[(i + round) % count];
            progress(&format!(
                "round {}/{}: {}",
                round + 1,
                options.rounds,
                lab.row()
            ));
            // A failed run is a finding, not the end of the bench: the other setups and rounds
            // still measure, and the exit status says it failed.
            match measure(lab, options, round) {
                Ok(sample) => samples.push(sample),
                Err(e) => {
                    progress(&format!("{}: FAILED: {e}", lab.row()));
                    failures.push(Failure {
                        round,
                        setup: lab.setup,
                        error: e.to_string(),
                        daemon_logs: daemon_logs(lab),
                    });
                }
            }
        }
    }
    Ok(ActiveReport {
        quick: options.quick,
        rounds: options.rounds,
        clients: options.clients,
        list_len: options.list_len,
        cpu_quota: options.cpu_quota,
        cpu_quota_mechanism: hierarchy.map(|h| h.to_string()),
        started_unix_s,
        seconds: started.elapsed().as_secs_f64(),
        samples,
        failures,
    })
}

/// Waits until every replica serves reads, writes the list through the VIP and checks the
/// expensive read against it on every replica.
fn prepare(
    lab: &SetupLab,
    options: &ActiveOptions,
    values: &[u64],
    expected: &[String],
) -> Result<(), BenchError> {
    if let Some(n) = lab.setup.replicas() {
        let primary = primary_host(lab)?;
        let mut seen = serde_json::Value::Null;
        let serving = wait_until(SERVING_TIMEOUT, || {
            seen = plane_status(&lab.lab, &primary, &lab.row())?["active"].clone();
            Ok(seen["serving"].as_array().map_or(0, Vec::len) == usize::from(n))
        })?;
        if !serving {
            return Err(lab.campaign(format!(
                "not every replica serves reads after {SERVING_TIMEOUT:?}: {seen}"
            )));
        }
    }
    let mut input = format!("DEL {LIST_KEY}\nRPUSH {LIST_KEY}");
    for v in values {
        input.push_str(&format!(" {v}"));
    }
    input.push('\n');
    let reply = redis_benchmark::cli(lab.client(), lab.lab.target(), &input, RUN_LIMIT)?;
    if reply.lines().last().map(str::trim) != Some(&values.len().to_string()) {
        return Err(lab.campaign(format!(
            "RPUSH of {} integers answered {:?}",
            values.len(),
            reply.trim()
        )));
    }
    // Round robin: four rounds over the replicas reach each one several times.
    let reads = 4 * usize::from(lab.setup.nodes());
    let input = format!("SORT_RO {LIST_KEY} LIMIT 0 10\n").repeat(reads);
    let reply = redis_benchmark::cli(lab.client(), lab.lab.target(), &input, RUN_LIMIT)?;
    let got: Vec<&str> = reply.lines().map(str::trim).collect();
    let want: Vec<&str> = expected
        .iter()
        .map(String::as_str)
        .cycle()
        .take(expected.len() * reads)
        .collect();
    if got != want {
        return Err(lab.campaign(format!(
            "{reads} reads `SORT_RO {LIST_KEY} LIMIT 0 10` did not all answer the 10 smallest \
             of the {} integers written ({}): got {:?}",
            options.list_len,
            expected.join(" "),
            reply
        )));
    }
    Ok(())
}

/// The last lines of each member's daemon log, n1 first.
fn daemon_logs(lab: &SetupLab) -> Vec<String> {
    (1..=lab.setup.nodes())
        .map(|i| {
            let path = lab.lab.info.state_dir.join(format!("n{i}.daemon.log"));
            format!(
                "--- {} ---\n{}",
                path.display(),
                crate::system::log_tail(&path, 40)
            )
        })
        .collect()
}

/// The short name (`n1` …) of the member holding the VIP.
fn primary_host(lab: &SetupLab) -> Result<String, BenchError> {
    match lab.lab.holders()?.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(lab.campaign(format!(
            "expected one member holding the VIP, found {other:?}"
        ))),
    }
}

fn measure(lab: &SetupLab, options: &ActiveOptions, round: usize) -> Result<Sample, BenchError> {
    let target = lab.lab.target();
    let client = lab.client();
    // Unmeasured: the first requests pay for ARP, the connection and cold caches.
    redis_benchmark::run(client, target, 1, 200, &["-t", "ping_mbulk"], RUN_LIMIT)?;
    let latency = redis_benchmark::run(
        client,
        target,
        1,
        options.latency_requests,
        &["-r", "10000", "-t", "ping_mbulk,set,get"],
        RUN_LIMIT,
    )?;
    let pick = |run: &redis_benchmark::BenchmarkRun, name: &str| {
        run.row(name)
            .cloned()
            .ok_or_else(|| lab.campaign(format!("redis-benchmark reported no {name}: {run:?}")))
    };
    let update = redis_benchmark::run(
        client,
        target,
        options.clients,
        options.update_requests,
        &["-r", "10000", "-t", "set"],
        RUN_LIMIT,
    )?;
    let reads_before = reads_per_member(lab)?;
    let throttle_before = throttling(lab);
    let cpu_before = member_cpu(lab);
    let read_started = Instant::now();
    let read = redis_benchmark::run(
        client,
        target,
        options.clients,
        options.read_requests,
        &["SORT_RO", LIST_KEY, "LIMIT", "0", "10"],
        RUN_LIMIT,
    )?;
    let read_seconds = read_started.elapsed().as_secs_f64();
    let cpu_after = member_cpu(lab);
    let throttle_after = throttling(lab);
    let read_cores = cpu_after
        .iter()
        .zip(&cpu_before)
        .map(|(a, b)| MemberCores {
            daemon: (a.daemon - b.daemon).max(0.0) / 1e6 / read_seconds,
            redis: (a.redis - b.redis).max(0.0) / 1e6 / read_seconds,
        })
        .collect();
    let reads_after = reads_per_member(lab)?;
    let throttled_share = throttle_before
        .iter()
        .zip(&throttle_after)
        .map(|(&(p0, t0), &(p1, t1))| {
            let periods = p1.saturating_sub(p0);
            if periods == 0 {
                0.0
            } else {
                t1.saturating_sub(t0) as f64 / periods as f64
            }
        })
        .collect();
    let read_row = read
        .rows
        .first()
        .cloned()
        .ok_or_else(|| lab.campaign("redis-benchmark reported no read".into()))?;
    Ok(Sample {
        round,
        setup: lab.setup,
        ping: pick(&latency, "PING_MBULK")?,
        set: pick(&latency, "SET")?,
        get: pick(&latency, "GET")?,
        update: pick(&update, "SET")?,
        read: read_row,
        reads_per_member: reads_after
            .iter()
            .zip(&reads_before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
        throttled_share,
        read_cores,
        error_lines: latency.error_lines + update.error_lines + read.error_lines,
    })
}

/// How many `SORT_RO` each member's own redis-server has run, n1 first.
fn reads_per_member(lab: &SetupLab) -> Result<Vec<u64>, BenchError> {
    let local = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), lab.lab.info.port);
    lab.lab
        .info
        .nodes
        .iter()
        .map(|ns| {
            let info = redis_benchmark::cli(ns, local, "INFO commandstats\n", RUN_LIMIT)?;
            Ok(sort_ro_calls(&info))
        })
        .collect()
}

/// `cmdstat_sort_ro:calls=N,…` of an `INFO commandstats` reply; 0 before the first.
fn sort_ro_calls(info: &str) -> u64 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("cmdstat_sort_ro:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// CPU microseconds each member's daemon (`daemon`) and redis-server (`redis`) used so far,
/// n1 first, from the kernel's per-process accounting.
fn member_cpu(lab: &SetupLab) -> Vec<MemberCores> {
    lab.lab
        .info
        .nodes
        .iter()
        .map(|ns| {
            let pids = crate::system::pids_in_namespace(ns);
            let times = cpu::sample(&pids);
            let mut used = MemberCores::default();
            for (pid, time) in pids.iter().zip(times) {
                let us = time.user_us + time.system_us;
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "redis-server" {
                    used.redis += us;
                } else {
                    used.daemon += us;
                }
            }
            used
        })
        .collect()
}

/// (CFS periods, periods throttled) of each member's cgroup, n1 first.
fn throttling(lab: &SetupLab) -> Vec<(u64, u64)> {
    lab.cgroups
        .iter()
        .map(|dir| cpu_quota::throttling(dir).unwrap_or((0, 0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rps: f64, avg_ms: f64) -> CsvRow {
        CsvRow {
            test: "X".into(),
            rps,
            avg_ms,
            min_ms: 0.0,
            p50_ms: avg_ms,
            p95_ms: avg_ms,
            p99_ms: avg_ms,
            max_ms: avg_ms,
        }
    }

    fn sample(round: usize, setup: Setup, read_rps: f64, ping_ms: f64) -> Sample {
        Sample {
            round,
            setup,
            ping: row(1.0, ping_ms),
            set: row(1.0, ping_ms),
            get: row(1.0, ping_ms),
            update: row(1000.0, 1.0),
            read: row(read_rps, 40.0 / read_rps * 1000.0),
            reads_per_member: vec![10, 10],
            throttled_share: vec![0.5, 0.25],
            read_cores: vec![MemberCores::default(); 2],
            error_lines: 0,
        }
    }

    #[test]
    fn ratios_are_taken_against_the_single_server_of_the_same_round() {
        let report = ActiveReport {
            quick: true,
            rounds: 2,
            clients: 40,
            list_len: 2000,
            cpu_quota: Some(DEFAULT_CPU_QUOTA),
            cpu_quota_mechanism: Some("cgroup v2".into()),
            started_unix_s: 0,
            seconds: 1.0,
            samples: vec![
                sample(0, Setup::Single, 500.0, 0.1),
                sample(0, Setup::Active(2), 1000.0, 0.2),
                sample(1, Setup::Single, 1000.0, 0.1),
                sample(1, Setup::Active(2), 2000.0, 0.2),
            ],
            failures: vec![Failure {
                round: 1,
                setup: Setup::Active(3),
                error: "redis-benchmark exited: WARNING: no CONFIG\nError from server: ERR try again\nmore".into(),
                daemon_logs: Vec::new(),
            }],
        };
        let rows = report.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].read_ratio, 1.0);
        assert_eq!(rows[1].read_ratio, 2.0);
        assert!((rows[1].ping_ratio - 2.0).abs() < 1e-9);
        let md = report.markdown();
        assert!(md.contains("| active, 2 replicas |"), "{md}");
        assert!(md.contains("| 52.3 |"), "{md}");
        assert!(md.contains("50/50"), "{md}");
        assert!(
            md.contains("- round 2, active, 3 replicas: Error from server: ERR try again\n"),
            "{md}"
        );
        assert_eq!(report.errors(), 1);
    }

    #[test]
    fn reads_commandstats_and_a_fixed_list() {
        let info = "# Commandstats\r\ncmdstat_ping:calls=3,usec=1\r\ncmdstat_sort_ro:calls=42,usec=900,usec_per_call=21.43\r\n";
        assert_eq!(sort_ro_calls(info), 42);
        assert_eq!(sort_ro_calls("# Commandstats\r\n"), 0);
        assert_eq!(list_values(5), list_values(5));
        assert_eq!(list_values(2000).len(), 2000);
    }

    #[test]
    fn safe_delivery_and_rr_np_are_compared_with_the_default_group_of_their_round() {
        let mut safe = sample(0, Setup::ActiveSafe(3), 1000.0, 0.3);
        safe.update = row(500.0, 2.0);
        let mut safe_later = sample(1, Setup::ActiveSafe(3), 1000.0, 0.6);
        safe_later.update = row(500.0, 2.0);
        let report = ActiveReport {
            quick: true,
            rounds: 2,
            clients: 40,
            list_len: 2000,
            cpu_quota: None,
            cpu_quota_mechanism: None,
            started_unix_s: 0,
            seconds: 1.0,
            samples: vec![
                sample(0, Setup::Single, 500.0, 0.1),
                sample(0, Setup::Active(3), 1000.0, 0.2),
                safe,
                sample(0, Setup::ActiveReadsOffPrimary(3), 1500.0, 0.2),
                sample(1, Setup::Active(3), 2000.0, 0.4),
                safe_later,
                sample(1, Setup::ActiveReadsOffPrimary(3), 3000.0, 0.4),
            ],
            failures: Vec::new(),
        };
        let comparisons = report.comparisons();
        assert_eq!(comparisons.len(), 2);
        let safe = &comparisons[0];
        assert_eq!(
            (safe.variant, safe.base),
            (Setup::ActiveSafe(3), Setup::Active(3))
        );
        assert!((safe.set_avg_ratio - 1.5).abs() < 1e-9, "{safe:?}");
        assert!((safe.update_rps_ratio - 0.5).abs() < 1e-9, "{safe:?}");
        assert!((safe.update_p50_ratio - 2.0).abs() < 1e-9, "{safe:?}");
        let off = &comparisons[1];
        assert_eq!(off.variant, Setup::ActiveReadsOffPrimary(3));
        // Each round's own default group: 1500/1000 and 3000/2000.
        assert!((off.read_rps_ratio - 1.5).abs() < 1e-9, "{off:?}");
        let md = report.markdown();
        assert!(
            md.contains(
                "| active, 3 replicas, safe delivery against active, 3 replicas | ×1.50 | ×1.50 \
                 | ×0.50 | ×2.00 |"
            ),
            "{md}"
        );
        assert!(md.contains("| active, 3 replicas, RR-NP against active, 3 replicas |"));
        assert_eq!(report.rows().len(), 4);
    }
}
