//! The backup's reply log, and the plan that resumes a connection at takeover.
//!
//! The ingress log ([`crate::image`]) holds what the client sent; this log holds what the
//! primary answered, as the primary streams it over the replication channel before it sends a
//! byte to the client (invariant I2). Together they say, per connection, which requests have a
//! complete logged reply (never executed again, I3), which reply bytes the client still lacks,
//! and which request bytes no reply covers yet: that is the [`ResumePlan`].
//!
//! The log does not know the service's protocol: it deals in reply pieces, request indexes and
//! stream offsets, and asks the service's [`StreamFramer`] (HTTP/1.x by default) only where a
//! reply logged in parts could be resumed.

use std::collections::{HashMap, VecDeque};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::heartbeat_wire::AuthKey;
use crate::http::Http1;
use crate::image::{ConnectionImage, FourTuple, RestoreError, RestoreParams, DEFAULT_MSS};
use crate::replication_wire::ConnectionOptions;
use crate::stream_framer::StreamFramer;

/// The secret behind the connection ids of `Steadfast-Request-Id`. A connection's id is the
/// same on the primary (from the saved SYN) and on the backup (from the logged SYN), so a
/// replayed request carries the id it had; it is a keyed hash of the client's address, port
/// and ISN, keyed from the group key every member holds, so every member computes it and no
/// client can choose those values to give its connection the id of another client's (and so
/// be answered, by a backend that deduplicates by id, with another client's recorded outcome).
#[derive(Clone)]
pub struct RequestIdKey(Hmac<Sha256>);

impl std::fmt::Debug for RequestIdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestIdKey(<secret>)")
    }
}

impl RequestIdKey {
    /// The key of the group whose members share `group_key`: its own, so the id reveals
    /// nothing of the key the peers authenticate with.
    pub fn derive(group_key: &AuthKey) -> RequestIdKey {
        let mut derive =
            Hmac::<Sha256>::new_from_slice(group_key.secret()).expect("HMAC takes any key");
        derive.update(b"steadfast request ids v1");
        let key = derive.finalize().into_bytes();
        RequestIdKey(Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key"))
    }

    /// The id of the connection from `tuple.client` whose SYN carried `client_isn`.
    pub fn connection_id(&self, tuple: &FourTuple, client_isn: u32) -> u64 {
        let mut mac = self.0.clone();
        mac.update(&tuple.client.ip().octets());
        mac.update(&tuple.client.port().to_be_bytes());
        mac.update(&client_isn.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        u64::from_be_bytes(
            digest[..8]
                .try_into()
                .expect("a SHA-256 digest has 32 bytes"),
        )
    }
}

/// The logged state of one protected connection.
#[derive(Debug, Clone)]
pub struct ReplicaConnection<F: StreamFramer = Http1> {
    pub client_isn: u32,
    pub options: ConnectionOptions,
    /// Logged reply bytes still needed, in order, each with its server stream offset.
    pieces: VecDeque<(u64, Vec<u8>)>,
    /// Server stream offset just after the last logged byte.
    reply_end: u64,
    /// Index of the first request whose reply is not completely logged.
    next_request: u64,
    /// Client stream offset just after the last request whose reply is complete.
    request_offset: u64,
    /// The reply being logged in parts (streamed above the whole-reply limit), followed so a
    /// takeover knows where to resume it.
    streamed: Option<F::PartialReply>,
    /// The primary ends the connection after the last complete reply (see
    /// [`ReplicaLog::closes_after_last_reply`]).
    closing: bool,
}

impl<F: StreamFramer> ReplicaConnection<F> {
    pub fn reply_end(&self) -> u64 {
        self.reply_end
    }

    pub fn next_request(&self) -> u64 {
        self.next_request
    }

    pub fn request_offset(&self) -> u64 {
        self.request_offset
    }

    /// Bytes of reply held in memory.
    pub fn bytes_held(&self) -> usize {
        self.pieces.iter().map(|(_, p)| p.len()).sum()
    }
}

/// A connection the primary hands over after serving it for a while (it opened before this
/// backup joined): the log starts where the primary stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedConnection<F: StreamFramer = Http1> {
    pub tuple: FourTuple,
    pub client_isn: u32,
    pub options: ConnectionOptions,
    /// The first request no complete reply answers, and the client offset where it starts.
    pub next_request: u64,
    pub request_offset: u64,
    /// Server stream offset of the first reply byte the client had not acknowledged.
    pub reply_acked: u64,
    /// The reply bytes from `reply_acked` on that the primary had sent or is sending: the
    /// log's first piece. The next logged piece starts right after them.
    pub unacked_reply: Vec<u8>,
    /// The reply to `next_request` is under way in parts: where a takeover resumes it once
    /// the log ends, or why it cannot (see [`StreamFramer::partial_reply_from`]).
    pub reply_in_progress: Option<Result<F::ResumePoint, F::NotResumable>>,
}

/// A reply piece the log cannot take: the primary and backup disagree about the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("reply for {tuple}: the connection was never opened on this backup")]
    UnknownConnection { tuple: FourTuple },
    #[error("reply for {tuple}: piece starts at reply offset {got}, the log ends at {expected}")]
    OffsetGap {
        tuple: FourTuple,
        expected: u64,
        got: u64,
    },
    #[error("reply for {tuple}: piece for request {got}, the log expects request {expected}")]
    IndexGap {
        tuple: FourTuple,
        expected: u64,
        got: u64,
    },
    #[error("reply for {tuple}: request end {end} is before the previous one at {previous}")]
    RequestEndBackwards {
        tuple: FourTuple,
        previous: u64,
        end: u64,
    },
}

/// Why a connection cannot be resumed at takeover (counted per reason in the status). `W`:
/// why its framer cannot finish a reply cut in parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LostReason<W: std::error::Error = crate::http::NotResumable> {
    #[error("{0}")]
    Restore(#[from] RestoreError),
    #[error("connection {tuple}: the primary never reported it (accepted just before the crash)")]
    NotOpenedByPrimary { tuple: FourTuple },
    #[error(
        "connection {tuple}: timestamps are on but no client segment since adoption showed the \
         primary's clock (a rebuilt clock could be behind it: PAWS)"
    )]
    TimestampUnknown { tuple: FourTuple },
    #[error("connection {tuple}: the client half-closed it")]
    ClientFinished { tuple: FourTuple },
    #[error(
        "connection {tuple}: adopted with client bytes missing (they passed this backup before \
         the hand-over arrived and were no longer held)"
    )]
    HandoverGap { tuple: FourTuple },
    #[error(
        "connection {tuple}: a reply streamed in parts (above the whole-reply limit) was cut and \
         cannot be finished: {why}"
    )]
    PartialReply { tuple: FourTuple, why: W },
    #[error(
        "connection {tuple}: the client acknowledged {acked} reply bytes but only {logged} are \
         logged"
    )]
    AckBeyondLog {
        tuple: FourTuple,
        acked: u64,
        logged: u64,
    },
    #[error("connection {tuple}: reply bytes from {from} are no longer held (trimmed at {held})")]
    Trimmed {
        tuple: FourTuple,
        from: u64,
        held: u64,
    },
    #[error(
        "connection {tuple}: request bytes from {from} are no longer held ({consumed} consumed)"
    )]
    RequestTrimmed {
        tuple: FourTuple,
        from: u64,
        consumed: u64,
    },
}

impl<W: std::error::Error> LostReason<W> {
    /// A short label, usable as a counter name.
    pub fn label(&self) -> &'static str {
        match self {
            LostReason::Restore(RestoreError::HandshakeIncomplete { .. }) => "handshake-incomplete",
            LostReason::Restore(RestoreError::NegotiationUnknown { .. }) => "options-unknown",
            LostReason::Restore(RestoreError::Reset { .. }) => "reset",
            LostReason::NotOpenedByPrimary { .. } => "not-opened",
            LostReason::ClientFinished { .. } => "client-finished",
            LostReason::HandoverGap { .. } => "handover-gap",
            LostReason::TimestampUnknown { .. } => "timestamp-unknown",
            LostReason::PartialReply { .. } => "partial-reply",
            LostReason::AckBeyondLog { .. } => "ack-beyond-log",
            LostReason::Trimmed { .. } | LostReason::RequestTrimmed { .. } => "trimmed",
        }
    }
}

/// Everything a new primary needs to carry one connection on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePlan<F: StreamFramer = Http1> {
    pub restore: RestoreParams,
    pub options: ConnectionOptions,
    pub client_isn: u32,
    /// Server stream offset of the first byte the client has not acknowledged.
    pub reply_acked: u64,
    /// Logged reply bytes from `reply_acked` on: sent first, with ordinary sends, after the
    /// socket leaves repair mode.
    pub unacked_reply: Vec<u8>,
    /// Server stream offset of the next reply byte (the end of the log).
    pub reply_offset: u64,
    /// The first request without a completely logged reply.
    pub next_request_index: u64,
    /// Client stream offset where that request starts.
    pub request_offset: u64,
    /// The client bytes from `request_offset` on that the backup holds: requests the new
    /// primary's backend must execute (with their original ids).
    pub pending_request_bytes: Vec<u8>,
    /// The first pending request's reply was cut after `reply_offset`: the new primary asks
    /// the backend for the rest by range instead of executing the request again.
    pub cut_reply: Option<F::ResumePoint>,
    /// The old primary was ending the connection after its last complete reply: the new one
    /// sends what the client lacks of it, then closes, and answers no pending request.
    pub close_after_reply: bool,
}

/// Counters of the reply log (status output).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaCounters {
    pub opened: u64,
    pub closed: u64,
    pub replies_logged: u64,
    pub pieces_logged: u64,
    pub reply_bytes_logged: u64,
    pub refused_pieces: u64,
}

/// The backup's reply log for every protected connection.
#[derive(Debug, Clone, Default)]
pub struct ReplicaLog<F: StreamFramer = Http1> {
    framer: F,
    connections: HashMap<FourTuple, ReplicaConnection<F>>,
    counters: ReplicaCounters,
    /// Reply bytes held by all connections, counted as pieces come and go.
    held: usize,
}

/// What the caller must tell the ingress log after a piece is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// A reply became complete: request bytes before this client stream offset are answered
    /// and can be released from the connection image.
    pub consumed_up_to: Option<u64>,
}

impl ReplicaLog {
    /// A log of HTTP/1.x connections.
    pub fn new() -> ReplicaLog {
        ReplicaLog::default()
    }
}

impl<F: StreamFramer> ReplicaLog<F> {
    /// A log of connections whose protocol `framer` frames.
    pub fn with_framer(framer: F) -> ReplicaLog<F> {
        ReplicaLog {
            framer,
            connections: HashMap::new(),
            counters: ReplicaCounters::default(),
            held: 0,
        }
    }

    /// The primary accepted `tuple` and protects it from now on. A connection with the same
    /// 4-tuple logged before is a previous incarnation and is replaced.
    pub fn opened(&mut self, tuple: FourTuple, client_isn: u32, options: ConnectionOptions) {
        self.counters.opened += 1;
        self.replace(
            tuple,
            ReplicaConnection {
                client_isn,
                options,
                pieces: VecDeque::new(),
                reply_end: 0,
                next_request: 0,
                request_offset: 0,
                streamed: None,
                closing: false,
            },
        );
    }

    /// The primary protects from now on a connection it had already served for a while,
    /// wherever it stood: see [`AdoptedConnection`].
    pub fn adopt(&mut self, adopted: AdoptedConnection<F>) {
        self.counters.opened += 1;
        let AdoptedConnection {
            tuple,
            client_isn,
            options,
            next_request,
            request_offset,
            reply_acked,
            unacked_reply,
            reply_in_progress,
        } = adopted;
        let reply_end = reply_acked.saturating_add(unacked_reply.len() as u64);
        let mut pieces = VecDeque::new();
        if !unacked_reply.is_empty() {
            pieces.push_back((reply_acked, unacked_reply));
        }
        let streamed = reply_in_progress.map(|progress| self.framer.partial_reply_from(progress));
        self.replace(
            tuple,
            ReplicaConnection {
                client_isn,
                options,
                pieces,
                reply_end,
                next_request,
                request_offset,
                streamed,
                closing: false,
            },
        );
    }

    /// Logs `conn` for `tuple` in place of any earlier incarnation.
    fn replace(&mut self, tuple: FourTuple, conn: ReplicaConnection<F>) {
        self.held += conn.bytes_held();
        if let Some(old) = self.connections.insert(tuple, conn) {
            self.held -= old.bytes_held();
        }
    }

    /// The primary ends the connection after the reply just logged whole (an HTTP/1.0 request,
    /// `Connection: close`, an early reply, the server's own close): the requests the client
    /// sent after it were never to be answered, and a successor must not answer them either.
    pub fn closes_after_last_reply(&mut self, tuple: &FourTuple) {
        if let Some(conn) = self.connections.get_mut(tuple) {
            conn.closing = true;
        }
    }

    /// Logs one reply piece.
    pub fn log_reply(
        &mut self,
        tuple: &FourTuple,
        request_index: u64,
        reply_offset: u64,
        request_end: Option<u64>,
        bytes: Vec<u8>,
    ) -> Result<Logged, ReplicaError> {
        let result = self.try_log(
            tuple,
            request_index,
            reply_offset,
            request_end,
            bytes,
            false,
        );
        if result.is_err() {
            self.counters.refused_pieces += 1;
        }
        result
    }

    fn try_log(
        &mut self,
        tuple: &FourTuple,
        request_index: u64,
        reply_offset: u64,
        request_end: Option<u64>,
        bytes: Vec<u8>,
        interim: bool,
    ) -> Result<Logged, ReplicaError> {
        let conn = self
            .connections
            .get_mut(tuple)
            .ok_or(ReplicaError::UnknownConnection { tuple: *tuple })?;
        if reply_offset != conn.reply_end {
            return Err(ReplicaError::OffsetGap {
                tuple: *tuple,
                expected: conn.reply_end,
                got: reply_offset,
            });
        }
        if request_index != conn.next_request {
            return Err(ReplicaError::IndexGap {
                tuple: *tuple,
                expected: conn.next_request,
                got: request_index,
            });
        }
        if let Some(end) = request_end {
            if end < conn.request_offset {
                return Err(ReplicaError::RequestEndBackwards {
                    tuple: *tuple,
                    previous: conn.request_offset,
                    end,
                });
            }
        }
        self.counters.pieces_logged += 1;
        self.counters.reply_bytes_logged += bytes.len() as u64;
        conn.reply_end += bytes.len() as u64;
        if request_end.is_none() && !interim {
            let framer = &self.framer;
            let streamed = conn
                .streamed
                .get_or_insert_with(|| framer.begin_partial_reply());
            framer.feed_partial_reply(streamed, &bytes);
        }
        if !bytes.is_empty() {
            self.held += bytes.len();
            conn.pieces.push_back((reply_offset, bytes));
        }
        match request_end {
            Some(end) => {
                self.counters.replies_logged += 1;
                conn.next_request += 1;
                conn.request_offset = end;
                conn.streamed = None;
                Ok(Logged {
                    consumed_up_to: Some(end),
                })
            }
            None => Ok(Logged {
                consumed_up_to: None,
            }),
        }
    }

    /// Logs an interim (1xx) reply head to the request being answered: it neither completes the
    /// reply nor makes it partial.
    pub fn log_interim(
        &mut self,
        tuple: &FourTuple,
        request_index: u64,
        reply_offset: u64,
        bytes: Vec<u8>,
    ) -> Result<(), ReplicaError> {
        let result = self.try_log(tuple, request_index, reply_offset, None, bytes, true);
        if result.is_err() {
            self.counters.refused_pieces += 1;
        }
        result.map(|_| ())
    }

    /// Releases reply bytes the client has acknowledged (`acked` = reply bytes it holds).
    pub fn trim(&mut self, tuple: &FourTuple, acked: u64) {
        let Some(conn) = self.connections.get_mut(tuple) else {
            return;
        };
        while let Some((offset, piece)) = conn.pieces.front_mut() {
            let end = *offset + piece.len() as u64;
            if end <= acked {
                self.held -= piece.len();
                conn.pieces.pop_front();
            } else {
                break;
            }
        }
    }

    /// The primary closed the connection.
    pub fn closed(&mut self, tuple: &FourTuple) {
        if let Some(conn) = self.connections.remove(tuple) {
            self.held -= conn.bytes_held();
            self.counters.closed += 1;
        }
    }

    pub fn get(&self, tuple: &FourTuple) -> Option<&ReplicaConnection<F>> {
        self.connections.get(tuple)
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    pub fn counters(&self) -> ReplicaCounters {
        self.counters
    }

    /// Reply bytes held in memory, all connections.
    /// Reply bytes held by all connections (O(1): counted as pieces come and go).
    pub fn bytes_held(&self) -> usize {
        self.held
    }

    /// How to resume a connection the primary's kernel accepted but the primary never reported
    /// (it sat in the accept queue at the crash, or its report died with the primary).
    ///
    /// Nothing of it was answered: the primary reports a connection before any reply of it
    /// (one ordered channel), its reply bytes reach the client only after this log holds them,
    /// and the backup lets client frames through only once the primary protects every
    /// connection it accepts — so every request the client sent is pending, from the first.
    /// The options the primary's kernel negotiated are not known; `template` is what it
    /// negotiated with another client of this service, adjusted to what this client's SYN
    /// offered. A client that acknowledged reply bytes contradicts all that: lost.
    pub fn plan_unreported(
        &self,
        image: &ConnectionImage,
        template: &ConnectionOptions,
    ) -> Result<ResumePlan<F>, LostReason<F::NotResumable>> {
        let tuple = image.tuple();
        let syn = image.syn_options();
        let timestamps = template.timestamps && syn.timestamps.is_some();
        let options = ConnectionOptions {
            window_scales: match (template.window_scales, syn.window_scale) {
                (Some((_, ours)), Some(theirs)) => Some((theirs, ours)),
                _ => None,
            },
            sack: template.sack && syn.sack_permitted,
            timestamps,
            mss: template.mss.min(ConnectionOptions::sending_mss(
                syn.mss.unwrap_or(DEFAULT_MSS),
                timestamps,
            )),
        };
        let mut image = image.clone();
        image.set_negotiated(options.negotiated());
        let restore = resumable_restore(&image)?;
        let acked = image.client_acked_reply_bytes();
        if acked > 0 {
            return Err(LostReason::AckBeyondLog {
                tuple,
                acked,
                logged: 0,
            });
        }
        let consumed = image.consumed_bytes();
        if consumed > 0 {
            return Err(LostReason::RequestTrimmed {
                tuple,
                from: 0,
                consumed,
            });
        }
        Ok(ResumePlan {
            restore,
            options,
            client_isn: image.client_isn(),
            reply_acked: 0,
            unacked_reply: Vec::new(),
            reply_offset: 0,
            next_request_index: 0,
            request_offset: 0,
            pending_request_bytes: image.unconsumed_to_vec(),
            cut_reply: None,
            close_after_reply: false,
        })
    }

    /// How to resume the connection of `image` (the backup's ingress image of it).
    pub fn plan(
        &self,
        image: &ConnectionImage,
    ) -> Result<ResumePlan<F>, LostReason<F::NotResumable>> {
        let tuple = image.tuple();
        let conn = self
            .connections
            .get(&tuple)
            .filter(|c| c.client_isn == image.client_isn())
            .ok_or(LostReason::NotOpenedByPrimary { tuple })?;
        let restore = resumable_restore(image)?;
        let acked = image.client_acked_reply_bytes();
        if acked > conn.reply_end {
            return Err(LostReason::AckBeyondLog {
                tuple,
                acked,
                logged: conn.reply_end,
            });
        }
        let mut unacked_reply = Vec::with_capacity((conn.reply_end - acked) as usize);
        let mut next = acked;
        for (offset, piece) in &conn.pieces {
            let end = offset + piece.len() as u64;
            if end <= next {
                continue;
            }
            if *offset > next {
                return Err(LostReason::Trimmed {
                    tuple,
                    from: next,
                    held: *offset,
                });
            }
            unacked_reply.extend_from_slice(&piece[(next - offset) as usize..]);
            next = end;
        }
        if next != conn.reply_end {
            return Err(LostReason::Trimmed {
                tuple,
                from: next,
                held: conn.reply_end,
            });
        }
        let consumed = image.consumed_bytes();
        if consumed > conn.request_offset {
            return Err(LostReason::RequestTrimmed {
                tuple,
                from: conn.request_offset,
                consumed,
            });
        }
        let (a, b) = image.unconsumed();
        let skip = (conn.request_offset - consumed) as usize;
        let mut pending_request_bytes = Vec::with_capacity(a.len() + b.len());
        pending_request_bytes.extend_from_slice(a);
        pending_request_bytes.extend_from_slice(b);
        if skip > pending_request_bytes.len() {
            // The primary answered bytes this backup never logged: impossible under I1.
            return Err(LostReason::RequestTrimmed {
                tuple,
                from: conn.request_offset,
                consumed: consumed + pending_request_bytes.len() as u64,
            });
        }
        pending_request_bytes.drain(..skip);
        let cut_reply = match &conn.streamed {
            Some(streamed) => Some(
                self.resumable_cut(streamed, conn, &pending_request_bytes)
                    .map_err(|why| LostReason::PartialReply { tuple, why })?,
            ),
            None => None,
        };
        Ok(ResumePlan {
            restore,
            options: conn.options,
            client_isn: conn.client_isn,
            reply_acked: acked,
            unacked_reply,
            reply_offset: conn.reply_end,
            next_request_index: conn.next_request,
            request_offset: conn.request_offset,
            pending_request_bytes,
            cut_reply,
            close_after_reply: conn.closing,
        })
    }

    /// Where a reply cut by the takeover resumes, if both it and the request it answers (the
    /// first of `pending_request_bytes`) allow it.
    fn resumable_cut(
        &self,
        streamed: &F::PartialReply,
        conn: &ReplicaConnection<F>,
        pending_request_bytes: &[u8],
    ) -> Result<F::ResumePoint, F::NotResumable> {
        let cut = self.framer.resume_point(streamed)?;
        self.framer.check_resumable_request(
            pending_request_bytes,
            conn.request_offset,
            conn.next_request,
        )?;
        Ok(cut)
    }
}

/// The socket parameters of `image`, if a rebuilt socket could carry the connection on: the
/// client has not half-closed it, and with timestamps the primary's clock is known (PAWS).
fn resumable_restore<W: std::error::Error>(
    image: &ConnectionImage,
) -> Result<RestoreParams, LostReason<W>> {
    let tuple = image.tuple();
    let restore = image.restore_params()?;
    if image.handover_gap() {
        return Err(LostReason::HandoverGap { tuple });
    }
    if restore.client_fin_received {
        return Err(LostReason::ClientFinished { tuple });
    }
    if restore.timestamps_ok && restore.last_tsecr.is_none() {
        return Err(LostReason::TimestampUnknown { tuple });
    }
    Ok(restore)
}
