//! Address failover in namespace labs, through the real daemon: every crash kind, heal without
//! preemption, and the failover gap under a client opening a new connection every 10 ms.
//! Needs root (network namespaces).

mod common;

use std::time::Duration;

use common::{median, BackgroundLoad, Lab};
use steadfast_lab::{BackendKind, CrashKind};
use steadfast_os::nftables::{Family, NftSocket};

/// Default heartbeat (50 ms) × miss count: what a backup waits before it may take over.
const DEFAULT_DETECTION: Duration = Duration::from_millis(150);
/// Slack for scheduling on two shared cores (the assertion's margin; the figure is printed).
const MARGIN: Duration = Duration::from_millis(100);
const PROBE_PERIOD: Duration = Duration::from_millis(10);

fn crash_and_heal(kind: CrashKind, backend: BackendKind) {
    let lab = Lab::up(
        &format!("f{}", &kind.as_str()[..2]),
        3,
        false,
        backend,
        None,
    );
    assert_eq!(
        lab.info.primary.as_deref(),
        Some(format!("{}-n1", lab.name()).as_str())
    );
    let load = BackgroundLoad::start(
        &lab,
        PROBE_PERIOD,
        Duration::from_millis(300),
        Duration::from_secs(30),
    );
    load.wait_for_successes(0, 40, Duration::from_secs(5), "before the crash");
    let crash = steadfast_lab::crash(lab.name(), "primary", kind).expect("crash");
    assert_eq!(crash.host, "n1");
    // A crashed host's kernel (host, process, freeze) may still carry the address: nobody
    // reaches it any more (host) or the clients follow the new owner's gratuitous ARP.
    assert!(
        common::wait_until(Duration::from_secs(3), || lab.holders_except("n1")
            == vec!["n2"]),
        "{kind}: n2 (the lowest-id healthy node) should serve; holders {:?}",
        lab.holders()
    );
    // Served again, for longer than a probe's timeout (300 ms at one probe per 10 ms): every
    // probe the crash caught has failed and been counted before the heal.
    load.wait_for_successes(
        load.successes(),
        60,
        Duration::from_secs(5),
        "after the takeover",
    );
    let before_heal = load.progress.snapshot();
    steadfast_lab::heal(lab.name(), "n1").expect("heal");
    // A window in which nothing may happen: the healed node must not take the address back.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        lab.holders(),
        vec!["n2".to_string()],
        "{kind}: the healed node must not take the address back (no preemption)"
    );
    let status = lab.daemon_status("n1");
    assert_eq!(
        status["role"], "backup",
        "{kind}: healed n1 rejoins as backup: {status}"
    );
    let report = load.stop();
    let last_server = report.served_by().last().and_then(|s| s.server.clone());
    assert_eq!(
        last_server.as_deref(),
        Some("n2"),
        "{kind}: the client ends up served by n2"
    );
    let after = report.probe_failures();
    let outages = report.outages();
    let longest = report.longest_gap();
    eprintln!(
        "{kind} crash ({backend}): longest gap for new connections {longest:?}, outages {:?}",
        outages.iter().map(|o| o.duration).collect::<Vec<_>>()
    );
    assert!(
        !outages.is_empty() || kind == CrashKind::Freeze || kind == CrashKind::Process,
        "{kind}: a crash of the serving host must show (briefly) in the probes"
    );
    let detection = match kind {
        // The health check (50 ms × fall 2 in the lab) sees the backend die; the node then
        // releases the address and the backup takes it at once.
        CrashKind::Backend => Duration::from_millis(100),
        _ => DEFAULT_DETECTION,
    };
    assert!(
        longest <= detection + Duration::from_millis(50) + MARGIN,
        "{kind}: new connections failed for {longest:?} (detection {detection:?})"
    );
    assert!(
        outages.iter().all(|o| o.resolved),
        "{kind}: service must come back: {outages:?}"
    );
    assert_eq!(
        after as u64, before_heal.probes_failed,
        "{kind}: no probe may fail while the healed node rejoins"
    );
}

#[test]
fn host_crash_moves_the_address_to_the_lowest_healthy_node() {
    crash_and_heal(CrashKind::Host, BackendKind::Builtin);
}

#[test]
fn process_crash_moves_the_address() {
    crash_and_heal(CrashKind::Process, BackendKind::Builtin);
}

#[test]
fn freeze_moves_the_address() {
    crash_and_heal(CrashKind::Freeze, BackendKind::Builtin);
}

#[test]
fn link_cut_moves_the_address() {
    crash_and_heal(CrashKind::Link, BackendKind::Builtin);
}

#[test]
fn backend_crash_moves_the_address() {
    crash_and_heal(CrashKind::Backend, BackendKind::Builtin);
}

#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn every_crash_kind_with_nginx() {
    for kind in [
        CrashKind::Host,
        CrashKind::Process,
        CrashKind::Freeze,
        CrashKind::Link,
        CrashKind::Backend,
    ] {
        crash_and_heal(kind, BackendKind::Nginx);
    }
}

fn daemon_pid(lab: &Lab, host: &str) -> i32 {
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lab.info.state_dir.join("state.json")).expect("state.json"),
    )
    .expect("state.json is JSON");
    state["hosts"][host]["daemon_pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no daemon pid for {host}: {state}")) as i32
}

/// SIGTERM is a planned switchover: the primary releases the address and tells the peers, so
/// the backup takes over at once instead of waiting for the lease to run out. The notify hook
/// sees every role change.
#[test]
fn sigterm_hands_the_address_over_at_once() {
    let lab = Lab::up("sw", 3, false, BackendKind::Builtin, None);
    let load = BackgroundLoad::start(
        &lab,
        PROBE_PERIOD,
        Duration::from_millis(300),
        Duration::from_secs(20),
    );
    load.wait_for_successes(0, 20, Duration::from_secs(5), "before the SIGTERM");
    let pid = daemon_pid(&lab, "n1");
    let sent = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the daemon of n1");
    assert!(
        lab.wait_holder("n2", Duration::from_secs(2)),
        "n2 should take over; holders {:?}",
        lab.holders()
    );
    let handover = sent.elapsed();
    load.wait_for_successes(
        load.successes(),
        20,
        Duration::from_secs(5),
        "after the switchover",
    );
    let report = load.stop();
    eprintln!(
        "planned switchover: n2 held the address {handover:?} after SIGTERM; longest gap {:?}",
        report.longest_gap()
    );
    assert!(
        handover < DEFAULT_DETECTION,
        "a planned switchover must not wait for failure detection ({handover:?})"
    );
    let hooks = std::fs::read_to_string(lab.info.state_dir.join("hooks.log")).expect("hooks.log");
    assert!(
        hooks.contains("1 primary"),
        "n1's hook ran when it became primary:\n{hooks}"
    );
    assert!(
        hooks.contains("1 backup") && hooks.contains("shutdown"),
        "n1's hook ran on shutdown:\n{hooks}"
    );
    assert!(
        hooks.contains("2 primary"),
        "n2's hook ran when it took over:\n{hooks}"
    );
}

/// Crashes the serving host `crashes` times under the probe load (healing in between) and
/// returns the new-connection gaps, one per outage.
fn crash_series(tag: &str, heartbeat_ms: Option<u32>, crashes: u32) -> Vec<Duration> {
    let lab = Lab::up(tag, 3, false, BackendKind::Builtin, heartbeat_ms);
    let load = BackgroundLoad::start(
        &lab,
        PROBE_PERIOD,
        Duration::from_millis(200),
        Duration::from_secs(120),
    );
    for round in 0..crashes {
        // Served for a while (and a varying while, so the crashes fall at different moments
        // of the heartbeat cycle) before each crash.
        load.wait_for_successes(
            load.successes(),
            30 + u64::from(round * 37) % 10,
            Duration::from_secs(5),
            &format!("round {round}: before the crash"),
        );
        let crash = steadfast_lab::crash(lab.name(), "primary", CrashKind::Host).expect("crash");
        let crashed = crash.host.clone();
        assert!(
            common::wait_until(Duration::from_secs(3), || lab
                .holders_except(&crashed)
                .len()
                == 1),
            "round {round}: nobody took over from {crashed}"
        );
        load.wait_for_successes(
            load.successes(),
            20,
            Duration::from_secs(5),
            &format!("round {round}: after the takeover"),
        );
        steadfast_lab::heal(lab.name(), &crashed).expect("heal");
    }
    load.wait_for_successes(load.successes(), 20, Duration::from_secs(5), "at the end");
    let report = load.stop();
    let gaps: Vec<Duration> = report.outages().iter().map(|o| o.duration).collect();
    assert!(
        gaps.len() as u32 >= crashes * 3 / 4,
        "expected an outage per crash, got {} for {crashes} crashes",
        gaps.len()
    );
    gaps
}

/// The figure keepalived is compared with: median gap over 20 host crashes at a 10 ms heartbeat.
#[test]
fn twenty_host_crashes_at_10ms_heartbeat() {
    let mut gaps = crash_series("f20", Some(10), 20);
    let max = *gaps.iter().max().unwrap();
    let med = median(&mut gaps);
    eprintln!("20 host crashes at 10 ms heartbeat: new-connection gap median {med:?}, max {max:?}");
    // keepalived's fastest stable setting measured 29 ms median client outage on this kind of
    // lab; the margin absorbs scheduling noise on two shared cores (the figure is printed).
    assert!(
        med <= Duration::from_millis(29) + Duration::from_millis(10),
        "median gap {med:?} is worse than keepalived's 29 ms (with 10 ms margin)"
    );
}

#[test]
fn twenty_host_crashes_at_default_heartbeat() {
    let mut gaps = crash_series("fd20", None, 20);
    let max = *gaps.iter().max().unwrap();
    let med = median(&mut gaps);
    eprintln!(
        "20 host crashes at the default heartbeat (50 ms x 3): new-connection gap median {med:?}, max {max:?}"
    );
    assert!(
        max <= DEFAULT_DETECTION + Duration::from_millis(50) + MARGIN,
        "max gap {max:?} exceeds detection + 50 ms (+ margin)"
    );
}

/// I5, daemon death is node death: after `kill -9` of the daemon its kernel must stop
/// answering for the address (the nftables owner table vanished with the process), even though
/// the address is still configured there and the backend still runs.
#[test]
fn a_dead_daemon_leaves_its_kernel_mute_for_the_address() {
    let lab = Lab::up("fen", 2, true, BackendKind::Builtin, None);
    let n1 = format!("{}-n1", lab.name());
    // Whether the owner table is in the namespace, read from its kernel (the lab names the
    // group after itself).
    let live_table = steadfast_os::fence::FenceTables::for_group(lab.name()).live;
    let live = |ns: &str| {
        let live_table = live_table.clone();
        steadfast_lab::run_in_namespace(ns, move || {
            NftSocket::open()?.table(Family::Inet, &live_table)
        })
        .unwrap_or_else(|e| panic!("entering {ns}: {e}"))
        .unwrap_or_else(|e| panic!("reading the owner table in {ns}: {e}"))
        .is_some()
    };
    assert!(live(&n1), "a running daemon holds its owner table");
    steadfast_lab::crash(lab.name(), "n1", CrashKind::Process).expect("crash");
    assert!(
        common::wait_until(Duration::from_secs(2), || !live(&n1)),
        "the owner table must vanish with the daemon"
    );
    assert!(
        lab.wait_holder("n2", Duration::from_secs(3)) || lab.holders_except("n1") == vec!["n2"]
    );
    assert!(
        lab.holders().contains(&"n1".to_string()),
        "the dead daemon left the address configured (the case the fence is for)"
    );
    // Only n1 could answer now: cut the client off from n2 and forget the VIP's MAC.
    steadfast_lab::partition(lab.name(), "client", "n2").expect("partition");
    let _ = std::process::Command::new("ip")
        .args(["-n", &lab.info.client_ns, "neigh", "flush", "all"])
        .status();
    let reply = steadfast_lab::http_get_in_namespace(
        &lab.info.client_ns,
        lab.target(),
        "/health",
        Duration::from_millis(700),
    );
    assert!(
        reply.is_err(),
        "n1's kernel answered for the VIP after its daemon died: {reply:?}"
    );
    steadfast_lab::unpartition(lab.name(), "client", "n2").expect("unpartition");
    steadfast_lab::heal(lab.name(), "n1").expect("heal");
    assert!(
        common::wait_until(Duration::from_secs(3), || live(&n1)),
        "the restarted daemon re-arms the switch"
    );
}
