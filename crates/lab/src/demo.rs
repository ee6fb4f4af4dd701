//! `steadfast demo`: the first thing a new user runs. It builds a small lab (builtin backend,
//! unreplicated mode), runs the verifying load from the client namespace, crashes the primary
//! (`--how host`), heals it, and prints a short human report: requests, failures, the
//! client-visible gap, what happened to established connections, and who served when.
//!
//! The lab is removed at the end however the demo ends (error, panic, Ctrl-C through
//! [`interrupt_on_ctrl_c`]) unless [`DemoOptions::keep`] is set.
//!
//! Every time in the progress lines and the report is on the load's timeline (0 = the load's
//! first probe), so the crash, the heal and the outages line up. The crash's instant is the lab's
//! CLOCK_MONOTONIC reading just before its first action, the load's start a reading of the same
//! clock, which is why the failover time is measured from the moment the host died, not from
//! when `crash` returned.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::LabError;
use crate::faults::{crash, heal, HealReport};
use crate::lab::{down, up, vip_holders, LabInfo};
use crate::load::{
    run_load, ErrorKind, KeepAliveOptions, LoadError, LoadOptions, LoadProgress, LoadReport,
    Outage, Outcome, ProbeOptions, ProbeRequest, ProgressSnapshot,
};
use crate::options::{BackendKind, CrashKind, Mode, UpOptions};
use crate::system::{monotonic_now, run_in_namespace};

/// How long each phase (before the crash, while crashed, after the heal) lasts by default.
pub const DEFAULT_PHASE: Duration = Duration::from_secs(3);
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
/// The report lists at most this many outages, then a count of the rest.
const MAX_LISTED_OUTAGES: usize = 8;

/// What `run_demo` builds and how long each phase lasts.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The lab's name (default `demo-<pid>`, unique per process).
    pub name: String,
    /// Member nodes: 3 by default; 2 adds a witness (two voters alone lose quorum when one
    /// dies, so nothing would fail over).
    pub nodes: u8,
    /// `None` keeps the daemon's default heartbeat.
    pub heartbeat_ms: Option<u32>,
    /// Leave the lab running at the end.
    pub keep: bool,
    /// The `steadfast` executable that runs the daemons and the builtin backend.
    pub steadfast_exe: PathBuf,
    pub before_crash: Duration,
    pub crashed_for: Duration,
    pub after_heal: Duration,
    /// Set (by [`interrupt_on_ctrl_c`] or a test) to end the demo early: the load stops, the
    /// report covers what ran, the lab is removed.
    pub interrupt: Arc<AtomicBool>,
}

impl DemoOptions {
    /// 3 nodes, the daemon's default heartbeat, 3 s phases, lab `demo-<pid>`, removed at the end.
    pub fn new(steadfast_exe: impl Into<PathBuf>) -> Self {
        DemoOptions {
            name: default_lab_name(),
            nodes: 3,
            heartbeat_ms: None,
            keep: false,
            steadfast_exe: steadfast_exe.into(),
            before_crash: DEFAULT_PHASE,
            crashed_for: DEFAULT_PHASE,
            after_heal: DEFAULT_PHASE,
            interrupt: Arc::new(AtomicBool::new(false)),
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupt.load(Ordering::Relaxed)
    }
}

/// `demo-<pid>`: two demos at once on one machine never share a lab.
pub fn default_lab_name() -> String {
    format!("demo-{}", std::process::id())
}

/// What stopped the demo. The causes are part of each message and deliberately not exposed as
/// `source()`: the command line prints the whole chain (`{:#}`), which would repeat them.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo needs at least 2 nodes to show a failover (got {nodes})")]
    TooFewNodes { nodes: u8 },

    #[error("demo lab {lab}: {step}: {error}")]
    Lab {
        lab: String,
        step: String,
        /// Boxed: a lab error is large and the demo's results travel by value.
        error: Box<LabError>,
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

/// Everything the demo measured.
#[derive(Clone, Debug)]
pub struct DemoReport {
    pub lab: String,
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
    pub load: LoadReport,
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

    fn write_summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
            "  Keep-alive connections ({}, verified GETs one after another)",
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
        if broken > 0 && self.crash.is_some() {
            writeln!(
                f,
                "    Expected in unreplicated mode: the address moves to another node, the TCP\n    \
                 connections do not, so every connection open on the crashed node is lost (reset\n    \
                 or timed out) and the client reconnects. keepalived does the same. Duplex mode,\n    \
                 under construction, is what keeps established connections."
            )?;
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
            "Report: lab {}, {} nodes{witness}, unreplicated mode, {heartbeat}",
            self.lab, self.nodes
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
/// naming the lab left behind. The handler stays installed for the life of the process.
pub fn interrupt_on_ctrl_c(lab: &str) -> Result<Arc<AtomicBool>, DemoError> {
    use tokio::signal::unix::{signal, SignalKind};

    let flag = Arc::new(AtomicBool::new(false));
    let watcher_flag = Arc::clone(&flag);
    let lab = lab.to_string();
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
                            "\nsteadfast demo: interrupted; stopping and cleaning up lab {lab} \
                             (Ctrl-C twice more quits without cleaning up)"
                        );
                    } else if count >= 3 {
                        eprintln!(
                            "steadfast demo: quitting; lab {lab} is left behind: remove it with \
                             `steadfast lab down {lab}`"
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

/// Builds the lab, runs the load through a crash and a heal of the primary, writes progress and
/// the report to `out`, and removes the lab (unless `keep`). On error the lab is removed too.
pub fn run_demo(opts: DemoOptions, out: &mut dyn Write) -> Result<DemoReport, DemoError> {
    if opts.nodes < 2 {
        return Err(DemoError::TooFewNodes { nodes: opts.nodes });
    }
    // The explicit teardown below reports to `out`; the guard covers a panic.
    let mut guard = TeardownGuard {
        lab: opts.name.clone(),
        armed: !opts.keep,
    };
    let result = run_with_lab(&opts, out);
    let lab = &opts.name;
    if opts.keep {
        let _ = writeln!(
            out,
            "\nThe lab is still running: `steadfast lab status {lab}`; remove it with \
             `steadfast lab down {lab}`."
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
                "\nCould not remove lab {lab}: {error}\nRun `steadfast lab down {lab}`."
            );
            result.and(Err(DemoError::Lab {
                lab: lab.clone(),
                step: "removing the lab".into(),
                error: Box::new(error),
            }))
        }
    }
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
                    "steadfast demo: removing lab {}: {e}; run `steadfast lab down {}`",
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

fn run_with_lab(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoReport, DemoError> {
    let lab = opts.name.as_str();
    // Two voters alone have no majority once one dies: a witness makes the third vote.
    let witness = opts.nodes == 2;
    let heartbeat = match opts.heartbeat_ms {
        Some(ms) => format!("heartbeat every {ms} ms"),
        None => "the daemon's default heartbeat".into(),
    };
    writeln!(
        out,
        "Steadfast demo: {} nodes{} in network namespaces, the builtin HTTP backend,\n\
         unreplicated mode (the service address fails over), {heartbeat}.\n",
        opts.nodes,
        if witness { " and a witness" } else { "" }
    )?;
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
    up_options.mode = Mode::Unreplicated;
    up_options.backend = BackendKind::Builtin;
    up_options.heartbeat_ms = opts.heartbeat_ms;
    let info = up(&up_options).map_err(lab_step(lab, "building the lab"))?;
    let first_primary = info.primary.as_deref().map(|ns| short_name(lab, ns));
    writeln!(
        out,
        "The service address {}:{} answers; {} is the primary.\n",
        info.vip,
        info.port,
        first_primary.as_deref().unwrap_or("no single node")
    )?;
    if opts.interrupted() {
        return Err(DemoError::Interrupted { lab: lab.into() });
    }

    writeln!(
        out,
        "Load from {}: a new connection every {} (one verified GET each) and\n\
         {KEEP_ALIVE_CONNECTIONS} keep-alive connections (verified GETs one after another).",
        info.client_ns,
        millis(PROBE_PERIOD)
    )?;
    let load = LoadRun::start(lab, &info.client_ns, load_options(&info))?;
    writeln!(out)?;
    let mut progress = ProgressPrinter::new(out, &load)?;

    let mut crash_event = None;
    let mut heal_event = None;
    progress.wait(out, &load, opts.before_crash, &opts.interrupt)?;
    if !opts.interrupted() && !load.is_finished() {
        let event = crash_primary(lab, out, &load, &mut progress)?;
        progress.wait(out, &load, opts.crashed_for, &opts.interrupt)?;
        if !opts.interrupted() && !load.is_finished() {
            heal_event = Some(heal_host(lab, &event.host, out, &load, &mut progress)?);
            progress.wait(out, &load, opts.after_heal, &opts.interrupt)?;
        }
        crash_event = Some(event);
    }
    let final_vip_holders = vip_holders(lab)
        .map_err(lab_step(lab, "reading who holds the address"))?
        .iter()
        .map(|ns| short_name(lab, ns))
        .collect();
    let stopped_at = load.now();
    let load_report = load.finish()?;
    writeln!(out, "{}\n", event_line(stopped_at, "load stopped"))?;

    let report = DemoReport {
        lab: lab.into(),
        nodes: opts.nodes,
        witness,
        heartbeat_ms: opts.heartbeat_ms,
        first_primary,
        crash: crash_event,
        heal: heal_event,
        final_vip_holders,
        interrupted: opts.interrupted(),
        load: load_report,
    };
    write!(out, "{report}")?;
    Ok(report)
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
            pause: KEEP_ALIVE_PAUSE,
            ..KeepAliveOptions::default()
        }),
    }
}

fn crash_primary(
    lab: &str,
    out: &mut dyn Write,
    load: &LoadRun,
    progress: &mut ProgressPrinter,
) -> Result<DemoEvent, DemoError> {
    // Name the primary first so the CRASH line comes before the progress lines of the crash;
    // `primary` itself is the fallback that explains why there is none (or several).
    let target = match vip_holders(lab).map_err(lab_step(lab, "finding the primary"))?[..] {
        [ref holder] => short_name(lab, holder),
        _ => "primary".to_string(),
    };
    writeln!(
        out,
        "{}",
        event_line(
            load.now(),
            &format!(">>> CRASH {target} (--how host: every process killed, its link cut)")
        )
    )?;
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

/// The verifying load, running on its own thread inside the client namespace. Dropping it stops
/// the load and waits for the thread.
struct LoadRun {
    lab: String,
    /// CLOCK_MONOTONIC when the load began: 0 on the load's timeline.
    started: Duration,
    progress: Arc<LoadProgress>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<LoadReport, DemoError>>>,
}

impl LoadRun {
    fn start(lab: &str, namespace: &str, options: LoadOptions) -> Result<Self, DemoError> {
        let progress = Arc::new(LoadProgress::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<Duration>();
        let thread_progress = Arc::clone(&progress);
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
                    runtime
                        .block_on(run_load(options, stop, thread_progress))
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
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match started_rx.recv_timeout(LOAD_START_TIMEOUT) {
            Ok(started) => {
                run.started = started;
                Ok(run)
            }
            // The thread ended (its error says why) or never got going.
            Err(_) => Err(match run.finish() {
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

    fn finish(mut self) -> Result<LoadReport, DemoError> {
        self.stop_and_join().unwrap_or(Err(DemoError::LoadPanicked {
            lab: self.lab.clone(),
        }))
    }

    /// `None` when the thread panicked or was already joined.
    fn stop_and_join(&mut self) -> Option<Result<LoadReport, DemoError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take()?.join().ok()
    }
}

impl Drop for LoadRun {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
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

    /// Prints progress for `span` of load time, or until interrupted or the load ends.
    fn wait(
        &mut self,
        out: &mut dyn Write,
        load: &LoadRun,
        span: Duration,
        interrupt: &AtomicBool,
    ) -> io::Result<()> {
        let until = load.now() + span;
        while load.now() < until && !interrupt.load(Ordering::Relaxed) && !load.is_finished() {
            std::thread::sleep(POLL.min(until.saturating_sub(load.now())));
            self.tick(out, load)?;
        }
        Ok(())
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
    use crate::load::{ConnectionReport, Failure, Probe, RequestKind, RequestRecord};

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

    #[test]
    fn demo_refuses_a_single_node() {
        let mut opts = DemoOptions::new("/nonexistent/steadfast");
        opts.nodes = 1;
        let err = run_demo(opts, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, DemoError::TooFewNodes { nodes: 1 }), "{err}");
    }
}
