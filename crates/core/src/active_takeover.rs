//! A new primary's first decision in active mode: which replica's data the group goes on from.
//!
//! Every replica reports its position when the new primary links to it: the primary process
//! (its random incarnation, and its epoch) that numbered the last update it received, and that
//! number. An update is acknowledged to its client only once every replica in the ordering
//! holds it, so every replica that was in the old primary's ordering holds every acknowledged
//! update; the one that received the most, in the newest epoch, holds them all and at most a
//! few unacknowledged ones more. The group goes on from it: the new primary numbers from its
//! number, the replicas at exactly the same position stay in the ordering, every other one is
//! rebuilt from a copy (its data holds less, or updates the reference never received, or a
//! numbering of its own).
//!
//! Positions from different primary processes are compared by epoch first: a replica that
//! followed a newer primary holds what that primary acknowledged, which an older primary's
//! longer log lacks.

use std::collections::BTreeMap;

use crate::active_order::{OrderNumber, ReplicaId};

/// Where a replica's data stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaPosition {
    /// The incarnation of the primary process that numbered its updates (0: none yet).
    pub ordered_by: u64,
    /// That primary's epoch.
    pub epoch: u64,
    /// Every update up to here was received.
    pub received: OrderNumber,
    /// False while its server holds part of a copy: its data is no one's.
    pub whole: bool,
}

impl ReplicaPosition {
    /// A replica that never received an update nor loaded a copy.
    pub const EMPTY: ReplicaPosition = ReplicaPosition {
        ordered_by: 0,
        epoch: 0,
        received: 0,
        whole: true,
    };

    fn same_data_as(&self, other: &ReplicaPosition) -> bool {
        self.whole
            && other.whole
            && self.ordered_by == other.ordered_by
            && self.epoch == other.epoch
            && self.received == other.received
    }
}

/// What the new primary does with the positions it gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeoverPlan {
    /// The replica the group goes on from (`None`: no replica reported a whole dataset).
    pub reference: Option<ReplicaId>,
    /// The new primary numbers updates from here on (the reference's number).
    pub start: OrderNumber,
    /// In the ordering from `start`: the reference and every replica at its position.
    pub continuing: Vec<ReplicaId>,
    /// Rebuilt from a copy of a continuing replica's data.
    pub rebuilt: Vec<ReplicaId>,
}

/// Chooses the reference among `positions` (every replica that reported): the newest epoch,
/// then the most received, then `preferred` (the new primary's own replica, whose replies the
/// clients get), then the lowest id.
pub fn plan_takeover(
    positions: &BTreeMap<ReplicaId, ReplicaPosition>,
    preferred: ReplicaId,
) -> TakeoverPlan {
    let reference = positions
        .iter()
        .filter(|(_, p)| p.whole)
        .max_by_key(|(&id, p)| (p.epoch, p.received, id == preferred, std::cmp::Reverse(id)))
        .map(|(&id, p)| (id, *p));
    let Some((reference, position)) = reference else {
        return TakeoverPlan {
            reference: None,
            start: 0,
            continuing: Vec::new(),
            rebuilt: positions.keys().copied().collect(),
        };
    };
    let (continuing, rebuilt) = positions
        .iter()
        .map(|(&id, p)| (id, p.same_data_as(&position)))
        .partition::<Vec<_>, _>(|(_, same)| *same);
    TakeoverPlan {
        reference: Some(reference),
        start: position.received,
        continuing: continuing.into_iter().map(|(id, _)| id).collect(),
        rebuilt: rebuilt.into_iter().map(|(id, _)| id).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ordered_by: u64, epoch: u64, received: OrderNumber) -> ReplicaPosition {
        ReplicaPosition {
            ordered_by,
            epoch,
            received,
            whole: true,
        }
    }

    fn plan(positions: &[(ReplicaId, ReplicaPosition)], preferred: ReplicaId) -> TakeoverPlan {
        plan_takeover(&positions.iter().copied().collect(), preferred)
    }

    #[test]
    fn a_new_group_goes_on_from_nothing_with_every_replica() {
        let p = plan(
            &[
                (1, ReplicaPosition::EMPTY),
                (2, ReplicaPosition::EMPTY),
                (3, ReplicaPosition::EMPTY),
            ],
            2,
        );
        assert_eq!(p.reference, Some(2));
        assert_eq!(p.start, 0);
        assert_eq!(p.continuing, vec![1, 2, 3]);
        assert!(p.rebuilt.is_empty());
    }

    #[test]
    fn the_replica_that_received_most_is_the_reference_and_the_others_are_rebuilt() {
        let p = plan(&[(2, at(9, 65537, 40)), (3, at(9, 65537, 42))], 2);
        assert_eq!(p.reference, Some(3));
        assert_eq!(p.start, 42);
        assert_eq!(p.continuing, vec![3]);
        assert_eq!(p.rebuilt, vec![2]);
    }

    #[test]
    fn replicas_at_the_same_position_all_continue_and_the_own_one_is_preferred() {
        let p = plan(
            &[
                (1, at(9, 65537, 42)),
                (2, at(9, 65537, 42)),
                (3, at(9, 65537, 42)),
            ],
            2,
        );
        assert_eq!(p.reference, Some(2));
        assert_eq!(p.continuing, vec![1, 2, 3]);
        assert!(p.rebuilt.is_empty());
    }

    #[test]
    fn a_newer_epoch_wins_over_a_longer_older_log() {
        // Replica 3 followed a primary of epoch 2 that went on from 90 (replica 1 had 100 of
        // epoch 1, of which 91..=100 were never acknowledged): 3's 95 holds acknowledged
        // updates that 1's 100 lacks.
        let p = plan(&[(1, at(7, 65537, 100)), (3, at(8, 131074, 95))], 1);
        assert_eq!(p.reference, Some(3));
        assert_eq!(p.start, 95);
        assert_eq!(p.rebuilt, vec![1]);
    }

    #[test]
    fn equal_numbers_of_another_primary_process_are_not_the_same_data() {
        let p = plan(&[(1, at(7, 65537, 50)), (2, at(8, 65537, 50))], 1);
        assert_eq!(p.reference, Some(1));
        assert_eq!(p.continuing, vec![1]);
        assert_eq!(p.rebuilt, vec![2]);
    }

    #[test]
    fn a_replica_halfway_through_loading_a_copy_is_never_the_reference_nor_continues() {
        let half = ReplicaPosition {
            whole: false,
            ..at(7, 65537, 500)
        };
        let p = plan(&[(1, half), (2, at(7, 65537, 400))], 1);
        assert_eq!(p.reference, Some(2));
        assert_eq!(p.rebuilt, vec![1]);
        let p = plan(&[(1, half)], 1);
        assert_eq!(p.reference, None);
        assert_eq!(p.rebuilt, vec![1]);
    }

    #[test]
    fn ties_without_the_preferred_replica_go_to_the_lowest_id() {
        let p = plan(&[(2, at(7, 1, 5)), (3, at(7, 1, 5))], 1);
        assert_eq!(p.reference, Some(2));
        assert_eq!(p.continuing, vec![2, 3]);
    }
}
