//! `steadfast-lab bench …`: measurements published as tables, raw samples and plots.
//!
//! Every benchmark builds its own labs (unique names, always torn down) and drives them with the
//! verifying load of [`crate::load`], so the figures are what a client in the lab saw.

pub mod active;
pub mod availability;
pub mod cpu;
pub mod failover;
pub mod hostile;
pub mod keepalived;
pub mod overhead;
pub mod plot;
pub mod redis_benchmark;
pub mod relay;
pub mod stall;
pub mod wrk;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::LabError;
use crate::lab::LabInfo;
use crate::load::{self, LoadOptions, LoadProgress, LoadReport, ProbeOptions};
use crate::options::UpOptions;
use crate::system::monotonic_now;

/// Why a benchmark could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Lab(#[from] LabError),

    #[error("{what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("keepalived is not installed (no `keepalived` in PATH, /usr/sbin, /sbin): install the Debian package keepalived, or drop --keepalived")]
    KeepalivedMissing,

    #[error("keepalived in namespace {namespace}: {reason}\n--- {log} ---\n{tail}")]
    Keepalived {
        namespace: String,
        reason: String,
        log: PathBuf,
        tail: String,
    },

    #[error("lab {lab}, {row}: {reason}")]
    Campaign {
        lab: String,
        row: String,
        reason: String,
    },

    #[error("the probe load in namespace {namespace}: {reason}")]
    Load { namespace: String, reason: String },

    #[error("invalid benchmark options: {0}")]
    Options(String),
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>, path: impl Into<PathBuf>, e: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            path: path.into(),
            source: e,
        }
    }
}

/// A lab name no other bench run of this machine uses at the same time: `b` + pid + counter.
pub(crate) fn unique_lab_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("b{}{}{}", std::process::id() % 100_000, tag, n);
    name.truncate(crate::topology::MAX_NAME_LEN);
    name
}

/// A lab that is torn down when dropped, also when the benchmark fails or panics.
pub(crate) struct BenchLab {
    pub info: LabInfo,
}

impl BenchLab {
    pub fn up(opts: &UpOptions) -> Result<BenchLab, BenchError> {
        match crate::lab::up(opts) {
            Ok(info) => Ok(BenchLab { info }),
            Err(e) => {
                // `up` tears down what it built, but a half-made lab must never outlive us.
                let _ = crate::lab::down(&opts.name);
                Err(e.into())
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.info.lab
    }

    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(self.info.vip.into(), self.info.port)
    }

    /// The control socket of host `host`'s daemon.
    pub fn control_socket(&self, host: &str) -> PathBuf {
        self.info.state_dir.join(format!("{host}.sock"))
    }

    /// Short host names (`n1` …) whose namespace holds the VIP now.
    pub fn holders(&self) -> Result<Vec<String>, BenchError> {
        let prefix = format!("{}-", self.name());
        Ok(crate::lab::vip_holders(self.name())?
            .into_iter()
            .map(|ns| ns.strip_prefix(&prefix).unwrap_or(&ns).to_string())
            .collect())
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        // For diagnosis: STEADFAST_BENCH_KEEP_LOGS=DIR keeps each lab's daemon and backend logs
        // in DIR/<lab>/ (the state directory goes with the lab).
        if let Some(dir) = std::env::var_os("STEADFAST_BENCH_KEEP_LOGS") {
            let keep = PathBuf::from(dir).join(self.name());
            if std::fs::create_dir_all(&keep).is_ok() {
                for entry in std::fs::read_dir(&self.info.state_dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if entry.file_name().to_string_lossy().ends_with(".log") {
                        let _ = std::fs::copy(entry.path(), keep.join(entry.file_name()));
                    }
                }
                eprintln!("bench: lab {} logs kept in {}", self.name(), keep.display());
            }
        }
        if let Err(e) = crate::lab::down(&self.info.lab) {
            eprintln!("bench: tearing down lab {}: {e}", self.info.lab);
        }
    }
}

/// What a finished [`ProbeLoad`] hands back: the report, and CLOCK_MONOTONIC at the load's time
/// origin, so crash reports (which carry CLOCK_MONOTONIC) can be placed on the probes' timeline.
pub(crate) struct FinishedLoad {
    pub report: LoadReport,
    pub origin_monotonic: Duration,
}

/// The verifying probe load (a new connection every `period`), running in the lab's client
/// namespace on its own thread until [`ProbeLoad::stop`] or its time limit.
pub(crate) struct ProbeLoad {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<FinishedLoad, BenchError>>>,
    pub progress: Arc<LoadProgress>,
}

impl ProbeLoad {
    pub fn start(lab: &BenchLab, probes: ProbeOptions, limit: Duration) -> ProbeLoad {
        let options = LoadOptions {
            probes: Some(probes),
            ..LoadOptions::probes_only(lab.target(), limit)
        };
        ProbeLoad::start_with(lab, options)
    }

    /// Any load (probes, keep-alive connections or both) in the lab's client namespace.
    pub fn start_with(lab: &BenchLab, options: LoadOptions) -> ProbeLoad {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let progress = Arc::new(LoadProgress::default());
        let namespace = lab.info.client_ns.clone();
        let thread_progress = progress.clone();
        let thread = std::thread::spawn(move || {
            let ns = namespace.clone();
            crate::system::run_in_namespace(&namespace, move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| BenchError::Load {
                        namespace: ns.clone(),
                        reason: format!("building the runtime: {e}"),
                    })?;
                // Read right before `run_load` reads its own start, microseconds apart.
                let origin_monotonic = monotonic_now();
                let report = runtime
                    .block_on(load::run_load(
                        options,
                        async move {
                            let _ = stop_rx.await;
                        },
                        thread_progress,
                    ))
                    .map_err(|e| BenchError::Load {
                        namespace: ns.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(FinishedLoad {
                    report,
                    origin_monotonic,
                })
            })?
        });
        ProbeLoad {
            stop: Some(stop_tx),
            thread: Some(thread),
            progress,
        }
    }

    pub fn stop(mut self) -> Result<FinishedLoad, BenchError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => unreachable!("a load is stopped once"),
        }
    }
}

impl Drop for ProbeLoad {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the status of a lab host's daemon through its control socket; `row` names the
/// benchmark in the error.
pub(crate) fn node_status(
    lab: &BenchLab,
    host: &str,
    row: &str,
) -> Result<serde_json::Value, BenchError> {
    crate::lab::query_control_socket(&lab.control_socket(host)).map_err(|reason| {
        BenchError::Campaign {
            lab: lab.name().to_string(),
            row: row.into(),
            reason: format!("status of {host}: {reason}"),
        }
    })
}

/// The data-plane part of [`node_status`].
pub(crate) fn plane_status(
    lab: &BenchLab,
    host: &str,
    row: &str,
) -> Result<serde_json::Value, BenchError> {
    Ok(node_status(lab, host, row)?["data_plane"].clone())
}

/// Polls `done` every 5 ms until it holds or `within` has passed.
pub(crate) fn wait_until(
    within: Duration,
    mut done: impl FnMut() -> Result<bool, BenchError>,
) -> Result<bool, BenchError> {
    let deadline = Instant::now() + within;
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The nearest-rank percentile (`p` in 0..=100) of unsorted values; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A small xorshift generator for the pauses between crashes: the pauses must not line up with
/// heartbeat or advertisement periods, they need not be unpredictable.
pub(crate) struct Jitter(u64);

impl Jitter {
    pub fn new() -> Jitter {
        let mut seed = [0u8; 8];
        // A fixed seed is as good if the kernel has no randomness to give.
        let _ = getrandom::getrandom(&mut seed);
        Jitter(u64::from_le_bytes(seed) | 1)
    }

    /// A duration in `low..=high`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = (high.saturating_sub(low)).as_millis() as u64 + 1;
        low + Duration::from_millis(self.0 % span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&values, 50.0), Some(3.0));
        assert_eq!(percentile(&values, 90.0), Some(5.0));
        assert_eq!(percentile(&values, 100.0), Some(5.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut jitter = Jitter::new();
        for _ in 0..1000 {
            let d = jitter.between(Duration::from_millis(300), Duration::from_millis(700));
            assert!((Duration::from_millis(300)..=Duration::from_millis(700)).contains(&d));
        }
    }

    #[test]
    fn lab_names_are_valid_and_distinct() {
        let a = unique_lab_name("fo");
        let b = unique_lab_name("fo");
        assert_ne!(a, b);
        assert!(crate::topology::LabName::parse(&a).is_ok(), "{a}");
    }
}
