//! Ordered delivery of updates to every replica in active mode (seed 001, AR-TCP): the
//! primary's [`Sequencer`] gives each update an ordering number and sends it to every replica;
//! each replica's [`ReplicaOrder`] delivers updates to its server in that order, exactly once,
//! asks the primary for the numbers it misses (NAK) and acknowledges what it holds.
//!
//! Two strategies, chosen per group, as the seed defines them:
//! - **best effort**: a replica delivers an update as soon as every lower number was delivered;
//! - **safe**: a replica delivers an update only once it is *stable*, held by every replica, so
//!   that no replica executes an update that another could lose with the primary.
//!
//! Reads run on one replica (the [`ReadScheduler`] picks it round-robin, with or without the
//! primary) behind a barrier: the replica serves the read once it delivered every update up to
//! the barrier's number, so no read sees a state older than the updates before it.
//!
//! When the primary fails, the replica that received the highest number takes over
//! ([`ReplicaOrder::into_sequencer`]; the seed's rule, lowest id among equals being the
//! caller's): every replica keeps what it received until the primary says all hold it, so the
//! new primary can bring the others up to its own number. The others
//! [`follow`](ReplicaOrder::follow) it. An update is safe to acknowledge to its client once it
//! is [stable](Sequencer::stable): any survivor then holds it.
//!
//! No I/O and no clock: both ends take messages and the time (`Duration` since any origin) and
//! return what to send and what to deliver; losses are repaired by retransmission on the
//! primary's timer and NAKs on the replicas'. Ordering numbers are `u64` from 1 and never wrap
//! (the seed folds them at a bound; 2^64 updates do not happen).

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

/// An update's place in the order every replica executes in; 0 stands for "none yet".
pub type OrderNumber = u64;

/// A member of the group that runs the service.
pub type ReplicaId = u32;

/// How a replica delivers the updates it holds: chosen per service (`delivery` in its
/// configuration), written there as [`DeliveryStrategy::name`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryStrategy {
    /// On arrival, in order: an update may run on some replicas and be lost with the primary.
    #[default]
    BestEffort,
    /// Once every replica holds it (the primary's `Stable`): one more round trip per update.
    Safe,
}

impl DeliveryStrategy {
    pub const ALL: [DeliveryStrategy; 2] = [DeliveryStrategy::BestEffort, DeliveryStrategy::Safe];

    /// Its name in the configuration file and in `status`.
    pub fn name(self) -> &'static str {
        match self {
            DeliveryStrategy::BestEffort => "best-effort",
            DeliveryStrategy::Safe => "safe",
        }
    }

    pub fn parse(name: &str) -> Option<DeliveryStrategy> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderingSettings {
    pub strategy: DeliveryStrategy,
    /// A replica that acknowledged nothing new for this long is sent again what it lacks.
    pub retransmit_after: Duration,
    /// A gap (or, in safe mode, updates waiting for stability) this old is asked for again.
    pub repeat_request_after: Duration,
    /// Most updates sent again to one replica at once: a replica far behind is brought up in
    /// bursts rather than in one send the size of the whole backlog.
    pub retransmit_burst: usize,
}

impl Default for OrderingSettings {
    fn default() -> Self {
        OrderingSettings {
            strategy: DeliveryStrategy::default(),
            retransmit_after: Duration::from_millis(20),
            repeat_request_after: Duration::from_millis(10),
            retransmit_burst: 256,
        }
    }
}

/// From the primary to a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToReplica<T> {
    Update {
        number: OrderNumber,
        payload: T,
    },
    /// Every replica holds every update up to here (safe delivery).
    Stable {
        up_to: OrderNumber,
    },
}

/// From a replica to the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToPrimary {
    /// Holds every update up to here (cumulative).
    Ack { up_to: OrderNumber },
    /// Lacks these updates (it holds a later one).
    Nak { missing: Range<OrderNumber> },
}

/// What the primary sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing<T> {
    pub to: ReplicaId,
    pub message: ToReplica<T>,
}

/// The primary's side: numbers updates, keeps each until every replica holds it, and sends
/// again what is lost.
#[derive(Debug)]
pub struct Sequencer<T> {
    settings: OrderingSettings,
    last_ordered: OrderNumber,
    /// Updates some replica may still lack, by number.
    retained: BTreeMap<OrderNumber, T>,
    replicas: BTreeMap<ReplicaId, ReplicaProgress>,
    /// Held by every replica (what the last `Stable` said, in safe mode).
    stable: OrderNumber,
    /// Every update after this one is retained: held by every replica and below every pin.
    /// Apart from `stable` because a pin holds back only what is kept, not stability: under
    /// safe delivery a pin that held stability would stop every replica's delivery for the
    /// whole rebuild, and a MULTI open at the pinned number would keep the copy from ever
    /// finding a point outside it (the copy given up, the rebuild retried, updates stalled).
    kept_after: OrderNumber,
    /// Replicas being rebuilt from a copy of a live one: every update after the pinned number
    /// stays retained until they join, whatever the copy's number turns out to be.
    pins: BTreeMap<ReplicaId, OrderNumber>,
}

#[derive(Debug, Clone, Copy)]
struct ReplicaProgress {
    acked: OrderNumber,
    /// When its acknowledgement last moved on, or it was last sent again what it lacks.
    progress_at: Duration,
}

impl<T: Clone> Sequencer<T> {
    /// A sequencer whose replicas hold every update up to `start` (a new group: 0).
    pub fn new(
        settings: OrderingSettings,
        replicas: impl IntoIterator<Item = ReplicaId>,
        start: OrderNumber,
        now: Duration,
    ) -> Sequencer<T> {
        Sequencer {
            settings,
            last_ordered: start,
            retained: BTreeMap::new(),
            replicas: replicas
                .into_iter()
                .map(|id| {
                    (
                        id,
                        ReplicaProgress {
                            acked: start,
                            progress_at: now,
                        },
                    )
                })
                .collect(),
            stable: start,
            kept_after: start,
            pins: BTreeMap::new(),
        }
    }

    /// Replica `id` is about to be rebuilt from a copy a live replica takes from now on: every
    /// update after the current stable number is kept until [`add_replica`](Self::add_replica)
    /// (any copy taken from now on holds at least that much) or [`unpin`](Self::unpin).
    /// Returns the number kept from. Stability goes on meanwhile: it is the replicas' alone,
    /// and the joiner is none until it joins.
    pub fn pin(&mut self, id: ReplicaId) -> OrderNumber {
        *self.pins.entry(id).or_insert(self.stable)
    }

    /// The rebuild of `id` was given up: its pin no longer holds updates back.
    pub fn unpin(&mut self, id: ReplicaId) -> Vec<Outgoing<T>> {
        if self.pins.remove(&id).is_none() {
            return Vec::new();
        }
        self.advance_stability()
    }

    /// Numbers an update and sends it to every replica.
    pub fn order(&mut self, payload: T) -> (OrderNumber, Vec<Outgoing<T>>) {
        let number = self.last_ordered + 1;
        self.last_ordered = number;
        let out = self
            .replicas
            .keys()
            .map(|&to| Outgoing {
                to,
                message: ToReplica::Update {
                    number,
                    payload: payload.clone(),
                },
            })
            .collect();
        if self.replicas.is_empty() {
            // Nobody to wait for: stable at once.
            self.stable = number;
        }
        if self.replicas.is_empty() && self.pins.is_empty() {
            // Nobody who may lack it: nothing to retain.
            self.kept_after = number;
        } else {
            self.retained.insert(number, payload);
        }
        (number, out)
    }

    pub fn on_message(
        &mut self,
        from: ReplicaId,
        message: ToPrimary,
        now: Duration,
    ) -> Vec<Outgoing<T>> {
        let Some(progress) = self.replicas.get_mut(&from) else {
            return Vec::new();
        };
        match message {
            ToPrimary::Ack { up_to } => {
                // An acknowledgement of a number never ordered is a replica gone wrong; it is
                // capped, not trusted.
                let up_to = up_to.min(self.last_ordered);
                if up_to > progress.acked {
                    progress.acked = up_to;
                    progress.progress_at = now;
                    self.advance_stability()
                } else {
                    // A repeated acknowledgement: the replica may have missed the last
                    // `Stable`, and waits for it (safe) or keeps what it could drop.
                    vec![Outgoing {
                        to: from,
                        message: ToReplica::Stable { up_to: self.stable },
                    }]
                }
            }
            ToPrimary::Nak { missing } => {
                let from_number = missing.start.max(progress.acked + 1);
                let to_number = missing.end.min(self.last_ordered + 1);
                self.resend(from, from_number..to_number)
            }
        }
    }

    /// Sends again what replicas silent too long lack.
    pub fn tick(&mut self, now: Duration) -> Vec<Outgoing<T>> {
        let lagging: Vec<(ReplicaId, OrderNumber)> = self
            .replicas
            .iter_mut()
            .filter(|(_, p)| {
                p.acked < self.last_ordered
                    && now.saturating_sub(p.progress_at) >= self.settings.retransmit_after
            })
            .map(|(&id, p)| {
                p.progress_at = now;
                (id, p.acked)
            })
            .collect();
        let mut out = Vec::new();
        for (id, acked) in lagging {
            out.extend(self.resend(id, acked + 1..self.last_ordered + 1));
            if self.stable > 0 {
                out.push(Outgoing {
                    to: id,
                    message: ToReplica::Stable { up_to: self.stable },
                });
            }
        }
        out
    }

    /// A replica left the group (crashed, or taken out): it no longer holds back stability.
    pub fn remove_replica(&mut self, id: ReplicaId) -> Vec<Outgoing<T>> {
        if self.replicas.remove(&id).is_none() {
            return Vec::new();
        }
        if self.replicas.is_empty() && self.pins.is_empty() {
            self.stable = self.last_ordered;
            self.kept_after = self.last_ordered;
            self.retained.clear();
            return Vec::new();
        }
        self.advance_stability()
    }

    /// A replica joins holding every update up to `holds` (a full copy of a live replica's
    /// data taken at that number); it is sent the rest. Refused when part of the rest is no
    /// longer retained (every other replica held it): the joiner needs a newer copy.
    pub fn add_replica(
        &mut self,
        id: ReplicaId,
        holds: OrderNumber,
        now: Duration,
    ) -> Result<Vec<Outgoing<T>>, CopyTooOld> {
        let holds = holds.min(self.last_ordered);
        if holds < self.kept_after {
            return Err(CopyTooOld {
                holds,
                oldest_retained: self.kept_after + 1,
            });
        }
        self.replicas.insert(
            id,
            ReplicaProgress {
                acked: holds,
                progress_at: now,
            },
        );
        self.pins.remove(&id);
        Ok(self.resend(id, holds + 1..self.last_ordered + 1))
    }

    pub fn last_ordered(&self) -> OrderNumber {
        self.last_ordered
    }

    /// Held by every replica.
    pub fn stable(&self) -> OrderNumber {
        self.stable
    }

    /// Held by every replica in the ordering, not counting the replicas being rebuilt (their
    /// pins hold back only what is kept): what a client may be told was done, since any of
    /// these replicas can take over holding it. With no replica, everything ordered.
    pub fn held_by_every_replica(&self) -> OrderNumber {
        self.replicas
            .values()
            .map(|p| p.acked)
            .min()
            .unwrap_or(self.last_ordered)
    }

    /// Updates kept until every replica holds them.
    pub fn retained(&self) -> usize {
        self.retained.len()
    }

    /// What replica `id` acknowledged (`None`: not a member).
    pub fn acknowledged(&self, id: ReplicaId) -> Option<OrderNumber> {
        self.replicas.get(&id).map(|p| p.acked)
    }

    fn resend(&self, to: ReplicaId, numbers: Range<OrderNumber>) -> Vec<Outgoing<T>> {
        // A NAK for numbers already acknowledged, or never ordered, asks for nothing.
        if numbers.is_empty() {
            return Vec::new();
        }
        self.retained
            .range(numbers)
            .take(self.settings.retransmit_burst)
            .map(|(&number, payload)| Outgoing {
                to,
                message: ToReplica::Update {
                    number,
                    payload: payload.clone(),
                },
            })
            .collect()
    }

    /// Drops what every replica holds and no pin keeps, and tells every replica the new stable
    /// number.
    fn advance_stability(&mut self) -> Vec<Outgoing<T>> {
        let held_by_all = self
            .replicas
            .values()
            .map(|p| p.acked)
            .min()
            .unwrap_or(self.last_ordered);
        let kept_after = self
            .pins
            .values()
            .copied()
            .fold(held_by_all, OrderNumber::min);
        if kept_after > self.kept_after {
            self.kept_after = kept_after;
            self.retained = self.retained.split_off(&(kept_after + 1));
        }
        if held_by_all <= self.stable {
            return Vec::new();
        }
        self.stable = held_by_all;
        // Told in both strategies: safe delivery waits for it, and every replica drops the
        // updates it kept for a takeover.
        self.replicas
            .keys()
            .map(|&to| Outgoing {
                to,
                message: ToReplica::Stable { up_to: held_by_all },
            })
            .collect()
    }
}

/// A joining replica's copy is older than the updates the primary still keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a replica holding updates up to {holds} cannot join from the log, which starts at \
     {oldest_retained}: it needs a newer copy of a live replica's data"
)]
pub struct CopyTooOld {
    pub holds: OrderNumber,
    pub oldest_retained: OrderNumber,
}

/// A replica delivered updates the new primary never received: its data went where the group's
/// did not, and it must be rebuilt from a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this replica delivered updates up to {delivered}, beyond the new primary's {new_primary}: \
     it must be rebuilt from a copy of the new primary's data"
)]
pub struct Diverged {
    pub delivered: OrderNumber,
    pub new_primary: OrderNumber,
}

/// What a replica does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaAction<T> {
    /// Hand the update to the server: every lower number was.
    Deliver {
        number: OrderNumber,
        payload: T,
    },
    Send(ToPrimary),
}

/// A replica's side: holds updates that came early, delivers in order, and keeps the primary
/// told what it holds and lacks.
#[derive(Debug)]
pub struct ReplicaOrder<T> {
    settings: OrderingSettings,
    /// Received and not yet delivered, by number.
    waiting: BTreeMap<OrderNumber, T>,
    /// Delivered and not yet stable: what this replica would send the others if it took over.
    kept: BTreeMap<OrderNumber, T>,
    /// Every update up to here was received.
    contiguous: OrderNumber,
    delivered: OrderNumber,
    /// Safe delivery: every replica holds every update up to here.
    stable: OrderNumber,
    /// Since when it waits for something: a gap, or (safe) stability.
    waiting_since: Option<Duration>,
}

impl<T: Clone> ReplicaOrder<T> {
    /// A replica whose server holds every update up to `start`.
    pub fn new(settings: OrderingSettings, start: OrderNumber) -> ReplicaOrder<T> {
        ReplicaOrder {
            settings,
            waiting: BTreeMap::new(),
            kept: BTreeMap::new(),
            contiguous: start,
            delivered: start,
            stable: start,
            waiting_since: None,
        }
    }

    pub fn on_message(&mut self, message: ToReplica<T>, now: Duration) -> Vec<ReplicaAction<T>> {
        let mut out = Vec::new();
        match message {
            ToReplica::Update { number, payload } => {
                if number <= self.contiguous {
                    // Sent again: the primary did not hear the acknowledgement.
                    out.push(ReplicaAction::Send(ToPrimary::Ack {
                        up_to: self.contiguous,
                    }));
                    return out;
                }
                self.waiting.entry(number).or_insert(payload);
                let before = self.contiguous;
                while self.waiting.contains_key(&(self.contiguous + 1)) {
                    self.contiguous += 1;
                }
                if self.contiguous > before {
                    out.push(ReplicaAction::Send(ToPrimary::Ack {
                        up_to: self.contiguous,
                    }));
                } else if self.waiting_since.is_none() {
                    // A gap, seen for the first time: ask at once.
                    out.push(ReplicaAction::Send(ToPrimary::Nak {
                        missing: self.contiguous + 1..number,
                    }));
                }
            }
            ToReplica::Stable { up_to } => {
                // Never beyond what this replica holds: a `Stable` from before a takeover may
                // count updates the new primary numbered anew.
                self.stable = self.stable.max(up_to.min(self.contiguous));
                self.kept = self.kept.split_off(&(self.stable + 1));
            }
        }
        self.deliver(&mut out);
        self.note_waiting(now);
        out
    }

    /// Asks again for what has been missing, or (safe) waited for, too long.
    pub fn tick(&mut self, now: Duration) -> Vec<ReplicaAction<T>> {
        let Some(since) = self.waiting_since else {
            return Vec::new();
        };
        if now.saturating_sub(since) < self.settings.repeat_request_after {
            return Vec::new();
        }
        self.waiting_since = Some(now);
        let mut out = Vec::new();
        if let Some(&next) = self
            .waiting
            .range(self.contiguous + 1..)
            .next()
            .map(|(n, _)| n)
        {
            if next > self.contiguous + 1 {
                out.push(ReplicaAction::Send(ToPrimary::Nak {
                    missing: self.contiguous + 1..next,
                }));
            }
        }
        // Safe: the acknowledgement again, which the primary answers with the stable number.
        out.push(ReplicaAction::Send(ToPrimary::Ack {
            up_to: self.contiguous,
        }));
        out
    }

    /// Delivered to the server: every update up to here.
    pub fn delivered(&self) -> OrderNumber {
        self.delivered
    }

    /// Received: every update up to here (what it acknowledges).
    pub fn received(&self) -> OrderNumber {
        self.contiguous
    }

    /// A read behind `barrier` may run here now: every update before it was delivered.
    pub fn read_may_run(&self, barrier: OrderNumber) -> bool {
        self.delivered >= barrier
    }

    fn deliver(&mut self, out: &mut Vec<ReplicaAction<T>>) {
        let limit = match self.settings.strategy {
            DeliveryStrategy::BestEffort => self.contiguous,
            DeliveryStrategy::Safe => self.contiguous.min(self.stable),
        };
        while self.delivered < limit {
            let number = self.delivered + 1;
            let Some(payload) = self.waiting.remove(&number) else {
                break;
            };
            self.delivered = number;
            if number > self.stable {
                self.kept.insert(number, payload.clone());
            }
            out.push(ReplicaAction::Deliver { number, payload });
        }
    }

    /// This replica (`own`) becomes the primary: it received the highest number among the
    /// survivors. It goes on from its own number, keeping for the `others` every update it
    /// received that is not known to be held by all; they are assumed to hold only what was
    /// stable, until their acknowledgements and NAKs say more.
    pub fn into_sequencer(
        self,
        own: ReplicaId,
        others: impl IntoIterator<Item = ReplicaId>,
        now: Duration,
    ) -> (Sequencer<T>, ReplicaOrder<T>) {
        let mut sequencer = Sequencer::new(self.settings, others, self.stable, now);
        sequencer.last_ordered = self.contiguous;
        sequencer.replicas.insert(
            own,
            ReplicaProgress {
                acked: self.contiguous,
                progress_at: now,
            },
        );
        sequencer.retained = self
            .kept
            .iter()
            .chain(self.waiting.range(..=self.contiguous))
            .map(|(&n, payload)| (n, payload.clone()))
            .collect();
        // Itself as a replica: what it received beyond a gap is numbered anew.
        let mut own = self;
        drop(own.waiting.split_off(&(own.contiguous + 1)));
        own.waiting_since = None;
        (sequencer, own)
    }

    /// This replica now follows a new primary whose log ends at `new_primary`: what it holds
    /// beyond that was never held by the new primary, whose next updates take those numbers;
    /// it is dropped (undelivered, under the election's rule). Refused when this replica
    /// delivered beyond it (best effort, the old primary's last updates): it must be rebuilt.
    pub fn follow(&mut self, new_primary: OrderNumber, now: Duration) -> Result<(), Diverged> {
        if self.delivered > new_primary {
            return Err(Diverged {
                delivered: self.delivered,
                new_primary,
            });
        }
        drop(self.waiting.split_off(&(new_primary + 1)));
        drop(self.kept.split_off(&(new_primary + 1)));
        self.contiguous = self.contiguous.min(new_primary);
        self.stable = self.stable.min(new_primary);
        self.waiting_since = None;
        self.note_waiting(now);
        Ok(())
    }

    fn note_waiting(&mut self, now: Duration) {
        let gap = self.waiting.range(self.contiguous + 1..).next().is_some();
        let unstable = self.delivered < self.contiguous;
        if gap || unstable {
            self.waiting_since.get_or_insert(now);
        } else {
            self.waiting_since = None;
        }
    }
}

/// Which replicas serve reads: every member in turn (RR-P), or all but the primary (RR-NP),
/// which leaves the primary's CPU to ordering and updates. Chosen per service (`read_policy`
/// in its configuration), written there as [`ReadPolicy::name`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadPolicy {
    #[default]
    WithPrimary,
    WithoutPrimary,
}

impl ReadPolicy {
    pub const ALL: [ReadPolicy; 2] = [ReadPolicy::WithPrimary, ReadPolicy::WithoutPrimary];

    /// Its name in the configuration file and in `status`.
    pub fn name(self) -> &'static str {
        match self {
            ReadPolicy::WithPrimary => "with-primary",
            ReadPolicy::WithoutPrimary => "without-primary",
        }
    }

    pub fn parse(name: &str) -> Option<ReadPolicy> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Sent with a read: which replica serves it, and the update it must have delivered first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulingHeader {
    pub replica: ReplicaId,
    pub barrier: OrderNumber,
}

/// Spreads reads over the replicas, round-robin.
#[derive(Debug, Clone)]
pub struct ReadScheduler {
    policy: ReadPolicy,
    turn: usize,
}

impl ReadScheduler {
    pub fn new(policy: ReadPolicy) -> ReadScheduler {
        ReadScheduler { policy, turn: 0 }
    }

    /// The replica for the next read among `members` (sorted or not; the primary among them),
    /// behind `barrier` (the caller's choice: the last update ordered, or the last one this
    /// client's earlier requests made). Without another member, the primary serves even under
    /// [`ReadPolicy::WithoutPrimary`]: a read is never refused for want of a replica.
    pub fn schedule(
        &mut self,
        members: &[ReplicaId],
        primary: ReplicaId,
        barrier: OrderNumber,
    ) -> SchedulingHeader {
        let mut candidates: Vec<ReplicaId> = members
            .iter()
            .copied()
            .filter(|&id| self.policy == ReadPolicy::WithPrimary || id != primary)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let replica = if candidates.is_empty() {
            primary
        } else {
            let chosen = candidates[self.turn % candidates.len()];
            self.turn = self.turn.wrapping_add(1);
            chosen
        };
        SchedulingHeader { replica, barrier }
    }
}
