//! `steadfast-lab bench availability`: the fault campaign of seed `002_e40006d00d3bb163.txt`
//! (SAPOTI's first experiment, its Table 1) replayed on a Steadfast group, time-scaled.
//!
//! Six hosts, each cycling fault-free / faulty for 5/10, 8/9, 13/7, 17/6, 21/5 and 25/4
//! minutes; a client samples the service every 50 ms (the paper sampled every 5 s). The paper
//! injected a fault by killing the host's SNMP agent — the host lived on, its service was gone —
//! so the default fault here is `backend` (the node's web server dies, its daemon sees the
//! health check fail and hands over, the host still votes). `--how host` kills whole hosts
//! instead: then the group also needs a quorum of live voters (the six members and the lab's
//! witness), which SAPOTI, having no quorum, never waits for — and which is what keeps
//! Steadfast from serving twice under a partition.
//!
//! Reported beside the paper's 97.35 % and 16.4 s mean recovery: availability, service moves,
//! recovery latency (each outage), the share of time no host was fault-free (nobody could
//! serve), and availability over the time at least one host was.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::plot::cdf_svg;
use super::{percentile, unique_lab_name, BenchError, BenchLab, ProbeLoad};
use crate::faults::{crash, heal};
use crate::load::{LoadReport, ProbeOptions};
use crate::options::{BackendKind, CrashKind, UpOptions};

/// SAPOTI's Table 1: minutes fault-free, minutes faulty, per host.
pub const PAPER_CYCLES: [(f64, f64); 6] = [
    (5.0, 10.0),
    (8.0, 9.0),
    (13.0, 7.0),
    (17.0, 6.0),
    (21.0, 5.0),
    (25.0, 4.0),
];
pub const PAPER_AVAILABILITY_PCT: f64 = 97.35;
pub const PAPER_MEAN_RECOVERY_S: f64 = 16.4;
pub const DEFAULT_SECONDS_PER_MINUTE: f64 = 1.0;
pub const DEFAULT_DURATION: Duration = Duration::from_secs(180);
pub const QUICK_DURATION: Duration = Duration::from_secs(30);
const PROBE_PERIOD: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone)]
pub struct AvailabilityOptions {
    /// Real seconds per minute of the paper's schedule.
    pub seconds_per_minute: f64,
    pub duration: Duration,
    pub how: CrashKind,
    pub heartbeat_ms: Option<u32>,
    pub quick: bool,
    pub steadfast_exe: PathBuf,
}

/// One change of one host's state, at `at` from the start of the campaign.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultEvent {
    #[serde(rename = "at_ms", serialize_with = "millis")]
    pub at: Duration,
    /// 0-based host index (host `i` is the lab's `n{i+1}`).
    pub host: usize,
    /// `true`: the host becomes faulty; `false`: it is repaired.
    pub faulty: bool,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// The schedule: every host starts fault-free and alternates, `cycles[i]` minutes each way,
/// scaled by `seconds_per_minute`; events up to `duration`, in time order.
pub fn schedule(
    cycles: &[(f64, f64)],
    seconds_per_minute: f64,
    duration: Duration,
) -> Vec<FaultEvent> {
    let mut events = Vec::new();
    for (host, &(up, down)) in cycles.iter().enumerate() {
        if up <= 0.0 || down <= 0.0 || seconds_per_minute <= 0.0 {
            continue;
        }
        let mut t = 0.0;
        let mut faulty = false;
        loop {
            t += if faulty { down } else { up } * seconds_per_minute;
            let at = Duration::from_secs_f64(t);
            if at >= duration {
                break;
            }
            faulty = !faulty;
            events.push(FaultEvent { at, host, faulty });
        }
    }
    events.sort_by(|a, b| a.at.cmp(&b.at).then(a.host.cmp(&b.host)));
    events
}

/// The spans of `[0, end)` during which at least one of `hosts` hosts was fault-free, given
/// the events that happened (in time order).
pub fn live_spans(events: &[FaultEvent], hosts: usize, end: Duration) -> Vec<(Duration, Duration)> {
    let mut faulty = vec![false; hosts];
    let mut spans = Vec::new();
    let mut live_since = Some(Duration::ZERO);
    for event in events.iter().filter(|e| e.host < hosts && e.at < end) {
        faulty[event.host] = event.faulty;
        let all_faulty = faulty.iter().all(|f| *f);
        match (all_faulty, live_since) {
            (true, Some(since)) => {
                spans.push((since, event.at));
                live_since = None;
            }
            (false, None) => live_since = Some(event.at),
            _ => {}
        }
    }
    if let Some(since) = live_since {
        spans.push((since, end));
    }
    spans.retain(|(a, b)| b > a);
    spans
}

/// A finished campaign.
#[derive(Debug, Clone, Serialize)]
pub struct AvailabilityReport {
    pub bench: &'static str,
    pub quick: bool,
    pub how: CrashKind,
    pub seconds_per_minute: f64,
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// The events as carried out (their real times).
    pub events: Vec<FaultEvent>,
    pub probes: usize,
    pub probes_ok: usize,
    /// Probes that started while at least one host was fault-free, and of those the good ones.
    pub probes_while_live: usize,
    pub probes_ok_while_live: usize,
    pub no_live_host_ms: f64,
    pub service_moves: usize,
    /// Each outage the client saw (a run of failed probes), in ms.
    pub recovery_ms: Vec<f64>,
    pub notes: Vec<String>,
}

pub fn run(
    options: &AvailabilityOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<AvailabilityReport, BenchError> {
    if !options.seconds_per_minute.is_finite()
        || options.seconds_per_minute <= 0.0
        || options.duration.is_zero()
    {
        return Err(BenchError::Options(
            "availability needs a positive time scale and duration".into(),
        ));
    }
    if !matches!(options.how, CrashKind::Backend | CrashKind::Host) {
        return Err(BenchError::Options(format!(
            "availability injects backend or host faults, not {}",
            options.how
        )));
    }
    let hosts = PAPER_CYCLES.len();
    let mut up = UpOptions::new(unique_lab_name("av"), hosts as u8, &options.steadfast_exe);
    up.witness = true;
    up.backend = BackendKind::Builtin;
    up.heartbeat_ms = options.heartbeat_ms;
    up.ready_timeout = Duration::from_secs(30);
    let lab = BenchLab::up(&up)?;
    let planned = schedule(&PAPER_CYCLES, options.seconds_per_minute, options.duration);
    progress(&format!(
        "{} fault events over {:?} ({} s per paper minute), {} faults",
        planned.len(),
        options.duration,
        options.seconds_per_minute,
        options.how
    ));
    let load = ProbeLoad::start(
        &lab,
        ProbeOptions {
            period: PROBE_PERIOD,
            timeout: PROBE_TIMEOUT,
            ..ProbeOptions::default()
        },
        options.duration + Duration::from_secs(30),
    );
    let started = Instant::now();
    let mut carried_out = Vec::new();
    for event in &planned {
        if let Some(wait) = event.at.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let host = format!("n{}", event.host + 1);
        let at = started.elapsed();
        if event.faulty {
            crash(lab.name(), &host, options.how)?;
        } else {
            heal(lab.name(), &host)?;
        }
        carried_out.push(FaultEvent { at, ..*event });
        progress(&format!(
            "{:>7.1} s: {host} {}",
            at.as_secs_f64(),
            if event.faulty { "faulty" } else { "repaired" }
        ));
    }
    if let Some(rest) = options.duration.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let finished = load.stop()?;
    // The load started a moment before `started`: its probes are on the same clock within
    // that moment, which is far below the 50 ms sampling.
    Ok(summarise(options, carried_out, hosts, &finished.report))
}

fn summarise(
    options: &AvailabilityOptions,
    events: Vec<FaultEvent>,
    hosts: usize,
    report: &LoadReport,
) -> AvailabilityReport {
    let end = options.duration;
    let spans = live_spans(&events, hosts, end);
    let live_ms: f64 = spans
        .iter()
        .map(|(a, b)| (*b - *a).as_secs_f64() * 1000.0)
        .sum();
    let probes: Vec<_> = report.probes.iter().filter(|p| p.start < end).collect();
    let while_live: Vec<_> = probes
        .iter()
        .filter(|p| spans.iter().any(|(a, b)| p.start >= *a && p.start < *b))
        .collect();
    let mut moves = 0;
    let mut last_server: Option<&str> = None;
    for probe in &probes {
        if let crate::load::Outcome::Ok {
            server: Some(server),
        } = &probe.outcome
        {
            if last_server.is_some_and(|last| last != server) {
                moves += 1;
            }
            last_server = Some(server);
        }
    }
    let mut notes = Vec::new();
    if options.how == CrashKind::Host {
        notes.push(
            "host faults: the group serves only while a quorum of voters (4 of the 6 members \
             and the witness) lives; SAPOTI has no quorum"
                .to_string(),
        );
    }
    AvailabilityReport {
        bench: "availability",
        quick: options.quick,
        how: options.how,
        seconds_per_minute: options.seconds_per_minute,
        duration: end,
        events,
        probes: probes.len(),
        probes_ok: probes.iter().filter(|p| p.outcome.is_ok()).count(),
        probes_while_live: while_live.len(),
        probes_ok_while_live: while_live.iter().filter(|p| p.outcome.is_ok()).count(),
        no_live_host_ms: end.as_secs_f64() * 1000.0 - live_ms,
        service_moves: moves,
        recovery_ms: report
            .outages()
            .iter()
            .filter(|o| o.from < end)
            .map(|o| o.duration.as_secs_f64() * 1000.0)
            .collect(),
        notes,
    }
}

fn pct(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| 100.0 * part as f64 / whole as f64)
}

impl AvailabilityReport {
    pub fn availability_pct(&self) -> Option<f64> {
        pct(self.probes_ok, self.probes)
    }

    pub fn summary_json(&self) -> serde_json::Value {
        let mean = (!self.recovery_ms.is_empty())
            .then(|| self.recovery_ms.iter().sum::<f64>() / self.recovery_ms.len() as f64);
        serde_json::json!({
            "bench": self.bench,
            "quick": self.quick,
            "how": self.how,
            "seconds_per_minute": self.seconds_per_minute,
            "duration_s": self.duration.as_secs_f64(),
            "fault_events": self.events.len(),
            "probes": self.probes,
            "availability_pct": self.availability_pct(),
            "availability_while_a_host_lived_pct": pct(self.probes_ok_while_live, self.probes_while_live),
            "no_live_host_pct": 100.0 * self.no_live_host_ms / (self.duration.as_secs_f64() * 1000.0),
            "service_moves": self.service_moves,
            "recoveries": self.recovery_ms.len(),
            "recovery_ms": {
                "min": percentile(&self.recovery_ms, 0.0),
                "mean": mean,
                "max": percentile(&self.recovery_ms, 100.0),
            },
            "paper": {
                "availability_pct": PAPER_AVAILABILITY_PCT,
                "mean_recovery_s": PAPER_MEAN_RECOVERY_S,
            },
            "notes": self.notes,
        })
    }

    pub fn markdown(&self) -> String {
        let summary = self.summary_json();
        let f = |v: &serde_json::Value, digits: usize| {
            v.as_f64()
                .map_or("-".to_string(), |v| format!("{v:.digits$}"))
        };
        let mut out = format!(
            "SAPOTI's Table 1 schedule, 6 hosts, {} s per paper minute, {:.0} s, {} faults, a \
             probe every {} ms\n\n",
            self.seconds_per_minute,
            self.duration.as_secs_f64(),
            self.how,
            PROBE_PERIOD.as_millis()
        );
        out.push_str("| system | availability % | while a host lived % | no live host % | service moves | recoveries | recovery min / mean / max |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        out.push_str(&format!(
            "| steadfast | {} | {} | {} | {} | {} | {} / {} / {} ms |\n",
            f(&summary["availability_pct"], 2),
            f(&summary["availability_while_a_host_lived_pct"], 2),
            f(&summary["no_live_host_pct"], 2),
            self.service_moves,
            self.recovery_ms.len(),
            f(&summary["recovery_ms"]["min"], 0),
            f(&summary["recovery_ms"]["mean"], 0),
            f(&summary["recovery_ms"]["max"], 0),
        ));
        out.push_str(&format!(
            "| SAPOTI (paper, 12 h 23 min, real minutes) | {PAPER_AVAILABILITY_PCT} | - | - | 177 | - | 6 / {PAPER_MEAN_RECOVERY_S} / 53 s |\n"
        ));
        for note in &self.notes {
            out.push_str(&format!("\nnote: {note}\n"));
        }
        out
    }

    /// Writes `availability.json` (every event and recovery) and `availability-cdf.svg`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::io("creating", dir, e))?;
        let path = dir.join("availability.json");
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "summary": self.summary_json(),
            "report": self,
        }))
        .expect("a report serializes");
        std::fs::write(&path, text).map_err(|e| BenchError::io("writing", &path, e))?;
        let svg_path = dir.join("availability-cdf.svg");
        let svg = cdf_svg(
            "Recovery latency (each client-visible outage)",
            "outage ms (log)",
            &[(
                format!("steadfast, {} faults", self.how),
                self.recovery_ms.clone(),
            )],
        );
        std::fs::write(&svg_path, svg).map_err(|e| BenchError::io("writing", &svg_path, e))?;
        Ok(vec![path, svg_path])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn the_schedule_alternates_from_fault_free() {
        let events = schedule(&[(5.0, 10.0), (8.0, 9.0)], 1.0, s(40.0));
        let host0: Vec<(f64, bool)> = events
            .iter()
            .filter(|e| e.host == 0)
            .map(|e| (e.at.as_secs_f64(), e.faulty))
            .collect();
        assert_eq!(
            host0,
            vec![
                (5.0, true),
                (15.0, false),
                (20.0, true),
                (30.0, false),
                (35.0, true)
            ]
        );
        let host1: Vec<f64> = events
            .iter()
            .filter(|e| e.host == 1)
            .map(|e| e.at.as_secs_f64())
            .collect();
        assert_eq!(host1, vec![8.0, 17.0, 25.0, 34.0]);
        assert!(
            events.windows(2).all(|w| w[0].at <= w[1].at),
            "in time order"
        );
        // Scaling halves every time.
        let half = schedule(&[(5.0, 10.0)], 0.5, s(40.0));
        assert_eq!(half[0].at, s(2.5));
        assert!(schedule(&[(5.0, 10.0)], 0.0, s(40.0)).is_empty());
    }

    #[test]
    fn live_spans_end_only_when_every_host_is_faulty() {
        let e = |at: f64, host, faulty| FaultEvent {
            at: s(at),
            host,
            faulty,
        };
        let events = vec![
            e(1.0, 0, true),
            e(2.0, 1, true),  // both faulty from 2 s
            e(3.0, 0, false), // back at 3 s
            e(4.0, 0, true),  // both faulty again until the end
        ];
        assert_eq!(
            live_spans(&events, 2, s(10.0)),
            vec![(s(0.0), s(2.0)), (s(3.0), s(4.0))]
        );
        assert_eq!(live_spans(&[], 2, s(10.0)), vec![(s(0.0), s(10.0))]);
        // Events of unknown hosts or after the end change nothing.
        assert_eq!(
            live_spans(&[e(1.0, 5, true), e(11.0, 0, true)], 1, s(10.0)),
            vec![(s(0.0), s(10.0))]
        );
    }

    #[test]
    fn the_papers_schedule_rarely_leaves_no_host() {
        let events = schedule(&PAPER_CYCLES, 1.0, s(12.0 * 3600.0));
        let spans = live_spans(&events, 6, s(12.0 * 3600.0));
        let live: f64 = spans.iter().map(|(a, b)| (*b - *a).as_secs_f64()).sum();
        let dead_share = 1.0 - live / (12.0 * 3600.0);
        // The product of the faulty shares is about 0.1 %: some collapse, but little.
        assert!(dead_share > 0.0 && dead_share < 0.01, "{dead_share}");
    }
}
