//! The proxy on VIP:port (simplex and duplex): one session per client connection.
//!
//! A session frames the client stream into requests (through the service's
//! [`ExchangeFramer`]; HTTP/1.x is the first), forwards each to a pooled backend connection
//! under its stable request id, frames the backend's reply, hands
//! the reply to the [`ReplyGate`] and writes it to the client only once the gate says the
//! backup holds it (I2). Requests go to the backend one at a time per client connection, so a
//! backend that closes after a reply never loses a pipelined request sent behind it; pipelined
//! requests simply wait, framed, in the session.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steadfast_core::client_timer::{ClientExpiry, ClientTimeouts, ClientTimer, ClientWait};
use steadfast_core::exchange_framer::{
    ExchangeError, ExchangeFramer, OwnReply, ReplyEvent, ReplyFinisher, ReplyHeadView, ReplyStream,
    RequestEvent, RequestHeadView, RequestStream,
};
use steadfast_core::image::{FourTuple, HandoverStep, HandoverWait, SessionStreams, SocketStreams};
use steadfast_core::latency::LatencyHistogram;
use steadfast_core::replication_wire::{ConnectionOptions, MAX_PIECE_BYTES};
use steadfast_core::reply_log::RequestIdKey;
use steadfast_core::reply_outbox::{ReplyOutbox, WaitingPiece};
use steadfast_core::request_ledger::{Keeping, RequestLedger};
use steadfast_core::stream_framer::StreamFramer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::census::{CensusEntry, SessionCensus};
use super::gate::{AckWaiter, Adoption, Piece, PieceKind, ReplyGate};

/// Client bytes a session holds (framed, not yet forwarded) before it stops reading.
const MAX_HELD_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// A pooled backend connection idle longer than this is not reused (backends close idle
/// keep-alive connections, and a request sent on a closing one would be lost).
const POOL_IDLE_LIMIT: Duration = Duration::from_secs(2);
const POOL_MAX_IDLE: usize = 256;
/// How long a connection to a server that may have crashed is waited for.
const SERVER_PROBE_LIMIT: Duration = Duration::from_millis(500);
/// How long a connection the server accepted must stay open to show that the server lives: a
/// killed server's sockets close one after another, and its listener may complete a handshake
/// before it goes (the connection is then reset).
const SERVER_PROBE_SETTLE: Duration = Duration::from_millis(50);
const READ_CHUNK: usize = 64 * 1024;
/// A reply streamed in parts is cut into pieces of about this size: each is logged as soon as
/// it is read and goes to the client once the backup holds it, while the next ones are read
/// and logged.
const STREAM_PIECE_BYTES: u64 = 512 * 1024;
/// Reply bytes of a streamed reply logged and not yet written, above which a session reads no
/// more of its backend: what the pipeline between backend, backup and client holds at most.
const STREAM_WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// How long the server has to answer a request the proxy cannot frame (see
/// `Session::answer_framing_error`).
const REFUSAL_WAIT: Duration = Duration::from_secs(2);
/// How long, and for how many bytes, a session that closed its side waits for the client to
/// close (nginx's `lingering_time` is 30 s, `lingering_timeout` 5 s).
const LINGER_LIMIT: Duration = Duration::from_secs(5);
const LINGER_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Client bytes of unanswered requests a session keeps for a backup that may adopt the
/// connection (an upload in flight): as many as the backup's image of a connection holds.
const MAX_UNANSWERED_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// An adoption that has to wait is tried again after this, then after twice as long, up to
/// [`ADOPTION_RETRY_MAX`].
const ADOPTION_RETRY_FIRST: Duration = Duration::from_millis(5);
const ADOPTION_RETRY_MAX: Duration = Duration::from_millis(200);

/// How long each stage of a request takes in the proxy.
#[derive(Debug, Default)]
pub struct ProxyStages {
    /// The request written to the backend → the first bytes of its reply read.
    pub backend: LatencyHistogram,
    /// A reply piece logged → the backup acknowledged holding it (I2's wait).
    pub backup_hold: LatencyHistogram,
    /// A reply piece released → written into the client's socket.
    pub client_write: LatencyHistogram,
    /// The request written to the backend → the last byte of its reply written to the client.
    pub request: LatencyHistogram,
}

/// Counters of the proxy (status output).
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub connections: AtomicU64,
    pub connections_unprotected: AtomicU64,
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub reply_bytes: AtomicU64,
    pub bad_requests: AtomicU64,
    pub backend_errors: AtomicU64,
    /// Idempotent requests sent again on a fresh backend connection (see
    /// `Session::send_again_on_a_fresh_connection`).
    pub backend_retries: AtomicU64,
    /// Where a request's time goes here (status `stages`), stage by stage.
    pub stages: ProxyStages,
    pub replies_unprotected: AtomicU64,
    /// Reply pieces that waited for this node's lease before going out unlogged.
    pub replies_fenced: AtomicU64,
    pub early_replies: AtomicU64,
    pub tunnels_refused: AtomicU64,
    /// Unprotected connections handed to a backup that joined after they opened; of them,
    /// those in the middle of a reply (a streamed reply under way, or reply bytes the client
    /// had not acknowledged) and the others in the middle of a request (an upload, a reply the
    /// backend has not begun).
    pub adopted: AtomicU64,
    pub adopted_mid_request: AtomicU64,
    pub adopted_mid_reply: AtomicU64,
    /// Adoptions that had to wait (tried again later), and why, by label.
    pub adoptions_skipped: AtomicU64,
    pub adoption_waits: Mutex<BTreeMap<String, u64>>,
    /// Replies cut by a takeover and finished by a range request.
    pub replies_resumed: AtomicU64,
    /// Cut replies the backend would not finish: the client connection was reset.
    pub resumes_failed: AtomicU64,
    /// Replies partly sent when the backend failed: the client connection was reset.
    pub replies_aborted: AtomicU64,
    /// Sessions ended without a word to their clients when this node stepped down and another
    /// carried their connections on.
    pub sessions_retired: AtomicU64,
    /// Client connections closed after the idle timeout, with no request under way.
    pub client_idle_timeouts: AtomicU64,
    /// Request heads not complete within the header timeout: answered 408.
    pub client_header_timeouts: AtomicU64,
    /// Connections closed at once: their address had `max_connections_per_source` open.
    pub connections_refused: AtomicU64,
    /// Connections whose handshake a SYN cookie completed (the listener's SYN queue was full:
    /// a flood), so no SYN was saved: their ISN came from the receive sequence.
    pub accepted_by_syn_cookie: AtomicU64,
}

/// Idle keep-alive connections to the backend.
pub struct BackendPool {
    address: SocketAddr,
    idle: Mutex<Vec<(TcpStream, Instant)>>,
}

impl BackendPool {
    pub fn new(address: SocketAddr) -> BackendPool {
        BackendPool {
            address,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A connection for the next request, and whether it already carried an exchange (the
    /// server may close it at any moment: its keep-alive timeout).
    async fn get(&self) -> io::Result<(TcpStream, bool)> {
        loop {
            let candidate = self.idle.lock().expect("pool lock").pop();
            let Some((stream, since)) = candidate else {
                break;
            };
            if since.elapsed() > POOL_IDLE_LIMIT {
                continue;
            }
            // A closed (EOF) or chattering connection is not idle: drop it. Asked of the kernel
            // itself: tokio's try_read answers from a readiness cache that may not know yet.
            let mut probe = [0u8; 1];
            let peek = nix::sys::socket::recv(
                stream.as_raw_fd(),
                &mut probe,
                nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            );
            if peek == Err(nix::errno::Errno::EAGAIN) {
                return Ok((stream, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// A new connection to the server, never one from the pool.
    async fn connect(&self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(self.address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Whether the server accepts a new connection (within [`SERVER_PROBE_LIMIT`]); the
    /// connection then waits in the pool for the next request.
    async fn server_accepts(&self) -> bool {
        let connected =
            tokio::time::timeout(SERVER_PROBE_LIMIT, TcpStream::connect(self.address)).await;
        let Ok(Ok(stream)) = connected else {
            return false;
        };
        tokio::time::sleep(SERVER_PROBE_SETTLE).await;
        let mut byte = [0u8; 1];
        let flags = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        match nix::sys::socket::recv(stream.as_raw_fd(), &mut byte, flags) {
            // Open, with nothing to say: a live server.
            Err(nix::errno::Errno::EAGAIN) => {
                let _ = stream.set_nodelay(true);
                self.put(stream);
                true
            }
            // Reset or closed at once: a server on its way down.
            Ok(0) | Err(_) => false,
            // It speaks unasked: alive, but the connection is not one to reuse.
            Ok(_) => true,
        }
    }

    fn put(&self, stream: TcpStream) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < POOL_MAX_IDLE {
            idle.push((stream, Instant::now()));
        }
    }
}

/// What every session of a service shares.
pub struct ProxyContext<P> {
    /// The protocol the service speaks: how its two streams are framed.
    pub protocol: P,
    /// Replies longer than this are logged and sent in pieces instead of whole.
    pub stream_above: usize,
    /// How long a client may keep a session waiting (see
    /// `steadfast_core::client_timer::ClientTimer`).
    pub client_timeouts: ClientTimeouts,
    /// How many client connections are served at once, in all and from one address.
    pub admission: Arc<super::admission::Admission>,
    pub gate: Arc<dyn ReplyGate>,
    pub pool: BackendPool,
    pub counters: ProxyCounters,
    /// Open sessions by the backup link that protects them.
    pub census: Arc<SessionCensus>,
    /// Whether this node may send reply bytes the backup does not hold.
    pub lease: super::lease::LeaseFence,
    /// Gives each connection the id its requests carry to the backend, the same on every node.
    pub request_ids: RequestIdKey,
}

impl<P: ExchangeFramer> ProxyContext<P> {
    /// The context of the sessions of `settings.service`, which speaks `protocol`, replies
    /// going through `gate` under `lease`.
    pub fn for_service(
        settings: &super::PlaneSettings,
        protocol: P,
        gate: Arc<dyn ReplyGate>,
        lease: super::lease::LeaseFence,
    ) -> ProxyContext<P> {
        let service = &settings.service;
        ProxyContext {
            protocol,
            stream_above: service.stream_above as usize,
            client_timeouts: service.client_timeouts,
            admission: super::admission::for_service(
                &service.name,
                service.max_connections,
                service.max_connections_per_source,
            ),
            gate,
            pool: BackendPool::new(service.backend),
            counters: Default::default(),
            census: Default::default(),
            lease,
            request_ids: RequestIdKey::derive(&settings.key),
        }
    }
}

/// Where a session starts: offset 0 for a fresh connection, or the resume point of a
/// connection carried over by a takeover.
#[derive(Debug, Clone)]
pub struct SessionStart<P: StreamFramer> {
    pub tuple: FourTuple,
    pub connection_id: u64,
    /// What a backup that joins later needs to adopt the connection.
    pub client_isn: u32,
    pub options: ConnectionOptions,
    pub client_mss: u16,
    pub request_offset: u64,
    pub request_index: u64,
    /// Client bytes from `request_offset` on, already received.
    pub pending_request: Vec<u8>,
    pub reply_offset: u64,
    /// Logged reply bytes the client has not acknowledged: written first.
    pub unacked_reply: Vec<u8>,
    /// The reply to request `request_index` was cut after `reply_offset` (streamed in parts
    /// when the old primary died): it is finished by a range request instead of executed.
    pub cut_reply: Option<P::ResumePoint>,
    /// The old primary was ending the connection after the reply whose unacknowledged bytes
    /// are `unacked_reply`: they go out, then the connection closes with nothing answered.
    pub close_after_reply: bool,
}

impl<P: StreamFramer> SessionStart<P> {
    pub fn fresh(
        tuple: FourTuple,
        connection_id: u64,
        client_isn: u32,
        options: ConnectionOptions,
        client_mss: u16,
    ) -> SessionStart<P> {
        SessionStart {
            tuple,
            connection_id,
            client_isn,
            options,
            client_mss,
            request_offset: 0,
            request_index: 0,
            pending_request: Vec::new(),
            reply_offset: 0,
            unacked_reply: Vec::new(),
            cut_reply: None,
            close_after_reply: false,
        }
    }
}

/// Why a session ended early (logged at debug level; counters say how often).
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("client {0}: {1}")]
    Client(FourTuple, io::Error),
    #[error("backend for {0}: {1}")]
    Backend(FourTuple, io::Error),
    #[error("{0}: {1}")]
    Protocol(FourTuple, String),
}

/// A request the proxy cannot frame, handed to the server to answer.
struct Refusal<P: ExchangeFramer> {
    /// When the proxy stops waiting for the server's answer and gives its own.
    deadline: tokio::time::Instant,
    error: P::Error,
}

/// The request whose reply is awaited.
struct InFlight<P: ExchangeFramer> {
    index: u64,
    keep_alive: bool,
    /// Client stream offset after the request, once its end was framed.
    request_end: Option<u64>,
    /// Part of the reply has reached the client: an error now cannot be answered with a
    /// reply of its own (it would land inside this one's body).
    reply_started: bool,
    /// The reply goes out in parts as it is read: it declared a length above the whole-reply
    /// limit, or outgrew it.
    streamed: bool,
    /// The reply finishes one a takeover cut: the backend's answer to the range request is
    /// turned into the rest of the client's reply.
    continuation: Option<P::Finisher>,
    /// The request, while it may still be sent again on a fresh connection: it is idempotent,
    /// went on a reused connection, and no byte of its reply has come.
    retry: Option<P::RequestHead>,
    /// When the request's head went to the backend, and whether a byte of its reply came
    /// since (the stage latencies).
    sent_at: Instant,
    reply_seen: bool,
}

/// The backend connection of a session and the framer of its reply stream.
struct Backend<P: ExchangeFramer> {
    stream: TcpStream,
    framer: P::Replies,
    /// Backend bytes read and not yet handed to the client, from backend offset `base`.
    buffer: Vec<u8>,
    base: u64,
    /// End of the current reply's head or of its last payload bytes: a reply streamed in
    /// parts is cut only there, so a takeover can always say how the client's reply goes on.
    cuttable: u64,
    /// The last request written on this connection has not ended yet: the server still reads
    /// its body, so the connection cannot carry another client's request.
    request_open: bool,
    /// This side has finished writing (the client finished inside a request).
    finished: bool,
    /// The connection carried a whole exchange before the current one.
    reused: bool,
}

impl<P: ExchangeFramer> Backend<P> {
    fn new(stream: TcpStream, reused: bool, protocol: &P) -> Backend<P> {
        Backend {
            stream,
            framer: protocol.replies(),
            buffer: Vec::new(),
            base: 0,
            cuttable: 0,
            request_open: false,
            finished: false,
            reused,
        }
    }
}

/// Runs one client connection to its end; `protection` is its place in the census, entered by
/// the caller with the link generation that protects it (0: none).
pub async fn serve<P: ExchangeFramer>(
    ctx: Arc<ProxyContext<P>>,
    client: TcpStream,
    start: SessionStart<P>,
    protection: CensusEntry,
) {
    let tuple = start.tuple;
    ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
    if protection.generation() == 0 {
        ctx.counters
            .connections_unprotected
            .fetch_add(1, Ordering::Relaxed);
    }
    let _ = client.set_nodelay(true);
    let mut session = Session {
        ctx: ctx.clone(),
        client,
        tuple,
        connection_id: start.connection_id,
        client_isn: start.client_isn,
        options: start.options,
        client_mss: start.client_mss,
        adoption: AdoptionTrigger::new(ctx.gate.adoption_notice(), ctx.census.watch_disownings()),
        adoption_ack: None,
        protection,
        framer: ctx
            .protocol
            .requests_from(start.request_offset, start.request_index),
        pending: VecDeque::new(),
        in_flight: None,
        backend: None,
        // The logged reply bytes the client lacks go out first; the socket's send sequence
        // starts where the client acknowledged.
        reply: ReplyOutbox::resumed(
            ctx.gate.adopts(),
            start.reply_offset,
            start.unacked_reply.len() as u64,
        ),
        requests: RequestLedger::starting_at(
            start.request_offset,
            start.request_index,
            MAX_UNANSWERED_REQUEST_BYTES,
        ),
        client_reply: start
            .cut_reply
            .as_ref()
            .map(|cut| ctx.protocol.partial_reply_from(Ok(cut.clone()))),
        framing_error: None,
        refusal: None,
        client_done: false,
        close_after_reply: start.close_after_reply,
        trace_first_reply: start.reply_offset > 0 || start.request_offset > 0,
        cut_reply: start.cut_reply,
        client_timer: ClientTimer::new(ctx.client_timeouts, ClientWait::Busy, Duration::ZERO),
        clock_origin: tokio::time::Instant::now(),
    };
    let retirement = ctx.census.retirement(&session.protection);
    // Biased: once this node has stepped down, nothing more may reach the client, even if the
    // session had something ready to send in the same instant.
    let finished = tokio::select! {
        biased;
        () = retirement => None,
        result = session.run(start.pending_request, start.unacked_reply) => Some(result),
    };
    let Some(result) = finished else {
        if let Err(e) = steadfast_os::repair::silence(&session.client) {
            tracing::warn!("retiring {tuple}: {e}; its close may reach the client");
        }
        ctx.counters
            .sessions_retired
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!("{tuple}: session retired, another node carries the connection on");
        return;
    };
    if let Err(e) = &result {
        tracing::debug!("session ended: {e}");
    } else {
        tracing::debug!("{tuple}: session ended");
    }
    // The current backup protects this connection, or expects it to be adopted: either way it
    // must forget it now.
    if ctx.gate.generation() != 0 {
        ctx.gate.closed(tuple);
    }
    // A backend connection can serve another client only where an exchange on it completed
    // in both directions: a server still reading a request body would take the next client's
    // request as part of it.
    if let Some(backend) = session.backend.take() {
        if result.is_ok()
            && session.in_flight.is_none()
            && !backend.request_open
            && backend.framer.at_reply_boundary()
        {
            ctx.pool.put(backend.stream);
        }
    }
}

struct Session<P: ExchangeFramer> {
    ctx: Arc<ProxyContext<P>>,
    client: TcpStream,
    tuple: FourTuple,
    connection_id: u64,
    client_isn: u32,
    options: ConnectionOptions,
    client_mss: u16,
    /// When to offer the connection to a backup that joined after it opened.
    adoption: AdoptionTrigger,
    /// The backup's acknowledgement of the latest hand-over: until it comes no client byte is
    /// read, so that what passes the backup meanwhile stays within one receive window (the
    /// backup keeps that much to replay into the adopted image).
    adoption_ack: Option<PendingAdoption>,
    /// The gate generation that protects this connection (0: none), counted in the census.
    protection: CensusEntry,
    framer: P::Requests,
    pending: VecDeque<RequestEvent<P::RequestHead>>,
    in_flight: Option<InFlight<P>>,
    backend: Option<Backend<P>>,
    /// The client-facing reply stream: pieces of a reply streamed in parts, logged and not yet
    /// written (each goes to the client once the backup holds it, while the backend is read
    /// on), and the bytes written that the client has not acknowledged (kept where a backup
    /// may adopt the connection: it starts its log with those the client lacks, then the
    /// waiting pieces follow, see `adopt`).
    reply: ReplyOutbox<PieceLog>,
    /// The client stream: bytes held before they are forwarded, and those of unanswered
    /// requests kept for a backup that adopts the connection (a takeover sends them again) and
    /// for a request sent again on a fresh backend connection.
    requests: RequestLedger,
    /// Follows the reply being streamed in parts, so a backup that adopts the connection in its
    /// middle knows where a takeover would resume it.
    client_reply: Option<P::PartialReply>,
    /// A framing error in client bytes read during a hand-over, answered by the main loop.
    framing_error: Option<P::Error>,
    /// A request the proxy cannot frame is with the server (see `answer_framing_error`).
    refusal: Option<Refusal<P>>,
    client_done: bool,
    /// The last request asked to close (or the stream cannot carry another request).
    close_after_reply: bool,
    /// A resumed session logs (debug) when its first reply goes out.
    trace_first_reply: bool,
    /// The first request's reply was cut by the takeover (see [`SessionStart::cut_reply`]).
    cut_reply: Option<P::ResumePoint>,
    /// How long the client has kept the session waiting, timed from `clock_origin`.
    client_timer: ClientTimer,
    clock_origin: tokio::time::Instant,
}

impl<P: ExchangeFramer> Session<P> {
    async fn run(
        &mut self,
        pending_request: Vec<u8>,
        unacked_reply: Vec<u8>,
    ) -> Result<(), SessionEnd> {
        if !unacked_reply.is_empty() || !pending_request.is_empty() {
            tracing::debug!(
                "{}: resuming at request {} (client offset {}, reply offset {}): {} reply bytes \
                 to resend, {} request bytes to execute",
                self.tuple,
                self.framer.current_index(),
                self.requests.forwarded_end(),
                self.reply.released_end(),
                unacked_reply.len(),
                pending_request.len()
            );
        }
        // Framed before anything is written: the socket counts these bytes as received, and a
        // backup may adopt the connection while the reply bytes go out.
        self.frame_client_bytes(&pending_request);
        if !unacked_reply.is_empty() {
            self.write_reply_bytes(unacked_reply).await?;
        }
        let mut client_buf = vec![0u8; READ_CHUNK];
        loop {
            self.answer_framing_error().await?;
            self.forward_requests().await?;
            self.pass_on_client_finish();
            // Requests pipelined behind the last one the server answers stay unanswered, as
            // they would without the proxy.
            if self.in_flight.is_none()
                && (self.close_after_reply || (self.client_done && self.pending.is_empty()))
            {
                let _ = self.client.shutdown().await;
                if self.client_may_send_more() {
                    self.drain_client(&mut client_buf).await;
                }
                return Ok(());
            }
            let read_client = !self.client_done
                && !self.close_after_reply
                && self.requests.held().len() < MAX_HELD_REQUEST_BYTES
                && self.adoption_ack.is_none();
            let awaiting_reply = self.in_flight.is_some() && self.backend.is_some();
            if !read_client && !awaiting_reply && self.adoption_ack.is_none() {
                // Waiting on nothing: the request cannot progress (a refused tunnel, say).
                return Err(SessionEnd::Protocol(
                    self.tuple,
                    "nothing left to wait for".into(),
                ));
            }
            self.client_timer
                .observe(self.client_wait(), self.clock_origin.elapsed());
            let client_deadline = self
                .client_timer
                .deadline()
                .and_then(|(at, _)| self.clock_origin.checked_add(at));
            let read_backend =
                self.backend.is_some() && self.reply.waiting_bytes() < STREAM_WINDOW_BYTES;
            let backend_room = self.backend_read_room();
            tokio::select! {
                read = self.client.read(&mut client_buf), if read_client => {
                    let n = read.map_err(|e| SessionEnd::Client(self.tuple, e))?;
                    if n == 0 {
                        self.client_closed();
                    } else {
                        self.take_client_bytes(&client_buf[..n]).await?;
                    }
                }
                held = waiting_piece_held(self.reply.front_mut()), if self.reply.has_waiting() => {
                    self.release_front(held).await?;
                }
                // Between requests too: a server that closes an idle connection is seen at once.
                read = read_backend_stream(self.backend.as_mut(), backend_room), if read_backend => {
                    if self.in_flight.is_none() {
                        self.backend_spoke_while_idle(read).await;
                    } else {
                        let sent_again = match &read {
                            Ok(0) => self.send_again_on_a_fresh_connection("closed").await?,
                            Err(e) => self.send_again_on_a_fresh_connection(&e.to_string()).await?,
                            Ok(_) => false,
                        };
                        if !sent_again {
                            let n = read.map_err(|e| SessionEnd::Backend(self.tuple, e))?;
                            self.take_backend_bytes(n).await?;
                        }
                    }
                }
                () = sleep_until(self.refusal.as_ref().map(|refusal| refusal.deadline)) => {
                    let error = self.refusal.take().expect("a refusal under way").error;
                    return self.refuse_ourselves(error).await;
                }
                () = self.adoption.due() => self.try_adoption(None),
                held = wait_for_adoption_ack(self.adoption_ack.as_mut()) => self.adoption_answered(held),
                () = tokio::time::sleep(ACKNOWLEDGED_TRIM_INTERVAL), if self.reply.keeps_any() => {
                    self.forget_acknowledged();
                }
                () = sleep_until(client_deadline) => self.client_timed_out().await?,
            }
        }
    }

    /// What the session waits for from its client, for the client timeouts.
    fn client_wait(&self) -> ClientWait {
        let quiet = self.in_flight.is_none()
            && self.pending.is_empty()
            && self.refusal.is_none()
            && self.framing_error.is_none()
            && !self.client_done
            && !self.close_after_reply;
        let index = self.framer.current_index();
        if !quiet {
            ClientWait::Busy
        } else if self.framer.at_request_boundary() {
            ClientWait::Idle { next: index }
        } else if self.framer.reading_a_head() {
            ClientWait::Head { index }
        } else {
            // A body the server reads as it comes (under its own timeouts), or a tunnel.
            ClientWait::Busy
        }
    }

    /// The client kept the session waiting past a timeout: an idle connection closes as the
    /// server's keep-alive timeout would close it; an unfinished request head is answered
    /// (HTTP: 408), and the connection closes.
    async fn client_timed_out(&mut self) -> Result<(), SessionEnd> {
        let counters = &self.ctx.counters;
        match self.client_timer.expired(self.clock_origin.elapsed()) {
            Some(ClientExpiry::Idle) => {
                counters
                    .client_idle_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "{}: idle for {:?} with no request under way: closing",
                    self.tuple,
                    self.ctx.client_timeouts.idle
                );
                self.close_after_reply = true;
                Ok(())
            }
            Some(ClientExpiry::Head) => {
                counters
                    .client_header_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                let timeout = self.ctx.client_timeouts.header;
                tracing::debug!(
                    "{}: request {} has no complete head {timeout:?} after it began: 408",
                    self.tuple,
                    self.framer.current_index()
                );
                let detail = format!(
                    "the request head did not complete within {} ms",
                    timeout.as_millis()
                );
                let reply = OwnReply::HeadTimeout { detail: &detail };
                self.answer_ourselves(self.framer.current_index(), reply)
                    .await
            }
            None => Ok(()),
        }
    }

    /// The server closed its connection between requests (a keep-alive timeout, a reload), or
    /// sent what no request asked for (a 408 before closing): nothing more goes on that
    /// connection. A client that has not begun another request loses its connection too, as
    /// it would have without the proxy; one that has gets a fresh backend connection for it.
    /// A server that is gone (it crashed: it accepts no new connection) closed nothing by
    /// choice: the client's connection stays for the node that takes the service over.
    async fn backend_spoke_while_idle(&mut self, read: io::Result<usize>) {
        match read {
            Ok(0) => tracing::debug!("{}: the backend closed the idle connection", self.tuple),
            Ok(n) => tracing::debug!(
                "{}: the backend sent {n} bytes no request asked for; leaving the connection",
                self.tuple
            ),
            Err(e) => tracing::debug!("{}: idle backend connection: {e}", self.tuple),
        }
        self.backend = None;
        let unread =
            steadfast_os::repair::queued_bytes(&self.client).map_or(0, |(unread, _)| unread);
        if self.requests.held().is_empty() && unread == 0 && self.ctx.pool.server_accepts().await {
            self.close_after_reply = true;
        }
    }

    /// A client that finished in the middle of a request: the server, which has its head,
    /// sees the end of the stream too (as it would without the proxy) and answers or closes.
    fn pass_on_client_finish(&mut self) {
        if !self.client_done || !self.pending.is_empty() {
            return;
        }
        let Some(backend) = self.backend.as_mut() else {
            return;
        };
        if backend.request_open && !backend.finished {
            backend.finished = true;
            if let Err(e) = nix::sys::socket::shutdown(
                backend.stream.as_raw_fd(),
                nix::sys::socket::Shutdown::Write,
            ) {
                tracing::debug!("{}: passing the client's finish on: {e}", self.tuple);
            }
        }
    }

    /// Whether the client, which this side is closing, has sent or is sending bytes nobody
    /// will read: a request cut short by an early reply, pipelined requests.
    fn client_may_send_more(&self) -> bool {
        if self.client_done {
            return false;
        }
        let unread =
            steadfast_os::repair::queued_bytes(&self.client).map_or(0, |(unread, _)| unread);
        unread > 0
            || !self.requests.held().is_empty()
            || !self.pending.is_empty()
            || !self.framer.at_request_boundary()
    }

    /// After this side's close: reads what the client still sends (the rest of a body the
    /// server did not wait for, requests pipelined behind the last reply) until the client
    /// closes too, within bounds. Closing a socket with unread bytes resets the connection,
    /// and the reset can destroy the reply before the client reads it (RFC 9112 §9.6).
    async fn drain_client(&mut self, buf: &mut [u8]) {
        let deadline = tokio::time::Instant::now() + LINGER_LIMIT;
        let mut drained = 0usize;
        while drained < LINGER_MAX_BYTES {
            match tokio::time::timeout_at(deadline, self.client.read(buf)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
        self.client_done = true;
    }

    /// The client closed its side: a request cut short by it is dropped (nobody waits for it).
    fn client_closed(&mut self) {
        self.client_done = true;
        let mut events = Vec::new();
        if let Err(e) = self.framer.finish(&mut events) {
            tracing::debug!("{}: {e}", self.tuple);
        }
        self.pending.extend(events);
    }

    /// Frames client bytes; a framing error is answered (HTTP: 400) when no part of the bad
    /// request has reached the backend, and ends the session.
    async fn take_client_bytes(&mut self, bytes: &[u8]) -> Result<(), SessionEnd> {
        self.frame_client_bytes(bytes);
        self.answer_framing_error().await
    }

    fn frame_client_bytes(&mut self, bytes: &[u8]) {
        if self.framing_error.is_some() || self.refusal.is_some() {
            // The stream has no boundary after the error: nothing more is framed.
            return;
        }
        self.requests.receive(bytes);
        let mut events = Vec::new();
        let result = self.framer.feed(bytes, &mut events);
        self.pending.extend(events);
        if let Err(error) = result {
            self.framing_error = Some(error);
        }
    }

    /// A request the proxy cannot frame goes to the server as the client sent it, on a
    /// backend connection of its own that serves nothing after it: the server answers it as it
    /// would without the proxy (its own 400, 414, 501 …, or a reply, if it is more lenient),
    /// and the client's connection ends after that reply. Only when the server does not answer
    /// within [`REFUSAL_WAIT`] does the proxy answer 400 itself.
    async fn answer_framing_error(&mut self) -> Result<(), SessionEnd> {
        let Some(error) = self.framing_error.take() else {
            return Ok(());
        };
        self.ctx
            .counters
            .bad_requests
            .fetch_add(1, Ordering::Relaxed);
        // Earlier complete requests still get their replies first.
        let index = error.request_index();
        self.forward_requests_before(index).await?;
        while self
            .in_flight
            .as_ref()
            .is_some_and(|flight| flight.index < index)
        {
            self.finish_in_flight().await?;
            self.forward_requests_before(index).await?;
        }
        if let Err(e) = self.hand_refusal_to_server(index).await {
            tracing::debug!(
                "{}: the server cannot be asked about a request the proxy cannot frame: {e}",
                self.tuple
            );
            return self.refuse_ourselves(error).await;
        }
        self.close_after_reply = true;
        self.refusal = Some(Refusal {
            deadline: tokio::time::Instant::now() + REFUSAL_WAIT,
            error,
        });
        Ok(())
    }

    /// Sends the client bytes of the unframeable request `index` (all it has sent of it) to
    /// the server: the rest of it on the connection that already carries its head, else all
    /// of it, exactly as the client sent it, in one write on a new connection.
    async fn hand_refusal_to_server(&mut self, index: u64) -> io::Result<()> {
        let head_sent = self.in_flight.as_ref().is_some_and(|f| f.index == index);
        // What was framed of it goes as the client's own bytes, below.
        self.pending.clear();
        if !head_sent {
            // Whatever the server makes of these bytes, no other request may follow them on
            // the same connection.
            if let Some(idle) = self.backend.take() {
                if !idle.request_open && idle.framer.at_reply_boundary() {
                    self.ctx.pool.put(idle.stream);
                }
            }
            let stream = self.ctx.pool.connect().await?;
            let mut backend = Backend::new(stream, false, &self.ctx.protocol);
            backend
                .framer
                .expect_reply_to_unframed(self.requests.held());
            backend.request_open = true;
            self.backend = Some(backend);
        }
        let end = self.requests.received_end();
        let backend = self.backend.as_mut().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the backend connection is gone",
            )
        })?;
        backend.stream.write_all(self.requests.held()).await?;
        self.forward_to(end);
        match self.in_flight.as_mut() {
            Some(flight) => {
                flight.request_end = Some(end);
                flight.keep_alive = false;
                flight.retry = None;
            }
            None => {
                self.in_flight = Some(InFlight {
                    index,
                    keep_alive: false,
                    request_end: Some(end),
                    reply_started: false,
                    streamed: false,
                    continuation: None,
                    retry: None,
                    sent_at: Instant::now(),
                    reply_seen: false,
                })
            }
        }
        Ok(())
    }

    /// The server did not answer a request the proxy cannot frame (or could not be asked):
    /// the proxy answers itself (HTTP: 400), naming what is wrong, and closes.
    async fn refuse_ourselves(&mut self, error: P::Error) -> Result<(), SessionEnd> {
        self.refusal = None;
        if let Some(flight) = self.in_flight.take() {
            if flight.reply_started {
                return self.abort_reply("the server's reply to a malformed request stopped");
            }
            // Its backend connection sees the request cut short; nothing more goes on it.
            self.backend = None;
        }
        let detail = error.to_string();
        let reply = OwnReply::Malformed { detail: &detail };
        self.answer_ourselves(error.request_index(), reply).await?;
        let _ = self.client.shutdown().await;
        Err(SessionEnd::Protocol(self.tuple, error.to_string()))
    }

    /// Answers request `index` with a reply of the proxy's own, which ends the connection:
    /// every client byte received counts as part of that request.
    async fn answer_ourselves(
        &mut self,
        index: u64,
        reply: OwnReply<'_>,
    ) -> Result<(), SessionEnd> {
        let end = self.requests.received_end();
        self.close_after_reply = true;
        let reply = self.ctx.protocol.own_reply(reply);
        self.send_reply_piece(index, PieceKind::Final { request_end: end }, reply)
            .await
    }

    /// Hands this unprotected connection to the backup that joined after it opened, wherever
    /// it stands (see `steadfast_core::image::handover`); `writing` is the reply piece being
    /// written, which ends at `reply_offset`. A connection that cannot be handed over yet is
    /// tried again a little later; one that never can (a half-closed client) only when another
    /// backup joins.
    fn try_adoption(&mut self, writing: Option<&[u8]>) {
        if self.protection.take_disowned() {
            tracing::debug!(
                "{}: the backup never saw this connection open: it is handed over",
                self.tuple
            );
        }
        let generation = self.ctx.gate.adoption_generation();
        if generation == 0 || generation == self.protection.generation() {
            self.adoption.settled();
            return;
        }
        match self.adopt(generation, writing) {
            Ok(()) => self.adoption.settled(),
            Err(wait) => {
                let counters = &self.ctx.counters;
                counters.adoptions_skipped.fetch_add(1, Ordering::Relaxed);
                *counters
                    .adoption_waits
                    .lock()
                    .expect("adoption waits lock")
                    .entry(wait.label().to_string())
                    .or_default() += 1;
                tracing::debug!("{}: adoption waits: {wait}", self.tuple);
                if wait.may_pass() {
                    self.adoption.later();
                } else {
                    self.adoption.settled();
                }
            }
        }
    }

    /// The backup answered the latest hand-over: it holds the connection (`held`), or it was
    /// lost first and the connection stays unprotected until another backup adopts it.
    fn adoption_answered(&mut self, held: bool) {
        let Some(pending) = self.adoption_ack.take() else {
            return;
        };
        if held {
            self.protection.protected_by(pending.generation);
        } else {
            tracing::debug!(
                "{}: the backup was lost before it held the hand-over",
                self.tuple
            );
        }
    }

    fn adopt(&mut self, generation: u64, writing: Option<&[u8]>) -> Result<(), HandoverWait> {
        self.forget_acknowledged();
        let unreadable = |what: &str, e: steadfast_os::repair::RepairError| {
            tracing::debug!("adoption: {what}: {e}");
            HandoverWait::Inconsistent("the socket's numbers could not be read")
        };
        // Client bytes keep arriving in an upload: read what the kernel holds, then look again.
        let mut reads_left = 4;
        let handover = loop {
            let (_, unacknowledged) = steadfast_os::repair::queued_bytes(&self.client)
                .map_err(|e| unreadable("queues", e))?;
            let (rcv_nxt, write_seq) = steadfast_os::repair::live_sequences(&self.client)
                .map_err(|e| unreadable("sequences", e))?;
            let socket = SocketStreams {
                rcv_nxt,
                write_seq,
                unacknowledged: unacknowledged as u64,
            };
            match steadfast_core::image::handover(&self.streams(), &socket)? {
                HandoverStep::Ready(handover) => break handover,
                HandoverStep::ReadFirst { .. } if reads_left == 0 => {
                    return Err(HandoverWait::Inconsistent(
                        "client bytes kept arriving while the socket was read",
                    ))
                }
                HandoverStep::ReadFirst { bytes } => {
                    reads_left -= 1;
                    self.read_unread(bytes as usize)?;
                }
            }
        };
        if steadfast_os::repair::holds_bytes_beyond_a_gap(&self.client)
            .map_err(|e| unreadable("receive memory", e))?
        {
            return Err(HandoverWait::BeyondAGap);
        }
        let in_request = self.in_flight.is_some()
            || self.requests.received_end() > self.requests.answered_offset();
        let adoption = Adoption {
            tuple: self.tuple,
            client_isn: self.client_isn,
            server_isn: handover.server_isn,
            options: self.options,
            client_mss: self.client_mss,
            next_request: self.requests.answered_index(),
            request_offset: self.requests.answered_offset(),
            // `handover` refused a connection whose unanswered bytes are not all kept.
            pending: self
                .requests
                .unanswered()
                .ok_or(HandoverWait::RequestTooLong)?,
            reply_acked: handover.reply_acked,
            unacked_reply: self.reply.bytes_from(handover.reply_acked, writing),
            timestamp: self
                .options
                .timestamps
                .then(|| steadfast_os::repair::timestamp_now(&self.client).ok())
                .flatten(),
            reply_in_progress: self.client_reply.as_ref().map(|reply| {
                let mut progress = Vec::new();
                P::encode_progress(&self.ctx.protocol.resume_point(reply), &mut progress);
                progress
            }),
        };
        let (pending, unacked) = (adoption.pending.len(), adoption.unacked_reply.len());
        let in_reply = adoption.reply_in_progress.is_some() || unacked > 0;
        let Some(ack) = self.ctx.gate.adopt(adoption) else {
            return Err(HandoverWait::Inconsistent("the backup link went away"));
        };
        self.protection.handed_to(generation);
        self.adoption_ack = Some(PendingAdoption { ack, generation });
        self.log_waiting_pieces();
        let counters = &self.ctx.counters;
        counters.adopted.fetch_add(1, Ordering::Relaxed);
        if in_reply {
            counters.adopted_mid_reply.fetch_add(1, Ordering::Relaxed);
        } else if in_request {
            counters.adopted_mid_request.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            "{}: adopted by link generation {generation} ({pending} request bytes unanswered, \
             {unacked} reply bytes unacknowledged{})",
            self.tuple,
            if self.client_reply.is_some() {
                ", in a streamed reply"
            } else {
                ""
            }
        );
        Ok(())
    }

    /// What the session knows of its two streams, for a hand-over.
    fn streams(&self) -> SessionStreams {
        SessionStreams {
            client_isn: self.client_isn,
            received: self.requests.received_end(),
            answered: self.requests.answered_offset(),
            request_held_from: self.requests.kept_from(),
            sent: self.reply.sent(),
            reply_end: self.reply.released_end(),
            reply_held_from: self.reply.kept_from(),
            client_finished: self.client_done,
        }
    }

    /// Reads exactly `n` client bytes the kernel holds, and frames them.
    fn read_unread(&mut self, n: usize) -> Result<(), HandoverWait> {
        let mut bytes = vec![0u8; n];
        let mut got = 0;
        let outcome = loop {
            if got == n {
                break Ok(());
            }
            // Straight from the socket: tokio's own try_read answers from its readiness cache,
            // which may not know yet of bytes the kernel holds.
            let read = nix::sys::socket::recv(
                self.client.as_raw_fd(),
                &mut bytes[got..],
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            );
            match read.map_err(io::Error::from) {
                Ok(0) => break Err(HandoverWait::ClientFinished),
                Ok(k) => got += k,
                Err(e) => {
                    tracing::debug!("adoption: reading {n} queued client bytes: {e}");
                    break Err(HandoverWait::Inconsistent(
                        "the client bytes the kernel held could not be read",
                    ));
                }
            }
        };
        bytes.truncate(got);
        self.frame_client_bytes(&bytes);
        if outcome == Err(HandoverWait::ClientFinished) {
            self.client_closed();
        }
        outcome
    }

    /// Releases kept reply pieces the client has acknowledged whole.
    fn forget_acknowledged(&mut self) {
        if !self.reply.keeps_any() {
            return;
        }
        if let Ok(unacknowledged) = steadfast_os::repair::unacknowledged_bytes(&self.client) {
            self.reply.acknowledged(unacknowledged as u64);
        }
    }

    /// The held client bytes before `end` went to the backend.
    fn forward_to(&mut self, end: u64) {
        if self.requests.forward_to(end) == Keeping::Outgrown {
            tracing::debug!(
                "{}: the unanswered request outgrew {MAX_UNANSWERED_REQUEST_BYTES} bytes: a \
                 backup cannot adopt the connection before it is answered",
                self.tuple
            );
        }
    }

    /// Waits for the in-flight reply while the client is not read (used on the error path).
    async fn finish_in_flight(&mut self) -> Result<(), SessionEnd> {
        while self.in_flight.is_some() {
            while self.reply.waiting_bytes() >= STREAM_WINDOW_BYTES {
                self.release_oldest().await?;
            }
            let room = self.backend_read_room();
            let n = read_backend_stream(self.backend.as_mut(), room)
                .await
                .map_err(|e| SessionEnd::Backend(self.tuple, e))?;
            self.take_backend_bytes(n).await?;
        }
        Ok(())
    }

    /// Forwards framed client bytes to the backend, one request at a time.
    async fn forward_requests(&mut self) -> Result<(), SessionEnd> {
        self.forward_requests_before(u64::MAX).await
    }

    /// Forwards framed client bytes of the requests before request `limit`.
    async fn forward_requests_before(&mut self, limit: u64) -> Result<(), SessionEnd> {
        let mut forwarded_to = None;
        while let Some(event) = self.pending.front() {
            match event {
                RequestEvent::Head(head) => {
                    if self.in_flight.is_some() || self.close_after_reply || head.index() >= limit {
                        break;
                    }
                    let head = head.clone();
                    if self.backend.is_none() {
                        match self.ctx.pool.get().await {
                            Ok((stream, reused)) => {
                                self.backend =
                                    Some(Backend::new(stream, reused, &self.ctx.protocol))
                            }
                            Err(e) => {
                                let resuming = self.cut_reply.is_some();
                                return self.backend_failed(&head, resuming, "connect", &e).await;
                            }
                        }
                    }
                    let protocol = &self.ctx.protocol;
                    let (bytes, continuation) = match self.cut_reply.take() {
                        None => (protocol.encode_request(&head, self.connection_id), None),
                        Some(cut) => match protocol.resume_request(&head, self.connection_id, &cut)
                        {
                            Some((bytes, finisher)) => (bytes, Some(finisher)),
                            None => {
                                // The backup's plan checked the request: not reached.
                                return self.abort_resume("the request cannot ask for the rest");
                            }
                        },
                    };
                    let resuming = continuation.is_some();
                    let backend = self.backend.as_mut().expect("connected above");
                    let mut retryable = backend.reused && !resuming && head.is_idempotent();
                    backend.framer.expect_reply_to(&head);
                    backend.request_open = true;
                    if let Err(e) = backend.stream.write_all(&bytes).await {
                        if !retryable {
                            return self.backend_failed(&head, resuming, "write", &e).await;
                        }
                        tracing::debug!(
                            "{}: the reused backend connection failed ({e}); sending request {} \
                             on a fresh one",
                            self.tuple,
                            head.index()
                        );
                        if let Err(e) = self.write_on_a_fresh_connection(&head, &bytes).await {
                            return self.backend_failed(&head, resuming, "connect", &e).await;
                        }
                        retryable = false;
                    }
                    self.ctx.counters.requests.fetch_add(1, Ordering::Relaxed);
                    self.in_flight = Some(InFlight {
                        index: head.index(),
                        keep_alive: head.keep_alive(),
                        request_end: None,
                        reply_started: resuming,
                        streamed: resuming,
                        continuation,
                        retry: retryable.then(|| head.clone()),
                        sent_at: Instant::now(),
                        reply_seen: false,
                    });
                    forwarded_to = Some(head.range().end);
                }
                RequestEvent::Body { range, .. } | RequestEvent::Framing { range, .. } => {
                    let range = range.clone();
                    if let Some(backend) = self.backend.as_mut() {
                        let bytes = self.requests.held_range(range.clone());
                        if let Err(e) = backend.stream.write_all(bytes).await {
                            // The reply (maybe an early error) may still be readable.
                            tracing::debug!("{}: backend write: {e}", self.tuple);
                        }
                    }
                    forwarded_to = Some(range.end);
                }
                RequestEvent::End { range, .. } => {
                    if let Some(flight) = self.in_flight.as_mut() {
                        flight.request_end = Some(range.end);
                    }
                    if let Some(backend) = self.backend.as_mut() {
                        backend.request_open = false;
                    }
                }
                RequestEvent::Discarded { range } => forwarded_to = Some(range.end),
                RequestEvent::Tunnel { range } => {
                    // Bytes behind a CONNECT: the server's answer to the CONNECT still reaches
                    // the client (a refusal, as without the proxy), then the connection ends.
                    // A server that accepts it gets no tunnel: tunnels are not carried.
                    let range = range.clone();
                    self.ctx
                        .counters
                        .tunnels_refused
                        .fetch_add(1, Ordering::Relaxed);
                    self.close_after_reply = true;
                    forwarded_to = Some(range.end);
                }
            }
            self.pending.pop_front();
        }
        if let Some(end) = forwarded_to {
            self.forward_to(end);
        }
        Ok(())
    }

    /// Replaces the backend connection with a new one, expecting the reply to `head`, and
    /// writes `bytes` (the request as forwarded so far) on it.
    async fn write_on_a_fresh_connection(
        &mut self,
        head: &P::RequestHead,
        bytes: &[u8],
    ) -> io::Result<()> {
        self.backend = None;
        self.ctx
            .counters
            .backend_retries
            .fetch_add(1, Ordering::Relaxed);
        let stream = self.ctx.pool.connect().await?;
        let mut backend = Backend::new(stream, false, &self.ctx.protocol);
        backend.framer.expect_reply_to(head);
        backend.request_open = true;
        backend.stream.write_all(bytes).await?;
        self.backend = Some(backend);
        Ok(())
    }

    /// The reused backend connection ended (`error`: closed, or reset) before any byte of the
    /// reply to the request in flight: the server closed it as the request crossed (its
    /// keep-alive timeout, a reload), so the request may never have been read. An idempotent
    /// request is sent again, once, on a fresh connection, as nginx and HAProxy do; the answer
    /// is `false` when the request cannot be sent again (the caller answers as before).
    async fn send_again_on_a_fresh_connection(&mut self, error: &str) -> Result<bool, SessionEnd> {
        let Some(flight) = self.in_flight.as_mut() else {
            return Ok(false);
        };
        let Some(head) = flight.retry.take() else {
            return Ok(false);
        };
        // The request as forwarded so far: its head again (with the same request id), then
        // the client's body bytes already sent, which the session keeps until the request is
        // answered.
        let forwarded_end = self.requests.forwarded_end();
        let forwarded_end = flight
            .request_end
            .unwrap_or(forwarded_end)
            .min(forwarded_end);
        let head_range = head.range();
        let Some(body) = self
            .requests
            .forwarded(head_range.start..forwarded_end)
            .and_then(|request| request.get((head_range.end - head_range.start) as usize..))
        else {
            return Ok(false);
        };
        let mut bytes = self.ctx.protocol.encode_request(&head, self.connection_id);
        bytes.extend_from_slice(body);
        tracing::debug!(
            "{}: the reused backend connection ended before any byte of the reply ({error}); \
             sending request {} again on a fresh one",
            self.tuple,
            head.index()
        );
        if let Err(e) = self.write_on_a_fresh_connection(&head, &bytes).await {
            return self
                .backend_failed(&head, false, "connect", &e)
                .await
                .map(|()| true);
        }
        Ok(true)
    }

    /// The backend could not take the request `head` (`what`: connect, write): the proxy
    /// answers it (HTTP: 502), or, when it was to finish a reply the takeover cut, the client
    /// is reset.
    async fn backend_failed(
        &mut self,
        head: &P::RequestHead,
        resuming: bool,
        what: &str,
        error: &io::Error,
    ) -> Result<(), SessionEnd> {
        self.ctx
            .counters
            .backend_errors
            .fetch_add(1, Ordering::Relaxed);
        self.backend = None;
        if resuming {
            return self.abort_resume(&format!("backend {what}: {error}"));
        }
        self.answer_bad_gateway(head.index(), head.range().end, error)
            .await
    }

    async fn answer_bad_gateway(
        &mut self,
        index: u64,
        request_end: u64,
        error: &io::Error,
    ) -> Result<(), SessionEnd> {
        self.close_after_reply = true;
        let detail = format!("the backend cannot be reached: {error}");
        let reply = self
            .ctx
            .protocol
            .own_reply(OwnReply::BackendUnreachable { detail: &detail });
        self.send_reply_piece(index, PieceKind::Final { request_end }, reply)
            .await?;
        let _ = self.client.shutdown().await;
        Err(SessionEnd::Protocol(self.tuple, detail))
    }

    /// Frames the `n` bytes just read into the backend's buffer (0: the backend closed) and
    /// hands complete replies on.
    async fn take_backend_bytes(&mut self, n: usize) -> Result<(), SessionEnd> {
        if n > 0 {
            if let Some(flight) = self.in_flight.as_mut() {
                flight.retry = None;
                if !flight.reply_seen {
                    flight.reply_seen = true;
                    self.ctx
                        .counters
                        .stages
                        .backend
                        .record(flight.sent_at.elapsed());
                }
            }
        }
        let backend = self.backend.as_mut().expect("reading a backend");
        let mut events = Vec::new();
        let closed = n == 0;
        let result = if closed {
            backend.framer.finish(&mut events)
        } else {
            let read = &backend.buffer[backend.buffer.len() - n..];
            backend.framer.feed(read, &mut events)
        };
        if self
            .in_flight
            .as_ref()
            .is_some_and(|flight| flight.continuation.is_some())
        {
            return self.continue_cut_reply(events, result, closed).await;
        }
        for event in events {
            match event {
                ReplyEvent::Head(head) => {
                    if let Some(backend) = self.backend.as_mut() {
                        backend.cuttable = head.range().end;
                    }
                    // A reply that says it is longer than the whole-reply limit is streamed
                    // from its first byte: it would be cut into parts anyway.
                    if let (Some(length), Some(flight)) =
                        (head.declared_length(), self.in_flight.as_mut())
                    {
                        if length > self.ctx.stream_above as u64 {
                            flight.streamed = true;
                        }
                    }
                }
                ReplyEvent::Body { range, .. } => {
                    if let Some(backend) = self.backend.as_mut() {
                        backend.cuttable = range.end;
                    }
                }
                ReplyEvent::Interim(head) => {
                    let piece = self.cut_backend(head.range().end);
                    let index = self.in_flight.as_ref().map_or(head.index(), |f| f.index);
                    self.send_reply_piece(index, PieceKind::Interim, piece)
                        .await?;
                }
                ReplyEvent::End {
                    range,
                    closes_connection,
                    ..
                } => {
                    let piece = self.cut_backend(range.end);
                    let flight = self.in_flight.take().ok_or_else(|| {
                        SessionEnd::Protocol(self.tuple, "a reply with no request".into())
                    })?;
                    let early = flight.request_end.is_none();
                    let request_end = match flight.request_end {
                        Some(end) => end,
                        None => {
                            // The backend answered before the request's end (an early 413,
                            // say): the rest of the request has no boundary we can trust.
                            self.ctx
                                .counters
                                .early_replies
                                .fetch_add(1, Ordering::Relaxed);
                            self.requests.received_end()
                        }
                    };
                    // The server ends the connection after this reply (or the client asked it
                    // to, or the request's rest has no boundary to trust): so does the client's,
                    // and requests pipelined behind it go unanswered, as without the proxy.
                    // Decided before the reply is logged, so that a backup taking over does
                    // not answer them either.
                    if early || !flight.keep_alive || closes_connection {
                        self.close_after_reply = true;
                    }
                    self.send_reply_piece(flight.index, PieceKind::Final { request_end }, piece)
                        .await?;
                    self.ctx
                        .counters
                        .stages
                        .request
                        .record(flight.sent_at.elapsed());
                    self.ctx.counters.replies.fetch_add(1, Ordering::Relaxed);
                    if closes_connection || early {
                        // After an early reply the server still waits for the rest of the
                        // body: nothing more may be written on this connection.
                        self.backend = None;
                        break;
                    }
                    if let Some(backend) = self.backend.as_mut() {
                        backend.reused = true;
                    }
                }
                ReplyEvent::Discarded { range } => {
                    let _ = self.cut_backend(range.end);
                }
                ReplyEvent::Tunnel { .. } => {
                    self.ctx
                        .counters
                        .tunnels_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(SessionEnd::Protocol(
                        self.tuple,
                        "the backend switched protocols; tunnels are not carried".into(),
                    ));
                }
                ReplyEvent::Framing { .. } => {}
            }
        }
        if let Err(error) = result {
            self.ctx
                .counters
                .backend_errors
                .fetch_add(1, Ordering::Relaxed);
            if self.in_flight.as_ref().is_some_and(|f| f.reply_started) {
                return self.abort_reply(&error.to_string());
            }
            return Err(SessionEnd::Protocol(self.tuple, error.to_string()));
        }
        if closed {
            self.backend = None;
            if let Some(refusal) = self.refusal.take() {
                if self.in_flight.as_ref().is_some_and(|f| !f.reply_started) {
                    return self.refuse_ourselves(refusal.error).await;
                }
            }
            if let Some(flight) = self.in_flight.take() {
                if self.client_done && !flight.reply_started {
                    // The client finished without waiting for a reply, and the server closed
                    // without one: the client sees the close, as it would without the proxy.
                    return Ok(());
                }
                self.ctx
                    .counters
                    .backend_errors
                    .fetch_add(1, Ordering::Relaxed);
                if flight.reply_started {
                    return self.abort_reply("the backend closed the connection inside a reply");
                }
                let error = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backend closed the connection before its reply ended",
                );
                return self
                    .answer_bad_gateway(
                        flight.index,
                        flight.request_end.unwrap_or(self.requests.received_end()),
                        &error,
                    )
                    .await;
            }
            return Ok(());
        }
        // A long reply goes out in pieces rather than held whole, each cut where its body
        // (not its chunk framing) stands, so a takeover can finish it by range.
        if let (Some(backend), Some(flight)) = (self.backend.as_ref(), self.in_flight.as_mut()) {
            let outgrown = backend.buffer.len() >= self.ctx.stream_above;
            flight.streamed |= outgrown;
            let ready = backend.cuttable - backend.base;
            if flight.streamed && ready > 0 && (ready >= STREAM_PIECE_BYTES || outgrown) {
                flight.reply_started = true;
                let index = flight.index;
                let end = backend.cuttable;
                let piece = self.cut_backend(end);
                self.send_reply_piece(index, PieceKind::Partial, piece)
                    .await?;
            }
        }
        Ok(())
    }

    /// Frames the backend's answer to the range request that finishes a reply the takeover
    /// cut: only its payload reaches the client, in the client's framing, after the cut.
    async fn continue_cut_reply(
        &mut self,
        events: Vec<ReplyEvent<P::ReplyHead>>,
        framed: Result<(), P::Error>,
        closed: bool,
    ) -> Result<(), SessionEnd> {
        let Some(mut continuation) = self
            .in_flight
            .as_mut()
            .and_then(|flight| flight.continuation.take())
        else {
            return Ok(());
        };
        let mut out = Vec::new();
        let mut ended = None;
        for event in events {
            let step = match event {
                ReplyEvent::Interim(head) | ReplyEvent::Head(head) => {
                    let _ = self.cut_backend(head.range().end);
                    continuation.head(&head)
                }
                ReplyEvent::Body { range, .. } => {
                    let payload = self.cut_backend(range.end);
                    continuation.payload(&payload, &mut out)
                }
                ReplyEvent::Framing { range, .. } | ReplyEvent::Discarded { range } => {
                    let _ = self.cut_backend(range.end);
                    Ok(())
                }
                ReplyEvent::End {
                    range,
                    closes_connection,
                    ..
                } => {
                    let _ = self.cut_backend(range.end);
                    ended = Some(closes_connection);
                    continuation.end(&mut out)
                }
                ReplyEvent::Tunnel { .. } => {
                    return self.abort_resume("the backend switched protocols");
                }
            };
            if let Err(error) = step {
                return self.abort_resume(&error.to_string());
            }
            if ended.is_some() {
                break;
            }
        }
        if let Err(error) = framed {
            return self.abort_resume(&error.to_string());
        }
        let Some(closes_connection) = ended else {
            if closed {
                return self.abort_resume("the backend closed before the rest was sent");
            }
            let Some(flight) = self.in_flight.as_mut() else {
                return Ok(());
            };
            flight.continuation = Some(continuation);
            let index = flight.index;
            if !out.is_empty() {
                self.send_reply_piece(index, PieceKind::Partial, out)
                    .await?;
            }
            return Ok(());
        };
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        let request_end = flight.request_end.unwrap_or(self.requests.received_end());
        if !flight.keep_alive {
            self.close_after_reply = true;
        }
        self.send_reply_piece(flight.index, PieceKind::Final { request_end }, out)
            .await?;
        let counters = &self.ctx.counters;
        counters.replies.fetch_add(1, Ordering::Relaxed);
        counters.replies_resumed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "{}: the reply cut by the takeover was finished by a range request",
            self.tuple
        );
        if closes_connection || closed {
            self.backend = None;
        }
        Ok(())
    }

    /// A reply cut by the takeover cannot be finished: the client's connection is reset, so
    /// it sees an error instead of a body spliced from two different representations.
    fn abort_resume(&mut self, why: &str) -> Result<(), SessionEnd> {
        self.ctx
            .counters
            .resumes_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "{}: the reply cut by the takeover cannot be finished: {why}",
            self.tuple
        );
        self.reset_client(why)
    }

    /// The backend failed inside a reply whose first part the client has: reset the client's
    /// connection (a reply of our own would land inside that body).
    fn abort_reply(&mut self, why: &str) -> Result<(), SessionEnd> {
        self.ctx
            .counters
            .replies_aborted
            .fetch_add(1, Ordering::Relaxed);
        self.reset_client(why)
    }

    fn reset_client(&mut self, why: &str) -> Result<(), SessionEnd> {
        // Closing with a zero linger sends RST, not FIN.
        if let Err(e) = self.client.set_zero_linger() {
            tracing::debug!("{}: linger: {e}", self.tuple);
        }
        Err(SessionEnd::Protocol(self.tuple, why.to_string()))
    }

    /// The backup that protects this connection is the current one.
    fn protected_now(&self) -> bool {
        let generation = self.protection.generation();
        generation != 0 && generation == self.ctx.gate.generation()
    }

    /// Takes backend bytes up to backend stream offset `end` out of the buffer.
    fn cut_backend(&mut self, end: u64) -> Vec<u8> {
        let backend = self.backend.as_mut().expect("reading a backend");
        let n = ((end - backend.base) as usize).min(backend.buffer.len());
        backend.base += n as u64;
        if n < READ_CHUNK {
            // Copied, so that the buffer keeps its room for the next read.
            let piece = backend.buffer[..n].to_vec();
            backend.buffer.drain(..n);
            return piece;
        }
        // A long piece mostly takes the whole buffer: it moves out, and only what follows the
        // cut (the start of the next reply, or chunk framing) is copied.
        let rest = backend.buffer.split_off(n);
        std::mem::replace(&mut backend.buffer, rest)
    }

    /// Logs `bytes` in frames the backup accepts (at most [`MAX_PIECE_BYTES`] each, all but
    /// the last as parts of a reply that goes on), starting after the pieces that wait to be
    /// written. The waiter of the last frame says when the backup holds all of them (it
    /// acknowledges in order); `None` when nothing was logged: no backup protects the
    /// connection now, or the link went away.
    fn log_in_frames(
        &self,
        request_index: u64,
        kind: PieceKind,
        bytes: &[u8],
    ) -> Option<AckWaiter> {
        self.log_in_frames_at(self.reply.next_piece_offset(), request_index, kind, bytes)
    }

    /// The pieces read before a hand-over and not yet written follow it in the new backup's
    /// log, as they would have had they been read after it: the hand-over says where the reply
    /// stands at the end of the bytes released for writing, and they start there. None of them
    /// is logged on this link yet (the connection was not protected by it), and the client gets
    /// each only once the backup holds it. Waiting for them to be written first instead would
    /// put a hand-over off for as long as a slow client takes to read a window of them.
    fn log_waiting_pieces(&mut self) {
        let acks: Vec<Option<AckWaiter>> = self
            .reply
            .waiting()
            .map(|(from, piece)| {
                let log = &piece.meta;
                self.log_in_frames_at(from, log.request_index, log.kind, &piece.bytes)
            })
            .collect();
        let now = Instant::now();
        for ((_, piece), ack) in self.reply.waiting_mut().zip(acks) {
            piece.meta.ack = ack;
            piece.meta.logged_at = now;
        }
    }

    fn log_in_frames_at(
        &self,
        from: u64,
        request_index: u64,
        kind: PieceKind,
        bytes: &[u8],
    ) -> Option<AckWaiter> {
        if !self.protected_now() {
            return None;
        }
        let mut last = None;
        for (range, kind) in frame_pieces(bytes.len(), kind) {
            last = Some(self.ctx.gate.log(Piece {
                tuple: self.tuple,
                request_index,
                reply_offset: from + range.start as u64,
                kind,
                bytes: &bytes[range],
                // Decided before the reply's last piece is sent (see `take_backend_bytes`).
                closes_after: self.close_after_reply && matches!(kind, PieceKind::Final { .. }),
            })?);
        }
        last
    }

    /// Logs a reply piece and writes it to the client once the backup holds it. A part of a
    /// streamed reply waits in `reply` for that while the session reads on; any other piece
    /// goes out after those before it, and is written when this returns.
    async fn send_reply_piece(
        &mut self,
        request_index: u64,
        kind: PieceKind,
        bytes: Vec<u8>,
    ) -> Result<(), SessionEnd> {
        if kind != PieceKind::Partial {
            self.write_waiting_pieces().await?;
        }
        let ack = self.log_in_frames(request_index, kind, &bytes);
        self.reply.push(WaitingPiece {
            bytes,
            meta: PieceLog {
                request_index,
                kind,
                ack,
                logged_at: Instant::now(),
            },
        });
        if kind == PieceKind::Partial {
            return Ok(());
        }
        self.release_oldest().await
    }

    /// Writes every logged piece still waiting, in order.
    async fn write_waiting_pieces(&mut self) -> Result<(), SessionEnd> {
        while self.reply.has_waiting() {
            self.release_oldest().await?;
        }
        Ok(())
    }

    /// Waits until the backup holds the oldest waiting piece (or is lost), then writes it.
    async fn release_oldest(&mut self) -> Result<(), SessionEnd> {
        let held = waiting_piece_held(self.reply.front_mut()).await;
        self.release_front(held).await
    }

    /// How long the backend's buffer should be for the next read: a streamed reply's piece
    /// grows in it to its full size without being moved.
    fn backend_read_room(&self) -> usize {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|flight| flight.streamed)
        {
            STREAM_PIECE_BYTES as usize + 2 * READ_CHUNK
        } else {
            READ_CHUNK
        }
    }

    /// Writes the oldest waiting piece to the client: at once if the backup holds it
    /// (`held` is `Some(true)`), under this node's lease if the backup was lost first
    /// (`Some(false)`) or never given it (`None`).
    async fn release_front(&mut self, held: Option<bool>) -> Result<(), SessionEnd> {
        let WaitingPiece {
            bytes,
            meta:
                PieceLog {
                    request_index,
                    kind,
                    logged_at,
                    ..
                },
        } = self
            .reply
            .release_front()
            .expect("a piece waits when one is released");
        let logged = held == Some(true);
        if logged {
            let stages = &self.ctx.counters.stages;
            stages.backup_hold.record(logged_at.elapsed());
        }
        if held == Some(false) {
            self.ctx
                .counters
                .replies_unprotected
                .fetch_add(1, Ordering::Relaxed);
        }
        // Unlogged bytes go out only under this node's lease: told late that the backup is
        // gone, it may already be the primary that carries this connection on.
        if !logged && !self.ctx.lease.held_now() {
            self.ctx
                .counters
                .replies_fenced
                .fetch_add(1, Ordering::Relaxed);
            self.ctx.lease.held().await;
        }
        // Where the reply stands after this piece, for a backup that adopts the connection.
        match kind {
            PieceKind::Partial => {
                let protocol = &self.ctx.protocol;
                let reply = self
                    .client_reply
                    .get_or_insert_with(|| protocol.begin_partial_reply());
                protocol.feed_partial_reply(reply, &bytes);
            }
            PieceKind::Final { request_end } => {
                self.client_reply = None;
                self.requests.answered(request_index, request_end);
            }
            PieceKind::Interim => {}
        }
        if self.trace_first_reply && matches!(kind, PieceKind::Final { .. }) {
            self.trace_first_reply = false;
            tracing::debug!(
                "{}: first reply after resuming (request {request_index}) goes out, reply \
                 offset {}",
                self.tuple,
                self.reply.released_end()
            );
        }
        self.ctx
            .counters
            .reply_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let released_at = Instant::now();
        self.write_reply_bytes(bytes).await?;
        self.ctx
            .counters
            .stages
            .client_write
            .record(released_at.elapsed());
        Ok(())
    }

    /// Writes the reply bytes released last, and keeps them until the client
    /// acknowledges them: a backup that joins later and adopts the connection starts its log
    /// with those the client lacks. Logged ones too (the backup that holds them may be gone by
    /// then), so a connection can be adopted wherever its reply stands. The bytes the kernel
    /// holds in its send queue are what this adds, no more.
    async fn write_reply_bytes(&mut self, bytes: Vec<u8>) -> Result<(), SessionEnd> {
        self.write_to_client(&bytes).await?;
        self.reply.written(bytes);
        // Asking the socket costs a system call per reply; small replies are forgotten by the
        // session's idle look (`ACKNOWLEDGED_TRIM_INTERVAL`) or once enough have gathered.
        if self.reply.kept_bytes() >= KEPT_BYTES_BEFORE_TRIM {
            self.forget_acknowledged();
        }
        Ok(())
    }

    /// Writes `bytes` to the client. A download to a slow client takes seconds per piece: a
    /// backup that joins meanwhile adopts the connection between two writes, not at the end.
    async fn write_to_client(&mut self, bytes: &[u8]) -> Result<(), SessionEnd> {
        let mut written = 0;
        while written < bytes.len() {
            tokio::select! {
                biased;
                () = self.adoption.due() => self.try_adoption(Some(bytes)),
                held = wait_for_adoption_ack(self.adoption_ack.as_mut()) => self.adoption_answered(held),
                result = self.client.write(&bytes[written..]) => {
                    let n = result.map_err(|e| SessionEnd::Client(self.tuple, e))?;
                    if n == 0 {
                        return Err(SessionEnd::Client(
                            self.tuple,
                            io::ErrorKind::WriteZero.into(),
                        ));
                    }
                    written += n;
                    self.reply.sent_bytes(n);
                }
            }
        }
        Ok(())
    }
}

/// How often a session whose client has not acknowledged the reply bytes it keeps looks again.
const ACKNOWLEDGED_TRIM_INTERVAL: Duration = Duration::from_millis(50);
/// A session that keeps this many written reply bytes asks the socket which its client has
/// acknowledged after its next write: bounds what a busy connection (never idle for
/// `ACKNOWLEDGED_TRIM_INTERVAL`) keeps beyond its socket's send queue.
const KEPT_BYTES_BEFORE_TRIM: u64 = 32 * 1024;

/// When a session offers its connection to a backup that joined after it opened: at once when
/// the gate's adoption generation changes or the backup disowns sessions, and again later when
/// a hand-over had to wait.
struct AdoptionTrigger {
    notice: Option<watch::Receiver<u64>>,
    disownings: watch::Receiver<u64>,
    retry_at: Option<tokio::time::Instant>,
    backoff: Duration,
}

impl AdoptionTrigger {
    fn new(
        notice: Option<watch::Receiver<u64>>,
        disownings: watch::Receiver<u64>,
    ) -> AdoptionTrigger {
        AdoptionTrigger {
            // A backup may have joined before the session subscribed: it looks once at once.
            retry_at: notice.is_some().then(tokio::time::Instant::now),
            notice,
            disownings,
            backoff: ADOPTION_RETRY_FIRST,
        }
    }

    /// Resolves when the session should try a hand-over.
    async fn due(&mut self) {
        let retry_at = self.retry_at;
        let retry = async move {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let notice = async {
            match self.notice.as_mut() {
                Some(notice) => {
                    if notice.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let disowning = async {
            if self.disownings.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = retry => {}
            () = notice => {}
            () = disowning => {}
        }
        self.retry_at = None;
    }

    /// The hand-over had to wait: try again after a while, longer each time.
    fn later(&mut self) {
        self.retry_at = Some(tokio::time::Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(ADOPTION_RETRY_MAX);
    }

    /// Nothing to do until the adoption generation changes again.
    fn settled(&mut self) {
        self.retry_at = None;
        self.backoff = ADOPTION_RETRY_FIRST;
    }
}

/// A hand-over sent to the backup and not yet answered.
struct PendingAdoption {
    ack: AckWaiter,
    /// The link generation it was sent on, which protects the session once the backup holds it.
    generation: u64,
}

/// How a reply piece waiting to be written was logged (or not: no backup protects the
/// connection).
struct PieceLog {
    request_index: u64,
    kind: PieceKind,
    /// Resolves once the backup holds the piece; `None` when it was not logged.
    ack: Option<AckWaiter>,
    logged_at: Instant,
}

/// Resolves with whether the backup holds `piece` (`None`: it was never logged); never
/// without a piece.
async fn waiting_piece_held(piece: Option<&mut WaitingPiece<PieceLog>>) -> Option<bool> {
    match piece.map(|piece| piece.meta.ack.as_mut()) {
        Some(Some(ack)) => Some(ack.held().await),
        Some(None) => None,
        None => std::future::pending().await,
    }
}

/// Resolves with the backup's answer to a hand-over; never without one.
async fn wait_for_adoption_ack(pending: Option<&mut PendingAdoption>) -> bool {
    match pending {
        Some(pending) => pending.ack.held().await,
        None => std::future::pending().await,
    }
}

/// How a reply piece of `len` bytes travels to the backup: frames of at most
/// [`MAX_PIECE_BYTES`], the last of the piece's own kind and the others parts of a reply that
/// goes on. An empty piece is one empty frame (a reply may end with no byte).
fn frame_pieces(
    len: usize,
    kind: PieceKind,
) -> impl Iterator<Item = (std::ops::Range<usize>, PieceKind)> {
    let frames = len.div_ceil(MAX_PIECE_BYTES).max(1);
    (0..frames).map(move |i| {
        let start = i * MAX_PIECE_BYTES;
        let end = (start + MAX_PIECE_BYTES).min(len);
        let kind = if i + 1 == frames {
            kind
        } else {
            PieceKind::Partial
        };
        (start..end, kind)
    })
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Reads the backend into the end of its buffer, where the reply's bytes are framed and cut
/// into pieces without being copied again; the buffer is made `room` long, and at least a
/// read longer. Cancel-safe, like `read_buf`.
async fn read_backend_stream<P: ExchangeFramer>(
    backend: Option<&mut Backend<P>>,
    room: usize,
) -> io::Result<usize> {
    match backend {
        Some(backend) => {
            let buffer = &mut backend.buffer;
            buffer.reserve(room.saturating_sub(buffer.len()).max(READ_CHUNK));
            backend.stream.read_buf(buffer).await
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINAL: PieceKind = PieceKind::Final { request_end: 99 };

    #[test]
    fn a_piece_within_the_frame_limit_is_one_frame_of_its_own_kind() {
        let frames: Vec<_> = frame_pieces(MAX_PIECE_BYTES, FINAL).collect();
        assert_eq!(frames, vec![(0..MAX_PIECE_BYTES, FINAL)]);
        let frames: Vec<_> = frame_pieces(0, FINAL).collect();
        assert_eq!(frames, vec![(0..0, FINAL)], "a reply may end with no byte");
    }

    #[test]
    fn a_longer_piece_goes_as_parts_and_ends_with_its_own_kind() {
        let len = 2 * MAX_PIECE_BYTES + 1;
        let frames: Vec<_> = frame_pieces(len, FINAL).collect();
        assert_eq!(
            frames,
            vec![
                (0..MAX_PIECE_BYTES, PieceKind::Partial),
                (MAX_PIECE_BYTES..2 * MAX_PIECE_BYTES, PieceKind::Partial),
                (2 * MAX_PIECE_BYTES..len, FINAL),
            ]
        );
        let frames: Vec<_> = frame_pieces(MAX_PIECE_BYTES + 1, PieceKind::Partial).collect();
        assert!(frames.iter().all(|(_, kind)| *kind == PieceKind::Partial));
        assert_eq!(frames.last().map(|(r, _)| r.end), Some(MAX_PIECE_BYTES + 1));
    }
}
