//! The messages voters exchange to detect failures and elect the primary.
//!
//! These are the election-level meaning of a frame; `heartbeat_wire` gives their authenticated
//! wire encoding. Every frame also carries the sender's id, the sender's current epoch (the
//! fencing token: the epoch of the newest primary the sender knows) and an anti-replay counter.

/// A voter's id. Lower ids have higher priority.
pub type NodeId = u16;

/// What a voter is doing right now, as it tells its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Holds no address; ready to take over.
    Backup,
    /// Asked for votes to become primary in a new epoch.
    Candidate,
    /// Owns the service address.
    Primary,
    /// A voter with no backend; never serves.
    Witness,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Backup => "backup",
            Role::Candidate => "candidate",
            Role::Primary => "primary",
            Role::Witness => "witness",
        }
    }
}

/// One message between voters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Sent by every voter to every other voter each heartbeat interval. A primary's heartbeat
    /// also asks for a lease renewal: every follower answers it at once with [`Message::Ack`].
    Heartbeat {
        role: Role,
        /// The sender's service health checks pass (always true for a witness).
        healthy: bool,
        /// The sender hears a majority of voters (itself included).
        has_quorum: bool,
        /// Sequence number of this heartbeat, growing by one per heartbeat of this sender.
        seq: u64,
        /// The primary the sender follows, if any (its epoch is the frame's own).
        following: Option<NodeId>,
        /// The sender carries live client connections of the service that no other node
        /// could take over whole (duplex: it serves them, or served them until it lost its
        /// lease): the election prefers it to a node that would have to drop them.
        holds_connections: bool,
        /// The sender just started and its health checks have not given a first verdict yet:
        /// members that rank after it wait for it (a while) instead of standing, so a group
        /// started at once elects the lowest id whichever node's checks pass first.
        starting: bool,
    },
    /// A follower holds the primary's lease: it received the primary's heartbeat `seq` of
    /// `epoch` and promises not to vote for anyone else for one lease duration from then.
    Ack { primary: NodeId, seq: u64 },
    /// A candidate asks for votes to become primary in `proposed_epoch`.
    VoteRequest { proposed_epoch: u64 },
    /// A voter's answer to a [`Message::VoteRequest`].
    Vote {
        candidate: NodeId,
        proposed_epoch: u64,
        granted: bool,
    },
    /// The primary of the frame's epoch gave up the address (shutdown, failed health check or
    /// preemption): followers may vote at once instead of waiting for the lease to run out.
    Release,
    /// The primary of the frame's epoch gave up the address for `to` (a planned switchover,
    /// `steadfast move`): as [`Message::Release`], and for a while only `to` may stand or be
    /// voted for, so no other member takes the connections' place.
    Handoff { to: NodeId },
}

impl Message {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Heartbeat { .. } => "heartbeat",
            Message::Ack { .. } => "ack",
            Message::VoteRequest { .. } => "vote-request",
            Message::Vote { .. } => "vote",
            Message::Release => "release",
            Message::Handoff { .. } => "handoff",
        }
    }
}

/// A message with the header fields every frame carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub sender: NodeId,
    /// Epoch of the newest primary the sender knows.
    pub epoch: u64,
    /// Anti-replay counter: strictly increasing per sender, also across its restarts (the shell
    /// seeds it from the wall clock in microseconds at start).
    pub counter: u64,
    /// The sender's incarnation: drawn at random when its process starts, never 0.
    pub incarnation: u64,
    /// The receiver's incarnation as the sender last heard it (0 before it heard any): a
    /// receiver takes only frames that name its own, so nothing recorded before it (re)started
    /// can be replayed to it (see `heartbeat_wire::ReplayGuard`).
    pub echo: u64,
    pub message: Message,
}
