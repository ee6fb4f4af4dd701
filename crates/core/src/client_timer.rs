//! When a proxy stops waiting for a client: a connection with no request under way is closed
//! after the idle timeout (without a word, as nginx's `keepalive_timeout` and HAProxy's `timeout
//! http-keep-alive` do), and a request head that does not complete within the header timeout
//! once its first byte came is answered by the protocol's own reply (HTTP: 408, RFC 9110
//! §15.5.9; nginx's `client_header_timeout`, HAProxy's `timeout http-request`). Bodies and
//! replies are not timed here: the server reads the body as it comes and applies its own
//! timeouts, whose outcome the proxy passes on.
//!
//! Time is an input (a `Duration` since any fixed origin); the session tells the timer what it
//! waits for after each step and asks where its deadline lies.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// What a session waits for from its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientWait {
    /// No request is under way: the client may send request `next` or close.
    Idle { next: u64 },
    /// Request `index` has begun and its head is not complete.
    Head { index: u64 },
    /// Something else: a request is with the server, a reply goes out, a body or a tunnel
    /// streams, the connection is closing. No client timeout runs.
    Busy,
}

/// Which timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientExpiry {
    Idle,
    Head,
}

/// The clock of the wait a session is in; a wait's clock starts when the session enters it.
#[derive(Debug, Clone)]
pub struct ClientTimer {
    timeouts: ClientTimeouts,
    wait: ClientWait,
    since: Duration,
}

impl ClientTimer {
    /// A timer for a session that waits for `wait` from `now`.
    pub fn new(timeouts: ClientTimeouts, wait: ClientWait, now: Duration) -> ClientTimer {
        ClientTimer {
            timeouts,
            wait,
            since: now,
        }
    }

    /// The session waits for `wait` at `now`: a different wait than before starts its clock
    /// at `now`; the same one keeps running (a head that arrives a byte at a time gets one
    /// header timeout in all, not one per byte).
    pub fn observe(&mut self, wait: ClientWait, now: Duration) {
        if wait != self.wait {
            self.wait = wait;
            self.since = now;
        }
    }

    /// When the current wait runs out and what it is, if a timeout applies to it.
    pub fn deadline(&self) -> Option<(Duration, ClientExpiry)> {
        let (limit, expiry) = match self.wait {
            ClientWait::Idle { .. } => (self.timeouts.idle, ClientExpiry::Idle),
            ClientWait::Head { .. } => (self.timeouts.header, ClientExpiry::Head),
            ClientWait::Busy => return None,
        };
        Some((self.since.saturating_add(limit), expiry))
    }

    /// The timeout that has run out at `now`, if any.
    pub fn expired(&self, now: Duration) -> Option<ClientExpiry> {
        self.deadline()
            .filter(|&(at, _)| now >= at)
            .map(|(_, expiry)| expiry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TIMEOUTS: ClientTimeouts = ClientTimeouts {
        header: Duration::from_secs(60),
        idle: Duration::from_secs(75),
    };

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn an_idle_connection_is_let_go_after_the_idle_timeout() {
        let timer = ClientTimer::new(TIMEOUTS, ClientWait::Idle { next: 0 }, s(10));
        assert_eq!(timer.deadline(), Some((s(85), ClientExpiry::Idle)));
        assert_eq!(timer.expired(s(84)), None);
        assert_eq!(timer.expired(s(85)), Some(ClientExpiry::Idle));
    }

    #[test]
    fn a_head_gets_one_header_timeout_from_its_first_byte() {
        let mut timer = ClientTimer::new(TIMEOUTS, ClientWait::Idle { next: 0 }, s(0));
        timer.observe(ClientWait::Head { index: 0 }, s(70));
        // More bytes of the same head do not restart its clock (a slowloris client).
        timer.observe(ClientWait::Head { index: 0 }, s(100));
        assert_eq!(timer.deadline(), Some((s(130), ClientExpiry::Head)));
        assert_eq!(timer.expired(s(130)), Some(ClientExpiry::Head));
    }

    #[test]
    fn no_timeout_runs_while_the_server_has_the_request() {
        let mut timer = ClientTimer::new(TIMEOUTS, ClientWait::Head { index: 0 }, s(0));
        timer.observe(ClientWait::Busy, s(1));
        assert_eq!(timer.deadline(), None);
        assert_eq!(timer.expired(s(1_000_000)), None);
        // The next idle wait starts when the exchange ends.
        timer.observe(ClientWait::Idle { next: 1 }, s(500));
        assert_eq!(timer.deadline(), Some((s(575), ClientExpiry::Idle)));
    }

    #[test]
    fn a_pipelined_head_starts_its_own_clock() {
        let mut timer = ClientTimer::new(TIMEOUTS, ClientWait::Head { index: 1 }, s(0));
        timer.observe(ClientWait::Head { index: 2 }, s(50));
        assert_eq!(timer.deadline(), Some((s(110), ClientExpiry::Head)));
    }

    #[test]
    fn a_deadline_past_the_end_of_time_never_runs_out() {
        let timer = ClientTimer::new(
            ClientTimeouts {
                header: Duration::MAX,
                idle: Duration::MAX,
            },
            ClientWait::Idle { next: 0 },
            s(5),
        );
        assert_eq!(timer.deadline(), Some((Duration::MAX, ClientExpiry::Idle)));
    }

    fn wait() -> impl Strategy<Value = ClientWait> {
        prop_oneof![
            (0u64..3).prop_map(|next| ClientWait::Idle { next }),
            (0u64..3).prop_map(|index| ClientWait::Head { index }),
            Just(ClientWait::Busy),
        ]
    }

    proptest! {
        /// Whatever the session goes through, a timeout runs out exactly when its wait has
        /// lasted its limit without a change, and never while the session is busy.
        #[test]
        fn a_timeout_runs_out_only_after_an_unbroken_wait(
            steps in proptest::collection::vec((wait(), 0u64..100), 1..40),
        ) {
            let timeouts = ClientTimeouts { header: s(30), idle: s(45) };
            let mut now = s(0);
            let mut timer = ClientTimer::new(timeouts, ClientWait::Busy, now);
            let mut model: (ClientWait, Duration) = (ClientWait::Busy, now);
            for (wait, advance) in steps {
                now += s(advance);
                timer.observe(wait, now);
                if model.0 != wait {
                    model = (wait, now);
                }
                let lasted = now - model.1;
                let expected = match model.0 {
                    ClientWait::Idle { .. } if lasted >= timeouts.idle => Some(ClientExpiry::Idle),
                    ClientWait::Head { .. } if lasted >= timeouts.header => Some(ClientExpiry::Head),
                    _ => None,
                };
                prop_assert_eq!(timer.expired(now), expected);
            }
        }
    }
}
