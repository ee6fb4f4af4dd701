//! Comparing the replicas' replies to each update in active mode (seed 001's response
//! aggregation): every replica executes every update, so every replica's reply to it must be
//! the same bytes. Only a digest of each reply crosses the group's links, not the reply.
//!
//! The reply the client gets is the primary's (it goes out as soon as the update is
//! acknowledgeable, without waiting for the others' digests), so the primary's digest is the
//! reference: a replica whose digest differs has diverged and must be taken out and rebuilt. When
//! the primary is the odd one out against a majority that agrees, the verdict says so instead:
//! the client already has the primary's reply, and only the operator (or a takeover) can tell
//! which data is right.
//!
//! No I/O and no clock; the shell feeds digests as they come and acts on verdicts.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::active_order::{OrderNumber, ReplicaId};

/// SHA-256 of a reply's bytes.
pub type ReplyDigest = [u8; 32];

pub fn digest_reply(reply: &[u8]) -> ReplyDigest {
    Sha256::digest(reply).into()
}

/// What the comparison of one update's replies says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every replica answered as the primary did.
    Agreed { number: OrderNumber },
    /// These replicas answered otherwise than the primary: take them out and rebuild them.
    Diverged {
        number: OrderNumber,
        replicas: Vec<ReplicaId>,
    },
    /// A majority of the group agrees on a reply other than the primary's: the primary's data
    /// is the suspect one, and its reply went to the client. An alarm, not an automatic cure.
    PrimaryOutvoted {
        number: OrderNumber,
        majority: Vec<ReplicaId>,
    },
    /// This replica is so far behind that its replies are no longer awaited (at most
    /// `max_pending` updates wait for digests): it is treated as failed.
    Lagging { replica: ReplicaId },
}

#[derive(Debug)]
pub struct ReplyComparator {
    primary: ReplicaId,
    /// Replicas whose digests are awaited, the primary included, each from the update it
    /// joined at.
    members: BTreeMap<ReplicaId, OrderNumber>,
    pending: BTreeMap<OrderNumber, BTreeMap<ReplicaId, ReplyDigest>>,
    max_pending: usize,
    /// Updates already judged (or given up): a digest that comes late for one of them must
    /// not open it again. Every update up to `judged_up_to`, and those in `judged_above`.
    judged_up_to: OrderNumber,
    judged_above: BTreeSet<OrderNumber>,
}

impl ReplyComparator {
    /// Compares the replies to every update from `first` on (numbers are contiguous: every
    /// one is judged or given up in the end).
    pub fn new(
        primary: ReplicaId,
        members: impl IntoIterator<Item = ReplicaId>,
        first: OrderNumber,
        max_pending: usize,
    ) -> ReplyComparator {
        let mut members: BTreeMap<ReplicaId, OrderNumber> =
            members.into_iter().map(|id| (id, 0)).collect();
        members.insert(primary, 0);
        ReplyComparator {
            primary,
            members,
            pending: BTreeMap::new(),
            max_pending: max_pending.max(1),
            judged_up_to: first.saturating_sub(1),
            judged_above: BTreeSet::new(),
        }
    }

    /// A replica's digest of its reply to update `number`. Digests from non-members, and a
    /// second digest from the same replica for the same update, are ignored.
    pub fn record(
        &mut self,
        number: OrderNumber,
        replica: ReplicaId,
        digest: ReplyDigest,
    ) -> Vec<Verdict> {
        if !self.awaits(replica, number) || self.was_judged(number) {
            return Vec::new();
        }
        self.pending
            .entry(number)
            .or_default()
            .entry(replica)
            .or_insert(digest);
        let mut verdicts = self.judge(number).into_iter().collect::<Vec<_>>();
        verdicts.extend(self.drop_laggards());
        verdicts
    }

    /// A replica left (crashed, or taken out after a verdict): nothing waits for it any more,
    /// and updates it alone held back are judged now.
    pub fn remove(&mut self, replica: ReplicaId) -> Vec<Verdict> {
        if replica == self.primary || self.members.remove(&replica).is_none() {
            return Vec::new();
        }
        for digests in self.pending.values_mut() {
            digests.remove(&replica);
        }
        let numbers: Vec<OrderNumber> = self.pending.keys().copied().collect();
        numbers
            .into_iter()
            .filter_map(|number| self.judge(number))
            .collect()
    }

    /// A replica joined (rebuilt, caught up): its digests are awaited from update `from` on.
    pub fn add(&mut self, replica: ReplicaId, from: OrderNumber) {
        self.members.insert(replica, from);
    }

    /// Updates whose digests are not all in.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether `replica`'s digest of update `number` is awaited: it is a member, and was when
    /// the update ran.
    fn awaits(&self, replica: ReplicaId, number: OrderNumber) -> bool {
        self.members
            .get(&replica)
            .is_some_and(|&from| from <= number)
    }

    fn awaited(&self, number: OrderNumber) -> impl Iterator<Item = ReplicaId> + '_ {
        self.members
            .iter()
            .filter(move |(_, &from)| from <= number)
            .map(|(&id, _)| id)
    }

    fn judge(&mut self, number: OrderNumber) -> Option<Verdict> {
        let digests = self.pending.get(&number)?;
        if !self.awaited(number).all(|m| digests.contains_key(&m)) {
            return None;
        }
        let answered = self.pending.remove(&number)?;
        self.mark_judged(number);
        let reference = *answered.get(&self.primary)?;
        let differing: Vec<ReplicaId> = answered
            .iter()
            .filter(|(_, d)| **d != reference)
            .map(|(&id, _)| id)
            .collect();
        if differing.is_empty() {
            return Some(Verdict::Agreed { number });
        }
        // A strict majority of those that answered agreeing on another reply.
        let mut tally: BTreeMap<ReplyDigest, Vec<ReplicaId>> = BTreeMap::new();
        for id in &differing {
            tally.entry(answered[id]).or_default().push(*id);
        }
        if let Some(majority) = tally
            .into_values()
            .find(|agreeing| agreeing.len() * 2 > answered.len())
        {
            return Some(Verdict::PrimaryOutvoted { number, majority });
        }
        Some(Verdict::Diverged {
            number,
            replicas: differing,
        })
    }

    fn was_judged(&self, number: OrderNumber) -> bool {
        number <= self.judged_up_to || self.judged_above.contains(&number)
    }

    fn mark_judged(&mut self, number: OrderNumber) {
        self.judged_above.insert(number);
        while self.judged_above.remove(&(self.judged_up_to + 1)) {
            self.judged_up_to += 1;
        }
    }

    fn drop_laggards(&mut self) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        while self.pending.len() > self.max_pending {
            let Some((&oldest, digests)) = self.pending.iter().next() else {
                break;
            };
            let missing: Vec<ReplicaId> = self
                .awaited(oldest)
                .filter(|m| !digests.contains_key(m))
                .collect();
            if missing.is_empty() || missing.contains(&self.primary) {
                // The primary's own digest is late: nobody to blame; the oldest is dropped
                // unjudged rather than let the table grow.
                self.pending.remove(&oldest);
                self.mark_judged(oldest);
                continue;
            }
            for replica in missing {
                verdicts.push(Verdict::Lagging { replica });
                verdicts.extend(self.remove(replica));
            }
        }
        verdicts
    }
}
