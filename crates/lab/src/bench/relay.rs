//! `steadfast-lab bench relay`: the link relay (issue 19) as a client sees it.
//!
//! One lab (2 nodes, a witness, the private network, the chosen backend and mode), the
//! primary `n1` throughout:
//! - **cuts**: under the verifying load (a new connection every 10 ms and keep-alive
//!   connections), N cuts of n1's public link of each kind (`link-down`: carrier lost;
//!   `link-blackhole`: carrier up, nothing passes), each held until the sibling relays and a
//!   while after, then restored (failback). Per cut: detection (the cut to n1's log saying the
//!   link is down), takeover of transmission (to n2's log saying it relays), the longest
//!   request in flight in the cut's window (the stall, probes and keep-alive requests alike),
//!   the gap (the longest time in the window without a new connection completing), and the
//!   failed requests; the same over the failback's window.
//! - **direct against relayed**: wrk latency (one connection) and throughput (many) against
//!   the service address with n1's link up, then with it cut (every byte through n2), in
//!   rounds that alternate, ratios taken inside a round.
//!
//! The cut's time is taken just before the lab runs `ip link set` (or loads the nftables
//! black hole): detection includes that command's own start-up, a millisecond or two.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::wrk::{self, WrkResult, WrkRun};
use super::{percentile, unique_lab_name, wait_until, BenchError, BenchLab, Jitter, ProbeLoad};
use crate::faults::{crash, heal};
use crate::load::{ErrorKind, KeepAliveOptions, LoadOptions, LoadReport, Outcome, ProbeOptions};
use crate::options::{BackendKind, CrashKind, Mode, UpOptions};

pub const DEFAULT_CUTS: usize = 20;
pub const QUICK_CUTS: usize = 3;
pub const DEFAULT_CONNECTIONS: usize = 50;
pub const DEFAULT_ROUNDS: usize = 3;
const PROBE_PERIOD: Duration = Duration::from_millis(10);
/// Requests overlapping this span after a cut (or a restore) are that cut's: detection and
/// takeover many times over, and shorter than the hold below.
const WINDOW: Duration = Duration::from_millis(400);
/// How long a cut lasts once the sibling relays.
const HOLD: Duration = Duration::from_millis(600);
const PAUSE_MIN: Duration = Duration::from_millis(300);
const PAUSE_MAX: Duration = Duration::from_millis(700);
/// The relay must be installed (or undone) within this.
const SETTLE: Duration = Duration::from_secs(5);
/// A request of the load gives up after this (then it counts as a failure).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const SERVICE: &str = "10.77.0.100";

#[derive(Debug, Clone)]
pub struct RelayBenchOptions {
    /// Cuts of each kind.
    pub cuts: usize,
    pub kinds: Vec<CrashKind>,
    pub backend: BackendKind,
    pub mode: Mode,
    pub connections: usize,
    /// Rounds of direct against relayed wrk runs (0: none).
    pub rounds: usize,
    pub wrk_duration: Duration,
    pub throughput_connections: u32,
    /// Reply sizes of the wrk runs.
    pub sizes: Vec<u64>,
    pub steadfast_exe: PathBuf,
}

/// One cut (or its restore) as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct CutSample {
    pub kind: CrashKind,
    pub index: usize,
    pub at_ms: f64,
    /// From the cut to n1's log saying the public link is down.
    pub detection_ms: Option<f64>,
    /// From the cut to n2's log saying it relays for n1 (installed and announced).
    pub takeover_ms: Option<f64>,
    /// The longest request (probe or keep-alive) in flight during the cut's window.
    pub stall_ms: f64,
    /// The same for probes alone (new connections) and keep-alive requests alone.
    pub probe_stall_ms: f64,
    pub keepalive_stall_ms: f64,
    /// The longest time in the window without a probe completing, less the probe period.
    pub gap_ms: f64,
    pub requests_in_window: usize,
    pub failed_in_window: usize,
    pub resets_in_window: usize,
    /// The same over the restore's window.
    pub failback_stall_ms: f64,
    pub failback_failed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathSample {
    pub round: usize,
    pub size: u64,
    pub relayed: bool,
    pub latency: WrkResult,
    pub throughput: WrkResult,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayBenchReport {
    pub bench: &'static str,
    pub backend: BackendKind,
    pub mode: Mode,
    pub connections: usize,
    pub probe_period_ms: f64,
    pub requests: usize,
    pub failures: usize,
    pub failure_details: Vec<String>,
    pub cuts: Vec<CutSample>,
    pub paths: Vec<PathSample>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Seconds since the epoch of a log line's RFC 3339 UTC timestamp
/// (`2026-12-07T21:28:20.371332Z`), the tracing subscriber's format.
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// The first line of `log` at or after `after` (epoch seconds) containing `needle`, as
/// milliseconds after `after`.
fn first_after(log: &str, needle: &str, after: f64) -> Option<f64> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(log_time)
        .find(|t| *t >= after)
        .map(|t| (t - after) * 1000.0)
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// n2's proxy ARP entries (its relay for n1 is in place when they name the service address).
fn proxies(lab: &BenchLab) -> Result<String, BenchError> {
    let ns = format!("{}-n2", lab.name());
    let out = std::process::Command::new("ip")
        .args(["-n", &ns, "neigh", "show", "proxy"])
        .output()
        .map_err(|e| BenchError::Load {
            namespace: ns.clone(),
            reason: format!("running ip neigh show proxy: {e}"),
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Stall figures of the requests in flight during `[from, from + WINDOW]`.
struct WindowFigures {
    stall: Duration,
    probe_stall: Duration,
    keepalive_stall: Duration,
    gap: Duration,
    requests: usize,
    failed: usize,
    resets: usize,
}

/// Requests that started before `not_before` belong to an earlier event and are left out.
fn window_figures(report: &LoadReport, from: Duration, not_before: Duration) -> WindowFigures {
    let to = from + WINDOW;
    let overlaps = |start: Duration, latency: Duration| {
        start >= not_before && start <= to && start + latency >= from
    };
    let mut figures = WindowFigures {
        stall: Duration::ZERO,
        probe_stall: Duration::ZERO,
        keepalive_stall: Duration::ZERO,
        gap: Duration::ZERO,
        requests: 0,
        failed: 0,
        resets: 0,
    };
    let count = |outcome: &Outcome, figures: &mut WindowFigures| {
        figures.requests += 1;
        if let Outcome::Err(f) = outcome {
            figures.failed += 1;
            if f.kind == ErrorKind::Reset {
                figures.resets += 1;
            }
        }
    };
    let mut completions = Vec::new();
    for p in &report.probes {
        if overlaps(p.start, p.latency) {
            figures.probe_stall = figures.probe_stall.max(p.latency);
            count(&p.outcome, &mut figures);
        }
        if p.outcome.is_ok() {
            completions.push(p.start + p.latency);
        }
    }
    for r in report.connections.iter().flat_map(|c| &c.requests) {
        if overlaps(r.start, r.latency) {
            figures.keepalive_stall = figures.keepalive_stall.max(r.latency);
            count(&r.outcome, &mut figures);
        }
    }
    figures.stall = figures.probe_stall.max(figures.keepalive_stall);
    completions.sort();
    let mut last = from;
    for c in completions.into_iter().filter(|c| *c >= from) {
        figures.gap = figures.gap.max(c.saturating_sub(last));
        last = c;
        if c > to {
            break;
        }
    }
    figures.gap = figures.gap.saturating_sub(PROBE_PERIOD);
    figures
}

pub fn run(
    options: &RelayBenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<RelayBenchReport, BenchError> {
    if options
        .kinds
        .iter()
        .any(|k| !matches!(k, CrashKind::LinkDown | CrashKind::LinkBlackhole))
    {
        return Err(BenchError::Options(
            "relay cuts are link-down or link-blackhole".into(),
        ));
    }
    if !options.backend.speaks_http() {
        return Err(BenchError::Options(format!(
            "the relay bench runs the verifying HTTP load: the {} backend has none",
            options.backend
        )));
    }
    let mut up = UpOptions::new(unique_lab_name("rl"), 2, &options.steadfast_exe);
    up.mode = options.mode;
    up.witness = true;
    up.backend = options.backend;
    up.relay = true;
    up.ready_timeout = Duration::from_secs(30);
    let lab = BenchLab::up(&up)?;
    let campaign_error = |row: &str, reason: String| BenchError::Campaign {
        lab: lab.name().to_string(),
        row: row.to_string(),
        reason,
    };
    if lab.holders()? != ["n1"] {
        return Err(campaign_error(
            "setup",
            format!("n1 should serve after up: {:?}", lab.holders()?),
        ));
    }
    let builtin = options.backend == BackendKind::Builtin;
    let mut cuts = Vec::new();
    let mut requests = 0;
    let mut failures = 0;
    let mut failure_details = Vec::new();
    if options.cuts > 0 && !options.kinds.is_empty() {
        let per_cut = PAUSE_MAX + HOLD + SETTLE * 2;
        let total_cuts = options.cuts * options.kinds.len();
        let load = ProbeLoad::start_with(
            &lab,
            LoadOptions {
                target: lab.target(),
                duration: per_cut * total_cuts as u32 + Duration::from_secs(30),
                probes: Some(ProbeOptions {
                    period: PROBE_PERIOD,
                    timeout: REQUEST_TIMEOUT,
                    request: if builtin {
                        ProbeOptions::default().request
                    } else {
                        crate::load::ProbeRequest::StaticFile {
                            path: crate::webservers::bytes_path(1024),
                            len: 1024,
                            seed: 0,
                        }
                    },
                }),
                keep_alive: (options.connections > 0).then(|| KeepAliveOptions {
                    connections: options.connections,
                    request_timeout: REQUEST_TIMEOUT,
                    sizes: vec![1024],
                    include_uuid: false,
                    fixed_seed: (!builtin).then_some(crate::webservers::DOCROOT_SEED),
                    pause: Duration::from_millis(5),
                    reconnect_delay: Duration::from_millis(10),
                    ..Default::default()
                }),
            },
        );
        let warmed = wait_until(SETTLE, || {
            Ok(load.progress.snapshot().requests_ok >= options.connections as u64 * 2)
        })?;
        if !warmed {
            return Err(campaign_error(
                "cuts",
                format!("the load got no replies within {SETTLE:?}"),
            ));
        }
        let mut jitter = Jitter::new();
        // (kind, index, cut monotonic, cut wall, restore monotonic)
        let mut events = Vec::new();
        for &kind in &options.kinds {
            for index in 0..options.cuts {
                std::thread::sleep(jitter.between(PAUSE_MIN, PAUSE_MAX));
                let row = format!("{kind} cut {index}");
                let report = crash(lab.name(), "n1", kind)?;
                if !wait_until(SETTLE, || Ok(proxies(&lab)?.contains(SERVICE)))? {
                    return Err(campaign_error(
                        &row,
                        format!("n2 did not relay for n1 within {SETTLE:?}"),
                    ));
                }
                std::thread::sleep(HOLD);
                if lab.holders()? != ["n1"] {
                    return Err(campaign_error(
                        &row,
                        format!("n1 should still serve: {:?}", lab.holders()?),
                    ));
                }
                let restored = crate::system::monotonic_now();
                heal(lab.name(), "n1")?;
                if !wait_until(SETTLE, || Ok(proxies(&lab)?.trim().is_empty()))? {
                    return Err(campaign_error(
                        &row,
                        format!("n2 still relays {SETTLE:?} after the restore"),
                    ));
                }
                events.push((kind, index, report.at_monotonic, report.at_wall, restored));
                progress(&format!("{kind} cut {} of {}", index + 1, options.cuts));
            }
        }
        std::thread::sleep(WINDOW);
        let finished = load.stop()?;
        let report = finished.report;
        requests = report.requests() + report.probes.len();
        failures = report.failures();
        failure_details = report
            .probes
            .iter()
            .filter_map(|p| match &p.outcome {
                Outcome::Err(f) => Some(format!("probe at {:.1} ms: {}", ms(p.start), f.detail)),
                Outcome::Ok { .. } => None,
            })
            .chain(report.connections.iter().flat_map(|c| {
                c.requests.iter().filter_map(move |r| match &r.outcome {
                    Outcome::Err(f) => Some(format!(
                        "connection {} at {:.1} ms: {}",
                        c.index,
                        ms(r.start),
                        f.detail
                    )),
                    Outcome::Ok { .. } => None,
                })
            }))
            .take(20)
            .collect();
        let read_log = |host: &str| {
            std::fs::read_to_string(lab.info.state_dir.join(format!("{host}.daemon.log")))
                .unwrap_or_default()
        };
        let (n1_log, n2_log) = (read_log("n1"), read_log("n2"));
        for (kind, index, at, wall, restored) in events {
            let cut_at = at.saturating_sub(finished.origin_monotonic);
            let restored_at = restored.saturating_sub(finished.origin_monotonic);
            let cut = window_figures(&report, cut_at, Duration::ZERO);
            // A request the cut delayed may still be running at the restore: the cut's.
            let back = window_figures(&report, restored_at, cut_at + WINDOW);
            let wall = epoch_seconds(wall);
            cuts.push(CutSample {
                kind,
                index,
                at_ms: ms(cut_at),
                detection_ms: first_after(&n1_log, "(Some(Public)) is down", wall),
                takeover_ms: first_after(&n2_log, "relay: relaying for node", wall),
                stall_ms: ms(cut.stall),
                probe_stall_ms: ms(cut.probe_stall),
                keepalive_stall_ms: ms(cut.keepalive_stall),
                gap_ms: ms(cut.gap),
                requests_in_window: cut.requests,
                failed_in_window: cut.failed,
                resets_in_window: cut.resets,
                failback_stall_ms: ms(back.stall),
                failback_failed: back.failed,
            });
        }
    }
    let mut paths = Vec::new();
    let namespace = lab.info.client_ns.clone();
    for round in 0..options.rounds {
        for &size in &options.sizes {
            // Alternate which goes first, so drift over a round does not favour one.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for relayed in order {
                let row = format!("round {round}, {size} bytes, relayed {relayed}");
                if relayed {
                    crash(lab.name(), "n1", CrashKind::LinkDown)?;
                    if !wait_until(SETTLE, || Ok(proxies(&lab)?.contains(SERVICE)))? {
                        return Err(campaign_error(
                            &row,
                            format!("n2 did not relay for n1 within {SETTLE:?}"),
                        ));
                    }
                }
                let base = WrkRun {
                    target: lab.target(),
                    url_path: crate::webservers::bytes_path(size),
                    threads: 1,
                    connections: 1,
                    duration: options.wrk_duration,
                };
                let latency = wrk::run(&namespace, &base)?;
                let throughput = wrk::run(
                    &namespace,
                    &WrkRun {
                        threads: 2,
                        connections: options.throughput_connections,
                        ..base
                    },
                )?;
                if relayed {
                    // Every request of the run went through n2: the relay held throughout.
                    if !proxies(&lab)?.contains(SERVICE) {
                        return Err(campaign_error(
                            &row,
                            "the relay ended during the run".into(),
                        ));
                    }
                    heal(lab.name(), "n1")?;
                    if !wait_until(SETTLE, || Ok(proxies(&lab)?.trim().is_empty()))? {
                        return Err(campaign_error(
                            &row,
                            format!("n2 still relays {SETTLE:?} after the restore"),
                        ));
                    }
                }
                progress(&format!(
                    "{row}: {:.0} req/s, p50 {:.0} us",
                    throughput.requests_per_second, latency.p50_us
                ));
                paths.push(PathSample {
                    round,
                    size,
                    relayed,
                    latency,
                    throughput,
                });
            }
        }
    }
    Ok(RelayBenchReport {
        bench: "relay",
        backend: options.backend,
        mode: options.mode,
        connections: options.connections,
        probe_period_ms: ms(PROBE_PERIOD),
        requests,
        failures,
        failure_details,
        cuts,
        paths,
    })
}

fn size_label(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Milliseconds with one decimal, `-` when there is no value.
fn fmt_ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.1}"))
}

impl RelayBenchReport {
    fn of_kind(&self, kind: CrashKind) -> Vec<&CutSample> {
        self.cuts.iter().filter(|c| c.kind == kind).collect()
    }

    /// Per size: (median ratio relayed/direct of throughput, of p50 latency, direct and
    /// relayed medians of each).
    fn ratios(&self, size: u64) -> Option<PathRatios> {
        let rounds: Vec<usize> = {
            let mut r: Vec<usize> = self.paths.iter().map(|p| p.round).collect();
            r.dedup();
            r
        };
        let mut throughput = Vec::new();
        let mut latency = Vec::new();
        let mut direct = (Vec::new(), Vec::new(), Vec::new());
        let mut relayed = (Vec::new(), Vec::new(), Vec::new());
        for round in rounds {
            let find = |r: bool| {
                self.paths
                    .iter()
                    .find(|p| p.round == round && p.size == size && p.relayed == r)
            };
            let (Some(d), Some(t)) = (find(false), find(true)) else {
                continue;
            };
            throughput.push(t.throughput.requests_per_second / d.throughput.requests_per_second);
            latency.push(t.latency.p50_us / d.latency.p50_us);
            for (sample, into) in [(d, &mut direct), (t, &mut relayed)] {
                into.0.push(sample.throughput.requests_per_second);
                into.1.push(sample.throughput.bytes_per_second / 1e6);
                into.2.push(sample.latency.p50_us);
            }
        }
        Some(PathRatios {
            throughput: percentile(&throughput, 50.0)?,
            latency: percentile(&latency, 50.0)?,
            direct_rps: percentile(&direct.0, 50.0)?,
            relayed_rps: percentile(&relayed.0, 50.0)?,
            direct_mbps: percentile(&direct.1, 50.0)?,
            relayed_mbps: percentile(&relayed.1, 50.0)?,
            direct_p50_us: percentile(&direct.2, 50.0)?,
            relayed_p50_us: percentile(&relayed.2, 50.0)?,
            rounds: throughput.len(),
        })
    }

    fn sizes(&self) -> Vec<u64> {
        let mut sizes: Vec<u64> = self.paths.iter().map(|p| p.size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    pub fn summary_json(&self) -> serde_json::Value {
        let kinds: Vec<serde_json::Value> = [CrashKind::LinkDown, CrashKind::LinkBlackhole]
            .into_iter()
            .filter_map(|kind| {
                let cuts = self.of_kind(kind);
                if cuts.is_empty() {
                    return None;
                }
                let of = |f: &dyn Fn(&CutSample) -> f64, p| {
                    percentile(&cuts.iter().map(|c| f(c)).collect::<Vec<_>>(), p)
                };
                Some(serde_json::json!({
                    "kind": kind,
                    "cuts": cuts.len(),
                    "stall_p50_ms": of(&|c| c.stall_ms, 50.0),
                    "stall_max_ms": of(&|c| c.stall_ms, 100.0),
                    "gap_p50_ms": of(&|c| c.gap_ms, 50.0),
                    "failed": cuts.iter().map(|c| c.failed_in_window).sum::<usize>(),
                    "resets": cuts.iter().map(|c| c.resets_in_window).sum::<usize>(),
                    "failback_failed": cuts.iter().map(|c| c.failback_failed).sum::<usize>(),
                }))
            })
            .collect();
        let paths: Vec<serde_json::Value> = self
            .sizes()
            .into_iter()
            .filter_map(|size| {
                let r = self.ratios(size)?;
                Some(serde_json::json!({
                    "size": size,
                    "throughput_ratio": r.throughput,
                    "latency_p50_ratio": r.latency,
                    "rounds": r.rounds,
                }))
            })
            .collect();
        serde_json::json!({
            "bench": self.bench,
            "backend": self.backend,
            "mode": self.mode,
            "requests": self.requests,
            "failures": self.failures,
            "cuts": kinds,
            "paths": paths,
        })
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let cuts_present = !self.cuts.is_empty();
        if cuts_present {
            out.push_str(&format!(
                "Link relay, {} backend, {} mode: a new connection every {:.0} ms and {} \
                 keep-alive connections; {} requests, {} failed.\n\n",
                self.backend,
                self.mode,
                self.probe_period_ms,
                self.connections,
                self.requests,
                self.failures
            ));
            out.push_str(
                "| cut | cuts | detection p50 (ms) | takeover p50 (ms) | stall p50 / max (ms) \
                 | new-connection stall p50 / max (ms) | keep-alive stall p50 / max (ms) \
                 | gap p50 / max (ms) | failed | resets | failback stall max (ms) \
                 | failback failed |\n",
            );
            out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
            for kind in [CrashKind::LinkDown, CrashKind::LinkBlackhole] {
                let cuts = self.of_kind(kind);
                if cuts.is_empty() {
                    continue;
                }
                let values = |f: &dyn Fn(&CutSample) -> Option<f64>| {
                    cuts.iter().filter_map(|c| f(c)).collect::<Vec<_>>()
                };
                let pair = |f: &dyn Fn(&CutSample) -> Option<f64>| {
                    let v = values(f);
                    format!(
                        "{} / {}",
                        fmt_ms(percentile(&v, 50.0)),
                        fmt_ms(percentile(&v, 100.0))
                    )
                };
                out.push_str(&format!(
                    "| {kind} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    cuts.len(),
                    fmt_ms(percentile(&values(&|c| c.detection_ms), 50.0)),
                    fmt_ms(percentile(&values(&|c| c.takeover_ms), 50.0)),
                    pair(&|c| Some(c.stall_ms)),
                    pair(&|c| Some(c.probe_stall_ms)),
                    pair(&|c| Some(c.keepalive_stall_ms)),
                    pair(&|c| Some(c.gap_ms)),
                    cuts.iter().map(|c| c.failed_in_window).sum::<usize>(),
                    cuts.iter().map(|c| c.resets_in_window).sum::<usize>(),
                    fmt_ms(percentile(&values(&|c| Some(c.failback_stall_ms)), 100.0)),
                    cuts.iter().map(|c| c.failback_failed).sum::<usize>(),
                ));
            }
            out.push('\n');
        }
        let sizes = self.sizes();
        if !sizes.is_empty() {
            out.push_str(
                "| reply | direct req/s | through n2 req/s | ratio | direct MB/s \
                 | through n2 MB/s | direct p50 (us) | through n2 p50 (us) | p50 ratio \
                 | rounds |\n",
            );
            out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
            for size in sizes {
                let Some(r) = self.ratios(size) else { continue };
                out.push_str(&format!(
                    "| {} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} | {:.0} | {:.0} | {:.3} | {} |\n",
                    size_label(size),
                    r.direct_rps,
                    r.relayed_rps,
                    r.throughput,
                    r.direct_mbps,
                    r.relayed_mbps,
                    r.direct_p50_us,
                    r.relayed_p50_us,
                    r.latency,
                    r.rounds
                ));
            }
            out.push('\n');
        }
        out
    }

    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io("creating the results directory", dir, e))?;
        let path = dir.join("relay.json");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| BenchError::io("writing", &path, e))?;
        Ok(vec![path])
    }
}

struct PathRatios {
    throughput: f64,
    latency: f64,
    direct_rps: f64,
    relayed_rps: f64,
    direct_mbps: f64,
    relayed_mbps: f64,
    direct_p50_us: f64,
    relayed_p50_us: f64,
    rounds: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_read_as_epoch_seconds() {
        let t = log_time("2026-12-07T21:28:20.371332Z  INFO steadfast::relay: x").unwrap();
        // date -u -d 2026-12-07T21:28:20Z +%s
        assert!((t - 1_796_678_900.371_332).abs() < 1e-6, "{t}");
        assert_eq!(log_time("not a log line"), None);
        let log = "2026-12-07T21:28:20.100000Z  INFO a: link eth0 (Some(Public)) is down\n\
                   2026-12-07T21:28:21.000000Z  INFO a: link eth0 (Some(Public)) is down\n";
        let after = log_time("2026-12-07T21:28:20.500000Z x").unwrap();
        let found = first_after(log, "is down", after).unwrap();
        assert!((found - 500.0).abs() < 1e-3, "{found}");
    }
}
