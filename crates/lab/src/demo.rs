//! `steadfast-lab demo`: the first thing a new user runs. The same verifying load and the same crash
//! of the primary's host (`--how host`), in two labs one after the other:
//!
//! - **duplex**: two nodes and a witness; the backup logs every client frame and every reply,
//!   and when the primary's host dies it rebuilds the established connections. The load's
//!   keep-alive connections, a large download and an upload in flight at the crash carry on;
//!   the healed node rejoins as a backup and adopts the connections open on the new primary.
//! - **unreplicated**: the same lab, load and crash; only the address moves (what keepalived
//!   does), so the established connections are lost with the crashed host.
//!
//! Each part builds its lab (builtin backend), starts the load from the client namespace,
//! crashes the primary once the download and the upload are in flight, heals it, watches it
//! rejoin, prints its progress and its report, and removes its lab. A side-by-side table ends
//! the run; [`DemoSummary::failures`] says whether duplex did what it promises.
//!
//! A lab is removed at the end however the demo ends (error, panic, Ctrl-C through
//! [`interrupt_on_ctrl_c`]) unless [`DemoOptions::keep`] is set.
//!
//! Every time in a part's progress lines and report is on that part's load timeline (0 = the
//! load's start), so the crash, the heal and the outages line up. The crash's instant is the
//! lab's CLOCK_MONOTONIC reading just before its first action, the load's start a reading of the
//! same clock, which is why the failover time is measured from the moment the host died, not
//! from when `crash` returned.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::data_tier::{check_exactly_once, ExactlyOnce};
use crate::error::LabError;
use crate::faults::{crash, heal, HealReport};
use crate::lab::{down, query_control_socket, up, vip_holders, LabInfo};
use crate::load::{
    run_load, run_transfer, ErrorKind, KeepAliveOptions, LoadError, LoadOptions, LoadProgress,
    LoadReport, Outage, Outcome, ProbeOptions, ProbeRequest, ProgressSnapshot, RequestRecord,
    SlowUpload, Transfer,
};
use crate::options::{BackendKind, CrashKind, Mode, UpOptions};
use crate::system::{monotonic_now, run_in_namespace};

/// How long the load runs before the crash, while the primary is down, and after the heal.
/// The crash waits besides for the transfers to be in flight, the heal for them to end, and
/// the end for the healed node to rejoin.
pub const DEFAULT_BEFORE_CRASH: Duration = Duration::from_secs(2);
pub const DEFAULT_CRASHED_FOR: Duration = Duration::from_secs(2);
pub const DEFAULT_AFTER_HEAL: Duration = Duration::from_secs(2);
/// The heartbeat duplex is measured at (benches/README.md); both parts use it, so the
/// unreplicated one detects the crash as fast and the two columns compare like with like.
pub const DEFAULT_HEARTBEAT_MS: u32 = 10;
/// The product first, then what keepalived would do.
pub const DEFAULT_MODES: [Mode; 2] = [Mode::Duplex, Mode::Unreplicated];

const MIB: u64 = 1024 * 1024;
/// A download of several megabytes read at a pace, as by a client on a slow link: it lasts 2 s
/// and the backend's reply is still going out when the crash comes.
const DOWNLOAD: Transfer = Transfer::Download {
    len: 16 * MIB,
    seed: 1,
    bytes_per_second: 8 * MIB,
};
/// A commit whose body is sent in pieces for 2 s: a request half received at the crash.
const UPLOAD: Transfer = Transfer::Upload {
    seed: 2,
    upload: SlowUpload {
        len: MIB,
        pieces: 20,
        gap: Duration::from_millis(100),
    },
};
/// The transfers begin this long before the crash is due, so it finds each about half done.
const TRANSFER_LEAD: Duration = Duration::from_secs(1);
/// What a failure may add to a transfer's planned time before its client gives up: sixty
/// times a duplex takeover's stall. In unreplicated mode a download whose server died
/// silently (no reset reached the client) ends so.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3);
/// The crash waits until each transfer has moved at least 1/IN_FLIGHT_SHARE of its bytes …
const IN_FLIGHT_SHARE: u64 = 4;
/// … for at most this long past its due time.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);
/// How long the crash waits for a duplex primary's connections to be all adopted.
const PROTECTION_WAIT: Duration = Duration::from_millis(500);
/// A duplex backup joins, a healed node rejoins and the transfers end within this.
const SETTLE: Duration = Duration::from_secs(10);
/// How often the daemons' status documents are read while the demo waits for an event.
const STATUS_EVERY: Duration = Duration::from_millis(50);
/// Where a failed part's daemon logs are copied before its lab is removed.
const KEPT_LOGS: &str = "/tmp/steadfast-demo-logs";
/// One new connection per probe period: the same cadence as the acceptance measurements.
const PROBE_PERIOD: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_BYTES: u64 = 1024;
const KEEP_ALIVE_CONNECTIONS: usize = 3;
/// A short pause between keep-alive requests keeps the load from eating both cores of a small
/// machine, which would slow the daemons' heartbeats and distort the very failover we show.
const KEEP_ALIVE_PAUSE: Duration = Duration::from_millis(10);
/// Upper bound of the load run; the demo stops it long before.
const LOAD_LIMIT: Duration = Duration::from_secs(600);
/// How long the load thread may take to enter the client namespace and start.
const LOAD_START_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Prose the demo writes is wrapped to this width.
const TEXT_WIDTH: usize = 92;
/// The report lists at most this many outages, then a count of the rest.
const MAX_LISTED_OUTAGES: usize = 8;

/// What `run_demo` builds and how long each phase lasts.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The labs are named after it: `NAME-dx` (duplex), `NAME-un` (unreplicated). Default
    /// `demo-<pid>`, unique per process.
    pub name: String,
    /// The parts to run, in this order: duplex and unreplicated by default.
    pub modes: Vec<Mode>,
    /// Member nodes: 2 by default, with a witness (two voters alone lose quorum when one dies,
    /// so nothing would fail over). Duplex pairs a primary with one backup: 2 only.
    pub nodes: u8,
    /// `None` keeps the daemon's default heartbeat.
    pub heartbeat_ms: Option<u32>,
    /// Leave the labs running at the end.
    pub keep: bool,
    /// The `steadfast` executable that runs the daemons and the builtin backend.
    pub steadfast_exe: PathBuf,
    pub before_crash: Duration,
    pub crashed_for: Duration,
    pub after_heal: Duration,
    /// Set (by [`interrupt_on_ctrl_c`] or a test) to end the demo early: the load stops, the
    /// report covers what ran, the lab is removed, no further part runs.
    pub interrupt: Arc<AtomicBool>,
}

impl DemoOptions {
    /// Duplex then unreplicated, 2 nodes and a witness, a 10 ms heartbeat, 2 s phases, labs
    /// `demo-<pid>-dx` and `demo-<pid>-un`, removed at the end.
    pub fn new(steadfast_exe: impl Into<PathBuf>) -> Self {
        DemoOptions {
            name: default_lab_name(),
            modes: DEFAULT_MODES.to_vec(),
            nodes: 2,
            heartbeat_ms: Some(DEFAULT_HEARTBEAT_MS),
            keep: false,
            steadfast_exe: steadfast_exe.into(),
            before_crash: DEFAULT_BEFORE_CRASH,
            crashed_for: DEFAULT_CRASHED_FOR,
            after_heal: DEFAULT_AFTER_HEAL,
            interrupt: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The lab of each part, in the order they run.
    pub fn lab_names(&self) -> Vec<String> {
        self.modes
            .iter()
            .map(|mode| part_lab_name(&self.name, *mode))
            .collect()
    }

    fn interrupted(&self) -> bool {
        self.interrupt.load(Ordering::Relaxed)
    }

    fn validate(&self) -> Result<(), DemoError> {
        if self.nodes < 2 {
            return Err(DemoError::TooFewNodes { nodes: self.nodes });
        }
        if self.modes.is_empty() {
            return Err(DemoError::NoMode);
        }
        for &mode in &self.modes {
            match mode {
                Mode::Simplex | Mode::Active => return Err(DemoError::UnsupportedMode { mode }),
                Mode::Duplex if self.nodes != 2 => {
                    return Err(DemoError::DuplexNeedsTwoNodes { nodes: self.nodes })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// `demo-<pid>`: two demos at once on one machine never share a lab.
pub fn default_lab_name() -> String {
    format!("demo-{}", std::process::id())
}

/// `NAME-dx`, `NAME-un`: the lab of one part.
fn part_lab_name(base: &str, mode: Mode) -> String {
    let suffix = match mode {
        Mode::Duplex => "dx",
        Mode::Unreplicated => "un",
        Mode::Simplex => "sx",
        Mode::Active => "ac",
    };
    format!("{base}-{suffix}")
}

/// What stopped the demo. The causes are part of each message and deliberately not exposed as
/// `source()`: the command line prints the whole chain (`{:#}`), which would repeat them.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo needs at least 2 nodes to show a failover (got {nodes})")]
    TooFewNodes { nodes: u8 },

    #[error("the demo shows duplex and unreplicated mode, not {mode}")]
    UnsupportedMode { mode: Mode },

    #[error("the demo was given no mode to show")]
    NoMode,

    #[error(
        "duplex pairs a primary with one backup: the demo runs it with 2 nodes and a witness \
         (got {nodes} nodes; unreplicated mode alone takes more)"
    )]
    DuplexNeedsTwoNodes { nodes: u8 },

    #[error("demo lab {lab}: {step}: {error}")]
    Lab {
        lab: String,
        step: String,
        /// Boxed: a lab error is large and the demo's results travel by value.
        error: Box<LabError>,
    },

    #[error("demo lab {lab}: {what} within {waited:?}")]
    NotSettled {
        lab: String,
        what: String,
        waited: Duration,
    },

    #[error("demo lab {lab}: the verifying load in namespace {namespace}: {error}")]
    Load {
        lab: String,
        namespace: String,
        error: LoadError,
    },

    #[error("demo lab {lab}: starting the verifying load in namespace {namespace}: {error}")]
    LoadStart {
        lab: String,
        namespace: String,
        error: io::Error,
    },

    #[error("demo lab {lab}: the verifying load did not start in namespace {namespace} within {waited:?}")]
    LoadNotStarted {
        lab: String,
        namespace: String,
        waited: Duration,
    },

    #[error("demo lab {lab}: the verifying load's thread panicked")]
    LoadPanicked { lab: String },

    #[error("demo lab {lab}: interrupted before the load started")]
    Interrupted { lab: String },

    #[error("demo: installing the Ctrl-C handler: {error}")]
    Signal { error: io::Error },

    #[error("demo: writing to the terminal: {error}")]
    Output { error: io::Error },
}

impl From<io::Error> for DemoError {
    fn from(error: io::Error) -> Self {
        DemoError::Output { error }
    }
}

/// A crash or a heal, on the load's timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoEvent {
    /// `n1` …
    pub host: String,
    /// When it began, since the load's start.
    pub at: Duration,
    /// How long the lab took to carry it out (for a heal: restart until the daemon answers).
    pub took: Duration,
}

/// The first verified reply to a new connection after the crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// From the crash to the end of that reply.
    pub after: Duration,
    pub server: Option<String>,
}

/// A download or an upload on a connection of its own, timed to be in flight at the crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRun {
    pub transfer: Transfer,
    /// The bytes it had moved its way (request or reply, head included) when the crash came;
    /// `None` without a crash.
    pub moved_at_crash: Option<u64>,
    /// The bytes it moved in all.
    pub moved: u64,
    /// `None`: it never started, or Ctrl-C cut it short.
    pub record: Option<RequestRecord>,
}

impl TransferRun {
    /// `16 MiB download`, `1 MiB upload`.
    pub fn title(&self) -> String {
        transfer_title(&self.transfer)
    }

    /// It had started and not ended at `at` (on the load's timeline).
    pub fn in_flight_at(&self, at: Duration) -> bool {
        self.record
            .as_ref()
            .is_some_and(|r| r.start <= at && at < r.start + r.latency)
    }

    /// Its reply came and was verified: every byte of the download, the upload's digest.
    pub fn completed(&self) -> bool {
        self.record.as_ref().is_some_and(|r| r.outcome.is_ok())
    }

    /// `complete, verified`, `reset after 8.1 MiB`: what became of it, in a few words.
    fn outcome_words(&self) -> String {
        match &self.record {
            None => "did not run to its end".into(),
            Some(RequestRecord {
                outcome: Outcome::Ok { .. },
                ..
            }) => match self.transfer {
                Transfer::Download { .. } => "complete, verified".into(),
                Transfer::Upload { .. } => "committed, verified".into(),
            },
            Some(RequestRecord {
                outcome: Outcome::Err(failure),
                ..
            }) => format!("{} after {}", kind_words(failure.kind), size(self.moved)),
        }
    }
}

/// The new primary's takeover, from its status document (duplex).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Takeover {
    /// `n2`.
    pub node: String,
    /// When the demo saw it done, on the load's timeline.
    pub seen_at: Duration,
    /// How long the node's takeover took, from its decision to the resumed sessions.
    pub took: Duration,
    pub restored: u64,
    /// Of those, accepted by the old primary and never reported: resumed from the log alone.
    pub restored_unreported: u64,
    pub lost: u64,
    pub lost_reasons: BTreeMap<String, u64>,
    /// Client frames held while the sockets were rebuilt, then handed to them.
    pub frames_held: u64,
    /// Replies cut by the crash and finished with a range request (read when the load ended).
    pub replies_resumed: u64,
}

/// The healed node back in the group, from the daemons' status documents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejoin {
    /// The healed node, `n1`.
    pub node: String,
    /// The primary it rejoined, `n2`.
    pub primary: String,
    /// When the demo saw it a backup (duplex: protecting the primary), on the load's timeline.
    pub at: Duration,
    /// Duplex: connections open on the primary that it handed to the new backup …
    pub adopted: Option<u64>,
    /// … and the images of connections the new backup held once the primary reported every
    /// open connection protected (`None`: not every one was, when the load stopped).
    pub images_held: Option<u64>,
}

/// Everything one part of the demo measured: one lab, one mode.
#[derive(Clone, Debug)]
pub struct DemoReport {
    pub lab: String,
    pub mode: Mode,
    pub nodes: u8,
    pub witness: bool,
    pub heartbeat_ms: Option<u32>,
    /// `n1` … when the load began.
    pub first_primary: Option<String>,
    pub crash: Option<DemoEvent>,
    pub heal: Option<DemoEvent>,
    /// `n1` … holding the VIP just before the load stopped.
    pub final_vip_holders: Vec<String>,
    /// Ctrl-C ended the demo early.
    pub interrupted: bool,
    /// The probes and the keep-alive connections.
    pub load: LoadReport,
    /// The download and the upload in flight at the crash.
    pub transfers: Vec<TransferRun>,
    /// Duplex: the connections the primary's backup held images of just before the crash.
    pub images_at_crash: Option<u64>,
    pub takeover: Option<Takeover>,
    pub rejoin: Option<Rejoin>,
    /// Nodes that became primary with no crash of the demo's making (a lease that lapsed on a
    /// loaded machine), and when, on the load's timeline.
    pub unplanned_elections: Vec<(Duration, String)>,
    /// Every commit the client saw acknowledged, checked against the lab's data tier.
    pub commits: Option<ExactlyOnce>,
}

impl DemoReport {
    /// The first probe started at or after the crash that was verified and not served by the
    /// crashed host; `None` without a crash or when no such probe succeeded.
    pub fn failover(&self) -> Option<Failover> {
        let crash = self.crash.as_ref()?;
        self.load
            .probes
            .iter()
            .find_map(|probe| match &probe.outcome {
                Outcome::Ok { server }
                    if probe.start >= crash.at
                        && server.as_deref() != Some(crash.host.as_str()) =>
                {
                    Some(Failover {
                        after: (probe.start + probe.latency).saturating_sub(crash.at),
                        server: server.clone(),
                    })
                }
                _ => None,
            })
    }

    /// The outage of new connections the crash caused: the first one that ends after it.
    pub fn crash_outage(&self) -> Option<Outage> {
        let crash = self.crash.as_ref()?;
        self.load
            .outages()
            .into_iter()
            .find(|outage| outage.to > crash.at)
    }

    /// Keep-alive requests that failed on a connection that was already open: connections the
    /// client had established and lost.
    pub fn broken_connections(&self) -> usize {
        self.load
            .connections
            .iter()
            .flat_map(|c| &c.requests)
            .filter(|r| !r.connected && !r.outcome.is_ok())
            .count()
    }

    /// Keep-alive requests that failed while opening their connection.
    pub fn failed_reconnects(&self) -> usize {
        self.load
            .connections
            .iter()
            .flat_map(|c| &c.requests)
            .filter(|r| r.connected && !r.outcome.is_ok())
            .count()
    }

    /// The keep-alive request that took longest, failed or not: the longest stall a client of
    /// an open connection saw (the crash's included).
    pub fn longest_request(&self) -> Option<&RequestRecord> {
        self.load
            .connections
            .iter()
            .flat_map(|c| &c.requests)
            .max_by_key(|r| r.latency)
    }

    /// Failed probes and keep-alive requests that started after the heal began.
    pub fn failures_after_heal(&self) -> Option<usize> {
        let heal = self.heal.as_ref()?;
        let probes = self
            .load
            .probes
            .iter()
            .filter(|p| p.start >= heal.at && !p.outcome.is_ok())
            .count();
        let requests = self
            .load
            .connections
            .iter()
            .flat_map(|c| &c.requests)
            .filter(|r| r.start >= heal.at && !r.outcome.is_ok())
            .count();
        Some(probes + requests)
    }

    /// Nodes that served new connections after the healed node was back.
    pub fn servers_after_heal(&self) -> Option<BTreeSet<String>> {
        let heal = self.heal.as_ref()?;
        let back = heal.at + heal.took;
        Some(
            self.load
                .probes
                .iter()
                .filter(|p| p.start >= back)
                .filter_map(|p| match &p.outcome {
                    Outcome::Ok { server } => server.clone(),
                    Outcome::Err(_) => None,
                })
                .collect(),
        )
    }

    /// The service answered new connections again at the end of the load.
    pub fn recovered(&self) -> bool {
        self.load.outages().iter().all(|outage| outage.resolved)
    }

    /// Why this part does not show what its mode promises; empty when it does. Every mode:
    /// the service answers at the end. Duplex besides: no request failed on an established
    /// connection (none broke), the transfers were in flight at the crash and completed
    /// intact, the healed node rejoined as a backup and adopted the open connections, every
    /// acknowledged commit is in the data tier exactly once. Unreplicated mode
    /// loses its established connections by design: that is no failure.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if !self.recovered() {
            failures.push(format!(
                "{} mode: the service did not answer new connections when the load stopped",
                self.mode
            ));
        }
        if self.mode != Mode::Duplex || self.interrupted {
            return failures;
        }
        let failed = self.load.request_failures();
        if failed > 0 {
            let after_heal = self
                .heal
                .as_ref()
                .map(|heal| {
                    self.load
                        .connections
                        .iter()
                        .flat_map(|c| &c.requests)
                        .filter(|r| r.start >= heal.at && !r.outcome.is_ok())
                        .count()
                })
                .unwrap_or(0);
            failures.push(format!(
                "duplex mode: {failed} keep-alive requests failed {}, {} of them on \
                 established connections{}",
                kinds(&self.load.request_error_counts()).trim_start(),
                self.broken_connections(),
                if after_heal > 0 {
                    format!(", {after_heal} of them after the heal began")
                } else {
                    String::new()
                }
            ));
        }
        let Some(crash) = &self.crash else {
            failures.push("duplex mode: no crash was made".into());
            return failures;
        };
        for transfer in &self.transfers {
            if !transfer.completed() {
                let detail = match &transfer.record {
                    Some(RequestRecord {
                        outcome: Outcome::Err(failure),
                        ..
                    }) => format!(": {}", failure.detail),
                    _ => String::new(),
                };
                failures.push(format!(
                    "duplex mode: the {} did not complete ({}){detail}",
                    transfer.title(),
                    transfer.outcome_words()
                ));
            } else if !transfer.in_flight_at(crash.at) {
                failures.push(format!(
                    "duplex mode: the {} was not in flight at the crash, so the demo did not \
                     show it carried on",
                    transfer.title()
                ));
            }
        }
        if let Some(heal) = &self.heal {
            if self.rejoin.as_ref().is_none_or(|r| r.images_held.is_none()) {
                failures.push(format!(
                    "duplex mode: {} did not rejoin as a backup and adopt the open connections \
                     within {:?} of the heal",
                    heal.host, SETTLE
                ));
            }
        }
        if let Some(commits) = self.commits.as_ref().filter(|c| !c.holds()) {
            failures.push(format!(
                "duplex mode: acknowledged commits not in the data tier exactly once: {} \
                 missing, {} recorded twice",
                commits.missing.len(),
                commits.duplicated.len()
            ));
        }
        failures
    }

    fn write_summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, node) in &self.unplanned_elections {
            writeln!(
                f,
                "    {node} became primary at {} without a crash (an election the demo did not \
                 cause).",
                seconds(*at)
            )?;
        }
        let Some(crash) = &self.crash else {
            return writeln!(f, "    No crash was made (the demo was interrupted first).");
        };
        let before = self
            .first_primary
            .as_deref()
            .filter(|primary| *primary != crash.host)
            .map(|primary| format!(" ({primary} was primary when the load began)"))
            .unwrap_or_default();
        writeln!(
            f,
            "    {} served until it crashed at {} (--how host){before}.",
            crash.host,
            seconds(crash.at)
        )?;
        if let Some(takeover) = &self.takeover {
            writeln!(
                f,
                "    {} took over and rebuilt {} established connections in {}.",
                takeover.node,
                takeover.restored,
                millis(takeover.took)
            )?;
        }
        match self.failover() {
            Some(failover) => writeln!(
                f,
                "    {} answered the first new connection {} after the crash.",
                failover.server.as_deref().unwrap_or("a node"),
                millis(failover.after)
            )?,
            None => writeln!(f, "    No new connection succeeded after the crash.")?,
        }
        let Some(heal) = &self.heal else {
            return Ok(());
        };
        write!(
            f,
            "    {} was healed at {} (back after {}) and rejoined as a backup",
            heal.host,
            seconds(heal.at),
            millis(heal.took)
        )?;
        let servers = self.servers_after_heal().unwrap_or_default();
        if servers.contains(&heal.host) {
            writeln!(f, "; it took the address back.")
        } else if servers.is_empty() {
            writeln!(f, ".")
        } else {
            let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
            writeln!(
                f,
                ";\n    {} kept the address (no preemption).",
                servers.join(", ")
            )
        }
    }

    fn write_new_connections(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = &self.load;
        writeln!(
            f,
            "  New connections (a new TCP connection and one verified GET every {})",
            millis(load.period)
        )?;
        writeln!(f, "    requests    {:>7}", load.probes.len())?;
        writeln!(
            f,
            "    failed      {:>7}{}",
            load.probe_failures(),
            kinds(&load.probe_error_counts())
        )?;
        let outages = load.outages();
        if outages.is_empty() {
            writeln!(
                f,
                "    outages        none: every new connection was served"
            )?;
        } else {
            writeln!(f, "    outages     {:>7}", outages.len())?;
            for outage in outages.iter().take(MAX_LISTED_OUTAGES) {
                let unresolved = if outage.resolved {
                    ""
                } else {
                    ", still failing when the load stopped"
                };
                writeln!(
                    f,
                    "      {} - {}  failed for {} ({} requests){unresolved}",
                    secs(outage.from),
                    secs(outage.to),
                    millis(outage.duration),
                    outage.failed_probes
                )?;
            }
            if outages.len() > MAX_LISTED_OUTAGES {
                writeln!(f, "      … and {} more", outages.len() - MAX_LISTED_OUTAGES)?;
            }
        }
        writeln!(
            f,
            "    longest client-visible gap: {}",
            millis(load.longest_gap())
        )?;
        if let Some(failover) = self.failover() {
            writeln!(
                f,
                "    failover: {} from the crash to the first good reply",
                millis(failover.after)
            )?;
        }
        Ok(())
    }

    fn write_keep_alive(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = &self.load;
        if load.connections.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "  Keep-alive connections ({}, verified GETs and commits one after another)",
            load.connections.len()
        )?;
        writeln!(f, "    requests    {:>7}", load.requests())?;
        writeln!(
            f,
            "    failed      {:>7}{}",
            load.request_failures(),
            kinds(&load.request_error_counts())
        )?;
        let broken = self.broken_connections();
        let reconnects = self.failed_reconnects();
        let reconnect_note = if reconnects > 0 {
            format!(", {reconnects} reconnection attempts failed")
        } else {
            String::new()
        };
        writeln!(
            f,
            "    broken      {broken:>7} established connections lost{reconnect_note}"
        )?;
        if let Some(longest) = self.longest_request() {
            writeln!(
                f,
                "    longest request: {}{}",
                millis(longest.latency),
                if longest.outcome.is_ok() {
                    ""
                } else {
                    " (it failed)"
                }
            )?;
        }
        if broken > 0 && self.crash.is_some() {
            if self.mode == Mode::Duplex {
                writeln!(
                    f,
                    "    NOT expected in duplex mode: the backup should have carried them on."
                )?;
            } else {
                writeln!(
                    f,
                    "    Expected in unreplicated mode: the address moves to another node, the TCP\n    \
                     connections do not, so every connection open on the crashed node is lost (reset\n    \
                     or timed out) and the client reconnects. keepalived does the same; duplex mode\n    \
                     keeps them."
                )?;
            }
        }
        Ok(())
    }

    fn write_transfers(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.transfers.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "  Transfers in flight at the crash (each on a connection of its own)"
        )?;
        for transfer in &self.transfers {
            writeln!(
                f,
                "    {}: {}",
                transfer.title(),
                transfer_how(&transfer.transfer)
            )?;
            let Some(record) = &transfer.record else {
                writeln!(f, "      did not run to its end")?;
                continue;
            };
            let span = format!(
                "{} - {}",
                secs(record.start),
                secs(record.start + record.latency)
            );
            match &record.outcome {
                Outcome::Ok { server } => {
                    let who = match (server.as_deref(), &self.crash, &self.takeover) {
                        (Some(server), Some(crash), Some(takeover)) if server == crash.host => {
                            format!(", begun by {server}, finished by {}", takeover.node)
                        }
                        (Some(server), _, _) => format!(", answered by {server}"),
                        (None, _, _) => String::new(),
                    };
                    writeln!(
                        f,
                        "      {span}  {} in {} (planned {}){who}",
                        transfer.outcome_words(),
                        seconds(record.latency),
                        seconds(transfer.transfer.planned()),
                    )?;
                }
                Outcome::Err(failure) => writeln!(
                    f,
                    "      {span}  FAILED, {} after {}:\n        {}",
                    kind_words(failure.kind),
                    size(transfer.moved),
                    failure.detail
                )?,
            }
            match (&self.crash, transfer.moved_at_crash) {
                (Some(crash), Some(moved)) if transfer.in_flight_at(crash.at) => writeln!(
                    f,
                    "        in flight at the crash: {} of {} {}",
                    size(moved.min(transfer.transfer.body_bytes())),
                    size(transfer.transfer.body_bytes()),
                    match transfer.transfer {
                        Transfer::Download { .. } => "had arrived",
                        Transfer::Upload { .. } => "had been sent",
                    }
                )?,
                (Some(_), _) => writeln!(f, "        NOT in flight at the crash")?,
                (None, _) => {}
            }
        }
        Ok(())
    }

    fn write_daemons(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mode != Mode::Duplex || self.crash.is_none() {
            return Ok(());
        }
        writeln!(f, "  What the daemons' status documents said")?;
        if let (Some(crash), Some(images)) = (&self.crash, self.images_at_crash) {
            writeln!(
                f,
                "    before the crash  {} was primary; its backup held images of {images} open \
                 connections",
                crash.host
            )?;
        }
        match &self.takeover {
            Some(t) => {
                let lost = if t.lost == 0 {
                    "none lost".to_string()
                } else {
                    let reasons: Vec<String> = t
                        .lost_reasons
                        .iter()
                        .map(|(reason, n)| format!("{n} {reason}"))
                        .collect();
                    format!("{} lost ({})", t.lost, reasons.join(", "))
                };
                writeln!(
                    f,
                    "    the takeover      {} rebuilt {} connections in {} ({} never reported by \
                     the old primary),\n                      {lost}; {} client frames held \
                     during the rebuild",
                    t.node,
                    t.restored,
                    millis(t.took),
                    t.restored_unreported,
                    t.frames_held,
                )?;
                if t.replies_resumed > 0 {
                    writeln!(
                        f,
                        "                      {} cut replies finished by a range request to \
                         its backend",
                        t.replies_resumed
                    )?;
                }
            }
            None => writeln!(f, "    the takeover      not seen")?,
        }
        if self.heal.is_some() {
            match &self.rejoin {
                Some(r) => {
                    let adopted = match (r.adopted, r.images_held) {
                        (Some(adopted), Some(images)) => format!(
                            "\n                      and adopted the {adopted} connections open \
                             on it (it then held images of {images})"
                        ),
                        (Some(adopted), None) => format!(
                            "; it had adopted {adopted} connections, not every one, when the \
                             load stopped"
                        ),
                        _ => String::new(),
                    };
                    writeln!(
                        f,
                        "    after the heal    {} joined {} as its backup at {}{adopted}",
                        r.node,
                        r.primary,
                        seconds(r.at)
                    )?;
                }
                None => writeln!(
                    f,
                    "    after the heal    the healed node was not seen rejoin"
                )?,
            }
        }
        Ok(())
    }

    fn write_timeline(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        enum Line<'a> {
            Served(&'a crate::load::ServedSpan),
            Event(&'static str, &'a DemoEvent),
        }
        let spans = self.load.served_by();
        let mut lines: Vec<(Duration, Line<'_>)> = spans
            .iter()
            .map(|span| (span.from, Line::Served(span)))
            .collect();
        if let Some(crash) = &self.crash {
            lines.push((crash.at, Line::Event("CRASH", crash)));
        }
        if let Some(heal) = &self.heal {
            lines.push((heal.at, Line::Event("HEAL", heal)));
        }
        // Stable: a span and an event at the same instant keep the span first.
        lines.sort_by_key(|(at, _)| *at);
        writeln!(f, "  Who served (new connections)")?;
        if spans.is_empty() {
            writeln!(f, "    nobody: no new connection succeeded")?;
        }
        for (_, line) in lines {
            match line {
                Line::Served(span) => writeln!(
                    f,
                    "    {} - {}  {:<8} {} replies",
                    secs(span.from),
                    secs(span.to),
                    span.server.as_deref().unwrap_or("unknown"),
                    span.probes
                )?,
                Line::Event(what, event) => {
                    writeln!(f, "    {}{:13}{what} {}", secs(event.at), "", event.host)?
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let heartbeat = match self.heartbeat_ms {
            Some(ms) => format!("heartbeat {ms} ms"),
            None => "the daemon's default heartbeat".to_string(),
        };
        let witness = if self.witness { " + witness" } else { "" };
        writeln!(
            f,
            "Report: lab {}, {} nodes{witness}, {} mode, {heartbeat}",
            self.lab, self.nodes, self.mode
        )?;
        if self.interrupted {
            writeln!(f, "  (interrupted with Ctrl-C: the figures cover what ran)")?;
        }
        writeln!(f)?;
        self.write_summary(f)?;
        writeln!(f)?;
        self.write_new_connections(f)?;
        writeln!(f)?;
        self.write_keep_alive(f)?;
        if !self.transfers.is_empty() {
            writeln!(f)?;
            self.write_transfers(f)?;
        }
        if self.mode == Mode::Duplex && self.crash.is_some() {
            writeln!(f)?;
            self.write_daemons(f)?;
        }
        writeln!(f)?;
        self.write_timeline(f)?;
        if let (Some(heal), Some(failures)) = (&self.heal, self.failures_after_heal()) {
            let failures = match failures {
                0 => "none".to_string(),
                n => n.to_string(),
            };
            writeln!(
                f,
                "  Failed requests while {} rejoined: {failures}",
                heal.host
            )?;
        }
        if let Some(commits) = &self.commits {
            if commits.holds() {
                writeln!(
                    f,
                    "  Commits acknowledged: {}, each in the data tier exactly once.",
                    commits.acknowledged
                )?;
            } else {
                writeln!(
                    f,
                    "  Commits acknowledged: {}; NOT exactly once in the data tier: {} missing, \
                     {} recorded twice.",
                    commits.acknowledged,
                    commits.missing.len(),
                    commits.duplicated.len()
                )?;
            }
        }
        match self.final_vip_holders.as_slice() {
            [] => writeln!(f, "  At the end no node held the address.")?,
            [holder] => writeln!(f, "  At the end {holder} held the address.")?,
            several => writeln!(
                f,
                "  At the end SEVERAL nodes held the address: {} (split brain)",
                several.join(", ")
            )?,
        }
        if !self.recovered() {
            writeln!(
                f,
                "  The service did NOT answer new connections when the load stopped."
            )?;
        }
        Ok(())
    }
}

/// What the whole demo showed: one report per part and the side-by-side table.
#[derive(Clone, Debug)]
pub struct DemoSummary {
    pub reports: Vec<DemoReport>,
    /// Wall time from the first lab's construction to the last one's removal.
    pub took: Duration,
    /// Ctrl-C ended the demo early.
    pub interrupted: bool,
}

impl DemoSummary {
    /// Why the demo failed, one sentence each; empty when every part showed what its mode
    /// promises (see [`DemoReport::failures`]).
    pub fn failures(&self) -> Vec<String> {
        self.reports.iter().flat_map(DemoReport::failures).collect()
    }

    fn rows(&self) -> Vec<(String, Vec<String>)> {
        let reports = &self.reports;
        let cells = |cell: &dyn Fn(&DemoReport) -> String| -> Vec<String> {
            reports.iter().map(cell).collect()
        };
        let mut rows = vec![
            (
                "keep-alive requests".to_string(),
                cells(&|r| {
                    format!(
                        "{}, {} failed",
                        thousands(r.load.requests()),
                        r.load.request_failures()
                    )
                }),
            ),
            (
                "established connections broken".to_string(),
                cells(&|r| r.broken_connections().to_string()),
            ),
            (
                "longest request (the stall)".to_string(),
                cells(&|r| match r.longest_request() {
                    Some(longest) if longest.outcome.is_ok() => millis(longest.latency),
                    Some(longest) => format!("{}, failed", millis(longest.latency)),
                    None => "-".into(),
                }),
            ),
            (
                "new connections failed".to_string(),
                cells(&|r| match (r.load.probe_failures(), r.crash_outage()) {
                    (0, _) => "none".into(),
                    (failed, Some(outage)) => {
                        format!("{failed} (outage {})", millis(outage.duration))
                    }
                    (failed, None) => failed.to_string(),
                }),
            ),
            (
                "first new reply after the crash".to_string(),
                cells(&|r| match (r.crash.is_some(), r.failover()) {
                    (false, _) => "no crash".into(),
                    (true, Some(failover)) => millis(failover.after),
                    (true, None) => "none".into(),
                }),
            ),
        ];
        for (index, transfer) in [DOWNLOAD, UPLOAD].iter().enumerate() {
            rows.push((
                format!("{} in flight", transfer_title(transfer)),
                cells(&|r| {
                    r.transfers
                        .get(index)
                        .map(|run| match &r.crash {
                            Some(crash) if !run.in_flight_at(crash.at) => {
                                format!("{}, NOT in flight", run.outcome_words())
                            }
                            _ => run.outcome_words(),
                        })
                        .unwrap_or_else(|| "-".into())
                }),
            ));
        }
        rows.push((
            "connections rebuilt by the backup".to_string(),
            cells(&|r| match (r.mode, &r.takeover) {
                (Mode::Duplex, Some(t)) => format!("{} in {}", t.restored, millis(t.took)),
                (Mode::Duplex, None) => "not seen".into(),
                _ => "none: address only".into(),
            }),
        ));
        rows.push((
            "after the heal".to_string(),
            cells(&|r| {
                let failed = r.failures_after_heal().unwrap_or(0);
                let rejoined = match (&r.rejoin, r.heal.is_some()) {
                    (_, false) => return "no heal".into(),
                    (None, true) => "not seen rejoin".to_string(),
                    (Some(rejoin), true) => match rejoin.adopted {
                        Some(adopted) if rejoin.images_held.is_some() => {
                            format!("backup, adopted {adopted}")
                        }
                        Some(_) => "backup, adopting".into(),
                        None => "backup".into(),
                    },
                };
                if failed > 0 {
                    format!("{rejoined}, {failed} failed")
                } else {
                    rejoined
                }
            }),
        ));
        rows.push((
            "acknowledged commits".to_string(),
            cells(&|r| match &r.commits {
                Some(c) if c.holds() => format!("{}, each once", c.acknowledged),
                Some(c) => format!("{}, NOT each once", c.acknowledged),
                None => "-".into(),
            }),
        ));
        rows
    }

    fn write_verdict(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = self.failures();
        for report in &self.reports {
            if report.crash.is_none() {
                continue;
            }
            match report.mode {
                Mode::Duplex if report.failures().is_empty() => {
                    let rejoin = match &report.rejoin {
                        Some(r) => match r.adopted.filter(|_| r.images_held.is_some()) {
                            Some(adopted) => format!(
                                ";\n  {} came back as {}'s backup and adopted its {adopted} open \
                                 connections",
                                r.node, r.primary
                            ),
                            None => format!(";\n  {} came back as {}'s backup", r.node, r.primary),
                        },
                        None => String::new(),
                    };
                    writeln!(
                        f,
                        "Duplex: not one request failed on an established connection and none \
                         broke;\n  the download and the upload in flight at the crash completed \
                         intact{rejoin}."
                    )?;
                }
                Mode::Duplex => writeln!(f, "Duplex did NOT keep its promise (see below).")?,
                _ => {
                    let lost: Vec<String> = report
                        .transfers
                        .iter()
                        .filter(|t| !t.completed())
                        .map(|t| format!("the {}", transfer_title(&t.transfer)))
                        .collect();
                    let lost = if lost.is_empty() {
                        String::new()
                    } else {
                        format!(" and {}", lost.join(" and "))
                    };
                    writeln!(
                        f,
                        "Unreplicated (what keepalived does): the address moved, the connections \
                         did not:\n  {} established keep-alive connections{lost} were lost.\n  \
                         Expected: duplex is what keeps them.",
                        report.broken_connections()
                    )?;
                }
            }
        }
        let crashed: Vec<&_> = self.reports.iter().filter(|r| r.crash.is_some()).collect();
        let failing: Vec<String> = crashed
            .iter()
            .filter(|r| r.load.probe_failures() > 0)
            .map(|r| r.mode.to_string())
            .collect();
        let answered: Vec<String> = crashed
            .iter()
            .filter(|r| r.mode == Mode::Duplex && r.load.probe_failures() == 0)
            .map(|r| r.mode.to_string())
            .collect();
        if !failing.is_empty() {
            writeln!(
                f,
                "New connections fail in {} mode until a node is primary again (each gives up \
                 after {}).",
                failing.join(" and "),
                millis(PROBE_TIMEOUT)
            )?;
        }
        if !answered.is_empty() {
            writeln!(
                f,
                "New connections opened during the failover wait for it in {} mode: their \
                 logged SYNs are answered at the takeover.",
                answered.join(" and ")
            )?;
        }
        for report in &self.reports {
            if let Some((at, node)) = report.unplanned_elections.first() {
                writeln!(
                    f,
                    "Note: in {} mode {node} became primary at {} without a crash of the demo's \
                     making;\n  the daemons' logs are in {}.",
                    report.mode,
                    seconds(*at),
                    Path::new(KEPT_LOGS).join(&report.lab).display()
                )?;
            }
        }
        if !failures.is_empty() {
            writeln!(f, "\nDEMO FAILED:")?;
            for failure in failures {
                writeln!(f, "  {failure}")?;
            }
            let unplanned = self
                .reports
                .iter()
                .any(|r| !r.failures().is_empty() && !r.unplanned_elections.is_empty());
            if let (true, Some(ms)) = (unplanned, self.reports[0].heartbeat_ms) {
                writeln!(
                    f,
                    "  An election the demo did not cause came first: the primary's lease ({} \
                     ms, 3 heartbeats)\n  lapsed. On a busy machine try a longer heartbeat, \
                     e.g. --heartbeat-ms {}.",
                    3 * ms,
                    2 * ms
                )?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(first) = self.reports.first() else {
            return writeln!(
                f,
                "Nothing ran (interrupted before the first lab was built)."
            );
        };
        let heartbeat = match first.heartbeat_ms {
            Some(ms) => format!("heartbeat {ms} ms"),
            None => "the daemon's default heartbeat".to_string(),
        };
        let witness = if first.witness { " and a witness" } else { "" };
        let title = if self.reports.len() > 1 {
            "Side by side: the same load and the same crash of the primary's host"
        } else {
            "Summary: the load and the crash of the primary's host"
        };
        writeln!(
            f,
            "{title}\n({} nodes{witness}, builtin backend, {heartbeat}; --how host)",
            first.nodes
        )?;
        if self.interrupted {
            writeln!(f, "(interrupted with Ctrl-C: the figures cover what ran)")?;
        }
        let rows = self.rows();
        let headers: Vec<String> = self.reports.iter().map(|r| r.mode.to_string()).collect();
        let label_width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
        let widths: Vec<usize> = headers
            .iter()
            .enumerate()
            .map(|(column, header)| {
                rows.iter()
                    .map(|(_, cells)| cells[column].chars().count())
                    .chain(std::iter::once(header.len()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |label: &str, cells: &[String]| -> String {
            let mut text = format!("  {label:<label_width$}");
            for (cell, width) in cells.iter().zip(&widths) {
                text.push_str(&format!("   {cell:<width$}"));
            }
            text.trim_end().to_string()
        };
        writeln!(f, "{}", line("", &headers))?;
        for (label, cells) in &rows {
            writeln!(f, "{}", line(label, cells))?;
        }
        writeln!(f)?;
        self.write_verdict(f)?;
        writeln!(f, "\nThe demo took {} (wall time).", seconds(self.took))
    }
}

/// Breaks `text` into lines of at most `width` characters, between words.
fn wrap(text: &str, width: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines.join("\n")
}

/// `16 MiB download`, `1 MiB upload`.
fn transfer_title(transfer: &Transfer) -> String {
    let what = match transfer {
        Transfer::Download { .. } => "download",
        Transfer::Upload { .. } => "upload",
    };
    format!("{} {what}", size(transfer.body_bytes()))
}

/// The request and how it goes, for the report.
fn transfer_how(transfer: &Transfer) -> String {
    match transfer {
        Transfer::Download {
            len,
            seed,
            bytes_per_second,
        } => format!(
            "GET /bytes/{len}?seed={seed}, read at {}/s",
            size(*bytes_per_second)
        ),
        Transfer::Upload { upload, .. } => format!(
            "POST /commit, the body in {} pieces {} apart",
            upload.pieces,
            millis(upload.gap)
        ),
    }
}

/// `16 MiB`, `8.1 MiB`, `512 KiB`, `300 bytes`.
fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    if bytes >= MIB {
        if bytes.is_multiple_of(MIB) {
            format!("{} MiB", bytes / MIB)
        } else {
            format!("{:.1} MiB", bytes as f64 / MIB as f64)
        }
    } else if bytes >= KIB {
        format!("{:.0} KiB", bytes as f64 / KIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

/// `2,412`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut text = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// `3.02 s`, right-aligned so that columns line up.
fn secs(at: Duration) -> String {
    format!("{:>6.2} s", at.as_secs_f64())
}

/// `3.02 s`, for sentences.
fn seconds(at: Duration) -> String {
    format!("{:.2} s", at.as_secs_f64())
}

/// `41 ms`, or `4.2 ms` below 10 ms where the fraction still says something.
fn millis(span: Duration) -> String {
    let ms = span.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// `   (4 connect timeout, 1 reset)`, empty without errors.
fn kinds(counts: &std::collections::BTreeMap<ErrorKind, usize>) -> String {
    if counts.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(kind, count)| format!("{count} {}", kind_words(*kind)))
        .collect();
    format!("   ({})", parts.join(", "))
}

/// The error kind's serialized name with spaces: the load module owns the spelling.
fn kind_words(kind: ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|value| value.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_else(|| format!("{kind:?}"))
}

/// `NAME-n1` → `n1`.
fn short_name(lab: &str, namespace: &str) -> String {
    namespace
        .strip_prefix(lab)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or(namespace)
        .to_string()
}

/// Turns SIGINT into `true` in the returned flag, for [`DemoOptions::interrupt`]: the demo then
/// stops its load, reports and removes its lab. A third Ctrl-C quits at once (exit status 130),
/// naming the labs it may leave behind. The handler stays installed for the life of the process.
pub fn interrupt_on_ctrl_c(labs: &[String]) -> Result<Arc<AtomicBool>, DemoError> {
    use tokio::signal::unix::{signal, SignalKind};

    let flag = Arc::new(AtomicBool::new(false));
    let watcher_flag = Arc::clone(&flag);
    let labs = labs.join(" and ");
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    std::thread::Builder::new()
        .name("demo-ctrl-c".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                // Registered before `interrupt_on_ctrl_c` returns: no Ctrl-C is lost in between.
                let mut interrupts = match signal(SignalKind::interrupt()) {
                    Ok(interrupts) => interrupts,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut count = 0u32;
                while interrupts.recv().await.is_some() {
                    count += 1;
                    if count == 1 {
                        watcher_flag.store(true, Ordering::Relaxed);
                        eprintln!(
                            "\nsteadfast-lab demo: interrupted; stopping and cleaning up (lab {labs}) \
                             (Ctrl-C twice more quits without cleaning up)"
                        );
                    } else if count >= 3 {
                        eprintln!(
                            "steadfast-lab demo: quitting; lab {labs} may be left behind: remove it \
                             with `steadfast-lab lab down NAME`"
                        );
                        std::process::exit(130);
                    }
                }
            });
        })
        .map_err(|error| DemoError::Signal { error })?;
    ready_rx
        .recv()
        .map_err(|_| DemoError::Signal {
            error: io::Error::other("the Ctrl-C watcher thread ended before it was ready"),
        })?
        .map_err(|error| DemoError::Signal { error })?;
    Ok(flag)
}

/// Runs each part (its own lab: built, loaded, crashed, healed, reported, removed unless
/// `keep`), then writes the side-by-side summary to `out`. An error stops the demo; the lab of
/// the part that failed is removed too.
pub fn run_demo(opts: DemoOptions, out: &mut dyn Write) -> Result<DemoSummary, DemoError> {
    opts.validate()?;
    let began = Instant::now();
    let heartbeat = match opts.heartbeat_ms {
        Some(ms) => format!("heartbeat every {ms} ms"),
        None => "the daemon's default heartbeat".into(),
    };
    let witness = if opts.nodes == 2 {
        " and a witness"
    } else {
        ""
    };
    let modes: Vec<String> = opts.modes.iter().map(Mode::to_string).collect();
    let (which, each, load) = match modes.as_slice() {
        [one] => (format!("{one} mode"), "", "The load"),
        several => (
            format!("{} mode in turn", several.join(" then ")),
            "each ",
            "The same load each time",
        ),
    };
    let intro = format!(
        "Steadfast demo: {which}, {each}in a lab of {} nodes{witness} in network namespaces \
         with the builtin HTTP backend and a {heartbeat}. {load}: new connections, keep-alive \
         connections, and a {} and a {} in flight when the primary's host crashes; then the \
         crashed node is healed and rejoins.",
        opts.nodes,
        transfer_title(&DOWNLOAD),
        transfer_title(&UPLOAD),
    );
    writeln!(out, "{}", wrap(&intro, TEXT_WIDTH))?;
    let mut reports = Vec::new();
    for (index, &mode) in opts.modes.iter().enumerate() {
        if opts.interrupted() {
            break;
        }
        let lab = part_lab_name(&opts.name, mode);
        writeln!(
            out,
            "\n== Part {} of {}: {mode} mode ({}) ==\n",
            index + 1,
            opts.modes.len(),
            mode_promise(mode)
        )?;
        reports.push(run_part(&opts, mode, &lab, out)?);
    }
    let summary = DemoSummary {
        reports,
        took: began.elapsed(),
        interrupted: opts.interrupted(),
    };
    write!(out, "\n{summary}")?;
    Ok(summary)
}

/// One line on what a mode is for.
fn mode_promise(mode: Mode) -> &'static str {
    match mode {
        Mode::Duplex => "established connections survive the primary's crash",
        Mode::Unreplicated => "only the address fails over, like keepalived",
        Mode::Simplex => "the proxy without a backup",
        Mode::Active => "every member runs the service; updates ordered, reads spread",
    }
}

/// One part in its own lab, which is removed at the end (unless `keep`) however the part ends.
/// A part that fails leaves its daemons' logs in [`KEPT_LOGS`].
fn run_part(
    opts: &DemoOptions,
    mode: Mode,
    lab: &str,
    out: &mut dyn Write,
) -> Result<DemoReport, DemoError> {
    // The explicit teardown below reports to `out`; the guard covers a panic.
    let mut guard = TeardownGuard {
        lab: lab.to_string(),
        armed: !opts.keep,
    };
    let result = run_with_lab(opts, mode, lab, out);
    if let Ok(report) = &result {
        if !report.failures().is_empty() || !report.unplanned_elections.is_empty() {
            keep_logs(lab, out);
        }
    }
    if opts.keep {
        let _ = writeln!(
            out,
            "\nThe lab is still running: `steadfast-lab lab status {lab}`; remove it with \
             `steadfast-lab lab down {lab}`."
        );
        return result;
    }
    guard.armed = false;
    match down(lab) {
        Ok(report) => {
            let _ = write!(out, "\nTeardown: {report}");
            result
        }
        Err(error) => {
            let _ = writeln!(
                out,
                "\nCould not remove lab {lab}: {error}\nRun `steadfast-lab lab down {lab}`."
            );
            result.and(Err(DemoError::Lab {
                lab: lab.to_string(),
                step: "removing the lab".into(),
                error: Box::new(error),
            }))
        }
    }
}

/// Copies the lab's logs (daemons, backends, hooks) out of its state directory, which the
/// teardown removes, so a failed part can be diagnosed.
fn keep_logs(lab: &str, out: &mut dyn Write) {
    let Ok(info) = crate::lab::info(lab) else {
        return;
    };
    let keep = Path::new(KEPT_LOGS).join(lab);
    let Ok(entries) = std::fs::read_dir(&info.state_dir) else {
        return;
    };
    if std::fs::create_dir_all(&keep).is_err() {
        return;
    }
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let _ = std::fs::copy(&path, keep.join(entry.file_name()));
        }
    }
    let _ = writeln!(
        out,
        "\nThe daemons' logs of lab {lab} are kept in {}.",
        keep.display()
    );
}

/// Removes the lab if the demo panics before its explicit teardown.
struct TeardownGuard {
    lab: String,
    armed: bool,
}

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = down(&self.lab) {
                eprintln!(
                    "steadfast-lab demo: removing lab {}: {e}; run `steadfast-lab lab down {}`",
                    self.lab, self.lab
                );
            }
        }
    }
}

fn lab_step(lab: &str, step: impl Into<String>) -> impl FnOnce(LabError) -> DemoError {
    let lab = lab.to_string();
    let step = step.into();
    move |error| DemoError::Lab {
        lab,
        step,
        error: Box::new(error),
    }
}

/// A daemon's status document, or `None` when it does not answer (crashed, restarting):
/// the demo reports what it saw and waits for the rest, bounded.
fn daemon_status(info: &LabInfo, host: &str) -> Option<serde_json::Value> {
    query_control_socket(&info.state_dir.join(format!("{host}.sock"))).ok()
}

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["data_plane"][name].as_u64().unwrap_or(0)
}

fn members(lab: &str, info: &LabInfo) -> Vec<String> {
    info.nodes.iter().map(|ns| short_name(lab, ns)).collect()
}

fn run_with_lab(
    opts: &DemoOptions,
    mode: Mode,
    lab: &str,
    out: &mut dyn Write,
) -> Result<DemoReport, DemoError> {
    // Two voters alone have no majority once one dies: a witness makes the third vote.
    let witness = opts.nodes == 2;
    let mut namespaces = vec![format!("{lab}-client")];
    if opts.nodes <= 3 {
        namespaces.extend((1..=opts.nodes).map(|i| format!("{lab}-n{i}")));
    } else {
        namespaces.push(format!("{lab}-n1 … {lab}-n{}", opts.nodes));
    }
    if witness {
        namespaces.push(format!("{lab}-w"));
    }
    writeln!(
        out,
        "Building lab {lab}, one daemon and one backend per node, namespaces on one bridge:\n  \
         {} …",
        namespaces.join(", ")
    )?;
    let mut up_options = UpOptions::new(lab, opts.nodes, &opts.steadfast_exe);
    up_options.witness = witness;
    up_options.mode = mode;
    up_options.backend = BackendKind::Builtin;
    up_options.heartbeat_ms = opts.heartbeat_ms;
    let info = up(&up_options).map_err(lab_step(lab, "building the lab"))?;
    let first_primary = info.primary.as_deref().map(|ns| short_name(lab, ns));
    writeln!(
        out,
        "The service address {}:{} answers; {} is the primary.",
        info.vip,
        info.port,
        first_primary.as_deref().unwrap_or("no single node")
    )?;
    if mode == Mode::Duplex {
        let primary = first_primary.clone().unwrap_or_default();
        let backup = wait_backup_joined(lab, &info, &primary, opts)?;
        writeln!(
            out,
            "{backup} joined as {primary}'s backup: client frames reach {primary} through \
             {backup}, which logs them,\nand {primary}'s replies are logged on {backup} before \
             they leave."
        )?;
    }
    writeln!(out)?;
    if opts.interrupted() {
        return Err(DemoError::Interrupted { lab: lab.into() });
    }

    let transfers_start = opts.before_crash.saturating_sub(TRANSFER_LEAD);
    writeln!(
        out,
        "Load from {}:\n  a new connection every {} (one verified GET each),\n  \
         {KEEP_ALIVE_CONNECTIONS} keep-alive connections (verified GETs and commits one after \
         another),\n  from {} on, each on a connection of its own:\n    a {}: {},\n    \
         a {}: {}.",
        info.client_ns,
        millis(PROBE_PERIOD),
        seconds(transfers_start),
        transfer_title(&DOWNLOAD),
        transfer_how(&DOWNLOAD),
        transfer_title(&UPLOAD),
        transfer_how(&UPLOAD),
    )?;
    let load = LoadRun::start(
        lab,
        &info.client_ns,
        load_options(&info),
        &[(DOWNLOAD, transfers_start), (UPLOAD, transfers_start)],
    )?;
    writeln!(out)?;
    let mut progress = ProgressPrinter::new(out, &load)?;
    let mut watch = Watch::new(&info, mode, &load.transfers, first_primary.clone());

    let mut crash_event = None;
    let mut heal_event = None;
    let mut images_at_crash = None;
    let mut moved_at_crash = Vec::new();
    progress.wait(
        out,
        &load,
        opts.before_crash,
        opts.before_crash + IN_FLIGHT_WAIT,
        &opts.interrupt,
        &mut watch,
    )?;
    if !opts.interrupted() && !load.is_finished() {
        let primary = current_primary(lab)?;
        if let (Mode::Duplex, Some(holder)) = (mode, primary.as_deref()) {
            wait_all_protected(&info, holder, out, &load, &mut progress, &opts.interrupt)?;
            let backup = members(lab, &info)
                .into_iter()
                .find(|member| member != holder);
            images_at_crash = backup
                .and_then(|b| daemon_status(&info, &b))
                .map(|status| counter(&status, "protected_connections"));
        }
        // Read before the crash: the takeover may be over by the time `crash` returns.
        let before = watch.statuses_now(members(lab, &info));
        moved_at_crash = load.transfers.iter().map(|t| t.moved()).collect();
        let event = crash_primary(lab, primary, &moved_at_crash, out, &load, &mut progress)?;
        watch.crashed(&event.host, before);
        progress.wait(
            out,
            &load,
            opts.crashed_for,
            opts.crashed_for + SETTLE,
            &opts.interrupt,
            &mut watch,
        )?;
        if !opts.interrupted() && !load.is_finished() {
            // Read before the heal: the node may have rejoined by the time `heal` returns.
            watch.healing(&event.host);
            let healed = heal_host(lab, &event.host, out, &load, &mut progress)?;
            progress.wait(
                out,
                &load,
                opts.after_heal,
                opts.after_heal + SETTLE,
                &opts.interrupt,
                &mut watch,
            )?;
            heal_event = Some(healed);
        }
        crash_event = Some(event);
    }
    let final_vip_holders = vip_holders(lab)
        .map_err(lab_step(lab, "reading who holds the address"))?
        .iter()
        .map(|ns| short_name(lab, ns))
        .collect();
    let stopped_at = load.now();
    let interrupted = opts.interrupted();
    let mut takeover = watch.takeover.take();
    let rejoin = watch.rejoin.take();
    let unplanned_elections = std::mem::take(&mut watch.unplanned);
    let takeover_baseline = std::mem::take(&mut watch.takeover_baseline);
    let (load_report, transfer_records) = load.finish(interrupted)?;
    writeln!(out, "{}\n", event_line(stopped_at, "load stopped"))?;

    if let Some(takeover) = takeover.as_mut() {
        // Cut replies are finished after the takeover itself, as their clients read on.
        if let Some(status) = daemon_status(&info, &takeover.node) {
            takeover.replies_resumed = counter(&status, "replies_resumed")
                .saturating_sub(counter(&takeover_baseline, "replies_resumed"));
        }
    }
    let transfers: Vec<TransferRun> = transfer_records
        .into_iter()
        .enumerate()
        .map(|(index, (transfer, moved, record))| TransferRun {
            transfer,
            moved_at_crash: moved_at_crash.get(index).copied(),
            moved,
            record,
        })
        .collect();
    let mut acknowledged = load_report.committed_ids();
    acknowledged.extend(
        transfers
            .iter()
            .filter_map(|t| t.record.as_ref().and_then(|r| r.commit_id.clone())),
    );
    let commits = check_exactly_once(&info.state_dir.join("commits.log"), &acknowledged).ok();
    let report = DemoReport {
        lab: lab.into(),
        mode,
        nodes: opts.nodes,
        witness,
        heartbeat_ms: opts.heartbeat_ms,
        first_primary,
        crash: crash_event,
        heal: heal_event,
        final_vip_holders,
        interrupted,
        load: load_report,
        transfers,
        images_at_crash,
        takeover,
        rejoin,
        unplanned_elections,
        commits,
    };
    write!(out, "{report}")?;
    Ok(report)
}

/// Waits until `primary` reports a backup protecting it; returns the backup's name. The load
/// starts only then, so that every connection it opens is protected from its first byte.
fn wait_backup_joined(
    lab: &str,
    info: &LabInfo,
    primary: &str,
    opts: &DemoOptions,
) -> Result<String, DemoError> {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(status) = daemon_status(info, primary) {
            if counter(&status, "backups_joined") > 0 {
                let backup = members(lab, info)
                    .into_iter()
                    .find(|member| member != primary)
                    .unwrap_or_default();
                return Ok(backup);
            }
        }
        if Instant::now() >= deadline || opts.interrupted() {
            return Err(DemoError::NotSettled {
                lab: lab.into(),
                what: format!("no backup joined the primary {primary}"),
                waited: SETTLE,
            });
        }
        std::thread::sleep(POLL);
    }
}

fn load_options(info: &LabInfo) -> LoadOptions {
    LoadOptions {
        target: (info.vip, info.port).into(),
        duration: LOAD_LIMIT,
        probes: Some(ProbeOptions {
            period: PROBE_PERIOD,
            timeout: PROBE_TIMEOUT,
            request: ProbeRequest::GeneratedBytes { len: PROBE_BYTES },
        }),
        keep_alive: Some(KeepAliveOptions {
            connections: KEEP_ALIVE_CONNECTIONS,
            sizes: vec![1024, 10 * 1024, 50 * 1024],
            include_uuid: true,
            commit_sizes: vec![2048],
            pause: KEEP_ALIVE_PAUSE,
            ..KeepAliveOptions::default()
        }),
    }
}

/// Waits (briefly) until the duplex `primary` reports every open connection protected by its
/// backup: a backup that joins adopts the open connections within tens of milliseconds,
/// so right after an election the demo did not cause some may not be yet, and a crash then
/// would lose them by design. If they are still not after the wait, the crash goes ahead,
/// and the line printed says what it will cost.
fn wait_all_protected(
    info: &LabInfo,
    primary: &str,
    out: &mut dyn Write,
    load: &LoadRun,
    progress: &mut ProgressPrinter,
    interrupt: &AtomicBool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + PROTECTION_WAIT;
    loop {
        let holds = daemon_status(info, primary).map(|s| s["holds_connections"] == true);
        if holds != Some(true) {
            return Ok(());
        }
        if Instant::now() >= deadline || interrupt.load(Ordering::Relaxed) {
            writeln!(
                out,
                "{}",
                event_line(
                    load.now(),
                    &format!(
                        "    {primary} holds connections its backup has not adopted yet \
                         (carried over by an election, each is adopted between two requests): \
                         the crash will lose them"
                    )
                )
            )?;
            return Ok(());
        }
        std::thread::sleep(POLL);
        progress.tick(out, load)?;
    }
}

/// The member holding the VIP, `None` when none (or several) do.
fn current_primary(lab: &str) -> Result<Option<String>, DemoError> {
    Ok(
        match vip_holders(lab).map_err(lab_step(lab, "finding the primary"))?[..] {
            [ref holder] => Some(short_name(lab, holder)),
            _ => None,
        },
    )
}

/// Crashes `primary` (`None`: whichever member holds the address); `moved` is what each
/// transfer had moved just before, for the line that says they are in flight.
fn crash_primary(
    lab: &str,
    primary: Option<String>,
    moved: &[u64],
    out: &mut dyn Write,
    load: &LoadRun,
    progress: &mut ProgressPrinter,
) -> Result<DemoEvent, DemoError> {
    // Named first so the CRASH line comes before the progress lines of the crash; `primary`
    // itself is the fallback that explains why there is none (or several).
    let target = primary.unwrap_or_else(|| "primary".to_string());
    writeln!(
        out,
        "{}",
        event_line(
            load.now(),
            &format!(">>> CRASH {target} (--how host: every process killed, its link cut)")
        )
    )?;
    let in_flight: Vec<String> = load
        .transfers
        .iter()
        .zip(moved)
        .filter(|(t, _)| !t.finished())
        .map(|(t, &moved)| {
            let moved = size(moved.min(t.transfer.body_bytes()));
            match t.transfer {
                Transfer::Download { .. } => {
                    format!("the {} ({moved} arrived)", transfer_title(&t.transfer))
                }
                Transfer::Upload { .. } => {
                    format!("the {} ({moved} sent)", transfer_title(&t.transfer))
                }
            }
        })
        .collect();
    if !in_flight.is_empty() {
        writeln!(
            out,
            "{}",
            event_line(
                load.now(),
                &format!("    in flight: {}", in_flight.join(", "))
            )
        )?;
    }
    let began = monotonic_now();
    let report = progress
        .while_running(out, load, || crash(lab, &target, CrashKind::Host))?
        .map_err(lab_step(lab, format!("crashing {target} (--how host)")))?;
    let at_monotonic = if report.at_monotonic.is_zero() {
        began
    } else {
        report.at_monotonic
    };
    Ok(DemoEvent {
        host: report.host,
        at: at_monotonic.saturating_sub(load.started),
        took: monotonic_now().saturating_sub(at_monotonic),
    })
}

fn heal_host(
    lab: &str,
    host: &str,
    out: &mut dyn Write,
    load: &LoadRun,
    progress: &mut ProgressPrinter,
) -> Result<DemoEvent, DemoError> {
    writeln!(
        out,
        "{}",
        event_line(
            load.now(),
            &format!(">>> HEAL {host}: restart it; it rejoins as a backup")
        )
    )?;
    let began = monotonic_now();
    let report = progress
        .while_running(out, load, || heal(lab, host))?
        .map_err(lab_step(lab, format!("healing {host}")))?;
    let took = monotonic_now().saturating_sub(began);
    let note = match &report {
        HealReport::Healed { restarted, .. } if !restarted.is_empty() => {
            format!("restarted its {}", restarted.join(" and "))
        }
        HealReport::Healed { .. } => "nothing to restart".to_string(),
        HealReport::NotCrashed { .. } => "it was not crashed".to_string(),
    };
    writeln!(
        out,
        "{}",
        event_line(
            load.now(),
            &format!("    {host} is back after {} ({note})", millis(took))
        )
    )?;
    Ok(DemoEvent {
        host: host.to_string(),
        at: began.saturating_sub(load.started),
        took,
    })
}

/// What the demo waits to see between two of its actions, printed when it happens: the
/// transfers ending, the takeover, the healed node rejoining. Everything it knows of the
/// daemons comes from their status documents.
struct Watch<'a> {
    info: &'a LabInfo,
    mode: Mode,
    transfers: &'a [Arc<TransferSlot>],
    told_finished: Vec<bool>,
    stage: Stage,
    /// Load time at which the daemons' status is read next.
    next_status: Duration,
    takeover: Option<Takeover>,
    /// The status document of the node that took over, from just before the crash.
    takeover_baseline: serde_json::Value,
    rejoin: Option<Rejoin>,
    /// Nodes seen becoming primary with no crash of the demo's making, and when.
    unplanned: Vec<(Duration, String)>,
}

enum Stage {
    /// Before the crash: the transfers get going under `primary`.
    Loading { primary: Option<String> },
    Crashed {
        crashed: String,
        /// The other members, one of which takes over, with their status before the crash.
        others: Vec<(String, serde_json::Value)>,
        /// The node seen primary since.
        primary: Option<String>,
    },
    Healed {
        healed: String,
        primary: Option<String>,
        /// The primary's `backups_joined` and `adopted` when the heal began.
        joined_before: u64,
        adopted_before: u64,
        joined: bool,
        /// The address seen on another node than the primary since the heal.
        moved_to: Option<String>,
    },
}

impl<'a> Watch<'a> {
    fn new(
        info: &'a LabInfo,
        mode: Mode,
        transfers: &'a [Arc<TransferSlot>],
        primary: Option<String>,
    ) -> Self {
        Watch {
            info,
            mode,
            transfers,
            told_finished: vec![false; transfers.len()],
            stage: Stage::Loading { primary },
            next_status: Duration::ZERO,
            takeover: None,
            takeover_baseline: serde_json::Value::Null,
            rejoin: None,
            unplanned: Vec::new(),
        }
    }

    /// Each member's status document now (null when it does not answer).
    fn statuses_now(&self, members: Vec<String>) -> Vec<(String, serde_json::Value)> {
        members
            .into_iter()
            .map(|member| {
                let status = daemon_status(self.info, &member).unwrap_or_default();
                (member, status)
            })
            .collect()
    }

    /// `before`: every member's status document just before the crash.
    fn crashed(&mut self, crashed: &str, before: Vec<(String, serde_json::Value)>) {
        self.stage = Stage::Crashed {
            crashed: crashed.to_string(),
            others: before
                .into_iter()
                .filter(|(member, _)| member != crashed)
                .collect(),
            primary: None,
        };
    }

    fn healing(&mut self, healed: &str) {
        let primary = match &self.stage {
            Stage::Crashed { primary, .. } => primary.clone(),
            _ => None,
        };
        let status = primary.as_deref().and_then(|p| daemon_status(self.info, p));
        self.stage = Stage::Healed {
            healed: healed.to_string(),
            joined_before: status.as_ref().map_or(0, |s| counter(s, "backups_joined")),
            adopted_before: status.as_ref().map_or(0, |s| counter(s, "adopted")),
            primary,
            joined: false,
            moved_to: None,
        };
    }

    /// Whether the current phase may end: the transfers are in flight (before the crash), or
    /// a node took over (after it; duplex: and the transfers it carried on ended, so that the
    /// heal does not blur their story), or the healed node rejoined (after the heal; duplex:
    /// and adopted every open connection).
    fn settled(&self) -> bool {
        match &self.stage {
            Stage::Loading { .. } => self
                .transfers
                .iter()
                .all(|t| t.finished() || t.moved() >= t.transfer.body_bytes() / IN_FLIGHT_SHARE),
            Stage::Crashed { primary, .. } => {
                primary.is_some()
                    && (self.mode != Mode::Duplex
                        || (self.takeover.is_some() && self.transfers.iter().all(|t| t.finished())))
            }
            Stage::Healed { .. } => self
                .rejoin
                .as_ref()
                .is_some_and(|r| self.mode != Mode::Duplex || r.images_held.is_some()),
        }
    }

    /// Prints what happened since the last call.
    fn poll(&mut self, out: &mut dyn Write, now: Duration) -> Result<(), DemoError> {
        for (index, transfer) in self.transfers.iter().enumerate() {
            if self.told_finished[index] {
                continue;
            }
            let Some(line) = transfer.finished_line() else {
                continue;
            };
            self.told_finished[index] = true;
            writeln!(out, "{}", event_line(now, &format!("    {line}")))?;
        }
        if now < self.next_status {
            return Ok(());
        }
        self.next_status = now + STATUS_EVERY;
        match &mut self.stage {
            Stage::Loading { primary } => {
                // A lapse of the primary's lease on a loaded machine elects another node: the
                // demo says so rather than let the report look like its own crash came early.
                let Some(old) = primary.clone() else {
                    return Ok(());
                };
                if daemon_status(self.info, &old).is_some_and(|s| s["role"] == "primary") {
                    return Ok(());
                }
                let new = self.info.nodes.iter().find_map(|ns| {
                    let node = short_name(&self.info.lab, ns);
                    let status = daemon_status(self.info, &node)?;
                    (node != old && status["role"] == "primary").then_some(node)
                });
                if let Some(new) = new {
                    writeln!(
                        out,
                        "{}",
                        event_line(
                            now,
                            &format!(
                                "    {new} became primary without a crash, replacing {old} \
                                 (an election the demo did not cause)"
                            )
                        )
                    )?;
                    self.unplanned.push((now, new.clone()));
                    *primary = Some(new);
                }
            }
            Stage::Crashed {
                crashed,
                others,
                primary,
            } => {
                if primary.is_none() {
                    *primary = others.iter().find_map(|(node, _)| {
                        let status = daemon_status(self.info, node)?;
                        (status["role"] == "primary" && status["vip_held"] == true)
                            .then(|| node.clone())
                    });
                    if let (Some(node), false) = (primary.as_deref(), self.mode == Mode::Duplex) {
                        writeln!(
                            out,
                            "{}",
                            event_line(
                                now,
                                &format!(
                                    "    {node} is primary and holds the address; the \
                                     connections open on {crashed} are gone with it"
                                )
                            )
                        )?;
                    }
                }
                if let (Some(node), Mode::Duplex, None) =
                    (primary.as_deref(), self.mode, &self.takeover)
                {
                    let before = others
                        .iter()
                        .find(|(other, _)| other == node)
                        .map(|(_, before)| before.clone())
                        .unwrap_or_default();
                    if let Some(takeover) = read_takeover(self.info, node, &before, now) {
                        self.takeover_baseline = before;
                        writeln!(
                            out,
                            "{}",
                            event_line(
                                now,
                                &format!(
                                    "    {node} took over: {} established connections rebuilt \
                                     in {} ({} lost)",
                                    takeover.restored,
                                    millis(takeover.took),
                                    takeover.lost
                                )
                            )
                        )?;
                        self.takeover = Some(takeover);
                    }
                }
            }
            Stage::Healed {
                healed,
                primary,
                joined_before,
                adopted_before,
                joined,
                moved_to,
            } => {
                let Some(primary) = primary.as_deref() else {
                    return Ok(());
                };
                let healed_status = daemon_status(self.info, healed);
                if moved_to.is_none()
                    && healed_status
                        .as_ref()
                        .is_some_and(|s| s["role"] == "primary")
                {
                    *moved_to = Some(healed.clone());
                    self.unplanned.push((now, healed.clone()));
                    writeln!(
                        out,
                        "{}",
                        event_line(
                            now,
                            &format!(
                                "    {healed} became primary: it took the address from \
                                 {primary}"
                            )
                        )
                    )?;
                }
                if self.mode != Mode::Duplex {
                    if self.rejoin.is_none() && healed_status.is_some_and(|s| s["role"] == "backup")
                    {
                        writeln!(
                            out,
                            "{}",
                            event_line(
                                now,
                                &format!(
                                    "    {healed} is a backup again; {primary} keeps the address"
                                )
                            )
                        )?;
                        self.rejoin = Some(Rejoin {
                            node: healed.clone(),
                            primary: primary.to_string(),
                            at: now,
                            adopted: None,
                            images_held: None,
                        });
                    }
                    return Ok(());
                }
                let Some(status) = daemon_status(self.info, primary) else {
                    return Ok(());
                };
                let adopted = counter(&status, "adopted").saturating_sub(*adopted_before);
                if !*joined && counter(&status, "backups_joined") > *joined_before {
                    *joined = true;
                    writeln!(
                        out,
                        "{}",
                        event_line(
                            now,
                            &format!(
                                "    {healed} joined {primary} as its backup; it adopts the \
                                 open connections, wherever each stands"
                            )
                        )
                    )?;
                    self.rejoin = Some(Rejoin {
                        node: healed.clone(),
                        primary: primary.to_string(),
                        at: now,
                        adopted: Some(adopted),
                        images_held: None,
                    });
                }
                let Some(rejoin) = self.rejoin.as_mut().filter(|r| r.images_held.is_none()) else {
                    return Ok(());
                };
                rejoin.adopted = Some(adopted);
                if status["holds_connections"] == false {
                    // The backup's count: the primary's gauge counts only the connections
                    // protected from their first byte, not the adopted ones.
                    let images = healed_status
                        .as_ref()
                        .map_or(0, |s| counter(s, "protected_connections"));
                    rejoin.images_held = Some(images);
                    writeln!(
                        out,
                        "{}",
                        event_line(
                            now,
                            &format!(
                                "    {healed} adopted the {adopted} connections open on \
                                 {primary}: none is unprotected now"
                            )
                        )
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The takeover `node` reports once it is done, against its status `before` the crash: its
/// counters add up every takeover of its life, and the duration (written last) is the latest's.
fn read_takeover(
    info: &LabInfo,
    node: &str,
    before: &serde_json::Value,
    now: Duration,
) -> Option<Takeover> {
    takeover_between(node, before, &daemon_status(info, node)?, now)
}

/// The takeover between two status documents of `node`; `None` while `status` shows none
/// finished since `before`.
fn takeover_between(
    node: &str,
    before: &serde_json::Value,
    status: &serde_json::Value,
    now: Duration,
) -> Option<Takeover> {
    let took_us = counter(status, "last_takeover_us");
    if counter(status, "takeovers") <= counter(before, "takeovers")
        || took_us == counter(before, "last_takeover_us")
    {
        return None;
    }
    let grown = |name: &str| counter(status, name).saturating_sub(counter(before, name));
    let reasons = |doc: &serde_json::Value| -> BTreeMap<String, u64> {
        doc["data_plane"]["lost_reasons"]
            .as_object()
            .map(|reasons| {
                reasons
                    .iter()
                    .filter_map(|(reason, n)| Some((reason.clone(), n.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let earlier = reasons(before);
    let lost_reasons = reasons(status)
        .into_iter()
        .map(|(reason, n)| {
            let new = n.saturating_sub(earlier.get(&reason).copied().unwrap_or(0));
            (reason, new)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    Some(Takeover {
        node: node.to_string(),
        seen_at: now,
        took: Duration::from_micros(took_us),
        restored: grown("connections_restored"),
        restored_unreported: grown("connections_restored_unreported"),
        lost: grown("connections_lost"),
        lost_reasons,
        frames_held: grown("frames_held_at_takeover"),
        replies_resumed: grown("replies_resumed"),
    })
}

/// One transfer of the load: what it is, when it starts, its bytes as they go and, once it
/// ended, its record. Shared between the load's thread and the demo's.
struct TransferSlot {
    transfer: Transfer,
    /// Load time at which it begins.
    starts_after: Duration,
    progress: LoadProgress,
    record: Mutex<Option<RequestRecord>>,
}

impl TransferSlot {
    /// Bytes moved its way so far: the reply for a download, the request for an upload.
    fn moved(&self) -> u64 {
        let snapshot = self.progress.snapshot();
        match self.transfer {
            Transfer::Download { .. } => snapshot.bytes_received,
            Transfer::Upload { .. } => snapshot.bytes_sent,
        }
    }

    fn finished(&self) -> bool {
        let snapshot = self.progress.snapshot();
        snapshot.requests_ok + snapshot.requests_failed > 0
    }

    fn record(&self) -> Option<RequestRecord> {
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// `the 16 MiB download completed: ...`, once it has ended.
    fn finished_line(&self) -> Option<String> {
        let record = self.record()?;
        let title = transfer_title(&self.transfer);
        Some(match &record.outcome {
            Outcome::Ok { .. } => match self.transfer {
                Transfer::Download { .. } => format!(
                    "the {title} completed in {}: every byte verified",
                    seconds(record.latency)
                ),
                Transfer::Upload { .. } => format!(
                    "the {title} completed in {}: the commit acknowledged its body's digest",
                    seconds(record.latency)
                ),
            },
            Outcome::Err(failure) => format!(
                "the {title} FAILED after {}: {}",
                size(self.moved()),
                kind_words(failure.kind)
            ),
        })
    }
}

/// What a finished load hands back: the probes and keep-alive connections, and each transfer
/// with the bytes it moved and its record (`None` if it never ended).
type LoadResults = (LoadReport, Vec<(Transfer, u64, Option<RequestRecord>)>);

/// The verifying load and the transfers, running on their own thread inside the client
/// namespace. Dropping it stops the load, abandons the transfers and waits for the thread.
struct LoadRun {
    lab: String,
    /// CLOCK_MONOTONIC when the load began: 0 on the load's timeline.
    started: Duration,
    progress: Arc<LoadProgress>,
    transfers: Vec<Arc<TransferSlot>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    abandon: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<Result<LoadReport, DemoError>>>,
}

impl LoadRun {
    fn start(
        lab: &str,
        namespace: &str,
        options: LoadOptions,
        transfers: &[(Transfer, Duration)],
    ) -> Result<Self, DemoError> {
        let progress = Arc::new(LoadProgress::default());
        let slots: Vec<Arc<TransferSlot>> = transfers
            .iter()
            .map(|&(transfer, starts_after)| {
                Arc::new(TransferSlot {
                    transfer,
                    starts_after,
                    progress: LoadProgress::default(),
                    record: Mutex::new(None),
                })
            })
            .collect();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (abandon_tx, abandon_rx) = tokio::sync::watch::channel(false);
        let (started_tx, started_rx) = mpsc::channel::<Duration>();
        let thread_progress = Arc::clone(&progress);
        let thread_slots = slots.clone();
        let (thread_lab, thread_namespace) = (lab.to_string(), namespace.to_string());
        let thread = std::thread::Builder::new()
            .name("demo-load".into())
            .spawn(move || {
                let (lab, namespace) = (thread_lab, thread_namespace);
                let in_namespace = run_in_namespace(&namespace, || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|error| DemoError::LoadStart {
                            lab: lab.clone(),
                            namespace: namespace.clone(),
                            error,
                        })?;
                    let _ = started_tx.send(monotonic_now());
                    let stop = async move {
                        // A dropped sender stops the load as well.
                        let _ = stop_rx.await;
                    };
                    let target = options.target;
                    runtime
                        .block_on(async move {
                            let origin = tokio::time::Instant::now();
                            let transfers: Vec<_> = thread_slots
                                .into_iter()
                                .map(|slot| {
                                    tokio::spawn(run_slot(slot, target, origin, abandon_rx.clone()))
                                })
                                .collect();
                            let report = run_load(options, stop, thread_progress).await;
                            // Each ends by its own deadline, or at once when abandoned.
                            for transfer in transfers {
                                if let Ok(Err(error)) = transfer.await {
                                    return Err(error);
                                }
                            }
                            report
                        })
                        .map_err(|error| DemoError::Load {
                            lab: lab.clone(),
                            namespace: namespace.clone(),
                            error,
                        })
                });
                in_namespace.map_err(lab_step(
                    &lab,
                    format!("running the load in namespace {namespace}"),
                ))?
            })
            .map_err(|error| DemoError::LoadStart {
                lab: lab.into(),
                namespace: namespace.into(),
                error,
            })?;
        let mut run = LoadRun {
            lab: lab.into(),
            started: Duration::ZERO,
            progress,
            transfers: slots,
            stop: Some(stop_tx),
            abandon: abandon_tx,
            thread: Some(thread),
        };
        match started_rx.recv_timeout(LOAD_START_TIMEOUT) {
            Ok(started) => {
                run.started = started;
                Ok(run)
            }
            // The thread ended (its error says why) or never got going.
            Err(_) => Err(match run.finish(true) {
                Err(e) => e,
                Ok(_) => DemoError::LoadNotStarted {
                    lab: lab.into(),
                    namespace: namespace.into(),
                    waited: LOAD_START_TIMEOUT,
                },
            }),
        }
    }

    /// Time on the load's timeline.
    fn now(&self) -> Duration {
        monotonic_now().saturating_sub(self.started)
    }

    fn snapshot(&self) -> ProgressSnapshot {
        self.progress.snapshot()
    }

    /// The load ended on its own: an error, or its time limit.
    fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the load and waits for it: the transfers run to their end unless `abandon`.
    fn finish(mut self, abandon: bool) -> Result<LoadResults, DemoError> {
        let report = self
            .stop_and_join(abandon)
            .unwrap_or(Err(DemoError::LoadPanicked {
                lab: self.lab.clone(),
            }))?;
        let transfers = self
            .transfers
            .iter()
            .map(|slot| (slot.transfer, slot.moved(), slot.record()))
            .collect();
        Ok((report, transfers))
    }

    /// `None` when the thread panicked or was already joined.
    fn stop_and_join(&mut self, abandon: bool) -> Option<Result<LoadReport, DemoError>> {
        if abandon {
            let _ = self.abandon.send(true);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take()?.join().ok()
    }
}

impl Drop for LoadRun {
    fn drop(&mut self) {
        let _ = self.stop_and_join(true);
    }
}

/// Runs one transfer when its time comes, unless the load is abandoned first.
async fn run_slot(
    slot: Arc<TransferSlot>,
    target: std::net::SocketAddr,
    origin: tokio::time::Instant,
    mut abandon: tokio::sync::watch::Receiver<bool>,
) -> Result<(), LoadError> {
    let run = async {
        tokio::time::sleep_until(origin + slot.starts_after).await;
        run_transfer(
            target,
            slot.transfer,
            TRANSFER_TIMEOUT,
            origin,
            &slot.progress,
        )
        .await
    };
    tokio::select! {
        record = run => {
            *slot.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(record?);
            Ok(())
        }
        _ = abandon.wait_for(|abandoned| *abandoned) => Ok(()),
    }
}

/// One progress line per second of load time, with what failed during that second.
struct ProgressPrinter {
    next: Duration,
    last: ProgressSnapshot,
}

impl ProgressPrinter {
    /// Writes the table's header.
    fn new(out: &mut dyn Write, load: &LoadRun) -> io::Result<Self> {
        writeln!(out, "{}", progress_header())?;
        Ok(ProgressPrinter {
            next: PROGRESS_EVERY,
            last: load.snapshot(),
        })
    }

    /// Prints a line when one is due (one line, however late: a stalled terminal gets no burst).
    fn tick(&mut self, out: &mut dyn Write, load: &LoadRun) -> io::Result<()> {
        let now = load.now();
        if now < self.next {
            return Ok(());
        }
        while self.next <= now {
            self.next += PROGRESS_EVERY;
        }
        let snapshot = load.snapshot();
        let new_failed = snapshot.probes_failed - self.last.probes_failed;
        let kept_failed = snapshot.requests_failed - self.last.requests_failed;
        let note = if new_failed + kept_failed > 0 {
            format!("   <- {new_failed} + {kept_failed} failed in this second")
        } else {
            String::new()
        };
        writeln!(out, "{}{note}", progress_line(now, &snapshot))?;
        self.last = snapshot;
        Ok(())
    }

    /// Prints progress and what `watch` sees for at least `span` of load time and until the
    /// watch is settled, at most `limit`; sooner when interrupted or the load ends.
    fn wait(
        &mut self,
        out: &mut dyn Write,
        load: &LoadRun,
        span: Duration,
        limit: Duration,
        interrupt: &AtomicBool,
        watch: &mut Watch<'_>,
    ) -> Result<(), DemoError> {
        let from = load.now();
        loop {
            let waited = load.now().saturating_sub(from);
            if (waited >= span && watch.settled())
                || waited >= limit
                || interrupt.load(Ordering::Relaxed)
                || load.is_finished()
            {
                return Ok(());
            }
            std::thread::sleep(POLL);
            self.tick(out, load)?;
            watch.poll(out, load.now())?;
        }
    }

    /// Runs `work` on a helper thread and keeps printing progress until it returns.
    fn while_running<T: Send>(
        &mut self,
        out: &mut dyn Write,
        load: &LoadRun,
        work: impl FnOnce() -> T + Send,
    ) -> io::Result<T> {
        std::thread::scope(|scope| {
            let handle = scope.spawn(work);
            while !handle.is_finished() {
                std::thread::sleep(POLL);
                self.tick(out, load)?;
            }
            Ok(match handle.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        })
    }
}

/// The two header lines above the progress table.
fn progress_header() -> String {
    format!(
        "{:>8}  {:^16}  {:^16}  serving\n{:>8}  {:>8} {:>7}  {:>8} {:>7}",
        "time", "new connections", "keep-alive", "", "ok", "failed", "ok", "failed"
    )
}

fn progress_line(now: Duration, s: &ProgressSnapshot) -> String {
    format!(
        "{:>8}  {:>8} {:>7}  {:>8} {:>7}  {}",
        seconds(now),
        s.probes_ok,
        s.probes_failed,
        s.requests_ok,
        s.requests_failed,
        s.last_server.as_deref().unwrap_or("-")
    )
}

/// A crash, a heal or the end of the load, in the progress table's time column.
fn event_line(at: Duration, what: &str) -> String {
    format!("{:>8}  {what}", seconds(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{ConnectionReport, Failure, Probe, RequestKind};

    const PERIOD: Duration = Duration::from_millis(10);

    fn ok(server: &str) -> Outcome {
        Outcome::Ok {
            server: Some(server.into()),
        }
    }

    fn failed(kind: ErrorKind) -> Outcome {
        Outcome::Err(Failure {
            kind,
            detail: "synthetic".into(),
        })
    }

    /// 1 s of probes: n1 serves until 300 ms, the crash is at 302 ms, probes from 310 to 340 ms
    /// fail, n2 serves from 350 ms on; n1 is healed at 600 ms and takes 100 ms to come back.
    fn synthetic(heal_takes_back: bool) -> DemoReport {
        let probes = (0..100u64)
            .map(|index| {
                let start = PERIOD * index as u32;
                let ms = start.as_millis();
                let outcome = match ms {
                    0..=300 => ok("n1"),
                    310..=340 => failed(ErrorKind::ConnectTimeout),
                    _ if heal_takes_back && ms >= 800 => ok("n1"),
                    _ => ok("n2"),
                };
                Probe {
                    index,
                    start,
                    latency: Duration::from_millis(2),
                    connect: None,
                    outcome,
                }
            })
            .collect();
        let request = |ms: u64, connected: bool, outcome: Outcome| RequestRecord {
            start: Duration::from_millis(ms),
            latency: Duration::from_millis(3),
            kind: RequestKind::Uuid,
            connected,
            outcome,
            commit_id: None,
        };
        let connections = (0..2)
            .map(|index| ConnectionReport {
                index,
                connects: 3,
                requests: vec![
                    request(0, true, ok("n1")),
                    request(100, false, ok("n1")),
                    request(300, false, failed(ErrorKind::Timeout)),
                    request(320, true, failed(ErrorKind::ConnectTimeout)),
                    request(400, true, ok("n2")),
                    request(500, false, ok("n2")),
                ],
            })
            .collect();
        DemoReport {
            lab: "demo-42".into(),
            mode: Mode::Unreplicated,
            nodes: 3,
            witness: false,
            heartbeat_ms: Some(10),
            first_primary: Some("n1".into()),
            crash: Some(DemoEvent {
                host: "n1".into(),
                at: Duration::from_millis(302),
                took: Duration::from_millis(20),
            }),
            heal: Some(DemoEvent {
                host: "n1".into(),
                at: Duration::from_millis(600),
                took: Duration::from_millis(100),
            }),
            final_vip_holders: vec!["n2".into()],
            interrupted: false,
            load: LoadReport {
                target: "10.77.0.100:80".parse().unwrap(),
                period: PERIOD,
                elapsed: Duration::from_secs(1),
                probes,
                connections,
            },
            transfers: Vec::new(),
            images_at_crash: None,
            takeover: None,
            rejoin: None,
            unplanned_elections: Vec::new(),
            commits: None,
        }
    }

    #[test]
    fn failover_is_measured_from_the_crash_to_the_end_of_the_first_good_reply() {
        let report = synthetic(false);
        let failover = report.failover().expect("n2 answered");
        // The probe started at 350 ms and took 2 ms; the crash was at 302 ms.
        assert_eq!(failover.after, Duration::from_millis(50));
        assert_eq!(failover.server.as_deref(), Some("n2"));
        let outage = report.crash_outage().expect("probes failed");
        assert_eq!(outage.duration, Duration::from_millis(40));
        assert_eq!(outage.failed_probes, 4);
    }

    #[test]
    fn broken_connections_count_established_ones_only() {
        let report = synthetic(false);
        assert_eq!(report.broken_connections(), 2);
        assert_eq!(report.failed_reconnects(), 2);
        assert_eq!(report.failures_after_heal(), Some(0));
        assert!(report.recovered());
    }

    #[test]
    fn report_reads_as_what_happened() {
        let text = synthetic(false).to_string();
        for expected in [
            "Report: lab demo-42, 3 nodes, unreplicated mode, heartbeat 10 ms",
            "n1 served until it crashed at 0.30 s (--how host).",
            "n2 answered the first new connection 50 ms after the crash.",
            "n2 kept the address (no preemption).",
            "failed for 40 ms (4 requests)",
            "4 connect timeout",
            "longest client-visible gap: 40 ms",
            "failover: 50 ms from the crash to the first good reply",
            "broken            2 established connections lost, 2 reconnection attempts failed",
            "Expected in unreplicated mode",
            "Failed requests while n1 rejoined: none",
            "At the end n2 held the address.",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("did NOT answer"), "{text}");
        // The timeline: n1, the crash, n2, the heal, in order.
        let order: Vec<usize> = [
            "n1       31 replies",
            "CRASH n1",
            "n2       65 replies",
            "HEAL n1",
        ]
        .iter()
        .map(|line| {
            text.find(line)
                .unwrap_or_else(|| panic!("missing {line:?} in:\n{text}"))
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn report_says_when_the_healed_node_took_the_address_back() {
        let text = synthetic(true).to_string();
        assert!(text.contains("it took the address back"), "{text}");
    }

    #[test]
    fn report_flags_a_service_that_never_came_back() {
        let mut report = synthetic(false);
        for probe in report.load.probes.iter_mut().skip(31) {
            probe.outcome = failed(ErrorKind::Unreachable);
        }
        report.heal = None;
        report.final_vip_holders.clear();
        assert!(!report.recovered());
        assert_eq!(report.failover(), None);
        let text = report.to_string();
        for expected in [
            "No new connection succeeded after the crash.",
            "still failing when the load stopped",
            "At the end no node held the address.",
            "did NOT answer new connections",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn interrupted_before_the_crash_reports_no_failover() {
        let mut report = synthetic(false);
        report.crash = None;
        report.heal = None;
        report.interrupted = true;
        assert_eq!(report.failover(), None);
        let text = report.to_string();
        assert!(text.contains("interrupted with Ctrl-C"), "{text}");
        assert!(text.contains("No crash was made"), "{text}");
        assert!(!text.contains("Expected in unreplicated mode"), "{text}");
    }

    #[test]
    fn progress_lines_line_up_under_the_header() {
        let line = progress_line(
            Duration::from_millis(4010),
            &ProgressSnapshot {
                probes_ok: 380,
                probes_failed: 5,
                requests_ok: 701,
                requests_failed: 3,
                bytes_received: 0,
                bytes_sent: 0,
                last_server: Some("n2".into()),
            },
        );
        let header = progress_header();
        let mut header = header.lines();
        assert_eq!(
            header.next(),
            Some("    time  new connections      keep-alive     serving")
        );
        assert_eq!(
            header.next(),
            Some("                ok  failed        ok  failed")
        );
        assert_eq!(line, "  4.01 s       380       5       701       3  n2");
        assert_eq!(
            event_line(Duration::from_millis(3010), ">>> CRASH n1"),
            "  3.01 s  >>> CRASH n1"
        );
    }

    #[test]
    fn short_names_strip_the_lab_prefix_only() {
        assert_eq!(short_name("demo-7", "demo-7-n2"), "n2");
        assert_eq!(short_name("demo-7", "other-n2"), "other-n2");
        assert_eq!(kind_words(ErrorKind::ConnectRefused), "connect refused");
    }

    /// The synthetic run in duplex mode as it should go: no keep-alive request fails, both
    /// transfers span the crash (302 ms) and complete, n1 rejoins and adopts.
    fn duplex_synthetic() -> DemoReport {
        let mut report = synthetic(false);
        report.lab = "demo-42-dx".into();
        report.mode = Mode::Duplex;
        report.nodes = 2;
        report.witness = true;
        for request in report
            .load
            .connections
            .iter_mut()
            .flat_map(|c| c.requests.iter_mut())
        {
            request.outcome = ok(if request.start.as_millis() < 300 {
                "n1"
            } else {
                "n2"
            });
            request.connected = request.start.is_zero();
        }
        let transfer = |transfer: Transfer, server: &str, commit: Option<&str>| TransferRun {
            transfer,
            moved_at_crash: Some(transfer.body_bytes() / 2),
            moved: transfer.body_bytes() + 200,
            record: Some(RequestRecord {
                start: Duration::from_millis(200),
                latency: Duration::from_millis(250),
                kind: RequestKind::Uuid,
                connected: true,
                outcome: ok(server),
                commit_id: commit.map(str::to_string),
            }),
        };
        report.transfers = vec![
            transfer(DOWNLOAD, "n1", None),
            transfer(UPLOAD, "n2", Some("gen-1")),
        ];
        report.images_at_crash = Some(5);
        report.takeover = Some(Takeover {
            node: "n2".into(),
            seen_at: Duration::from_millis(340),
            took: Duration::from_micros(5700),
            restored: 5,
            ..Takeover::default()
        });
        report.rejoin = Some(Rejoin {
            node: "n1".into(),
            primary: "n2".into(),
            at: Duration::from_millis(720),
            adopted: Some(2),
            images_held: Some(2),
        });
        report.commits = Some(ExactlyOnce {
            acknowledged: 7,
            ..ExactlyOnce::default()
        });
        report
    }

    #[test]
    fn a_clean_duplex_run_has_no_failure_and_reads_so() {
        let report = duplex_synthetic();
        assert_eq!(report.failures(), Vec::<String>::new());
        assert_eq!(report.broken_connections(), 0);
        assert!(report
            .transfers
            .iter()
            .all(|t| t.in_flight_at(Duration::from_millis(302))));
        let text = report.to_string();
        for expected in [
            "Report: lab demo-42-dx, 2 nodes + witness, duplex mode, heartbeat 10 ms",
            "n2 took over and rebuilt 5 established connections in 5.7 ms.",
            "16 MiB download: GET /bytes/16777216?seed=1, read at 8 MiB/s",
            "complete, verified in 0.25 s (planned 2.00 s), begun by n1, finished by n2",
            "committed, verified in 0.25 s (planned 2.00 s), answered by n2",
            "in flight at the crash: 8 MiB of 16 MiB had arrived",
            "its backup held images of 5 open connections",
            "n1 joined n2 as its backup at 0.72 s",
            "adopted the 2 connections open on it",
            "Commits acknowledged: 7, each in the data tier exactly once.",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("Expected in unreplicated mode"), "{text}");
    }

    #[test]
    fn duplex_fails_on_a_broken_connection_a_transfer_or_a_missing_rejoin() {
        let mut broken = duplex_synthetic();
        broken.load.connections[0].requests[2].outcome = failed(ErrorKind::Reset);
        let failures = broken.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0]
                .contains("1 keep-alive requests failed (1 reset), 1 of them on established"),
            "{failures:?}"
        );
        assert!(broken.to_string().contains("NOT expected in duplex mode"));

        let mut cut = duplex_synthetic();
        cut.transfers[0].record.as_mut().unwrap().outcome = failed(ErrorKind::Timeout);
        assert!(
            cut.failures()[0].contains("the 16 MiB download did not complete (timeout after"),
            "{:?}",
            cut.failures()
        );

        let mut early = duplex_synthetic();
        early.transfers[1].record.as_mut().unwrap().latency = Duration::from_millis(50);
        assert!(
            early.failures()[0].contains("the 1 MiB upload was not in flight at the crash"),
            "{:?}",
            early.failures()
        );

        let mut alone = duplex_synthetic();
        alone.rejoin.as_mut().unwrap().images_held = None;
        assert!(
            alone.failures()[0].contains("n1 did not rejoin as a backup"),
            "{:?}",
            alone.failures()
        );
    }

    #[test]
    fn unreplicated_losses_are_no_failure_but_a_dead_service_is() {
        let report = synthetic(false);
        assert_eq!(report.broken_connections(), 2);
        assert_eq!(report.failures(), Vec::<String>::new());
        let mut dead = synthetic(false);
        for probe in dead.load.probes.iter_mut().skip(31) {
            probe.outcome = failed(ErrorKind::Unreachable);
        }
        assert_eq!(dead.failures().len(), 1);
        assert!(dead.failures()[0].contains("did not answer new connections"));
    }

    #[test]
    fn the_summary_puts_both_modes_side_by_side() {
        let mut unreplicated = synthetic(false);
        unreplicated.transfers = duplex_synthetic().transfers;
        for transfer in &mut unreplicated.transfers {
            transfer.record.as_mut().unwrap().outcome = failed(ErrorKind::Reset);
            transfer.moved = 3 * MIB / 2;
        }
        let summary = DemoSummary {
            reports: vec![duplex_synthetic(), unreplicated],
            took: Duration::from_millis(21_400),
            interrupted: false,
        };
        assert_eq!(summary.failures(), Vec::<String>::new());
        let text = summary.to_string();
        let row = |label: &str| -> &str {
            text.lines()
                .find(|line| line.trim_start().starts_with(label))
                .unwrap_or_else(|| panic!("no row {label:?} in:\n{text}"))
        };
        let header = text
            .lines()
            .find(|line| line.contains("duplex") && line.contains("unreplicated"))
            .unwrap_or_else(|| panic!("no column headers in:\n{text}"));
        let second_column = header.find("unreplicated").unwrap();
        for (label, duplex, unreplicated) in [
            ("keep-alive requests", "12, 0 failed", "12, 4 failed"),
            ("established connections broken", "0", "2"),
            (
                "16 MiB download in flight",
                "complete, verified",
                "reset after 1.5 MiB",
            ),
            (
                "1 MiB upload in flight",
                "committed, verified",
                "reset after 1.5 MiB",
            ),
            (
                "connections rebuilt by the backup",
                "5 in 5.7 ms",
                "none: address only",
            ),
            ("after the heal", "backup, adopted 2", "not seen rejoin"),
            ("acknowledged commits", "7, each once", "-"),
        ] {
            let line = row(label);
            assert!(line.contains(duplex), "{label}: {line:?}");
            assert_eq!(
                line.find(unreplicated),
                Some(second_column),
                "{label}: the unreplicated cell under its header in:\n{text}"
            );
        }
        for expected in [
            "Side by side: the same load and the same crash of the primary's host",
            "Duplex: not one request failed on an established connection",
            "2 established keep-alive connections and the 16 MiB download and the 1 MiB upload \
             were lost",
            "The demo took 21.40 s (wall time).",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("DEMO FAILED"), "{text}");

        let mut failing = summary.clone();
        failing.reports[0].load.connections[1].requests[3].outcome = failed(ErrorKind::Timeout);
        let text = failing.to_string();
        assert!(
            text.contains("DEMO FAILED:\n  duplex mode: 1 keep-alive requests failed"),
            "{text}"
        );
    }

    #[test]
    fn an_election_the_demo_did_not_cause_is_told_not_hidden() {
        let mut report = duplex_synthetic();
        report.unplanned_elections = vec![(Duration::from_millis(150), "n2".into())];
        // Duplex kept every connection through it: a note, no failure.
        assert_eq!(report.failures(), Vec::<String>::new());
        let text = report.to_string();
        assert!(
            text.contains("n2 became primary at 0.15 s without a crash"),
            "{text}"
        );
        let summary = DemoSummary {
            reports: vec![report],
            took: Duration::from_secs(7),
            interrupted: false,
        };
        let text = summary.to_string();
        assert!(
            text.contains(
                "Note: in duplex mode n2 became primary at 0.15 s without a crash of the demo's \
                 making;\n  the daemons' logs are in /tmp/steadfast-demo-logs/demo-42-dx."
            ),
            "{text}"
        );
    }

    #[test]
    fn a_takeover_is_what_the_counters_grew_by_since_the_crash() {
        let plane = |takeovers: u64, took_us: u64, restored: u64, lost: serde_json::Value| {
            let total: u64 = lost
                .as_object()
                .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
            serde_json::json!({ "data_plane": {
                "takeovers": takeovers,
                "last_takeover_us": took_us,
                "connections_restored": restored,
                "connections_lost": total,
                "lost_reasons": lost,
            }})
        };
        let now = Duration::from_secs(2);
        // An earlier takeover of the same node's life.
        let before = plane(1, 900, 4, serde_json::json!({ "not-adopted": 1 }));
        let after = plane(
            2,
            5700,
            9,
            serde_json::json!({ "not-adopted": 1, "handshake-incomplete": 2 }),
        );
        let takeover = takeover_between("n2", &before, &after, now).expect("a takeover");
        assert_eq!(takeover.restored, 5);
        assert_eq!(takeover.lost, 2);
        assert_eq!(
            takeover.lost_reasons,
            BTreeMap::from([("handshake-incomplete".to_string(), 2)])
        );
        assert_eq!(takeover.took, Duration::from_micros(5700));
        // Counted, but its duration (written last) not yet: the other counters may lag.
        let midway = plane(2, 900, 6, serde_json::json!({ "not-adopted": 1 }));
        assert_eq!(takeover_between("n2", &before, &midway, now), None);
        // A node that never took over, against an unreachable one's null document.
        let first = plane(1, 4100, 3, serde_json::json!({}));
        let takeover = takeover_between("n1", &serde_json::Value::Null, &first, now).unwrap();
        assert_eq!((takeover.restored, takeover.lost), (3, 0));
        assert_eq!(
            takeover_between(
                "n1",
                &serde_json::Value::Null,
                &serde_json::Value::Null,
                now
            ),
            None
        );
    }

    #[test]
    fn a_failure_after_an_election_the_demo_did_not_cause_says_what_to_try() {
        let mut report = duplex_synthetic();
        report.unplanned_elections = vec![(Duration::from_millis(180), "n2".into())];
        report.transfers[0].record.as_mut().unwrap().outcome = failed(ErrorKind::Reset);
        let summary = DemoSummary {
            reports: vec![report],
            took: Duration::from_secs(7),
            interrupted: false,
        };
        let text = summary.to_string();
        assert!(text.contains("DEMO FAILED:"), "{text}");
        assert!(
            text.contains(
                "An election the demo did not cause came first: the primary's lease (30 ms, 3 \
                 heartbeats)\n  lapsed. On a busy machine try a longer heartbeat, e.g. \
                 --heartbeat-ms 20."
            ),
            "{text}"
        );
        // No hint when nothing failed.
        let mut clean = summary.clone();
        clean.reports[0].transfers = duplex_synthetic().transfers;
        assert!(!clean.to_string().contains("try a longer heartbeat"));
    }

    #[test]
    fn options_refuse_what_the_demo_cannot_show() {
        let mut opts = DemoOptions::new("/nonexistent/steadfast");
        opts.name = "demo-7".into();
        assert_eq!(opts.lab_names(), ["demo-7-dx", "demo-7-un"]);
        assert!(opts.validate().is_ok());
        opts.nodes = 3;
        assert!(matches!(
            opts.validate(),
            Err(DemoError::DuplexNeedsTwoNodes { nodes: 3 })
        ));
        opts.modes = vec![Mode::Unreplicated];
        assert!(opts.validate().is_ok());
        opts.modes = vec![Mode::Simplex];
        assert!(matches!(
            opts.validate(),
            Err(DemoError::UnsupportedMode {
                mode: Mode::Simplex
            })
        ));
        opts.modes.clear();
        assert!(matches!(opts.validate(), Err(DemoError::NoMode)));
    }

    #[test]
    fn sizes_and_counts_read_naturally() {
        assert_eq!(size(16 * MIB), "16 MiB");
        assert_eq!(size(9 * MIB + MIB / 10), "9.1 MiB");
        assert_eq!(size(512 * 1024), "512 KiB");
        assert_eq!(size(300), "300 bytes");
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(2412), "2,412");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(wrap("a bb ccc dddd", 6), "a bb\nccc\ndddd");
        assert_eq!(wrap("  one   word ", 80), "one word");
        assert_eq!(wrap("longerthanwidth x", 4), "longerthanwidth\nx");
        assert_eq!(transfer_title(&DOWNLOAD), "16 MiB download");
        assert_eq!(
            transfer_how(&UPLOAD),
            "POST /commit, the body in 20 pieces 100 ms apart"
        );
    }

    #[test]
    fn demo_refuses_a_single_node() {
        let mut opts = DemoOptions::new("/nonexistent/steadfast");
        opts.nodes = 1;
        let err = run_demo(opts, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, DemoError::TooFewNodes { nodes: 1 }), "{err}");
    }
}
