//! The comparison of the replicas' replies to each update: judged once, when every awaited
//! digest is in, whatever order they come in; the replicas that answered otherwise than the
//! primary are named, unless a majority agrees against the primary; a replica that leaves or
//! lags holds nothing back.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use steadfast_core::active_order::{OrderNumber, ReplicaId};
use steadfast_core::reply_compare::{digest_reply, ReplyComparator, Verdict};

fn reply(number: OrderNumber, replica: ReplicaId, wrong: bool) -> [u8; 32] {
    if wrong {
        digest_reply(format!("+wrong {number} from {replica}\r\n").as_bytes())
    } else {
        digest_reply(format!(":{number}\r\n").as_bytes())
    }
}

/// What the comparator must say of update `number` given who answered wrongly.
fn expected(number: OrderNumber, members: &[ReplicaId], wrong: &BTreeSet<ReplicaId>) -> Verdict {
    let primary = members[0];
    if wrong.is_empty() {
        return Verdict::Agreed { number };
    }
    if !wrong.contains(&primary) {
        return Verdict::Diverged {
            number,
            replicas: wrong.iter().copied().collect(),
        };
    }
    let right: Vec<ReplicaId> = members
        .iter()
        .copied()
        .filter(|m| !wrong.contains(m))
        .collect();
    if right.len() * 2 > members.len() {
        return Verdict::PrimaryOutvoted {
            number,
            majority: right,
        };
    }
    Verdict::Diverged {
        number,
        replicas: members[1..].to_vec(),
    }
}

proptest! {
    #[test]
    fn each_update_is_judged_once_every_digest_in(
        others in 1u32..5,
        updates in 1u64..20,
        wrong_bits in proptest::collection::vec(any::<u8>(), 20),
        order in any::<u64>(),
    ) {
        let members: Vec<ReplicaId> = (1..=others + 1).collect();
        let mut comparator = ReplyComparator::new(1, members.iter().copied(), 1, 1000);
        let wrong: BTreeMap<OrderNumber, BTreeSet<ReplicaId>> = (1..=updates)
            .map(|n| {
                let bits = wrong_bits[(n - 1) as usize];
                let set = members.iter().copied().filter(|&m| bits & (1 << (m - 1)) != 0);
                (n, set.collect())
            })
            .collect();
        // Every (update, replica) digest, in an order drawn from `order`.
        let mut arrivals: Vec<(OrderNumber, ReplicaId)> = (1..=updates)
            .flat_map(|n| members.iter().map(move |&m| (n, m)))
            .collect();
        let mut state = order | 1;
        for i in (1..arrivals.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            arrivals.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut verdicts = Vec::new();
        for (n, m) in arrivals {
            verdicts.extend(comparator.record(n, m, reply(n, m, wrong[&n].contains(&m))));
            // The same digest again changes nothing.
            prop_assert!(comparator.record(n, m, reply(n, m, false)).is_empty());
        }
        verdicts.sort_by_key(|v| match v {
            Verdict::Agreed { number }
            | Verdict::Diverged { number, .. }
            | Verdict::PrimaryOutvoted { number, .. } => *number,
            Verdict::Lagging { .. } => 0,
        });
        let want: Vec<Verdict> = (1..=updates).map(|n| expected(n, &members, &wrong[&n])).collect();
        prop_assert_eq!(verdicts, want);
        prop_assert_eq!(comparator.pending(), 0);
    }
}

#[test]
fn a_replica_that_leaves_holds_nothing_back() {
    let mut comparator = ReplyComparator::new(1, [2, 3], 1, 100);
    assert!(comparator.record(1, 1, reply(1, 1, false)).is_empty());
    assert!(comparator.record(1, 2, reply(1, 2, false)).is_empty());
    assert_eq!(comparator.remove(3), vec![Verdict::Agreed { number: 1 }]);
    // Its digests are no longer taken, nor late ones for an update judged.
    assert!(comparator.record(2, 3, reply(2, 3, true)).is_empty());
    assert!(comparator.record(1, 2, reply(1, 2, true)).is_empty());
    assert_eq!(comparator.pending(), 0);
    // The primary is never removed.
    assert!(comparator.remove(1).is_empty());
}

#[test]
fn a_joined_replica_is_awaited_from_its_first_update_only() {
    let mut comparator = ReplyComparator::new(1, [2], 5, 100);
    comparator.record(5, 1, reply(5, 1, false));
    comparator.add(3, 6);
    assert_eq!(
        comparator.record(5, 2, reply(5, 2, false)),
        vec![Verdict::Agreed { number: 5 }]
    );
    comparator.record(6, 1, reply(6, 1, false));
    assert!(
        comparator.record(6, 2, reply(6, 2, false)).is_empty(),
        "3 is awaited at 6"
    );
    assert_eq!(
        comparator.record(6, 3, reply(6, 3, true)),
        vec![Verdict::Diverged {
            number: 6,
            replicas: vec![3]
        }]
    );
}

#[test]
fn a_replica_too_far_behind_is_named_and_no_longer_awaited() {
    let mut comparator = ReplyComparator::new(1, [2, 3], 1, 2);
    let mut verdicts = Vec::new();
    for n in 1..=3 {
        verdicts.extend(comparator.record(n, 1, reply(n, 1, false)));
        verdicts.extend(comparator.record(n, 2, reply(n, 2, false)));
    }
    assert_eq!(
        verdicts,
        vec![
            Verdict::Lagging { replica: 3 },
            Verdict::Agreed { number: 1 },
            Verdict::Agreed { number: 2 },
            Verdict::Agreed { number: 3 },
        ]
    );
    assert_eq!(comparator.pending(), 0);
}
