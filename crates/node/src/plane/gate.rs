//! Where the proxy hands reply bytes before the client may have them (invariant I2).
//!
//! Duplex sends them to the backup and waits for its acknowledgement; simplex logs them in a
//! local reply log (the same work without the network, to measure its cost).

use std::sync::Mutex;

use steadfast_core::image::FourTuple;
use steadfast_core::replication_wire::ConnectionOptions;
use steadfast_core::reply_log::ReplicaLog;
use tokio::sync::watch;

/// Which part of a reply a piece is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// A 1xx head before the final reply.
    Interim,
    /// Part of a reply streamed above the whole-reply limit; more follows.
    Partial,
    /// The last piece of the reply; the request ended at this client stream offset.
    Final { request_end: u64 },
}

/// Reply bytes `[reply_offset, reply_offset + bytes.len())` of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    pub tuple: FourTuple,
    pub request_index: u64,
    pub reply_offset: u64,
    pub kind: PieceKind,
    pub bytes: &'a [u8],
    /// Only on a [`PieceKind::Final`] piece: the connection ends after this reply, and no
    /// request the client sent after it may be answered.
    pub closes_after: bool,
}

/// The backup's progress as the primary sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckState {
    /// Every piece up to this sequence number is held by the backup.
    pub acked: u64,
    /// The backup is gone (or was never there): nothing more will be acknowledged and nobody
    /// waits any longer; replies go out unprotected.
    pub released: bool,
}

/// Waits for the acknowledgement of one piece.
pub struct AckWaiter {
    pub seq: u64,
    pub acks: watch::Receiver<AckState>,
}

impl AckWaiter {
    /// True when the backup holds the piece, false when the backup was lost first. The waiter
    /// stays: it can be waited on in a loop that does other things meanwhile.
    pub async fn held(&mut self) -> bool {
        let seq = self.seq;
        match self
            .acks
            .wait_for(|state| state.acked >= seq || state.released)
            .await
        {
            Ok(state) => state.acked >= seq,
            Err(_) => false,
        }
    }
}

/// What the backup needs to start protecting a connection it never saw open, wherever the
/// connection stands: between requests, in the middle of a request (an upload) or of a reply
/// (a download).
#[derive(Debug, Clone)]
pub struct Adoption {
    pub tuple: FourTuple,
    pub client_isn: u32,
    pub server_isn: u32,
    pub options: ConnectionOptions,
    pub client_mss: u16,
    /// The first request no complete reply answers, and the client offset where it starts.
    pub next_request: u64,
    pub request_offset: u64,
    /// The client bytes from `request_offset` on, all the primary has received: a takeover
    /// sends those requests to its backend again, with their ids.
    pub pending: Vec<u8>,
    /// The first reply byte the client had not acknowledged (read from the socket), and the
    /// reply bytes from there on that the primary sent or is sending unlogged: the backup's
    /// log starts with them, and the next logged piece follows.
    pub reply_acked: u64,
    pub unacked_reply: Vec<u8>,
    /// The primary's TCP timestamp clock for the connection, when it uses timestamps.
    pub timestamp: Option<u32>,
    /// The reply to `next_request` is being streamed: where a takeover would resume it from
    /// the log's end, or why it could not, as the service's framer encodes it
    /// (`StreamFramer::encode_progress`).
    pub reply_in_progress: Option<Vec<u8>>,
}

/// A place replies are logged before they are sent.
pub trait ReplyGate: Send + Sync {
    /// Which backup protects connections now: a number that changes whenever a backup joins,
    /// 0 when there is none. A connection protected under an older number is not protected.
    fn generation(&self) -> u64;
    /// The generation under which established connections may be handed to the backup (0:
    /// not now). It lags [`generation`](Self::generation) until every client frame goes
    /// through the backup: a connection adopted earlier could receive bytes the backup never
    /// logs, and a takeover would find its log with a hole.
    fn adoption_generation(&self) -> u64 {
        self.generation()
    }
    /// Whether connections can be handed to a backup that joins after they opened: a session
    /// then keeps the reply bytes it sends unlogged until its client acknowledges them.
    fn adopts(&self) -> bool {
        false
    }
    /// Hands an established, unprotected connection to the backup: `Some` when it is protected
    /// from now on, with a waiter that resolves once the backup holds it.
    fn adopt(&self, _adoption: Adoption) -> Option<AckWaiter> {
        None
    }
    /// Changes whenever [`adoption_generation`](Self::adoption_generation) does: sessions
    /// that a new backup could adopt are woken by it. `None` where nothing is ever adopted.
    fn adoption_notice(&self) -> Option<watch::Receiver<u64>> {
        None
    }
    /// A connection was accepted and is protected from now on. Returns false when it is not
    /// (no backup): its pieces are then not logged at all.
    fn opened(&self, tuple: FourTuple, client_isn: u32, options: ConnectionOptions) -> bool;
    /// Logs a piece of a protected connection; a waiter when the client must wait for an
    /// acknowledgement.
    fn log(&self, piece: Piece<'_>) -> Option<AckWaiter>;
    /// The connection ended.
    fn closed(&self, tuple: FourTuple);
}

/// Simplex: the reply log lives in this process and nothing is sent anywhere.
#[derive(Default)]
pub struct LocalGate {
    log: Mutex<ReplicaLog>,
}

impl ReplyGate for LocalGate {
    fn generation(&self) -> u64 {
        1
    }

    fn opened(&self, tuple: FourTuple, client_isn: u32, options: ConnectionOptions) -> bool {
        self.log
            .lock()
            .expect("reply log lock")
            .opened(tuple, client_isn, options);
        true
    }

    fn log(&self, piece: Piece<'_>) -> Option<AckWaiter> {
        let mut log = self.log.lock().expect("reply log lock");
        let result = match piece.kind {
            PieceKind::Interim => log.log_interim(
                &piece.tuple,
                piece.request_index,
                piece.reply_offset,
                piece.bytes.to_vec(),
            ),
            PieceKind::Partial | PieceKind::Final { .. } => log
                .log_reply(
                    &piece.tuple,
                    piece.request_index,
                    piece.reply_offset,
                    match piece.kind {
                        PieceKind::Final { request_end } => Some(request_end),
                        _ => None,
                    },
                    piece.bytes.to_vec(),
                )
                .map(|_| ()),
        };
        if let Err(e) = result {
            tracing::warn!("local reply log: {e}");
        } else if piece.closes_after {
            log.closes_after_last_reply(&piece.tuple);
        }
        // Nobody acknowledges on this node: the bytes are released once the client has them,
        // which in simplex is as soon as they are written.
        log.trim(&piece.tuple, piece.reply_offset + piece.bytes.len() as u64);
        None
    }

    fn closed(&self, tuple: FourTuple) {
        self.log.lock().expect("reply log lock").closed(&tuple);
    }
}
