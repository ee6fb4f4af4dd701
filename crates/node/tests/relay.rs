//! Link relay (issue 19) in namespace labs, through the real daemon: a primary whose public
//! link loses its carrier, or turns into a black hole, keeps serving through its sibling over the private network, with no
//! failover and no failed request, and takes its own link back when it returns.
//! Needs root (network namespaces).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{wait_until, BackgroundLoad, Lab};
use steadfast_lab::{BackendKind, CrashKind, Mode};
use steadfast_os::nftables::{Family, NftSocket};

const PROBE_PERIOD: Duration = Duration::from_millis(10);
/// A probe slower than this fails. A relay taken over within its budget never comes near it:
/// only a request that found no path at all would (TCP's first SYN retransmission is at 1 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `ip -n NS ARGS`'s output.
fn ip_output(namespace: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", namespace])
        .args(args)
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The relay's kernel state on `host`: its proxy ARP entries and its /32 routes via `eth1`.
fn relay_state(lab: &Lab, host: &str) -> (String, String) {
    let ns = format!("{}-{host}", lab.name());
    let proxies = ip_output(&ns, &["neigh", "show", "proxy"]);
    let routes = ip_output(&ns, &["route", "show", "dev", "eth1"]);
    let host_routes = routes
        .lines()
        .filter(|l| l.contains(" via "))
        .collect::<Vec<_>>()
        .join("\n");
    (proxies.trim().to_string(), host_routes)
}

#[test]
#[ignore = "needs root (network namespaces); about 10 s"]
fn a_primary_that_loses_its_public_carrier_serves_through_its_sibling() {
    cut_and_restore(CrashKind::LinkDown, Mode::Unreplicated);
}

/// Duplex: the sibling is also the backup, which receives the client's frames first and
/// replicates; the primary's replication stream to it and its replies go over the private link.
#[test]
#[ignore = "needs root (network namespaces); about 10 s"]
fn a_duplex_primary_that_loses_its_public_carrier_serves_through_its_sibling() {
    cut_and_restore(CrashKind::LinkDown, Mode::Duplex);
}

#[test]
#[ignore = "needs root (network namespaces); about 10 s"]
fn a_duplex_primary_whose_public_link_turns_into_a_black_hole_serves_through_its_sibling() {
    cut_and_restore(CrashKind::LinkBlackhole, Mode::Duplex);
}

#[test]
#[ignore = "needs root (network namespaces); about 10 s"]
fn a_primary_whose_public_link_turns_into_a_black_hole_serves_through_its_sibling() {
    cut_and_restore(CrashKind::LinkBlackhole, Mode::Unreplicated);
}

/// Cuts the primary's public link the way `kind` says under a probe load, then restores it:
/// no failover, no failed probe, and the sibling undoes everything after.
fn cut_and_restore(kind: CrashKind, mode: Mode) {
    let tag = match (kind, mode) {
        (CrashKind::LinkDown, Mode::Duplex) => "rdd",
        (_, Mode::Duplex) => "rdb",
        (CrashKind::LinkDown, _) => "rld",
        _ => "rlb",
    };
    let lab = Lab::up_with(tag, 2, BackendKind::Builtin, |opts| {
        opts.witness = true;
        opts.relay = true;
        opts.mode = mode;
    });
    let primary = lab.info.primary.clone().expect("a primary after up");
    assert_eq!(primary, format!("{}-n1", lab.name()));
    let load = BackgroundLoad::start(&lab, PROBE_PERIOD, PROBE_TIMEOUT, Duration::from_secs(40));
    load.wait_for_successes(0, 50, Duration::from_secs(5), "before the cut");

    steadfast_lab::crash(lab.name(), "n1", kind).expect("cut n1's public link");
    let cut_at = load.started.elapsed();
    let before = load.successes();
    load.wait_for_successes(before, 100, Duration::from_secs(8), "through the sibling");
    // Relayed, not failed over: n1 keeps the address, n2 answers ARP for it on n1's behalf.
    assert_eq!(lab.holders(), vec!["n1".to_string()], "{}", lab.situation());
    let (proxies, routes) = relay_state(&lab, "n2");
    assert!(
        proxies.contains("10.77.0.100") && proxies.contains("10.77.0.11"),
        "n2 answers ARP for n1's addresses: {proxies:?}"
    );
    assert!(
        routes.contains("10.77.0.100 via 10.78.0.11"),
        "n2 routes the VIP to n1 over the private network: {routes:?}"
    );
    // Two seconds of the load entirely through the sibling.
    let through = load.successes();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        load.successes() >= through + 100,
        "the load went on through the sibling"
    );

    steadfast_lab::heal(lab.name(), "n1").expect("restore n1's public link");
    let restored_at = load.started.elapsed();
    // The link is probed back (rise 2) and held down 500 ms before traffic returns to it;
    // then n2 undoes everything it installed.
    let undone = wait_until(Duration::from_secs(5), || {
        let (proxies, routes) = relay_state(&lab, "n2");
        proxies.is_empty() && routes.is_empty()
    });
    assert!(undone, "n2 still relays: {:?}", relay_state(&lab, "n2"));
    let after = load.successes();
    load.wait_for_successes(after, 100, Duration::from_secs(5), "after failback");
    let report = load.stop();
    let summary = report.summary();
    let slowest_after = |from: Duration| {
        report
            .probes
            .iter()
            .filter(|p| p.start >= from)
            .map(|p| p.latency)
            .max()
            .unwrap_or_default()
    };
    println!(
        "relay {kind} ({mode}): {} probes, {} failed, longest gap {:?}, slowest probe after the cut \
         {:?}, after the restore {:?}",
        summary.probes,
        summary.probe_failures,
        summary.longest_gap,
        slowest_after(cut_at),
        slowest_after(restored_at)
    );
    assert_eq!(
        summary.probe_failures, 0,
        "errors through the cut and the failback: {:?}",
        summary.probe_errors
    );
    assert_eq!(lab.holders(), vec!["n1".to_string()], "{}", lab.situation());
}

/// Whether the relay's owner table is in `namespace`, read from its kernel.
fn relay_fence_live(namespace: &str) -> bool {
    steadfast_lab::run_in_namespace(namespace, || {
        NftSocket::open()?.table(Family::Inet, steadfast_os::relay_fence::RELAY_LIVE_TABLE)
    })
    .unwrap_or_else(|e| panic!("entering {namespace}: {e}"))
    .unwrap_or_else(|e| panic!("reading the relay's owner table in {namespace}: {e}"))
    .is_some()
}

#[test]
#[ignore = "needs root (network namespaces); about 5 s"]
fn a_responder_killed_while_relaying_stops_answering_for_the_node() {
    let lab = Lab::up_with("rlk", 2, BackendKind::Builtin, |opts| {
        opts.witness = true;
        opts.relay = true;
    });
    let client = lab.info.client_ns.clone();
    let n2 = format!("{}-n2", lab.name());
    let get =
        |timeout| steadfast_lab::http_get_in_namespace(&client, lab.target(), "/", timeout).is_ok();
    assert!(
        get(Duration::from_secs(2)),
        "the VIP answers before the cut"
    );
    steadfast_lab::crash(lab.name(), "n1", CrashKind::LinkDown).expect("cut n1's public link");
    let relaying = wait_until(Duration::from_secs(3), || {
        let (proxies, _) = relay_state(&lab, "n2");
        proxies.contains("10.77.0.100")
    });
    assert!(relaying, "n2 relays for n1: {:?}", relay_state(&lab, "n2"));
    assert!(get(Duration::from_secs(2)), "n1 answers through n2");
    assert!(
        relay_fence_live(&n2),
        "a relaying daemon holds its relay owner table"
    );

    steadfast_lab::crash(lab.name(), "n2", CrashKind::Process).expect("kill n2's daemon");
    let killed = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || !relay_fence_live(&n2)),
        "the relay's owner table must vanish with the daemon"
    );
    let fenced_after = killed.elapsed();
    // The dead daemon's route and proxy entries are still there: its kernel must not use them.
    let (proxies, _) = relay_state(&lab, "n2");
    assert!(proxies.contains("10.77.0.100"), "left behind: {proxies:?}");
    // The client's cache names n2's MAC for n1's address (n2 announced it), and n1 still
    // routes through n2 for the rest of its lease (300 ms from its last refresh, at most
    // 100 ms before the kill): only n2's kernel can stop this request now.
    assert!(
        !get(Duration::from_millis(150)),
        "n2's kernel still forwards for n1 after its daemon died"
    );

    println!(
        "relay responder killed: its kernel fenced the relayed addresses after {fenced_after:?}"
    );
}

#[test]
#[ignore = "needs root (network namespaces); about 10 s"]
fn a_primary_cut_from_both_networks_fails_over_and_nothing_relays_for_it() {
    let lab = Lab::up_with("rl2", 2, BackendKind::Builtin, |opts| {
        opts.witness = true;
        opts.relay = true;
    });
    assert_eq!(lab.holders(), vec!["n1".to_string()], "{}", lab.situation());
    let switch = format!("{}-sw", lab.name());
    let n1 = format!("{}-n1", lab.name());
    // The private cable first, then the public one: n1 has no sibling to ask when its public
    // link goes, as with both cables of a host pulled at once.
    let out = Command::new("ip")
        .args(["-n", &switch, "link", "set", "n1p", "down"])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "cutting n1's private cable: {out:?}");
    steadfast_lab::crash(lab.name(), "n1", CrashKind::LinkDown).expect("cut n1's public link");
    let cut = std::time::Instant::now();
    // n2 takes over as from any failed host: n1 can renew its lease with nobody.
    assert!(
        wait_until(Duration::from_secs(5), || lab.holders()
            == vec!["n2".to_string()]),
        "n2 alone should serve: {}",
        lab.situation()
    );
    let took = cut.elapsed();
    // Nothing relays: n2 serves the address itself, answers ARP for nobody, and n1 routes
    // nothing through it.
    let (proxies, routes) = relay_state(&lab, "n2");
    assert!(
        proxies.is_empty() && routes.is_empty(),
        "n2 relays for n1 as well as serving: {proxies:?} {routes:?}"
    );
    let rules = ip_output(&n1, &["rule", "show"]);
    assert!(
        !rules.contains("lookup 7413"),
        "n1 routes through a sibling it cannot reach: {rules}"
    );
    println!("relay both links cut: n2 served alone after {took:?}");
}

#[test]
#[ignore = "needs root (network namespaces); about 10 s"]
fn a_relaying_primary_that_loses_its_private_link_too_fails_over_and_the_relay_ends() {
    let lab = Lab::up_with("rl3", 2, BackendKind::Builtin, |opts| {
        opts.witness = true;
        opts.relay = true;
    });
    assert_eq!(lab.holders(), vec!["n1".to_string()], "{}", lab.situation());
    steadfast_lab::crash(lab.name(), "n1", CrashKind::LinkDown).expect("cut n1's public link");
    assert!(
        wait_until(Duration::from_secs(3), || relay_state(&lab, "n2")
            .0
            .contains("10.77.0.100")),
        "n2 relays for n1: {:?}",
        relay_state(&lab, "n2")
    );
    let switch = format!("{}-sw", lab.name());
    let out = Command::new("ip")
        .args(["-n", &switch, "link", "set", "n1p", "down"])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "cutting n1's private cable: {out:?}");
    let cut = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || lab.holders()
            == vec!["n2".to_string()]),
        "n2 alone should serve: {}",
        lab.situation()
    );
    let took = cut.elapsed();
    // n1's lease at n2 is no longer refreshed: n2 undoes the relay within it (300 ms) and
    // serves the address itself, relaying nothing for anybody.
    assert!(
        wait_until(Duration::from_secs(2), || {
            let (proxies, routes) = relay_state(&lab, "n2");
            proxies.is_empty() && routes.is_empty()
        }),
        "n2 still relays for n1 while serving: {:?}",
        relay_state(&lab, "n2")
    );
    let relay_ended = cut.elapsed();
    println!(
        "relay then private cut: n2 served alone after {took:?}, its relay for n1 ended after \
         {relay_ended:?}"
    );
}

/// Duplex keeps its promise through a relay: the backup that relays for the primary also logs
/// every frame of the connections carried through it, so when the relaying primary's host then
/// crashes, the backup carries those connections on with no client error. The replication
/// stream must survive the cut: it failed here one run in five while the segments the primary
/// sent into the dead link waited in its neighbour queue (`RelayKernel::flush_neighbours`).
#[test]
#[ignore = "needs root (network namespaces); about 15 s"]
fn a_duplex_backup_relaying_for_its_primary_carries_its_connections_on_after_a_crash() {
    use steadfast_lab::load::{KeepAliveOptions, LoadOptions, Outcome};
    let lab = Lab::up_with("rdc", 2, BackendKind::Builtin, |opts| {
        opts.witness = true;
        opts.relay = true;
        opts.mode = Mode::Duplex;
    });
    assert_eq!(lab.holders(), vec!["n1".to_string()], "{}", lab.situation());
    let load = BackgroundLoad::start_with(
        &lab,
        LoadOptions {
            target: lab.target(),
            duration: Duration::from_secs(40),
            probes: None,
            keep_alive: Some(KeepAliveOptions {
                connections: 20,
                request_timeout: Duration::from_secs(5),
                sizes: vec![1024, 100 * 1024],
                include_uuid: true,
                pause: Duration::from_millis(2),
                reconnect_delay: Duration::from_millis(10),
                ..Default::default()
            }),
        },
    );
    load.wait_for_successes(0, 200, Duration::from_secs(10), "before the cut");
    steadfast_lab::crash(lab.name(), "n1", CrashKind::LinkDown).expect("cut n1's public link");
    assert!(
        wait_until(Duration::from_secs(3), || relay_state(&lab, "n2")
            .0
            .contains("10.77.0.100")),
        "n2 relays for n1: {:?}",
        relay_state(&lab, "n2")
    );
    load.wait_for_successes(
        load.successes(),
        200,
        Duration::from_secs(10),
        "through the sibling",
    );
    assert_eq!(lab.holders(), vec!["n1".to_string()], "{}", lab.situation());
    let relayed = lab.daemon_status("n1");
    assert_eq!(
        relayed["data_plane"]["backup_losses"], 0,
        "the replication stream to n2 went on over the private link: {}",
        relayed["data_plane"]
    );

    // n1's host dies while relaying (the lab takes one crash at a time, and n1's public link
    // is already cut): frozen first, then off its private cable, then killed, so that the
    // killed processes' resets reach nobody, as with a power loss.
    let n1 = format!("{}-n1", lab.name());
    let signal_all = |signal: &str| {
        for pid in steadfast_lab::pids_in_namespace(&n1) {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    };
    signal_all("-STOP");
    let switch = format!("{}-sw", lab.name());
    let out = Command::new("ip")
        .args(["-n", &switch, "link", "set", "n1p", "down"])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "cutting n1's private cable: {out:?}");
    let crashed = std::time::Instant::now();
    signal_all("-KILL");
    assert!(
        wait_until(Duration::from_secs(5), || lab.holders_except("n1")
            == vec!["n2".to_string()]),
        "n2 should take over: {}",
        lab.situation()
    );
    let took = crashed.elapsed();
    load.wait_for_successes(
        load.successes(),
        200,
        Duration::from_secs(10),
        "after the takeover",
    );
    let report = load.stop();
    let plane = lab.daemon_status("n2")["data_plane"].clone();
    let failures: Vec<String> = report
        .connections
        .iter()
        .flat_map(|c| &c.requests)
        .filter_map(|r| match &r.outcome {
            Outcome::Err(f) => Some(format!("at {:?}: {}", r.start, f.detail)),
            Outcome::Ok { .. } => None,
        })
        .take(10)
        .collect();
    println!(
        "duplex relay then crash: n2 took over after {took:?}, {} requests, {} failed, \
         restored {}",
        report.requests(),
        report.failures(),
        plane["connections_restored"]
    );
    assert_eq!(report.failures(), 0, "client errors: {failures:?}");
    assert_eq!(plane["takeovers"], 1, "{plane}");
    assert!(
        plane["connections_restored"].as_u64().unwrap_or(0) >= 1,
        "{plane}"
    );
}
