//! `steadfast-lab bench stall`: in duplex mode, how long established keep-alive connections stall
//! when the primary (or the backup) crashes, and whether any request fails.
//!
//! A 2-node lab with a witness and the builtin backend; a verifying keep-alive load (small
//! GETs, a short pause between them) on every connection; N crashes of the chosen role at random
//! moments, healing in between. For each crash the stall is the longest latency of any request
//! that was in flight at some moment of the crash window (from the crash until `WINDOW` after
//! it): requests sent while the primary was already dead count too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    percentile, plane_status, unique_lab_name, wait_until, BenchError, BenchLab, Jitter, ProbeLoad,
};
use crate::faults::{crash, heal};
use crate::load::{KeepAliveOptions, LoadOptions, Outcome, RequestKind, SlowUpload};
use crate::options::{BackendKind, CrashKind, Mode, UpOptions};

pub const DEFAULT_CRASHES: usize = 20;
pub const QUICK_CRASHES: usize = 3;
pub const DEFAULT_HEARTBEAT_MS: u32 = 10;
pub const DEFAULT_CONNECTIONS: usize = 20;
/// Requests overlapping this span after a crash are that crash's: it covers detection and
/// takeover many times over, and ends before the heal (which starts later) can matter.
const WINDOW: Duration = Duration::from_millis(400);
/// Pause between a settled group and the next crash.
const PAUSE_MIN: Duration = Duration::from_millis(300);
const PAUSE_MAX: Duration = Duration::from_millis(700);
/// A role change or a backup's join must happen within this.
const SETTLE: Duration = Duration::from_secs(10);
/// A request of the load gives up after this (then it counts as a failure).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Which member crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StallTarget {
    Primary,
    Backup,
}

impl std::str::FromStr for StallTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "primary" => Ok(StallTarget::Primary),
            "backup" => Ok(StallTarget::Backup),
            other => Err(format!("unknown role {other:?}: primary | backup")),
        }
    }
}

/// What the connections ask while the crashes happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StallWorkload {
    /// 1 KB and 10 KB GETs, `/uuid`, 2 KB commits (GETs of 1 KB on static servers).
    Small,
    /// 1 MB replies: most crashes find replies in flight (mid-reply).
    MidReply,
    /// Small requests and 64 KB commits whose bodies go out in 8 pieces 20 ms apart: most
    /// crashes find an upload half received (mid-request). Builtin backend only.
    MidRequest,
}

impl std::str::FromStr for StallWorkload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "small" => Ok(StallWorkload::Small),
            "mid-reply" => Ok(StallWorkload::MidReply),
            "mid-request" => Ok(StallWorkload::MidRequest),
            other => Err(format!(
                "unknown workload {other:?}: small | mid-reply | mid-request"
            )),
        }
    }
}

/// The slow upload of the mid-request workload.
const SLOW_UPLOAD: SlowUpload = SlowUpload {
    len: 64 * 1024,
    pieces: 8,
    gap: Duration::from_millis(20),
};

#[derive(Debug, Clone)]
pub struct StallOptions {
    pub crashes: usize,
    pub target: StallTarget,
    pub how: CrashKind,
    pub heartbeat_ms: u32,
    pub connections: usize,
    pub backend: BackendKind,
    pub workload: StallWorkload,
    pub steadfast_exe: PathBuf,
}

/// One crash as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct StallSample {
    pub index: usize,
    pub crashed: String,
    /// Into the load, when the crash happened.
    pub at_ms: f64,
    /// The longest latency of a request in flight during the crash window.
    pub stall_ms: f64,
    pub requests_in_window: usize,
    pub failed_in_window: usize,
    /// Requests of the workload's kind under test (a 1 MB reply, a slow upload) that were in
    /// flight at the very moment of the crash.
    pub large_in_flight_at_crash: usize,
    /// From the node that took over (primary crashes): connections restored and lost, and
    /// the takeover's own duration.
    pub restored: u64,
    pub lost: u64,
    pub takeover_us: u64,
    pub restore_per_second: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StallReport {
    pub bench: &'static str,
    pub target: StallTarget,
    pub how: CrashKind,
    pub heartbeat_ms: u32,
    pub connections: usize,
    pub workload: StallWorkload,
    pub requests: usize,
    pub failures: usize,
    pub failure_details: Vec<String>,
    /// What requests outside every crash window waited (p50, p99), to read the stalls against.
    pub baseline_p50_ms: Option<f64>,
    pub baseline_p99_ms: Option<f64>,
    /// Commits the client saw acknowledged, and the data tier's verdict on them.
    pub exactly_once: crate::data_tier::ExactlyOnce,
    pub samples: Vec<StallSample>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn counter(plane: &serde_json::Value, name: &str) -> u64 {
    plane[name].as_u64().unwrap_or(0)
}

/// What a request waited for the service: its latency less the pauses a slow upload makes on
/// purpose.
fn waited(request: &crate::load::RequestRecord) -> Duration {
    match request.kind {
        RequestKind::Commit { slow: true, .. } => request
            .latency
            .saturating_sub(SLOW_UPLOAD.gap * SLOW_UPLOAD.pieces),
        _ => request.latency,
    }
}

pub fn run(
    options: &StallOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<StallReport, BenchError> {
    if options.crashes == 0 || options.connections == 0 {
        return Err(BenchError::Options(
            "stall needs at least one crash and one connection".into(),
        ));
    }
    if !options.backend.speaks_http() {
        return Err(BenchError::Options(format!(
            "the stall bench runs duplex with the verifying HTTP load: the {} backend cannot \
             run in duplex (active mode for Redis is not built yet; use unreplicated)",
            options.backend
        )));
    }
    let mut up = UpOptions::new(unique_lab_name("st"), 2, &options.steadfast_exe);
    up.mode = Mode::Duplex;
    up.witness = true;
    up.backend = options.backend;
    up.heartbeat_ms = Some(options.heartbeat_ms);
    up.ready_timeout = Duration::from_secs(30);
    let lab = BenchLab::up(&up)?;
    let campaign_error = |reason: String| BenchError::Campaign {
        lab: lab.name().to_string(),
        row: format!("duplex stall, {:?} crashes", options.target),
        reason,
    };
    let holder = |lab: &BenchLab| -> Result<Option<String>, BenchError> {
        Ok(match lab.holders()?.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        })
    };
    // Protected from the start: the load opens its connections once a backup has joined.
    let mut primary = String::new();
    let joined = wait_until(SETTLE, || {
        let Some(h) = holder(&lab)? else {
            return Ok(false);
        };
        primary = h;
        Ok(counter(
            &plane_status(&lab, &primary, "duplex stall")?,
            "backups_joined",
        ) > 0)
    })?;
    if !joined {
        return Err(campaign_error(format!(
            "no backup joined within {SETTLE:?}"
        )));
    }
    if options.workload == StallWorkload::MidRequest && options.backend != BackendKind::Builtin {
        return Err(BenchError::Options(
            "the mid-request workload uploads commits: builtin backend only".into(),
        ));
    }
    let builtin = options.backend == BackendKind::Builtin;
    let sizes = match (options.workload, builtin) {
        (StallWorkload::MidReply, _) => vec![1024 * 1024],
        (_, true) => vec![1024, 10 * 1024],
        (_, false) => vec![1024],
    };
    let per_crash = PAUSE_MAX + SETTLE * 3;
    let load = ProbeLoad::start_with(
        &lab,
        LoadOptions {
            target: lab.target(),
            duration: per_crash * options.crashes as u32 + Duration::from_secs(30),
            probes: None,
            keep_alive: Some(KeepAliveOptions {
                connections: options.connections,
                request_timeout: REQUEST_TIMEOUT,
                sizes,
                include_uuid: builtin && options.workload != StallWorkload::MidReply,
                fixed_seed: (options.backend != BackendKind::Builtin)
                    .then_some(crate::webservers::DOCROOT_SEED),
                // Commits (builtin only: static servers refuse POST) make the exactly-once
                // check of the data tier possible.
                commit_sizes: if builtin { vec![2048] } else { Vec::new() },
                slow_upload: (options.workload == StallWorkload::MidRequest).then_some(SLOW_UPLOAD),
                pause: Duration::from_millis(5),
                reconnect_delay: Duration::from_millis(10),
                ..Default::default()
            }),
        },
    );
    // Crashes measure established connections: wait until (about) every connection has had a
    // reply, so none is still in the primary's accept queue at the first crash.
    let warmed = wait_until(SETTLE, || {
        Ok(load.progress.snapshot().requests_ok >= options.connections as u64 * 2)
    })?;
    if !warmed {
        return Err(campaign_error(format!(
            "the load did not get {} replies within {SETTLE:?}",
            options.connections * 2
        )));
    }
    let mut jitter = Jitter::new();
    let mut events: Vec<(String, Duration, serde_json::Value)> = Vec::new();
    let started = Instant::now();
    for index in 0..options.crashes {
        std::thread::sleep(jitter.between(PAUSE_MIN, PAUSE_MAX));
        let backup = if primary == "n1" { "n2" } else { "n1" }.to_string();
        let victim = match options.target {
            StallTarget::Primary => primary.clone(),
            StallTarget::Backup => backup.clone(),
        };
        let survivor = if victim == primary { &backup } else { &primary }.clone();
        let joined_before = counter(
            &plane_status(&lab, &survivor, "duplex stall")?,
            "backups_joined",
        );
        let report = crash(lab.name(), &victim, options.how)?;
        if options.target == StallTarget::Primary
            // The crashed host's kernel may still carry the address (on lo): look past it.
            && !wait_until(SETTLE, || {
                Ok(lab.holders()?.into_iter().filter(|h| *h != victim).collect::<Vec<_>>()
                    == [survivor.clone()])
            })?
        {
            return Err(campaign_error(format!(
                "crash {index}: {survivor} did not take the address over within {SETTLE:?}"
            )));
        }
        std::thread::sleep(WINDOW + Duration::from_millis(100));
        let after = plane_status(&lab, &survivor, "duplex stall")?;
        events.push((victim.clone(), report.at_monotonic, after));
        heal(lab.name(), &victim)?;
        if !wait_until(SETTLE, || {
            Ok(counter(
                &plane_status(&lab, &survivor, "duplex stall")?,
                "backups_joined",
            ) > joined_before)
        })? {
            return Err(campaign_error(format!(
                "crash {index}: {victim} did not rejoin {survivor} as its backup within {SETTLE:?}"
            )));
        }
        primary = survivor;
        progress(&format!(
            "crash {} of {}: {victim} ({:?} into the run)",
            index + 1,
            options.crashes,
            started.elapsed()
        ));
    }
    let finished = load.stop()?;
    let report = finished.report;
    let exactly_once = crate::data_tier::check_exactly_once(
        &lab.info.state_dir.join("commits.log"),
        &report.committed_ids(),
    )
    .map_err(|e| campaign_error(format!("reading the data tier: {e}")))?;
    let mut samples = Vec::new();
    let windows: Vec<(Duration, Duration)> = events
        .iter()
        .map(|(_, at, _)| {
            let at = at.saturating_sub(finished.origin_monotonic);
            (at, at + WINDOW)
        })
        .collect();
    for (index, (crashed, at, plane)) in events.into_iter().enumerate() {
        let at = at.saturating_sub(finished.origin_monotonic);
        let window_end = at + WINDOW;
        let mut stall = Duration::ZERO;
        let mut in_window = 0;
        let mut failed = 0;
        let mut large_in_flight = 0;
        for request in report.connections.iter().flat_map(|c| &c.requests) {
            let end = request.start + request.latency;
            let large = match request.kind {
                RequestKind::Bytes { len, .. } => len >= 1024 * 1024,
                RequestKind::Commit { slow, .. } => slow,
                _ => false,
            };
            if large && request.start <= at && end >= at {
                large_in_flight += 1;
            }
            if request.start <= window_end && end >= at {
                in_window += 1;
                stall = stall.max(waited(request));
                if !request.outcome.is_ok() {
                    failed += 1;
                }
            }
        }
        samples.push(StallSample {
            index,
            crashed,
            at_ms: ms(at),
            stall_ms: ms(stall),
            requests_in_window: in_window,
            failed_in_window: failed,
            large_in_flight_at_crash: large_in_flight,
            restored: counter(&plane, "connections_restored"),
            lost: counter(&plane, "connections_lost"),
            takeover_us: counter(&plane, "last_takeover_us"),
            restore_per_second: counter(&plane, "last_restore_per_second"),
        });
    }
    let outside: Vec<f64> = report
        .connections
        .iter()
        .flat_map(|c| &c.requests)
        .filter(|r| r.outcome.is_ok())
        .filter(|r| {
            let end = r.start + r.latency;
            !windows.iter().any(|(a, b)| r.start <= *b && end >= *a)
        })
        .map(|r| ms(waited(r)))
        .collect();
    let failure_details = report
        .connections
        .iter()
        .flat_map(|c| {
            c.requests.iter().filter_map(move |r| match &r.outcome {
                Outcome::Err(f) => Some(format!(
                    "connection {} at {:.1} ms: {}",
                    c.index,
                    ms(r.start),
                    f.detail
                )),
                Outcome::Ok { .. } => None,
            })
        })
        .take(20)
        .collect();
    Ok(StallReport {
        bench: "stall",
        target: options.target,
        how: options.how,
        heartbeat_ms: options.heartbeat_ms,
        connections: options.connections,
        requests: report.requests(),
        workload: options.workload,
        failures: report.failures(),
        failure_details,
        baseline_p50_ms: percentile(&outside, 50.0),
        baseline_p99_ms: percentile(&outside, 99.0),
        exactly_once,
        samples,
    })
}

impl StallReport {
    fn stalls(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.stall_ms).collect()
    }

    pub fn median_stall_ms(&self) -> Option<f64> {
        percentile(&self.stalls(), 50.0)
    }

    pub fn max_stall_ms(&self) -> Option<f64> {
        percentile(&self.stalls(), 100.0)
    }

    pub fn summary_json(&self) -> serde_json::Value {
        let stalls = self.stalls();
        let takeovers: Vec<f64> = self
            .samples
            .iter()
            .map(|s| s.takeover_us as f64 / 1000.0)
            .collect();
        serde_json::json!({
            "bench": self.bench,
            "target": self.target,
            "how": self.how,
            "heartbeat_ms": self.heartbeat_ms,
            "connections": self.connections,
            "crashes": self.samples.len(),
            "requests": self.requests,
            "workload": self.workload,
            "baseline_ms": { "p50": self.baseline_p50_ms, "p99": self.baseline_p99_ms },
            "crashes_with_large_in_flight": self
                .samples
                .iter()
                .filter(|s| s.large_in_flight_at_crash > 0)
                .count(),
            "client_errors": self.failures,
            "commits_acknowledged": self.exactly_once.acknowledged,
            "commits_missing": self.exactly_once.missing.len(),
            "commits_duplicated": self.exactly_once.duplicated.len(),
            "stall_ms": {
                "median": percentile(&stalls, 50.0),
                "p90": percentile(&stalls, 90.0),
                "max": percentile(&stalls, 100.0),
            },
            "takeover_ms_median": percentile(&takeovers, 50.0),
            "connections_lost": self.samples.iter().map(|s| s.lost).max(),
        })
    }

    pub fn markdown(&self) -> String {
        let stalls = self.stalls();
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let mut out = String::new();
        out.push_str(&format!(
            "duplex, {} connections, {:?} workload, heartbeat {} ms, {} {} crashes of the {:?}; \
             requests away from the crashes waited p50 {} ms, p99 {} ms\n\n",
            self.connections,
            self.workload,
            self.heartbeat_ms,
            self.samples.len(),
            self.how,
            self.target,
            fmt(self.baseline_p50_ms),
            fmt(self.baseline_p99_ms),
        ));
        out.push_str("| crashes | requests | client errors | median stall ms | p90 stall ms | max stall ms |\n");
        out.push_str("|---:|---:|---:|---:|---:|---:|\n");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            self.samples.len(),
            self.requests,
            self.failures,
            fmt(percentile(&stalls, 50.0)),
            fmt(percentile(&stalls, 90.0)),
            fmt(percentile(&stalls, 100.0)),
        ));
        out.push_str(&format!(
            "\ncommits acknowledged {}, missing from the data tier {}, recorded more than once {}\n",
            self.exactly_once.acknowledged,
            self.exactly_once.missing.len(),
            self.exactly_once.duplicated.len()
        ));
        if self.workload != StallWorkload::Small {
            let caught: Vec<f64> = self
                .samples
                .iter()
                .filter(|s| s.large_in_flight_at_crash > 0)
                .map(|s| s.stall_ms)
                .collect();
            out.push_str(&format!(
                "crashes that caught a {} in flight: {} of {}; their stall median {} ms, max {} ms\n",
                match self.workload {
                    StallWorkload::MidReply => "1 MB reply",
                    _ => "slow upload",
                },
                caught.len(),
                self.samples.len(),
                fmt(percentile(&caught, 50.0)),
                fmt(percentile(&caught, 100.0)),
            ));
        }
        for detail in &self.failure_details {
            out.push_str(&format!("\nclient error: {detail}"));
        }
        out.push('\n');
        out
    }

    /// Writes `stall-<target>.json` (every sample) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::io("creating", dir, e))?;
        let path = dir.join(format!(
            "stall-{}.json",
            match self.target {
                StallTarget::Primary => "primary",
                StallTarget::Backup => "backup",
            }
        ));
        let text = serde_json::to_string_pretty(self).expect("a report serializes");
        std::fs::write(&path, text).map_err(|e| BenchError::io("writing", &path, e))?;
        Ok(vec![path])
    }
}
