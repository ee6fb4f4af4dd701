//! The verifying load client used by the lab, the demo and the integration tests.
//!
//! It runs in the client namespace: the caller enters the namespace on a thread and builds the
//! tokio runtime there, then calls [`run_load`] with the service address.
//!
//! Two kinds of load run side by side:
//! - **probes**, the failover measurement: every `period` a *new* connection is opened (without
//!   waiting for the previous probe) for one `GET` with `Connection: close`; the reply body is
//!   verified against [`crate::generator`]; each probe has its own `timeout`.
//! - **keep-alive connections**: `connections` persistent connections, each sending sequential
//!   verified requests (`/bytes` of various sizes and seeds, `/uuid`, `POST /commit` with
//!   generated bodies, a slow upload sent in pieces, two pipelined `GET`s); a failed request
//!   closes the connection, is recorded, and the worker reconnects. Commit replies are checked
//!   against the body sent, and their request ids are kept for the exactly-once check of the
//!   data tier ([`LoadReport::committed_ids`]).
//!
//! Beside them, [`run_transfer`] runs one long request on a connection of its own — a download
//! read at a set pace, or a slow upload — so that a failure finds it in flight; [`LoadProgress`]
//! counts the bytes each way as they go.
//!
//! Every request records its start (since the load began), latency and outcome, and the
//! [`LoadReport`] derives outages, the longest client-visible gap and the serving timeline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Serialize, Serializer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backend::{verify_uuid_body, ChunkedDecoder};
use crate::generator::BodyVerifier;

/// Longest reply head the client accepts.
const MAX_REPLY_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a reply.
const MAX_REPLY_HEADERS: usize = 64;
/// A `/uuid` reply is about 100 bytes; anything much longer is wrong.
const MAX_UUID_BODY_BYTES: usize = 4096;
const READ_PIECE: usize = 64 * 1024;

/// What to run and for how long.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub target: SocketAddr,
    /// Upper bound of the run; [`run_load`]'s `stop` can end it earlier. In-flight requests are
    /// then given their own timeout to finish.
    pub duration: Duration,
    /// `None`: no probes.
    pub probes: Option<ProbeOptions>,
    /// `None`: no keep-alive connections.
    pub keep_alive: Option<KeepAliveOptions>,
}

impl LoadOptions {
    /// Probes with the default options, no keep-alive connections.
    pub fn probes_only(target: SocketAddr, duration: Duration) -> Self {
        Self {
            target,
            duration,
            probes: Some(ProbeOptions::default()),
            keep_alive: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// A new probe starts every period (default 10 ms).
    pub period: Duration,
    /// From connect to the last body byte (default 500 ms).
    pub timeout: Duration,
    pub request: ProbeRequest,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            period: Duration::from_millis(10),
            timeout: Duration::from_millis(500),
            request: ProbeRequest::GeneratedBytes { len: 1024 },
        }
    }
}

/// What a probe asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeRequest {
    /// `GET /bytes/{len}?seed={probe index}` from the builtin backend.
    GeneratedBytes { len: u64 },
    /// `GET {path}` of a file whose content is the generator's output for `len` and `seed`
    /// (the nginx and apache2 docroots; see [`crate::generator::write_expected_file`]).
    StaticFile { path: String, len: u64, seed: u64 },
}

#[derive(Debug, Clone)]
pub struct KeepAliveOptions {
    /// Persistent connections (default 2).
    pub connections: usize,
    /// From sending a request (connecting first when needed) to the last body byte (default 1 s).
    pub request_timeout: Duration,
    /// Request `i` of connection `c` cycles through `GET /bytes/{size}?seed={c << 32 | i}` for
    /// each size, then `GET /uuid` when `include_uuid` (default sizes 1 KiB, 10 KiB, 50 KiB,
    /// 1 MiB).
    pub sizes: Vec<u64>,
    pub include_uuid: bool,
    /// Use this seed for every `/bytes` request instead of a fresh one per request: static
    /// servers (nginx, apache2) only hold the docroot's seed-0 files (default none).
    pub fixed_seed: Option<u64>,
    /// Body sizes of `POST /commit` requests added to the cycle (default none; builtin backend
    /// only).
    pub commit_sizes: Vec<u64>,
    /// Add a commit whose body is sent slowly to the cycle (default none).
    pub slow_upload: Option<SlowUpload>,
    /// Add two pipelined `GET`s of the first size to the cycle (default false).
    pub pipelined: bool,
    /// Every other `/bytes` request asks the builtin backend for a chunked body (default
    /// false).
    pub chunked_bytes: bool,
    /// Pause between two requests of one connection (default none: as fast as replies come).
    pub pause: Duration,
    /// Pause before reconnecting after a failure (default 10 ms).
    pub reconnect_delay: Duration,
}

impl Default for KeepAliveOptions {
    fn default() -> Self {
        Self {
            connections: 2,
            request_timeout: Duration::from_secs(1),
            sizes: vec![1024, 10 * 1024, 50 * 1024, 1024 * 1024],
            include_uuid: true,
            fixed_seed: None,
            commit_sizes: Vec::new(),
            slow_upload: None,
            pipelined: false,
            chunked_bytes: false,
            pause: Duration::ZERO,
            reconnect_delay: Duration::from_millis(10),
        }
    }
}

/// A commit body of `len` bytes sent in `pieces` writes, `gap` apart: a request that is half
/// received while the service fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowUpload {
    pub len: u64,
    pub pieces: u32,
    pub gap: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("load options: {0}")]
    InvalidOptions(String),
}

/// Kind of a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The target refused the connection (nothing listening).
    ConnectRefused,
    /// No answer to the SYN within the timeout.
    ConnectTimeout,
    /// EHOSTUNREACH / ENETUNREACH (no neighbour answers for the address).
    Unreachable,
    /// The connection was reset (RST) or the pipe broke.
    Reset,
    /// Connected, but the reply did not complete within the timeout.
    Timeout,
    /// The server closed the connection before the reply was complete.
    Closed,
    /// A reply status other than 200.
    BadStatus,
    /// A reply that is not valid HTTP/1.1 or cannot be framed.
    MalformedReply,
    /// The body differs from what the generator (or the `/uuid` checksum) says.
    BadBody,
    /// Any other socket error.
    Io,
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub kind: ErrorKind,
    /// What and where, for humans.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Verified reply; `server` is its `Steadfast-Node` header, when present.
    Ok {
        server: Option<String>,
    },
    Err(Failure),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok { .. })
    }
}

fn serialize_micros<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX))
}

fn serialize_optional_micros<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => serialize_micros(d, serializer),
        None => serializer.serialize_none(),
    }
}

/// One probe: one new connection, one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// Probes are numbered in launch order from 0; the number is also the seed.
    pub index: u64,
    /// When the probe started, since the load began.
    #[serde(rename = "start_us", serialize_with = "serialize_micros")]
    pub start: Duration,
    #[serde(rename = "latency_us", serialize_with = "serialize_micros")]
    pub latency: Duration,
    /// From the start to the connection's establishment, when it was established.
    #[serde(rename = "connect_us", serialize_with = "serialize_optional_micros")]
    pub connect: Option<Duration>,
    pub outcome: Outcome,
}

/// The request a keep-alive connection sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "path", rename_all = "snake_case")]
pub enum RequestKind {
    /// `GET /bytes/{len}?seed={seed}`, with `&chunked=1` when `chunked`.
    Bytes {
        len: u64,
        seed: u64,
        chunked: bool,
    },
    Uuid,
    /// `POST /commit` with the generator's `len` bytes for `seed` as the body; `slow` when the
    /// body went out in pieces with pauses between them.
    Commit {
        len: u64,
        seed: u64,
        slow: bool,
    },
    /// Two `GET /bytes/{len}` written at once (seeds `seed` and `second_seed`), both replies
    /// read.
    Pipelined {
        len: u64,
        seed: u64,
        second_seed: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    #[serde(rename = "start_us", serialize_with = "serialize_micros")]
    pub start: Duration,
    #[serde(rename = "latency_us", serialize_with = "serialize_micros")]
    pub latency: Duration,
    pub kind: RequestKind,
    /// True when this request had to open the connection first.
    pub connected: bool,
    pub outcome: Outcome,
    /// For a commit that succeeded: the request id the data tier recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_id: Option<String>,
}

/// What one keep-alive connection slot did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionReport {
    pub index: usize,
    /// Connection attempts, successful or not (1 + reconnection attempts).
    pub connects: u64,
    pub requests: Vec<RequestRecord>,
}

impl ConnectionReport {
    pub fn failures(&self) -> usize {
        self.requests.iter().filter(|r| !r.outcome.is_ok()).count()
    }
}

/// A maximal run of failed probes.
///
/// Definition: `from` is the start of the last successful probe before the run and `to` the start
/// of the first successful probe after it; `duration = to - from - period`. Probes start one
/// period apart, so two consecutive successes give 0 (no outage) and a single failed probe gives
/// one period. A run with no success before it takes `from` as one period before its first probe
/// (clamped to the load's start); a run with no success after it takes `to` as one period after
/// its last probe and has `resolved = false` (the service had not come back when the load ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outage {
    #[serde(rename = "from_us", serialize_with = "serialize_micros")]
    pub from: Duration,
    #[serde(rename = "to_us", serialize_with = "serialize_micros")]
    pub to: Duration,
    #[serde(rename = "duration_us", serialize_with = "serialize_micros")]
    pub duration: Duration,
    pub failed_probes: usize,
    pub resolved: bool,
}

/// A run of consecutive successful probes served by the same node (failed probes in between do
/// not break a run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServedSpan {
    pub server: Option<String>,
    /// Start of the first probe of the run.
    #[serde(rename = "from_us", serialize_with = "serialize_micros")]
    pub from: Duration,
    /// Start of the last probe of the run.
    #[serde(rename = "to_us", serialize_with = "serialize_micros")]
    pub to: Duration,
    pub probes: usize,
}

/// Everything a load run recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadReport {
    pub target: SocketAddr,
    #[serde(rename = "period_us", serialize_with = "serialize_micros")]
    pub period: Duration,
    #[serde(rename = "elapsed_us", serialize_with = "serialize_micros")]
    pub elapsed: Duration,
    /// Sorted by start.
    pub probes: Vec<Probe>,
    pub connections: Vec<ConnectionReport>,
}

/// The derived figures of a [`LoadReport`], for JSON output and human reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadSummary {
    pub probes: usize,
    pub probe_failures: usize,
    pub requests: usize,
    pub request_failures: usize,
    pub reconnects: u64,
    pub outages: Vec<Outage>,
    #[serde(rename = "longest_gap_us", serialize_with = "serialize_micros")]
    pub longest_gap: Duration,
    pub served_by: Vec<ServedSpan>,
    pub probe_errors: BTreeMap<ErrorKind, usize>,
    pub request_errors: BTreeMap<ErrorKind, usize>,
}

impl LoadReport {
    /// Maximal runs of failed probes (see [`Outage`] for how they are measured).
    pub fn outages(&self) -> Vec<Outage> {
        let mut outages = Vec::new();
        let mut last_ok: Option<Duration> = None;
        // (start of the first failed probe, start of the last one, count)
        let mut run: Option<(Duration, Duration, usize)> = None;
        for probe in &self.probes {
            if probe.outcome.is_ok() {
                if let Some((first_failed, _, failed_probes)) = run.take() {
                    let from = last_ok.unwrap_or(first_failed.saturating_sub(self.period));
                    outages.push(Outage {
                        from,
                        to: probe.start,
                        duration: probe.start.saturating_sub(from).saturating_sub(self.period),
                        failed_probes,
                        resolved: true,
                    });
                }
                last_ok = Some(probe.start);
            } else {
                run = Some(match run {
                    None => (probe.start, probe.start, 1),
                    Some((first, _, count)) => (first, probe.start, count + 1),
                });
            }
        }
        if let Some((first_failed, last_failed, failed_probes)) = run {
            let from = last_ok.unwrap_or(first_failed.saturating_sub(self.period));
            let to = last_failed + self.period;
            outages.push(Outage {
                from,
                to,
                duration: to.saturating_sub(from).saturating_sub(self.period),
                failed_probes,
                resolved: false,
            });
        }
        outages
    }

    /// The longest outage, zero when every probe succeeded.
    pub fn longest_gap(&self) -> Duration {
        self.outages()
            .iter()
            .map(|outage| outage.duration)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    pub fn probe_failures(&self) -> usize {
        self.probes.iter().filter(|p| !p.outcome.is_ok()).count()
    }

    pub fn request_failures(&self) -> usize {
        self.connections
            .iter()
            .map(ConnectionReport::failures)
            .sum()
    }

    /// Failed probes plus failed keep-alive requests.
    pub fn failures(&self) -> usize {
        self.probe_failures() + self.request_failures()
    }

    /// The request ids of every commit whose reply the client received and verified.
    pub fn committed_ids(&self) -> Vec<String> {
        self.connections
            .iter()
            .flat_map(|c| c.requests.iter().filter_map(|r| r.commit_id.clone()))
            .collect()
    }

    pub fn requests(&self) -> usize {
        self.connections.iter().map(|c| c.requests.len()).sum()
    }

    /// Which node served the probes when.
    pub fn served_by(&self) -> Vec<ServedSpan> {
        let mut spans: Vec<ServedSpan> = Vec::new();
        for probe in &self.probes {
            let Outcome::Ok { server } = &probe.outcome else {
                continue;
            };
            match spans.last_mut() {
                Some(span) if span.server == *server => {
                    span.to = probe.start;
                    span.probes += 1;
                }
                _ => spans.push(ServedSpan {
                    server: server.clone(),
                    from: probe.start,
                    to: probe.start,
                    probes: 1,
                }),
            }
        }
        spans
    }

    pub fn probe_error_counts(&self) -> BTreeMap<ErrorKind, usize> {
        count_kinds(self.probes.iter().map(|p| &p.outcome))
    }

    pub fn request_error_counts(&self) -> BTreeMap<ErrorKind, usize> {
        count_kinds(
            self.connections
                .iter()
                .flat_map(|c| c.requests.iter().map(|r| &r.outcome)),
        )
    }

    /// Probe and request errors together.
    pub fn error_counts(&self) -> BTreeMap<ErrorKind, usize> {
        let mut counts = self.probe_error_counts();
        for (kind, count) in self.request_error_counts() {
            *counts.entry(kind).or_default() += count;
        }
        counts
    }

    pub fn summary(&self) -> LoadSummary {
        LoadSummary {
            probes: self.probes.len(),
            probe_failures: self.probe_failures(),
            requests: self.requests(),
            request_failures: self.request_failures(),
            reconnects: self
                .connections
                .iter()
                .map(|c| c.connects.saturating_sub(1))
                .sum(),
            outages: self.outages(),
            longest_gap: self.longest_gap(),
            served_by: self.served_by(),
            probe_errors: self.probe_error_counts(),
            request_errors: self.request_error_counts(),
        }
    }
}

fn count_kinds<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> BTreeMap<ErrorKind, usize> {
    let mut counts = BTreeMap::new();
    for outcome in outcomes {
        if let Outcome::Err(failure) = outcome {
            *counts.entry(failure.kind).or_default() += 1;
        }
    }
    counts
}

/// Live counters, readable while the load runs (the demo's progress line).
#[derive(Debug, Default)]
pub struct LoadProgress {
    probes_ok: AtomicU64,
    probes_failed: AtomicU64,
    requests_ok: AtomicU64,
    requests_failed: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    last_server: Mutex<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgressSnapshot {
    pub probes_ok: u64,
    pub probes_failed: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    /// Bytes read from the service (reply heads and bodies) and written to it (requests).
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// `Steadfast-Node` of the latest successful probe or request.
    pub last_server: Option<String>,
}

impl LoadProgress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            probes_ok: self.probes_ok.load(Ordering::Relaxed),
            probes_failed: self.probes_failed.load(Ordering::Relaxed),
            requests_ok: self.requests_ok.load(Ordering::Relaxed),
            requests_failed: self.requests_failed.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            last_server: self
                .last_server
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }

    fn record(&self, outcome: &Outcome, ok: &AtomicU64, failed: &AtomicU64) {
        match outcome {
            Outcome::Ok { server } => {
                ok.fetch_add(1, Ordering::Relaxed);
                if server.is_some() {
                    *self
                        .last_server
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = server.clone();
                }
            }
            Outcome::Err(_) => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs the load until `options.duration` has passed or `stop` completes, whichever is first,
/// then waits for in-flight requests (each bounded by its timeout) and returns what was recorded.
/// Pass `std::future::pending()` as `stop` to run for the full duration.
pub async fn run_load(
    options: LoadOptions,
    stop: impl std::future::Future<Output = ()>,
    progress: Arc<LoadProgress>,
) -> Result<LoadReport, LoadError> {
    validate(&options)?;
    let started = Instant::now();
    let (stop_sender, stop_receiver) = watch::channel(false);

    let prober = options.probes.clone().map(|probe_options| {
        tokio::spawn(run_probes(
            options.target,
            probe_options,
            started,
            stop_receiver.clone(),
            Arc::clone(&progress),
        ))
    });
    let mut workers = JoinSet::new();
    if let Some(keep_alive) = &options.keep_alive {
        let keep_alive = Arc::new(keep_alive.clone());
        for index in 0..keep_alive.connections {
            workers.spawn(run_connection(
                options.target,
                index,
                Arc::clone(&keep_alive),
                started,
                stop_receiver.clone(),
                Arc::clone(&progress),
            ));
        }
    }

    tokio::select! {
        () = tokio::time::sleep(options.duration) => {}
        () = stop => {}
    }
    // Receivers are held by the spawned tasks, so this only fails if they all ended already.
    let _ = stop_sender.send(true);

    let mut probes = match prober {
        Some(handle) => handle.await.unwrap_or_else(|error| {
            panic!("the probe scheduler task failed: {error}");
        }),
        None => Vec::new(),
    };
    probes.sort_by_key(|probe| (probe.start, probe.index));
    let mut connections = Vec::new();
    while let Some(joined) = workers.join_next().await {
        connections
            .push(joined.unwrap_or_else(|error| panic!("a keep-alive worker failed: {error}")));
    }
    connections.sort_by_key(|connection| connection.index);
    Ok(LoadReport {
        target: options.target,
        period: options
            .probes
            .as_ref()
            .map_or(Duration::ZERO, |probes| probes.period),
        elapsed: started.elapsed(),
        probes,
        connections,
    })
}

/// One long request on a connection of its own: what a node's failure finds in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// `GET /bytes/{len}?seed={seed}` (builtin backend), its reply read at
    /// `bytes_per_second` at most: a client on a slow link.
    Download {
        len: u64,
        seed: u64,
        bytes_per_second: u64,
    },
    /// `POST /commit` of the generator's `len` bytes for `seed` (builtin backend), the body
    /// sent as `upload` says.
    Upload { seed: u64, upload: SlowUpload },
}

impl Transfer {
    /// Body bytes it moves.
    pub fn body_bytes(&self) -> u64 {
        match self {
            Transfer::Download { len, .. } => *len,
            Transfer::Upload { upload, .. } => upload.len,
        }
    }

    /// How long it lasts by design (its pace, its pauses), before the service adds anything.
    pub fn planned(&self) -> Duration {
        match self {
            Transfer::Download {
                len,
                bytes_per_second,
                ..
            } => Duration::from_secs_f64(*len as f64 / (*bytes_per_second).max(1) as f64),
            Transfer::Upload { upload, .. } => upload.gap * upload.pieces,
        }
    }

    fn kind(&self) -> RequestKind {
        match *self {
            Transfer::Download { len, seed, .. } => RequestKind::Bytes {
                len,
                seed,
                chunked: false,
            },
            Transfer::Upload { seed, upload } => RequestKind::Commit {
                len: upload.len,
                seed,
                slow: true,
            },
        }
    }
}

/// Runs `transfer` on a new connection to `target`, verifies its reply and records it: its
/// start is measured from `origin` (the load's own start, for one timeline), its bytes are
/// counted in `progress` as they go, and `timeout` bounds what the service may add to the
/// planned time. One request, then the connection is closed.
pub async fn run_transfer(
    target: SocketAddr,
    transfer: Transfer,
    timeout: Duration,
    origin: Instant,
    progress: &LoadProgress,
) -> Result<RequestRecord, LoadError> {
    if transfer.body_bytes() == 0 || timeout.is_zero() {
        return Err(LoadError::InvalidOptions(
            "a transfer needs a body and a positive timeout".into(),
        ));
    }
    match transfer {
        Transfer::Download {
            bytes_per_second: 0,
            ..
        } => {
            return Err(LoadError::InvalidOptions(
                "a download's pace must be positive".into(),
            ))
        }
        Transfer::Upload { upload, .. } if upload.pieces == 0 => {
            return Err(LoadError::InvalidOptions(
                "a slow upload needs at least one piece".into(),
            ))
        }
        _ => {}
    }
    let start = origin.elapsed();
    let begun = Instant::now();
    let deadline = begun + transfer.planned() + timeout;
    let kind = transfer.kind();
    let (slow, pace) = match transfer {
        Transfer::Download {
            bytes_per_second, ..
        } => (
            None,
            Some(ReadPace {
                bytes_per_second,
                since: begun,
            }),
        ),
        Transfer::Upload { upload, .. } => (Some(upload), None),
    };
    let mut local = None;
    let result = async {
        let mut stream = connect(target, deadline).await?;
        local = stream.local_addr().ok();
        let mut buf = Vec::new();
        let meter = Meter { progress, pace };
        perform(&mut stream, &mut buf, target, kind, slow, deadline, meter).await
    }
    .await;
    let mut commit_id = None;
    let outcome = match result {
        Ok(reply) => {
            commit_id = reply.commit_id;
            Outcome::Ok {
                server: reply.server,
            }
        }
        Err(mut failure) => {
            if let Some(local) = local {
                failure.detail.push_str(&format!(" (client side {local})"));
            }
            Outcome::Err(failure)
        }
    };
    progress.record(&outcome, &progress.requests_ok, &progress.requests_failed);
    Ok(RequestRecord {
        start,
        latency: begun.elapsed(),
        kind,
        connected: true,
        outcome,
        commit_id,
    })
}

fn validate(options: &LoadOptions) -> Result<(), LoadError> {
    if let Some(probes) = &options.probes {
        if probes.period.is_zero() {
            return Err(LoadError::InvalidOptions(
                "probe period must be positive".into(),
            ));
        }
        if probes.timeout.is_zero() {
            return Err(LoadError::InvalidOptions(
                "probe timeout must be positive".into(),
            ));
        }
    }
    if let Some(keep_alive) = &options.keep_alive {
        if keep_alive.request_timeout.is_zero() {
            return Err(LoadError::InvalidOptions(
                "keep-alive request timeout must be positive".into(),
            ));
        }
        if keep_alive.sizes.is_empty()
            && !keep_alive.include_uuid
            && keep_alive.commit_sizes.is_empty()
            && keep_alive.slow_upload.is_none()
        {
            return Err(LoadError::InvalidOptions(
                "keep-alive load needs at least one /bytes size, /uuid or a commit".into(),
            ));
        }
        if keep_alive.pipelined && keep_alive.sizes.is_empty() {
            return Err(LoadError::InvalidOptions(
                "pipelined requests need a /bytes size".into(),
            ));
        }
        if keep_alive.slow_upload.is_some_and(|slow| slow.pieces == 0) {
            return Err(LoadError::InvalidOptions(
                "a slow upload needs at least one piece".into(),
            ));
        }
    }
    Ok(())
}

async fn run_probes(
    target: SocketAddr,
    options: ProbeOptions,
    started: Instant,
    mut stop: watch::Receiver<bool>,
    progress: Arc<LoadProgress>,
) -> Vec<Probe> {
    let mut in_flight = JoinSet::new();
    let mut probes = Vec::new();
    let mut ticks = tokio::time::interval(options.period);
    // After a stall (an overloaded runtime) do not fire a burst of probes at once: that would
    // measure the burst, not the service.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let request = Arc::new(options.request.clone());
    let mut index = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            _ = ticks.tick() => {
                let request = Arc::clone(&request);
                let progress = Arc::clone(&progress);
                let timeout = options.timeout;
                let probe_index = index;
                // The start is the scheduled launch, before the task waits for a worker thread.
                let start = started.elapsed();
                let begun = Instant::now();
                in_flight.spawn(async move {
                    let mut connect = None;
                    let outcome = probe_once(
                        target, &request, probe_index, timeout, &progress, &mut connect,
                    )
                    .await;
                    progress.record(&outcome, &progress.probes_ok, &progress.probes_failed);
                    Probe { index: probe_index, start, latency: begun.elapsed(), connect, outcome }
                });
                index += 1;
            }
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                probes.push(joined.expect("probe tasks do not panic"));
            }
        }
    }
    while let Some(joined) = in_flight.join_next().await {
        probes.push(joined.expect("probe tasks do not panic"));
    }
    probes
}

async fn probe_once(
    target: SocketAddr,
    request: &ProbeRequest,
    index: u64,
    timeout: Duration,
    progress: &LoadProgress,
    connect_time: &mut Option<Duration>,
) -> Outcome {
    let begun = Instant::now();
    let deadline = begun + timeout;
    let (path, check) = match request {
        ProbeRequest::GeneratedBytes { len } => (
            format!("/bytes/{len}?seed={index}"),
            BodyCheck::Generated {
                len: *len,
                seed: index,
            },
        ),
        ProbeRequest::StaticFile { path, len, seed } => (
            path.clone(),
            BodyCheck::Generated {
                len: *len,
                seed: *seed,
            },
        ),
    };
    let result = async {
        let mut stream = connect(target, deadline).await?;
        *connect_time = Some(begun.elapsed());
        let mut buf = Vec::new();
        let what = format!("GET {path}");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        let meter = Meter::unpaced(progress);
        send(
            &mut stream,
            request.as_bytes(),
            target,
            &what,
            deadline,
            meter,
        )
        .await?;
        read_reply(&mut stream, &mut buf, target, &what, check, deadline, meter).await
    }
    .await;
    match result {
        Ok(reply) => Outcome::Ok {
            server: reply.server,
        },
        Err(failure) => Outcome::Err(failure),
    }
}

async fn run_connection(
    target: SocketAddr,
    index: usize,
    options: Arc<KeepAliveOptions>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
    progress: Arc<LoadProgress>,
) -> ConnectionReport {
    let mut report = ConnectionReport {
        index,
        connects: 0,
        requests: Vec::new(),
    };
    let cycle = request_cycle(&options);
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::new();
    let mut sequence = 0u64;
    while !*stop.borrow() {
        let seed = options
            .fixed_seed
            .unwrap_or(((index as u64) << 32) | (sequence & 0xffff_ffff));
        let kind = match cycle[(sequence % cycle.len() as u64) as usize] {
            Step::Bytes(len) => RequestKind::Bytes {
                len,
                seed,
                chunked: options.chunked_bytes && sequence % 2 == 1,
            },
            Step::Uuid => RequestKind::Uuid,
            Step::Commit(len) => RequestKind::Commit {
                len,
                seed,
                slow: false,
            },
            Step::SlowCommit(len) => RequestKind::Commit {
                len,
                seed,
                slow: true,
            },
            Step::Pipelined(len) => RequestKind::Pipelined {
                len,
                seed,
                // Static servers hold one seed only.
                second_seed: if options.fixed_seed.is_some() {
                    seed
                } else {
                    seed.wrapping_add(1)
                },
            },
        };
        sequence += 1;
        let start = started.elapsed();
        let begun = Instant::now();
        let slow_time = match (kind, options.slow_upload) {
            (RequestKind::Commit { slow: true, .. }, Some(slow)) => slow.gap * slow.pieces,
            _ => Duration::ZERO,
        };
        let deadline = begun + options.request_timeout + slow_time;
        let connected = stream.is_none();
        let result = async {
            if stream.is_none() {
                buf.clear();
                report.connects += 1;
                stream = Some(connect(target, deadline).await?);
            }
            let connection = stream.as_mut().expect("connected just above");
            perform(
                connection,
                &mut buf,
                target,
                kind,
                options.slow_upload,
                deadline,
                Meter::unpaced(&progress),
            )
            .await
        }
        .await;
        let mut commit_id = None;
        let outcome = match result {
            Ok(reply) => {
                if reply.server_closes {
                    stream = None;
                }
                commit_id = reply.commit_id;
                Outcome::Ok {
                    server: reply.server,
                }
            }
            Err(mut failure) => {
                // Which connection (the client's port) failed: the servers' logs name it so.
                if let Some(local) = stream.as_ref().and_then(|s| s.local_addr().ok()) {
                    failure.detail.push_str(&format!(" (client side {local})"));
                }
                stream = None;
                Outcome::Err(failure)
            }
        };
        progress.record(&outcome, &progress.requests_ok, &progress.requests_failed);
        let failed = !outcome.is_ok();
        report.requests.push(RequestRecord {
            start,
            latency: begun.elapsed(),
            kind,
            connected,
            outcome,
            commit_id,
        });
        let pause = if failed {
            options.reconnect_delay
        } else {
            options.pause
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
    report
}

/// One entry of a keep-alive connection's request cycle.
#[derive(Debug, Clone, Copy)]
enum Step {
    Bytes(u64),
    Uuid,
    Commit(u64),
    SlowCommit(u64),
    Pipelined(u64),
}

fn request_cycle(options: &KeepAliveOptions) -> Vec<Step> {
    let mut cycle: Vec<Step> = options.sizes.iter().map(|len| Step::Bytes(*len)).collect();
    if options.include_uuid {
        cycle.push(Step::Uuid);
    }
    cycle.extend(options.commit_sizes.iter().map(|len| Step::Commit(*len)));
    if let Some(slow) = options.slow_upload {
        cycle.push(Step::SlowCommit(slow.len));
    }
    if let (true, Some(len)) = (options.pipelined, options.sizes.first()) {
        cycle.push(Step::Pipelined(*len));
    }
    cycle
}

/// Sends one request of `kind` (two when pipelined) and reads and verifies the reply.
async fn perform(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    target: SocketAddr,
    kind: RequestKind,
    slow: Option<SlowUpload>,
    deadline: Instant,
    meter: Meter<'_>,
) -> Result<Reply, Failure> {
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: keep-alive\r\n\r\n")
    };
    match kind {
        RequestKind::Bytes { len, seed, chunked } => {
            let path = if chunked {
                format!("/bytes/{len}?seed={seed}&chunked=1")
            } else {
                format!("/bytes/{len}?seed={seed}")
            };
            let what = format!("GET {path}");
            send(
                stream,
                get(&path).as_bytes(),
                target,
                &what,
                deadline,
                meter,
            )
            .await?;
            read_reply(
                stream,
                buf,
                target,
                &what,
                BodyCheck::Generated { len, seed },
                deadline,
                meter,
            )
            .await
        }
        RequestKind::Uuid => {
            send(
                stream,
                get("/uuid").as_bytes(),
                target,
                "GET /uuid",
                deadline,
                meter,
            )
            .await?;
            read_reply(
                stream,
                buf,
                target,
                "GET /uuid",
                BodyCheck::Uuid,
                deadline,
                meter,
            )
            .await
        }
        RequestKind::Pipelined {
            len,
            seed,
            second_seed,
        } => {
            let paths = [seed, second_seed].map(|s| format!("/bytes/{len}?seed={s}"));
            let both = format!("{}{}", get(&paths[0]), get(&paths[1]));
            let what = format!("pipelined GET {} and {}", paths[0], paths[1]);
            send(stream, both.as_bytes(), target, &what, deadline, meter).await?;
            let first = read_reply(
                stream,
                buf,
                target,
                &format!("GET {} (first of two pipelined)", paths[0]),
                BodyCheck::Generated { len, seed },
                deadline,
                meter,
            )
            .await?;
            if first.server_closes {
                return Ok(first);
            }
            read_reply(
                stream,
                buf,
                target,
                &format!("GET {} (second of two pipelined)", paths[1]),
                BodyCheck::Generated {
                    len,
                    seed: second_seed,
                },
                deadline,
                meter,
            )
            .await
        }
        RequestKind::Commit {
            len,
            seed,
            slow: is_slow,
        } => {
            use sha2::Digest as _;
            let body = crate::generator::expected_bytes(len, seed);
            let digest: [u8; 32] = sha2::Sha256::digest(&body).into();
            let head = format!(
                "POST /commit HTTP/1.1\r\nHost: {target}\r\nConnection: keep-alive\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
            );
            let what = format!(
                "POST /commit ({len} bytes{})",
                if is_slow { ", slowly" } else { "" }
            );
            match slow.filter(|_| is_slow) {
                Some(slow) => {
                    send(stream, head.as_bytes(), target, &what, deadline, meter).await?;
                    let piece = body.len().div_ceil(slow.pieces as usize).max(1);
                    for chunk in body.chunks(piece) {
                        tokio::time::sleep(slow.gap).await;
                        send(stream, chunk, target, &what, deadline, meter).await?;
                    }
                }
                None => {
                    let mut request = head.into_bytes();
                    request.extend_from_slice(&body);
                    send(stream, &request, target, &what, deadline, meter).await?;
                }
            }
            read_reply(
                stream,
                buf,
                target,
                &what,
                BodyCheck::Commit { digest },
                deadline,
                meter,
            )
            .await
        }
    }
}

/// Where a request's bytes are counted, and how fast its reply may be read.
#[derive(Clone, Copy)]
struct Meter<'a> {
    progress: &'a LoadProgress,
    pace: Option<ReadPace>,
}

impl<'a> Meter<'a> {
    fn unpaced(progress: &'a LoadProgress) -> Self {
        Meter {
            progress,
            pace: None,
        }
    }
}

/// A client that reads no more than `bytes_per_second` from `since` on: one on a slow link, whose
/// download lasts (the kernel's receive window then holds the server back too).
#[derive(Clone, Copy)]
struct ReadPace {
    bytes_per_second: u64,
    since: Instant,
}

impl ReadPace {
    /// When the client may read on, having read `received` bytes.
    fn due(&self, received: u64) -> Instant {
        self.since + Duration::from_secs_f64(received as f64 / self.bytes_per_second as f64)
    }
}

async fn send(
    stream: &mut TcpStream,
    bytes: &[u8],
    target: SocketAddr,
    what: &str,
    deadline: Instant,
    meter: Meter<'_>,
) -> Result<(), Failure> {
    match tokio::time::timeout_at(deadline, stream.write_all(bytes)).await {
        Err(_) => Err(failure(
            ErrorKind::Timeout,
            format!("{what} to {target}: request not sent within the timeout"),
        )),
        Ok(Err(error)) => Err(io_failure(&error, target, &format!("{what} to"))),
        Ok(Ok(())) => {
            meter
                .progress
                .bytes_sent
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(())
        }
    }
}

fn failure(kind: ErrorKind, detail: impl Into<String>) -> Failure {
    Failure {
        kind,
        detail: detail.into(),
    }
}

fn io_failure(error: &std::io::Error, target: SocketAddr, phase: &str) -> Failure {
    use std::io::ErrorKind as Io;
    let kind = match error.kind() {
        Io::ConnectionRefused => ErrorKind::ConnectRefused,
        Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe => ErrorKind::Reset,
        Io::UnexpectedEof => ErrorKind::Closed,
        _ if matches!(
            error.raw_os_error(),
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH)
        ) =>
        {
            ErrorKind::Unreachable
        }
        _ => ErrorKind::Io,
    };
    failure(kind, format!("{phase} {target}: {error}"))
}

async fn connect(target: SocketAddr, deadline: Instant) -> Result<TcpStream, Failure> {
    match tokio::time::timeout_at(deadline, TcpStream::connect(target)).await {
        Err(_) => Err(failure(
            ErrorKind::ConnectTimeout,
            format!("connecting to {target}: no answer within the timeout"),
        )),
        Ok(Err(error)) => Err(io_failure(&error, target, "connecting to")),
        Ok(Ok(stream)) => {
            // A request is one small write; Nagle would delay it behind nothing useful.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum BodyCheck {
    Generated {
        len: u64,
        seed: u64,
    },
    Uuid,
    /// A commit line whose body digest must be this one.
    Commit {
        digest: [u8; 32],
    },
}

struct Reply {
    server: Option<String>,
    /// The server announced `Connection: close` (or framed the body by closing).
    server_closes: bool,
    commit_id: Option<String>,
}

enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// Where body bytes go: checked piece by piece or collected for a whole-body check.
enum BodySink {
    Generated(BodyVerifier),
    Uuid(Vec<u8>),
    Commit(Vec<u8>, [u8; 32]),
}

impl BodySink {
    fn new(check: BodyCheck) -> Self {
        match check {
            BodyCheck::Generated { len, seed } => Self::Generated(BodyVerifier::new(len, seed)),
            BodyCheck::Uuid => Self::Uuid(Vec::new()),
            BodyCheck::Commit { digest } => Self::Commit(Vec::new(), digest),
        }
    }

    fn accept(&mut self, piece: &[u8], path: &str) -> Result<(), Failure> {
        match self {
            Self::Generated(verifier) => verifier
                .update(piece)
                .map_err(|error| failure(ErrorKind::BadBody, format!("{path}: {error}"))),
            Self::Uuid(collected) | Self::Commit(collected, _) => {
                collected.extend_from_slice(piece);
                if collected.len() > MAX_UUID_BODY_BYTES {
                    return Err(failure(
                        ErrorKind::BadBody,
                        format!("{path}: body longer than {MAX_UUID_BODY_BYTES} bytes"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Checks what the body held; a commit's request id comes back.
    fn finish(&self, path: &str) -> Result<Option<String>, Failure> {
        match self {
            Self::Generated(verifier) => verifier
                .finish()
                .map(|()| None)
                .map_err(|error| failure(ErrorKind::BadBody, format!("{path}: {error}"))),
            Self::Uuid(collected) if verify_uuid_body(collected) => Ok(None),
            Self::Uuid(collected) => Err(failure(
                ErrorKind::BadBody,
                format!(
                    "{path}: checksum or format wrong in {:?}",
                    String::from_utf8_lossy(collected)
                ),
            )),
            Self::Commit(collected, digest) => {
                let text = String::from_utf8_lossy(collected);
                let expected: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                match crate::backend::CommitRecord::parse_line(&text) {
                    Some(record) if record.body_sha256 == expected => Ok(Some(record.request_id)),
                    Some(record) => Err(failure(
                        ErrorKind::BadBody,
                        format!(
                            "{path}: the data tier recorded body {} for id {}, the client sent {expected}",
                            record.body_sha256, record.request_id
                        ),
                    )),
                    None => Err(failure(
                        ErrorKind::BadBody,
                        format!("{path}: not a commit line: {text:?}"),
                    )),
                }
            }
        }
    }
}

/// Reads more bytes into `buf`; `Ok(false)` at end of stream. `received` counts this reply's
/// bytes so far: a paced reading waits until they are due before it reads on.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    target: SocketAddr,
    path: &str,
    received: &mut u64,
    meter: Meter<'_>,
) -> Result<bool, Failure> {
    if let Some(pace) = meter.pace {
        tokio::time::sleep_until(pace.due(*received).min(deadline)).await;
    }
    let start = buf.len();
    buf.resize(start + READ_PIECE, 0);
    let read = tokio::time::timeout_at(deadline, stream.read(&mut buf[start..])).await;
    let count = match read {
        Err(_) => {
            buf.truncate(start);
            return Err(failure(
                ErrorKind::Timeout,
                format!(
                    "{path} from {target}: reply incomplete at the timeout \
                     ({received} bytes of it received)"
                ),
            ));
        }
        Ok(Err(error)) => {
            buf.truncate(start);
            return Err(io_failure(&error, target, &format!("{path} from")));
        }
        Ok(Ok(count)) => count,
    };
    buf.truncate(start + count);
    *received += count as u64;
    meter
        .progress
        .bytes_received
        .fetch_add(count as u64, Ordering::Relaxed);
    Ok(count > 0)
}

/// Reads and verifies one reply (`what` names its request in errors). Bytes after the reply
/// stay in `buf`.
async fn read_reply(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    target: SocketAddr,
    what: &str,
    check: BodyCheck,
    deadline: Instant,
    meter: Meter<'_>,
) -> Result<Reply, Failure> {
    let path = what;
    // What this reply delivered so far (bytes of the previous reply already in `buf` count
    // too), for the timeout message.
    let mut received_total = buf.len() as u64;
    // The head.
    let (status, server, framing, server_closes, head_len) = loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_REPLY_HEADERS];
        let mut reply = httparse::Response::new(&mut fields);
        match reply.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let mut server = None;
                let mut length = None;
                let mut chunked = false;
                let mut server_closes = false;
                for field in reply.headers.iter() {
                    let value = field.value.trim_ascii();
                    if field.name.eq_ignore_ascii_case("steadfast-node") {
                        server = Some(String::from_utf8_lossy(value).into_owned());
                    } else if field.name.eq_ignore_ascii_case("content-length") {
                        let parsed = std::str::from_utf8(value)
                            .ok()
                            .and_then(|text| text.parse::<u64>().ok());
                        length = Some(parsed.ok_or_else(|| {
                            failure(
                                ErrorKind::MalformedReply,
                                format!("{path} from {target}: bad Content-Length"),
                            )
                        })?);
                    } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = value.eq_ignore_ascii_case(b"chunked");
                    } else if field.name.eq_ignore_ascii_case("connection") {
                        server_closes |= value
                            .split(|&b| b == b',')
                            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
                    }
                }
                let framing = match (chunked, length) {
                    (true, _) => Framing::Chunked,
                    (false, Some(length)) => Framing::Length(length),
                    (false, None) => {
                        server_closes = true;
                        Framing::UntilClose
                    }
                };
                break (
                    reply.code.unwrap_or(0),
                    server,
                    framing,
                    server_closes,
                    head_len,
                );
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_REPLY_HEAD_BYTES {
                    return Err(failure(
                        ErrorKind::MalformedReply,
                        format!(
                            "{path} from {target}: reply head over {MAX_REPLY_HEAD_BYTES} bytes"
                        ),
                    ));
                }
            }
            Err(error) => {
                return Err(failure(
                    ErrorKind::MalformedReply,
                    format!("{path} from {target}: {error}"),
                ))
            }
        }
        if !read_more(
            stream,
            buf,
            deadline,
            target,
            path,
            &mut received_total,
            meter,
        )
        .await?
        {
            return Err(failure(
                ErrorKind::Closed,
                format!(
                    "{path} from {target}: connection closed before the reply head ({} bytes received)",
                    buf.len()
                ),
            ));
        }
    };
    buf.drain(..head_len);
    if status != 200 {
        return Err(failure(
            ErrorKind::BadStatus,
            format!("{path} from {target}: status {status}"),
        ));
    }

    // The body.
    let mut sink = BodySink::new(check);
    let closed_early = |received: u64| {
        failure(
            ErrorKind::Closed,
            format!("{path} from {target}: connection closed after {received} body bytes"),
        )
    };
    match framing {
        Framing::Length(length) => {
            let mut remaining = length;
            loop {
                let take = remaining.min(buf.len() as u64) as usize;
                sink.accept(&buf[..take], path)?;
                buf.drain(..take);
                remaining -= take as u64;
                if remaining == 0 {
                    break;
                }
                if !read_more(
                    stream,
                    buf,
                    deadline,
                    target,
                    path,
                    &mut received_total,
                    meter,
                )
                .await?
                {
                    return Err(closed_early(length - remaining));
                }
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut decoded = Vec::new();
            let mut received = 0u64;
            loop {
                let (consumed, done) = decoder.feed(buf, &mut decoded).map_err(|error| {
                    failure(
                        ErrorKind::MalformedReply,
                        format!("{path} from {target}: {error}"),
                    )
                })?;
                buf.drain(..consumed);
                received += decoded.len() as u64;
                sink.accept(&decoded, path)?;
                decoded.clear();
                if done {
                    break;
                }
                if !read_more(
                    stream,
                    buf,
                    deadline,
                    target,
                    path,
                    &mut received_total,
                    meter,
                )
                .await?
                {
                    return Err(closed_early(received));
                }
            }
        }
        Framing::UntilClose => loop {
            sink.accept(buf, path)?;
            buf.clear();
            if !read_more(
                stream,
                buf,
                deadline,
                target,
                path,
                &mut received_total,
                meter,
            )
            .await?
            {
                break;
            }
        },
    }
    let commit_id = sink.finish(path)?;
    Ok(Reply {
        server,
        server_closes,
        commit_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(index: u64, ok: bool, server: &str) -> Probe {
        Probe {
            index,
            start: Duration::from_millis(10 * index),
            latency: Duration::from_millis(1),
            connect: None,
            outcome: if ok {
                Outcome::Ok {
                    server: Some(server.to_string()),
                }
            } else {
                Outcome::Err(failure(ErrorKind::ConnectRefused, "test"))
            },
        }
    }

    fn report(probes: Vec<Probe>) -> LoadReport {
        LoadReport {
            target: "127.0.0.1:1".parse().unwrap(),
            period: Duration::from_millis(10),
            elapsed: Duration::from_secs(1),
            probes,
            connections: Vec::new(),
        }
    }

    #[test]
    fn no_failure_means_no_outage() {
        let report = report((0..5).map(|i| probe(i, true, "n1")).collect());
        assert!(report.outages().is_empty());
        assert_eq!(report.longest_gap(), Duration::ZERO);
    }

    #[test]
    fn outage_spans_the_surrounding_successes_minus_a_period() {
        let pattern = [true, true, false, false, false, true, false, true];
        let servers = ["n1", "n1", "", "", "", "n2", "", "n2"];
        let report = report(
            (0..pattern.len())
                .map(|i| probe(i as u64, pattern[i], servers[i]))
                .collect(),
        );
        let outages = report.outages();
        assert_eq!(outages.len(), 2);
        assert_eq!(outages[0].from, Duration::from_millis(10));
        assert_eq!(outages[0].to, Duration::from_millis(50));
        assert_eq!(outages[0].duration, Duration::from_millis(30));
        assert_eq!(outages[0].failed_probes, 3);
        assert_eq!(outages[1].duration, Duration::from_millis(10));
        assert_eq!(report.longest_gap(), Duration::from_millis(30));
        let spans = report.served_by();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].server.as_deref(), Some("n1"));
        assert_eq!(spans[1].server.as_deref(), Some("n2"));
        assert_eq!(spans[1].probes, 2);
        assert_eq!(report.probe_error_counts()[&ErrorKind::ConnectRefused], 4);
    }

    #[test]
    fn trailing_failures_are_an_unresolved_outage() {
        let report = report(vec![
            probe(0, true, "n1"),
            probe(1, false, ""),
            probe(2, false, ""),
        ]);
        let outages = report.outages();
        assert_eq!(outages.len(), 1);
        assert!(!outages[0].resolved);
        assert_eq!(outages[0].duration, Duration::from_millis(20));
        let json = serde_json::to_string(&report.summary()).unwrap();
        assert!(json.contains("\"connect_refused\":2"), "{json}");
    }
}
