//! The primary's lease, as the sessions see it: a reply byte the backup has not logged may go
//! to a client only before the lease this node was last told of ends.
//!
//! The role the data plane is told can be stale by the time it acts on it: a starved plane
//! thread reads "primary, the backup is gone" and releases the held replies after the election
//! has already moved on, while the other node, elected meanwhile, rebuilds the connections from
//! a log those replies are not in. Its clients then acknowledge bytes the new primary never
//! held. A lease end is a fact about time, not a role: checked at the moment of sending, it
//! stays right however late the check runs (see `Election::lease_until`).
//!
//! The daemon's realtime election thread renews the lease every heartbeat, so the renewal takes
//! no lock a session thread could hold while preempted (that would stall heartbeats past the
//! lease): an atomic, and a notification only when the lease comes back after it had ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

#[derive(Debug)]
struct LeaseClock {
    origin: Instant,
    /// Nanoseconds after `origin` at which the lease ends; 0: no lease.
    until_ns: AtomicU64,
    /// Woken when the lease comes back (it had ended, or there was none).
    renewed: Notify,
}

impl LeaseClock {
    fn nanos(&self, at: Instant) -> u64 {
        // At least 1: 0 means "no lease".
        (at.saturating_duration_since(self.origin).as_nanos() as u64).max(1)
    }

    fn held_at(&self, now: Instant) -> bool {
        let until = self.until_ns.load(Ordering::Acquire);
        until != 0 && self.nanos(now) < until
    }
}

/// The daemon's side: tells the sessions when the lease ends (none when not primary).
#[derive(Clone, Debug)]
pub struct LeaseSender {
    clock: Arc<LeaseClock>,
}

impl LeaseSender {
    pub fn set(&self, until: Option<Instant>) {
        let until = until.map_or(0, |at| self.clock.nanos(at));
        let before = self.clock.until_ns.swap(until, Ordering::AcqRel);
        // Read after the swap: a session that found the old lease ended checked before the
        // swap, hence before `now`, so the old lease had ended by `now` too and it is woken.
        // (Reading the time first would miss a lease that ended between that reading and
        // the swap, and leave the session waiting while the lease is renewed without end.)
        let now = self.clock.nanos(Instant::now());
        let ended_before = before == 0 || before <= now;
        if ended_before && until > now {
            self.clock.renewed.notify_waiters();
        }
    }
}

/// The sessions' side.
#[derive(Clone, Debug)]
pub struct LeaseFence {
    /// None: no other node ever carries these connections on (simplex), nothing to fence.
    clock: Option<Arc<LeaseClock>>,
}

/// A lease nobody holds yet, and both its sides.
pub fn lease() -> (LeaseSender, LeaseFence) {
    let clock = Arc::new(LeaseClock {
        origin: Instant::now(),
        until_ns: AtomicU64::new(0),
        renewed: Notify::new(),
    });
    (
        LeaseSender {
            clock: clock.clone(),
        },
        LeaseFence { clock: Some(clock) },
    )
}

impl LeaseFence {
    /// For a service whose connections live and die with this node.
    pub fn unfenced() -> LeaseFence {
        LeaseFence { clock: None }
    }

    /// This node may send unlogged reply bytes now.
    pub fn held_now(&self) -> bool {
        self.clock
            .as_ref()
            .is_none_or(|clock| clock.held_at(Instant::now()))
    }

    /// Returns once this node holds its lease (at once when it does). Never returns while
    /// another node is primary: a session waiting here ends when the plane retires it.
    pub async fn held(&self) {
        let Some(clock) = &self.clock else {
            return;
        };
        loop {
            // Registered before the check, so a renewal between the two is not missed.
            let renewed = clock.renewed.notified();
            tokio::pin!(renewed);
            renewed.as_mut().enable();
            if clock.held_at(Instant::now()) {
                return;
            }
            renewed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn no_lease_or_an_ended_one_is_not_held() {
        let (tx, fence) = lease();
        assert!(!fence.held_now());
        tx.set(Some(Instant::now() - Duration::from_millis(1)));
        assert!(!fence.held_now());
        tx.set(Some(Instant::now() + Duration::from_secs(60)));
        assert!(fence.held_now());
        tx.set(None);
        assert!(!fence.held_now());
        assert!(LeaseFence::unfenced().held_now());
    }

    #[tokio::test]
    async fn a_waiting_sender_goes_on_when_the_lease_is_renewed_and_not_before() {
        let (tx, fence) = lease();
        tx.set(Some(Instant::now() - Duration::from_millis(1)));
        let waiting = tokio::spawn(async move { fence.held().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "went on with an ended lease");
        tx.set(None);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "went on without a lease");
        tx.set(Some(Instant::now() + Duration::from_secs(60)));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a renewed lease lets the sender go on")
            .expect("the waiting task");
    }

    #[tokio::test]
    async fn a_lease_that_ends_by_itself_holds_senders_back() {
        let (tx, fence) = lease();
        tx.set(Some(Instant::now() + Duration::from_millis(30)));
        assert!(fence.held_now());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            !fence.held_now(),
            "the lease ran out with nobody renewing it"
        );
        let waiting = tokio::spawn(async move { fence.held().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        tx.set(Some(Instant::now() + Duration::from_secs(60)));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("renewed")
            .expect("the waiting task");
    }
}
