//! The promise active mode's failover rests on, checked over random runs: a client is told an
//! update was done once every replica in the ordering holds it
//! (`Sequencer::held_by_every_replica`); when the primary then dies, the replica the new
//! primary goes on from (`plan_takeover`) holds every update a client was told of, and the
//! replicas kept in the ordering hold exactly what it holds.
//!
//! The primary's links are in-order streams (TCP) that deliver whenever the run says; a
//! replica may be taken out of the ordering at any point (silent for a detection), after
//! which nothing more reaches it. The promise holds when at least one replica still in the
//! ordering survives the primary: a primary left alone in its ordering acknowledges what only
//! it holds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use steadfast_core::active_order::{
    DeliveryStrategy, OrderingSettings, ReplicaAction, ReplicaId, ReplicaOrder, Sequencer,
    ToReplica,
};
use steadfast_core::active_takeover::{plan_takeover, ReplicaPosition};

#[derive(Debug, Clone, Copy)]
enum Step {
    /// A client's update is ordered.
    Order,
    /// One message on the link to replica `n % replicas + 1` arrives.
    Deliver(usize),
    /// Replica `n % replicas + 1` (never the primary's own) is taken out of the ordering.
    TakeOut(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Order),
        6 => any::<usize>().prop_map(Step::Deliver),
        1 => any::<usize>().prop_map(Step::TakeOut),
    ]
}

const PRIMARY: ReplicaId = 1;
const INCARNATION: u64 = 0x51;
const EPOCH: u64 = 65537;

fn run(replicas: usize, safe: bool, steps: &[Step]) -> Result<(), TestCaseError> {
    let settings = OrderingSettings {
        strategy: if safe {
            DeliveryStrategy::Safe
        } else {
            DeliveryStrategy::BestEffort
        },
        ..OrderingSettings::default()
    };
    let ids: Vec<ReplicaId> = (1..=replicas as ReplicaId).collect();
    let mut sequencer = Sequencer::<u64>::new(settings, ids.iter().copied(), 0, Duration::ZERO);
    let mut orders: BTreeMap<ReplicaId, ReplicaOrder<u64>> = ids
        .iter()
        .map(|&id| (id, ReplicaOrder::new(settings, 0)))
        .collect();
    let mut links: BTreeMap<ReplicaId, VecDeque<ToReplica<u64>>> =
        ids.iter().map(|&id| (id, VecDeque::new())).collect();
    let mut taken_out: BTreeSet<ReplicaId> = BTreeSet::new();
    let mut told_clients = 0u64;
    let now = Duration::ZERO;
    for &step in steps {
        let out = match step {
            Step::Order => sequencer.order(0).1,
            Step::Deliver(n) => {
                let id = ids[n % replicas];
                let Some(message) = links.get_mut(&id).and_then(VecDeque::pop_front) else {
                    continue;
                };
                let order = orders.get_mut(&id).expect("a replica");
                let mut out = Vec::new();
                for action in order.on_message(message, now) {
                    if let ReplicaAction::Send(progress) = action {
                        out.extend(sequencer.on_message(id, progress, now));
                    }
                }
                out
            }
            Step::TakeOut(n) => {
                let id = ids[n % replicas];
                if id == PRIMARY || !taken_out.insert(id) {
                    continue;
                }
                // Its link is dropped: what was on its way never arrives.
                links.insert(id, VecDeque::new());
                sequencer.remove_replica(id)
            }
        };
        for outgoing in out {
            if !taken_out.contains(&outgoing.to) {
                links
                    .get_mut(&outgoing.to)
                    .expect("a link")
                    .push_back(outgoing.message);
            }
        }
        told_clients = told_clients.max(sequencer.held_by_every_replica());
    }

    // The primary's host dies: every survivor reports where it stands.
    let positions: BTreeMap<ReplicaId, ReplicaPosition> = orders
        .iter()
        .filter(|(&id, _)| id != PRIMARY)
        .map(|(&id, order)| {
            let position = ReplicaPosition {
                ordered_by: INCARNATION,
                epoch: EPOCH,
                received: order.received(),
                whole: true,
            };
            (id, position)
        })
        .collect();
    let plan = plan_takeover(&positions, 2);
    let reference = plan.reference.expect("a survivor reported whole data");
    // The promise needs a survivor that was still in the ordering: a primary whose every
    // other replica was taken out served alone, and what it alone held dies with it (the
    // seed's model: a replica taken out is one that crashed).
    let in_ordering_survivor = ids
        .iter()
        .any(|id| *id != PRIMARY && !taken_out.contains(id));
    if !in_ordering_survivor {
        return Ok(());
    }
    prop_assert!(
        plan.start >= told_clients,
        "the reference {reference} holds up to {} only, clients were told of {told_clients}",
        plan.start
    );
    for id in &plan.continuing {
        prop_assert_eq!(orders[id].received(), plan.start);
    }
    prop_assert!(plan.continuing.contains(&reference));
    let everyone: BTreeSet<ReplicaId> = plan
        .continuing
        .iter()
        .chain(&plan.rebuilt)
        .copied()
        .collect();
    prop_assert_eq!(everyone, positions.keys().copied().collect::<BTreeSet<_>>());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn the_replica_a_new_primary_goes_on_from_holds_every_update_clients_were_told_of(
        replicas in 2usize..=4,
        safe in any::<bool>(),
        steps in proptest::collection::vec(step(), 0..200),
    ) {
        run(replicas, safe, &steps)?;
    }
}

/// The property is not vacuous: told of an update as soon as the primary's own replica held
/// it (best effort without the wait), a client may be told of one no survivor holds.
#[test]
fn telling_clients_before_every_replica_holds_an_update_can_lose_it() {
    let settings = OrderingSettings::default();
    let mut sequencer = Sequencer::<u64>::new(settings, [1, 2, 3], 0, Duration::ZERO);
    let mut own = ReplicaOrder::new(settings, 0);
    let (number, out) = sequencer.order(0);
    // Only the primary's own replica got it before the host died.
    for outgoing in out.into_iter().filter(|o| o.to == PRIMARY) {
        for action in own.on_message(outgoing.message, Duration::ZERO) {
            if let ReplicaAction::Send(progress) = action {
                sequencer.on_message(PRIMARY, progress, Duration::ZERO);
            }
        }
    }
    assert_eq!(own.received(), number, "the own replica holds it");
    assert_eq!(sequencer.held_by_every_replica(), 0, "nobody else does");
    let survivors: BTreeMap<ReplicaId, ReplicaPosition> = [2, 3]
        .into_iter()
        .map(|id| {
            let position = ReplicaPosition {
                ordered_by: INCARNATION,
                epoch: EPOCH,
                received: 0,
                whole: true,
            };
            (id, position)
        })
        .collect();
    assert!(plan_takeover(&survivors, 2).start < number);
}
