//! How one replica in active mode hands its server the work delivered to it, so that the
//! server's data goes through the same states on every replica (seed 001's delivery to "the
//! upper layer", for a RESP server).
//!
//! Each client session has a connection of its own to the local server (session state such as
//! SELECT or MULTI lives in it). Redis runs one connection's requests in order, but interleaves
//! connections as it reads them, so two updates in flight on two connections could run in
//! either order, differently on each replica. Hence the rule: **updates go to the server in
//! their ordering numbers, and only while no update of another session is outstanding**; a
//! session's own updates may be pipelined. A read (a duty read scheduled here) goes once every
//! update up to its barrier has been answered, on its session's connection, in the session's
//! own order behind its earlier requests; it may run beside anything, since only this replica
//! runs it. Replies are framed ([`crate::resp`]) and matched to what they answer: on a
//! connection they come in request order.
//!
//! No I/O: the shell writes [`ExecAction::Write`] to the session's server connection, feeds
//! what the server answers to [`ReplicaExecutor::server_bytes`], digests updates' replies for
//! the comparison ([`crate::reply_compare`]) and returns reads' replies to their clients.
//! Replies are buffered whole until framed (bounded by the framer's limits).

use std::collections::{BTreeMap, VecDeque};

use crate::active_order::OrderNumber;
use crate::resp::{Direction, RespError, RespFramer, RespLimits, RespMessage};

/// A client connection, as every replica knows it.
pub type SessionId = u64;

/// Work delivered to this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// An ordered request (an update, or a command that changes the session's state): runs on
    /// every replica in number order.
    Update {
        number: OrderNumber,
        session: SessionId,
        request: Vec<u8>,
    },
    /// A read scheduled on this replica: runs once every update up to `barrier` is answered.
    Read {
        session: SessionId,
        barrier: OrderNumber,
        request: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecAction {
    /// Write these request bytes on the session's connection to the server.
    Write { session: SessionId, bytes: Vec<u8> },
    /// The server answered: `number` is the update answered, `None` for a read.
    Replied {
        session: SessionId,
        number: Option<OrderNumber>,
        reply: Vec<u8>,
    },
}

/// Updates handed in out of their order, or a reply with nothing to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("update {got} handed in after {last}: updates come in their order, once")]
    OutOfOrder { got: OrderNumber, last: OrderNumber },
    #[error("session {session}: the server answered with nothing outstanding")]
    UnexpectedReply { session: SessionId },
    #[error(
        "session {session}: {pending} requests not yet answered; its updates must run here \
         as on every replica before its server connection goes"
    )]
    SessionBusy { session: SessionId, pending: usize },
    #[error("session {session}: {error}")]
    Framing {
        session: SessionId,
        #[source]
        error: RespError,
    },
}

#[derive(Debug)]
struct Session {
    /// Delivered and not yet written, in the client's order.
    queued: VecDeque<Work>,
    /// Written and not yet answered, in the order written: `Some(n)` an update, `None` a read.
    outstanding: VecDeque<Option<OrderNumber>>,
    replies: RespFramer,
    /// Reply bytes of the message under way.
    partial: Vec<u8>,
}

#[derive(Debug)]
pub struct ReplicaExecutor {
    sessions: BTreeMap<SessionId, Session>,
    /// Updates delivered and not yet written, in number order, with their session.
    updates_queued: VecDeque<(OrderNumber, SessionId)>,
    /// The last update handed in.
    last_delivered: OrderNumber,
    /// Every update up to here was answered by the server. Updates are answered in their
    /// order: one session's at a time, and a connection answers in request order.
    answered_up_to: OrderNumber,
    /// The session whose updates are outstanding at the server, and how many.
    updates_in_flight: Option<(SessionId, usize)>,
    limits: RespLimits,
}

impl ReplicaExecutor {
    /// An executor whose server holds every update up to `start`.
    pub fn new(start: OrderNumber, limits: RespLimits) -> ReplicaExecutor {
        ReplicaExecutor {
            sessions: BTreeMap::new(),
            updates_queued: VecDeque::new(),
            last_delivered: start,
            answered_up_to: start,
            updates_in_flight: None,
            limits,
        }
    }

    /// Every update up to here was answered by the server: a read behind this barrier may run.
    pub fn answered_up_to(&self) -> OrderNumber {
        self.answered_up_to
    }

    pub fn submit(&mut self, work: Work) -> Result<Vec<ExecAction>, ExecError> {
        let session = match &work {
            Work::Update {
                number, session, ..
            } => {
                if *number != self.last_delivered + 1 {
                    return Err(ExecError::OutOfOrder {
                        got: *number,
                        last: self.last_delivered,
                    });
                }
                self.last_delivered = *number;
                self.updates_queued.push_back((*number, *session));
                *session
            }
            Work::Read { session, .. } => *session,
        };
        let limits = self.limits;
        self.sessions
            .entry(session)
            .or_insert_with(|| Session {
                queued: VecDeque::new(),
                outstanding: VecDeque::new(),
                replies: RespFramer::new(Direction::Replies, limits),
                partial: Vec::new(),
            })
            .queued
            .push_back(work);
        let mut out = Vec::new();
        self.pump(&mut out);
        Ok(out)
    }

    /// What the server sent on a session's connection.
    pub fn server_bytes(
        &mut self,
        session: SessionId,
        bytes: &[u8],
    ) -> Result<Vec<ExecAction>, ExecError> {
        let state = self
            .sessions
            .get_mut(&session)
            .ok_or(ExecError::UnexpectedReply { session })?;
        let mut messages: Vec<RespMessage> = Vec::new();
        let start = state.partial.len();
        state.partial.extend_from_slice(bytes);
        state
            .replies
            .feed(&state.partial[start..], &mut messages)
            .map_err(|error| ExecError::Framing { session, error })?;
        let mut out = Vec::new();
        let mut consumed = 0;
        for message in messages {
            let len = (message.end - message.start) as usize;
            let reply = state.partial[consumed..consumed + len].to_vec();
            consumed += len;
            let answered = state
                .outstanding
                .pop_front()
                .ok_or(ExecError::UnexpectedReply { session })?;
            if let Some(number) = answered {
                self.answered_up_to = number;
                if let Some((_, in_flight)) = self.updates_in_flight.as_mut() {
                    *in_flight -= 1;
                    if *in_flight == 0 {
                        self.updates_in_flight = None;
                    }
                }
            }
            out.push(ExecAction::Replied {
                session,
                number: answered,
                reply,
            });
        }
        let state = self.sessions.get_mut(&session).expect("looked up above");
        state.partial.drain(..consumed);
        self.pump(&mut out);
        Ok(out)
    }

    /// The client's session ended: its server connection may close once everything it was
    /// given ran (its updates run on every replica whether its client waits or not).
    pub fn end_session(&mut self, session: SessionId) -> Result<(), ExecError> {
        if let Some(state) = self.sessions.get(&session) {
            let pending = state.queued.len() + state.outstanding.len();
            if pending > 0 {
                return Err(ExecError::SessionBusy { session, pending });
            }
        }
        self.sessions.remove(&session);
        Ok(())
    }

    /// Writes every piece of work that may go now.
    fn pump(&mut self, out: &mut Vec<ExecAction>) {
        loop {
            let mut progressed = false;
            let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
            for session in sessions {
                while self.may_send_front(session) {
                    let state = self.sessions.get_mut(&session).expect("listed");
                    let work = state.queued.pop_front().expect("a front");
                    let (answered, bytes) = match work {
                        Work::Update {
                            number, request, ..
                        } => {
                            self.updates_queued.pop_front();
                            let in_flight = self.updates_in_flight.get_or_insert((session, 0));
                            in_flight.1 += 1;
                            (Some(number), request)
                        }
                        Work::Read { request, .. } => (None, request),
                    };
                    let state = self.sessions.get_mut(&session).expect("listed");
                    state.outstanding.push_back(answered);
                    out.push(ExecAction::Write { session, bytes });
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn may_send_front(&self, session: SessionId) -> bool {
        let Some(front) = self.sessions.get(&session).and_then(|s| s.queued.front()) else {
            return false;
        };
        match front {
            Work::Update { number, .. } => {
                self.updates_queued.front().map(|(n, _)| n) == Some(number)
                    && self
                        .updates_in_flight
                        .is_none_or(|(in_flight, _)| in_flight == session)
            }
            Work::Read { barrier, .. } => *barrier <= self.answered_up_to,
        }
    }
}
