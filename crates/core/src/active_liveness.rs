//! Finding a lost replica in active mode within one detection, and re-running the reads it
//! owed on a live one.
//!
//! A replica whose host dies says nothing: its TCP link only ends when the kernel gives up on
//! the unacknowledged data (seconds). The primary therefore probes every replica's link
//! ([`ReplicaWatch`]) and names a replica lost once it has been silent for one detection (the
//! group's heartbeat interval × its miss count, what the election itself waits); anything the
//! replica sends counts as a sign of life, so a busy link costs no extra probe replies.
//!
//! Reads have no side effect, so the reads a lost replica never answered are simply run again
//! on a live one ([`ReadsInFlight`]); the client sees a later reply, never an error.
//!
//! No I/O and no clock: both take the time (`Duration` since any origin) and return what to do.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::active_order::ReplicaId;

/// Fewest probes sent per detection: a single lost probe reply (or one late scheduling of the
/// replica's task) must not be read as a death.
const PROBES_PER_DETECTION: u32 = 3;

/// What the watch asks the primary to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchAction {
    /// Send this replica a probe (it answers at once).
    Probe(ReplicaId),
    /// Silent for a whole detection: take it out of the reads, the ordering and the
    /// comparison, and drop its link. It is no longer watched.
    Lost {
        replica: ReplicaId,
        silent: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
struct Watched {
    heard_at: Duration,
    probed_at: Duration,
}

/// The primary's watch over its replicas' links.
#[derive(Debug, Clone)]
pub struct ReplicaWatch {
    detection: Duration,
    probe_every: Duration,
    watched: BTreeMap<ReplicaId, Watched>,
}

impl ReplicaWatch {
    /// A replica silent for `detection` is lost (at least 1 ms).
    pub fn new(detection: Duration) -> ReplicaWatch {
        let detection = detection.max(Duration::from_millis(1));
        ReplicaWatch {
            detection,
            probe_every: detection / PROBES_PER_DETECTION,
            watched: BTreeMap::new(),
        }
    }

    pub fn detection(&self) -> Duration {
        self.detection
    }

    /// A link to `replica` came up: watched from now.
    pub fn linked(&mut self, replica: ReplicaId, now: Duration) {
        self.watched.insert(
            replica,
            Watched {
                heard_at: now,
                probed_at: now,
            },
        );
    }

    /// Something came from `replica`.
    pub fn heard(&mut self, replica: ReplicaId, now: Duration) {
        if let Some(watched) = self.watched.get_mut(&replica) {
            watched.heard_at = watched.heard_at.max(now);
        }
    }

    /// Its link ended (or it was taken out): no longer watched.
    pub fn unlinked(&mut self, replica: ReplicaId) {
        self.watched.remove(&replica);
    }

    pub fn is_watched(&self, replica: ReplicaId) -> bool {
        self.watched.contains_key(&replica)
    }

    /// Probes due and replicas found lost.
    pub fn tick(&mut self, now: Duration) -> Vec<WatchAction> {
        let mut actions = Vec::new();
        let mut lost = Vec::new();
        for (&replica, watched) in &mut self.watched {
            let silent = now.saturating_sub(watched.heard_at);
            if silent >= self.detection {
                lost.push(replica);
                actions.push(WatchAction::Lost { replica, silent });
            } else if now.saturating_sub(watched.probed_at) >= self.probe_every
                && now.saturating_sub(watched.heard_at) >= self.probe_every
            {
                watched.probed_at = now;
                actions.push(WatchAction::Probe(replica));
            }
        }
        for replica in lost {
            self.watched.remove(&replica);
        }
        actions
    }
}

/// The reads sent to each replica and not yet answered, so that those of a lost replica run
/// again elsewhere. `K` names a read (its session and index), `R` is what it takes to send it
/// again (its request and barrier).
#[derive(Debug, Clone)]
pub struct ReadsInFlight<K: Ord, R> {
    by_replica: BTreeMap<ReplicaId, BTreeMap<K, R>>,
}

impl<K: Ord, R> Default for ReadsInFlight<K, R> {
    fn default() -> Self {
        ReadsInFlight {
            by_replica: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy, R> ReadsInFlight<K, R> {
    pub fn sent(&mut self, replica: ReplicaId, key: K, read: R) {
        self.by_replica
            .entry(replica)
            .or_default()
            .insert(key, read);
    }

    /// `replica` answered the read `key`: whether it still owed it (a reply to a read already
    /// moved elsewhere is not the one the client waits for, though equal in value).
    pub fn answered(&mut self, replica: ReplicaId, key: K) -> bool {
        self.by_replica
            .get_mut(&replica)
            .is_some_and(|reads| reads.remove(&key).is_some())
    }

    /// `replica` is lost: the reads it owed, in their order, to run again on a live one.
    pub fn lost(&mut self, replica: ReplicaId) -> Vec<(K, R)> {
        self.by_replica
            .remove(&replica)
            .map(|reads| reads.into_iter().collect())
            .unwrap_or_default()
    }

    /// Reads `replica` owes.
    pub fn owed_by(&self, replica: ReplicaId) -> usize {
        self.by_replica.get(&replica).map_or(0, BTreeMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_silent_replica_is_probed_then_lost_after_one_detection() {
        let mut watch = ReplicaWatch::new(150 * MS);
        watch.linked(2, Duration::ZERO);
        watch.linked(3, Duration::ZERO);
        assert!(watch.tick(10 * MS).is_empty());
        assert_eq!(
            watch.tick(50 * MS),
            vec![WatchAction::Probe(2), WatchAction::Probe(3)]
        );
        watch.heard(3, 60 * MS);
        assert_eq!(watch.tick(100 * MS), vec![WatchAction::Probe(2)]);
        watch.heard(3, 140 * MS);
        assert_eq!(
            watch.tick(150 * MS),
            vec![WatchAction::Lost {
                replica: 2,
                silent: 150 * MS
            }]
        );
        assert!(!watch.is_watched(2));
        // Lost once: not named again.
        assert!(watch
            .tick(400 * MS)
            .iter()
            .all(|a| !matches!(a, WatchAction::Lost { replica: 2, .. })));
    }

    #[test]
    fn a_replica_that_keeps_talking_is_never_probed() {
        let mut watch = ReplicaWatch::new(30 * MS);
        watch.linked(1, Duration::ZERO);
        for t in 1..1000u32 {
            watch.heard(1, t * MS);
            assert!(watch.tick(t * MS).is_empty(), "at {t} ms");
        }
    }

    #[test]
    fn an_unlinked_replica_is_neither_probed_nor_lost() {
        let mut watch = ReplicaWatch::new(30 * MS);
        watch.linked(1, Duration::ZERO);
        watch.unlinked(1);
        watch.heard(1, 5 * MS);
        assert!(watch.tick(Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn reads_owed_by_a_lost_replica_come_back_in_order_and_only_once() {
        let mut reads: ReadsInFlight<(u64, u64), &str> = ReadsInFlight::default();
        reads.sent(2, (7, 1), "GET a");
        reads.sent(2, (7, 0), "GET b");
        reads.sent(3, (8, 0), "GET c");
        assert!(reads.answered(2, (7, 1)));
        assert!(!reads.answered(2, (7, 1)), "answered twice");
        assert!(!reads.answered(3, (7, 0)), "not sent there");
        assert_eq!(reads.lost(2), vec![((7, 0), "GET b")]);
        assert!(reads.lost(2).is_empty());
        assert_eq!(reads.owed_by(3), 1);
    }

    proptest! {
        /// Whatever the replies' timing, a replica is named lost exactly when it has been
        /// silent for a whole detection, and one that answers every probe within the probe
        /// interval never is.
        #[test]
        fn lost_exactly_after_one_silent_detection(
            detection_ms in 3u64..500,
            steps in proptest::collection::vec((1u64..40, any::<bool>()), 1..200),
        ) {
            let detection = Duration::from_millis(detection_ms);
            let mut watch = ReplicaWatch::new(detection);
            let mut now = Duration::ZERO;
            let mut heard_at = now;
            watch.linked(1, now);
            for (advance_ms, talks) in steps {
                now += Duration::from_millis(advance_ms);
                if talks {
                    watch.heard(1, now);
                    heard_at = now;
                }
                let lost = watch.tick(now).iter().any(|a| matches!(a, WatchAction::Lost { .. }));
                prop_assert_eq!(lost, now - heard_at >= detection);
                if lost {
                    break;
                }
            }
        }
    }
}
