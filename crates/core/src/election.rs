//! The election state machine: failure detection, quorum, leases and the choice of the primary.
//!
//! Deterministic: [`Election::handle`] takes an [`Event`] and the current time and returns
//! [`Action`]s; [`Election::next_deadline`] says when to call it again with [`Event::Tick`].
//!
//! # Protocol
//! Every voter sends a [`Message::Heartbeat`] to every other voter each interval. The primary's
//! heartbeat is also a lease request: each follower answers it at once with an [`Message::Ack`]
//! and promises not to vote for anybody else for one *lease* (`interval × miss_count`) counted
//! from the moment it received that heartbeat. The primary serves only while a majority of voters
//! (itself included) holds such a promise, counted from the moment it *sent* the acknowledged
//! heartbeat, minus a small margin: so its lease always ends before the promises that back it.
//!
//! A healthy member whose own promise has run out, that hears a majority of voters and that is
//! the first healthy member with quorum it hears, stands as candidate in a new epoch. First means
//! holding live connections (a node that carries established connections nobody else could take
//! over whole, see [`Event::HoldsConnectionsChanged`]) before not, then the lowest id. A member
//! that holds none does not stand against a holder that fell silent (or lost its majority)
//! either, until [`ElectionConfig::holder_grace`] has passed (a pause, a starved thread or a backlogged
//! receive path are far more common than a dead host, and electing the other node would drop
//! every connection the holder carries), unless the holder is known dead ([`Event::PeerDead`]:
//! its host does not answer, its daemon is gone) or gave the address up ([`Message::Release`]).
//! A voter
//! grants at most one vote per epoch, and a voter still bound by a promise keeps the request and
//! grants it the moment its promise runs out (so a takeover waits for no extra round trip). The
//! candidate serves once a majority granted its request; since any two majorities share a voter
//! and no voter votes while it backs a lease, two primaries never serve at the same time.
//!
//! Epochs are unique per candidate (`term << 16 | candidate id`), so no two nodes are ever
//! primary in the same epoch even when a voter forgets its vote by restarting; a restarted voter
//! also stays silent for one lease (grants no vote) so that promises of its previous life hold.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::election_messages::{Message, NodeId, Role};

/// Static parameters of one voter's election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    pub me: NodeId,
    /// Members that may serve (every voter but the witness).
    pub members: Vec<NodeId>,
    pub witness: Option<NodeId>,
    pub heartbeat_interval: Duration,
    /// A voter silent for this many intervals is dead; the lease lasts as long.
    pub miss_count: u32,
    /// A healthier lower-id member takes the address back from a serving higher-id one.
    pub preempt: bool,
    /// A two-member group without witness: each member alone is a quorum (split-brain risk).
    pub two_node: bool,
    /// How long a member that holds open connections no other node could carry on may stay
    /// silent before a member without them stands against it (unless it is known dead). At
    /// least one lease; see [`ElectionConfig::default_holder_grace`].
    pub holder_grace: Duration,
}

impl ElectionConfig {
    pub fn voters(&self) -> Vec<NodeId> {
        let mut voters: Vec<NodeId> = self.members.iter().copied().chain(self.witness).collect();
        voters.sort_unstable();
        voters.dedup();
        voters
    }

    pub fn quorum(&self) -> usize {
        let voters = self.voters().len();
        if self.two_node && self.witness.is_none() && voters == 2 {
            1
        } else {
            voters / 2 + 1
        }
    }

    pub fn lease(&self) -> Duration {
        self.heartbeat_interval * self.miss_count
    }

    pub fn is_witness(&self) -> bool {
        self.witness == Some(self.me)
    }

    /// The default [`holder_grace`](Self::holder_grace) for a heartbeat of `interval` ×
    /// `miss_count`: ten leases, and never under half a second. Measured on the project's
    /// 2-core lab under crash-cycle load, a live node's heartbeats went silent for up to about
    /// 100 ms (a starved receive path, a busy hypervisor), several leases at a 10 ms
    /// heartbeat; a silence of ten leases is far outside that, and a holder that is really
    /// dead is usually known dead much sooner ([`Event::PeerDead`]).
    pub fn default_holder_grace(interval: Duration, miss_count: u32) -> Duration {
        (interval * miss_count * 10).max(Duration::from_millis(500))
    }

    /// Time a lease holder gives up before the promises backing it run out, to cover the time
    /// between deciding to drop the address and it being gone.
    fn lease_margin(&self) -> Duration {
        (self.heartbeat_interval / 10).max(Duration::from_millis(1))
    }
}

/// Input to the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed; nothing else happened.
    Tick,
    /// An authenticated message from a voter (the shell has checked MAC, sender and replay).
    Received {
        from: NodeId,
        epoch: u64,
        message: Message,
    },
    /// The local service health verdict changed.
    HealthChanged(bool),
    /// The node just started and its health checks have not given a first verdict: it cannot
    /// serve yet, and tells its peers it is starting (see [`Message::Heartbeat`]'s
    /// `starting`) so that those ranking after it wait for it a while.
    HealthPending,
    /// This node now does (or no longer does) carry live client connections that only it can
    /// carry on (see [`Message::Heartbeat`]'s `holds_connections`).
    HoldsConnectionsChanged(bool),
    /// The shell found a silent peer dead by other means than its heartbeats (see
    /// [`Election::peers_to_probe`]); it counts as dead until it is heard again.
    PeerDead { id: NodeId, evidence: DeathEvidence },
    /// Planned stop (SIGTERM): release the address now and tell the peers.
    Shutdown,
    /// Planned switchover (`steadfast move`): a primary gives the address up for the member
    /// `to`, which stands at once; the others, and this node, wait for it a while
    /// ([`HANDOFF_LEASES`]). The shell asks [`Election::move_refusal`] before it hands the
    /// connections over; once it has, this node must step down whatever happened meanwhile,
    /// so here a primary always does: with a plain [`Message::Release`] if `to` is not another
    /// member.
    MoveTo(NodeId),
    /// Standby on (`steadfast standby on`) or off: a node in standby never stands, tells its
    /// peers it cannot serve (so nobody defers to it or picks it as its duplex backup), and
    /// gives the address up at once if it holds it. It still votes: a group in maintenance
    /// keeps its quorum.
    Standby(bool),
    /// A reload (SIGHUP) changed the settings that may change while the election runs:
    /// [`ElectionConfig::preempt`] and [`ElectionConfig::holder_grace`] (kept at least one
    /// lease). Neither decides who may hold a lease, only who stands and whom a node waits for;
    /// the others (members, heartbeat, two_node) need a restart.
    Retuned {
        preempt: bool,
        holder_grace: Duration,
    },
}

/// How long, in leases, only the named member may be elected after a
/// [`Message::Handoff`]: long enough for its candidacy (one lease) and a retry, short enough
/// that a target that died meanwhile costs the group little more than a failover.
pub const HANDOFF_LEASES: u32 = 2;

/// Why a primary refuses `steadfast move --to NODE` ([`Election::move_refusal`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoveRefusal {
    #[error("this node is not the primary (the primary is {})", primary.map_or("unknown".to_string(), |p| format!("node {p}")))]
    NotPrimary { primary: Option<NodeId> },
    #[error("node {0} is not a member of this group (a witness never serves)")]
    NotAMember(NodeId),
    #[error("node {0} is this node, which already serves")]
    Itself(NodeId),
    #[error("node {0} has not been heard within the last lease")]
    NotHeard(NodeId),
    #[error("node {0} cannot serve: its health checks fail, it is in standby or it has no quorum")]
    CannotServe(NodeId),
    #[error(
        "preempt = true would give the address back from node {to} to this lower-id node at \
         once: put this node in standby instead"
    )]
    WouldBePreempted { to: NodeId },
    #[error(
        "this node carries open connections no other node could carry on (its backup has not \
         adopted them all): moving now would drop them"
    )]
    HoldsConnections,
    #[error("a switchover to node {0} is already under way")]
    AlreadyMoving(NodeId),
}

/// How the shell knows a silent peer is dead, not merely slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeathEvidence {
    /// Its host does not answer at the network level (no echo reply): the host is down or cut
    /// off. A node that is only paused or slow still has a kernel that answers.
    HostUnreachable,
    /// Its host answers but nothing listens on its heartbeat port (ICMP port unreachable): the
    /// daemon process is gone.
    DaemonGone,
}

impl fmt::Display for DeathEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeathEvidence::HostUnreachable => write!(f, "its host does not answer"),
            DeathEvidence::DaemonGone => write!(f, "its daemon is gone (heartbeat port closed)"),
        }
    }
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    AllVoters,
    Voter(NodeId),
}

/// Why the role changed, for logs and notify hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The daemon started (the shell reports it; the machine itself starts silently).
    Started,
    /// Won an election with these voters.
    ElectionWon {
        votes: Vec<NodeId>,
    },
    /// The lease could not be renewed by a majority.
    QuorumLost,
    /// A frame from a newer primary arrived.
    NewerEpochSeen {
        from: NodeId,
        epoch: u64,
    },
    /// Health checks failed.
    Unhealthy,
    /// A lower-id member is ready and preemption is on.
    Preempted {
        by: NodeId,
    },
    Shutdown,
    /// A planned switchover to this member (`steadfast move`).
    Moved {
        to: NodeId,
    },
    /// The operator put this node in standby.
    Standby,
}

impl Reason {
    /// A short label of the kind of reason, for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Started => "started",
            Reason::ElectionWon { .. } => "election-won",
            Reason::QuorumLost => "quorum-lost",
            Reason::NewerEpochSeen { .. } => "newer-epoch",
            Reason::Unhealthy => "unhealthy",
            Reason::Preempted { .. } => "preempted",
            Reason::Shutdown => "shutdown",
            Reason::Moved { .. } => "moved",
            Reason::Standby => "standby",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Started => write!(f, "started"),
            Reason::ElectionWon { votes } => write!(f, "election won with votes of {votes:?}"),
            Reason::QuorumLost => write!(f, "quorum lost: the lease was not renewed by a majority"),
            Reason::NewerEpochSeen { from, epoch } => {
                write!(f, "node {from} knows the newer epoch {epoch}")
            }
            Reason::Unhealthy => write!(f, "health checks failing"),
            Reason::Preempted { by } => write!(f, "preempted by lower-id node {by}"),
            Reason::Shutdown => write!(f, "shutdown"),
            Reason::Moved { to } => write!(f, "planned switchover to node {to}"),
            Reason::Standby => write!(f, "standby"),
        }
    }
}

/// Output of the state machine, for the shell to carry out in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send {
        to: Destination,
        epoch: u64,
        message: Message,
    },
    /// Add the service addresses and announce them (gratuitous ARP).
    TakeAddress { epoch: u64 },
    /// Remove the service addresses at once.
    ReleaseAddress,
    /// A peer came back while we serve: announce the addresses again (a healed partition may
    /// have left stale ARP entries behind).
    RefreshAnnouncement,
    /// Role changed (run notify hooks, log).
    RoleChanged {
        role: Role,
        epoch: u64,
        reason: Reason,
    },
}

/// How a received message was judged, so the shell can count what it ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Accepted,
    /// The message claims authority in an epoch older than ours.
    OldEpoch,
    /// The sender is not a voter of this group.
    UnknownSender,
}

/// What one voter knows of another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerView {
    pub last_heard: Option<Duration>,
    /// When the peer last came back to life (first frame after silence).
    pub alive_since: Option<Duration>,
    pub role: Option<Role>,
    pub healthy: bool,
    pub has_quorum: bool,
    pub following: Option<NodeId>,
    pub holds_connections: bool,
    /// It just started and has no health verdict yet.
    pub starting: bool,
    pub epoch: u64,
    /// Found dead by the shell since it was last heard ([`Event::PeerDead`]).
    pub dead: Option<DeathEvidence>,
    /// When it last said it could serve: a heartbeat saying healthy and hearing a majority.
    pub last_able: Option<Duration>,
}

#[derive(Clone, Debug)]
struct Leader {
    id: NodeId,
    /// The epoch the promise was given for: the leader's epoch, or the epoch a vote was for.
    epoch: u64,
    /// No vote for anybody else, and no lease for anybody older, before this instant.
    promise_until: Duration,
}

/// Only `to` may be elected before `until` ([`Message::Handoff`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handoff {
    pub to: NodeId,
    pub until: Duration,
}

#[derive(Clone, Debug)]
struct Candidacy {
    epoch: u64,
    started: Duration,
    granted: BTreeSet<NodeId>,
    denied: BTreeSet<NodeId>,
}

#[derive(Clone, Debug)]
struct Lease {
    until: Duration,
    /// Send time of our recent heartbeats, to date the acks.
    sent: VecDeque<(u64, Duration)>,
    /// Highest heartbeat seq each follower acknowledged.
    acked: BTreeMap<NodeId, u64>,
}

const SENT_HISTORY: usize = 256;
const EPOCH_ID_BITS: u32 = 16;

/// Epochs are `term << 16 | candidate id`: unique per candidate.
pub fn epoch_term(epoch: u64) -> u64 {
    epoch >> EPOCH_ID_BITS
}

/// The node elected in `epoch` (0 for epoch 0, which has no primary).
pub fn epoch_owner(epoch: u64) -> NodeId {
    (epoch & ((1 << EPOCH_ID_BITS) - 1)) as NodeId
}

/// One voter's election state.
#[derive(Clone, Debug)]
pub struct Election {
    cfg: ElectionConfig,
    started_at: Duration,
    epoch: u64,
    role: Role,
    healthy: bool,
    /// No health verdict yet since the start ([`Event::HealthPending`]).
    health_pending: bool,
    holds_connections: bool,
    shut_down: bool,
    /// The operator's standby ([`Event::Standby`]).
    standby: bool,
    /// A planned switchover under way ([`Message::Handoff`]).
    handoff: Option<Handoff>,
    peers: BTreeMap<NodeId, PeerView>,
    leader: Option<Leader>,
    /// Highest epoch we voted in, and for whom.
    voted: Option<(u64, NodeId)>,
    /// A vote request we will grant when our promise runs out: (candidate, epoch, received).
    pending_vote: Option<(NodeId, u64, Duration)>,
    highest_epoch_seen: u64,
    candidacy: Option<Candidacy>,
    lease: Option<Lease>,
    /// A restarted voter grants no vote before this, so promises of its previous life hold.
    quiet_until: Duration,
    /// Earliest instant to stand as candidate (after a start, a lost election or a step-down).
    stand_not_before: Duration,
    seq: u64,
    next_heartbeat: Duration,
    /// When the last call said the next one was due ([`Self::next_deadline`]): a call much
    /// later than that means this node itself was frozen meanwhile.
    due_by: Option<Duration>,
}

impl Election {
    /// A voter that starts (or restarts) at `now`. Members start as backups, healthy until the
    /// shell says otherwise (the shell should report the first health verdict before it matters:
    /// nobody stands before one lease has passed).
    pub fn new(cfg: ElectionConfig, now: Duration) -> Self {
        let peers = cfg
            .voters()
            .into_iter()
            .filter(|&id| id != cfg.me)
            .map(|id| (id, PeerView::default()))
            .collect();
        let role = if cfg.is_witness() {
            Role::Witness
        } else {
            Role::Backup
        };
        let lease = cfg.lease();
        Election {
            started_at: now,
            epoch: 0,
            role,
            healthy: true,
            health_pending: false,
            holds_connections: false,
            shut_down: false,
            standby: false,
            handoff: None,
            peers,
            leader: None,
            voted: None,
            pending_vote: None,
            highest_epoch_seen: 0,
            candidacy: None,
            lease: None,
            quiet_until: now + lease,
            stand_not_before: now + lease,
            seq: 0,
            next_heartbeat: now,
            due_by: None,
            cfg,
        }
    }

    pub fn config(&self) -> &ElectionConfig {
        &self.cfg
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn healthy(&self) -> bool {
        self.healthy
    }
    pub fn holds_connections(&self) -> bool {
        self.holds_connections
    }
    pub fn is_primary(&self) -> bool {
        self.role == Role::Primary
    }
    /// In standby ([`Event::Standby`]).
    pub fn standby(&self) -> bool {
        self.standby
    }
    /// The switchover under way at `now`, if any ([`Message::Handoff`]).
    pub fn handoff(&self, now: Duration) -> Option<Handoff> {
        self.handoff.filter(|h| now < h.until)
    }

    /// Whether this node may serve: health checks pass, not in standby, not stopping. What
    /// its heartbeats say as `healthy`.
    fn can_serve(&self) -> bool {
        self.healthy && !self.standby && !self.shut_down
    }

    /// Why a move of the address to `to` ([`Event::MoveTo`]) is refused now, or `None`: this
    /// node must be primary and hold no connections only it carries; `to` must be another
    /// member, heard within a lease, able to serve (healthy, not in standby, hearing a
    /// majority), and not one that preemption would take the address back from at once.
    pub fn move_refusal(&self, to: NodeId, now: Duration) -> Option<MoveRefusal> {
        if let Some(h) = self.handoff(now) {
            return Some(MoveRefusal::AlreadyMoving(h.to));
        }
        if !self.is_primary() {
            return Some(MoveRefusal::NotPrimary {
                primary: self.primary(),
            });
        }
        if to == self.cfg.me {
            return Some(MoveRefusal::Itself(to));
        }
        if !self.cfg.members.contains(&to) {
            return Some(MoveRefusal::NotAMember(to));
        }
        if !self.peer_alive(to, now) {
            return Some(MoveRefusal::NotHeard(to));
        }
        let peer = &self.peers[&to];
        if !peer.healthy || !peer.has_quorum || peer.starting {
            return Some(MoveRefusal::CannotServe(to));
        }
        if self.holds_connections {
            return Some(MoveRefusal::HoldsConnections);
        }
        if self.cfg.preempt && self.cfg.me < to {
            return Some(MoveRefusal::WouldBePreempted { to });
        }
        None
    }

    /// While primary: the instant (on the clock `handle` is given) before which no other node
    /// can be primary, whatever happens to this one meanwhile. A shell that may act late (a
    /// starved thread, a queued command) checks it at the moment it acts instead of trusting
    /// the role it was told: a value once returned stays true of the past even if this node
    /// stops running, since the promises behind it outlive it.
    pub fn lease_until(&self) -> Option<Duration> {
        self.lease
            .as_ref()
            .filter(|_| self.is_primary())
            .map(|l| l.until)
    }
    pub fn peers(&self) -> &BTreeMap<NodeId, PeerView> {
        &self.peers
    }

    /// The primary we know of: ourselves, the leader we follow, or none.
    pub fn primary(&self) -> Option<NodeId> {
        if self.is_primary() {
            Some(self.cfg.me)
        } else {
            self.leader
                .as_ref()
                .filter(|l| epoch_owner(self.epoch) == l.id)
                .map(|l| l.id)
        }
    }

    pub fn peer_alive(&self, id: NodeId, now: Duration) -> bool {
        self.peers
            .get(&id)
            .and_then(|p| p.last_heard)
            .is_some_and(|t| now < t + self.cfg.lease())
    }

    /// A member this node waits for instead of standing, and instead of voting for a member
    /// that holds nothing: it holds open connections that no other node could carry on, it was
    /// last heard able to serve (healthy, hearing a majority) less than
    /// [`ElectionConfig::holder_grace`] ago, and nothing says it is dead (it did not release
    /// the address, the shell found no [`DeathEvidence`]). It may be silent (paused), or heard
    /// again without a majority yet (it just woke up and has not heard the others). A node
    /// that holds connections itself does not wait: one of the two sets is lost whoever
    /// serves, and the order of [`Self::ranks_before`] decides.
    pub fn holder_to_wait_for(&self, now: Duration) -> Option<NodeId> {
        if self.holds_connections {
            return None;
        }
        self.peers
            .iter()
            .filter(|&(&id, p)| {
                self.cfg.members.contains(&id)
                    && p.holds_connections
                    && p.healthy
                    && p.dead.is_none()
                    && p.last_able.is_some_and(|t| now < t + self.cfg.holder_grace)
            })
            .map(|(&id, _)| id)
            .next()
    }

    /// The silent peers the shell should probe for [`DeathEvidence`] now: those this node
    /// waits for ([`Self::holder_to_wait_for`]) and no longer hears, whose death would let it
    /// stand at once.
    pub fn peers_to_probe(&self, now: Duration) -> Vec<NodeId> {
        self.holder_to_wait_for(now)
            .filter(|&id| !self.peer_alive(id, now))
            .into_iter()
            .collect()
    }

    pub fn has_quorum(&self, now: Duration) -> bool {
        let alive = self
            .peers
            .keys()
            .filter(|&&id| self.peer_alive(id, now))
            .count();
        1 + alive >= self.cfg.quorum()
    }

    /// The next instant after `now` at which `handle(Event::Tick, _)` must run. Timers already
    /// due at `now` were handled by the last call, so only later ones count.
    pub fn next_deadline(&self, now: Duration) -> Duration {
        let lease = self.cfg.lease();
        let mut deadline = self.next_heartbeat;
        let mut consider = |t: Duration| {
            if t > now && t < deadline {
                deadline = t;
            }
        };
        if let Some(l) = &self.lease {
            consider(l.until);
        }
        if let Some(l) = &self.leader {
            consider(l.promise_until);
        }
        if let Some(c) = &self.candidacy {
            consider(c.started + lease);
        }
        if let Some((_, _, received)) = self.pending_vote {
            consider(received + lease);
        }
        for p in self.peers.values() {
            if let Some(t) = p.last_heard {
                consider(t + lease);
                if let Some(able) = p.last_able.filter(|_| p.holds_connections) {
                    consider(able + self.cfg.holder_grace);
                }
                if let Some(since) = p.alive_since.filter(|_| p.starting) {
                    consider(since + self.cfg.holder_grace);
                }
            }
        }
        consider(self.quiet_until);
        consider(self.stand_not_before);
        if let Some(h) = self.handoff {
            consider(h.until);
        }
        deadline
    }

    /// Feeds one event; returns what to do and how a received message was judged.
    pub fn handle(&mut self, event: Event, now: Duration) -> (Vec<Action>, Disposition) {
        let mut out = Vec::new();
        let mut disposition = Disposition::Accepted;
        self.forgive_own_stall(now);
        match event {
            Event::Tick => {}
            Event::HealthChanged(healthy) => {
                self.healthy = healthy && !self.shut_down;
                self.health_pending = false;
            }
            Event::HealthPending => {
                self.healthy = false;
                self.health_pending = !self.shut_down;
            }
            Event::HoldsConnectionsChanged(holds) => self.holds_connections = holds,
            Event::MoveTo(to) => {
                if self.is_primary() {
                    let named = to != self.cfg.me && self.cfg.members.contains(&to);
                    self.step_down(Reason::Moved { to }, !named, now, &mut out);
                    if named {
                        out.push(Action::Send {
                            to: Destination::AllVoters,
                            epoch: self.epoch,
                            message: Message::Handoff { to },
                        });
                        self.handoff = Some(Handoff {
                            to,
                            until: now + self.cfg.lease() * HANDOFF_LEASES,
                        });
                    }
                }
            }
            Event::Retuned {
                preempt,
                holder_grace,
            } => {
                self.cfg.preempt = preempt;
                self.cfg.holder_grace = holder_grace.max(self.cfg.lease());
            }
            Event::Standby(on) => {
                self.standby = on;
                if on && self.is_primary() {
                    self.step_down(Reason::Standby, true, now, &mut out);
                }
            }
            Event::PeerDead { id, evidence } => {
                if !self.peer_alive(id, now) {
                    if let Some(peer) = self.peers.get_mut(&id) {
                        peer.dead = Some(evidence);
                    }
                }
            }
            Event::Shutdown => {
                if !self.shut_down {
                    self.shut_down = true;
                    // Peers must not defer to a node on its way out.
                    self.healthy = false;
                    if self.is_primary() {
                        self.step_down(Reason::Shutdown, true, now, &mut out);
                    }
                    self.candidacy = None;
                    if self.role == Role::Candidate {
                        self.role = Role::Backup;
                    }
                }
            }
            Event::Received {
                from,
                epoch,
                message,
            } => disposition = self.receive(from, epoch, message, now, &mut out),
        }
        self.step(now, &mut out);
        self.due_by = Some(self.next_deadline(now));
        (out, disposition)
    }

    /// This node ran far later than it asked to (its daemon was paused, its VM descheduled):
    /// the time it was frozen is not time its peers were silent. It could not hear them then,
    /// so their silence is counted from its wake-up, not from before its stall — otherwise a
    /// node that wakes up would stand against a holder (or a primary) that went on serving, or
    /// that was frozen with it. Only liveness views move; promises and leases, which keep two
    /// nodes from serving at once, are not touched.
    fn forgive_own_stall(&mut self, now: Duration) {
        let Some(due_by) = self.due_by else {
            return;
        };
        let Some(stall) = now.checked_sub(due_by + self.cfg.heartbeat_interval) else {
            return;
        };
        for peer in self.peers.values_mut() {
            for seen in [&mut peer.last_heard, &mut peer.last_able] {
                if let Some(t) = seen.as_mut() {
                    *t = (*t + stall).min(now);
                }
            }
        }
    }

    fn receive(
        &mut self,
        from: NodeId,
        epoch: u64,
        message: Message,
        now: Duration,
        out: &mut Vec<Action>,
    ) -> Disposition {
        if from == self.cfg.me || !self.peers.contains_key(&from) {
            return Disposition::UnknownSender;
        }
        let was_alive = self.peer_alive(from, now);
        self.highest_epoch_seen = self.highest_epoch_seen.max(epoch);
        if epoch > self.epoch && self.is_primary() {
            self.step_down(Reason::NewerEpochSeen { from, epoch }, false, now, out);
        }
        let claims_authority = matches!(
            message,
            Message::Heartbeat {
                role: Role::Primary,
                ..
            } | Message::Ack { .. }
                | Message::Release
                | Message::Handoff { .. }
        );
        if !was_alive && self.is_primary() {
            out.push(Action::RefreshAnnouncement);
        }
        if claims_authority && epoch < self.epoch {
            self.touch(from, now);
            return Disposition::OldEpoch;
        }
        self.touch(from, now);
        self.peers.get_mut(&from).expect("checked above").epoch = epoch;
        match message {
            Message::Heartbeat {
                role,
                healthy,
                has_quorum,
                seq,
                following,
                holds_connections,
                starting,
            } => {
                let peer = self.peers.get_mut(&from).expect("checked above");
                peer.role = Some(role);
                peer.healthy = healthy;
                peer.has_quorum = has_quorum;
                peer.following = following;
                peer.holds_connections = holds_connections;
                peer.starting = starting;
                if healthy && has_quorum {
                    peer.last_able = Some(now);
                }
                if role == Role::Primary {
                    self.primary_heartbeat(from, epoch, seq, now, out);
                } else if epoch > self.epoch && !self.is_primary() {
                    // A peer knows a newer epoch than we do: learn it, so we refuse the old
                    // primary's frames from now on. A live promise stays: it may back a lease.
                    self.epoch = epoch;
                }
            }
            Message::Ack { primary, seq } => {
                if primary == self.cfg.me && epoch == self.epoch && self.is_primary() {
                    if let Some(lease) = &mut self.lease {
                        let entry = lease.acked.entry(from).or_insert(0);
                        *entry = (*entry).max(seq);
                    }
                    self.renew_lease(now);
                }
            }
            Message::VoteRequest { proposed_epoch } => {
                self.highest_epoch_seen = self.highest_epoch_seen.max(proposed_epoch);
                self.vote_request(from, proposed_epoch, now, out)
            }
            Message::Vote {
                candidate,
                proposed_epoch,
                granted,
            } => {
                if let Some(c) = &mut self.candidacy {
                    if candidate == self.cfg.me && proposed_epoch == c.epoch {
                        if granted {
                            c.granted.insert(from);
                        } else {
                            c.denied.insert(from);
                        }
                    }
                }
            }
            Message::Release => self.released_by(from),
            Message::Handoff { to } => {
                self.released_by(from);
                if self.cfg.members.contains(&to) {
                    self.handoff = Some(Handoff {
                        to,
                        until: now + self.cfg.lease() * HANDOFF_LEASES,
                    });
                    if to == self.cfg.me {
                        // Stand now, not after the wait of a lost election or a step-down.
                        self.stand_not_before = self.stand_not_before.min(now);
                    } else if self.candidacy.take().is_some() {
                        self.role = Role::Backup;
                    }
                }
            }
        }
        Disposition::Accepted
    }

    /// `from` gave the address up ([`Message::Release`], [`Message::Handoff`]).
    fn released_by(&mut self, from: NodeId) {
        if self.leader.as_ref().is_some_and(|l| l.id == from) {
            self.leader = None;
        }
        // Until its next heartbeat, the sender is neither primary nor a candidate to defer
        // to: the backups may stand at once (planned switchover).
        let peer = self.peers.get_mut(&from).expect("a known voter");
        peer.role = Some(Role::Backup);
        peer.healthy = false;
    }

    fn touch(&mut self, from: NodeId, now: Duration) {
        let was_alive = self.peer_alive(from, now);
        if let Some(p) = self.peers.get_mut(&from) {
            if !was_alive {
                p.alive_since = Some(now);
            }
            p.last_heard = Some(now);
            p.dead = None;
        }
    }

    fn primary_heartbeat(
        &mut self,
        from: NodeId,
        epoch: u64,
        seq: u64,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        if self.is_primary() {
            // Epochs are unique, so this primary is older than us: it steps down when it
            // hears our heartbeat (we stepped down above had it been newer).
            return;
        }
        // A live promise to somebody else (a vote for a newer epoch) forbids backing an
        // older primary's lease: the candidate may win with our vote.
        if let Some(l) = &self.leader {
            if l.id != from && now < l.promise_until && epoch <= l.epoch {
                return;
            }
        }
        self.epoch = epoch;
        if self.handoff.is_some_and(|h| h.to == from) {
            self.handoff = None;
        }
        self.leader = Some(Leader {
            id: from,
            epoch,
            promise_until: now + self.cfg.lease(),
        });
        self.pending_vote = None;
        if self.candidacy.is_some() {
            self.candidacy = None;
            if self.role == Role::Candidate {
                self.role = Role::Backup;
            }
        }
        out.push(Action::Send {
            to: Destination::Voter(from),
            epoch: self.epoch,
            message: Message::Ack { primary: from, seq },
        });
    }

    fn vote_request(&mut self, from: NodeId, proposed: u64, now: Duration, out: &mut Vec<Action>) {
        let deny = |me: &Self, out: &mut Vec<Action>| {
            out.push(Action::Send {
                to: Destination::Voter(from),
                epoch: me.epoch,
                message: Message::Vote {
                    candidate: from,
                    proposed_epoch: proposed,
                    granted: false,
                },
            })
        };
        if !self.cfg.members.contains(&from) || proposed <= self.epoch || self.is_primary() {
            return deny(self, out);
        }
        if self.handoff(now).is_some_and(|h| h.to != from) {
            // A switchover is under way: only its target may take the connections on.
            return deny(self, out);
        }
        if let Some((voted_epoch, voted_for)) = self.voted {
            if voted_epoch == proposed && voted_for == from {
                return self.grant(from, proposed, now, out);
            }
            if voted_epoch >= proposed {
                return deny(self, out);
            }
        }
        if self.candidacy.is_some() {
            // Competing candidates: the one standing first in the order of `ranks_before`
            // goes on, the other yields.
            let rival = self.peers.get(&from).expect("members are peers");
            if !self.ranks_before(from, rival) {
                return deny(self, out);
            }
            self.candidacy = None;
            self.role = Role::Backup;
        }
        let bound_elsewhere = self.bound(now) && self.leader.as_ref().is_none_or(|l| l.id != from);
        if bound_elsewhere || self.holds_back_vote_for(from, now) {
            let newer = self
                .pending_vote
                .is_none_or(|(_, pending_epoch, _)| proposed >= pending_epoch);
            if newer {
                self.pending_vote = Some((from, proposed, now));
            }
            return;
        }
        self.grant(from, proposed, now, out);
    }

    /// Whether this voter keeps `candidate`'s vote request waiting for a holder of open
    /// connections: electing a candidate that holds none would drop them. The holder is this
    /// node itself while it can serve (it stands at once), or a member silent for less than the
    /// holder grace ([`Self::holder_to_wait_for`]). The candidate may itself not know of the holder
    /// (it restarted and never heard it), so this is checked here as well as before standing.
    fn holds_back_vote_for(&self, candidate: NodeId, now: Duration) -> bool {
        let candidate_holds = self
            .peers
            .get(&candidate)
            .is_some_and(|p| p.holds_connections);
        match self.handoff(now) {
            Some(h) if h.to == candidate => return false,
            Some(_) => return true,
            None if candidate_holds => return false,
            None => {}
        }
        let i_hold = self.holds_connections && self.can_serve();
        i_hold
            || self
                .holder_to_wait_for(now)
                .is_some_and(|holder| holder != candidate)
    }

    /// Whether a promise (or the quiet time after a start) forbids voting now.
    fn bound(&self, now: Duration) -> bool {
        now < self.quiet_until || self.leader.as_ref().is_some_and(|l| now < l.promise_until)
    }

    fn grant(&mut self, candidate: NodeId, proposed: u64, now: Duration, out: &mut Vec<Action>) {
        self.voted = Some((proposed, candidate));
        self.pending_vote = None;
        self.leader = Some(Leader {
            id: candidate,
            epoch: proposed,
            promise_until: now + self.cfg.lease(),
        });
        out.push(Action::Send {
            to: Destination::Voter(candidate),
            epoch: self.epoch,
            message: Message::Vote {
                candidate,
                proposed_epoch: proposed,
                granted: true,
            },
        });
    }

    fn step(&mut self, now: Duration, out: &mut Vec<Action>) {
        let lease = self.cfg.lease();
        // Promises run out.
        if self.leader.as_ref().is_some_and(|l| now >= l.promise_until) {
            self.leader = None;
        }
        // A kept vote request is granted once nothing binds us, if still fresh.
        if let Some((candidate, proposed, received)) = self.pending_vote {
            if now >= received + lease || proposed <= self.epoch {
                self.pending_vote = None;
            } else if !self.bound(now) && !self.holds_back_vote_for(candidate, now) {
                self.grant(candidate, proposed, now, out);
            }
        }
        if self.is_primary() {
            self.renew_lease(now);
            let expired = self.lease.as_ref().is_some_and(|l| now >= l.until);
            if expired {
                self.step_down(Reason::QuorumLost, false, now, out);
            } else if self.standby {
                self.step_down(Reason::Standby, true, now, out);
            } else if !self.healthy {
                self.step_down(Reason::Unhealthy, true, now, out);
            } else if let Some(by) = self.preempting_member(now) {
                self.step_down(Reason::Preempted { by }, true, now, out);
            }
        }
        if let Some(c) = &self.candidacy {
            if c.granted.len() >= self.cfg.quorum() {
                self.win(now, out);
            } else if now >= c.started + lease
                || c.denied.len() > self.cfg.voters().len() - self.cfg.quorum()
                || !self.can_serve()
            {
                let rank = self
                    .cfg
                    .members
                    .iter()
                    .filter(|&&m| m < self.cfg.me)
                    .count() as u32;
                self.candidacy = None;
                self.role = Role::Backup;
                self.stand_not_before = now + self.cfg.heartbeat_interval * (1 + rank);
            }
        }
        if self.should_stand(now) {
            self.stand(now, out);
        }
        if now >= self.next_heartbeat {
            self.send_heartbeat(now, out);
        }
    }

    fn should_stand(&self, now: Duration) -> bool {
        if self.role != Role::Backup
            || !self.can_serve()
            || now < self.stand_not_before
            || self.bound(now)
            || self.pending_vote.is_some()
            || !self.has_quorum(now)
        {
            return false;
        }
        let live_primary = |(&id, p): (&NodeId, &PeerView)| {
            self.peer_alive(id, now) && p.role == Some(Role::Primary) && p.epoch >= self.epoch
        };
        match self.handoff(now) {
            // The switchover's target stands before anybody it would otherwise defer to.
            Some(h) if h.to == self.cfg.me => return !self.peers.iter().any(live_primary),
            Some(_) => return false,
            None => {}
        }
        if self.holder_to_wait_for(now).is_some() {
            return false;
        }
        // Defer to a member that stands before us and can serve (or will soon: it has just
        // started and waits for its first health verdict, for up to the holder grace since it
        // came alive), and to any live primary we hear.
        !self.peers.iter().any(|(&id, p)| {
            let starting = p.starting
                && p.alive_since
                    .is_some_and(|t| now < t + self.cfg.holder_grace);
            self.peer_alive(id, now)
                && ((p.role == Some(Role::Primary) && p.epoch >= self.epoch)
                    || (self.ranks_before(id, p)
                        && self.cfg.members.contains(&id)
                        && (p.healthy || starting)
                        && p.has_quorum))
        })
    }

    /// The order in which members stand: one that holds live connections before one that
    /// does not (electing the latter would drop them: in duplex, a primary that lost its lease
    /// for a moment under load, or was healed, keeps its sockets; a just-healed backup has
    /// none), then the lowest id.
    fn ranks_before(&self, id: NodeId, peer: &PeerView) -> bool {
        (!peer.holds_connections, id) < (!self.holds_connections, self.cfg.me)
    }

    fn stand(&mut self, now: Duration, out: &mut Vec<Action>) {
        let known = self
            .epoch
            .max(self.highest_epoch_seen)
            .max(self.voted.map_or(0, |(e, _)| e));
        let proposed = ((epoch_term(known) + 1) << EPOCH_ID_BITS) | u64::from(self.cfg.me);
        self.voted = Some((proposed, self.cfg.me));
        self.role = Role::Candidate;
        self.candidacy = Some(Candidacy {
            epoch: proposed,
            started: now,
            granted: BTreeSet::from([self.cfg.me]),
            denied: BTreeSet::new(),
        });
        out.push(Action::Send {
            to: Destination::AllVoters,
            epoch: self.epoch,
            message: Message::VoteRequest {
                proposed_epoch: proposed,
            },
        });
        if self.cfg.quorum() <= 1 {
            self.win(now, out);
        }
    }

    fn win(&mut self, now: Duration, out: &mut Vec<Action>) {
        let Some(c) = self.candidacy.take() else {
            return;
        };
        self.epoch = c.epoch;
        self.highest_epoch_seen = self.highest_epoch_seen.max(c.epoch);
        self.role = Role::Primary;
        self.handoff = None;
        self.leader = None;
        self.pending_vote = None;
        self.lease = Some(Lease {
            until: c.started + self.cfg.lease() - self.cfg.lease_margin(),
            sent: VecDeque::new(),
            acked: BTreeMap::new(),
        });
        out.push(Action::TakeAddress { epoch: self.epoch });
        out.push(Action::RoleChanged {
            role: Role::Primary,
            epoch: self.epoch,
            reason: Reason::ElectionWon {
                votes: c.granted.into_iter().collect(),
            },
        });
        // Announce ourselves at once so followers bind their promises to us.
        self.next_heartbeat = now;
    }

    fn renew_lease(&mut self, now: Duration) {
        let quorum = self.cfg.quorum();
        let lease_len = self.cfg.lease();
        let margin = self.cfg.lease_margin();
        let Some(lease) = &mut self.lease else {
            return;
        };
        if quorum <= 1 {
            lease.until = lease.until.max(now + lease_len - margin);
            return;
        }
        let mut backed: Vec<Duration> = lease
            .acked
            .values()
            .filter_map(|seq| {
                lease
                    .sent
                    .iter()
                    .find(|(s, _)| s == seq)
                    .map(|&(_, sent)| sent)
            })
            .collect();
        backed.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&sent) = backed.get(quorum - 2) {
            lease.until = lease.until.max(sent + lease_len - margin);
        }
    }

    /// A healthy member with quorum that follows us and stands before us (lower id, and
    /// holding live connections if we do), when preemption is on.
    fn preempting_member(&self, now: Duration) -> Option<NodeId> {
        if !self.cfg.preempt {
            return None;
        }
        self.peers
            .iter()
            .filter(|(&id, p)| {
                self.ranks_before(id, p)
                    && self.cfg.members.contains(&id)
                    && self.peer_alive(id, now)
                    && p.healthy
                    && p.has_quorum
                    && p.role == Some(Role::Backup)
                    && p.following == Some(self.cfg.me)
                    // A node that just (re)started cannot stand before its quiet period ends:
                    // give it up only once it has been heard for a whole lease.
                    && p.alive_since.is_some_and(|t| now >= t + self.cfg.lease())
            })
            .map(|(&id, _)| id)
            .next()
    }

    fn step_down(
        &mut self,
        reason: Reason,
        tell_peers: bool,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        self.role = Role::Backup;
        self.lease = None;
        out.push(Action::ReleaseAddress);
        if tell_peers {
            out.push(Action::Send {
                to: Destination::AllVoters,
                epoch: self.epoch,
                message: Message::Release,
            });
        }
        if let Reason::NewerEpochSeen { epoch, .. } = reason {
            self.epoch = epoch;
        }
        // Give the others one lease to elect somebody before we may stand again; but a holder
        // whose lease merely lapsed stands at once: the others wait for it (see
        // `holder_to_wait_for`), and every lease of the time it lost is one more moment its
        // clients' packets are dropped.
        let lapsed_holder = reason == Reason::QuorumLost && self.holds_connections;
        if !lapsed_holder {
            self.stand_not_before = self.stand_not_before.max(now + self.cfg.lease());
        }
        out.push(Action::RoleChanged {
            role: Role::Backup,
            epoch: self.epoch,
            reason,
        });
    }

    fn send_heartbeat(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.seq += 1;
        let has_quorum = self.has_quorum(now);
        if let Some(lease) = &mut self.lease {
            lease.sent.push_back((self.seq, now));
            if lease.sent.len() > SENT_HISTORY {
                lease.sent.pop_front();
            }
        }
        out.push(Action::Send {
            to: Destination::AllVoters,
            epoch: self.epoch,
            message: Message::Heartbeat {
                role: self.role,
                healthy: self.can_serve(),
                has_quorum,
                seq: self.seq,
                following: self.leader.as_ref().map(|l| l.id),
                holds_connections: self.holds_connections,
                starting: self.health_pending,
            },
        });
        self.next_heartbeat = now + self.cfg.heartbeat_interval;
    }

    /// Time since start, for status.
    pub fn started_at(&self) -> Duration {
        self.started_at
    }
}
