//! What the daemon tells systemd (sd_notify): ready, stopping, and the watchdog's pings. Outside
//! systemd (no `NOTIFY_SOCKET`) each call does nothing.
//!
//! A notification that cannot be sent is logged, never fatal: the group must not lose its
//! primary because the service manager is restarting. Were the pings to fail for good, systemd
//! would restart the daemon, which is what the watchdog is for.

use std::time::Duration;

use sd_notify::NotifyState;

fn notify(state: NotifyState, what: &str) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!("telling systemd {what} through NOTIFY_SOCKET: {e}");
    }
}

/// The node listens (heartbeats, control socket) and took part in its first election round.
pub fn ready() {
    notify(NotifyState::Ready, "the daemon is ready (READY=1)");
}

pub fn stopping() {
    notify(NotifyState::Stopping, "the daemon is stopping (STOPPING=1)");
}

/// Pings systemd's watchdog (`WatchdogSec=`) from the election's loop, so that a loop that
/// hangs stops pinging and systemd kills the daemon, beside the dead-man switch.
pub struct Watchdog {
    interval: Option<tokio::time::Interval>,
}

impl Watchdog {
    /// Pings twice per `WATCHDOG_USEC` when systemd set it for this process, as sd_watchdog_enabled(3)
    /// advises: one late ping is not yet a missed deadline.
    pub fn from_environment() -> Watchdog {
        let interval = sd_notify::watchdog_enabled()
            .filter(|timeout| !timeout.is_zero())
            .map(|timeout| {
                let mut interval =
                    tokio::time::interval((timeout / 2).max(Duration::from_millis(1)));
                // After a stall, ping once and go on at the same pace: no burst of pings that
                // would hide how late the loop was.
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
        Watchdog { interval }
    }

    /// Resolves when the next ping is due; never without a watchdog.
    pub async fn due(&mut self) {
        match &mut self.interval {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    pub fn ping(&self) {
        notify(NotifyState::Watchdog, "the daemon is alive (WATCHDOG=1)");
    }
}
