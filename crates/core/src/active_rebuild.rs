//! The primary's bookkeeping of replica rebuilds in active mode (issue 18 item 4): a replica
//! out of the ordering (lost, or restarted empty) is rebuilt from a copy of a live replica's
//! data, then runs the ordered stream from the copy's number, and only then serves reads.
//!
//! [`Rebuilds`] decides which replica gives the copy, which rebuild a copy's part belongs to,
//! when a rebuild is given up (too slow, or a replica in it lost) and when a rebuilt replica has
//! caught up. The caller keeps the ordering's log pinned from [`Rebuilds::start`] until the
//! joiner joins or the rebuild is given up (`Sequencer::pin`/`unpin`).
//!
//! No I/O and no clock: it takes the time (`Duration` since any origin).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::active_order::{OrderNumber, ReplicaId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Under {
    id: u64,
    source: ReplicaId,
    started: Duration,
}

/// A rebuilt replica that loaded its copy and runs the updates since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CatchingUp {
    /// It serves reads once it acknowledged this number (the last ordered when it loaded).
    target: OrderNumber,
    started: Duration,
}

/// A rebuild just started: ask `source` for a copy for rebuild `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyRequest {
    pub id: u64,
    pub source: ReplicaId,
}

#[derive(Debug, Clone)]
pub struct Rebuilds {
    timeout: Duration,
    next_id: u64,
    under_way: BTreeMap<ReplicaId, Under>,
    catching_up: BTreeMap<ReplicaId, CatchingUp>,
}

impl Rebuilds {
    /// A rebuild whose copy is not loaded within `timeout` is given up (and may start again).
    pub fn new(timeout: Duration) -> Rebuilds {
        Rebuilds {
            timeout,
            next_id: 0,
            under_way: BTreeMap::new(),
            catching_up: BTreeMap::new(),
        }
    }

    /// Whether `replica` is being rebuilt or catching up (not to be rebuilt again).
    pub fn involves(&self, replica: ReplicaId) -> bool {
        self.under_way.contains_key(&replica) || self.catching_up.contains_key(&replica)
    }

    /// Whether `replica` waits for its copy: what it acknowledges means nothing yet.
    pub fn awaits_copy(&self, replica: ReplicaId) -> bool {
        self.under_way.contains_key(&replica)
    }

    /// Starts rebuilding `joiner` from one of `serving` (the replicas serving reads): another
    /// than the primary when there is one, since the source holds back its updates while its
    /// copy is read and the primary's own replica answers the clients' updates. `None`: no
    /// source, or a rebuild of `joiner` is under way already.
    pub fn start(
        &mut self,
        joiner: ReplicaId,
        serving: &[ReplicaId],
        primary: ReplicaId,
        now: Duration,
    ) -> Option<CopyRequest> {
        if self.involves(joiner) {
            return None;
        }
        let mut candidates: Vec<ReplicaId> =
            serving.iter().copied().filter(|&r| r != joiner).collect();
        candidates.sort_unstable();
        let source = candidates
            .iter()
            .copied()
            .find(|&r| r != primary)
            .or_else(|| candidates.first().copied())?;
        self.next_id += 1;
        let id = self.next_id;
        self.under_way.insert(
            joiner,
            Under {
                id,
                source,
                started: now,
            },
        );
        Some(CopyRequest { id, source })
    }

    /// Where a part of copy `id` from `from` goes: the joiner, when the rebuild is still on and
    /// `from` its source.
    pub fn joiner_of(&self, id: u64, from: ReplicaId) -> Option<ReplicaId> {
        self.under_way
            .iter()
            .find(|(_, r)| r.id == id && r.source == from)
            .map(|(&joiner, _)| joiner)
    }

    /// `joiner` loaded copy `id`: it joins the ordering and catches up to `last_ordered`.
    /// Returns when the rebuild started, or `None` for a copy of a rebuild given up.
    pub fn loaded(
        &mut self,
        joiner: ReplicaId,
        id: u64,
        last_ordered: OrderNumber,
    ) -> Option<Duration> {
        if self.under_way.get(&joiner).is_none_or(|r| r.id != id) {
            return None;
        }
        let started = self.under_way.remove(&joiner)?.started;
        self.catching_up.insert(
            joiner,
            CatchingUp {
                target: last_ordered,
                started,
            },
        );
        Some(started)
    }

    /// `replica` acknowledged every update up to `up_to`: when that completes its catch-up,
    /// how long its whole rebuild took; it serves reads from now on.
    pub fn acknowledged(
        &mut self,
        replica: ReplicaId,
        up_to: OrderNumber,
        now: Duration,
    ) -> Option<Duration> {
        let catching = self.catching_up.get(&replica)?;
        if up_to < catching.target {
            return None;
        }
        let started = catching.started;
        self.catching_up.remove(&replica);
        Some(now.saturating_sub(started))
    }

    /// Rebuilds not loaded within the timeout, given up: their joiners (unpin the log for
    /// each).
    pub fn expired(&mut self, now: Duration) -> Vec<ReplicaId> {
        let expired: Vec<ReplicaId> = self
            .under_way
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.started) >= self.timeout)
            .map(|(&joiner, _)| joiner)
            .collect();
        for joiner in &expired {
            self.under_way.remove(joiner);
        }
        expired
    }

    /// `replica` is lost or unlinked: the rebuilds it is the joiner or the source of are given
    /// up (their joiners returned, to unpin the log for), and its own catch-up ends (relinked,
    /// it is judged by what it acknowledges, as any replica).
    pub fn lost(&mut self, replica: ReplicaId) -> Vec<ReplicaId> {
        let given_up: Vec<ReplicaId> = self
            .under_way
            .iter()
            .filter(|(&joiner, r)| joiner == replica || r.source == replica)
            .map(|(&joiner, _)| joiner)
            .collect();
        for joiner in &given_up {
            self.under_way.remove(joiner);
        }
        self.catching_up.remove(&replica);
        given_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_copy_comes_from_a_replica_other_than_the_primary_when_there_is_one() {
        let mut rebuilds = Rebuilds::new(10_000 * MS);
        let request = rebuilds.start(3, &[1, 2, 3], 1, Duration::ZERO).unwrap();
        assert_eq!(request.source, 2);
        assert!(
            rebuilds.start(3, &[1, 2], 1, MS).is_none(),
            "under way already"
        );
        // Only the primary serves: it gives the copy.
        let request = rebuilds.start(2, &[1], 1, MS).unwrap();
        assert_eq!(request.source, 1);
        // Nobody serves: no rebuild.
        assert!(rebuilds.start(4, &[4], 1, MS).is_none());
        assert!(!rebuilds.involves(4));
    }

    #[test]
    fn a_rebuild_goes_copy_then_catch_up_then_reads() {
        let mut rebuilds = Rebuilds::new(10_000 * MS);
        let request = rebuilds.start(3, &[1, 2], 1, 100 * MS).unwrap();
        assert!(rebuilds.awaits_copy(3));
        assert_eq!(rebuilds.joiner_of(request.id, 2), Some(3));
        assert_eq!(rebuilds.joiner_of(request.id, 1), None, "not its source");
        assert_eq!(rebuilds.joiner_of(request.id + 1, 2), None);
        assert_eq!(rebuilds.loaded(3, request.id + 1, 50), None, "another copy");
        assert_eq!(rebuilds.loaded(3, request.id, 50), Some(100 * MS));
        assert!(!rebuilds.awaits_copy(3) && rebuilds.involves(3));
        assert_eq!(rebuilds.acknowledged(3, 49, 150 * MS), None);
        assert_eq!(rebuilds.acknowledged(3, 50, 180 * MS), Some(80 * MS));
        assert!(!rebuilds.involves(3));
        assert_eq!(rebuilds.acknowledged(3, 60, 190 * MS), None, "once");
    }

    #[test]
    fn a_slow_rebuild_or_one_whose_source_is_lost_is_given_up() {
        let mut rebuilds = Rebuilds::new(1_000 * MS);
        let first = rebuilds.start(3, &[1, 2], 1, Duration::ZERO).unwrap();
        rebuilds.start(4, &[1], 1, 500 * MS).unwrap();
        assert!(rebuilds.expired(999 * MS).is_empty());
        assert_eq!(rebuilds.expired(1_000 * MS), vec![3]);
        assert_eq!(rebuilds.joiner_of(first.id, 2), None);
        // Replica 4's source (1) lost: given up.
        assert_eq!(rebuilds.lost(1), vec![4]);
        assert!(!rebuilds.involves(4));
        // Started again, the joiner lost: given up too.
        rebuilds.start(3, &[1, 2], 1, 2_000 * MS).unwrap();
        assert_eq!(rebuilds.lost(3), vec![3]);
        assert!(rebuilds.expired(Duration::from_secs(60)).is_empty());
    }
}
