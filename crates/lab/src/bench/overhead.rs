//! `steadfast-lab bench overhead`: what protection costs when nothing fails — the table of seed
//! `000_751a5321d3176cb1.txt` (its Figures 4 and 5 and Table 1), measured here.
//!
//! One lab per mode (unreplicated, unreplicated behind HAProxy, simplex, duplex), all up at
//! once, 2 nodes and a witness each, so every mode runs on the same machine state. The HAProxy
//! row is the reference proxy hop: the unreplicated lab with HAProxy (`mode http`) on the
//! serving node, on the service address, and the backend behind it where simplex and duplex put
//! theirs; its CPU counts in the primary's daemon column. Without haproxy installed that row
//! alone is skipped, and the report says why. Rounds interleave the modes (the order rotates
//! each round) so drift hits all of them alike; ratios are taken inside a round, against the
//! unreplicated run of the same round and size, and summarised by their median and spread.
//! For each mode, backend and reply size:
//! - latency: wrk with one connection and one request outstanding, p50 and p99;
//! - throughput: wrk with many connections, requests/s and MB/s;
//! - CPU per request during the throughput run, user and system, for the daemon and the backend
//!   of the primary and of the backup, from the kernel's per-process accounting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::cpu::{self, CpuTime};
use super::wrk::{self, WrkResult, WrkRun};
use super::{percentile, plane_status, unique_lab_name, wait_until, BenchError, BenchLab};
use crate::options::{BackendKind, FrontProxy, Mode, UpOptions};
use crate::state::LabState;
use crate::topology::{Host, LabName};

pub const DEFAULT_ROUNDS: usize = 3;
pub const DEFAULT_SIZES: [u64; 4] = crate::webservers::DOCROOT_SIZES;
pub const QUICK_SIZES: [u64; 2] = [1024, 50 * 1024];
pub const DEFAULT_CONNECTIONS: u32 = 32;
/// How long a duplex lab may take for its backup to join before the bench gives up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
const SETUPS: [Setup; 5] = [
    Setup::Unreplicated,
    Setup::UnreplicatedHaproxy,
    Setup::Simplex,
    Setup::Duplex,
    Setup::DuplexUnencrypted,
];

/// What one lab runs: a mode, and for duplex whether its replication stream is encrypted as
/// well as authenticated (the default) or authenticated only (`replication_encryption =
/// false`), so that the cost of encryption shows next to its absence in the same run; for
/// unreplicated, whether HAProxy stands in front of the backend (the reference proxy hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    Unreplicated,
    /// Unreplicated, with HAProxy in `mode http` on the serving node in front of the backend.
    UnreplicatedHaproxy,
    Simplex,
    Duplex,
    DuplexUnencrypted,
}

impl Setup {
    /// The proxy the lab runs in front of the backend, if any.
    pub fn front_proxy(self) -> Option<FrontProxy> {
        match self {
            Setup::UnreplicatedHaproxy => Some(FrontProxy::Haproxy),
            _ => None,
        }
    }

    pub fn mode(self) -> Mode {
        match self {
            Setup::Unreplicated | Setup::UnreplicatedHaproxy => Mode::Unreplicated,
            Setup::Simplex => Mode::Simplex,
            Setup::Duplex | Setup::DuplexUnencrypted => Mode::Duplex,
        }
    }
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setup::UnreplicatedHaproxy => f.write_str("unreplicated-haproxy"),
            Setup::DuplexUnencrypted => f.write_str("duplex-unencrypted"),
            other => write!(f, "{}", other.mode()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OverheadOptions {
    pub rounds: usize,
    pub backends: Vec<BackendKind>,
    pub sizes: Vec<u64>,
    pub latency_duration: Duration,
    pub throughput_duration: Duration,
    pub throughput_connections: u32,
    pub quick: bool,
    pub steadfast_exe: PathBuf,
}

impl OverheadOptions {
    /// The full table: 3 rounds, builtin and nginx, 1 KB to 1 MB, 2 s latency and 3 s
    /// throughput runs (about 7 minutes).
    pub fn full(steadfast_exe: PathBuf) -> Self {
        OverheadOptions {
            rounds: DEFAULT_ROUNDS,
            backends: vec![BackendKind::Builtin, BackendKind::Nginx],
            sizes: DEFAULT_SIZES.to_vec(),
            latency_duration: Duration::from_secs(2),
            throughput_duration: Duration::from_secs(3),
            throughput_connections: DEFAULT_CONNECTIONS,
            quick: false,
            steadfast_exe,
        }
    }

    /// One round, builtin, 1 KB and 50 KB, 1 s runs: well under a minute. Unreplicated,
    /// simplex and duplex only (no duplex-unencrypted, no HAProxy row).
    pub fn quick(steadfast_exe: PathBuf) -> Self {
        OverheadOptions {
            rounds: 1,
            backends: vec![BackendKind::Builtin],
            sizes: QUICK_SIZES.to_vec(),
            latency_duration: Duration::from_secs(1),
            throughput_duration: Duration::from_secs(1),
            quick: true,
            ..OverheadOptions::full(steadfast_exe)
        }
    }
}

/// CPU time per request of one node's daemon and backend. In the HAProxy row the primary's
/// daemon is the steadfast daemon and HAProxy together: what the node runs besides its backend,
/// as the daemon is in simplex and duplex (election and proxy in one process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct NodeCpu {
    pub daemon: CpuTime,
    pub backend: CpuTime,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuPerRequest {
    pub primary: NodeCpu,
    pub backup: NodeCpu,
}

/// One mode, backend and size in one round.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadSample {
    pub round: usize,
    pub mode: Setup,
    pub backend: BackendKind,
    pub reply_bytes: u64,
    pub latency: WrkResult,
    pub throughput: WrkResult,
    pub cpu_us_per_req: CpuPerRequest,
}

/// The median over rounds of one mode, backend and size, with its ratios to unreplicated.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadRow {
    pub mode: Setup,
    pub backend: BackendKind,
    pub reply_bytes: u64,
    pub rps: f64,
    pub mb_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_req: CpuPerRequest,
    /// Median over rounds of (this mode's rps / unreplicated's rps in the same round).
    pub rps_ratio: f64,
    pub p50_ratio: f64,
    pub rps_spread: (f64, f64),
    pub p50_spread: (f64, f64),
    /// Socket errors and non-2xx replies wrk saw, over every run of the row.
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OverheadReport {
    pub bench: &'static str,
    pub quick: bool,
    pub rounds: usize,
    pub throughput_connections: u32,
    pub samples: Vec<OverheadSample>,
    /// Setups the run left out, and why (HAProxy not installed).
    pub skipped: Vec<SkippedSetup>,
}

/// A setup the run could not measure, and why.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedSetup {
    pub mode: Setup,
    pub reason: String,
}

/// Same-round comparison of one setup with another (not with unreplicated) for one backend and
/// size: simplex against the HAProxy hop.
#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    pub mode: Setup,
    pub reference: Setup,
    pub backend: BackendKind,
    pub reply_bytes: u64,
    /// Median over rounds of (mode's req/s / reference's req/s in the same round).
    pub rps_ratio: f64,
    /// Median over rounds of (mode's p50 / reference's p50 in the same round).
    pub p50_ratio: f64,
    /// The same for the primary's CPU per request (daemon and backend, user and system).
    pub cpu_ratio: f64,
}

/// A lab of one mode with the pids its CPU is read from.
struct ModeLab {
    mode: Setup,
    lab: BenchLab,
    /// primary daemon, primary backend, backup daemon, backup backend.
    pids: [i32; 4],
    /// The primary's front proxy (HAProxy), counted with its daemon.
    proxy: Option<i32>,
}

fn bring_up(
    options: &OverheadOptions,
    backend: BackendKind,
    mode: Setup,
) -> Result<ModeLab, BenchError> {
    let mut up = UpOptions::new(unique_lab_name("ov"), 2, &options.steadfast_exe);
    up.mode = mode.mode();
    if mode == Setup::DuplexUnencrypted {
        up.replication_encryption = Some(false);
    }
    up.front_proxy = mode.front_proxy();
    up.backend = backend;
    up.witness = true;
    up.ready_timeout = Duration::from_secs(30);
    let lab = BenchLab::up(&up)?;
    let fail = |reason: String| BenchError::Campaign {
        lab: lab.name().to_string(),
        row: format!("overhead {mode} {backend}"),
        reason,
    };
    let primary = match lab.holders()?.as_slice() {
        [only] => only.clone(),
        other => {
            return Err(fail(format!(
                "expected one address holder, found {other:?}"
            )))
        }
    };
    if mode.mode() == Mode::Duplex
        && !wait_until(JOIN_TIMEOUT, || {
            Ok(plane_status(&lab, &primary, "overhead")?["backups_joined"]
                .as_u64()
                .unwrap_or(0)
                > 0)
        })?
    {
        return Err(fail(format!(
            "no backup joined {primary} within {JOIN_TIMEOUT:?}"
        )));
    }
    let state = LabState::load(&LabName::parse(lab.name())?)?;
    let backup = if primary == "n1" { "n2" } else { "n1" };
    let pids_of = |short: &str| -> Result<(i32, i32), BenchError> {
        let host = Host::parse_short(short)
            .and_then(|h| state.host(h))
            .ok_or_else(|| fail(format!("the lab state has no host {short}")))?;
        match (host.daemon_pid, host.backend_pid) {
            (Some(d), Some(b)) => Ok((d, b)),
            _ => Err(fail(format!("{short} has no daemon or backend pid"))),
        }
    };
    let (pd, pb) = pids_of(&primary)?;
    let (bd, bb) = pids_of(backup)?;
    let proxy = match mode.front_proxy() {
        None => None,
        Some(kind) => Some(
            Host::parse_short(&primary)
                .and_then(|h| state.host(h))
                .and_then(|h| h.proxy_pid)
                .ok_or_else(|| fail(format!("{primary} has no {kind} pid")))?,
        ),
    };
    Ok(ModeLab {
        mode,
        lab,
        pids: [pd, pb, bd, bb],
        proxy,
    })
}

fn measure(
    options: &OverheadOptions,
    lab: &ModeLab,
    backend: BackendKind,
    size: u64,
    round: usize,
) -> Result<OverheadSample, BenchError> {
    let namespace = &lab.lab.info.client_ns;
    let base = WrkRun {
        target: lab.lab.target(),
        url_path: crate::webservers::bytes_path(size),
        threads: 1,
        connections: 1,
        duration: options.latency_duration,
    };
    let latency = wrk::run(namespace, &base)?;
    // The primary's front proxy, if any, last: index 4.
    let roots: Vec<i32> = lab.pids.iter().copied().chain(lab.proxy).collect();
    let before = cpu::sample(&roots);
    let throughput = wrk::run(
        namespace,
        &WrkRun {
            threads: 2,
            connections: options.throughput_connections,
            duration: options.throughput_duration,
            ..base
        },
    )?;
    let after = cpu::sample(&roots);
    let requests = throughput.requests;
    let per = |i: usize| match (after.get(i), before.get(i)) {
        (Some(a), Some(b)) => a.since(*b).per(requests),
        _ => CpuTime::default(),
    };
    Ok(OverheadSample {
        round,
        mode: lab.mode,
        backend,
        reply_bytes: size,
        latency,
        throughput,
        cpu_us_per_req: CpuPerRequest {
            primary: NodeCpu {
                daemon: per(0).plus(per(4)),
                backend: per(1),
            },
            backup: NodeCpu {
                daemon: per(2),
                backend: per(3),
            },
        },
    })
}

pub fn run(
    options: &OverheadOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<OverheadReport, BenchError> {
    if options.rounds == 0 || options.sizes.is_empty() || options.backends.is_empty() {
        return Err(BenchError::Options(
            "overhead needs at least one round, one size and one backend".into(),
        ));
    }
    if let Some(backend) = options.backends.iter().find(|b| !b.speaks_http()) {
        return Err(BenchError::Options(format!(
            "the overhead bench measures HTTP with wrk through simplex and duplex, which frame \
             HTTP/1.1 only: the {backend} backend cannot be measured yet (active mode for Redis \
             is not built yet)"
        )));
    }
    let served = |size: &u64| {
        crate::webservers::DOCROOT_SIZES.contains(size) || *size == crate::webservers::DOCROOT_LARGE
    };
    if let Some(size) = options.sizes.iter().find(|s| !served(s)) {
        return Err(BenchError::Options(format!(
            "reply size {size} is not one the docroot serves ({:?} or {})",
            crate::webservers::DOCROOT_SIZES,
            crate::webservers::DOCROOT_LARGE
        )));
    }
    crate::system::require_program("wrk", "wrk")?;
    let mut skipped = Vec::new();
    let mut setups: Vec<Setup> = SETUPS.to_vec();
    if options.quick {
        setups.retain(|s| !matches!(s, Setup::DuplexUnencrypted | Setup::UnreplicatedHaproxy));
    }
    if setups.contains(&Setup::UnreplicatedHaproxy)
        && crate::system::find_program("haproxy").is_none()
    {
        let reason = "haproxy is not installed (no `haproxy` in PATH, /usr/sbin, /sbin): \
                      install the Debian package haproxy to measure the reference proxy hop"
            .to_string();
        progress(&format!(
            "skipping the {} row: {reason}",
            Setup::UnreplicatedHaproxy
        ));
        setups.retain(|s| *s != Setup::UnreplicatedHaproxy);
        skipped.push(SkippedSetup {
            mode: Setup::UnreplicatedHaproxy,
            reason,
        });
    }
    let mut samples = Vec::new();
    for backend in &options.backends {
        let mut labs = Vec::new();
        for &mode in &setups {
            progress(&format!("{backend}: bringing up the {mode} lab"));
            labs.push(bring_up(options, *backend, mode)?);
        }
        for round in 0..options.rounds {
            for size in &options.sizes {
                // Rotating the order spreads any warm-up or drift over every mode.
                for k in 0..labs.len() {
                    let lab = &labs[(k + round) % labs.len()];
                    let sample = measure(options, lab, *backend, *size, round)?;
                    progress(&format!(
                        "round {} {backend} {} B {}: {:.0} req/s, p50 {:.0} µs",
                        round + 1,
                        size,
                        lab.mode,
                        sample.throughput.requests_per_second,
                        sample.latency.p50_us
                    ));
                    samples.push(sample);
                }
            }
        }
    }
    Ok(OverheadReport {
        bench: "overhead",
        quick: options.quick,
        rounds: options.rounds,
        throughput_connections: options.throughput_connections,
        samples,
        skipped,
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    percentile(&values.collect::<Vec<_>>(), 50.0).unwrap_or(f64::NAN)
}

fn spread(values: &[f64]) -> (f64, f64) {
    (
        percentile(values, 0.0).unwrap_or(f64::NAN),
        percentile(values, 100.0).unwrap_or(f64::NAN),
    )
}

fn median_cpu(samples: &[&OverheadSample], pick: impl Fn(&CpuPerRequest) -> CpuTime) -> CpuTime {
    CpuTime {
        user_us: median(samples.iter().map(|s| pick(&s.cpu_us_per_req).user_us)),
        system_us: median(samples.iter().map(|s| pick(&s.cpu_us_per_req).system_us)),
    }
}

/// The median over rounds of value(sample) / value(reference sample of the same round).
fn same_round_ratio(
    samples: &[&OverheadSample],
    reference: &[&OverheadSample],
    value: impl Fn(&OverheadSample) -> f64,
) -> f64 {
    median(samples.iter().filter_map(|s| {
        reference
            .iter()
            .find(|r| r.round == s.round)
            .map(|r| value(s) / value(r))
    }))
}

fn primary_cpu(s: &OverheadSample) -> f64 {
    let p = s.cpu_us_per_req.primary;
    p.daemon.user_us + p.daemon.system_us + p.backend.user_us + p.backend.system_us
}

impl OverheadReport {
    fn cell(&self, backend: BackendKind, size: u64, mode: Setup) -> Vec<&OverheadSample> {
        self.samples
            .iter()
            .filter(|s| s.backend == backend && s.reply_bytes == size && s.mode == mode)
            .collect()
    }

    fn keys(&self) -> Vec<(BackendKind, u64)> {
        let mut keys: Vec<(BackendKind, u64)> = Vec::new();
        for s in &self.samples {
            if !keys.contains(&(s.backend, s.reply_bytes)) {
                keys.push((s.backend, s.reply_bytes));
            }
        }
        keys
    }

    /// `mode` against `reference`, per backend and size, from the rounds where both ran: the
    /// issue's acceptance compares simplex with the HAProxy hop this way.
    pub fn versus(&self, mode: Setup, reference: Setup) -> Vec<Versus> {
        let mut out = Vec::new();
        for (backend, size) in self.keys() {
            let samples = self.cell(backend, size, mode);
            let refs = self.cell(backend, size, reference);
            if samples.is_empty() || refs.is_empty() {
                continue;
            }
            out.push(Versus {
                mode,
                reference,
                backend,
                reply_bytes: size,
                rps_ratio: same_round_ratio(&samples, &refs, |s| s.throughput.requests_per_second),
                p50_ratio: same_round_ratio(&samples, &refs, |s| s.latency.p50_us),
                cpu_ratio: same_round_ratio(&samples, &refs, primary_cpu),
            });
        }
        out
    }

    /// One row per backend, size and mode, in that order.
    pub fn rows(&self) -> Vec<OverheadRow> {
        let mut rows = Vec::new();
        for (backend, size) in self.keys() {
            let baseline = self.cell(backend, size, Setup::Unreplicated);
            for mode in SETUPS {
                let samples = self.cell(backend, size, mode);
                if samples.is_empty() {
                    continue;
                }
                let ratios = |value: fn(&OverheadSample) -> f64| -> f64 {
                    same_round_ratio(&samples, &baseline, value)
                };
                let rps: Vec<f64> = samples
                    .iter()
                    .map(|s| s.throughput.requests_per_second)
                    .collect();
                let p50: Vec<f64> = samples.iter().map(|s| s.latency.p50_us).collect();
                rows.push(OverheadRow {
                    mode,
                    backend,
                    reply_bytes: size,
                    rps: median(rps.iter().copied()),
                    mb_s: median(samples.iter().map(|s| s.throughput.bytes_per_second / 1e6)),
                    p50_us: median(p50.iter().copied()),
                    p99_us: median(samples.iter().map(|s| s.latency.p99_us)),
                    cpu_us_per_req: CpuPerRequest {
                        primary: NodeCpu {
                            daemon: median_cpu(&samples, |c| c.primary.daemon),
                            backend: median_cpu(&samples, |c| c.primary.backend),
                        },
                        backup: NodeCpu {
                            daemon: median_cpu(&samples, |c| c.backup.daemon),
                            backend: median_cpu(&samples, |c| c.backup.backend),
                        },
                    },
                    rps_ratio: ratios(|s| s.throughput.requests_per_second),
                    p50_ratio: ratios(|s| s.latency.p50_us),
                    rps_spread: spread(&rps),
                    p50_spread: spread(&p50),
                    errors: samples
                        .iter()
                        .map(|s| {
                            s.latency.socket_errors
                                + s.latency.non_2xx
                                + s.throughput.socket_errors
                                + s.throughput.non_2xx
                        })
                        .sum(),
                });
            }
        }
        rows
    }

    pub fn errors(&self) -> u64 {
        self.rows().iter().map(|r| r.errors).sum()
    }

    pub fn summary_json(&self) -> serde_json::Value {
        let finite = |v: f64| if v.is_finite() { Some(v) } else { None };
        let cpu = |c: CpuTime| serde_json::json!({"user": c.user_us, "system": c.system_us});
        let node =
            |n: NodeCpu| serde_json::json!({"daemon": cpu(n.daemon), "backend": cpu(n.backend)});
        let rows: Vec<serde_json::Value> = self
            .rows()
            .into_iter()
            .map(|r| {
                serde_json::json!({
                    "mode": r.mode,
                    "backend": r.backend,
                    "reply_bytes": r.reply_bytes,
                    "rps": r.rps,
                    "mb_s": r.mb_s,
                    "p50_us": r.p50_us,
                    "p99_us": r.p99_us,
                    "cpu_us_per_req": {
                        "primary": node(r.cpu_us_per_req.primary),
                        "backup": node(r.cpu_us_per_req.backup),
                    },
                    "rps_ratio": finite(r.rps_ratio),
                    "p50_ratio": finite(r.p50_ratio),
                    "rps_spread": [r.rps_spread.0, r.rps_spread.1],
                    "p50_spread_us": [r.p50_spread.0, r.p50_spread.1],
                    "errors": r.errors,
                })
            })
            .collect();
        let versus: Vec<serde_json::Value> = self
            .versus(Setup::Simplex, Setup::UnreplicatedHaproxy)
            .into_iter()
            .map(|v| {
                serde_json::json!({
                    "mode": v.mode,
                    "reference": v.reference,
                    "backend": v.backend,
                    "reply_bytes": v.reply_bytes,
                    "rps_ratio": finite(v.rps_ratio),
                    "p50_ratio": finite(v.p50_ratio),
                    "primary_cpu_ratio": finite(v.cpu_ratio),
                })
            })
            .collect();
        serde_json::json!({
            "bench": self.bench,
            "quick": self.quick,
            "rounds": self.rounds,
            "throughput_connections": self.throughput_connections,
            "rows": rows,
            "simplex_vs_haproxy": versus,
            "skipped": self.skipped,
        })
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} round(s), modes interleaved; latency: 1 connection; throughput: {} connections; \
             ratios are medians of same-round ratios to unreplicated; CPU µs per request \
             (user+system) during the throughput run\n\n",
            self.rounds, self.throughput_connections
        );
        out.push_str(
            "| backend | reply | mode | req/s (min-max) | MB/s | req/s ×unrepl | p50 µs (min-max) | p50 ×unrepl | p99 µs | primary daemon | primary backend | backup daemon | errors |\n",
        );
        out.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let both = |c: CpuTime| format!("{:.1}+{:.1}", c.user_us, c.system_us);
        for r in self.rows() {
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} ({:.0}-{:.0}) | {:.1} | {:.2} | {:.0} ({:.0}-{:.0}) | {:.2} | {:.0} | {} | {} | {} | {} |\n",
                r.backend,
                size_label(r.reply_bytes),
                r.mode,
                r.rps,
                r.rps_spread.0,
                r.rps_spread.1,
                r.mb_s,
                r.rps_ratio,
                r.p50_us,
                r.p50_spread.0,
                r.p50_spread.1,
                r.p50_ratio,
                r.p99_us,
                both(r.cpu_us_per_req.primary.daemon),
                both(r.cpu_us_per_req.primary.backend),
                both(r.cpu_us_per_req.backup.daemon),
                r.errors,
            ));
        }
        if self
            .samples
            .iter()
            .any(|s| s.mode == Setup::UnreplicatedHaproxy)
        {
            out.push_str(
                "\nunreplicated-haproxy: HAProxy (mode http) on the serving node in front of the \
                 backend; its primary daemon column is the steadfast daemon plus HAProxy.\n",
            );
        }
        let versus = self.versus(Setup::Simplex, Setup::UnreplicatedHaproxy);
        if !versus.is_empty() {
            out.push_str(
                "\nSimplex against the HAProxy hop (medians of same-round ratios; below 1 is \
                 cheaper for p50 and CPU, above 1 is faster for req/s):\n\n\
                 | backend | reply | req/s ×haproxy | p50 ×haproxy | primary CPU/req ×haproxy |\n\
                 |---|---:|---:|---:|---:|\n",
            );
            for v in versus {
                out.push_str(&format!(
                    "| {} | {} | {:.2} | {:.2} | {:.2} |\n",
                    v.backend,
                    size_label(v.reply_bytes),
                    v.rps_ratio,
                    v.p50_ratio,
                    v.cpu_ratio
                ));
            }
        }
        for s in &self.skipped {
            out.push_str(&format!("\nNot measured: {}: {}\n", s.mode, s.reason));
        }
        out
    }

    /// Per backend, throughput relative to unreplicated as grouped bars (one group per size).
    pub fn ratio_svg(&self, backend: BackendKind) -> String {
        let rows: Vec<OverheadRow> = self
            .rows()
            .into_iter()
            .filter(|r| r.backend == backend)
            .collect();
        let mut groups: Vec<(String, Vec<(String, f64)>)> = Vec::new();
        for r in &rows {
            let label = size_label(r.reply_bytes);
            if groups.last().map(|g| &g.0) != Some(&label) {
                groups.push((label.clone(), Vec::new()));
            }
            if let Some(group) = groups.last_mut() {
                group.1.push((r.mode.to_string(), r.rps_ratio));
            }
        }
        super::plot::bars_svg(
            &format!("{backend}: throughput relative to unreplicated (same run)"),
            "req/s ÷ unreplicated req/s",
            &groups,
        )
    }

    /// Writes `overhead.json` (every sample and the rows) and `overhead-<backend>.svg`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::io("creating", dir, e))?;
        let path = dir.join("overhead.json");
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "summary": self.summary_json(),
            "samples": self.samples,
        }))
        .expect("a report serializes");
        std::fs::write(&path, text).map_err(|e| BenchError::io("writing", &path, e))?;
        let mut written = vec![path];
        let mut backends: Vec<BackendKind> = Vec::new();
        for s in &self.samples {
            if !backends.contains(&s.backend) {
                backends.push(s.backend);
            }
        }
        for backend in backends {
            let path = dir.join(format!("overhead-{backend}.svg"));
            std::fs::write(&path, self.ratio_svg(backend))
                .map_err(|e| BenchError::io("writing", &path, e))?;
            written.push(path);
        }
        Ok(written)
    }
}

fn size_label(bytes: u64) -> String {
    match bytes {
        b if b >= 1024 * 1024 && b % (1024 * 1024) == 0 => format!("{} MB", b / (1024 * 1024)),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KB", b / 1024),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(rps: f64, p50: f64) -> WrkResult {
        WrkResult {
            requests: (rps * 2.0) as u64,
            seconds: 2.0,
            requests_per_second: rps,
            bytes_per_second: rps * 1100.0,
            p50_us: p50,
            p99_us: p50 * 2.0,
            socket_errors: 0,
            non_2xx: 0,
        }
    }

    fn sample(round: usize, mode: Setup, rps: f64, p50: f64) -> OverheadSample {
        OverheadSample {
            round,
            mode,
            backend: BackendKind::Builtin,
            reply_bytes: 1024,
            latency: result(rps / 10.0, p50),
            throughput: result(rps, p50 * 4.0),
            cpu_us_per_req: CpuPerRequest::default(),
        }
    }

    fn report(samples: Vec<OverheadSample>) -> OverheadReport {
        OverheadReport {
            bench: "overhead",
            quick: false,
            rounds: 2,
            throughput_connections: 32,
            samples,
            skipped: Vec::new(),
        }
    }

    #[test]
    fn ratios_compare_each_round_with_its_own_baseline() {
        // Round 1 is a slow machine for everyone: same-round ratios hide it.
        let r = report(vec![
            sample(0, Setup::Unreplicated, 10_000.0, 100.0),
            sample(0, Setup::Duplex, 8_000.0, 150.0),
            sample(1, Setup::Unreplicated, 5_000.0, 200.0),
            sample(1, Setup::Duplex, 4_000.0, 300.0),
        ]);
        let rows = r.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].mode, Setup::Unreplicated);
        assert_eq!(rows[0].rps_ratio, 1.0);
        assert_eq!(rows[1].mode, Setup::Duplex);
        assert!((rows[1].rps_ratio - 0.8).abs() < 1e-9);
        assert!((rows[1].p50_ratio - 1.5).abs() < 1e-9);
        assert_eq!(rows[1].rps_spread, (4_000.0, 8_000.0));
        let json = r.summary_json();
        let duplex = &json["rows"][1];
        assert_eq!(duplex["mode"], "duplex");
        assert_eq!(duplex["reply_bytes"], 1024);
        assert!(duplex["cpu_us_per_req"]["primary"]["daemon"]["user"].is_number());
        assert!(r.markdown().contains("| builtin | 1 KB | duplex |"));
    }

    #[test]
    fn a_mode_without_a_baseline_has_no_ratio() {
        let r = report(vec![sample(0, Setup::Simplex, 1_000.0, 10.0)]);
        let rows = r.rows();
        assert!(rows[0].rps_ratio.is_nan());
        assert!(r.summary_json()["rows"][0]["rps_ratio"].is_null());
    }

    #[test]
    fn errors_are_summed_over_runs() {
        let mut s = sample(0, Setup::Duplex, 1_000.0, 10.0);
        s.throughput.socket_errors = 2;
        s.latency.non_2xx = 1;
        assert_eq!(report(vec![s]).errors(), 3);
    }

    #[test]
    fn the_haproxy_row_is_its_own_setup_and_compares_with_simplex() {
        assert_eq!(
            Setup::UnreplicatedHaproxy.to_string(),
            "unreplicated-haproxy"
        );
        assert_eq!(
            serde_json::to_value(Setup::UnreplicatedHaproxy).unwrap(),
            "unreplicated-haproxy"
        );
        assert_eq!(Setup::UnreplicatedHaproxy.mode(), Mode::Unreplicated);
        assert_eq!(
            Setup::UnreplicatedHaproxy.front_proxy(),
            Some(FrontProxy::Haproxy)
        );
        assert_eq!(Setup::Simplex.front_proxy(), None);
        let mut r = report(vec![
            sample(0, Setup::Unreplicated, 10_000.0, 100.0),
            sample(0, Setup::UnreplicatedHaproxy, 6_000.0, 200.0),
            sample(0, Setup::Simplex, 7_500.0, 150.0),
            sample(1, Setup::Unreplicated, 5_000.0, 200.0),
            sample(1, Setup::UnreplicatedHaproxy, 3_000.0, 400.0),
            sample(1, Setup::Simplex, 3_750.0, 300.0),
        ]);
        let modes: Vec<Setup> = r.rows().iter().map(|row| row.mode).collect();
        assert_eq!(
            modes,
            [
                Setup::Unreplicated,
                Setup::UnreplicatedHaproxy,
                Setup::Simplex
            ]
        );
        let versus = r.versus(Setup::Simplex, Setup::UnreplicatedHaproxy);
        assert_eq!(versus.len(), 1);
        assert!((versus[0].rps_ratio - 1.25).abs() < 1e-9);
        assert!((versus[0].p50_ratio - 0.75).abs() < 1e-9);
        let json = r.summary_json();
        assert_eq!(json["rows"][1]["mode"], "unreplicated-haproxy");
        assert_eq!(json["simplex_vs_haproxy"][0]["rps_ratio"], 1.25);
        let table = r.markdown();
        assert!(
            table.contains("| builtin | 1 KB | unreplicated-haproxy |"),
            "{table}"
        );
        assert!(
            table.contains("| builtin | 1 KB | 1.25 | 0.75 |"),
            "{table}"
        );
        r.skipped.push(SkippedSetup {
            mode: Setup::UnreplicatedHaproxy,
            reason: "haproxy is not installed".into(),
        });
        assert!(r
            .markdown()
            .contains("Not measured: unreplicated-haproxy: haproxy is not installed"));
        assert_eq!(
            r.summary_json()["skipped"][0]["mode"],
            "unreplicated-haproxy"
        );
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(1024), "1 KB");
        assert_eq!(size_label(50 * 1024), "50 KB");
        assert_eq!(size_label(1024 * 1024), "1 MB");
        assert_eq!(size_label(1000), "1000 B");
    }
}
