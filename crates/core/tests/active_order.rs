//! Ordered delivery of active mode, driven through a simulated network that loses, duplicates,
//! reorders and delays messages, from a seed (a failing case replays exactly), with the
//! primary crashing at any step:
//! - every replica delivers updates 1, 2, 3… in order, each exactly once, and all deliver the
//!   same update under the same number;
//! - safe delivery: no replica delivers an update before every replica received it;
//! - once the network heals, every survivor delivers every update ordered, and the primary
//!   keeps nothing;
//! - across a takeover by the survivor that received the most, every update that was stable
//!   (acknowledgeable to its client) stays delivered, under its number, everywhere.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use steadfast_core::active_order::{
    DeliveryStrategy, OrderNumber, OrderingSettings, Outgoing, ReadPolicy, ReadScheduler,
    ReplicaAction, ReplicaId, ReplicaOrder, Sequencer, ToPrimary, ToReplica,
};

/// xorshift64*: the simulation's only source of chance, so a seed replays a run exactly.
struct Chance(u64);

impl Chance {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn per_mille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }
}

enum Message {
    ToReplica(ReplicaId, ToReplica<u64>),
    ToPrimary(ReplicaId, ToPrimary),
}

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    replicas: u32,
    strategy: DeliveryStrategy,
    updates: u64,
    loss_per_mille: u64,
    duplicate_per_mille: u64,
    max_delay_us: u64,
    /// The primary crashes after this many updates were ordered (none: it never does).
    crash_after: Option<u64>,
}

struct Simulation {
    chance: Chance,
    scenario: Scenario,
    now: Duration,
    primary: ReplicaId,
    sequencer: Sequencer<u64>,
    replicas: BTreeMap<ReplicaId, ReplicaOrder<u64>>,
    /// (due, order of sending, message): delivered in due order, ties by sending order.
    network: Vec<(Duration, u64, Message)>,
    sent: u64,
    delivered: BTreeMap<ReplicaId, Vec<(OrderNumber, u64)>>,
    healed: bool,
}

fn settings(strategy: DeliveryStrategy) -> OrderingSettings {
    OrderingSettings {
        strategy,
        retransmit_after: Duration::from_millis(5),
        repeat_request_after: Duration::from_millis(3),
        retransmit_burst: 16,
    }
}

impl Simulation {
    fn new(scenario: Scenario) -> Simulation {
        let ids: Vec<ReplicaId> = (1..=scenario.replicas).collect();
        let settings = settings(scenario.strategy);
        Simulation {
            chance: Chance(scenario.seed | 1),
            now: Duration::ZERO,
            primary: 1,
            sequencer: Sequencer::new(settings, ids.iter().copied(), 0, Duration::ZERO),
            replicas: ids
                .iter()
                .map(|&id| (id, ReplicaOrder::new(settings, 0)))
                .collect(),
            network: Vec::new(),
            sent: 0,
            delivered: ids.iter().map(|&id| (id, Vec::new())).collect(),
            healed: false,
            scenario,
        }
    }

    /// Puts a message on the network: between the primary and its own replica it is a
    /// function call (never lost); otherwise lost, duplicated and delayed by chance.
    fn send(&mut self, local: bool, message: Message) {
        let copies = if local || self.healed {
            1
        } else if self.chance.per_mille(self.scenario.loss_per_mille) {
            0
        } else if self.chance.per_mille(self.scenario.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if local {
                0
            } else {
                self.chance.below(self.scenario.max_delay_us + 1)
            };
            self.sent += 1;
            let copy = match &message {
                Message::ToReplica(to, m) => Message::ToReplica(*to, m.clone()),
                Message::ToPrimary(from, m) => Message::ToPrimary(*from, m.clone()),
            };
            self.network
                .push((self.now + Duration::from_micros(delay), self.sent, copy));
        }
    }

    fn carry_sequencer_output(&mut self, out: Vec<Outgoing<u64>>) {
        for Outgoing { to, message } in out {
            let local = to == self.primary;
            self.send(local, Message::ToReplica(to, message));
        }
    }

    fn carry_replica_actions(&mut self, id: ReplicaId, actions: Vec<ReplicaAction<u64>>) {
        for action in actions {
            match action {
                ReplicaAction::Deliver { number, payload } => {
                    if self.scenario.strategy == DeliveryStrategy::Safe {
                        for (other, replica) in &self.replicas {
                            assert!(
                                replica.received() >= number,
                                "safe: {id} delivers {number} before {other} received it \
                                 (it holds up to {})",
                                replica.received()
                            );
                        }
                    }
                    let log = self.delivered.get_mut(&id).expect("a replica's log");
                    let expected = log.last().map_or(1, |(n, _)| n + 1);
                    assert_eq!(number, expected, "{id} delivers out of order");
                    log.push((number, payload));
                }
                ReplicaAction::Send(message) => {
                    let local = id == self.primary;
                    self.send(local, Message::ToPrimary(id, message));
                }
            }
        }
    }

    /// Delivers every message due by `now`, in due order.
    fn deliver_due(&mut self) {
        loop {
            let Some(index) = self
                .network
                .iter()
                .enumerate()
                .filter(|(_, (due, _, _))| *due <= self.now)
                .min_by_key(|(_, (due, order, _))| (*due, *order))
                .map(|(i, _)| i)
            else {
                return;
            };
            let (_, _, message) = self.network.swap_remove(index);
            match message {
                Message::ToReplica(to, message) => {
                    if let Some(replica) = self.replicas.get_mut(&to) {
                        let actions = replica.on_message(message, self.now);
                        self.carry_replica_actions(to, actions);
                    }
                }
                Message::ToPrimary(from, message) => {
                    let out = self.sequencer.on_message(from, message, self.now);
                    self.carry_sequencer_output(out);
                }
            }
        }
    }

    fn tick_all(&mut self) {
        let out = self.sequencer.tick(self.now);
        self.carry_sequencer_output(out);
        let ids: Vec<ReplicaId> = self.replicas.keys().copied().collect();
        for id in ids {
            let actions = self
                .replicas
                .get_mut(&id)
                .expect("a replica")
                .tick(self.now);
            self.carry_replica_actions(id, actions);
        }
    }

    fn step(&mut self) {
        self.now += Duration::from_micros(1 + self.chance.below(1500));
        self.deliver_due();
        self.tick_all();
    }

    /// The primary's host dies: what it sent and what was sent to it is gone; the survivor
    /// that received the highest number (the lowest id among equals) takes over, the others
    /// follow it. Returns the updates that were stable at the crash, and their payloads.
    fn crash_primary(&mut self) -> Vec<(OrderNumber, u64)> {
        let dead = self.primary;
        let stable = self.sequencer.stable();
        let at_crash: Vec<(OrderNumber, u64)> = self.delivered[&dead]
            .iter()
            .copied()
            .filter(|(n, _)| *n <= stable)
            .collect();
        self.replicas.remove(&dead);
        self.delivered.remove(&dead);
        self.network.retain(|(_, _, message)| match message {
            Message::ToReplica(to, _) => *to != dead,
            // Sent by any replica to the dead primary.
            Message::ToPrimary(..) => false,
        });
        // Messages the dead primary sent that are still in flight die with its link: the
        // shell closes the old primary's streams when the new one takes over.
        self.network.clear();
        let new_primary = self
            .replicas
            .iter()
            .max_by_key(|(id, r)| (r.received(), std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
            .expect("a survivor");
        let others: Vec<ReplicaId> = self
            .replicas
            .keys()
            .copied()
            .filter(|&id| id != new_primary)
            .collect();
        let taking_over = self.replicas.remove(&new_primary).expect("the new primary");
        let last = taking_over.received();
        let (sequencer, own) = taking_over.into_sequencer(new_primary, others.clone(), self.now);
        self.sequencer = sequencer;
        self.replicas.insert(new_primary, own);
        self.primary = new_primary;
        for id in others {
            self.replicas
                .get_mut(&id)
                .expect("a survivor")
                .follow(last, self.now)
                .expect("no survivor delivered beyond the one that received the most");
        }
        at_crash
    }

    fn run(mut self) {
        let mut payload = 0u64;
        let mut stable_at_crash = Vec::new();
        let mut ordered = 0u64;
        while ordered < self.scenario.updates {
            if self.scenario.crash_after == Some(ordered) && self.replicas.len() > 1 {
                stable_at_crash = self.crash_primary();
            }
            if self.chance.per_mille(400) {
                payload += 1;
                let (_, out) = self
                    .sequencer
                    .order(payload * 1000 + u64::from(self.primary));
                ordered += 1;
                self.carry_sequencer_output(out);
            }
            self.step();
        }
        // The network heals: nothing more is lost or duplicated, and every delay ends.
        self.healed = true;
        for _ in 0..2000 {
            self.step();
            let done = self
                .replicas
                .values()
                .all(|r| r.delivered() == self.sequencer.last_ordered())
                && self.sequencer.retained() == 0
                && self.network.is_empty();
            if done {
                break;
            }
        }
        let last = self.sequencer.last_ordered();
        let reference = self.delivered[&self.primary].clone();
        assert_eq!(
            reference.len() as u64,
            last,
            "the primary delivered all it ordered"
        );
        for (id, log) in &self.delivered {
            assert_eq!(
                log, &reference,
                "replica {id} delivered what the primary did"
            );
        }
        assert_eq!(
            self.sequencer.retained(),
            0,
            "every replica holds every update"
        );
        assert_eq!(self.sequencer.stable(), last);
        for (number, payload) in stable_at_crash {
            assert_eq!(
                reference.get(number as usize - 1),
                Some(&(number, payload)),
                "update {number}, stable at the crash, survived it"
            );
        }
    }
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        1u32..5,
        prop_oneof![
            Just(DeliveryStrategy::BestEffort),
            Just(DeliveryStrategy::Safe)
        ],
        1u64..80,
        0u64..400,
        0u64..200,
        0u64..5000,
        proptest::option::of(0u64..80),
    )
        .prop_map(
            |(seed, replicas, strategy, updates, loss, duplicate, delay, crash)| Scenario {
                seed,
                replicas,
                strategy,
                updates,
                loss_per_mille: loss,
                duplicate_per_mille: duplicate,
                max_delay_us: delay,
                crash_after: crash.filter(|&c| c < updates),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_replica_delivers_the_same_updates_in_order_once(scenario in scenario()) {
        Simulation::new(scenario).run();
    }
}

/// A replica that joins from a copy at the stable number is brought up from the log; one
/// whose copy is older than the log is refused with what it needs.
#[test]
fn a_joining_replica_needs_a_copy_no_older_than_the_log() {
    let settings = settings(DeliveryStrategy::BestEffort);
    let mut sequencer = Sequencer::<u64>::new(settings, [1, 2], 0, Duration::ZERO);
    for payload in 1..=5 {
        sequencer.order(payload);
    }
    for id in [1, 2] {
        sequencer.on_message(id, ToPrimary::Ack { up_to: 3 }, Duration::ZERO);
    }
    assert_eq!(sequencer.stable(), 3);
    let too_old = sequencer.add_replica(3, 2, Duration::ZERO).unwrap_err();
    assert_eq!(too_old.oldest_retained, 4);
    assert!(too_old.to_string().contains("newer copy"), "{too_old}");
    let sent = sequencer.add_replica(3, 3, Duration::ZERO).unwrap();
    let numbers: Vec<_> = sent
        .iter()
        .map(|o| match o.message {
            ToReplica::Update { number, .. } => number,
            ToReplica::Stable { .. } => 0,
        })
        .collect();
    assert_eq!(numbers, vec![4, 5]);
}

/// A replica being rebuilt pins the log: while a live replica's copy is taken, every update
/// after the stable number of the moment stays retained, however far the others get, so the
/// joiner is brought up from whatever number the copy holds; given up, the pin holds nothing.
/// The pin holds back what is kept, not stability: the joiner is no replica yet.
#[test]
fn a_pinned_rebuild_keeps_the_log_until_the_joiner_joins() {
    let settings = settings(DeliveryStrategy::BestEffort);
    let mut sequencer = Sequencer::<u64>::new(settings, [1, 2], 0, Duration::ZERO);
    for payload in 1..=3 {
        sequencer.order(payload);
    }
    for id in [1, 2] {
        sequencer.on_message(id, ToPrimary::Ack { up_to: 2 }, Duration::ZERO);
    }
    assert_eq!(sequencer.pin(3), 2);
    for payload in 4..=9 {
        sequencer.order(payload);
    }
    for id in [1, 2] {
        sequencer.on_message(id, ToPrimary::Ack { up_to: 9 }, Duration::ZERO);
    }
    assert_eq!(sequencer.stable(), 9, "both replicas hold it all");
    assert_eq!(
        sequencer.held_by_every_replica(),
        9,
        "a client may be answered: every replica in the ordering holds it"
    );
    assert_eq!(sequencer.retained(), 7, "kept from the pin on");
    // The copy was taken at 5: the joiner gets 6..=9.
    let sent = sequencer.add_replica(3, 5, Duration::ZERO).unwrap();
    let numbers: Vec<_> = sent
        .iter()
        .filter_map(|o| match o.message {
            ToReplica::Update { number, .. } => Some(number),
            ToReplica::Stable { .. } => None,
        })
        .collect();
    assert_eq!(numbers, vec![6, 7, 8, 9]);
    assert_eq!(
        sequencer.held_by_every_replica(),
        5,
        "the joiner holds the copy's updates only"
    );
    sequencer.on_message(3, ToPrimary::Ack { up_to: 9 }, Duration::ZERO);
    assert_eq!(sequencer.stable(), 9);
    assert_eq!(sequencer.held_by_every_replica(), 9);
    assert_eq!(sequencer.retained(), 0);

    // A rebuild given up releases what it held.
    assert_eq!(sequencer.pin(4), 9);
    sequencer.order(10);
    for id in [1, 2, 3] {
        sequencer.on_message(id, ToPrimary::Ack { up_to: 10 }, Duration::ZERO);
    }
    assert_eq!(sequencer.stable(), 10);
    assert_eq!(sequencer.retained(), 1, "kept for the pin");
    // A copy older than what is kept is refused.
    assert!(sequencer.add_replica(4, 8, Duration::ZERO).is_err());
    sequencer.unpin(4);
    assert_eq!(sequencer.stable(), 10);
    assert_eq!(sequencer.retained(), 0);
}

/// Under safe delivery a rebuild does not stop the replicas: with a joiner pinned, an update
/// every replica holds is announced stable and delivered, while the log keeps it for the joiner.
/// (Held back by the pin, every replica's delivery would wait for the whole rebuild, and a
/// MULTI open at the pinned number would keep the copy from being taken at all.)
#[test]
fn safe_delivery_goes_on_while_a_replica_is_rebuilt() {
    let settings = settings(DeliveryStrategy::Safe);
    let mut sequencer = Sequencer::<u64>::new(settings, [1, 2], 0, Duration::ZERO);
    let mut replicas = [
        ReplicaOrder::<u64>::new(settings, 0),
        ReplicaOrder::<u64>::new(settings, 0),
    ];
    assert_eq!(sequencer.pin(3), 0);
    let (_, out) = sequencer.order(41);
    let mut stable_out = Vec::new();
    for Outgoing { to, message } in out {
        for action in replicas[to as usize - 1].on_message(message, Duration::ZERO) {
            match action {
                ReplicaAction::Send(ack) => {
                    stable_out.extend(sequencer.on_message(to, ack, Duration::ZERO));
                }
                ReplicaAction::Deliver { .. } => panic!("delivered before stable"),
            }
        }
    }
    assert_eq!(sequencer.stable(), 1);
    assert_eq!(sequencer.retained(), 1, "kept for the joiner");
    let mut delivered = Vec::new();
    for Outgoing { to, message } in stable_out {
        for action in replicas[to as usize - 1].on_message(message, Duration::ZERO) {
            if let ReplicaAction::Deliver { number, payload } = action {
                delivered.push((to, number, payload));
            }
        }
    }
    assert_eq!(delivered, vec![(1, 1, 41), (2, 1, 41)]);
    // The joiner, from a copy taken at 0, is sent what it lacks.
    let sent = sequencer.add_replica(3, 0, Duration::ZERO).unwrap();
    assert!(sent.iter().any(|o| o.to == 3
        && o.message
            == ToReplica::Update {
                number: 1,
                payload: 41
            }));
}

/// An acknowledgement of a number never ordered is not trusted: nothing becomes stable.
#[test]
fn an_acknowledgement_beyond_the_order_is_capped() {
    let settings = settings(DeliveryStrategy::Safe);
    let mut sequencer = Sequencer::<u64>::new(settings, [1, 2], 0, Duration::ZERO);
    sequencer.order(7);
    sequencer.on_message(1, ToPrimary::Ack { up_to: 1_000 }, Duration::ZERO);
    assert_eq!(sequencer.acknowledged(1), Some(1));
    assert_eq!(sequencer.stable(), 0, "replica 2 holds nothing yet");
}

/// Reads go round-robin over every member (RR-P) or all but the primary (RR-NP), each behind
/// the barrier it was given; with the primary alone it serves them.
#[test]
fn reads_go_round_robin_behind_their_barrier() {
    let members = [3, 1, 2];
    let mut with = ReadScheduler::new(ReadPolicy::WithPrimary);
    let picks: Vec<_> = (0..6)
        .map(|_| with.schedule(&members, 1, 9).replica)
        .collect();
    assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
    let mut without = ReadScheduler::new(ReadPolicy::WithoutPrimary);
    let picks: Vec<_> = (0..4)
        .map(|_| without.schedule(&members, 1, 9).replica)
        .collect();
    assert_eq!(picks, vec![2, 3, 2, 3]);
    assert_eq!(without.schedule(&[1], 1, 4).replica, 1);
    assert_eq!(without.schedule(&members, 1, 4).barrier, 4);

    let mut replica = ReplicaOrder::<u64>::new(settings(DeliveryStrategy::BestEffort), 0);
    assert!(replica.read_may_run(0));
    assert!(!replica.read_may_run(1));
    replica.on_message(
        ToReplica::Update {
            number: 1,
            payload: 5,
        },
        Duration::ZERO,
    );
    assert!(replica.read_may_run(1));
}
