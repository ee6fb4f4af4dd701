//! Every partition of a duplex group's {primary, backup, witness}, under a verifying load with
//! commits: each pair cut both ways and one way in each direction, and each host cut off from
//! the other two (both ways, only its sending side, only its receiving side), 2 s each, then
//! healed. Never two nodes hold the service address for longer than a heartbeat interval, and
//! every commit a client saw acknowledged is in the data tier exactly once. Requests may fail
//! while no node can serve (a primary cut off from both peers has no quorum): a partition may
//! cost availability, never safety. Needs root.

mod common;

use std::time::Duration;

use common::{BackgroundLoad, Lab};
use steadfast_lab::load::{KeepAliveOptions, LoadOptions};
use steadfast_lab::{BackendKind, Mode};

/// The default heartbeat: the longest overlap tolerated, as in the split-brain tests.
const INTERVAL: Duration = Duration::from_millis(50);
const CUT: Duration = Duration::from_secs(2);
/// After the heal: one holder again, and a joined backup, before the next partition.
const SETTLE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    Backup,
    Witness,
}

/// One cut of the bridge: both ways, or frames from the first to the second only.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Both(Role, Role),
    OneWay(Role, Role),
}

/// Every partition of the three: the three pairs (both ways and one way each direction), and
/// each host alone (cut both ways, only its outgoing frames, only its incoming ones).
fn schedule() -> Vec<(String, Vec<Cut>)> {
    use Role::*;
    let mut cases = Vec::new();
    for (a, b) in [(Primary, Backup), (Primary, Witness), (Backup, Witness)] {
        cases.push((format!("{a:?} <-/-> {b:?}"), vec![Cut::Both(a, b)]));
        cases.push((format!("{a:?} -/-> {b:?}"), vec![Cut::OneWay(a, b)]));
        cases.push((format!("{b:?} -/-> {a:?}"), vec![Cut::OneWay(b, a)]));
    }
    for (alone, others) in [
        (Primary, [Backup, Witness]),
        (Backup, [Primary, Witness]),
        (Witness, [Primary, Backup]),
    ] {
        cases.push((
            format!("{alone:?} alone"),
            others.iter().map(|&o| Cut::Both(alone, o)).collect(),
        ));
        cases.push((
            format!("{alone:?} cannot send"),
            others.iter().map(|&o| Cut::OneWay(alone, o)).collect(),
        ));
        cases.push((
            format!("{alone:?} cannot receive"),
            others.iter().map(|&o| Cut::OneWay(o, alone)).collect(),
        ));
    }
    cases
}

/// Waits for one holder of the address with a joined backup; the holder's and the backup's
/// host names.
fn protected(lab: &Lab) -> Option<(String, String)> {
    let mut found = None;
    common::wait_until(SETTLE, || {
        let holders = lab.holders();
        let [primary] = holders.as_slice() else {
            return false;
        };
        let joined = lab.daemon_status(primary)["data_plane"]["backups_joined"]
            .as_u64()
            .unwrap_or(0)
            > 0;
        let backup = if primary == "n1" { "n2" } else { "n1" };
        found = Some((primary.clone(), backup.to_string()));
        joined
    })
    .then_some(())?;
    found
}

fn apply(lab: &Lab, cuts: &[Cut], host: &dyn Fn(Role) -> String, cut: bool) {
    for c in cuts {
        let result = match (*c, cut) {
            (Cut::Both(a, b), true) => steadfast_lab::partition(lab.name(), &host(a), &host(b)),
            (Cut::Both(a, b), false) => steadfast_lab::unpartition(lab.name(), &host(a), &host(b)),
            (Cut::OneWay(a, b), true) => steadfast_lab::cut_one_way(lab.name(), &host(a), &host(b)),
            (Cut::OneWay(a, b), false) => {
                steadfast_lab::mend_one_way(lab.name(), &host(a), &host(b))
            }
        };
        result.unwrap_or_else(|e| panic!("{} {c:?}: {e}", if cut { "cut" } else { "heal" }));
    }
}

#[test]
fn no_partition_makes_two_primaries_or_loses_an_acknowledged_commit() {
    let lab = Lab::up_in_mode("pt", 2, true, BackendKind::Builtin, None, Mode::Duplex);
    assert!(
        protected(&lab).is_some(),
        "protected at the start: {}",
        lab.situation()
    );
    let load = BackgroundLoad::start_with(
        &lab,
        LoadOptions {
            target: lab.target(),
            duration: Duration::from_secs(300),
            probes: None,
            keep_alive: Some(KeepAliveOptions {
                connections: 10,
                request_timeout: Duration::from_secs(5),
                sizes: vec![1024, 100 * 1024],
                include_uuid: true,
                commit_sizes: vec![100, 20_000],
                pause: Duration::from_millis(10),
                reconnect_delay: Duration::from_millis(20),
                ..Default::default()
            }),
        },
    );
    load.wait_for_successes(0, 50, Duration::from_secs(5), "before the partitions");
    let mut outcomes = Vec::new();
    let mut broken = Vec::new();
    for (name, cuts) in schedule() {
        let Some((primary, backup)) = protected(&lab) else {
            broken.push(format!(
                "{name}: no protected primary before it: {}",
                lab.situation()
            ));
            break;
        };
        let host = |role: Role| match role {
            Role::Primary => primary.clone(),
            Role::Backup => backup.clone(),
            Role::Witness => "w".to_string(),
        };
        let before = load.successes();
        apply(&lab, &cuts, &host, true);
        let (during, seen_during) = lab.longest_double_ownership(CUT);
        let served_during = load.successes() - before;
        apply(&lab, &cuts, &host, false);
        let (after, seen_after) = lab.longest_double_ownership(Duration::from_secs(1));
        let line = format!(
            "{name} (primary {primary}): holders {seen_during:?} then {seen_after:?}; longest \
             double ownership {during:?} / {after:?} after the heal; {served_during} requests \
             answered during the cut"
        );
        eprintln!("{line}");
        if during > INTERVAL || after > INTERVAL {
            broken.push(line.clone());
        }
        outcomes.push(line);
    }
    let report = load.stop();
    let summary = report.summary();
    let ids = report.committed_ids();
    let verdict =
        steadfast_lab::data_tier::check_exactly_once(&lab.info.state_dir.join("commits.log"), &ids)
            .expect("read the data tier");
    eprintln!(
        "{} cases; requests {} failed of {} ({:?}); commits acknowledged {}, missing {}, twice {}",
        outcomes.len(),
        summary.request_failures,
        summary.requests,
        summary.request_errors,
        verdict.acknowledged,
        verdict.missing.len(),
        verdict.duplicated.len()
    );
    assert!(
        broken.is_empty(),
        "two primaries or no recovery: {broken:#?}"
    );
    assert_eq!(outcomes.len(), schedule().len(), "every case ran");
    assert!(!ids.is_empty(), "the load committed something");
    assert!(verdict.holds(), "exactly-once broken: {verdict:?}");
}
