//! The transmission agent end to end (seed 004): one requester and two responders exchanging
//! real frames ([`relay_wire`], MAC and replay guards included) over a network that drops and
//! delays them, while responders crash and restart (from their owner tables) and lose their
//! public link. After the chaos, a calm stretch must leave exactly one sibling relaying for the
//! node, the one the requester sends through; after the node stops, none, with nothing left in
//! any kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use proptest::prelude::*;
use steadfast_core::election_messages::NodeId;
use steadfast_core::heartbeat_wire::AuthKey;
use steadfast_core::relay_agent::{
    RelayEntry, Requester, RequesterAction, RequesterEvent, RequesterSettings, Responder,
    ResponderAction, ResponderEvent, ResponderSettings, Sibling,
};
use steadfast_core::relay_wire::{decode, encode, RelayFrame, RelayMessage, RelayReplayGuard};
use steadfast_core::signed_datagram::ReplayRefusal;

const NODE: NodeId = 1;
const SIBLINGS: [NodeId; 2] = [2, 3];
const LEASE_MS: u64 = 200;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A small deterministic generator (xorshift64*), seeded by proptest.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Endpoint {
    guard: RelayReplayGuard,
    /// Senders seed the counter from the clock at start, so a restarted sender goes on above.
    counter: u64,
}

impl Endpoint {
    fn new(incarnation: u64, now: Duration) -> Endpoint {
        Endpoint {
            guard: RelayReplayGuard::new(incarnation),
            counter: now.as_micros() as u64 * 1000,
        }
    }

    fn frame(&mut self, me: NodeId, to: NodeId, message: RelayMessage) -> RelayFrame {
        self.counter += 1;
        RelayFrame {
            sender: me,
            counter: self.counter,
            incarnation: self.guard.incarnation(),
            echo: self.guard.echo_for(to),
            message,
        }
    }
}

struct SimSibling {
    id: NodeId,
    /// `None` while crashed.
    running: Option<(Responder, Endpoint)>,
    /// What its kernel holds (what the actions did), which is also its owner table.
    kernel: BTreeSet<RelayEntry>,
    uplink: bool,
    restarts: u64,
}

struct InFlight {
    at: Duration,
    to: NodeId,
    bytes: Vec<u8>,
}

struct World {
    key: AuthKey,
    rng: Rng,
    now: Duration,
    drop_per_mille: u64,
    requester: Requester,
    node_end: Endpoint,
    siblings: Vec<SimSibling>,
    wire: Vec<InFlight>,
    /// The sibling the requester says it sends through.
    through: Option<NodeId>,
    /// Frames the responders challenged.
    challenges: u32,
}

fn responder_settings() -> ResponderSettings {
    ResponderSettings {
        max_relays: 4,
        max_lease: ms(LEASE_MS),
        forwarding_managed_elsewhere: BTreeSet::new(),
    }
}

impl World {
    fn new(seed: u64, drop_per_mille: u64) -> World {
        let settings = RequesterSettings {
            siblings: SIBLINGS
                .iter()
                .map(|&node| Sibling {
                    node,
                    link: "priv0".into(),
                    next_hop: Ipv4Addr::new(192, 168, 100, 1),
                })
                .collect(),
            lease: ms(LEASE_MS),
            refresh_every: ms(50),
            retry_every: ms(20),
            attempts_per_sibling: 3,
        };
        settings.validate().unwrap();
        let mut w = World {
            key: AuthKey::new(b"relay simulation key").unwrap(),
            rng: Rng(seed | 1),
            now: Duration::ZERO,
            drop_per_mille,
            requester: Requester::new(settings),
            node_end: Endpoint::new(1000, Duration::ZERO),
            siblings: Vec::new(),
            wire: Vec::new(),
            through: None,
            challenges: 0,
        };
        for id in SIBLINGS {
            let mut s = SimSibling {
                id,
                running: None,
                kernel: BTreeSet::new(),
                uplink: true,
                restarts: 0,
            };
            start_sibling(&mut s, Duration::ZERO);
            w.siblings.push(s);
        }
        w
    }

    fn send(&mut self, to: NodeId, frame: RelayFrame) {
        let bytes = encode(&frame, &self.key).expect("the machines send valid messages");
        if self.rng.chance(self.drop_per_mille) {
            return;
        }
        let delay = ms(self.rng.below(4));
        self.wire.push(InFlight {
            at: self.now + delay,
            to,
            bytes,
        });
    }

    fn requester_did(&mut self, actions: Vec<RequesterAction>) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                RequesterAction::Send { to, message } => {
                    let f = self.node_end.frame(NODE, to, message);
                    self.send(to, f);
                }
                RequesterAction::RelayThrough { sibling, .. } => {
                    prop_assert!(self.through.is_none(), "through two siblings at once");
                    self.through = Some(sibling);
                }
                RequesterAction::RelayLost { sibling, .. }
                | RequesterAction::RelayEnded { sibling } => {
                    prop_assert_eq!(self.through.take(), Some(sibling));
                }
                RequesterAction::NoSiblingGranted => {}
            }
        }
        prop_assert_eq!(self.through, self.requester.relaying_through());
        Ok(())
    }

    fn sibling_did(
        &mut self,
        i: usize,
        actions: Vec<ResponderAction>,
    ) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                ResponderAction::Install(e) => {
                    prop_assert!(self.siblings[i].kernel.insert(e.clone()), "twice: {}", e)
                }
                ResponderAction::Remove(e) => {
                    prop_assert!(self.siblings[i].kernel.remove(&e), "not there: {}", e)
                }
                ResponderAction::Send { to, message } => {
                    let id = self.siblings[i].id;
                    let (_, end) = self.siblings[i].running.as_mut().unwrap();
                    let f = end.frame(id, to, message);
                    self.send(to, f);
                }
                ResponderAction::Announce { .. }
                | ResponderAction::RelayStarted { .. }
                | ResponderAction::RelayEnded { .. } => {}
            }
        }
        if let Some((r, _)) = &self.siblings[i].running {
            let installed: BTreeSet<RelayEntry> = r.installed().cloned().collect();
            prop_assert_eq!(&installed, &self.siblings[i].kernel);
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), TestCaseError> {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|m| m.at <= now);
        self.wire = later;
        for m in due {
            if m.to == NODE {
                let frame = decode(&m.bytes, &self.key).expect("signed with the group key");
                match self.node_end.guard.admit(&frame) {
                    Ok(()) => {
                        let out = self.requester.handle(
                            RequesterEvent::Received {
                                from: frame.sender,
                                message: frame.message,
                            },
                            now,
                        );
                        self.requester_did(out)?;
                    }
                    // Frames from a responder's earlier life (it restarted): dropped.
                    Err(ReplayRefusal::Unfresh { .. } | ReplayRefusal::Replayed { .. }) => {}
                }
                continue;
            }
            let i = self.siblings.iter().position(|s| s.id == m.to).unwrap();
            let Some((responder, end)) = self.siblings[i].running.as_mut() else {
                continue; // crashed: nobody listens
            };
            let frame = decode(&m.bytes, &self.key).expect("signed with the group key");
            let event = match end.guard.admit(&frame) {
                Ok(()) => ResponderEvent::Received {
                    from: frame.sender,
                    interface: "priv0".into(),
                    message: frame.message,
                },
                Err(ReplayRefusal::Unfresh { sender, .. }) => {
                    self.challenges += 1;
                    ResponderEvent::Unfresh { from: sender }
                }
                Err(ReplayRefusal::Replayed { .. }) => continue,
            };
            let out = responder.handle(event, now);
            self.sibling_did(i, out)?;
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), TestCaseError> {
        self.deliver()?;
        let out = self.requester.handle(RequesterEvent::Tick, self.now);
        self.requester_did(out)?;
        for i in 0..self.siblings.len() {
            if let Some((r, _)) = self.siblings[i].running.as_mut() {
                let out = r.handle(ResponderEvent::Tick, self.now);
                self.sibling_did(i, out)?;
            }
        }
        Ok(())
    }

    fn chaos(&mut self) -> Result<(), TestCaseError> {
        let now = self.now;
        for i in 0..self.siblings.len() {
            if self.siblings[i].running.is_some() && self.rng.chance(2) {
                // Crash: the process is gone, its kernel entries stay until it starts again.
                self.siblings[i].running = None;
            } else if self.siblings[i].running.is_none() && self.rng.chance(20) {
                let out = start_sibling(&mut self.siblings[i], now);
                self.sibling_did(i, out)?;
            } else if self.siblings[i].running.is_some() && self.rng.chance(3) {
                let up = !self.siblings[i].uplink;
                self.siblings[i].uplink = up;
                let (r, _) = self.siblings[i].running.as_mut().unwrap();
                let out = r.handle(
                    ResponderEvent::UplinkChanged(up.then(|| "eth0".to_string())),
                    now,
                );
                self.sibling_did(i, out)?;
            }
        }
        Ok(())
    }

    fn calm_all(&mut self) -> Result<(), TestCaseError> {
        self.drop_per_mille = 0;
        let now = self.now;
        for i in 0..self.siblings.len() {
            if self.siblings[i].running.is_none() {
                let out = start_sibling(&mut self.siblings[i], now);
                self.sibling_did(i, out)?;
            }
            if !self.siblings[i].uplink {
                self.siblings[i].uplink = true;
                let (r, _) = self.siblings[i].running.as_mut().unwrap();
                let out = r.handle(ResponderEvent::UplinkChanged(Some("eth0".into())), now);
                self.sibling_did(i, out)?;
            }
        }
        Ok(())
    }

    fn relays_for_node(&self) -> Vec<NodeId> {
        self.siblings
            .iter()
            .filter(|s| {
                s.running
                    .as_ref()
                    .is_some_and(|(r, _)| r.relays().any(|(n, _)| n == NODE))
            })
            .map(|s| s.id)
            .collect()
    }
}

/// Starts (or restarts) a sibling from its owner table; returns the undo actions.
fn start_sibling(s: &mut SimSibling, now: Duration) -> Vec<ResponderAction> {
    s.restarts += 1;
    let uplink = s.uplink.then(|| "eth0".to_string());
    let (responder, undo) = Responder::start(responder_settings(), uplink, s.kernel.clone());
    let incarnation = u64::from(s.id) * 1_000_000 + s.restarts;
    s.running = Some((responder, Endpoint::new(incarnation, now)));
    undo
}

fn addresses(extra: bool) -> Vec<Ipv4Addr> {
    let mut a = vec![Ipv4Addr::new(10, 0, 5, 11)];
    if extra {
        a.push(Ipv4Addr::new(10, 0, 5, 100));
    }
    a
}

fn run(seed: u64, drop_per_mille: u64, chaos_ms: u64) -> Result<(), TestCaseError> {
    let mut w = World::new(seed, drop_per_mille);
    let out = w.requester.handle(
        RequesterEvent::Start {
            via: "priv0".into(),
            addresses: addresses(false),
        },
        w.now,
    );
    w.requester_did(out)?;
    let mut extra = false;
    for _ in 0..chaos_ms {
        w.now += ms(1);
        w.chaos()?;
        if w.rng.chance(2) {
            extra = !extra;
            let out = w
                .requester
                .handle(RequesterEvent::AddressesChanged(addresses(extra)), w.now);
            w.requester_did(out)?;
        }
        w.tick()?;
    }
    // Calm: every sibling up with its uplink, no loss. Within a few leases exactly one
    // sibling relays, the one the node sends through.
    w.calm_all()?;
    for _ in 0..(4 * LEASE_MS) {
        w.now += ms(1);
        w.tick()?;
    }
    let through = w.requester.relaying_through();
    prop_assert!(through.is_some(), "no relay after a calm stretch");
    prop_assert_eq!(w.relays_for_node(), vec![through.unwrap()]);
    for s in &w.siblings {
        if Some(s.id) != through {
            prop_assert!(s.kernel.is_empty(), "sibling {} keeps {:?}", s.id, s.kernel);
        }
    }
    // Stop: within a lease nothing is left anywhere.
    let out = w.requester.handle(RequesterEvent::Stop, w.now);
    w.requester_did(out)?;
    for _ in 0..(2 * LEASE_MS) {
        w.now += ms(1);
        w.tick()?;
    }
    prop_assert!(w.relays_for_node().is_empty());
    let leftovers: BTreeMap<NodeId, &BTreeSet<RelayEntry>> =
        w.siblings.iter().map(|s| (s.id, &s.kernel)).collect();
    prop_assert!(
        w.siblings.iter().all(|s| s.kernel.is_empty()),
        "left behind: {:?}",
        leftovers
    );
    Ok(())
}

#[test]
fn without_loss_the_first_sibling_relays_after_one_challenge() {
    let mut w = World::new(7, 0);
    let out = w.requester.handle(
        RequesterEvent::Start {
            via: "priv0".into(),
            addresses: addresses(true),
        },
        w.now,
    );
    w.requester_did(out).unwrap();
    for _ in 0..20 {
        w.now += ms(1);
        w.tick().unwrap();
    }
    assert_eq!(w.requester.relaying_through(), Some(2));
    assert_eq!(w.challenges, 1, "the node had not heard the sibling before");
    assert_eq!(w.siblings[0].kernel.len(), 2 + 2 * 2);
    assert!(w.siblings[1].kernel.is_empty());
}

#[test]
fn a_crashed_responder_is_replaced_and_cleans_up_when_it_returns() {
    let mut w = World::new(11, 0);
    let out = w.requester.handle(
        RequesterEvent::Start {
            via: "priv0".into(),
            addresses: addresses(false),
        },
        w.now,
    );
    w.requester_did(out).unwrap();
    for _ in 0..20 {
        w.now += ms(1);
        w.tick().unwrap();
    }
    assert_eq!(w.requester.relaying_through(), Some(2));
    w.siblings[0].running = None;
    let crashed_at = w.now;
    while w.requester.relaying_through() != Some(3) {
        w.now += ms(1);
        w.tick().unwrap();
        assert!(
            w.now - crashed_at <= ms(LEASE_MS + 100),
            "not replaced in time"
        );
    }
    assert!(
        !w.siblings[0].kernel.is_empty(),
        "left until it starts again"
    );
    let out = start_sibling(&mut w.siblings[0], w.now);
    w.sibling_did(0, out).unwrap();
    assert!(w.siblings[0].kernel.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn one_sibling_relays_after_chaos_and_none_after_stop(
        seed in any::<u64>(),
        drop_per_mille in 0u64..500,
        chaos_ms in 0u64..1500,
    ) {
        run(seed, drop_per_mille, chaos_ms)?;
    }
}
