//! The verifying load client against the builtin backend on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use steadfast_lab::backend::{Backend, BackendConfig};
use steadfast_lab::load::{
    run_load, run_transfer, ErrorKind, KeepAliveOptions, LoadOptions, LoadProgress, ProbeOptions,
    ProbeRequest, ProgressSnapshot, RequestKind, SlowUpload, Transfer,
};
use tokio::task::JoinHandle;

/// Upper bound of every load run here; the runs normally end far earlier on their stop signal.
const RUN_BOUND: Duration = Duration::from_secs(20);

struct TempFile(PathBuf);

impl TempFile {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        Self(std::env::temp_dir().join(format!(
            "steadfast-load-test-{}-{}.log",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Aborts the backend task (closing its listener and connections) when dropped.
struct RunningBackend(JoinHandle<()>);

impl Drop for RunningBackend {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn start_backend(
    listen: SocketAddr,
    node_name: &str,
    data_tier: &TempFile,
) -> (SocketAddr, RunningBackend) {
    let backend = Backend::bind(BackendConfig {
        listen,
        node_name: node_name.into(),
        data_tier: data_tier.0.clone(),
    })
    .await
    .expect("backend binds on loopback");
    let addr = backend.local_addr();
    (
        addr,
        RunningBackend(tokio::spawn(async move {
            backend.run().await.expect("backend runs");
        })),
    )
}

fn small_keep_alive() -> KeepAliveOptions {
    KeepAliveOptions {
        connections: 2,
        sizes: vec![100, 4096, 70_000],
        ..KeepAliveOptions::default()
    }
}

/// Polls `progress` every 5 ms until `done` holds (bounded by [`RUN_BOUND`]).
async fn wait_for(progress: &LoadProgress, done: impl Fn(&ProgressSnapshot) -> bool) {
    tokio::time::timeout(RUN_BOUND, async {
        while !done(&progress.snapshot()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("condition not reached: {:?}", progress.snapshot()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_backend_gives_no_failure_and_no_outage() {
    let data_tier = TempFile::new();
    let (addr, _backend) = start_backend("127.0.0.1:0".parse().unwrap(), "n1", &data_tier).await;
    let options = LoadOptions {
        target: addr,
        duration: Duration::from_millis(300),
        probes: Some(ProbeOptions::default()),
        keep_alive: Some(small_keep_alive()),
    };
    let progress = Arc::new(LoadProgress::default());
    let report = run_load(options, std::future::pending(), Arc::clone(&progress))
        .await
        .unwrap();

    assert!(!report.probes.is_empty());
    assert_eq!(report.failures(), 0, "{:?}", report.error_counts());
    assert!(report.outages().is_empty());
    assert_eq!(report.longest_gap(), Duration::ZERO);
    let spans = report.served_by();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].server.as_deref(), Some("n1"));
    assert_eq!(spans[0].probes, report.probes.len());
    assert!(report.requests() > 0);
    assert!(report.connections.iter().all(|c| c.connects == 1));
    let snapshot = progress.snapshot();
    assert_eq!(snapshot.probes_ok as usize, report.probes.len());
    assert_eq!(snapshot.requests_ok as usize, report.requests());
    let json = serde_json::to_value(report.summary()).unwrap();
    assert_eq!(json["probe_failures"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_backend_mid_run_is_seen_as_an_outage() {
    let data_tier = TempFile::new();
    let (addr, first) = start_backend("127.0.0.1:0".parse().unwrap(), "n1", &data_tier).await;
    let options = LoadOptions {
        target: addr,
        duration: RUN_BOUND,
        probes: Some(ProbeOptions {
            timeout: Duration::from_millis(300),
            ..ProbeOptions::default()
        }),
        keep_alive: Some(small_keep_alive()),
    };
    let progress = Arc::new(LoadProgress::default());
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn(run_load(
        options,
        async move {
            let _ = stop_receiver.await;
        },
        Arc::clone(&progress),
    ));

    // Phase 1: served by n1. Phase 2: nothing listens. Phase 3: n2 on the same port.
    wait_for(&progress, |s| s.probes_ok >= 5 && s.requests_ok >= 5).await;
    drop(first);
    wait_for(&progress, |s| {
        s.probes_failed >= 3 && s.requests_failed >= 1
    })
    .await;
    let ok_before_restart = progress.snapshot().probes_ok;
    let (_, _second) = start_backend(addr, "n2", &data_tier).await;
    wait_for(&progress, |s| {
        s.probes_ok >= ok_before_restart + 5 && s.last_server.as_deref() == Some("n2")
    })
    .await;
    stop_sender.send(()).unwrap();
    let report = load.await.unwrap().unwrap();

    assert!(report.probe_failures() >= 3);
    assert!(report.request_failures() >= 1);
    assert!(report.failures() >= 4);
    let outages = report.outages();
    assert!(!outages.is_empty());
    assert!(outages.iter().any(|o| o.resolved && o.failed_probes >= 1));
    assert!(report.longest_gap() > Duration::ZERO);
    assert!(report.probe_error_counts()[&ErrorKind::ConnectRefused] >= 1);
    let servers: Vec<_> = report
        .served_by()
        .into_iter()
        .map(|span| span.server.unwrap())
        .collect();
    assert_eq!(servers.first().map(String::as_str), Some("n1"));
    assert_eq!(servers.last().map(String::as_str), Some("n2"));
    // The keep-alive workers noticed the dead connections and reconnected.
    assert!(report.connections.iter().all(|c| c.connects >= 2));
    assert!(report.summary().reconnects >= 2);
}

#[tokio::test]
async fn invalid_options_are_refused() {
    let options = LoadOptions {
        probes: Some(ProbeOptions {
            period: Duration::ZERO,
            ..ProbeOptions::default()
        }),
        ..LoadOptions::probes_only("127.0.0.1:9".parse().unwrap(), Duration::from_millis(10))
    };
    let refused = run_load(options, std::future::pending(), Arc::default()).await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn static_file_probes_verify_a_fixed_body() {
    let data_tier = TempFile::new();
    let (addr, _backend) = start_backend("127.0.0.1:0".parse().unwrap(), "n1", &data_tier).await;
    let probe_with = |path: &str, seed: u64| LoadOptions {
        probes: Some(ProbeOptions {
            request: ProbeRequest::StaticFile {
                path: path.into(),
                len: 500,
                seed,
            },
            ..ProbeOptions::default()
        }),
        ..LoadOptions::probes_only(addr, Duration::from_millis(100))
    };
    // The backend's /bytes stands in for a docroot file written by write_expected_file.
    let right = run_load(
        probe_with("/bytes/500?seed=7", 7),
        std::future::pending(),
        Arc::default(),
    )
    .await
    .unwrap();
    assert!(!right.probes.is_empty());
    assert_eq!(right.failures(), 0);
    let wrong = run_load(
        probe_with("/bytes/500?seed=8", 7),
        std::future::pending(),
        Arc::default(),
    )
    .await
    .unwrap();
    assert_eq!(wrong.probe_failures(), wrong.probes.len());
    assert_eq!(
        wrong.probe_error_counts()[&ErrorKind::BadBody],
        wrong.probes.len()
    );
    let missing = run_load(
        probe_with("/nothing", 7),
        std::future::pending(),
        Arc::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        missing.probe_error_counts()[&ErrorKind::BadStatus],
        missing.probes.len()
    );
}

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_download_lasts_its_pace_and_counts_its_bytes() {
    let data_tier = TempFile::new();
    let (addr, _backend) = start_backend("127.0.0.1:0".parse().unwrap(), "n1", &data_tier).await;
    let progress = LoadProgress::default();
    let transfer = Transfer::Download {
        len: 2 * MIB,
        seed: 9,
        bytes_per_second: 4 * MIB,
    };
    assert_eq!(transfer.planned(), Duration::from_millis(500));
    let origin = tokio::time::Instant::now();
    let record = run_transfer(addr, transfer, Duration::from_secs(5), origin, &progress)
        .await
        .unwrap();

    assert!(record.outcome.is_ok(), "{:?}", record.outcome);
    assert!(record.connected);
    assert_eq!(
        record.kind,
        RequestKind::Bytes {
            len: 2 * MIB,
            seed: 9,
            chunked: false
        }
    );
    // Loopback alone would take milliseconds: the pace is what makes it last. The last read
    // piece (64 KiB) is not waited for.
    assert!(
        record.latency >= Duration::from_millis(450),
        "{:?}",
        record.latency
    );
    assert!(
        record.latency < Duration::from_secs(3),
        "{:?}",
        record.latency
    );
    let snapshot = progress.snapshot();
    assert_eq!((snapshot.requests_ok, snapshot.requests_failed), (1, 0));
    assert_eq!(snapshot.last_server.as_deref(), Some("n1"));
    // The body and a reply head of a few hundred bytes; the request line went the other way.
    assert!(
        (2 * MIB..2 * MIB + 1024).contains(&snapshot.bytes_received),
        "{snapshot:?}"
    );
    assert!((1..1024).contains(&snapshot.bytes_sent), "{snapshot:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_committed_once_and_counted_as_it_goes() {
    let data_tier = TempFile::new();
    let (addr, _backend) = start_backend("127.0.0.1:0".parse().unwrap(), "n1", &data_tier).await;
    let progress = Arc::new(LoadProgress::default());
    let upload = SlowUpload {
        len: 100_000,
        pieces: 10,
        gap: Duration::from_millis(30),
    };
    let transfer = Transfer::Upload { seed: 3, upload };
    let running = {
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            let origin = tokio::time::Instant::now();
            run_transfer(addr, transfer, Duration::from_secs(5), origin, &progress).await
        })
    };
    // Half way through, part of the body is out and no reply has come.
    wait_for(&progress, |s| s.bytes_sent >= 40_000).await;
    let midway = progress.snapshot();
    assert!(midway.bytes_sent < 100_000, "{midway:?}");
    assert_eq!(midway.requests_ok + midway.requests_failed, 0);
    let record = running.await.unwrap().unwrap();

    assert!(record.outcome.is_ok(), "{:?}", record.outcome);
    assert!(
        record.latency >= Duration::from_millis(300),
        "{:?}",
        record.latency
    );
    let id = record.commit_id.clone().expect("a commit id");
    let verdict = steadfast_lab::data_tier::check_exactly_once(&data_tier.0, &[id]).unwrap();
    assert!(verdict.holds(), "{verdict:?}");
    assert!(progress.snapshot().bytes_sent > 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_by_the_server_fails_with_the_bytes_it_got() {
    let data_tier = TempFile::new();
    let (addr, backend) = start_backend("127.0.0.1:0".parse().unwrap(), "n1", &data_tier).await;
    let progress = Arc::new(LoadProgress::default());
    let transfer = Transfer::Download {
        len: 4 * MIB,
        seed: 1,
        bytes_per_second: 2 * MIB,
    };
    let running = {
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            let origin = tokio::time::Instant::now();
            run_transfer(addr, transfer, Duration::from_secs(2), origin, &progress).await
        })
    };
    wait_for(&progress, |s| s.bytes_received >= 256 * 1024).await;
    drop(backend);
    let record = running.await.unwrap().unwrap();

    assert!(!record.outcome.is_ok(), "{:?}", record.outcome);
    let received = progress.snapshot().bytes_received;
    assert!(received < 4 * MIB, "{received}");
    assert_eq!(progress.snapshot().requests_failed, 1);
}

#[tokio::test]
async fn transfers_without_a_pace_or_a_body_are_refused() {
    let target = "127.0.0.1:9".parse().unwrap();
    let origin = tokio::time::Instant::now();
    let progress = LoadProgress::default();
    for transfer in [
        Transfer::Download {
            len: MIB,
            seed: 0,
            bytes_per_second: 0,
        },
        Transfer::Download {
            len: 0,
            seed: 0,
            bytes_per_second: MIB,
        },
        Transfer::Upload {
            seed: 0,
            upload: SlowUpload {
                len: 10,
                pieces: 0,
                gap: Duration::ZERO,
            },
        },
    ] {
        let refused =
            run_transfer(target, transfer, Duration::from_secs(1), origin, &progress).await;
        assert!(refused.is_err(), "{transfer:?}");
    }
    assert_eq!(progress.snapshot().bytes_sent, 0);
}
