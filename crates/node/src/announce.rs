//! Gratuitous ARP bursts a node can call off.
//!
//! A burst (the first at once, the rest spaced, as keepalived sends them) outlives the moment
//! it was started for. If the node stops answering for the address before the burst ends —
//! a primary whose backup just joined and announces the address itself, a master that lost
//! its election — the rest of the burst would point the clients back at it, in the middle of
//! the other node's announcement; the last one heard wins. In duplex mode that client then
//! talks to the primary straight (the ingress guard bounces its frames to the backup, so the
//! log stays whole), until the primary crashes: from then on its frames go to a dead MAC, the
//! takeover hears nothing from it, and rebuilds its connection from a lagging image.

use std::net::Ipv4Addr;
use std::time::Duration;

use steadfast_os::garp::GarpSender;
use steadfast_os::OsError;
use tokio::task::AbortHandle;

pub struct Announcer {
    sender: GarpSender,
    bursts: Vec<AbortHandle>,
}

impl Announcer {
    pub fn new(sender: GarpSender) -> Announcer {
        Announcer {
            sender,
            bursts: Vec::new(),
        }
    }

    /// Sends one gratuitous ARP for `vip` now and `count - 1` more `spacing` apart from a
    /// task. Returns the first send's outcome and how many are scheduled after it.
    pub fn announce(
        &mut self,
        vip: Ipv4Addr,
        count: u32,
        spacing: Duration,
    ) -> (Result<(), OsError>, u32) {
        self.bursts.retain(|burst| !burst.is_finished());
        if count == 0 {
            return (Ok(()), 0);
        }
        let first = self.sender.send(vip);
        if count > 1 {
            let sender = self.sender.clone();
            let burst = tokio::spawn(async move {
                for _ in 1..count {
                    tokio::time::sleep(spacing).await;
                    if let Err(e) = sender.send(vip) {
                        tracing::debug!("gratuitous ARP for {vip}: {e}");
                    }
                }
            });
            self.bursts.push(burst.abort_handle());
        }
        (first, count.saturating_sub(1))
    }

    /// Sends one gratuitous ARP now, outside any burst.
    pub fn announce_once(&self, vip: Ipv4Addr) -> Result<(), OsError> {
        self.sender.send(vip)
    }

    /// Calls off what is left of every burst: this node no longer answers for the address.
    pub fn cancel(&mut self) {
        for burst in self.bursts.drain(..) {
            burst.abort();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.cancel();
    }
}
