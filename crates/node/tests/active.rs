//! Active mode with the redis backend: every member runs its own redis-server, the primary
//! orders the updates to all of them and spreads the reads. Needs root (network namespaces)
//! and redis-server (the interop tier, hence `#[ignore]`; CI runs it with --include-ignored).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Lab;
use steadfast_lab::redis_verify::{self, VerifyOptions};
use steadfast_lab::{BackendKind, Mode};

const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the replicas may take to deliver what the primary ordered once the load stops.
const CATCH_UP: Duration = Duration::from_secs(5);
/// The digest `DEBUG DIGEST` gives an empty dataset.
const EMPTY_DIGEST: &str = "0000000000000000000000000000000000000000";

/// One command over a new connection opened in `namespace`: its whole reply's bytes.
fn exchange(namespace: &str, target: SocketAddr, args: &[&str]) -> Result<Vec<u8>, String> {
    common::redis_exchange(namespace, target, args, EXCHANGE_TIMEOUT)
}

/// A simple or bulk string reply's text (`DEBUG DIGEST` answers `+…`).
fn string_text(reply: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(reply);
    if let Some(simple) = text.strip_prefix('+') {
        return simple.strip_suffix("\r\n").map(str::to_string);
    }
    let (header, rest) = text.strip_prefix('$')?.split_once("\r\n")?;
    let len: usize = header.parse().ok()?;
    rest.get(..len).map(str::to_string)
}

#[test]
#[ignore = "needs redis-server (the interop tier)"]
fn three_replicas_run_the_verifying_client_clean_and_hold_the_same_data() {
    assert!(
        steadfast_lab::system::find_program("redis-server").is_some(),
        "redis-server is not installed (looked in PATH, /usr/sbin, /sbin, /usr/bin, /bin): \
         this interop test needs Debian's redis-server package"
    );
    let lab = Lab::up_named(common::lab_name("ac"), 3, BackendKind::Redis, |opts| {
        opts.mode = Mode::Active;
        opts.witness = false;
    });
    let target = lab.target();
    let client = lab.info.client_ns.clone();
    let primary = lab.info.primary.clone().expect("lab up names the primary");
    let primary = primary
        .strip_prefix(&format!("{}-", lab.name()))
        .unwrap_or(&primary)
        .to_string();

    let options = VerifyOptions {
        connections: 8,
        duration: Duration::from_secs(3),
        max_commands_per_connection: 20_000,
        exchange_timeout: EXCHANGE_TIMEOUT,
        seed: 18,
        ..Default::default()
    };
    let report = redis_verify::run(Some(&client), target, &options).expect("the run");
    eprintln!("active, 3 replicas: {report}");
    assert!(report.is_clean(), "{report}{}", lab.situation());
    assert!(report.increments > 0 && report.transfers > 0 && report.reads > 0);

    // Refused by name, with the reason, rather than run differently on each replica.
    let refused = exchange(&client, target, &["SPOP", "some-set"]).expect("SPOP");
    assert!(
        String::from_utf8_lossy(&refused).starts_with("-ERR steadfast active mode refuses SPOP"),
        "{}",
        String::from_utf8_lossy(&refused)
    );

    let active = |host: &str| lab.daemon_status(host)["data_plane"]["active"].clone();
    let at_primary = active(&primary);
    assert_eq!(at_primary["primary"], true, "{at_primary}");
    let ordered = at_primary["last_ordered"].as_u64().expect("last_ordered");
    assert!(ordered > 0, "{at_primary}");
    let hosts: Vec<String> = (1..=3).map(|i| format!("n{i}")).collect();
    let caught_up = common::wait_until(CATCH_UP, || {
        hosts
            .iter()
            .all(|h| active(h)["delivered"].as_u64() == Some(ordered))
    });
    assert!(
        caught_up,
        "every replica delivers the {ordered} updates ordered: {:?}",
        hosts
            .iter()
            .map(|h| active(h)["delivered"].clone())
            .collect::<Vec<_>>()
    );

    let local: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let digests: Vec<String> = hosts
        .iter()
        .map(|h| {
            let ns = format!("{}-{h}", lab.name());
            let reply = exchange(&ns, local, &["DEBUG", "DIGEST"]).expect("DEBUG DIGEST");
            string_text(&reply).unwrap_or_else(|| {
                panic!("{h}: DEBUG DIGEST: {:?}", String::from_utf8_lossy(&reply))
            })
        })
        .collect();
    eprintln!("DEBUG DIGEST on {hosts:?}: {digests:?}");
    assert_ne!(digests[0], EMPTY_DIGEST, "the run wrote data");
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "every replica holds the same data: {digests:?}"
    );

    let at_primary = active(&primary);
    let by_replica = at_primary["reads_by_replica"]
        .as_object()
        .expect("reads_by_replica")
        .clone();
    let serving = by_replica.values().filter(|n| n.as_u64() > Some(0)).count();
    assert!(
        serving >= 2,
        "reads are spread over more than one replica: {by_replica:?}"
    );
    assert!(
        at_primary["replies_agreed"].as_u64() > Some(0),
        "{at_primary}"
    );
    assert_eq!(
        at_primary["divergences"].as_object().map(|m| m.len()),
        Some(0),
        "no replica diverged: {at_primary}"
    );
    for host in &hosts {
        assert_eq!(
            active(host)["replica_errors"],
            0,
            "{host}: {}",
            active(host)
        );
    }
    eprintln!("reads by replica {by_replica:?}; status of the primary: {at_primary}");

    // A replica whose data changed behind the group's back answers the next update on that key
    // otherwise than the primary: the digests differ, and it is named in status and the log.
    let other = hosts
        .iter()
        .find(|h| **h != primary)
        .expect("a replica")
        .clone();
    let other_id = other.trim_start_matches('n').to_string();
    let other_ns = format!("{}-{other}", lab.name());
    assert_eq!(
        exchange(&other_ns, local, &["SET", "tampered", "100"]).as_deref(),
        Ok(&b"+OK\r\n"[..])
    );
    assert_eq!(
        exchange(&client, target, &["INCR", "tampered"]).as_deref(),
        Ok(&b":1\r\n"[..]),
        "the client gets the primary's reply"
    );
    let named = common::wait_until(Duration::from_secs(2), || {
        active(&primary)["divergences"].get(&other_id).is_some()
    });
    assert!(
        named,
        "replica {other} is reported diverged: {}",
        active(&primary)
    );
    assert!(
        !lab.daemon_log_lines(&primary, "diverged").is_empty(),
        "the primary's log names the divergence"
    );
}

/// How long a read sent to a replica whose host just died may take to be answered: the link's
/// kernel timeout is twice the group's `replication_stall_ms` (1 s by default), and a margin.
const LOST_READ_BOUND: Duration = Duration::from_secs(5);

#[test]
#[ignore = "needs redis-server (the interop tier)"]
fn a_crashed_replica_costs_its_reads_an_error_not_a_hang_and_healed_empty_stays_out() {
    let lab = Lab::up_named(common::lab_name("ac"), 3, BackendKind::Redis, |opts| {
        opts.mode = Mode::Active;
        opts.witness = false;
    });
    let target = lab.target();
    let client = lab.info.client_ns.clone();
    let primary = lab.info.primary.clone().expect("lab up names the primary");
    let primary = primary
        .strip_prefix(&format!("{}-", lab.name()))
        .unwrap_or(&primary)
        .to_string();
    let hosts: Vec<String> = (1..=3).map(|i| format!("n{i}")).collect();
    let crashed = hosts.iter().rev().find(|h| **h != primary).unwrap().clone();
    let crashed_id = crashed.trim_start_matches('n').to_string();
    let survivor = hosts
        .iter()
        .find(|h| **h != primary && **h != crashed)
        .unwrap()
        .clone();
    let value = b"$1\r\nv\r\n".to_vec();
    assert_eq!(
        exchange(&client, target, &["SET", "k", "v"]).as_deref(),
        Ok(&b"+OK\r\n"[..])
    );

    steadfast_lab::crash(lab.name(), &crashed, steadfast_lab::CrashKind::Host).expect("crash");
    // Reads go round-robin: some land on the dead replica. Each is answered, with the value or
    // with the error that says its replica was lost, never left waiting.
    let mut lost = 0;
    for _ in 0..6 {
        let started = Instant::now();
        let reply = common::redis_exchange(&client, target, &["GET", "k"], LOST_READ_BOUND)
            .unwrap_or_else(|e| panic!("a read after the crash of {crashed}: {e}"));
        if reply != value {
            assert!(
                String::from_utf8_lossy(&reply)
                    .starts_with("-ERR steadfast active mode: the replica serving this read"),
                "{}",
                String::from_utf8_lossy(&reply)
            );
            lost += 1;
        }
        eprintln!(
            "GET after the crash: {:?} in {:?}",
            String::from_utf8_lossy(&reply),
            started.elapsed()
        );
    }
    assert!(
        lost <= 1,
        "only reads sent before the link was found dead fail: {lost}"
    );
    assert_eq!(
        exchange(&client, target, &["SET", "k2", "v2"]).as_deref(),
        Ok(&b"+OK\r\n"[..]),
        "updates go on without the dead replica"
    );

    // Healed, its redis-server and replica start empty: it cannot join (no rebuild yet), so
    // it is out of the group, named in status, and serves no read.
    steadfast_lab::heal(lab.name(), &crashed).expect("heal");
    let active = |host: &str| lab.daemon_status(host)["data_plane"]["active"].clone();
    let out = common::wait_until(Duration::from_secs(10), || {
        active(&primary)["divergences"].get(&crashed_id).is_some()
    });
    assert!(
        out,
        "healed {crashed} is named out of the group: {}",
        active(&primary)
    );
    for _ in 0..6 {
        assert_eq!(
            exchange(&client, target, &["GET", "k"]).as_deref(),
            Ok(&value[..]),
            "no read goes to the emptied replica"
        );
    }
    let local: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let digest = |host: &str| {
        exchange(
            &format!("{}-{host}", lab.name()),
            local,
            &["DEBUG", "DIGEST"],
        )
        .expect("DEBUG DIGEST")
    };
    assert_eq!(
        digest(&primary),
        digest(&survivor),
        "the primary and the live replica hold the same data"
    );
}
