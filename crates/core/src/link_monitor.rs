//! The link monitor of one network interface: decides whether the link is up (seed 004, HANet,
//! §2.2.1 "Fault detector" and §3.2: the GOOD flag of a device, from its link status and from
//! probes to a list of hosts, the "ARP monitor" and "host ping file" methods).
//!
//! Two sources of evidence, as in the seed:
//! - **carrier and operational state**, from the kernel's netlink events (the seed polls the MII
//!   register; events arrive at once and cost nothing while nothing changes). Losing either puts
//!   the link down at once: the kernel is certain the link passes nothing.
//! - **probes** (ARP or ICMP to the gateway or configured neighbours, sent by the shell every
//!   `period`): a link with carrier that passes nothing (a black hole: a dead switch port
//!   beyond the cable, a wedged driver) goes down after `fall` probes in a row got no answer,
//!   and a link comes (back) up only after `rise` probes in a row were answered, so a link that
//!   has just regained carrier is not trusted before it carried traffic.
//!
//! Without probes configured the carrier alone decides, as Linux bonding's miimon does.
//!
//! No I/O and no clock: [`LinkMonitor::handle`] takes an [`LinkEvent`] and the time (`Duration`
//! since any origin) and returns [`LinkOutput`]s; [`LinkMonitor::next_deadline`] says when to
//! call it again with [`LinkEvent::Tick`]. A probe round is one sequence number: the shell sends
//! it to every target and reports it answered when any target answered (the seed's rule: the
//! link is bad when *no* host replies).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// How probes are sent and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Time between probe rounds.
    pub period: Duration,
    /// A round not answered within this is missed (an answer arriving later is ignored: it was
    /// already counted).
    pub timeout: Duration,
    /// Answered rounds in a row that bring a link up.
    pub rise: u32,
    /// Missed rounds in a row that take a link down.
    pub fall: u32,
}

impl Default for ProbeSettings {
    /// 10 ms rounds answered within 10 ms, 2 to rise and 2 to fall. A black hole is found
    /// `(fall - 1) × period + timeout` to `fall × period + timeout` after it opens (the cut
    /// falls anywhere in a round): 20 to 30 ms, what issue 19's 30 ms median stall at a 10 ms
    /// period leaves room for. A third missed round (fall 3) would take 30 to 40 ms; a 5 ms
    /// timeout 15 to 25 ms, at the price of counting a neighbour slower than 5 ms as lost.
    fn default() -> Self {
        ProbeSettings {
            period: Duration::from_millis(10),
            timeout: Duration::from_millis(10),
            rise: 2,
            fall: 2,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkSettingsError {
    #[error("probe period must be above zero")]
    ZeroPeriod,
    #[error("probe timeout must be above zero")]
    ZeroTimeout,
    #[error("probe {which} count must be at least 1")]
    ZeroCount { which: &'static str },
}

impl ProbeSettings {
    pub fn validate(&self) -> Result<(), LinkSettingsError> {
        if self.period.is_zero() {
            return Err(LinkSettingsError::ZeroPeriod);
        }
        if self.timeout.is_zero() {
            return Err(LinkSettingsError::ZeroTimeout);
        }
        if self.rise == 0 {
            return Err(LinkSettingsError::ZeroCount { which: "rise" });
        }
        if self.fall == 0 {
            return Err(LinkSettingsError::ZeroCount { which: "fall" });
        }
        Ok(())
    }
}

/// The kernel's operational state of an interface (RFC 2863, `IFLA_OPERSTATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperState {
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
}

impl OperState {
    /// Whether this state can pass traffic. `Unknown` counts as usable: many virtual drivers
    /// (veth before 4.x, tun, dummy) never report anything else, and carrier still decides.
    fn usable(self) -> bool {
        matches!(self, OperState::Up | OperState::Unknown)
    }
}

/// Input to a link monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    Tick,
    /// Carrier changed (netlink `IFLA_CARRIER`).
    Carrier(bool),
    /// Operational state changed (netlink `IFLA_OPERSTATE`).
    OperState(OperState),
    /// Probe round `seq` got an answer from at least one target.
    ProbeAnswered {
        seq: u64,
    },
}

/// Why a link's status changed, for logs and hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkReason {
    CarrierLost,
    /// The operational state left `up`.
    OperStateDown(OperState),
    /// Carrier and operational state are up and no probes are configured.
    CarrierUp,
    /// `count` probe rounds in a row were answered.
    ProbesAnswered {
        count: u32,
    },
    /// `count` probe rounds in a row were missed while the kernel said the link was up.
    ProbesMissed {
        count: u32,
    },
}

impl fmt::Display for LinkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkReason::CarrierLost => write!(f, "carrier lost"),
            LinkReason::OperStateDown(state) => write!(f, "operational state {state:?}"),
            LinkReason::CarrierUp => write!(f, "carrier up"),
            LinkReason::ProbesAnswered { count } => {
                write!(f, "{count} probe rounds in a row answered")
            }
            LinkReason::ProbesMissed { count } => write!(
                f,
                "{count} probe rounds in a row missed with carrier up (black hole)"
            ),
        }
    }
}

/// Output of a link monitor, for the shell to carry out in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutput {
    /// Send probe round `seq` to every target now.
    SendProbe { seq: u64 },
    /// The link's status changed.
    Changed { up: bool, reason: LinkReason },
}

/// The monitor of one interface. It starts down: a link is up only once the kernel said so (and
/// the probes agreed, when configured).
#[derive(Debug, Clone)]
pub struct LinkMonitor {
    probes: Option<ProbeSettings>,
    carrier: bool,
    oper: OperState,
    up: bool,
    /// Sent rounds not yet answered nor missed, with the time each was sent.
    outstanding: BTreeMap<u64, Duration>,
    next_seq: u64,
    next_probe_at: Option<Duration>,
    answered_in_row: u32,
    missed_in_row: u32,
}

impl LinkMonitor {
    /// A monitor with these probe settings (`None`: the carrier alone decides). The settings
    /// must have passed [`ProbeSettings::validate`].
    pub fn new(probes: Option<ProbeSettings>) -> LinkMonitor {
        if let Some(p) = &probes {
            debug_assert!(p.validate().is_ok(), "invalid probe settings {p:?}");
        }
        LinkMonitor {
            probes,
            carrier: false,
            oper: OperState::Unknown,
            up: false,
            outstanding: BTreeMap::new(),
            next_seq: 1,
            next_probe_at: None,
            answered_in_row: 0,
            missed_in_row: 0,
        }
    }

    /// Whether the link is up (the seed's GOOD flag).
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Whether the kernel says the link can pass traffic (carrier and operational state).
    pub fn kernel_says_up(&self) -> bool {
        self.carrier && self.oper.usable()
    }

    /// When to call [`Self::handle`] with [`LinkEvent::Tick`] at the latest: the next probe
    /// round or the timeout of the oldest outstanding one, whichever is first.
    pub fn next_deadline(&self) -> Option<Duration> {
        let timeout = self.probes.map(|p| p.timeout);
        let oldest_expiry = self
            .outstanding
            .values()
            .min()
            .zip(timeout)
            .map(|(sent, t)| *sent + t);
        match (self.next_probe_at, oldest_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the next probe round is due, if any (none while the kernel says the link is down,
    /// or without probes).
    pub fn next_probe_due(&self) -> Option<Duration> {
        self.next_probe_at
    }

    pub fn handle(&mut self, event: LinkEvent, now: Duration) -> Vec<LinkOutput> {
        let mut out = Vec::new();
        match event {
            LinkEvent::Tick => {}
            LinkEvent::Carrier(carrier) => {
                self.carrier = carrier;
                self.kernel_changed(now, &mut out);
            }
            LinkEvent::OperState(state) => {
                self.oper = state;
                self.kernel_changed(now, &mut out);
            }
            LinkEvent::ProbeAnswered { seq } => {
                // Unknown or already missed rounds are ignored: a late answer says the link
                // passed something once, not that it passes now.
                if self.outstanding.remove(&seq).is_some() {
                    self.round_answered(&mut out);
                }
            }
        }
        self.expire_probes(now, &mut out);
        self.send_due_probe(now, &mut out);
        out
    }

    fn kernel_changed(&mut self, now: Duration, out: &mut Vec<LinkOutput>) {
        if !self.kernel_says_up() {
            // The kernel is certain: no counting. Rounds in flight say nothing any more.
            self.outstanding.clear();
            self.next_probe_at = None;
            self.answered_in_row = 0;
            self.missed_in_row = 0;
            if self.up {
                let reason = if !self.carrier {
                    LinkReason::CarrierLost
                } else {
                    LinkReason::OperStateDown(self.oper)
                };
                self.set(false, reason, out);
            }
            return;
        }
        match self.probes {
            None => {
                if !self.up {
                    self.set(true, LinkReason::CarrierUp, out);
                }
            }
            Some(_) => {
                // Start probing at once when the kernel brings the link (back): the sooner it is
                // proved, the sooner traffic returns to it.
                if self.next_probe_at.is_none() {
                    self.next_probe_at = Some(now);
                }
            }
        }
    }

    fn round_answered(&mut self, out: &mut Vec<LinkOutput>) {
        let Some(p) = self.probes else { return };
        self.missed_in_row = 0;
        self.answered_in_row = self.answered_in_row.saturating_add(1);
        if !self.up && self.answered_in_row >= p.rise {
            self.set(
                true,
                LinkReason::ProbesAnswered {
                    count: self.answered_in_row,
                },
                out,
            );
        }
    }

    fn expire_probes(&mut self, now: Duration, out: &mut Vec<LinkOutput>) {
        let Some(p) = self.probes else { return };
        // Oldest first, so the counts follow the order the rounds were sent in.
        while let Some((&seq, &sent)) = self.outstanding.iter().next() {
            if now < sent + p.timeout {
                break;
            }
            self.outstanding.remove(&seq);
            self.answered_in_row = 0;
            self.missed_in_row = self.missed_in_row.saturating_add(1);
            if self.up && self.missed_in_row >= p.fall {
                self.set(
                    false,
                    LinkReason::ProbesMissed {
                        count: self.missed_in_row,
                    },
                    out,
                );
            }
        }
    }

    fn send_due_probe(&mut self, now: Duration, out: &mut Vec<LinkOutput>) {
        let (Some(p), Some(due)) = (self.probes, self.next_probe_at) else {
            return;
        };
        if now < due {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outstanding.insert(seq, now);
        // One round per call however late the call is: a burst of rounds after a stall would
        // be answered together and prove nothing more than one.
        self.next_probe_at = Some(now + p.period);
        out.push(LinkOutput::SendProbe { seq });
    }

    fn set(&mut self, up: bool, reason: LinkReason, out: &mut Vec<LinkOutput>) {
        self.up = up;
        out.push(LinkOutput::Changed { up, reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn probing() -> LinkMonitor {
        LinkMonitor::new(Some(ProbeSettings::default()))
    }

    fn changes(out: &[LinkOutput]) -> Vec<(bool, LinkReason)> {
        out.iter()
            .filter_map(|o| match o {
                LinkOutput::Changed { up, reason } => Some((*up, *reason)),
                _ => None,
            })
            .collect()
    }

    fn probe_seq(out: &[LinkOutput]) -> Option<u64> {
        out.iter().find_map(|o| match o {
            LinkOutput::SendProbe { seq } => Some(*seq),
            _ => None,
        })
    }

    /// Brings a probing monitor up: carrier at 0, rounds answered at once.
    fn bring_up(m: &mut LinkMonitor) -> Duration {
        let mut now = ms(0);
        let mut out = m.handle(LinkEvent::Carrier(true), now);
        while !m.is_up() {
            let seq = probe_seq(&out).expect("a round is sent");
            m.handle(LinkEvent::ProbeAnswered { seq }, now + ms(1));
            now += ms(10);
            out = m.handle(LinkEvent::Tick, now);
        }
        now
    }

    #[test]
    fn without_probes_carrier_decides() {
        let mut m = LinkMonitor::new(None);
        assert!(!m.is_up());
        let out = m.handle(LinkEvent::Carrier(true), ms(0));
        assert_eq!(changes(&out), vec![(true, LinkReason::CarrierUp)]);
        assert_eq!(m.next_deadline(), None);
        let out = m.handle(LinkEvent::Carrier(false), ms(5));
        assert_eq!(changes(&out), vec![(false, LinkReason::CarrierLost)]);
    }

    #[test]
    fn oper_state_down_takes_the_link_down() {
        let mut m = LinkMonitor::new(None);
        m.handle(LinkEvent::Carrier(true), ms(0));
        let out = m.handle(LinkEvent::OperState(OperState::LowerLayerDown), ms(1));
        assert_eq!(
            changes(&out),
            vec![(false, LinkReason::OperStateDown(OperState::LowerLayerDown))]
        );
        let out = m.handle(LinkEvent::OperState(OperState::Up), ms(2));
        assert_eq!(changes(&out), vec![(true, LinkReason::CarrierUp)]);
    }

    #[test]
    fn rises_after_rise_answered_rounds() {
        let mut m = probing();
        let out = m.handle(LinkEvent::Carrier(true), ms(0));
        assert_eq!(probe_seq(&out), Some(1), "probing starts with the carrier");
        assert_eq!(m.next_probe_due(), Some(ms(10)));
        let out = m.handle(LinkEvent::ProbeAnswered { seq: 1 }, ms(1));
        assert!(changes(&out).is_empty(), "one of two rounds is not enough");
        let out = m.handle(LinkEvent::Tick, ms(10));
        assert_eq!(probe_seq(&out), Some(2));
        let out = m.handle(LinkEvent::ProbeAnswered { seq: 2 }, ms(11));
        assert_eq!(
            changes(&out),
            vec![(true, LinkReason::ProbesAnswered { count: 2 })]
        );
    }

    #[test]
    fn black_hole_goes_down_after_fall_missed_rounds() {
        let mut m = probing();
        let mut now = bring_up(&mut m);
        let mut downs = Vec::new();
        // From here nothing is answered; carrier stays up.
        for _ in 0..6 {
            let out = m.handle(LinkEvent::Tick, now);
            downs.extend(changes(&out));
            now = m.next_deadline().unwrap();
        }
        assert_eq!(downs, vec![(false, LinkReason::ProbesMissed { count: 2 })]);
        assert!(m.kernel_says_up());
        assert!(
            m.next_probe_due().is_some(),
            "probing goes on to see it return"
        );
    }

    #[test]
    fn a_late_answer_is_ignored() {
        let mut m = probing();
        let out = m.handle(LinkEvent::Carrier(true), ms(0));
        let seq = probe_seq(&out).unwrap();
        m.handle(LinkEvent::Tick, ms(10)); // round 1 missed, round 2 sent
        m.handle(LinkEvent::ProbeAnswered { seq }, ms(11));
        assert_eq!(m.answered_in_row, 0);
        m.handle(LinkEvent::ProbeAnswered { seq: 999 }, ms(11));
        assert_eq!(m.answered_in_row, 0);
    }

    #[test]
    fn one_missed_round_between_answers_resets_rise() {
        let mut m = probing();
        m.handle(LinkEvent::Carrier(true), ms(0));
        m.handle(LinkEvent::ProbeAnswered { seq: 1 }, ms(1));
        m.handle(LinkEvent::Tick, ms(10)); // round 2 sent
        m.handle(LinkEvent::Tick, ms(20)); // round 2 missed, round 3 sent
        let out = m.handle(LinkEvent::ProbeAnswered { seq: 3 }, ms(21));
        assert!(changes(&out).is_empty());
        m.handle(LinkEvent::Tick, ms(30));
        let out = m.handle(LinkEvent::ProbeAnswered { seq: 4 }, ms(31));
        assert_eq!(
            changes(&out),
            vec![(true, LinkReason::ProbesAnswered { count: 2 })]
        );
    }

    #[test]
    fn carrier_loss_stops_probing_and_forgets_rounds() {
        let mut m = probing();
        let now = bring_up(&mut m);
        let out = m.handle(LinkEvent::Carrier(false), now);
        assert_eq!(changes(&out), vec![(false, LinkReason::CarrierLost)]);
        assert_eq!(m.next_deadline(), None);
        // Carrier back: not up before rise answered rounds.
        let out = m.handle(LinkEvent::Carrier(true), now + ms(100));
        assert!(changes(&out).is_empty());
        assert_eq!(probe_seq(&out), Some(m.next_seq - 1));
    }

    #[test]
    fn one_round_per_call_after_a_stall() {
        let mut m = probing();
        m.handle(LinkEvent::Carrier(true), ms(0));
        let out = m.handle(LinkEvent::Tick, ms(1000));
        assert_eq!(
            out.iter()
                .filter(|o| matches!(o, LinkOutput::SendProbe { .. }))
                .count(),
            1
        );
        assert_eq!(m.next_probe_due(), Some(ms(1010)));
    }

    #[test]
    fn settings_are_validated() {
        let mut p = ProbeSettings::default();
        assert!(p.validate().is_ok());
        p.rise = 0;
        assert_eq!(
            p.validate(),
            Err(LinkSettingsError::ZeroCount { which: "rise" })
        );
        p = ProbeSettings {
            period: Duration::ZERO,
            ..ProbeSettings::default()
        };
        assert_eq!(p.validate(), Err(LinkSettingsError::ZeroPeriod));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Wait(u64),
        Carrier(bool),
        Oper(bool),
        AnswerLatest,
        AnswerOldest,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..25).prop_map(Step::Wait),
            1 => any::<bool>().prop_map(Step::Carrier),
            1 => any::<bool>().prop_map(Step::Oper),
            3 => Just(Step::AnswerLatest),
            1 => Just(Step::AnswerOldest),
        ]
    }

    proptest! {
        /// Whatever happens: the link is never up while the kernel says it is down; every
        /// reported change flips the status; a link reported up through probes got `rise`
        /// answers in a row; the deadline is never in the past after a call.
        #[test]
        fn status_follows_the_rules(
            steps in proptest::collection::vec(step(), 0..120),
            rise in 1u32..4,
            fall in 1u32..4,
        ) {
            let settings = ProbeSettings { rise, fall, ..ProbeSettings::default() };
            let mut m = LinkMonitor::new(Some(settings));
            let mut now = Duration::ZERO;
            let mut up = false;
            for s in steps {
                let event = match s {
                    Step::Wait(d) => { now += ms(d); LinkEvent::Tick }
                    Step::Carrier(c) => LinkEvent::Carrier(c),
                    Step::Oper(o) => LinkEvent::OperState(
                        if o { OperState::Up } else { OperState::Down }),
                    Step::AnswerLatest => LinkEvent::ProbeAnswered {
                        seq: m.outstanding.keys().next_back().copied().unwrap_or(0) },
                    Step::AnswerOldest => LinkEvent::ProbeAnswered {
                        seq: m.outstanding.keys().next().copied().unwrap_or(0) },
                };
                for o in m.handle(event, now) {
                    if let LinkOutput::Changed { up: new, reason } = o {
                        prop_assert_ne!(new, up, "a change must flip the status");
                        up = new;
                        match reason {
                            LinkReason::ProbesAnswered { count } => prop_assert!(count >= rise),
                            LinkReason::ProbesMissed { count } => prop_assert!(count >= fall),
                            LinkReason::CarrierUp => prop_assert!(false, "probing configured"),
                            _ => prop_assert!(!new),
                        }
                    }
                }
                prop_assert_eq!(up, m.is_up());
                if !m.kernel_says_up() {
                    prop_assert!(!m.is_up());
                    prop_assert!(m.next_deadline().is_none());
                }
                if let Some(d) = m.next_deadline() {
                    prop_assert!(d > now, "deadline {:?} not after now {:?}", d, now);
                }
            }
        }

        /// A black hole of any length at least `fall` rounds takes an up link down within
        /// `fall` rounds plus the timeout.
        #[test]
        fn black_hole_detected_in_bounded_time(fall in 1u32..6, period_ms in 1u64..50) {
            let settings = ProbeSettings {
                period: ms(period_ms), timeout: ms(period_ms), rise: 1, fall,
            };
            let mut m = LinkMonitor::new(Some(settings));
            let out = m.handle(LinkEvent::Carrier(true), ms(0));
            let seq = probe_seq(&out).unwrap();
            m.handle(LinkEvent::ProbeAnswered { seq }, ms(0));
            prop_assert!(m.is_up());
            let start = ms(0);
            while m.is_up() {
                let now = m.next_deadline().unwrap();
                m.handle(LinkEvent::Tick, now);
                prop_assert!(now - start <= settings.period * (fall + 1) + settings.timeout);
            }
        }
    }
}
