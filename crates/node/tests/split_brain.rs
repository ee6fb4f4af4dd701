//! Split brain: a 2-node + witness group with the link between the nodes cut, in every
//! combination of which node still sees the witness. Never two VIP owners for longer than one
//! heartbeat interval, checked on both nodes' addresses and on the client's neighbour table.
//! Needs root.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Lab;
use steadfast_lab::BackendKind;

/// Default heartbeat interval: the longest overlap the issue tolerates.
const INTERVAL: Duration = Duration::from_millis(50);

/// The MAC the client's neighbour table holds for the VIP, if any.
fn client_neighbour(lab: &Lab) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "-n",
            &lab.info.client_ns,
            "neigh",
            "show",
            &lab.info.vip.to_string(),
        ])
        .output()
        .expect("ip neigh");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string)
}

fn partitioned(n1_sees_witness: bool, n2_sees_witness: bool) {
    let tag = format!(
        "sb{}{}",
        u8::from(n1_sees_witness),
        u8::from(n2_sees_witness)
    );
    let lab = Lab::up(&tag, 2, true, BackendKind::Builtin, None);
    assert!(lab.wait_holder("n1", Duration::from_secs(5)));
    steadfast_lab::partition(lab.name(), "n1", "n2").expect("partition");
    if !n1_sees_witness {
        steadfast_lab::partition(lab.name(), "n1", "w").expect("partition");
    }
    if !n2_sees_witness {
        steadfast_lab::partition(lab.name(), "n2", "w").expect("partition");
    }
    let (longest, seen) = lab.longest_double_ownership(Duration::from_secs(2));
    eprintln!(
        "n1 sees witness {n1_sees_witness}, n2 sees witness {n2_sees_witness}: holders over time {seen:?}, longest double ownership {longest:?}"
    );
    assert!(
        longest <= INTERVAL,
        "two VIP owners for {longest:?} (holders over time {seen:?})"
    );
    let holders = lab.holders();
    match (n1_sees_witness, n2_sees_witness) {
        (true, _) => assert_eq!(
            holders,
            vec!["n1"],
            "n1 keeps its lease through the witness"
        ),
        (false, true) => assert_eq!(holders, vec!["n2"], "n2 takes over with the witness"),
        (false, false) => assert!(holders.is_empty(), "nobody has a quorum: nobody serves"),
    }
    // The client's neighbour entry for the VIP names the holder's MAC (or nothing stale
    // pointing at a second owner).
    if let [holder] = holders.as_slice() {
        let ns = format!("{}-{holder}", lab.name());
        let out = Command::new("ip")
            .args(["-n", &ns, "link", "show", "eth0"])
            .output()
            .expect("ip link");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mac = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string);
        // Make the client talk to the VIP so its entry is fresh, then compare.
        let _ = steadfast_lab::http_get_in_namespace(
            &lab.info.client_ns,
            lab.target(),
            "/health",
            Duration::from_millis(500),
        );
        assert_eq!(
            client_neighbour(&lab),
            mac,
            "client's ARP entry must name the holder {holder}"
        );
    }
    // Heal: exactly one owner again, and the group agrees.
    steadfast_lab::unpartition(lab.name(), "n1", "n2").expect("unpartition");
    if !n1_sees_witness {
        steadfast_lab::unpartition(lab.name(), "n1", "w").expect("unpartition");
    }
    if !n2_sees_witness {
        steadfast_lab::unpartition(lab.name(), "n2", "w").expect("unpartition");
    }
    let (longest, seen) = lab.longest_double_ownership(Duration::from_secs(1));
    assert!(
        longest <= INTERVAL,
        "after heal: two owners for {longest:?} ({seen:?})"
    );
    assert!(
        common::wait_until(Duration::from_secs(3), || lab.holders().len() == 1),
        "after heal exactly one node serves: {:?}",
        lab.holders()
    );
}

#[test]
fn nodes_cut_both_see_the_witness() {
    partitioned(true, true);
}

#[test]
fn nodes_cut_only_the_primary_sees_the_witness() {
    partitioned(true, false);
}

#[test]
fn nodes_cut_only_the_backup_sees_the_witness() {
    partitioned(false, true);
}

#[test]
fn nodes_cut_nobody_sees_the_witness() {
    partitioned(false, false);
}
