//! Duplex and simplex through the real daemon in namespace labs: established keep-alive
//! connections and in-flight requests survive the primary's crash; the backup is the only way
//! in (I1). Needs root (network namespaces).

mod common;

use std::time::{Duration, Instant};

use common::{BackgroundLoad, Lab};
use steadfast_lab::load::{KeepAliveOptions, LoadOptions, LoadReport, Outcome};
use steadfast_lab::webservers::{DOCROOT_SEED, DOCROOT_SIZES};
use steadfast_lab::{BackendKind, CrashKind, Mode};

fn keep_alive_load(lab: &Lab, connections: usize, limit: Duration) -> LoadOptions {
    LoadOptions {
        target: lab.target(),
        duration: limit,
        probes: None,
        keep_alive: Some(KeepAliveOptions {
            connections,
            request_timeout: Duration::from_secs(5),
            sizes: match lab.backend {
                BackendKind::Builtin => vec![1024, 10 * 1024, 100 * 1024, 1024 * 1024],
                _ => DOCROOT_SIZES.to_vec(),
            },
            include_uuid: lab.backend == BackendKind::Builtin,
            fixed_seed: (lab.backend != BackendKind::Builtin).then_some(DOCROOT_SEED),
            pause: Duration::from_millis(2),
            reconnect_delay: Duration::from_millis(10),
        }),
    }
}

fn assert_clean(report: &LoadReport, what: &str) {
    let summary = report.summary();
    let failures: Vec<String> = report
        .connections
        .iter()
        .flat_map(|c| {
            c.requests.iter().filter_map(move |r| match &r.outcome {
                Outcome::Err(failure) => Some(format!(
                    "connection {} at {:?} after {:?}: {}",
                    c.index, r.start, r.latency, failure.detail
                )),
                Outcome::Ok { .. } => None,
            })
        })
        .take(10)
        .collect();
    for failure in &failures {
        eprintln!("{what}: {failure}");
    }
    assert!(
        report.requests() > 0,
        "{what}: the load made no request: {summary:?}"
    );
    assert_eq!(
        report.failures(),
        0,
        "{what}: client errors {:?}; summary {summary:?}",
        report.error_counts()
    );
}

#[test]
fn simplex_serves_keep_alive_connections_without_errors() {
    let lab = Lab::up_in_mode("sx", 1, false, BackendKind::Builtin, None, Mode::Simplex);
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 20, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    assert_clean(&report, "simplex");
    let status = lab.daemon_status("n1");
    let plane = &status["data_plane"];
    assert_eq!(plane["mode"], "simplex", "{status}");
    assert!(
        plane["replies"].as_u64().unwrap_or(0) >= report.requests() as u64,
        "every reply went through the proxy: {plane}"
    );
}

/// One host crash of the primary under keep-alive load: no client error, and the new
/// primary reports the connections it restored.
#[test]
fn duplex_keeps_established_connections_through_a_primary_host_crash() {
    let lab = Lab::up_in_mode("dx", 2, true, BackendKind::Builtin, Some(10), Mode::Duplex);
    let primary = primary_of(&lab);
    let backup = if primary == "n1" { "n2" } else { "n1" };
    wait_backup_joined(&lab, &primary, 0);
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 50, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(1500));
    let crashed_at = Instant::now();
    steadfast_lab::crash(lab.name(), &primary, CrashKind::Host).expect("crash");
    assert!(
        common::wait_until(Duration::from_secs(3), || lab.holders_except(&primary)
            == vec![backup]),
        "{backup} should take over; holders {:?}",
        lab.holders()
    );
    eprintln!(
        "{backup} holds the address {:?} after the crash",
        crashed_at.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    let status = lab.daemon_status(backup);
    eprintln!("{backup} after takeover: {}", status["data_plane"]);
    assert_clean(&report, "duplex host crash");
    let plane = &status["data_plane"];
    assert_eq!(plane["takeovers"], 1, "{plane}");
    assert!(
        plane["connections_restored"].as_u64().unwrap_or(0) >= 1,
        "{plane}"
    );
}

/// Sends `request` on a fresh connection from the client namespace and reads until the server
/// closes (or 3 s pass).
fn exchange(lab: &Lab, request: Vec<u8>) -> Vec<u8> {
    use std::io::{Read, Write};
    let target = lab.target();
    steadfast_lab::run_in_namespace(&lab.info.client_ns, move || {
        let mut stream =
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        stream.write_all(&request).expect("send");
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        reply
    })
    .expect("enter the client namespace")
}

#[test]
fn malformed_requests_get_400_and_do_not_disturb_other_connections() {
    let lab = Lab::up_in_mode("bx", 2, true, BackendKind::Builtin, None, Mode::Duplex);
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 10, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(500));
    let smuggling = b"POST /commit HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec();
    let bad_chunk =
        b"POST /commit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
    let garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n".to_vec();
    for (what, request) in [
        ("smuggling", smuggling),
        ("bad chunk", bad_chunk),
        ("garbage", garbage),
    ] {
        let reply = exchange(&lab, request);
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{what}: expected a 400, got {text:?}"
        );
    }
    // A good request after a good one on the same connection still works (keep-alive intact).
    let reply = exchange(
        &lab,
        b"GET /bytes/100?seed=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /uuid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(
        text.matches("HTTP/1.1 200").count(),
        2,
        "pipelined pair: {text:?}"
    );
    let report = load.stop();
    assert_clean(&report, "load beside malformed requests");
    let plane = &lab.daemon_status(&primary_of(&lab))["data_plane"];
    assert!(plane["bad_requests"].as_u64().unwrap_or(0) >= 3, "{plane}");
}

/// The longest time any keep-alive request of the run took (its client-visible stall).
fn longest_request(report: &LoadReport) -> Duration {
    report
        .connections
        .iter()
        .flat_map(|c| c.requests.iter().map(|r| r.latency))
        .max()
        .unwrap_or_default()
}

/// Waits until `primary` reports a backup protecting it.
fn wait_backup_joined(lab: &Lab, primary: &str, joined_before: u64) {
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            lab.daemon_status(primary)["data_plane"]["backups_joined"]
                .as_u64()
                .unwrap_or(0)
                > joined_before
        }),
        "no backup joined {primary}: {}",
        lab.daemon_status(primary)
    );
}

fn primary_of(lab: &Lab) -> String {
    let holders = lab.holders();
    assert_eq!(holders.len(), 1, "one holder expected: {holders:?}");
    holders[0].clone()
}

/// Host, process and freeze crashes of whichever node is primary, healing between them: every
/// established connection carries on, every request gets exactly its reply.
fn crash_cycle(backend: BackendKind, kinds: &[CrashKind]) {
    let lab = Lab::up_in_mode("dc", 2, true, backend, Some(10), Mode::Duplex);
    let mut primary = primary_of(&lab);
    wait_backup_joined(&lab, &primary, 0);
    let load =
        BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 100, Duration::from_secs(120)));
    std::thread::sleep(Duration::from_millis(1000));
    for (round, &kind) in kinds.iter().enumerate() {
        let other = if primary == "n1" { "n2" } else { "n1" };
        let joined = lab.daemon_status(other)["data_plane"]["backups_joined"]
            .as_u64()
            .unwrap_or(0);
        let backup_plane = lab.daemon_status(other)["data_plane"].clone();
        eprintln!(
            "round {round}: before the crash {primary} protects {} connections, {other} holds {} \
             (frames refused {}, dropped {} {})",
            lab.daemon_status(&primary)["data_plane"]["protected_connections"],
            backup_plane["protected_connections"],
            backup_plane["frames_refused"],
            backup_plane["frames_dropped"],
            backup_plane["drop_reasons"],
        );
        let crash = steadfast_lab::crash(lab.name(), &primary, kind).expect("crash");
        eprintln!(
            "round {round}: crashed at {:?} into the load",
            load.started.elapsed()
        );
        assert_eq!(crash.host, primary);
        assert!(
            common::wait_until(Duration::from_secs(3), || lab.holders_except(&primary)
                == vec![other.to_string()]),
            "round {round} ({kind}): {other} should take over; holders {:?}",
            lab.holders()
        );
        std::thread::sleep(Duration::from_millis(700));
        let takeover = lab.daemon_status(other)["data_plane"].clone();
        eprintln!(
            "round {round}: {kind} crash of {primary}: {other} restored {} lost {} {} in {} µs",
            takeover["connections_restored"],
            takeover["connections_lost"],
            takeover["lost_reasons"],
            takeover["last_takeover_us"]
        );
        steadfast_lab::heal(lab.name(), &primary).expect("heal");
        eprintln!(
            "round {round}: healed at {:?} into the load",
            load.started.elapsed()
        );
        wait_backup_joined(&lab, other, joined);
        std::thread::sleep(Duration::from_millis(700));
        let healed = lab.daemon_status(other)["data_plane"].clone();
        eprintln!(
            "round {round}: {primary} healed; {other} adopted {} skipped {} protected {}",
            healed["adopted"], healed["adoptions_skipped"], healed["protected_connections"]
        );
        primary = other.to_string();
    }
    let report = load.stop();
    eprintln!(
        "{backend}: {} requests, longest request {:?}, errors {:?}",
        report.requests(),
        longest_request(&report),
        report.error_counts()
    );
    assert_clean(&report, &format!("{backend} crash cycle"));
}

#[test]
fn duplex_survives_host_process_and_freeze_crashes_builtin() {
    crash_cycle(
        BackendKind::Builtin,
        &[
            CrashKind::Host,
            CrashKind::Process,
            CrashKind::Freeze,
            CrashKind::Host,
        ],
    );
}

#[test]
fn duplex_survives_host_process_and_freeze_crashes_nginx() {
    crash_cycle(
        BackendKind::Nginx,
        &[CrashKind::Host, CrashKind::Process, CrashKind::Freeze],
    );
}
