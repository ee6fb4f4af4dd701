//! The transmission agent's two state machines (seed 004, HANet, §2.3 "Packet transmission
//! agent", §3.5 "Packet transmission takeover" and §3.7 steps 3-6): the [`Requester`] on a node
//! whose public links failed asks a sibling over the private link to transmit for it; the
//! [`Responder`] on the sibling takes the job over and gives it back.
//!
//! The responder does what the seed's sibling does, as kernel actions for its shell: IP
//! forwarding on the public and the private interface, a host route to each of the node's
//! addresses through the private link, a proxy ARP entry for each on its public interface, and
//! a gratuitous ARP for each so that the LAN's caches point at it. (The seed also flushes the
//! routing cache; Linux has had none since 3.6.) Everything it installs is a [`RelayEntry`] with
//! an exact undo, taken on release, when the requester stops refreshing its lease (it died or
//! lost the private link), when the responder's own public link goes, at shutdown, and at the
//! next start from the owner table in which the shell records [`Responder::installed`]: a
//! responder whose daemon was killed leaves nothing behind once it starts again, and the
//! requester, whose refreshes go unanswered, turns to another sibling meanwhile.
//!
//! The seed's requester sends one request; here relays are leased (a relay nobody refreshes
//! would outlive the node that needed it), a request unanswered is sent again, and a sibling
//! that does not grant in time is released and the next one asked.
//!
//! No I/O and no clock: both take events and the time (`Duration` since any origin) and return
//! actions; `next_deadline` says when to call again with a tick. Frames are checked (MAC,
//! replay) by the shell with [`crate::relay_wire`] before they reach these machines.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::election_messages::NodeId;
use crate::relay_wire::{RefuseReason, RelayMessage, RevokeReason, MAX_ADDRESSES};

/// Something a responder installs in its kernel to relay for a node, and removes after.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RelayEntry {
    /// IPv4 forwarding on this interface (`net.ipv4.conf.IF.forwarding = 1`); shared by every
    /// relay through the interface. Linux answers proxy ARP entries only on a forwarding
    /// interface.
    Forwarding { interface: String },
    /// A host route to `address` via `next_hop` on the private `interface`.
    Route {
        address: Ipv4Addr,
        interface: String,
        next_hop: Ipv4Addr,
    },
    /// A proxy ARP entry: answer ARP for `address` on the public `interface`
    /// (`ip neigh add proxy ADDRESS dev INTERFACE`).
    ProxyArp {
        address: Ipv4Addr,
        interface: String,
    },
}

impl fmt::Display for RelayEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayEntry::Forwarding { interface } => write!(f, "forwarding on {interface}"),
            RelayEntry::Route {
                address,
                interface,
                next_hop,
            } => write!(f, "route {address}/32 via {next_hop} dev {interface}"),
            RelayEntry::ProxyArp { address, interface } => {
                write!(f, "proxy ARP for {address} on {interface}")
            }
        }
    }
}

/// Why a relay ended, for logs and hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEndReason {
    /// The requester released it.
    Released,
    /// The requester stopped refreshing it.
    Expired,
    /// This responder revoked it.
    Revoked(RevokeReason),
}

/// What a responder's shell carries out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponderAction {
    /// Install the entry and record it in the owner table.
    Install(RelayEntry),
    /// Remove the entry and its record.
    Remove(RelayEntry),
    /// Send a gratuitous ARP for `address` from `interface` (this host's MAC).
    Announce {
        address: Ipv4Addr,
        interface: String,
    },
    Send {
        to: NodeId,
        message: RelayMessage,
    },
    /// A relay began (or its addresses changed), for logs and hooks.
    RelayStarted {
        node: NodeId,
        addresses: Vec<Ipv4Addr>,
    },
    /// A relay ended, for logs and hooks.
    RelayEnded {
        node: NodeId,
        reason: RelayEndReason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponderSettings {
    /// Most nodes relayed for at once.
    pub max_relays: usize,
    /// Longest lease granted; a request asking more gets this.
    pub max_lease: Duration,
    /// Interfaces that forward whatever the relays do (the operator's): the responder never
    /// turns their forwarding on or off.
    pub forwarding_managed_elsewhere: BTreeSet<String>,
}

/// Input to a responder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponderEvent {
    Tick,
    /// A frame admitted by the replay guard, which arrived on the private `interface`.
    Received {
        from: NodeId,
        interface: String,
        message: RelayMessage,
    },
    /// The replay guard refused a new frame from `from` as from before this responder's start
    /// ([`crate::signed_datagram::ReplayRefusal::Unfresh`]): challenge it.
    Unfresh {
        from: NodeId,
    },
    /// This node's own active public link (from its interface manager); `None`: none is up,
    /// and no relay can be carried.
    UplinkChanged(Option<String>),
    /// The daemon is stopping: undo everything and tell the requesters.
    Shutdown,
}

#[derive(Debug, Clone)]
struct Relay {
    lease_id: u64,
    private_interface: String,
    next_hop: Ipv4Addr,
    addresses: BTreeSet<Ipv4Addr>,
    /// As granted: what each refresh extends it by.
    lease: Duration,
    expires_at: Duration,
}

/// The sibling's side: carries relays for nodes that ask, while it has a public link.
#[derive(Debug, Clone)]
pub struct Responder {
    settings: ResponderSettings,
    uplink: Option<String>,
    relays: BTreeMap<NodeId, Relay>,
    /// What is installed, with how many relays need each entry.
    installed: BTreeMap<RelayEntry, usize>,
    shut_down: bool,
}

impl Responder {
    /// A responder starting with `uplink` as its public link, whose previous run left
    /// `leftovers` installed (read from the owner table): it removes them all before anything
    /// else, so that a relay of a dead daemon does not outlive it.
    pub fn start(
        settings: ResponderSettings,
        uplink: Option<String>,
        leftovers: impl IntoIterator<Item = RelayEntry>,
    ) -> (Responder, Vec<ResponderAction>) {
        let leftovers: BTreeSet<RelayEntry> = leftovers.into_iter().collect();
        let undo = leftovers.into_iter().map(ResponderAction::Remove).collect();
        (
            Responder {
                settings,
                uplink,
                relays: BTreeMap::new(),
                installed: BTreeMap::new(),
                shut_down: false,
            },
            undo,
        )
    }

    /// Every entry installed now: what the owner table must hold.
    pub fn installed(&self) -> impl Iterator<Item = &RelayEntry> {
        self.installed.keys()
    }

    /// The nodes relayed for, with their addresses.
    pub fn relays(&self) -> impl Iterator<Item = (NodeId, &BTreeSet<Ipv4Addr>)> {
        self.relays.iter().map(|(n, r)| (*n, &r.addresses))
    }

    /// When the earliest lease expires.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.relays.values().map(|r| r.expires_at).min()
    }

    pub fn handle(&mut self, event: ResponderEvent, now: Duration) -> Vec<ResponderAction> {
        let mut out = Vec::new();
        match event {
            ResponderEvent::Tick => {}
            ResponderEvent::Received {
                from,
                interface,
                message,
            } => self.received(from, interface, message, now, &mut out),
            ResponderEvent::Unfresh { from } => out.push(ResponderAction::Send {
                to: from,
                message: RelayMessage::Challenge,
            }),
            ResponderEvent::UplinkChanged(uplink) => self.uplink_changed(uplink, &mut out),
            ResponderEvent::Shutdown => {
                self.shut_down = true;
                self.revoke_all(RevokeReason::ShuttingDown, &mut out);
            }
        }
        self.expire(now, &mut out);
        out
    }

    fn received(
        &mut self,
        from: NodeId,
        interface: String,
        message: RelayMessage,
        now: Duration,
        out: &mut Vec<ResponderAction>,
    ) {
        let send = |out: &mut Vec<ResponderAction>, message| {
            out.push(ResponderAction::Send { to: from, message })
        };
        match message {
            RelayMessage::Request {
                lease_id,
                lease_ms,
                next_hop,
                addresses,
            } => {
                let refuse = |reason| RelayMessage::Refuse { lease_id, reason };
                if self.shut_down {
                    return send(out, refuse(RefuseReason::Busy));
                }
                if self.uplink.is_none() {
                    return send(out, refuse(RefuseReason::NoUplink));
                }
                let addresses: BTreeSet<Ipv4Addr> =
                    addresses.into_iter().take(MAX_ADDRESSES).collect();
                let conflict = self
                    .relays
                    .iter()
                    .any(|(node, r)| *node != from && !r.addresses.is_disjoint(&addresses));
                if conflict {
                    return send(out, refuse(RefuseReason::AddressConflict));
                }
                if !self.relays.contains_key(&from) && self.relays.len() >= self.settings.max_relays
                {
                    return send(out, refuse(RefuseReason::Busy));
                }
                let lease = Duration::from_millis(u64::from(lease_ms)).min(self.settings.max_lease);
                let new = Relay {
                    lease_id,
                    private_interface: interface,
                    next_hop,
                    addresses,
                    lease,
                    expires_at: now + lease,
                };
                // A node's new request replaces its relay (new addresses, another private
                // link, a new lease id after its restart): make before break, so that what
                // both need stays installed throughout.
                let old = self.relays.remove(&from);
                let old_addresses = old.as_ref().map(|r| r.addresses.clone());
                self.acquire(&new, out);
                if let Some(old) = &old {
                    self.release(old, out);
                }
                for address in &new.addresses {
                    let known = old_addresses.as_ref().is_some_and(|a| a.contains(address));
                    if !known {
                        self.announce(*address, out);
                    }
                }
                if old_addresses.as_ref() != Some(&new.addresses) {
                    out.push(ResponderAction::RelayStarted {
                        node: from,
                        addresses: new.addresses.iter().copied().collect(),
                    });
                }
                self.relays.insert(from, new);
                send(
                    out,
                    RelayMessage::Grant {
                        lease_id,
                        lease_ms: lease_ms_of(lease),
                    },
                );
            }
            RelayMessage::Refresh { lease_id } => match self.relays.get_mut(&from) {
                Some(r) if r.lease_id == lease_id && !self.shut_down => {
                    r.expires_at = now + r.lease;
                    send(
                        out,
                        RelayMessage::Grant {
                            lease_id,
                            lease_ms: lease_ms_of(r.lease),
                        },
                    );
                }
                _ => send(
                    out,
                    RelayMessage::Refuse {
                        lease_id,
                        reason: RefuseReason::UnknownLease,
                    },
                ),
            },
            RelayMessage::Release { lease_id } => {
                if self
                    .relays
                    .get(&from)
                    .is_some_and(|r| r.lease_id == lease_id)
                {
                    self.end(from, RelayEndReason::Released, out);
                }
                // Acknowledged even when nothing is held: the release may repeat one whose
                // answer was lost.
                send(out, RelayMessage::Released { lease_id });
            }
            // Messages for a requester: a responder ignores them.
            RelayMessage::Grant { .. }
            | RelayMessage::Released { .. }
            | RelayMessage::Refuse { .. }
            | RelayMessage::Revoke { .. }
            | RelayMessage::Challenge => {}
        }
    }

    fn uplink_changed(&mut self, uplink: Option<String>, out: &mut Vec<ResponderAction>) {
        if uplink == self.uplink {
            return;
        }
        let Some(new_uplink) = uplink else {
            // Undone through the old link first: the entries name it.
            self.revoke_all(RevokeReason::UplinkLost, out);
            self.uplink = None;
            return;
        };
        // Move every relay to the new public link: its proxy ARP entries and its forwarding,
        // then announce there, since the LAN's caches name the old link's MAC.
        let relays: Vec<Relay> = self.relays.values().cloned().collect();
        let old_entries: Vec<Vec<RelayEntry>> = relays.iter().map(|r| self.entries(r)).collect();
        self.uplink = Some(new_uplink);
        for (relay, old) in relays.iter().zip(old_entries) {
            for e in self.entries(relay) {
                self.take(e, out);
            }
            for e in old {
                self.drop_entry(e, out);
            }
            for address in &relay.addresses {
                self.announce(*address, out);
            }
        }
    }

    fn revoke_all(&mut self, reason: RevokeReason, out: &mut Vec<ResponderAction>) {
        let nodes: Vec<NodeId> = self.relays.keys().copied().collect();
        for node in nodes {
            let lease_id = self.relays[&node].lease_id;
            self.end(node, RelayEndReason::Revoked(reason), out);
            out.push(ResponderAction::Send {
                to: node,
                message: RelayMessage::Revoke { lease_id, reason },
            });
        }
    }

    fn expire(&mut self, now: Duration, out: &mut Vec<ResponderAction>) {
        let expired: Vec<NodeId> = self
            .relays
            .iter()
            .filter(|(_, r)| r.expires_at <= now)
            .map(|(n, _)| *n)
            .collect();
        for node in expired {
            self.end(node, RelayEndReason::Expired, out);
        }
    }

    fn end(&mut self, node: NodeId, reason: RelayEndReason, out: &mut Vec<ResponderAction>) {
        if let Some(relay) = self.relays.remove(&node) {
            self.release(&relay, out);
            out.push(ResponderAction::RelayEnded { node, reason });
        }
    }

    /// The entries `relay` needs through the current uplink (none without one).
    fn entries(&self, relay: &Relay) -> Vec<RelayEntry> {
        let Some(uplink) = &self.uplink else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for interface in [uplink, &relay.private_interface] {
            if !self
                .settings
                .forwarding_managed_elsewhere
                .contains(interface)
            {
                entries.push(RelayEntry::Forwarding {
                    interface: interface.clone(),
                });
            }
        }
        for address in &relay.addresses {
            entries.push(RelayEntry::Route {
                address: *address,
                interface: relay.private_interface.clone(),
                next_hop: relay.next_hop,
            });
            entries.push(RelayEntry::ProxyArp {
                address: *address,
                interface: uplink.clone(),
            });
        }
        entries.sort();
        entries.dedup();
        entries
    }

    fn acquire(&mut self, relay: &Relay, out: &mut Vec<ResponderAction>) {
        for e in self.entries(relay) {
            self.take(e, out);
        }
    }

    fn release(&mut self, relay: &Relay, out: &mut Vec<ResponderAction>) {
        // Routes and proxy entries before forwarding: traffic must not be forwarded somewhere
        // half undone.
        let mut entries = self.entries(relay);
        entries.sort_by_key(|e| matches!(e, RelayEntry::Forwarding { .. }));
        for e in entries {
            self.drop_entry(e, out);
        }
    }

    fn take(&mut self, entry: RelayEntry, out: &mut Vec<ResponderAction>) {
        let count = self.installed.entry(entry.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            out.push(ResponderAction::Install(entry));
        }
    }

    fn drop_entry(&mut self, entry: RelayEntry, out: &mut Vec<ResponderAction>) {
        let Some(count) = self.installed.get_mut(&entry) else {
            debug_assert!(false, "dropping {entry} that is not installed");
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.installed.remove(&entry);
            out.push(ResponderAction::Remove(entry));
        }
    }

    fn announce(&self, address: Ipv4Addr, out: &mut Vec<ResponderAction>) {
        if let Some(interface) = &self.uplink {
            out.push(ResponderAction::Announce {
                address,
                interface: interface.clone(),
            });
        }
    }
}

fn lease_ms_of(lease: Duration) -> u32 {
    u32::try_from(lease.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// A sibling that can relay for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    pub node: NodeId,
    /// This node's private link to it (as the interface manager names it).
    pub link: String,
    /// This node's address on that link: where the sibling routes the node's traffic.
    pub next_hop: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequesterSettings {
    /// The siblings, in order of preference.
    pub siblings: Vec<Sibling>,
    /// Lease asked of a responder; it ends unless refreshed.
    pub lease: Duration,
    /// Time between refreshes: a few per lease, so that one lost refresh loses nothing.
    pub refresh_every: Duration,
    /// A request or release unanswered this long is sent again.
    pub retry_every: Duration,
    /// Requests unanswered before the requester turns to the next sibling.
    pub attempts_per_sibling: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequesterSettingsError {
    #[error("the lease must be above zero and below {max_ms} ms", max_ms = u32::MAX)]
    BadLease,
    #[error("refresh_every ({refresh:?}) must be above zero and below the lease ({lease:?})")]
    BadRefresh { refresh: Duration, lease: Duration },
    #[error("retry_every must be above zero")]
    ZeroRetry,
    #[error("attempts_per_sibling must be at least 1")]
    ZeroAttempts,
    #[error("sibling {node} is listed twice on link {link:?}")]
    DuplicateSibling { node: NodeId, link: String },
}

impl RequesterSettings {
    pub fn validate(&self) -> Result<(), RequesterSettingsError> {
        if self.lease.is_zero() || self.lease.as_millis() >= u128::from(u32::MAX) {
            return Err(RequesterSettingsError::BadLease);
        }
        if self.refresh_every.is_zero() || self.refresh_every >= self.lease {
            return Err(RequesterSettingsError::BadRefresh {
                refresh: self.refresh_every,
                lease: self.lease,
            });
        }
        if self.retry_every.is_zero() {
            return Err(RequesterSettingsError::ZeroRetry);
        }
        if self.attempts_per_sibling == 0 {
            return Err(RequesterSettingsError::ZeroAttempts);
        }
        for (i, s) in self.siblings.iter().enumerate() {
            if self.siblings[..i]
                .iter()
                .any(|o| o.node == s.node && o.link == s.link)
            {
                return Err(RequesterSettingsError::DuplicateSibling {
                    node: s.node,
                    link: s.link.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Input to a requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequesterEvent {
    Tick,
    /// The interface manager asks for relay over the private link `via`
    /// ([`crate::interface_manager::PathReport::RelayNeeded`]), for these addresses: 1 to
    /// [`MAX_ADDRESSES`] distinct unicast IPv4 addresses, what a request can carry (the node's
    /// own and, on a primary, its VIPs).
    Start {
        via: String,
        addresses: Vec<Ipv4Addr>,
    },
    /// The addresses to relay changed (the node became primary: its VIP joins).
    AddressesChanged(Vec<Ipv4Addr>),
    /// Relay is no longer needed (a public link is back, or no link is up).
    Stop,
    /// A frame from a sibling, admitted by the replay guard.
    Received {
        from: NodeId,
        message: RelayMessage,
    },
}

/// Why a relay through a sibling ended or was not had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayLostReason {
    /// It refused the request.
    Refused(RefuseReason),
    /// It revoked the relay.
    Revoked(RevokeReason),
    /// It answered no request in time.
    NoGrant,
    /// It stopped answering refreshes for a lease: dead, or cut off.
    NoRefreshAnswer,
    /// It started again and holds nothing any more.
    SiblingRestarted,
}

/// What a requester's shell carries out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequesterAction {
    Send {
        to: NodeId,
        message: RelayMessage,
    },
    /// Send and receive through `sibling` over `link` from now on (the seed's step 4: point
    /// the node's default route and its neighbours at the sibling).
    RelayThrough {
        sibling: NodeId,
        link: String,
    },
    /// The relay through `sibling` is gone: stop sending through it.
    RelayLost {
        sibling: NodeId,
        reason: RelayLostReason,
    },
    /// The relay through `sibling` was ended by this node ([`RequesterEvent::Stop`]).
    RelayEnded {
        sibling: NodeId,
    },
    /// Every sibling on the link was asked in turn and none granted: the node cannot serve
    /// through a sibling and must fail over as without relay. The requester goes on asking.
    NoSiblingGranted,
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    /// Relay is needed over a link with no sibling at its other end: nothing to do but wait
    /// for [`RequesterEvent::Stop`] or a start over another link.
    NoSibling,
    Requesting {
        sibling: usize,
        attempts: u32,
        /// When the first request with this lease id went to this sibling: the responder's
        /// lease, counted from the request it answers, cannot end before this plus the lease.
        first_sent: Duration,
        last_sent: Duration,
        /// Siblings asked in this round without a grant.
        asked: usize,
    },
    Relaying {
        sibling: usize,
        /// The relay holds at least until then: the responder counts each lease from the
        /// request or refresh it answers, so a grant is counted from the first one sent since
        /// the previous grant. (A grant that answers a refresh from before the previous grant,
        /// possible only when a round trip outlasts a refresh interval and the later refresh is
        /// lost, is counted up to one refresh interval too late: the loss is then found that
        /// much later, never wrongly.)
        valid_until: Duration,
        /// When the first refresh since the last grant went out, or none.
        unanswered_since: Option<Duration>,
        last_refresh: Duration,
        /// The lease as granted (the responder may grant less than asked).
        lease: Duration,
    },
}

#[derive(Debug, Clone)]
struct PendingRelease {
    node: NodeId,
    lease_id: u64,
    last_sent: Duration,
    /// The responder lets the lease expire by then anyway.
    give_up_at: Duration,
}

/// The node's side: finds a sibling that relays for it and keeps the relay alive.
#[derive(Debug, Clone)]
pub struct Requester {
    settings: RequesterSettings,
    phase: Phase,
    /// The private link relay is needed over, and the addresses to relay, while started.
    via: String,
    addresses: Vec<Ipv4Addr>,
    lease_id: u64,
    releases: Vec<PendingRelease>,
}

impl Requester {
    /// A requester; the settings must have passed [`RequesterSettings::validate`].
    pub fn new(settings: RequesterSettings) -> Requester {
        debug_assert!(settings.validate().is_ok());
        Requester {
            settings,
            phase: Phase::Idle,
            via: String::new(),
            addresses: Vec::new(),
            lease_id: 0,
            releases: Vec::new(),
        }
    }

    /// The sibling relaying for this node now, if any.
    pub fn relaying_through(&self) -> Option<NodeId> {
        match self.phase {
            Phase::Relaying { sibling, .. } => Some(self.settings.siblings[sibling].node),
            _ => None,
        }
    }

    /// Whether the requester is trying to get (or keep) a relay.
    pub fn started(&self) -> bool {
        !matches!(self.phase, Phase::Idle)
    }

    pub fn next_deadline(&self) -> Option<Duration> {
        let phase = match self.phase {
            Phase::Idle | Phase::NoSibling => None,
            Phase::Requesting { last_sent, .. } => Some(last_sent + self.settings.retry_every),
            Phase::Relaying {
                valid_until,
                last_refresh,
                lease,
                ..
            } => Some(valid_until.min(last_refresh + self.refresh_interval(lease))),
        };
        let releases = self
            .releases
            .iter()
            .map(|r| (r.last_sent + self.settings.retry_every).min(r.give_up_at))
            .min();
        match (phase, releases) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle(&mut self, event: RequesterEvent, now: Duration) -> Vec<RequesterAction> {
        let mut out = Vec::new();
        match event {
            RequesterEvent::Tick => {}
            RequesterEvent::Start { via, addresses } => self.start(via, addresses, now, &mut out),
            RequesterEvent::AddressesChanged(addresses) => {
                self.addresses = addresses;
                if let Some(sibling) = self.current_sibling() {
                    // The same lease id: the responder updates the relay in place.
                    self.send_request(sibling, &mut out);
                }
            }
            RequesterEvent::Stop => self.stop(now, &mut out),
            RequesterEvent::Received { from, message } => {
                self.received(from, message, now, &mut out)
            }
        }
        self.on_time(now, &mut out);
        out
    }

    fn start(
        &mut self,
        via: String,
        addresses: Vec<Ipv4Addr>,
        now: Duration,
        out: &mut Vec<RequesterAction>,
    ) {
        if self.started() && via == self.via {
            if addresses != self.addresses {
                self.addresses = addresses;
                if let Some(sibling) = self.current_sibling() {
                    self.send_request(sibling, out);
                }
            }
            return;
        }
        // Another private link: whatever was had through the old one is given up.
        self.stop(now, out);
        self.via = via;
        self.addresses = addresses;
        match self.first_sibling_from(0) {
            Some(sibling) => self.ask(sibling, 0, now, out),
            None => {
                // Nobody at the other end of this link: the node cannot relay.
                out.push(RequesterAction::NoSiblingGranted);
                self.phase = Phase::NoSibling;
            }
        }
    }

    fn stop(&mut self, now: Duration, out: &mut Vec<RequesterAction>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        match phase {
            Phase::Idle | Phase::NoSibling => {}
            Phase::Requesting { sibling, .. } => {
                // It may have granted a request whose answer is on its way or lost.
                self.release(sibling, now, out);
            }
            Phase::Relaying { sibling, .. } => {
                self.release(sibling, now, out);
                out.push(RequesterAction::RelayEnded {
                    sibling: self.settings.siblings[sibling].node,
                });
            }
        }
    }

    fn received(
        &mut self,
        from: NodeId,
        message: RelayMessage,
        now: Duration,
        out: &mut Vec<RequesterAction>,
    ) {
        let lease_id = self.lease_id;
        let current = self.current_sibling().filter(|&s| self.node(s) == from);
        match message {
            RelayMessage::Grant {
                lease_id: id,
                lease_ms,
            } => {
                let granted = self
                    .settings
                    .lease
                    .min(Duration::from_millis(u64::from(lease_ms)));
                let Some(sibling) = current.filter(|_| id == lease_id) else {
                    // A grant from a sibling this node moved on from (late, or answering a
                    // request sent before the move): release it, or two siblings would answer
                    // for the node's addresses.
                    if !self
                        .releases
                        .iter()
                        .any(|r| r.node == from && r.lease_id == id)
                    {
                        self.releases.push(PendingRelease {
                            node: from,
                            lease_id: id,
                            last_sent: now,
                            give_up_at: now + self.settings.lease,
                        });
                        out.push(RequesterAction::Send {
                            to: from,
                            message: RelayMessage::Release { lease_id: id },
                        });
                    }
                    return;
                };
                match &mut self.phase {
                    Phase::Requesting { first_sent, .. } => {
                        // The grant may answer any request sent with this lease id: counted
                        // from the first, the relay surely holds until then. A refresh is due
                        // from the same instant, so one goes out at once after a slow grant.
                        let first_sent = *first_sent;
                        self.phase = Phase::Relaying {
                            sibling,
                            valid_until: first_sent + granted,
                            unanswered_since: None,
                            last_refresh: first_sent,
                            lease: granted,
                        };
                        out.push(RequesterAction::RelayThrough {
                            sibling: from,
                            link: self.via.clone(),
                        });
                    }
                    Phase::Relaying {
                        valid_until,
                        unanswered_since,
                        lease,
                        ..
                    } => {
                        *lease = granted;
                        if let Some(since) = unanswered_since.take() {
                            *valid_until = (*valid_until).max(since + granted);
                        }
                    }
                    Phase::Idle | Phase::NoSibling => {}
                }
            }
            RelayMessage::Refuse {
                lease_id: id,
                reason,
            } if id == lease_id => {
                let Some(sibling) = current else { return };
                match (&self.phase, reason) {
                    (Phase::Relaying { .. }, RefuseReason::UnknownLease) => {
                        // It lost the relay (restarted): ask it again at once.
                        out.push(RequesterAction::RelayLost {
                            sibling: from,
                            reason: RelayLostReason::SiblingRestarted,
                        });
                        self.ask(sibling, 0, now, out);
                    }
                    (Phase::Relaying { .. }, _) => {
                        out.push(RequesterAction::RelayLost {
                            sibling: from,
                            reason: RelayLostReason::Refused(reason),
                        });
                        self.next_sibling(sibling, 0, now, out);
                    }
                    (Phase::Requesting { asked, .. }, _) => {
                        let asked = *asked;
                        self.next_sibling(sibling, asked + 1, now, out);
                    }
                    (Phase::Idle | Phase::NoSibling, _) => {}
                }
            }
            RelayMessage::Revoke {
                lease_id: id,
                reason,
            } if id == lease_id => {
                let Some(sibling) = current else { return };
                if let Phase::Relaying { .. } = self.phase {
                    out.push(RequesterAction::RelayLost {
                        sibling: from,
                        reason: RelayLostReason::Revoked(reason),
                    });
                }
                self.next_sibling(sibling, 0, now, out);
            }
            RelayMessage::Released { lease_id: id } => {
                self.releases
                    .retain(|r| !(r.node == from && r.lease_id == id));
            }
            RelayMessage::Challenge => {
                // The sibling did not know this node's frames were fresh (it started again, or
                // never heard this node): the shell's guard learned its incarnation from the
                // challenge, so what it refused is sent again now.
                for r in self.releases.iter_mut().filter(|r| r.node == from) {
                    r.last_sent = now;
                    out.push(RequesterAction::Send {
                        to: from,
                        message: RelayMessage::Release {
                            lease_id: r.lease_id,
                        },
                    });
                }
                let Some(sibling) = current else { return };
                match &mut self.phase {
                    Phase::Requesting { last_sent, .. } => {
                        // Not an attempt: the request was refused unread.
                        *last_sent = now;
                        self.send_request(sibling, out);
                    }
                    Phase::Relaying { .. } => {
                        out.push(RequesterAction::RelayLost {
                            sibling: from,
                            reason: RelayLostReason::SiblingRestarted,
                        });
                        self.ask(sibling, 0, now, out);
                    }
                    Phase::Idle | Phase::NoSibling => {}
                }
            }
            // Stale answers about another lease, and messages for a responder.
            RelayMessage::Refuse { .. }
            | RelayMessage::Revoke { .. }
            | RelayMessage::Request { .. }
            | RelayMessage::Refresh { .. }
            | RelayMessage::Release { .. } => {}
        }
    }

    fn on_time(&mut self, now: Duration, out: &mut Vec<RequesterAction>) {
        let retry = self.settings.retry_every;
        self.releases.retain(|r| now < r.give_up_at);
        for r in &mut self.releases {
            if now >= r.last_sent + retry {
                r.last_sent = now;
                out.push(RequesterAction::Send {
                    to: r.node,
                    message: RelayMessage::Release {
                        lease_id: r.lease_id,
                    },
                });
            }
        }
        match self.phase.clone() {
            Phase::Idle | Phase::NoSibling => {}
            Phase::Requesting {
                sibling,
                attempts,
                first_sent,
                last_sent,
                asked,
            } => {
                if now < last_sent + retry {
                    return;
                }
                if attempts < self.settings.attempts_per_sibling {
                    self.phase = Phase::Requesting {
                        sibling,
                        attempts: attempts + 1,
                        first_sent,
                        last_sent: now,
                        asked,
                    };
                    self.send_request(sibling, out);
                } else {
                    self.release(sibling, now, out);
                    self.next_sibling(sibling, asked + 1, now, out);
                }
            }
            Phase::Relaying {
                sibling,
                valid_until,
                unanswered_since,
                last_refresh,
                lease,
            } => {
                if now >= valid_until {
                    let node = self.node(sibling);
                    out.push(RequesterAction::RelayLost {
                        sibling: node,
                        reason: RelayLostReason::NoRefreshAnswer,
                    });
                    self.release(sibling, now, out);
                    self.next_sibling(sibling, 0, now, out);
                    return;
                }
                if now >= last_refresh + self.refresh_interval(lease) {
                    self.phase = Phase::Relaying {
                        sibling,
                        valid_until,
                        unanswered_since: unanswered_since.or(Some(now)),
                        last_refresh: now,
                        lease,
                    };
                    out.push(RequesterAction::Send {
                        to: self.node(sibling),
                        message: RelayMessage::Refresh {
                            lease_id: self.lease_id,
                        },
                    });
                }
            }
        }
    }

    /// Refreshes go at the configured pace, and at least twice per lease when a responder
    /// granted less than asked.
    fn refresh_interval(&self, lease: Duration) -> Duration {
        self.settings
            .refresh_every
            .min(lease / 2)
            .max(Duration::from_millis(1))
    }

    fn node(&self, sibling: usize) -> NodeId {
        self.settings.siblings[sibling].node
    }

    fn current_sibling(&self) -> Option<usize> {
        match self.phase {
            Phase::Requesting { sibling, .. } | Phase::Relaying { sibling, .. } => Some(sibling),
            _ => None,
        }
    }

    /// The first sibling on the current link at or after `from`, wrapping around.
    fn first_sibling_from(&self, from: usize) -> Option<usize> {
        let n = self.settings.siblings.len();
        (0..n)
            .map(|i| (from + i) % n)
            .find(|&i| self.settings.siblings[i].link == self.via)
    }

    /// Turns to the sibling after `sibling` on the link; `asked` siblings of this round have
    /// not granted. A full round without a grant is reported.
    fn next_sibling(
        &mut self,
        sibling: usize,
        asked: usize,
        now: Duration,
        out: &mut Vec<RequesterAction>,
    ) {
        let on_link = self
            .settings
            .siblings
            .iter()
            .filter(|s| s.link == self.via)
            .count();
        let asked = if asked >= on_link {
            out.push(RequesterAction::NoSiblingGranted);
            0
        } else {
            asked
        };
        let next = self
            .first_sibling_from(sibling + 1)
            .expect("the current sibling is on the link");
        self.ask(next, asked, now, out);
    }

    /// Asks `sibling` with a new lease id, so that no answer meant for an earlier request is
    /// taken for this one.
    fn ask(&mut self, sibling: usize, asked: usize, now: Duration, out: &mut Vec<RequesterAction>) {
        self.lease_id += 1;
        self.phase = Phase::Requesting {
            sibling,
            attempts: 1,
            first_sent: now,
            last_sent: now,
            asked,
        };
        self.send_request(sibling, out);
    }

    fn send_request(&self, sibling: usize, out: &mut Vec<RequesterAction>) {
        let s = &self.settings.siblings[sibling];
        out.push(RequesterAction::Send {
            to: s.node,
            message: RelayMessage::Request {
                lease_id: self.lease_id,
                lease_ms: lease_ms_of(self.settings.lease),
                next_hop: s.next_hop,
                addresses: self.addresses.clone(),
            },
        });
    }

    fn release(&mut self, sibling: usize, now: Duration, out: &mut Vec<RequesterAction>) {
        let node = self.node(sibling);
        let lease_id = self.lease_id;
        self.releases.push(PendingRelease {
            node,
            lease_id,
            last_sent: now,
            give_up_at: now + self.settings.lease,
        });
        out.push(RequesterAction::Send {
            to: node,
            message: RelayMessage::Release { lease_id },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 5, last)
    }

    const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

    fn responder_settings() -> ResponderSettings {
        ResponderSettings {
            max_relays: 2,
            max_lease: ms(300),
            forwarding_managed_elsewhere: BTreeSet::new(),
        }
    }

    fn responder() -> Responder {
        let (r, undo) = Responder::start(responder_settings(), Some("eth0".into()), []);
        assert!(undo.is_empty());
        r
    }

    fn request(lease_id: u64, addresses: &[Ipv4Addr]) -> RelayMessage {
        RelayMessage::Request {
            lease_id,
            lease_ms: 1000,
            next_hop: NEXT_HOP,
            addresses: addresses.to_vec(),
        }
    }

    fn from_node(from: NodeId, message: RelayMessage) -> ResponderEvent {
        ResponderEvent::Received {
            from,
            interface: "priv0".into(),
            message,
        }
    }

    fn installs(out: &[ResponderAction]) -> Vec<RelayEntry> {
        out.iter()
            .filter_map(|a| match a {
                ResponderAction::Install(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn removes(out: &[ResponderAction]) -> Vec<RelayEntry> {
        out.iter()
            .filter_map(|a| match a {
                ResponderAction::Remove(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn sent(out: &[ResponderAction]) -> Vec<(NodeId, RelayMessage)> {
        out.iter()
            .filter_map(|a| match a {
                ResponderAction::Send { to, message } => Some((*to, message.clone())),
                _ => None,
            })
            .collect()
    }

    fn forwarding(interface: &str) -> RelayEntry {
        RelayEntry::Forwarding {
            interface: interface.into(),
        }
    }

    fn route(address: Ipv4Addr) -> RelayEntry {
        RelayEntry::Route {
            address,
            interface: "priv0".into(),
            next_hop: NEXT_HOP,
        }
    }

    fn proxy(address: Ipv4Addr, interface: &str) -> RelayEntry {
        RelayEntry::ProxyArp {
            address,
            interface: interface.into(),
        }
    }

    #[test]
    fn a_request_installs_forwarding_routes_and_proxy_arp_then_announces() {
        let mut r = responder();
        let out = r.handle(from_node(1, request(7, &[ip(11), ip(100)])), ms(0));
        let mut want = vec![
            forwarding("eth0"),
            forwarding("priv0"),
            route(ip(11)),
            proxy(ip(11), "eth0"),
            route(ip(100)),
            proxy(ip(100), "eth0"),
        ];
        want.sort();
        assert_eq!(installs(&out), want);
        let announced: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                ResponderAction::Announce { address, interface } => {
                    Some((*address, interface.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(announced, vec![(ip(11), "eth0"), (ip(100), "eth0")]);
        // The lease asked (1000 ms) is capped at the longest (300 ms).
        assert_eq!(
            sent(&out),
            vec![(
                1,
                RelayMessage::Grant {
                    lease_id: 7,
                    lease_ms: 300
                }
            )]
        );
        // Kernel work comes before the grant: the requester switches when the path works.
        let grant_at = out
            .iter()
            .position(|a| matches!(a, ResponderAction::Send { .. }))
            .unwrap();
        assert!(out[..grant_at]
            .iter()
            .any(|a| matches!(a, ResponderAction::Announce { .. })));
        assert_eq!(r.installed().count(), 6);
        assert_eq!(r.next_deadline(), Some(ms(300)));
    }

    #[test]
    fn release_undoes_exactly_what_was_installed_and_is_acknowledged_even_when_repeated() {
        let mut r = responder();
        let first = r.handle(from_node(1, request(7, &[ip(11)])), ms(0));
        let out = r.handle(from_node(1, RelayMessage::Release { lease_id: 7 }), ms(10));
        let mut undone = removes(&out);
        undone.sort();
        assert_eq!(undone, installs(&first));
        // Routes and proxy entries go before forwarding.
        let last = removes(&out).pop().unwrap();
        assert!(matches!(last, RelayEntry::Forwarding { .. }));
        assert_eq!(
            sent(&out),
            vec![(1, RelayMessage::Released { lease_id: 7 })]
        );
        assert!(out.contains(&ResponderAction::RelayEnded {
            node: 1,
            reason: RelayEndReason::Released
        }));
        let again = r.handle(from_node(1, RelayMessage::Release { lease_id: 7 }), ms(20));
        assert_eq!(
            again,
            vec![ResponderAction::Send {
                to: 1,
                message: RelayMessage::Released { lease_id: 7 }
            }]
        );
        assert_eq!(r.installed().count(), 0);
    }

    #[test]
    fn a_release_of_another_lease_leaves_the_relay_alone() {
        let mut r = responder();
        r.handle(from_node(1, request(7, &[ip(11)])), ms(0));
        let out = r.handle(from_node(1, RelayMessage::Release { lease_id: 6 }), ms(1));
        assert!(removes(&out).is_empty());
        assert_eq!(r.relays().count(), 1);
    }

    #[test]
    fn an_unrefreshed_lease_expires_and_is_undone() {
        let mut r = responder();
        r.handle(from_node(1, request(7, &[ip(11)])), ms(0));
        let out = r.handle(from_node(1, RelayMessage::Refresh { lease_id: 7 }), ms(200));
        assert_eq!(
            sent(&out),
            vec![(
                1,
                RelayMessage::Grant {
                    lease_id: 7,
                    lease_ms: 300
                }
            )]
        );
        assert_eq!(r.next_deadline(), Some(ms(500)));
        assert!(r.handle(ResponderEvent::Tick, ms(499)).is_empty());
        let out = r.handle(ResponderEvent::Tick, ms(500));
        assert_eq!(removes(&out).len(), 4);
        assert!(out.contains(&ResponderAction::RelayEnded {
            node: 1,
            reason: RelayEndReason::Expired
        }));
        assert_eq!(r.installed().count(), 0);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn refresh_of_an_unknown_lease_is_refused() {
        let mut r = responder();
        let out = r.handle(from_node(1, RelayMessage::Refresh { lease_id: 3 }), ms(0));
        assert_eq!(
            sent(&out),
            vec![(
                1,
                RelayMessage::Refuse {
                    lease_id: 3,
                    reason: RefuseReason::UnknownLease
                }
            )]
        );
    }

    #[test]
    fn refusals_install_nothing() {
        let (mut r, _) = Responder::start(responder_settings(), None, []);
        let out = r.handle(from_node(1, request(1, &[ip(11)])), ms(0));
        assert_eq!(
            out,
            vec![ResponderAction::Send {
                to: 1,
                message: RelayMessage::Refuse {
                    lease_id: 1,
                    reason: RefuseReason::NoUplink
                }
            }]
        );
        let mut r = responder();
        r.handle(from_node(1, request(1, &[ip(11), ip(100)])), ms(0));
        let out = r.handle(from_node(2, request(1, &[ip(12), ip(100)])), ms(0));
        assert_eq!(
            out,
            vec![ResponderAction::Send {
                to: 2,
                message: RelayMessage::Refuse {
                    lease_id: 1,
                    reason: RefuseReason::AddressConflict
                }
            }]
        );
        r.handle(from_node(2, request(1, &[ip(12)])), ms(0));
        let out = r.handle(from_node(3, request(1, &[ip(13)])), ms(0));
        assert_eq!(
            out,
            vec![ResponderAction::Send {
                to: 3,
                message: RelayMessage::Refuse {
                    lease_id: 1,
                    reason: RefuseReason::Busy
                }
            }]
        );
    }

    #[test]
    fn forwarding_is_shared_between_relays_and_left_to_the_operator_when_told() {
        let mut settings = responder_settings();
        settings.forwarding_managed_elsewhere.insert("eth0".into());
        let (mut r, _) = Responder::start(settings, Some("eth0".into()), []);
        let a = r.handle(from_node(1, request(1, &[ip(11)])), ms(0));
        assert!(installs(&a).contains(&forwarding("priv0")));
        assert!(!installs(&a).contains(&forwarding("eth0")));
        let b = r.handle(from_node(2, request(1, &[ip(12)])), ms(0));
        assert!(!installs(&b).contains(&forwarding("priv0")), "already on");
        let out = r.handle(from_node(1, RelayMessage::Release { lease_id: 1 }), ms(1));
        assert!(
            !removes(&out).contains(&forwarding("priv0")),
            "node 2 needs it"
        );
        let out = r.handle(from_node(2, RelayMessage::Release { lease_id: 1 }), ms(1));
        assert!(removes(&out).contains(&forwarding("priv0")));
    }

    #[test]
    fn a_new_request_changes_the_addresses_in_place() {
        let mut r = responder();
        r.handle(from_node(1, request(1, &[ip(11)])), ms(0));
        let out = r.handle(from_node(1, request(1, &[ip(11), ip(100)])), ms(10));
        assert_eq!(installs(&out), vec![route(ip(100)), proxy(ip(100), "eth0")]);
        assert!(removes(&out).is_empty());
        assert!(out.contains(&ResponderAction::Announce {
            address: ip(100),
            interface: "eth0".into()
        }));
        assert!(!out.contains(&ResponderAction::Announce {
            address: ip(11),
            interface: "eth0".into()
        }));
        let out = r.handle(from_node(1, request(2, &[ip(100)])), ms(20));
        assert!(installs(&out).is_empty());
        assert_eq!(removes(&out), vec![route(ip(11)), proxy(ip(11), "eth0")]);
        // A retransmitted request changes nothing but the lease.
        let out = r.handle(from_node(1, request(2, &[ip(100)])), ms(30));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn uplink_moves_take_the_proxy_entries_along_and_loss_revokes() {
        let mut r = responder();
        r.handle(from_node(1, request(1, &[ip(11)])), ms(0));
        let out = r.handle(ResponderEvent::UplinkChanged(Some("eth1".into())), ms(5));
        assert_eq!(
            installs(&out),
            vec![forwarding("eth1"), proxy(ip(11), "eth1")]
        );
        assert_eq!(
            removes(&out),
            vec![forwarding("eth0"), proxy(ip(11), "eth0")]
        );
        assert!(out.contains(&ResponderAction::Announce {
            address: ip(11),
            interface: "eth1".into()
        }));
        let out = r.handle(ResponderEvent::UplinkChanged(None), ms(6));
        assert_eq!(removes(&out).len(), 4);
        assert!(sent(&out).contains(&(
            1,
            RelayMessage::Revoke {
                lease_id: 1,
                reason: RevokeReason::UplinkLost
            }
        )));
        assert_eq!(r.installed().count(), 0);
    }

    #[test]
    fn shutdown_revokes_everything_and_refuses_after() {
        let mut r = responder();
        r.handle(from_node(1, request(1, &[ip(11)])), ms(0));
        let out = r.handle(ResponderEvent::Shutdown, ms(1));
        assert_eq!(removes(&out).len(), 4);
        assert!(sent(&out).contains(&(
            1,
            RelayMessage::Revoke {
                lease_id: 1,
                reason: RevokeReason::ShuttingDown
            }
        )));
        let out = r.handle(from_node(1, request(2, &[ip(11)])), ms(2));
        assert!(installs(&out).is_empty());
    }

    #[test]
    fn start_removes_what_a_previous_run_left() {
        let mut old = responder();
        old.handle(from_node(1, request(1, &[ip(11), ip(100)])), ms(0));
        let left: Vec<RelayEntry> = old.installed().cloned().collect();
        let (new, undo) = Responder::start(responder_settings(), Some("eth0".into()), left.clone());
        assert_eq!(removes(&undo), left);
        assert_eq!(undo.len(), left.len());
        assert_eq!(new.installed().count(), 0);
    }

    #[test]
    fn an_unfresh_frame_is_challenged() {
        let mut r = responder();
        assert_eq!(
            r.handle(ResponderEvent::Unfresh { from: 4 }, ms(0)),
            vec![ResponderAction::Send {
                to: 4,
                message: RelayMessage::Challenge
            }]
        );
    }

    // ---- requester ----

    fn sibling(node: NodeId, link: &str) -> Sibling {
        Sibling {
            node,
            link: link.into(),
            next_hop: NEXT_HOP,
        }
    }

    fn requester_settings() -> RequesterSettings {
        RequesterSettings {
            siblings: vec![
                sibling(2, "priv0"),
                sibling(9, "priv1"),
                sibling(3, "priv0"),
            ],
            lease: ms(300),
            refresh_every: ms(100),
            retry_every: ms(20),
            attempts_per_sibling: 2,
        }
    }

    fn sends(out: &[RequesterAction]) -> Vec<(NodeId, RelayMessage)> {
        out.iter()
            .filter_map(|a| match a {
                RequesterAction::Send { to, message } => Some((*to, message.clone())),
                _ => None,
            })
            .collect()
    }

    fn started() -> Requester {
        let mut q = Requester::new(requester_settings());
        let out = q.handle(
            RequesterEvent::Start {
                via: "priv0".into(),
                addresses: vec![ip(11)],
            },
            ms(0),
        );
        assert_eq!(
            sends(&out),
            vec![(
                2,
                RelayMessage::Request {
                    lease_id: 1,
                    lease_ms: 300,
                    next_hop: NEXT_HOP,
                    addresses: vec![ip(11)]
                }
            )]
        );
        q
    }

    fn grant(lease_id: u64) -> RelayMessage {
        RelayMessage::Grant {
            lease_id,
            lease_ms: 300,
        }
    }

    fn got(from: NodeId, message: RelayMessage) -> RequesterEvent {
        RequesterEvent::Received { from, message }
    }

    #[test]
    fn settings_are_validated() {
        assert_eq!(requester_settings().validate(), Ok(()));
        let mut s = requester_settings();
        s.refresh_every = s.lease;
        assert!(matches!(
            s.validate(),
            Err(RequesterSettingsError::BadRefresh { .. })
        ));
        let mut s = requester_settings();
        s.attempts_per_sibling = 0;
        assert_eq!(s.validate(), Err(RequesterSettingsError::ZeroAttempts));
        let mut s = requester_settings();
        s.siblings.push(sibling(2, "priv0"));
        assert_eq!(
            s.validate(),
            Err(RequesterSettingsError::DuplicateSibling {
                node: 2,
                link: "priv0".into()
            })
        );
        let mut s = requester_settings();
        s.retry_every = Duration::ZERO;
        assert_eq!(s.validate(), Err(RequesterSettingsError::ZeroRetry));
        let mut s = requester_settings();
        s.lease = Duration::ZERO;
        assert_eq!(s.validate(), Err(RequesterSettingsError::BadLease));
    }

    #[test]
    fn a_grant_switches_the_path_and_refreshes_keep_it() {
        let mut q = started();
        let out = q.handle(got(2, grant(1)), ms(1));
        assert_eq!(
            out,
            vec![RequesterAction::RelayThrough {
                sibling: 2,
                link: "priv0".into()
            }]
        );
        assert_eq!(q.relaying_through(), Some(2));
        // Refresh due 100 ms after the request went out.
        assert_eq!(q.next_deadline(), Some(ms(100)));
        let out = q.handle(RequesterEvent::Tick, ms(100));
        assert_eq!(
            sends(&out),
            vec![(2, RelayMessage::Refresh { lease_id: 1 })]
        );
        q.handle(got(2, grant(1)), ms(101));
        // Valid until 100 + 300: ticks up to then and refreshes in between lose nothing.
        for t in [200, 300, 399] {
            let out = q.handle(RequesterEvent::Tick, ms(t));
            assert!(!out
                .iter()
                .any(|a| matches!(a, RequesterAction::RelayLost { .. })));
        }
    }

    #[test]
    fn unanswered_refreshes_lose_the_relay_and_the_next_sibling_is_asked() {
        let mut q = started();
        q.handle(got(2, grant(1)), ms(1));
        let mut lost_at = None;
        let mut t = ms(1);
        while lost_at.is_none() {
            t = q.next_deadline().unwrap();
            let out = q.handle(RequesterEvent::Tick, t);
            if out.contains(&RequesterAction::RelayLost {
                sibling: 2,
                reason: RelayLostReason::NoRefreshAnswer,
            }) {
                lost_at = Some(t);
                let s = sends(&out);
                assert!(s.contains(&(2, RelayMessage::Release { lease_id: 1 })));
                assert!(s
                    .iter()
                    .any(|(to, m)| *to == 3
                        && matches!(m, RelayMessage::Request { lease_id: 2, .. })));
            }
        }
        assert_eq!(lost_at, Some(ms(300)), "the lease counted from the request");
        let _ = t;
    }

    #[test]
    fn an_unanswering_sibling_is_released_and_the_next_one_asked() {
        let mut q = started();
        let out = q.handle(RequesterEvent::Tick, ms(20));
        assert!(matches!(
            sends(&out)[..],
            [(2, RelayMessage::Request { lease_id: 1, .. })]
        ));
        let out = q.handle(RequesterEvent::Tick, ms(40));
        let s = sends(&out);
        assert_eq!(s[0], (2, RelayMessage::Release { lease_id: 1 }));
        assert!(matches!(
            s[1],
            (3, RelayMessage::Request { lease_id: 2, .. })
        ));
        assert!(!out.contains(&RequesterAction::NoSiblingGranted));
        // Node 3 refuses: the round is over without a grant.
        let out = q.handle(
            got(
                3,
                RelayMessage::Refuse {
                    lease_id: 2,
                    reason: RefuseReason::NoUplink,
                },
            ),
            ms(41),
        );
        assert!(out.contains(&RequesterAction::NoSiblingGranted));
        assert!(matches!(
            sends(&out)[..],
            [(2, RelayMessage::Request { lease_id: 3, .. })]
        ));
        // Node 2's late grant of lease 1 is released, not taken.
        let out = q.handle(got(2, grant(1)), ms(42));
        assert!(q.relaying_through().is_none());
        assert!(out.is_empty(), "its release is already pending: {out:?}");
        let out = q.handle(got(2, grant(3)), ms(43));
        assert!(out.contains(&RequesterAction::RelayThrough {
            sibling: 2,
            link: "priv0".into()
        }));
    }

    #[test]
    fn a_shorter_grant_is_believed_and_refreshed_sooner() {
        let mut q = started();
        q.handle(
            got(
                2,
                RelayMessage::Grant {
                    lease_id: 1,
                    lease_ms: 60,
                },
            ),
            ms(1),
        );
        // Refresh every 30 ms (half the granted lease), lost at 60 ms without answer.
        assert_eq!(q.next_deadline(), Some(ms(30)));
        let out = q.handle(RequesterEvent::Tick, ms(30));
        assert_eq!(
            sends(&out),
            vec![(2, RelayMessage::Refresh { lease_id: 1 })]
        );
        let out = q.handle(RequesterEvent::Tick, ms(60));
        assert!(out.contains(&RequesterAction::RelayLost {
            sibling: 2,
            reason: RelayLostReason::NoRefreshAnswer
        }));
    }

    #[test]
    fn a_grant_from_a_sibling_never_asked_now_is_released() {
        let mut q = started();
        let out = q.handle(got(9, grant(5)), ms(1));
        assert_eq!(
            sends(&out),
            vec![(9, RelayMessage::Release { lease_id: 5 })]
        );
        assert!(q.relaying_through().is_none());
    }

    #[test]
    fn stop_releases_until_acknowledged() {
        let mut q = started();
        q.handle(got(2, grant(1)), ms(1));
        let out = q.handle(RequesterEvent::Stop, ms(10));
        assert_eq!(
            out,
            vec![
                RequesterAction::Send {
                    to: 2,
                    message: RelayMessage::Release { lease_id: 1 }
                },
                RequesterAction::RelayEnded { sibling: 2 },
            ]
        );
        assert!(!q.started());
        let out = q.handle(RequesterEvent::Tick, ms(30));
        assert_eq!(
            sends(&out),
            vec![(2, RelayMessage::Release { lease_id: 1 })]
        );
        q.handle(got(2, RelayMessage::Released { lease_id: 1 }), ms(31));
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn releases_give_up_after_a_lease() {
        let mut q = started();
        q.handle(RequesterEvent::Stop, ms(0));
        let mut t = ms(0);
        let mut count = 0;
        while let Some(d) = q.next_deadline() {
            t = d;
            count += sends(&q.handle(RequesterEvent::Tick, t)).len();
        }
        assert_eq!(t, ms(300));
        assert_eq!(count, 14, "every 20 ms below 300 ms");
    }

    #[test]
    fn revoke_and_restart_of_the_sibling() {
        let mut q = started();
        q.handle(got(2, grant(1)), ms(1));
        // The sibling restarted: it challenges the refresh.
        let out = q.handle(got(2, RelayMessage::Challenge), ms(100));
        assert!(out.contains(&RequesterAction::RelayLost {
            sibling: 2,
            reason: RelayLostReason::SiblingRestarted
        }));
        assert!(matches!(
            sends(&out)[..],
            [(2, RelayMessage::Request { lease_id: 2, .. })]
        ));
        q.handle(got(2, grant(2)), ms(101));
        let out = q.handle(
            got(
                2,
                RelayMessage::Revoke {
                    lease_id: 2,
                    reason: RevokeReason::UplinkLost,
                },
            ),
            ms(150),
        );
        assert!(out.contains(&RequesterAction::RelayLost {
            sibling: 2,
            reason: RelayLostReason::Revoked(RevokeReason::UplinkLost)
        }));
        assert!(matches!(
            sends(&out)[..],
            [(3, RelayMessage::Request { lease_id: 3, .. })]
        ));
        // A stale revoke of an older lease changes nothing.
        let out = q.handle(
            got(
                3,
                RelayMessage::Revoke {
                    lease_id: 1,
                    reason: RevokeReason::UplinkLost,
                },
            ),
            ms(151),
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_challenged_request_is_sent_again_at_once() {
        let mut q = started();
        let out = q.handle(got(2, RelayMessage::Challenge), ms(1));
        assert!(matches!(
            sends(&out)[..],
            [(2, RelayMessage::Request { lease_id: 1, .. })]
        ));
    }

    #[test]
    fn addresses_change_in_place_and_another_link_starts_over() {
        let mut q = started();
        q.handle(got(2, grant(1)), ms(1));
        let out = q.handle(
            RequesterEvent::AddressesChanged(vec![ip(11), ip(100)]),
            ms(5),
        );
        assert!(matches!(
            &sends(&out)[..],
            [(2, RelayMessage::Request { lease_id: 1, addresses, .. })] if addresses.len() == 2
        ));
        assert_eq!(q.relaying_through(), Some(2));
        let out = q.handle(
            RequesterEvent::Start {
                via: "priv1".into(),
                addresses: vec![ip(11)],
            },
            ms(6),
        );
        assert!(out.contains(&RequesterAction::RelayEnded { sibling: 2 }));
        assert!(matches!(
            sends(&out)[..],
            [
                (2, RelayMessage::Release { lease_id: 1 }),
                (9, RelayMessage::Request { lease_id: 2, .. })
            ]
        ));
    }

    #[test]
    fn a_link_without_sibling_says_so() {
        let mut q = Requester::new(requester_settings());
        let out = q.handle(
            RequesterEvent::Start {
                via: "usb0".into(),
                addresses: vec![ip(11)],
            },
            ms(0),
        );
        assert_eq!(out, vec![RequesterAction::NoSiblingGranted]);
        assert_eq!(q.next_deadline(), None);
        assert!(q.started());
    }

    // ---- properties ----

    #[derive(Debug, Clone)]
    enum RStep {
        Wait(u64),
        Request {
            node: NodeId,
            lease_id: u64,
            addresses: Vec<u8>,
            link: bool,
        },
        Refresh {
            node: NodeId,
            lease_id: u64,
        },
        Release {
            node: NodeId,
            lease_id: u64,
        },
        Uplink(Option<bool>),
        Shutdown,
    }

    fn rstep() -> impl Strategy<Value = RStep> {
        let node = 1u16..4;
        let lease = 1u64..3;
        prop_oneof![
            3 => (0u64..200).prop_map(RStep::Wait),
            4 => (node.clone(), lease.clone(), proptest::collection::vec(1u8..6, 1..4), any::<bool>())
                .prop_map(|(node, lease_id, addresses, link)| RStep::Request {
                    node, lease_id, addresses, link,
                }),
            2 => (node.clone(), lease.clone())
                .prop_map(|(node, lease_id)| RStep::Refresh { node, lease_id }),
            2 => (node, lease).prop_map(|(node, lease_id)| RStep::Release { node, lease_id }),
            1 => proptest::option::of(any::<bool>()).prop_map(RStep::Uplink),
            1 => Just(RStep::Shutdown),
        ]
    }

    proptest! {
        /// Whatever the requests: nothing is installed twice or removed uninstalled; the
        /// shell's owner table (what the actions did) is what the responder says is installed;
        /// no address is proxied for two nodes; once every lease ran out nothing is left; and a
        /// restart from the owner table at any point removes it all exactly once.
        #[test]
        fn every_installed_entry_is_undone_exactly_once(
            steps in proptest::collection::vec(rstep(), 0..60),
        ) {
            let (mut r, _) = Responder::start(responder_settings(), Some("eth0".into()), []);
            let mut table: BTreeSet<RelayEntry> = BTreeSet::new();
            let mut now = Duration::ZERO;
            let apply = |table: &mut BTreeSet<RelayEntry>, out: &[ResponderAction]|
                -> Result<(), TestCaseError> {
                for a in out {
                    match a {
                        ResponderAction::Install(e) => {
                            prop_assert!(table.insert(e.clone()), "installed twice: {}", e)
                        }
                        ResponderAction::Remove(e) => {
                            prop_assert!(table.remove(e), "removed uninstalled: {}", e)
                        }
                        _ => {}
                    }
                }
                Ok(())
            };
            for s in steps {
                let event = match s {
                    RStep::Wait(d) => { now += ms(d); ResponderEvent::Tick }
                    RStep::Request { node, lease_id, addresses, link } => {
                        let mut addresses: Vec<Ipv4Addr> =
                            addresses.into_iter().map(ip).collect();
                        addresses.sort();
                        addresses.dedup();
                        ResponderEvent::Received {
                            from: node,
                            interface: if link { "priv0" } else { "priv1" }.into(),
                            message: RelayMessage::Request {
                                lease_id, lease_ms: 150, next_hop: NEXT_HOP, addresses,
                            },
                        }
                    }
                    RStep::Refresh { node, lease_id } =>
                        from_node(node, RelayMessage::Refresh { lease_id }),
                    RStep::Release { node, lease_id } =>
                        from_node(node, RelayMessage::Release { lease_id }),
                    RStep::Uplink(u) => ResponderEvent::UplinkChanged(
                        u.map(|b| if b { "eth0" } else { "eth1" }.to_string())),
                    RStep::Shutdown => ResponderEvent::Shutdown,
                };
                let out = r.handle(event, now);
                apply(&mut table, &out)?;
                let installed: BTreeSet<RelayEntry> = r.installed().cloned().collect();
                prop_assert_eq!(&installed, &table);
                let mut proxied = BTreeSet::new();
                for (_, addresses) in r.relays() {
                    for a in addresses {
                        prop_assert!(proxied.insert(*a), "{} relayed twice", a);
                    }
                }
                // A restart now would undo exactly the owner table.
                let (_, undo) = Responder::start(
                    responder_settings(), Some("eth0".into()), table.iter().cloned());
                let mut undone = table.clone();
                apply(&mut undone, &undo)?;
                prop_assert!(undone.is_empty());
            }
            now += ms(1000);
            let out = r.handle(ResponderEvent::Tick, now);
            apply(&mut table, &out)?;
            prop_assert!(table.is_empty(), "left behind: {:?}", table);
            prop_assert_eq!(r.relays().count(), 0);
        }

        /// Whatever siblings send, in any order and with any lease id: the requester never
        /// panics; it says it sends through a sibling exactly between a `RelayThrough` and the
        /// `RelayLost` or `RelayEnded` that follows; every grant it did not take is answered
        /// with a release to its sender; and its deadline is never in the past.
        #[test]
        fn requester_follows_its_rules_whatever_it_hears(
            steps in proptest::collection::vec(qstep(), 0..80),
        ) {
            let mut q = Requester::new(requester_settings());
            let mut now = Duration::ZERO;
            let mut through: Option<NodeId> = None;
            for s in steps {
                let event = match s {
                    QStep::Wait(d) => { now += ms(d); RequesterEvent::Tick }
                    QStep::Start(link) => RequesterEvent::Start {
                        via: ["priv0", "priv1", "usb0"][link].into(),
                        addresses: vec![ip(11)],
                    },
                    QStep::Stop => RequesterEvent::Stop,
                    QStep::Addresses(extra) => RequesterEvent::AddressesChanged(
                        if extra { vec![ip(11), ip(100)] } else { vec![ip(11)] }),
                    QStep::Hear(from, message) => RequesterEvent::Received { from, message },
                };
                let heard_grant = match &event {
                    RequesterEvent::Received {
                        from, message: RelayMessage::Grant { lease_id, .. },
                    } => Some((*from, *lease_id)),
                    _ => None,
                };
                let out = q.handle(event, now);
                for a in &out {
                    match a {
                        RequesterAction::RelayThrough { sibling, .. } => {
                            prop_assert!(through.is_none(), "through two siblings");
                            through = Some(*sibling);
                        }
                        RequesterAction::RelayLost { sibling, .. }
                        | RequesterAction::RelayEnded { sibling } => {
                            prop_assert_eq!(through.take(), Some(*sibling));
                        }
                        _ => {}
                    }
                }
                prop_assert_eq!(through, q.relaying_through());
                if let Some((from, lease_id)) = heard_grant {
                    let taken = q.relaying_through() == Some(from);
                    let released = out.contains(&RequesterAction::Send {
                        to: from, message: RelayMessage::Release { lease_id } });
                    let pending = q.releases.iter()
                        .any(|r| r.node == from && r.lease_id == lease_id);
                    prop_assert!(
                        taken || released || pending,
                        "grant {} from {} neither taken nor released", lease_id, from
                    );
                }
                if let Some(d) = q.next_deadline() {
                    prop_assert!(d > now, "deadline {:?} not after {:?}", d, now);
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum QStep {
        Wait(u64),
        Start(usize),
        Stop,
        Addresses(bool),
        Hear(NodeId, RelayMessage),
    }

    fn qstep() -> impl Strategy<Value = QStep> {
        let from = prop_oneof![Just(2u16), Just(3u16), Just(9u16), Just(5u16)];
        let lease_id = 0u64..5;
        let message = prop_oneof![
            3 => (lease_id.clone(), 1u32..400)
                .prop_map(|(lease_id, lease_ms)| RelayMessage::Grant { lease_id, lease_ms }),
            1 => (lease_id.clone(), prop_oneof![
                Just(RefuseReason::NoUplink), Just(RefuseReason::UnknownLease),
                Just(RefuseReason::Busy), Just(RefuseReason::AddressConflict)])
                .prop_map(|(lease_id, reason)| RelayMessage::Refuse { lease_id, reason }),
            1 => lease_id.clone().prop_map(|lease_id| RelayMessage::Revoke {
                lease_id, reason: RevokeReason::UplinkLost }),
            1 => lease_id.prop_map(|lease_id| RelayMessage::Released { lease_id }),
            1 => Just(RelayMessage::Challenge),
        ];
        prop_oneof![
            4 => (0u64..120).prop_map(QStep::Wait),
            1 => (0usize..3).prop_map(QStep::Start),
            1 => Just(QStep::Stop),
            1 => any::<bool>().prop_map(QStep::Addresses),
            6 => (from, message).prop_map(|(f, m)| QStep::Hear(f, m)),
        ]
    }
}
