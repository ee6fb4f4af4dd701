//! `steadfast-lab bench hostile`: what a SYN flood does to a running service, unreplicated and
//! duplex side by side in one run.
//!
//! For each mode a 2-node lab with a witness and the builtin backend, and the verifying load of
//! the hostile-input tests: 20 keep-alive connections (a request every 50 ms) and a new
//! connection every 10 ms (500 ms to connect and be answered). After a quiet spell, spoofed SYNs
//! from the client namespace at the service address (default 50,000 a second for 30 seconds),
//! then a spell after the flood. Reported per mode: the flood as sent; new connections before
//! and during it (failed, connect time p50 and p99); requests of the established connections;
//! how soon after the flood every new connection succeeded again; the members' peak resident
//! memory and, in duplex, the backup's request bytes held against its budget.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{
    percentile, plane_status, unique_lab_name, wait_until, BenchError, BenchLab, ProbeLoad,
};
use crate::flood::{syn_flood, FloodOptions, FloodReport};
use crate::load::{KeepAliveOptions, LoadOptions, Probe, ProbeOptions};
use crate::options::{BackendKind, Mode, UpOptions};
use crate::system::monotonic_now;

pub const DEFAULT_SYN_RATE: u32 = 50_000;
pub const DEFAULT_FLOOD: Duration = Duration::from_secs(30);
pub const QUICK_FLOOD: Duration = Duration::from_secs(5);
/// Load before the flood, read as the baseline.
const BEFORE: Duration = Duration::from_secs(3);
/// Load after the flood: the recovery is measured in it.
const AFTER: Duration = Duration::from_secs(4);
/// The bound on the recovery.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_secs(15);
/// How often the members' memory is read during the flood.
const MEMORY_SAMPLE: Duration = Duration::from_millis(250);
const KEEP_ALIVE_CONNECTIONS: usize = 20;

#[derive(Debug, Clone)]
pub struct HostileOptions {
    pub syns_per_second: u32,
    pub flood: Duration,
    pub modes: Vec<Mode>,
    pub steadfast_exe: PathBuf,
}

impl HostileOptions {
    pub fn full(steadfast_exe: PathBuf) -> Self {
        HostileOptions {
            syns_per_second: DEFAULT_SYN_RATE,
            flood: DEFAULT_FLOOD,
            modes: vec![Mode::Unreplicated, Mode::Duplex],
            steadfast_exe,
        }
    }
}

/// New connections in one span of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectStats {
    pub probes: usize,
    pub failed: usize,
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    pub connect_max_ms: Option<f64>,
}

impl ConnectStats {
    pub fn failed_share(&self) -> f64 {
        self.failed as f64 / self.probes.max(1) as f64
    }
}

/// One member's memory during the flood.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberMemory {
    pub host: String,
    pub role: String,
    pub peak_resident_bytes: u64,
    /// Duplex backups: the most request bytes their images held, and their budget.
    pub peak_held_request_bytes: u64,
    pub request_bytes_budget: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodRow {
    pub mode: Mode,
    pub syns_sent: u64,
    pub syns_not_sent: u64,
    pub flood_seconds: f64,
    pub syns_per_second: f64,
    pub before: ConnectStats,
    pub during: ConnectStats,
    pub after: ConnectStats,
    pub keep_alive_requests: usize,
    pub keep_alive_failed: usize,
    /// From the flood's end until every later new connection succeeded (0 when none failed
    /// after it); None when some still failed at the end of the run.
    pub recovered_after_ms: Option<f64>,
    pub members: Vec<MemberMemory>,
    /// Duplex: half-open images the backup pushed out for newer ones, and connections the
    /// primary accepted by SYN cookie.
    pub half_open_evicted: u64,
    pub accepted_by_syn_cookie: u64,
}

impl FloodRow {
    /// The acceptance: no error on established connections, under 1 in 100 new
    /// connections failing during the flood, recovered within a second.
    pub fn meets_bounds(&self) -> bool {
        self.keep_alive_failed == 0
            && self.during.failed_share() < 0.01
            && self
                .recovered_after_ms
                .is_some_and(|ms| ms <= RECOVERY_BOUND.as_secs_f64() * 1000.0)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HostileReport {
    pub bench: &'static str,
    pub target_syns_per_second: u32,
    pub target_flood_seconds: f64,
    pub rows: Vec<FloodRow>,
}

pub fn run(
    options: &HostileOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<HostileReport, BenchError> {
    if options.syns_per_second == 0 || options.flood.is_zero() || options.modes.is_empty() {
        return Err(BenchError::Options(
            "hostile needs a SYN rate, a flood duration and a mode".into(),
        ));
    }
    let mut rows = Vec::new();
    for &mode in &options.modes {
        progress(&format!(
            "{mode:?}: {} SYN/s for {:?}",
            options.syns_per_second, options.flood
        ));
        let row = flood_row(options, mode)?;
        progress(&format!(
            "{mode:?}: {} SYNs at {:.0}/s; new connections during the flood {} failed of {}, \
             connect p99 {:?} ms; keep-alive {} failed of {}; recovered after {:?} ms",
            row.syns_sent,
            row.syns_per_second,
            row.during.failed,
            row.during.probes,
            row.during.connect_p99_ms,
            row.keep_alive_failed,
            row.keep_alive_requests,
            row.recovered_after_ms,
        ));
        rows.push(row);
    }
    Ok(HostileReport {
        bench: "hostile",
        target_syns_per_second: options.syns_per_second,
        target_flood_seconds: options.flood.as_secs_f64(),
        rows,
    })
}

fn flood_row(options: &HostileOptions, mode: Mode) -> Result<FloodRow, BenchError> {
    let mut up = UpOptions::new(unique_lab_name("ho"), 2, &options.steadfast_exe);
    up.mode = mode;
    up.witness = true;
    up.backend = BackendKind::Builtin;
    up.ready_timeout = Duration::from_secs(30);
    let lab = BenchLab::up(&up)?;
    let row_name = format!("{mode:?} SYN flood");
    let campaign_error = |reason: String| BenchError::Campaign {
        lab: lab.name().to_string(),
        row: row_name.clone(),
        reason,
    };
    let mut primary = String::new();
    let ready = wait_until(SETTLE, || {
        let holders = lab.holders()?;
        let [holder] = holders.as_slice() else {
            return Ok(false);
        };
        primary = holder.clone();
        if mode != Mode::Duplex {
            return Ok(true);
        }
        Ok(plane_status(&lab, &primary, &row_name)?["backups_joined"]
            .as_u64()
            .unwrap_or(0)
            > 0)
    })?;
    if !ready {
        return Err(campaign_error(format!(
            "no single holder (and, in duplex, no joined backup) within {SETTLE:?}"
        )));
    }
    let other = if primary == "n1" { "n2" } else { "n1" }.to_string();

    let load = ProbeLoad::start_with(
        &lab,
        LoadOptions {
            target: lab.target(),
            duration: BEFORE + options.flood + AFTER + Duration::from_secs(30),
            probes: Some(ProbeOptions::default()),
            keep_alive: Some(KeepAliveOptions {
                connections: KEEP_ALIVE_CONNECTIONS,
                request_timeout: Duration::from_secs(1),
                sizes: vec![1024],
                include_uuid: false,
                pause: Duration::from_millis(50),
                ..Default::default()
            }),
        },
    );
    std::thread::sleep(BEFORE);

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let sockets: Vec<(String, PathBuf)> = [primary.clone(), other.clone()]
            .into_iter()
            .map(|host| {
                let socket = lab.control_socket(&host);
                (host, socket)
            })
            .collect();
        std::thread::spawn(move || sample_memory(&sockets, &sampling))
    };
    // On the monotonic clock, which the load's own origin is read from.
    let flood_start = monotonic_now();
    let flood = syn_flood(
        &lab.info.client_ns,
        FloodOptions {
            target: std::net::SocketAddrV4::new(lab.info.vip, lab.info.port),
            syns_per_second: options.syns_per_second,
            duration: options.flood,
        },
        &AtomicBool::new(false),
    );
    let flood_end = monotonic_now();
    std::thread::sleep(AFTER);
    sampling.store(false, Ordering::Relaxed);
    let mut members = sampler.join().expect("the memory sampler does not panic");
    let finished = load.stop()?;
    let flood: FloodReport = flood?;
    let flood_start = flood_start.saturating_sub(finished.origin_monotonic);
    let flood_end = flood_end.saturating_sub(finished.origin_monotonic);

    let primary_plane = plane_status(&lab, &primary, &row_name)?;
    let backup_plane = plane_status(&lab, &other, &row_name)?;
    for member in &mut members {
        member.role = if member.host == primary {
            "primary"
        } else if mode == Mode::Duplex {
            "backup"
        } else {
            "standby"
        }
        .to_string();
    }

    let probes = &finished.report.probes;
    let span = |from, to| connect_stats(probes, from, to);
    let requests: Vec<_> = finished
        .report
        .connections
        .iter()
        .flat_map(|c| &c.requests)
        .collect();
    Ok(FloodRow {
        mode,
        syns_sent: flood.sent,
        syns_not_sent: flood.send_errors,
        flood_seconds: flood.took.as_secs_f64(),
        syns_per_second: flood.rate(),
        before: span(Duration::ZERO, flood_start),
        during: span(flood_start, flood_end),
        after: span(flood_end, Duration::MAX),
        keep_alive_requests: requests.len(),
        keep_alive_failed: requests.iter().filter(|r| !r.outcome.is_ok()).count(),
        recovered_after_ms: recovery(probes, flood_end),
        members,
        half_open_evicted: backup_plane["half_open_evicted"].as_u64().unwrap_or(0),
        accepted_by_syn_cookie: primary_plane["accepted_by_syn_cookie"]
            .as_u64()
            .unwrap_or(0),
    })
}

/// New connections started in `from..to`.
fn connect_stats(probes: &[Probe], from: Duration, to: Duration) -> ConnectStats {
    let chosen: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.start >= from && p.start < to)
        .collect();
    let connects: Vec<f64> = chosen
        .iter()
        .filter_map(|p| p.connect.map(|c| c.as_secs_f64() * 1000.0))
        .collect();
    ConnectStats {
        probes: chosen.len(),
        failed: chosen.iter().filter(|p| !p.outcome.is_ok()).count(),
        connect_p50_ms: percentile(&connects, 50.0),
        connect_p99_ms: percentile(&connects, 99.0),
        connect_max_ms: percentile(&connects, 100.0),
    }
}

/// From `flood_end` to the start of the last new connection that failed after it (0 when none
/// did); None when that one started within a second of the last probe: the run ended before
/// the service was seen to recover.
fn recovery(probes: &[Probe], flood_end: Duration) -> Option<f64> {
    let last_failure = probes
        .iter()
        .filter(|p| p.start >= flood_end && !p.outcome.is_ok())
        .map(|p| p.start)
        .max();
    let run_end = probes.iter().map(|p| p.start).max().unwrap_or(flood_end);
    match last_failure {
        None => Some(0.0),
        Some(at) if at + Duration::from_secs(1) <= run_end => {
            Some((at - flood_end).as_secs_f64() * 1000.0)
        }
        Some(_) => None,
    }
}

/// Reads each member's status every [`MEMORY_SAMPLE`] while `sampling` holds; the peaks.
/// (A status that cannot be read, from a daemon too busy to answer in time, is skipped.)
fn sample_memory(sockets: &[(String, PathBuf)], sampling: &AtomicBool) -> Vec<MemberMemory> {
    let mut members: Vec<MemberMemory> = sockets
        .iter()
        .map(|(host, _)| MemberMemory {
            host: host.clone(),
            ..Default::default()
        })
        .collect();
    while sampling.load(Ordering::Relaxed) {
        for (member, (_, socket)) in members.iter_mut().zip(sockets) {
            let Ok(status) = crate::lab::query_control_socket(socket) else {
                continue;
            };
            let read = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            member.peak_resident_bytes = member
                .peak_resident_bytes
                .max(read(&status["resident_bytes"]));
            let plane = &status["data_plane"];
            member.peak_held_request_bytes = member
                .peak_held_request_bytes
                .max(read(&plane["held_request_bytes"]));
            member.request_bytes_budget = read(&plane["request_bytes_budget"]);
        }
        std::thread::sleep(MEMORY_SAMPLE);
    }
    members
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl HostileReport {
    pub fn meets_bounds(&self) -> bool {
        self.rows.iter().all(FloodRow::meets_bounds)
    }

    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a report serializes")
    }

    pub fn markdown(&self) -> String {
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let mut out = format!(
            "SYN flood: spoofed SYNs at the service address, {} a second for {:.0} s; 20 \
             keep-alive clients and a new connection every 10 ms (500 ms to connect and be \
             answered)\n\n",
            self.target_syns_per_second, self.target_flood_seconds
        );
        out.push_str(
            "| mode | SYNs sent | SYN/s | new conns failed during | connect p50 / p99 / max ms \
             during | before: p50 / p99 ms | keep-alive failed | recovered after ms | peak \
             resident MiB | meets bounds |\n",
        );
        out.push_str("|---|---:|---:|---:|---|---|---:|---:|---|---|\n");
        for row in &self.rows {
            let memory: Vec<String> = row
                .members
                .iter()
                .map(|m| format!("{} {:.0}", m.role, mib(m.peak_resident_bytes)))
                .collect();
            out.push_str(&format!(
                "| {:?} | {} | {:.0} | {} of {} ({:.2} %) | {} / {} / {} | {} / {} | {} of {} | \
                 {} | {} | {} |\n",
                row.mode,
                row.syns_sent,
                row.syns_per_second,
                row.during.failed,
                row.during.probes,
                row.during.failed_share() * 100.0,
                fmt(row.during.connect_p50_ms),
                fmt(row.during.connect_p99_ms),
                fmt(row.during.connect_max_ms),
                fmt(row.before.connect_p50_ms),
                fmt(row.before.connect_p99_ms),
                row.keep_alive_failed,
                row.keep_alive_requests,
                fmt(row.recovered_after_ms),
                memory.join(", "),
                if row.meets_bounds() { "yes" } else { "NO" },
            ));
        }
        for row in self.rows.iter().filter(|r| r.mode == Mode::Duplex) {
            for m in row.members.iter().filter(|m| m.request_bytes_budget > 0) {
                out.push_str(&format!(
                    "\nduplex {} ({}): request bytes held at most {:.1} MiB of a {:.0} MiB \
                     budget; {} half-open images pushed out for newer ones; the primary \
                     accepted {} connections by SYN cookie\n",
                    m.role,
                    m.host,
                    mib(m.peak_held_request_bytes),
                    mib(m.request_bytes_budget),
                    row.half_open_evicted,
                    row.accepted_by_syn_cookie,
                ));
            }
        }
        out.push_str(&format!(
            "\nBounds (the hostile-input issue): 0 failed requests on established connections, \
             fewer than 1 in 100 new connections failing during the flood, every new \
             connection succeeding again within {} ms of its end.\n",
            RECOVERY_BOUND.as_millis()
        ));
        out
    }

    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::io("creating", dir, e))?;
        let path = dir.join("hostile.json");
        let text = serde_json::to_string_pretty(self).expect("a report serializes");
        std::fs::write(&path, text).map_err(|e| BenchError::io("writing", &path, e))?;
        Ok(vec![path])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{ErrorKind, Failure, Outcome};

    fn probe(start_ms: u64, connect_ms: Option<u64>, ok: bool) -> Probe {
        Probe {
            index: start_ms,
            start: Duration::from_millis(start_ms),
            latency: Duration::from_millis(connect_ms.unwrap_or(500)),
            connect: connect_ms.map(Duration::from_millis),
            outcome: if ok {
                Outcome::Ok { server: None }
            } else {
                Outcome::Err(Failure {
                    kind: ErrorKind::ConnectTimeout,
                    detail: "test".into(),
                })
            },
        }
    }

    #[test]
    fn spans_count_their_own_probes_and_connect_times() {
        let probes: Vec<Probe> = (0..300)
            .map(|i| probe(i * 10, (i % 100 != 7).then_some(i % 10 + 1), i % 100 != 7))
            .collect();
        let during = connect_stats(
            &probes,
            Duration::from_millis(1000),
            Duration::from_millis(2000),
        );
        assert_eq!(during.probes, 100);
        assert_eq!(during.failed, 1);
        assert_eq!(during.connect_p50_ms, Some(5.0));
        assert_eq!(during.connect_max_ms, Some(10.0));
        assert!((during.failed_share() - 0.01).abs() < 1e-9);
    }

    #[test]
    fn recovery_is_the_last_failure_after_the_flood_and_unknown_at_the_very_end() {
        let end = Duration::from_millis(1000);
        let mut probes: Vec<Probe> = (0..400).map(|i| probe(i * 10, Some(1), true)).collect();
        assert_eq!(recovery(&probes, end), Some(0.0));
        probes[50] = probe(500, None, false);
        assert_eq!(
            recovery(&probes, end),
            Some(0.0),
            "failures before the end do not count"
        );
        probes[130] = probe(1300, None, false);
        assert_eq!(recovery(&probes, end), Some(300.0));
        probes[350] = probe(3500, None, false);
        assert_eq!(
            recovery(&probes, end),
            None,
            "still failing when the run ended"
        );
    }

    #[test]
    fn a_row_meets_the_bounds_only_with_all_three() {
        let stats = |probes, failed| ConnectStats {
            probes,
            failed,
            ..Default::default()
        };
        let row = FloodRow {
            mode: Mode::Duplex,
            syns_sent: 1,
            syns_not_sent: 0,
            flood_seconds: 1.0,
            syns_per_second: 1.0,
            before: stats(100, 0),
            during: stats(1000, 9),
            after: stats(100, 0),
            keep_alive_requests: 10,
            keep_alive_failed: 0,
            recovered_after_ms: Some(1000.0),
            members: Vec::new(),
            half_open_evicted: 0,
            accepted_by_syn_cookie: 0,
        };
        assert!(row.meets_bounds());
        assert!(!FloodRow {
            during: stats(1000, 10),
            ..row.clone()
        }
        .meets_bounds());
        assert!(!FloodRow {
            keep_alive_failed: 1,
            ..row.clone()
        }
        .meets_bounds());
        assert!(!FloodRow {
            recovered_after_ms: Some(1001.0),
            ..row.clone()
        }
        .meets_bounds());
        assert!(!FloodRow {
            recovered_after_ms: None,
            ..row
        }
        .meets_bounds());
    }
}
