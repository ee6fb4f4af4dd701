//! The cores of issue 19 chained as the node's shell will chain them (seed 004, HANet §3.7):
//! link monitors feed the interface manager, whose relay reports start and stop the
//! transmission-agent requester. Checks how long each step takes with a 10 ms probe period.

use std::net::Ipv4Addr;
use std::time::Duration;

use proptest::prelude::*;
use steadfast_core::interface_manager::{DeclaredLink, InterfaceManager, LinkClass, PathReport};
use steadfast_core::link_monitor::{LinkEvent, LinkMonitor, LinkOutput, ProbeSettings};
use steadfast_core::relay_agent::{
    Requester, RequesterAction, RequesterEvent, RequesterSettings, Sibling,
};
use steadfast_core::relay_wire::RelayMessage;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

const HOLD_DOWN_MS: u64 = 500;

/// One node: a public link probed with the default settings (10 ms, rise 2, fall 2), a
/// private link watched by
/// carrier only, and a requester with one sibling behind the private link.
struct Node {
    now: Duration,
    public: LinkMonitor,
    private: LinkMonitor,
    manager: InterfaceManager,
    requester: Requester,
    /// Whether the public link passes frames (probes are answered).
    public_passes: bool,
    reports: Vec<(Duration, PathReport)>,
    sent: Vec<(Duration, RelayMessage)>,
}

impl Node {
    fn new() -> Node {
        let manager = InterfaceManager::new(
            vec![
                DeclaredLink {
                    name: "eth0".into(),
                    class: LinkClass::Public,
                    speed_mbps: 1000,
                },
                DeclaredLink {
                    name: "priv0".into(),
                    class: LinkClass::Private,
                    speed_mbps: 1000,
                },
            ],
            ms(HOLD_DOWN_MS),
        )
        .unwrap();
        let requester = Requester::new(RequesterSettings {
            siblings: vec![Sibling {
                node: 2,
                link: "priv0".into(),
                next_hop: Ipv4Addr::new(192, 168, 100, 1),
            }],
            lease: ms(300),
            refresh_every: ms(100),
            retry_every: ms(20),
            attempts_per_sibling: 3,
        });
        Node {
            now: Duration::ZERO,
            public: LinkMonitor::new(Some(ProbeSettings::default())),
            private: LinkMonitor::new(None),
            manager,
            requester,
            public_passes: true,
            reports: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn public_event(&mut self, event: LinkEvent) {
        let out = self.public.handle(event, self.now);
        self.link_outputs("eth0", out);
    }

    fn link_outputs(&mut self, name: &str, out: Vec<LinkOutput>) {
        for o in out {
            match o {
                LinkOutput::SendProbe { seq } => {
                    if self.public_passes && name == "eth0" {
                        // Answered within a millisecond: delivered on the next step.
                        let answer = self
                            .public
                            .handle(LinkEvent::ProbeAnswered { seq }, self.now);
                        self.link_outputs(name, answer);
                    }
                }
                LinkOutput::Changed { up, .. } => {
                    let reports = self.manager.link_changed(name, up, self.now).unwrap();
                    self.manager_reports(reports);
                }
            }
        }
    }

    fn manager_reports(&mut self, reports: Vec<PathReport>) {
        for r in reports {
            let event = match &r {
                PathReport::RelayNeeded { via } => Some(RequesterEvent::Start {
                    via: via.clone(),
                    addresses: vec![Ipv4Addr::new(10, 0, 5, 11)],
                }),
                PathReport::RelayEnded => Some(RequesterEvent::Stop),
                _ => None,
            };
            self.reports.push((self.now, r));
            if let Some(event) = event {
                let out = self.requester.handle(event, self.now);
                self.requester_actions(out);
            }
        }
    }

    fn requester_actions(&mut self, out: Vec<RequesterAction>) {
        for a in out {
            if let RequesterAction::Send { message, .. } = a {
                self.sent.push((self.now, message));
            }
        }
    }

    /// Runs 1 ms steps up to `until`, calling each core when it asked to be called.
    fn run_until(&mut self, until: Duration) {
        while self.now < until {
            self.now += ms(1);
            let out = self.public.handle(LinkEvent::Tick, self.now);
            self.link_outputs("eth0", out);
            let reports = self.manager.tick(self.now);
            self.manager_reports(reports);
            let out = self.requester.handle(RequesterEvent::Tick, self.now);
            self.requester_actions(out);
        }
    }

    fn first_report_after(
        &self,
        t: Duration,
        want: impl Fn(&PathReport) -> bool,
    ) -> Option<Duration> {
        self.reports
            .iter()
            .find(|(at, r)| *at >= t && want(r))
            .map(|(at, _)| *at)
    }

    fn up(start: u64) -> Node {
        let mut n = Node::new();
        n.now = ms(start);
        let out = n.private.handle(LinkEvent::Carrier(true), n.now);
        n.link_outputs("priv0", out);
        n.public_event(LinkEvent::Carrier(true));
        n.run_until(ms(start + 50));
        assert_eq!(n.manager.active().unwrap().name, "eth0");
        n
    }
}

#[test]
fn carrier_loss_asks_for_relay_at_once() {
    let mut n = Node::up(0);
    let cut = n.now;
    n.public_event(LinkEvent::Carrier(false));
    assert_eq!(
        n.first_report_after(cut, |r| matches!(r, PathReport::RelayNeeded { .. })),
        Some(cut)
    );
    assert!(matches!(n.sent.last(), Some((at, RelayMessage::Request { .. })) if *at == cut));
}

#[test]
fn a_black_hole_asks_for_relay_within_the_fall_rounds_and_failback_waits_for_hold_down() {
    let mut n = Node::up(0);
    let cut = n.now;
    n.public_passes = false;
    n.run_until(cut + ms(100));
    let asked = n
        .first_report_after(cut, |r| matches!(r, PathReport::RelayNeeded { .. }))
        .expect("relay asked");
    assert!(
        asked - cut <= latest_detection(),
        "black hole found after {:?}",
        asked - cut
    );
    // The public link heals: up again after two answered rounds, back on it after the
    // hold-down, and the relay released.
    let healed = n.now;
    n.public_passes = true;
    n.run_until(healed + ms(HOLD_DOWN_MS + 100));
    let ended = n
        .first_report_after(healed, |r| *r == PathReport::RelayEnded)
        .expect("relay ended");
    assert!(ended - healed >= ms(HOLD_DOWN_MS));
    assert!(ended - healed <= ms(HOLD_DOWN_MS + 30));
    assert!(n
        .sent
        .iter()
        .any(|(at, m)| *at == ended && matches!(m, RelayMessage::Release { .. })));
}

/// `fall × period + timeout`: the cut just after a round was answered.
fn latest_detection() -> Duration {
    let p = ProbeSettings::default();
    p.period * p.fall + p.timeout
}

/// `(fall - 1) × period + timeout`: the cut just before a round.
fn earliest_detection() -> Duration {
    let p = ProbeSettings::default();
    p.period * (p.fall - 1) + p.timeout
}

proptest! {
    /// Wherever the cut falls in the probe cycle, a black hole is reported between
    /// [`earliest_detection`] and [`latest_detection`] (20 and 30 ms by default).
    #[test]
    fn black_hole_detection_is_bounded(start in 0u64..10, cut_after in 0u64..30) {
        let mut n = Node::up(start);
        n.run_until(n.now + ms(cut_after));
        let cut = n.now;
        n.public_passes = false;
        n.run_until(cut + ms(100));
        let asked = n
            .first_report_after(cut, |r| matches!(r, PathReport::RelayNeeded { .. }))
            .expect("relay asked");
        prop_assert!(asked - cut <= latest_detection(), "found after {:?}", asked - cut);
        prop_assert!(asked - cut >= earliest_detection(), "found after {:?}", asked - cut);
    }
}
