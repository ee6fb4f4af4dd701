//! `steadfast-lab bench failover`: repeated crashes of the serving node under a probe load that
//! opens a new connection every 10 ms; per crash the client-visible gap, the time to the first
//! good reply from another node, and who took over — for Steadfast and, when installed, for
//! keepalived in the same kind of lab on the same load.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::keepalived::{self, KeepalivedGroup, KeepalivedSetting};
use super::plot::cdf_svg;
use super::{
    percentile, unique_lab_name, wait_until, BenchError, BenchLab, FinishedLoad, Jitter, ProbeLoad,
};
use crate::faults::{crash, heal};
use crate::load::{Outage, Outcome, ProbeOptions};
use crate::options::{CrashKind, UpOptions};
use crate::system::monotonic_now;

pub const DEFAULT_CRASHES: usize = 20;
pub const QUICK_CRASHES: usize = 3;
pub const DEFAULT_FAST_HEARTBEAT_MS: u32 = 10;
const NODES: u8 = 3;
const PROBE_PERIOD: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
const PAUSE_MIN: Duration = Duration::from_millis(300);
const PAUSE_MAX: Duration = Duration::from_millis(700);
/// How long Steadfast may take to serve from another node, or to settle after a heal: far
/// above any heartbeat setting the bench uses.
const STEADFAST_BOUND: Duration = Duration::from_secs(5);
const LAB_READY: Duration = Duration::from_secs(30);

/// Whether keepalived rows are wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepalivedChoice {
    /// Run them if keepalived is installed, else note the skip.
    IfInstalled,
    /// `--keepalived`: its absence is an error.
    Required,
    /// `--no-keepalived`: Steadfast's rows only, whatever is installed.
    Never,
}

#[derive(Clone, Debug)]
pub struct FailoverOptions {
    /// Crashes per row.
    pub crashes: usize,
    pub how: CrashKind,
    /// The fast Steadfast row's heartbeat.
    pub heartbeat_ms: u32,
    pub keepalived: KeepalivedChoice,
    /// Only the fast rows (Steadfast at `heartbeat_ms`, keepalived fastest).
    pub quick: bool,
    /// The `steadfast` executable the labs run.
    pub steadfast_exe: PathBuf,
}

/// What one row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "system", rename_all = "snake_case")]
pub enum System {
    Steadfast { heartbeat_ms: Option<u32> },
    Keepalived { setting: KeepalivedSetting },
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Steadfast { .. } => "steadfast",
            System::Keepalived { .. } => "keepalived",
        }
    }

    pub fn setting(self) -> String {
        match self {
            System::Steadfast { heartbeat_ms: None } => "default heartbeat".to_string(),
            System::Steadfast {
                heartbeat_ms: Some(ms),
            } => format!("heartbeat {ms} ms"),
            System::Keepalived { setting } => setting.describe().to_string(),
        }
    }

    fn tag(self) -> &'static str {
        match self {
            System::Steadfast { heartbeat_ms: None } => "sd",
            System::Steadfast { .. } => "sf",
            System::Keepalived {
                setting: KeepalivedSetting::Defaults,
            } => "kd",
            System::Keepalived { .. } => "kf",
        }
    }
}

/// One crash as the client saw it. Times are milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CrashSample {
    pub index: usize,
    /// The node that held the VIP and was crashed.
    pub crashed: String,
    /// When, since the load began.
    pub at_ms: f64,
    /// The longest run of failed new connections around this crash (0 when none failed).
    pub gap_ms: f64,
    pub failed_probes: usize,
    /// From the crash to the first verified reply served by another node.
    pub first_good_reply_ms: Option<f64>,
    /// The node that served that reply.
    pub took_over: Option<String>,
}

/// The table's figures for one row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowSummary {
    pub system: String,
    pub setting: String,
    pub crashes: usize,
    pub median_gap_ms: Option<f64>,
    pub p90_gap_ms: Option<f64>,
    pub max_gap_ms: Option<f64>,
    pub median_first_good_reply_ms: Option<f64>,
    /// Every failed probe of the row's load, heals and preemptions included.
    pub client_errors: usize,
    pub probes: usize,
    /// Outages matched to no crash: heals, keepalived's preemption when n1 returns.
    pub other_outages: usize,
    pub longest_other_gap_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RowResult {
    #[serde(flatten)]
    pub system: System,
    pub lab: String,
    pub summary: RowSummary,
    pub samples: Vec<CrashSample>,
    /// Outages matched to no crash (a heal, keepalived's preemption when the first node returns).
    pub other_outages: Vec<Outage>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FailoverReport {
    pub bench: &'static str,
    pub how: CrashKind,
    pub crashes_per_row: usize,
    pub quick: bool,
    pub probe_period_ms: u64,
    pub probe_timeout_ms: u64,
    pub rows: Vec<RowResult>,
    pub notes: Vec<String>,
}

/// The rows `options` asks for, and notes on rows left out.
pub fn plan(options: &FailoverOptions) -> Result<(Vec<System>, Vec<String>), BenchError> {
    if options.crashes == 0 {
        return Err(BenchError::Options("--crashes must be at least 1".into()));
    }
    if options.heartbeat_ms == 0 {
        return Err(BenchError::Options(
            "--heartbeat-ms must be at least 1".into(),
        ));
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if !options.quick {
        rows.push(System::Steadfast { heartbeat_ms: None });
    }
    rows.push(System::Steadfast {
        heartbeat_ms: Some(options.heartbeat_ms),
    });
    let installed = keepalived::installed().is_some();
    let crash_applies = matches!(options.how, CrashKind::Host | CrashKind::Link);
    match (options.keepalived, installed, crash_applies) {
        (KeepalivedChoice::Never, _, _) => {}
        (KeepalivedChoice::Required, false, _) => return Err(BenchError::KeepalivedMissing),
        (KeepalivedChoice::Required, true, false) => {
            return Err(BenchError::Options(format!(
                "--keepalived compares only --how host or link (keepalived has no daemon for \
                 the lab to crash with --how {} and no health check of the backend)",
                options.how
            )))
        }
        (KeepalivedChoice::IfInstalled, false, _) => notes.push(
            "keepalived is not installed (Debian package keepalived): its rows are skipped".into(),
        ),
        (KeepalivedChoice::IfInstalled, true, false) => notes.push(format!(
            "keepalived rows are skipped for --how {}: only host and link crashes apply to it",
            options.how
        )),
        (KeepalivedChoice::IfInstalled | KeepalivedChoice::Required, true, true) => {
            if !options.quick {
                rows.push(System::Keepalived {
                    setting: KeepalivedSetting::Defaults,
                });
            }
            rows.push(System::Keepalived {
                setting: KeepalivedSetting::Fastest,
            });
        }
    }
    Ok((rows, notes))
}

/// Runs every planned row, one lab after another; `progress` gets a line per step.
pub fn run(
    options: &FailoverOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<FailoverReport, BenchError> {
    let (systems, notes) = plan(options)?;
    for note in &notes {
        progress(&format!("note: {note}"));
    }
    let mut rows = Vec::new();
    for system in systems {
        progress(&format!(
            "{} ({}): {} crashes --how {}",
            system.name(),
            system.setting(),
            options.crashes,
            options.how
        ));
        rows.push(run_row(system, options, progress)?);
    }
    Ok(FailoverReport {
        bench: "failover",
        how: options.how,
        crashes_per_row: options.crashes,
        quick: options.quick,
        probe_period_ms: PROBE_PERIOD.as_millis() as u64,
        probe_timeout_ms: PROBE_TIMEOUT.as_millis() as u64,
        rows,
        notes,
    })
}

/// A crash as the campaign recorded it, on CLOCK_MONOTONIC.
struct CrashEvent {
    crashed: String,
    at: Duration,
    heal_started: Duration,
}

fn run_row(
    system: System,
    options: &FailoverOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<RowResult, BenchError> {
    let mut up = UpOptions::new(unique_lab_name(system.tag()), NODES, &options.steadfast_exe);
    up.ready_timeout = LAB_READY;
    match system {
        System::Steadfast { heartbeat_ms } => up.heartbeat_ms = heartbeat_ms,
        // The lab runs only the backends; keepalived moves the VIP.
        System::Keepalived { .. } => up.start_daemons = false,
    }
    let lab = BenchLab::up(&up)?;
    let campaign_error = |reason: String| BenchError::Campaign {
        lab: lab.name().to_string(),
        row: format!("{} ({})", system.name(), system.setting()),
        reason,
    };
    // Declared after the lab, so it is dropped (every keepalived killed) before the lab goes.
    let mut group = None;
    let bound = match system {
        System::Steadfast { .. } => STEADFAST_BOUND,
        System::Keepalived { setting } => {
            let members: Vec<(String, String)> = lab
                .info
                .nodes
                .iter()
                .map(|ns| {
                    let short = ns
                        .strip_prefix(&format!("{}-", lab.name()))
                        .unwrap_or(ns)
                        .to_string();
                    (short, ns.clone())
                })
                .collect();
            group = Some(KeepalivedGroup::start(
                lab.name(),
                &members,
                &lab.info.state_dir.join("keepalived"),
                setting,
            )?);
            let bound = setting.settle_bound();
            if !wait_until(bound, || Ok(lab.holders()? == ["n1"]))? {
                return Err(campaign_error(format!(
                    "keepalived did not give the VIP to n1 within {bound:?}; holders {:?}",
                    lab.holders()?
                )));
            }
            bound
        }
    };
    let per_crash = PAUSE_MAX + bound * 2 + PROBE_TIMEOUT + Duration::from_secs(10);
    let limit = per_crash * options.crashes as u32 + Duration::from_secs(30);
    let load = ProbeLoad::start(
        &lab,
        ProbeOptions {
            period: PROBE_PERIOD,
            timeout: PROBE_TIMEOUT,
            ..ProbeOptions::default()
        },
        limit,
    );
    let served_by = |host: &str| load.progress.snapshot().last_server.as_deref() == Some(host);
    let mut jitter = Jitter::new();
    let mut events = Vec::new();
    for index in 0..options.crashes {
        std::thread::sleep(jitter.between(PAUSE_MIN, PAUSE_MAX));
        // Crash only a settled group: one holder, and the client served by it.
        let mut holder = String::new();
        let settled = wait_until(bound, || {
            let holders = lab.holders()?;
            Ok(match holders.as_slice() {
                [only] if served_by(only) => {
                    holder = only.clone();
                    true
                }
                _ => false,
            })
        })?;
        if !settled {
            return Err(campaign_error(format!(
                "before crash {index}: the group did not settle within {bound:?} (holders {:?}, \
                 client last served by {:?})",
                lab.holders()?,
                load.progress.snapshot().last_server
            )));
        }
        let report = crash(lab.name(), &holder, options.how)?;
        let moved = wait_until(bound, || {
            Ok(load
                .progress
                .snapshot()
                .last_server
                .is_some_and(|s| s != holder))
        })?;
        if !moved {
            return Err(campaign_error(format!(
                "crash {index} (--how {} of {holder}): no other node served the client within \
                 {bound:?}",
                options.how
            )));
        }
        let took_over = load
            .progress
            .snapshot()
            .last_server
            .unwrap_or_else(|| "?".into());
        // Let the probes that were in flight at the crash time out before the heal.
        std::thread::sleep(PROBE_TIMEOUT);
        let heal_started = monotonic_now();
        heal(lab.name(), &holder)?;
        if let Some(group) = group.as_mut() {
            // Healing a lab without daemons restarts only the backend.
            group.start_node(&holder)?;
            // keepalived preempts: the returning higher-priority node takes the VIP back.
            let back = wait_until(bound, || Ok(lab.holders()? == ["n1"] && served_by("n1")))?;
            if !back {
                return Err(campaign_error(format!(
                    "after healing {holder}, keepalived did not settle on n1 within {bound:?}; \
                     holders {:?}",
                    lab.holders()?
                )));
            }
        }
        progress(&format!(
            "  crash {}/{}: {holder} crashed, {took_over} took over",
            index + 1,
            options.crashes,
        ));
        events.push(CrashEvent {
            crashed: holder,
            at: report.at_monotonic,
            heal_started,
        });
    }
    std::thread::sleep(PAUSE_MIN);
    let finished = load.stop()?;
    drop(group);
    Ok(analyse(
        system,
        lab.name(),
        options.crashes,
        &events,
        &finished,
    ))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Matches the load's outages and replies to the crashes: an outage belongs to the crash whose
/// window (crash to the start of its heal) it overlaps.
fn analyse(
    system: System,
    lab: &str,
    crashes: usize,
    events: &[CrashEvent],
    finished: &FinishedLoad,
) -> RowResult {
    let report = &finished.report;
    let outages = report.outages();
    let mut matched = vec![false; outages.len()];
    let mut samples = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let at = event.at.saturating_sub(finished.origin_monotonic);
        let window_end = event.heal_started.saturating_sub(finished.origin_monotonic);
        let mut gap = Duration::ZERO;
        let mut failed_probes = 0;
        for (k, outage) in outages.iter().enumerate() {
            if outage.to > at && outage.from < window_end {
                matched[k] = true;
                gap = gap.max(outage.duration);
                failed_probes += outage.failed_probes;
            }
        }
        let first_good = report.probes.iter().find_map(|probe| match &probe.outcome {
            Outcome::Ok { server }
                if probe.start >= at && server.as_deref() != Some(event.crashed.as_str()) =>
            {
                Some((
                    (probe.start + probe.latency).saturating_sub(at),
                    server.clone(),
                ))
            }
            _ => None,
        });
        samples.push(CrashSample {
            index,
            crashed: event.crashed.clone(),
            at_ms: ms(at),
            gap_ms: ms(gap),
            failed_probes,
            first_good_reply_ms: first_good.as_ref().map(|(d, _)| ms(*d)),
            took_over: first_good.and_then(|(_, server)| server),
        });
    }
    let gaps: Vec<f64> = samples.iter().map(|s| s.gap_ms).collect();
    let first_good: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.first_good_reply_ms)
        .collect();
    let other_outages: Vec<Outage> = outages
        .into_iter()
        .zip(matched)
        .filter(|(_, m)| !m)
        .map(|(o, _)| o)
        .collect();
    let other_gaps: Vec<f64> = other_outages.iter().map(|o| ms(o.duration)).collect();
    let summary = RowSummary {
        system: system.name().to_string(),
        setting: system.setting(),
        crashes,
        median_gap_ms: percentile(&gaps, 50.0),
        p90_gap_ms: percentile(&gaps, 90.0),
        max_gap_ms: percentile(&gaps, 100.0),
        median_first_good_reply_ms: percentile(&first_good, 50.0),
        client_errors: report.probe_failures(),
        probes: report.probes.len(),
        other_outages: other_outages.len(),
        longest_other_gap_ms: percentile(&other_gaps, 100.0),
    };
    RowResult {
        system,
        lab: lab.to_string(),
        summary,
        samples,
        other_outages,
    }
}

impl FailoverReport {
    /// What `--json` prints: the table's rows and the notes, no samples.
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": self.bench,
            "how": self.how,
            "crashes_per_row": self.crashes_per_row,
            "quick": self.quick,
            "rows": self.rows.iter().map(|r| &r.summary).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    pub fn markdown(&self) -> String {
        let cell = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"));
        let mut text = String::new();
        let _ = writeln!(
            text,
            "Failover, --how {}: {} crashes per row; a new connection every {} ms (timeout {} ms) \
             from the client namespace; gap = longest run of failed new connections per crash.\n",
            self.how,
            self.crashes_per_row,
            PROBE_PERIOD.as_millis(),
            PROBE_TIMEOUT.as_millis()
        );
        text.push_str(
            "| system | setting | crashes | median gap ms | p90 gap ms | max gap ms | median crash→first good reply ms | client errors |\n",
        );
        text.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
        for row in &self.rows {
            let s = &row.summary;
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s.system,
                s.setting,
                s.crashes,
                cell(s.median_gap_ms),
                cell(s.p90_gap_ms),
                cell(s.max_gap_ms),
                cell(s.median_first_good_reply_ms),
                s.client_errors
            );
        }
        text.push_str(
            "\nOutages outside the crash windows (heals; keepalived's preemption when n1 \
             returns), counted in client errors:",
        );
        for row in &self.rows {
            let s = &row.summary;
            let _ = write!(text, " {} {}: {}", s.system, s.setting, s.other_outages);
            if let Some(longest) = s.longest_other_gap_ms {
                let _ = write!(text, " (longest {longest:.1} ms)");
            }
            text.push(';');
        }
        text.pop();
        text.push_str(".\n");
        for note in &self.notes {
            let _ = writeln!(text, "\nNote: {note}");
        }
        text
    }

    pub fn cdf_svg(&self) -> String {
        let series: Vec<(String, Vec<f64>)> = self
            .rows
            .iter()
            .map(|row| {
                (
                    format!("{}, {}", row.summary.system, row.summary.setting),
                    row.samples.iter().map(|s| s.gap_ms).collect(),
                )
            })
            .collect();
        cdf_svg(
            &format!("Client-visible gap per crash (--how {})", self.how),
            "gap for new connections (ms, log scale)",
            &series,
        )
    }

    /// Writes `failover.json` (every sample) and `failover-cdf.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io("creating the output directory", dir, e))?;
        let json = dir.join("failover.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| {
            BenchError::io("serializing", &json, std::io::Error::other(e.to_string()))
        })?;
        std::fs::write(&json, text + "\n").map_err(|e| BenchError::io("writing", &json, e))?;
        let svg = dir.join("failover-cdf.svg");
        std::fs::write(&svg, self.cdf_svg()).map_err(|e| BenchError::io("writing", &svg, e))?;
        Ok(vec![json, svg])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{LoadReport, Probe};

    fn probe(index: u64, start_ms: u64, ok: Option<&str>) -> Probe {
        Probe {
            index,
            start: Duration::from_millis(start_ms),
            latency: Duration::from_millis(1),
            connect: None,
            outcome: match ok {
                Some(server) => Outcome::Ok {
                    server: Some(server.to_string()),
                },
                None => Outcome::Err(crate::load::Failure {
                    kind: crate::load::ErrorKind::Timeout,
                    detail: "test".into(),
                }),
            },
        }
    }

    #[test]
    fn outages_are_matched_to_their_crash_window() {
        // n1 serves until 100 ms, probes fail 110..=140, n2 serves from 150; a later lone
        // failure at 400 ms (after the heal began at 300 ms) belongs to no crash.
        let mut probes = Vec::new();
        for (i, t) in (0..=60).map(|k| k * 10).enumerate() {
            let server = match t {
                110..=140 | 400 => None,
                0..=100 => Some("n1"),
                _ => Some("n2"),
            };
            probes.push(probe(i as u64, t, server));
        }
        let finished = FinishedLoad {
            report: LoadReport {
                target: "10.77.0.100:80".parse().unwrap(),
                period: PROBE_PERIOD,
                elapsed: Duration::from_millis(610),
                probes,
                connections: Vec::new(),
            },
            origin_monotonic: Duration::from_secs(1000),
        };
        let events = [CrashEvent {
            crashed: "n1".into(),
            at: Duration::from_secs(1000) + Duration::from_millis(105),
            heal_started: Duration::from_secs(1000) + Duration::from_millis(300),
        }];
        let row = analyse(
            System::Steadfast {
                heartbeat_ms: Some(10),
            },
            "lab",
            1,
            &events,
            &finished,
        );
        let sample = &row.samples[0];
        assert_eq!(sample.failed_probes, 4);
        assert!((sample.gap_ms - 40.0).abs() < 1e-9, "{sample:?}");
        assert!((sample.first_good_reply_ms.unwrap() - 46.0).abs() < 1e-9);
        assert_eq!(sample.took_over.as_deref(), Some("n2"));
        assert_eq!(row.other_outages.len(), 1);
        assert_eq!(row.summary.other_outages, 1);
        assert_eq!(row.summary.client_errors, 5);
        assert_eq!(row.summary.median_gap_ms, Some(40.0));
    }

    fn options(quick: bool, how: CrashKind, keepalived: KeepalivedChoice) -> FailoverOptions {
        FailoverOptions {
            crashes: 3,
            how,
            heartbeat_ms: 10,
            keepalived,
            quick,
            steadfast_exe: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn quick_plans_only_the_fast_rows() {
        let (rows, _) = plan(&options(
            true,
            CrashKind::Host,
            KeepalivedChoice::IfInstalled,
        ))
        .expect("plan");
        assert_eq!(
            rows[0],
            System::Steadfast {
                heartbeat_ms: Some(10)
            }
        );
        assert!(rows.len() <= 2);
        let (full, _) = plan(&options(
            false,
            CrashKind::Host,
            KeepalivedChoice::IfInstalled,
        ))
        .expect("plan");
        assert_eq!(full[0], System::Steadfast { heartbeat_ms: None });
        assert_eq!(full.len(), rows.len() * 2);
    }

    #[test]
    fn keepalived_rows_only_for_crashes_that_apply() {
        let (rows, notes) = plan(&options(
            false,
            CrashKind::Backend,
            KeepalivedChoice::IfInstalled,
        ))
        .expect("plan");
        assert_eq!(rows.len(), 2);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(plan(&options(
            false,
            CrashKind::Process,
            KeepalivedChoice::Required
        ))
        .is_err());
    }
}
