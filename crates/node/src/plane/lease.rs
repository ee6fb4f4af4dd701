//! The primary's lease, as the sessions see it: a reply byte the backup has not logged may go
//! to a client only before the lease this node was last told of ends.
//!
//! The role the data plane is told can be stale by the time it acts on it: a starved plane
//! thread reads "primary, the backup is gone" and releases the held replies after the election
//! has already moved on, while the other node, elected meanwhile, rebuilds the connections from
//! a log those replies are not in. Its clients then acknowledge bytes the new primary never
//! held. A lease end is a fact about time, not a role: checked at the moment of sending, it
//! stays right however late the check runs (see `Election::lease_until`).

use std::time::Instant;

use tokio::sync::watch;

/// The daemon's side: tells the sessions the current lease end (none when not primary).
pub type LeaseSender = watch::Sender<Option<Instant>>;

/// The sessions' side.
#[derive(Clone, Debug)]
pub struct LeaseFence {
    /// None: no other node ever carries these connections on (simplex), nothing to fence.
    until: Option<watch::Receiver<Option<Instant>>>,
}

impl LeaseFence {
    pub fn new(until: watch::Receiver<Option<Instant>>) -> LeaseFence {
        LeaseFence { until: Some(until) }
    }

    /// For a service whose connections live and die with this node.
    pub fn unfenced() -> LeaseFence {
        LeaseFence { until: None }
    }

    /// This node may send unlogged reply bytes now.
    pub fn held_now(&self) -> bool {
        self.until
            .as_ref()
            .is_none_or(|until| until.borrow().is_some_and(|until| Instant::now() < until))
    }

    /// Returns once this node holds its lease (at once when it does). Never returns while
    /// another node is primary: a session waiting here ends when the plane retires it.
    pub async fn held(&self) {
        let Some(until) = &self.until else {
            return;
        };
        let mut until = until.clone();
        loop {
            let held = until
                .borrow_and_update()
                .is_some_and(|until| Instant::now() < until);
            if held {
                return;
            }
            if until.changed().await.is_err() {
                // The daemon is gone: nothing will ever renew the lease.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn no_lease_or_an_ended_one_is_not_held() {
        let (tx, rx) = watch::channel(None);
        let fence = LeaseFence::new(rx);
        assert!(!fence.held_now());
        tx.send_replace(Some(Instant::now() - Duration::from_millis(1)));
        assert!(!fence.held_now());
        tx.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        assert!(fence.held_now());
        assert!(LeaseFence::unfenced().held_now());
    }

    #[tokio::test]
    async fn a_waiting_sender_goes_on_when_the_lease_is_renewed_and_not_before() {
        let (tx, rx) = watch::channel(Some(Instant::now() - Duration::from_millis(1)));
        let fence = LeaseFence::new(rx);
        let waiting = tokio::spawn(async move { fence.held().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "went on with an ended lease");
        tx.send_replace(None);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "went on without a lease");
        tx.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a renewed lease lets the sender go on")
            .expect("the waiting task");
    }
}
