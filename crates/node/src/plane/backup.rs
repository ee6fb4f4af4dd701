//! Duplex: the backup's side. It receives every client frame first (ingress logger on a packet
//! socket), logs it in the connection image, and only then forwards it to the primary (I1); it
//! logs the primary's replies and acknowledges them (I2). At takeover the frozen logs become the
//! resume plans.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use steadfast_core::http::Http1;
use steadfast_core::image::{
    parse_client_frame, tcp_checksum_fixup, tcp_checksum_is_valid, AckProbe, ConnectionImage,
    ConnectionTable, FourTuple, OpenedCheck, TableLimits, TcpOptions, Tracking,
    ETHERNET_HEADER_LEN,
};
use steadfast_core::replication_seal::{self, LinkEnd, Sealer};
use steadfast_core::replication_wire::{
    self, handshake_proof, verify_proof, AdoptedStream, ConnectionOptions, FrameReader,
    LinkAttempt, ReplicationFrame, NONCE_LEN,
};
use steadfast_core::reply_log::{AdoptedConnection, ReplicaLog};
use steadfast_core::stream_framer::StreamFramer;
use steadfast_core::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Peer, PlaneSettings, PlaneShared};

/// Largest IP packet forwarded as one frame (the lab's and most LANs' MTU).
const FORWARD_MTU: usize = 1500;
/// How long the logger sleeps in poll(): bounds how late a freeze is noticed.
const LOGGER_POLL_MS: i32 = 2;
/// Frames logged under one hold of the state lock before they are forwarded: bounds both the
/// lock's hold and the delay of a batch's first frame.
const LOGGER_BATCH: usize = 256;
/// How often the logger reads the ring's drop statistics (a system call each time).
const RING_STATS_INTERVAL: Duration = Duration::from_millis(100);

/// What the backup holds for the connections it protects.
#[derive(Default)]
pub struct BackupState {
    pub table: Option<ConnectionTable>,
    pub replica: ReplicaLog,
    /// When the last frame of each connection was logged: the primary's timestamp clock has
    /// run on since the client's last TSecr, and the rebuilt clock must not be behind it.
    pub last_seen: HashMap<FourTuple, Instant>,
    pub primary_mac: Option<[u8; 6]>,
    /// Set when the primary says it protects every connection it accepts (its `Announce`):
    /// before that the logger takes no client frame and answers no ARP, so that every image
    /// it builds from a SYN is of a connection the primary reports before replying.
    pub announced: bool,
    /// The options the primary's kernel negotiated for the latest connection it reported: the
    /// template for a connection it accepted but never reported.
    pub template: Option<ConnectionOptions>,
    /// The replication stream these logs belong to (0: none). A stream whose number is not
    /// this one was superseded (a takeover froze the logs, or the primary connected anew) and
    /// must not acknowledge anything more: its primary would send replies nobody holds.
    pub stream: u64,
    /// Whose attempt that stream is: an earlier attempt of the same primary that completes
    /// later is refused.
    pub link: Option<(NodeId, LinkAttempt)>,
    /// The bytes of hand-overs under way, until their `Adopt` frame arrives.
    pub adopting: HashMap<FourTuple, StagedAdoption>,
    adopting_bytes: usize,
}

/// Bytes of a connection the primary is handing over, by stream.
#[derive(Debug, Default)]
pub struct StagedAdoption {
    request: Vec<u8>,
    reply: Vec<u8>,
}

/// What the primary may stage for hand-overs at once: it sends at most 64 MiB of unanswered
/// request and a few reply pieces per connection, connection after connection.
const MAX_STAGED_ADOPTION_BYTES: usize = 512 * 1024 * 1024;

impl BackupState {
    fn fresh(primary_mac: Option<[u8; 6]>, limits: TableLimits) -> BackupState {
        BackupState {
            table: Some(ConnectionTable::new(limits)),
            replica: ReplicaLog::new(),
            last_seen: HashMap::new(),
            primary_mac,
            announced: false,
            template: None,
            stream: 0,
            link: None,
            adopting: HashMap::new(),
            adopting_bytes: 0,
        }
    }

    /// Drops what was staged for a hand-over of `tuple`.
    fn unstage(&mut self, tuple: &FourTuple) -> Option<StagedAdoption> {
        let staged = self.adopting.remove(tuple)?;
        self.adopting_bytes -= staged.request.len() + staged.reply.len();
        Some(staged)
    }
}

/// Numbers the replication streams (from 1; 0 means none).
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// A replication stream whose logs are no longer this backup's.
#[derive(Debug, thiserror::Error)]
#[error("the replication stream was superseded (a takeover froze its logs, or the primary connected anew): nothing more is acknowledged")]
struct Superseded;

/// The logs as they were when forwarding stopped, for the takeover.
pub struct Frozen {
    pub state: BackupState,
    pub at: Instant,
}

struct Logger {
    stop: Arc<AtomicBool>,
    /// Cleared when the primary is gone: the logger keeps logging (the takeover's
    /// acknowledgement probes are answered through it) but forwards nothing more.
    forward: Arc<AtomicBool>,
    /// Set at the freeze: client frames are held (the VIP is not local yet, the kernel drops
    /// its own copy) instead of logged.
    capture: Arc<AtomicBool>,
    /// Set once the rebuilt sockets are live: the held frames are handed to the local stack
    /// and the logger ends.
    release: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// How long a connecting primary has to prove the group key.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the takeover waits at most for the clients' answers to its acknowledgement probes
/// (it goes on as soon as all have answered: on a LAN within a few milliseconds). Not shorter:
/// a client rebuilt from an image that lags what it acknowledged by more than the first flight
/// of the rebuilt socket never gets another byte. Its acknowledgements then lie beyond
/// everything the socket has sent, and the kernel drops such segments, the client's requests
/// with them (RFC 9293 3.10.7.4), while the socket waits for an acknowledgement of what it sent.
/// On a loaded host the answers sit in this node's capture queue for tens of milliseconds (CI:
/// 0 of 47 counted within 5 ms, and 6 connections stalled for good).
const PROBE_WAIT: Duration = Duration::from_millis(100);

pub struct BackupPlane {
    settings: PlaneSettings,
    shared: Arc<PlaneShared>,
    mac: [u8; 6],
    state: Arc<Mutex<BackupState>>,
    epoch: Arc<AtomicU64>,
    logger: Arc<Mutex<Option<Logger>>>,
    /// The primary this node protects, by the election's view; a connecting primary with
    /// another id is still accepted if its epoch is not older (the election may lag).
    primary: Arc<Mutex<Option<Peer>>>,
    protecting: Arc<AtomicBool>,
    /// The backup's announcement of the VIP, called off when it stops protecting.
    announcer: Arc<Mutex<Option<crate::announce::Announcer>>>,
    /// The number of the replication stream the state belongs to: a stream that another
    /// replaced hangs up at once, so its primary links again rather than believe itself
    /// protected by a backup that no longer logs for it.
    current_stream: Arc<watch::Sender<u64>>,
}

impl BackupPlane {
    pub async fn start(
        settings: &PlaneSettings,
        shared: Arc<PlaneShared>,
        mac: [u8; 6],
        _ifindex: u32,
    ) -> anyhow::Result<BackupPlane> {
        let bind = SocketAddr::V4(SocketAddrV4::new(
            settings.local_address,
            settings.replication_port,
        ));
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding the replication listener {bind}"))?;
        let plane = BackupPlane {
            settings: settings.clone(),
            shared,
            mac,
            state: Arc::new(Mutex::new(BackupState::default())),
            epoch: Arc::new(AtomicU64::new(0)),
            logger: Arc::new(Mutex::new(None)),
            primary: Arc::new(Mutex::new(None)),
            protecting: Arc::new(AtomicBool::new(false)),
            announcer: Arc::new(Mutex::new(None)),
            current_stream: Arc::new(watch::Sender::new(0)),
        };
        tokio::spawn(plane.clone_parts().accept_loop(listener));
        Ok(plane)
    }

    fn clone_parts(&self) -> BackupParts {
        BackupParts {
            settings: self.settings.clone(),
            shared: self.shared.clone(),
            mac: self.mac,
            state: self.state.clone(),
            epoch: self.epoch.clone(),
            logger: self.logger.clone(),
            protecting: self.protecting.clone(),
            announcer: self.announcer.clone(),
            current_stream: self.current_stream.clone(),
        }
    }

    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.fetch_max(epoch, Ordering::Relaxed);
    }

    /// Calls off what is left of this node's announcement as backup.
    pub fn stop_announcing(&self) {
        if let Some(announcer) = self.announcer.lock().expect("announcer lock").as_mut() {
            announcer.cancel();
        }
    }

    /// This node is a backup now; the primary connects to it.
    pub fn protect(&mut self, epoch: u64, primary: Option<Peer>) {
        if *self.primary.lock().expect("primary lock") != primary {
            self.stop_announcing();
        }
        self.set_epoch(epoch);
        *self.primary.lock().expect("primary lock") = primary;
        self.protecting.store(true, Ordering::Relaxed);
    }

    pub fn stop_logging(&mut self) {
        self.protecting.store(false, Ordering::Relaxed);
        self.stop_announcing();
        stop_logger(&self.logger);
    }

    /// The first step of a takeover: stops forwarding (logging goes on) and asks every client
    /// whose image may lag what it acknowledged (see [`AckProbe`]); returns once each answered
    /// or [`PROBE_WAIT`] passed. Returns (probes sent, answers logged).
    pub fn refresh_acknowledgements(&self) -> (usize, usize) {
        {
            let logger = self.logger.lock().expect("logger lock");
            match logger.as_ref() {
                Some(logger) if !logger.thread.is_finished() => {
                    logger.forward.store(false, Ordering::Relaxed);
                }
                _ => return (0, 0),
            }
        }
        let now = Instant::now();
        let probes: Vec<(FourTuple, AckProbe)> = {
            let state = self.state.lock().expect("backup state lock");
            let Some(table) = state.table.as_ref() else {
                return (0, 0);
            };
            table
                .iter()
                .filter_map(|image| {
                    let tuple = image.tuple();
                    let conn = state.replica.get(&tuple)?;
                    // Only the client of a reply still in flight can be ahead of the log.
                    if conn.reply_end() <= image.client_acked_reply_bytes() {
                        return None;
                    }
                    let idle = state
                        .last_seen
                        .get(&tuple)
                        .map_or(Duration::ZERO, |seen| now.saturating_duration_since(*seen));
                    let tsval = conn
                        .options
                        .timestamps
                        .then(|| steadfast_core::image::rebuilt_tsval(image.last_tsecr(), idle));
                    AckProbe::for_image(image, tsval).map(|probe| (tuple, probe))
                })
                .collect()
        };
        if probes.is_empty() {
            return (0, 0);
        }
        let sent_at = Instant::now();
        if !super::probes::send_probes(&probes, "clients for their acknowledgements") {
            return (0, 0);
        }
        let deadline = sent_at + PROBE_WAIT;
        loop {
            let answered = {
                let state = self.state.lock().expect("backup state lock");
                probes
                    .iter()
                    .filter(|(tuple, _)| state.last_seen.get(tuple).is_some_and(|t| *t > sent_at))
                    .count()
            };
            if answered == probes.len() || Instant::now() >= deadline {
                return (probes.len(), answered);
            }
            std::thread::sleep(Duration::from_micros(300));
        }
    }

    /// Hands over the logs (no frame is logged or forwarded after this returns). The logger
    /// goes on holding the client frames that arrive until [`Self::release_held_frames`]:
    /// between the freeze and the moment the rebuilt sockets are live the kernel drops them,
    /// and a client resends a lone lost segment only after 200 ms or more.
    pub fn freeze(&mut self) -> Frozen {
        self.protecting.store(false, Ordering::Relaxed);
        // The logger checks its capture flag under the state lock before it logs or forwards
        // a batch: once the state is taken here it neither changes it nor forwards anything.
        if let Some(logger) = self.logger.lock().expect("logger lock").as_ref() {
            logger.capture.store(true, Ordering::Relaxed);
        }
        let state = std::mem::take(&mut *self.state.lock().expect("backup state lock"));
        self.shared
            .protected_connections
            .store(0, Ordering::Relaxed);
        Frozen {
            state,
            at: Instant::now(),
        }
    }
}

impl BackupPlane {
    /// The takeover's last step, once the rebuilt sockets are live: the frames held since the
    /// freeze go to the local stack, and the logger ends (without waiting for it).
    pub fn release_held_frames(&mut self) {
        if let Some(logger) = self.logger.lock().expect("logger lock").take() {
            logger.release.store(true, Ordering::Relaxed);
        }
    }
}

fn stop_logger(logger: &Mutex<Option<Logger>>) {
    let running = logger.lock().expect("logger lock").take();
    if let Some(logger) = running {
        logger.stop.store(true, Ordering::Relaxed);
        let _ = logger.thread.join();
    }
}

/// The parts of the backup plane its tasks share.
#[derive(Clone)]
struct BackupParts {
    settings: PlaneSettings,
    shared: Arc<PlaneShared>,
    mac: [u8; 6],
    state: Arc<Mutex<BackupState>>,
    epoch: Arc<AtomicU64>,
    logger: Arc<Mutex<Option<Logger>>>,
    protecting: Arc<AtomicBool>,
    announcer: Arc<Mutex<Option<crate::announce::Announcer>>>,
    current_stream: Arc<watch::Sender<u64>>,
}

impl BackupParts {
    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("replication listener: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let parts = self.clone();
            tokio::spawn(async move {
                if let Err(e) = parts.serve_primary(stream, from).await {
                    tracing::warn!("replication stream from {from}: {e:#}");
                }
            });
        }
    }

    async fn serve_primary(self, mut stream: TcpStream, from: SocketAddr) -> anyhow::Result<()> {
        let known = self
            .settings
            .members
            .iter()
            .find(|(&id, &addr)| {
                id != self.settings.node_id && SocketAddr::from((addr, 0)).ip() == from.ip()
            })
            .map(|(&id, _)| id);
        let Some(peer_id) = known else {
            self.shared
                .counters
                .handshakes_refused
                .fetch_add(1, Ordering::Relaxed);
            anyhow::bail!("{from} is not a member of the group");
        };
        if !self.protecting.load(Ordering::Relaxed) {
            anyhow::bail!("node {peer_id} wants a backup, but this node is not one now");
        }
        stream.set_nodelay(true)?;
        super::bound_replication_stalls(&stream, self.settings.replication_stall)
            .context("bounding the replication stream's stalls")?;
        let mut reader = FrameReader::new();
        let epoch = self.epoch.load(Ordering::Relaxed);
        // A peer that connects and then says nothing (or half a frame) must not hold a task.
        let (peer_epoch, attempt, mut sealer) = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            handshake(
                &mut stream,
                &mut reader,
                &self.settings,
                peer_id,
                epoch,
                LinkAttempt::NONE,
                &self.shared,
            ),
        )
        .await
        {
            Ok(result) => result?,
            Err(_) => {
                self.shared
                    .counters
                    .handshakes_refused
                    .fetch_add(1, Ordering::Relaxed);
                anyhow::bail!(
                    "node {peer_id} did not finish the handshake within {HANDSHAKE_TIMEOUT:?}"
                );
            }
        };
        if peer_epoch < epoch {
            self.shared
                .counters
                .replication_old_epoch
                .fetch_add(1, Ordering::Relaxed);
            anyhow::bail!("node {peer_id} speaks for epoch {peer_epoch}, older than {epoch}");
        }
        self.epoch.fetch_max(peer_epoch, Ordering::Relaxed);
        let peer_ip = match from {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => anyhow::bail!("IPv6 peers are not supported"),
        };
        let primary_mac = neighbour_mac(peer_ip)
            .with_context(|| format!("finding the MAC of primary {peer_id} ({peer_ip})"))?;
        // Protection starts afresh with this primary: connections it opened before are not
        // protected (it says so in its own status).
        let limits = self.settings.service.table_limits();
        self.shared
            .request_bytes_budget
            .store(limits.max_bytes_held as u64, Ordering::Relaxed);
        let mut fresh = BackupState::fresh(Some(primary_mac), limits);
        fresh.template = local_template(&self.settings.service.interface);
        let stream_number = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
        fresh.stream = stream_number;
        fresh.link = Some((peer_id, attempt));
        {
            // Compared under the lock the state is replaced with, so that of two streams
            // finishing their handshakes at once the newer attempt wins whatever the order.
            let mut state = self.state.lock().expect("backup state lock");
            if let Some((current_primary, current)) = state.link {
                if current_primary == peer_id && attempt.precedes(&current) {
                    drop(state);
                    self.shared
                        .counters
                        .stale_link_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    anyhow::bail!(
                        "node {peer_id}'s link attempt {} arrived after its attempt {}: refused, \
                         the newer stream keeps its logs",
                        attempt.number,
                        current.number
                    );
                }
            }
            *state = fresh;
            self.current_stream.send_replace(stream_number);
        }
        self.ensure_logger()?;
        let mut out = Vec::new();
        replication_wire::encode_sealed(
            &ReplicationFrame::BackupReady { mac: self.mac },
            peer_epoch,
            &mut sealer,
            &mut out,
        )?;
        stream.write_all(&out).await?;
        tracing::info!(
            "protecting primary {peer_id} (epoch {peer_epoch}, stream {})",
            self.settings.protection.label()
        );
        self.take_frames(stream, reader, sealer, peer_epoch, peer_id, stream_number)
            .await
    }

    fn ensure_logger(&self) -> anyhow::Result<()> {
        let mut slot = self.logger.lock().expect("logger lock");
        if slot.as_ref().is_some_and(|l| !l.thread.is_finished()) {
            return Ok(());
        }
        let service = &self.settings.service;
        let filter = steadfast_os::packet_port::IngressFilter {
            vip: service.vip,
            ports: service.ports.clone(),
        };
        let port = steadfast_os::packet_port::PacketPort::open(&service.interface, &filter)
            .with_context(|| format!("opening the ingress logger on {}", service.interface))?;
        let stop = Arc::new(AtomicBool::new(false));
        let forward = Arc::new(AtomicBool::new(true));
        let capture = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let ctx = LoggerContext {
            forward: forward.clone(),
            capture: capture.clone(),
            release: release.clone(),
            held: Vec::new(),
            ring_drops_counted: 0,
            ring_stats_read: Instant::now(),
            clock_origin: Instant::now(),
            forwarded_received_at: Vec::new(),
            port,
            vip: service.vip,
            mac: self.mac,
            state: self.state.clone(),
            shared: self.shared.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("steadfast-logger".into())
            .spawn(move || ctx.run())
            .context("starting the logger thread")?;
        *slot = Some(Logger {
            stop,
            forward,
            capture,
            release,
            thread,
        });
        Ok(())
    }

    /// Logs the primary's frames and acknowledges the replies.
    async fn take_frames(
        &self,
        stream: TcpStream,
        mut reader: FrameReader,
        mut sealer: Sealer,
        epoch: u64,
        primary: NodeId,
        stream_number: u64,
    ) -> anyhow::Result<()> {
        let (mut read_half, mut write_half) = stream.into_split();
        let mut current_stream = self.current_stream.subscribe();
        let mut out = Vec::new();
        let mut unlogged = Vec::new();
        let mut read_at: Option<Instant> = None;
        loop {
            let mut highest_seq = None;
            while let Some((frame_epoch, frame)) = reader
                .next_frame()
                .inspect_err(|e| self.shared.count_unreadable(e))?
            {
                if frame_epoch < epoch {
                    self.shared
                        .counters
                        .replication_old_epoch
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let taken = self
                    .take_frame(frame, stream_number, &mut unlogged)
                    .with_context(|| format!("primary {primary}"))?;
                if let Some(seq) = taken {
                    highest_seq = Some(seq);
                }
            }
            out.clear();
            for tuples in unlogged.chunks(replication_wire::MAX_UNADOPTED_PER_FRAME) {
                replication_wire::encode_sealed(
                    &ReplicationFrame::Unlogged {
                        tuples: tuples.to_vec(),
                    },
                    epoch,
                    &mut sealer,
                    &mut out,
                )?;
            }
            unlogged.clear();
            if let Some(seq) = highest_seq {
                replication_wire::encode_sealed(
                    &ReplicationFrame::Ack { seq },
                    epoch,
                    &mut sealer,
                    &mut out,
                )?;
            }
            if !out.is_empty() {
                write_half.write_all(&out).await?;
                if let (Some(read_at), Some(_)) = (read_at, highest_seq) {
                    self.shared
                        .counters
                        .replication_batch
                        .record(read_at.elapsed());
                }
            }
            // Read where the frames are opened and decoded: a reply piece is not copied on
            // its way there.
            let n = tokio::select! {
                n = read_half.read_buf(reader.receive_buffer(256 * 1024)) => n?,
                _ = current_stream.wait_for(|current| *current != stream_number) => {
                    return Err(Superseded.into());
                }
            };
            if n == 0 {
                anyhow::bail!("the primary closed the replication stream");
            }
            read_at = Some(Instant::now());
        }
    }

    /// Applies one frame; returns the sequence number to acknowledge, if any, and adds to
    /// `unlogged` a connection reported opened whose opening this backup never saw.
    fn take_frame(
        &self,
        frame: ReplicationFrame,
        stream_number: u64,
        unlogged: &mut Vec<FourTuple>,
    ) -> Result<Option<u64>, Superseded> {
        let mut guard = self.state.lock().expect("backup state lock");
        let state = &mut *guard;
        // Checked under the lock the freeze takes the logs with: a frame is either in the
        // logs a takeover uses, or refused and never acknowledged.
        if state.stream != stream_number {
            return Err(Superseded);
        }
        let counters = &self.shared.counters;
        let acknowledge = match frame {
            ReplicationFrame::Opened {
                tuple,
                client_isn,
                options,
            } => {
                state.replica.opened(tuple, client_isn, options);
                state.template = Some(options);
                if let Some(table) = state.table.as_mut() {
                    // A connection whose opening this table did not log (docs/design.md, "the
                    // join") is handed over like one opened before the join; a takeover
                    // before that resets its client.
                    match table.reported_opened(&tuple) {
                        OpenedCheck::Logged => {
                            let negotiated = options.negotiated();
                            if let Err(e) = table.set_negotiated(&tuple, negotiated) {
                                tracing::debug!("opened {tuple}: {e}");
                            }
                        }
                        check => {
                            unlogged.push(tuple);
                            counters.opened_unlogged.fetch_add(1, Ordering::Relaxed);
                            if check == OpenedCheck::HandshakeAround {
                                counters.opened_around.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(
                                    "{tuple}: reported opened, but its handshake ACK went \
                                     around this backup: handed over instead"
                                );
                            } else {
                                tracing::debug!(
                                    "{tuple}: reported opened, never seen opening: unlogged"
                                );
                            }
                        }
                    }
                }
                self.shared
                    .protected_connections
                    .store(state.replica.len() as u64, Ordering::Relaxed);
                None
            }
            ReplicationFrame::Reply {
                seq,
                tuple,
                request_index,
                reply_offset,
                request_end,
                closes_after,
                bytes,
            } => {
                let len = bytes.len() as u64;
                match state.replica.log_reply(
                    &tuple,
                    request_index,
                    reply_offset,
                    request_end,
                    bytes,
                ) {
                    Ok(logged) => {
                        if closes_after {
                            state.replica.closes_after_last_reply(&tuple);
                        }
                        counters.log_bytes.fetch_add(len, Ordering::Relaxed);
                        if request_end.is_some() {
                            counters.replies_logged.fetch_add(1, Ordering::Relaxed);
                        }
                        if let (Some(end), Some(table)) =
                            (logged.consumed_up_to, state.table.as_mut())
                        {
                            if let Err(e) = table.consume_up_to(&tuple, end) {
                                tracing::debug!("{tuple}: {e}");
                            }
                        }
                    }
                    Err(e) => {
                        counters
                            .replication_frames_refused
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("refused a reply piece: {e}");
                    }
                }
                // Acknowledged even when refused: the primary must not stall on a piece this
                // backup will never hold; the connection is then lost at a takeover instead.
                Some(seq)
            }
            ReplicationFrame::Interim {
                seq,
                tuple,
                request_index,
                reply_offset,
                bytes,
            } => {
                counters
                    .log_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if let Err(e) =
                    state
                        .replica
                        .log_interim(&tuple, request_index, reply_offset, bytes)
                {
                    counters
                        .replication_frames_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("refused an interim reply: {e}");
                }
                Some(seq)
            }
            ReplicationFrame::Closed { tuple } => {
                state.replica.closed(&tuple);
                if let Some(table) = state.table.as_mut() {
                    table.remove(&tuple);
                }
                state.last_seen.remove(&tuple);
                state.unstage(&tuple);
                self.shared
                    .protected_connections
                    .store(state.replica.len() as u64, Ordering::Relaxed);
                None
            }
            ReplicationFrame::AdoptBytes {
                tuple,
                stream,
                bytes,
            } => {
                if state.adopting_bytes + bytes.len() > MAX_STAGED_ADOPTION_BYTES {
                    // The hand-over will find its bytes short and be refused: the connection
                    // stays unadopted (reset at a takeover), nothing else is disturbed.
                    counters
                        .replication_frames_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("{tuple}: hand-over bytes beyond what this backup stages");
                    return Ok(None);
                }
                state.adopting_bytes += bytes.len();
                let staged = state.adopting.entry(tuple).or_default();
                match stream {
                    AdoptedStream::Request => staged.request.extend_from_slice(&bytes),
                    AdoptedStream::Reply => staged.reply.extend_from_slice(&bytes),
                }
                None
            }
            ReplicationFrame::Adopt {
                seq,
                tuple,
                client_isn,
                server_isn,
                options,
                client_mss,
                next_request,
                request_offset,
                request_len,
                reply_acked,
                reply_offset,
                timestamp,
                reply_in_progress,
            } => {
                let staged = state.unstage(&tuple).unwrap_or_default();
                if staged.request.len() as u64 != request_len
                    || reply_acked.checked_add(staged.reply.len() as u64) != Some(reply_offset)
                {
                    counters
                        .replication_frames_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "{tuple}: hand-over refused: {} request and {} reply bytes came, it \
                         names {request_len} and {}",
                        staged.request.len(),
                        staged.reply.len(),
                        reply_offset.saturating_sub(reply_acked)
                    );
                    // Acknowledged all the same, like a refused reply piece: the connection is
                    // lost at a takeover instead of the primary stalling.
                    return Ok(Some(seq));
                }
                // The duplex proxy frames HTTP/1.x: its hand-overs carry that framer's progress.
                let reply_in_progress = match reply_in_progress
                    .as_deref()
                    .map(<Http1 as StreamFramer>::decode_progress)
                    .transpose()
                {
                    Ok(progress) => progress,
                    Err(e) => {
                        counters
                            .replication_frames_refused
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("{tuple}: hand-over refused: {e}");
                        return Ok(Some(seq));
                    }
                };
                state.template = Some(options);
                let in_reply = reply_in_progress.is_some();
                state.replica.adopt(AdoptedConnection {
                    tuple,
                    client_isn,
                    options,
                    next_request,
                    request_offset,
                    reply_acked,
                    unacked_reply: staged.reply,
                    reply_in_progress,
                });
                if let Some(table) = state.table.as_mut() {
                    let syn_options = TcpOptions {
                        mss: Some(client_mss),
                        window_scale: options.window_scales.map(|(snd, _)| snd),
                        sack_permitted: options.sack,
                        timestamps: None,
                    };
                    let negotiated = options.negotiated();
                    let mut image = ConnectionImage::adopted(
                        tuple,
                        client_isn,
                        syn_options,
                        server_isn,
                        request_offset,
                        &staged.request,
                        negotiated,
                        table.limits().image,
                    )
                    .with_reply_acked(reply_acked);
                    if let Some(tsval) = timestamp.filter(|_| options.timestamps) {
                        image = image.with_primary_clock(tsval);
                    }
                    let replayed = table.adopt(image);
                    let gap = table.get(&tuple).is_some_and(|image| image.handover_gap());
                    if gap {
                        tracing::warn!(
                            "{tuple}: adopted with client bytes missing (more passed before the \
                             hand-over than this backup keeps): a takeover will reset it"
                        );
                    }
                    tracing::debug!(
                        "{tuple}: adopted ({} request bytes unanswered, reply log from {reply_acked} \
                         to {reply_offset}{}); {replayed} segments that passed before the \
                         hand-over replayed",
                        request_len,
                        if in_reply { ", a streamed reply under way" } else { "" }
                    );
                }
                state.last_seen.insert(tuple, Instant::now());
                counters.adopted.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .protected_connections
                    .store(state.replica.len() as u64, Ordering::Relaxed);
                Some(seq)
            }
            ReplicationFrame::Unadopted { tuples } => {
                if let Some(table) = state.table.as_mut() {
                    table.expect_adoption(&tuples);
                }
                tracing::debug!(
                    "{} connections opened before this backup joined are to be adopted",
                    tuples.len()
                );
                None
            }
            ReplicationFrame::Announce => {
                state.announced = true;
                drop(guard);
                self.announce_as_backup();
                return Ok(None);
            }
            other => {
                counters
                    .replication_frames_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("unexpected {} frame from the primary", other.label());
                None
            }
        };
        publish_bytes_held(&self.shared, state);
        Ok(acknowledge)
    }

    fn announce_as_backup(&self) {
        let service = &self.settings.service;
        let mut announcer = self.announcer.lock().expect("announcer lock");
        if announcer.is_none() {
            match steadfast_os::garp::GarpSender::open(
                interface_index(&service.interface).unwrap_or(0),
                self.mac,
            ) {
                Ok(sender) => *announcer = Some(crate::announce::Announcer::new(sender)),
                Err(e) => {
                    tracing::error!("gratuitous ARP as backup on {}: {e}", service.interface);
                    return;
                }
            }
        }
        if let Some(announcer) = announcer.as_mut() {
            let (first, _) =
                announcer.announce(service.vip, service.garp_count, service.garp_spacing);
            if let Err(e) = first {
                tracing::warn!("gratuitous ARP for {} as backup: {e}", service.vip);
            }
        }
    }
}

fn interface_index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// The MAC of a neighbour, from the kernel's ARP table (the replication stream to it has just
/// made the entry).
fn neighbour_mac(ip: Ipv4Addr) -> anyhow::Result<[u8; 6]> {
    let table = std::fs::read_to_string("/proc/net/arp").context("reading /proc/net/arp")?;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 4 && fields[0] == ip.to_string() {
            let mut mac = [0u8; 6];
            let parts: Vec<&str> = fields[3].split(':').collect();
            if parts.len() != 6 {
                continue;
            }
            for (slot, part) in mac.iter_mut().zip(parts) {
                *slot = u8::from_str_radix(part, 16)
                    .with_context(|| format!("/proc/net/arp: bad MAC {:?}", fields[3]))?;
            }
            if mac != [0; 6] {
                return Ok(mac);
            }
        }
    }
    anyhow::bail!("no complete ARP entry for {ip} in /proc/net/arp")
}

/// Both ends: `Hello` with a fresh nonce, then a `Proof` over both nonces. Returns the epoch the
/// peer spoke in, its link attempt, and the sealer of this end's frames from now on; `reader`
/// opens the peer's sealed frames from now on.
pub async fn handshake(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    settings: &PlaneSettings,
    expected_peer: NodeId,
    epoch: u64,
    attempt: LinkAttempt,
    shared: &PlaneShared,
) -> anyhow::Result<(u64, LinkAttempt, Sealer)> {
    let refused = || {
        shared
            .counters
            .handshakes_refused
            .fetch_add(1, Ordering::Relaxed)
    };
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|e| anyhow::anyhow!("drawing a nonce: {e}"))?;
    let mut out = Vec::new();
    replication_wire::encode(
        &ReplicationFrame::Hello {
            node: settings.node_id,
            nonce,
            attempt,
            protection: settings.protection,
        },
        epoch,
        &mut out,
    );
    stream.write_all(&out).await?;
    let (peer_epoch, hello) = read_handshake_frame(stream, reader, shared).await?;
    let ReplicationFrame::Hello {
        node,
        nonce: peer_nonce,
        attempt: peer_attempt,
        protection: peer_protection,
    } = hello
    else {
        refused();
        anyhow::bail!("expected a hello, got {}", hello.label());
    };
    if node != expected_peer {
        refused();
        anyhow::bail!("node {expected_peer}'s address says it is node {node}");
    }
    if peer_protection != settings.protection {
        refused();
        anyhow::bail!(
            "node {node} wants its replication stream {} and this node wants it {}: set \
             group.replication_encryption alike on every member",
            peer_protection.label(),
            settings.protection.label()
        );
    }
    out.clear();
    replication_wire::encode(
        &ReplicationFrame::Proof {
            mac: handshake_proof(
                &settings.key,
                settings.node_id,
                attempt,
                &nonce,
                &peer_nonce,
            ),
        },
        epoch,
        &mut out,
    );
    stream.write_all(&out).await?;
    let (_, proof) = read_handshake_frame(stream, reader, shared).await?;
    let ReplicationFrame::Proof { mac } = proof else {
        refused();
        anyhow::bail!("expected a proof, got {}", proof.label());
    };
    if !verify_proof(&settings.key, node, peer_attempt, &peer_nonce, &nonce, &mac) {
        refused();
        shared
            .counters
            .forged_frames
            .fetch_add(1, Ordering::Relaxed);
        anyhow::bail!("node {node} failed to prove the group key");
    }
    let (sealer, opener) = replication_seal::channel(
        &settings.key,
        settings.protection,
        &LinkEnd {
            node: settings.node_id,
            nonce,
            attempt,
        },
        &LinkEnd {
            node,
            nonce: peer_nonce,
            attempt: peer_attempt,
        },
    );
    reader.open_with(opener);
    Ok((peer_epoch, peer_attempt, sealer))
}

/// What this node's kernel negotiates with a client that offers everything (window scaling,
/// SACK, timestamps), from `TCP_INFO` of a loopback connection, with the MSS of the service
/// interface's MTU. The members of a group run the same kernel settings, so until the primary
/// has reported a real connection this stands for what its kernel negotiated.
fn local_template(interface: &str) -> Option<ConnectionOptions> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    let _client = std::net::TcpStream::connect(listener.local_addr().ok()?).ok()?;
    let (server, _) = listener.accept().ok()?;
    let info = steadfast_os::repair::tcp_info_options(&server).ok()?;
    let mtu: u16 = std::fs::read_to_string(format!("/sys/class/net/{interface}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(ConnectionOptions {
        window_scales: info.window_scales,
        sack: info.sack,
        timestamps: info.timestamps,
        mss: mtu.saturating_sub(40),
    })
}

/// A handshake frame; a stream that breaks off or does not decode is a refused handshake.
async fn read_handshake_frame(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    shared: &PlaneShared,
) -> anyhow::Result<(u64, ReplicationFrame)> {
    let frame = read_frame(stream, reader).await;
    if frame.is_err() {
        shared
            .counters
            .handshakes_refused
            .fetch_add(1, Ordering::Relaxed);
    }
    frame
}

/// The next whole frame from the stream.
pub async fn read_frame(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
) -> anyhow::Result<(u64, ReplicationFrame)> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(frame) = reader.next_frame()? {
            return Ok(frame);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            anyhow::bail!("the peer closed the replication stream");
        }
        reader.push(&buf[..n]);
    }
}

/// The logger thread: a blocking loop on the packet socket, at normal priority.
struct LoggerContext {
    port: steadfast_os::packet_port::PacketPort,
    vip: Ipv4Addr,
    mac: [u8; 6],
    state: Arc<Mutex<BackupState>>,
    shared: Arc<PlaneShared>,
    stop: Arc<AtomicBool>,
    forward: Arc<AtomicBool>,
    capture: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    /// IP packets held since the freeze.
    held: Vec<Vec<u8>>,
    /// Frames the kernel dropped for a full ring, as already counted in the plane's status,
    /// and when the ring's statistics were last read.
    ring_drops_counted: u64,
    ring_stats_read: Instant,
    /// Time zero of the connection table's clock.
    clock_origin: Instant,
    /// When the kernel received each client frame of this pass that is forwarded (stage
    /// `ingress_wait`).
    forwarded_received_at: Vec<Duration>,
}

impl LoggerContext {
    fn run(mut self) {
        let mut outgoing: Vec<Vec<u8>> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            if self.release.load(Ordering::Relaxed) {
                self.capture_batch(&mut outgoing);
                self.reinject();
                return;
            }
            let mut pollfd = libc::pollfd {
                fd: self.port.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pollfd, 1, LOGGER_POLL_MS) };
            let woken_at = Instant::now();
            self.drain_once(&mut outgoing);
            self.count_ring_drops();
            let forwarding = !outgoing.is_empty();
            // Forward only what the log holds: sending happens after the batch is logged.
            for frame in outgoing.drain(..) {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                match self.port.send(&frame) {
                    Ok(()) => {
                        self.shared
                            .counters
                            .frames_forwarded
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        PlaneShared::count_reason(&self.shared.drop_reasons, "send-failed");
                        tracing::debug!("forwarding a client frame: {e}");
                    }
                }
            }
            if forwarding {
                let counters = &self.shared.counters;
                counters.logger_batch.record(woken_at.elapsed());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                for received_at in self.forwarded_received_at.drain(..) {
                    counters
                        .ingress_wait
                        .record(now.saturating_sub(received_at));
                }
            }
            self.forwarded_received_at.clear();
        }
    }

    /// Client frames the kernel dropped because the logger did not empty its ring in time:
    /// neither logged nor forwarded, the client sends them again after its timeout. Counted
    /// with the other dropped frames (reason `ring-full`).
    fn count_ring_drops(&mut self) {
        if self.ring_stats_read.elapsed() < RING_STATS_INTERVAL {
            return;
        }
        self.ring_stats_read = Instant::now();
        let drops = self.port.counters().ring_drops;
        let new = drops.saturating_sub(self.ring_drops_counted);
        if new == 0 {
            return;
        }
        self.ring_drops_counted = drops;
        self.shared
            .counters
            .frames_dropped
            .fetch_add(new, Ordering::Relaxed);
        PlaneShared::count_reasons(&self.shared.drop_reasons, "ring-full", new);
    }

    /// After the freeze: holds the client's TCP frames (as IP packets) and answers ARP.
    fn capture_batch(&mut self, outgoing: &mut Vec<Vec<u8>>) {
        let (vip, mac) = (self.vip, self.mac);
        let held = &mut self.held;
        let shared = &self.shared;
        self.port.drain(usize::MAX, |frame| {
            if frame.truncated {
                return;
            }
            if let Some(reply) = steadfast_os::packet_port::arp_reply_for(frame.data, vip, mac) {
                shared.counters.arp_replies.fetch_add(1, Ordering::Relaxed);
                outgoing.push(reply);
                return;
            }
            if frame.data.len() <= ETHERNET_HEADER_LEN || frame.data[12..14] != [0x08, 0x00] {
                return;
            }
            if damaged_on_the_wire(&frame) {
                return;
            }
            let mut copy = frame.data.to_vec();
            // Offloaded frames may carry a partial checksum the local stack would refuse.
            if tcp_checksum_fixup(&mut copy).is_ok() {
                held.push(copy.split_off(ETHERNET_HEADER_LEN));
            }
        });
    }

    /// Hands the held frames to the local stack, where the rebuilt sockets now take them.
    fn reinject(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let vip = self.vip;
        let Some(sent) = super::probes::send_raw_packets(
            self.held.drain(..).map(|packet| (packet, vip)),
            "the client frames held during the rebuild (they are lost)",
        ) else {
            return;
        };
        self.shared
            .counters
            .frames_held_at_takeover
            .fetch_add(sent, Ordering::Relaxed);
        tracing::info!(
            "takeover: {sent} client frames held during the rebuild handed to the sockets"
        );
    }

    fn drain_once(&mut self, outgoing: &mut Vec<Vec<u8>>) {
        if self.capture.load(Ordering::Relaxed) {
            self.capture_batch(outgoing);
            return;
        }
        let mut guard = self.state.lock().expect("backup state lock");
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        if self.capture.load(Ordering::Relaxed) {
            drop(guard);
            self.capture_batch(outgoing);
            return;
        }
        let state = &mut *guard;
        let vip = self.vip;
        let mac = self.mac;
        let shared = &self.shared;
        let now = Instant::now();
        let forwarding = self.forward.load(Ordering::Relaxed);
        let announced = state.announced;
        if let Some(table) = state.table.as_mut() {
            table.advance_clock(now.duration_since(self.clock_origin));
        }
        let forwarded_received_at = &mut self.forwarded_received_at;
        self.port.drain(LOGGER_BATCH, |frame| {
            let counters = &shared.counters;
            if frame.truncated {
                counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                PlaneShared::count_reason(&shared.drop_reasons, "truncated");
                return;
            }
            if frame.data.len() >= 14 && frame.data[12..14] == [0x08, 0x06] {
                if announced {
                    if let Some(reply) =
                        steadfast_os::packet_port::arp_reply_for(frame.data, vip, mac)
                    {
                        counters.arp_replies.fetch_add(1, Ordering::Relaxed);
                        outgoing.push(reply);
                    }
                }
                return;
            }
            if !announced {
                // A client whose ARP entry is left from an earlier protection: it resends.
                counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                PlaneShared::count_reason(&shared.drop_reasons, "before-announce");
                return;
            }
            let segment = match parse_client_frame(frame.data) {
                Ok(segment) => segment,
                Err(drop) => {
                    counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                    PlaneShared::count_reason(&shared.drop_reasons, &variant_label(&drop));
                    return;
                }
            };
            if damaged_on_the_wire(&frame) {
                counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                PlaneShared::count_reason(&shared.drop_reasons, "bad-checksum");
                return;
            }
            let Some(table) = state.table.as_mut() else {
                return;
            };
            let payload = segment.payload_in(frame.data).unwrap_or(&[]);
            match table.ingest(&segment, payload) {
                Ok(ingested) => {
                    counters.frames_logged.fetch_add(1, Ordering::Relaxed);
                    counters
                        .log_bytes
                        .fetch_add(payload.len() as u64, Ordering::Relaxed);
                    let tuple = segment.tuple;
                    if let Some(evicted) = ingested.evicted {
                        // A half-open connection pushed out by a newer SYN (a flood).
                        state.last_seen.remove(&evicted);
                        counters.half_open_evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    match ingested.tracking {
                        Tracking::Closed(_) => {
                            state.replica.closed(&tuple);
                            state.last_seen.remove(&tuple);
                        }
                        Tracking::Untracked => {
                            // Its idle time times the takeover's reset probe (PAWS).
                            if table.is_unadopted(&tuple) {
                                state.last_seen.insert(tuple, now);
                            } else {
                                state.last_seen.remove(&tuple);
                            }
                        }
                        Tracking::Opened | Tracking::Tracked => {
                            state.last_seen.insert(tuple, now);
                            if let Some(image) = table.get(&tuple) {
                                state.replica.trim(&tuple, image.client_acked_reply_bytes());
                            }
                        }
                    }
                    if let Some(primary) = state.primary_mac.filter(|_| forwarding) {
                        forward(frame.data, primary, mac, outgoing, shared);
                        forwarded_received_at.push(frame.received_at);
                    }
                }
                Err(refused) => {
                    counters.frames_refused.fetch_add(1, Ordering::Relaxed);
                    PlaneShared::count_reason(&shared.drop_reasons, &variant_label(&refused));
                }
            }
        });
        // Handshakes that never completed (a SYN flood's) free their room once the kernel's
        // own SYN-RECV lifetime is over.
        if let Some(table) = state.table.as_mut() {
            for tuple in table.expire_half_open() {
                state.last_seen.remove(&tuple);
                shared
                    .counters
                    .half_open_expired
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        // The frames add request bytes; the clients' acknowledgements trim the reply log.
        publish_bytes_held(shared, state);
    }
}

/// Publishes the bytes the logs hold now (status gauges; both counts are O(1)).
fn publish_bytes_held(shared: &PlaneShared, state: &BackupState) {
    if let Some(table) = state.table.as_ref() {
        shared
            .held_request_bytes
            .store(table.bytes_held() as u64, Ordering::Relaxed);
    }
    shared
        .held_reply_bytes
        .store(state.replica.bytes_held() as u64, Ordering::Relaxed);
}

/// Whether `frame`'s TCP checksum, which nobody verified before (no NIC offload said so, nor
/// is it a partial one still to be filled in), is wrong. A frame damaged on the wire would
/// be logged as what the client sent and, its checksum recomputed on the way to the primary
/// or into the rebuilt sockets, reach the server as such; dropped instead, it is resent by
/// the client.
fn damaged_on_the_wire(frame: &steadfast_os::packet_port::RxFrame<'_>) -> bool {
    frame.checksum == steadfast_os::packet_port::RxChecksum::Unchecked
        && tcp_checksum_is_valid(frame.data) != Ok(true)
}

/// Readdresses a logged frame to the primary (source MAC = this backup, so the switch keeps
/// learning the right ports), fixes a partial checksum left by offload, and cuts a GRO-merged
/// frame back to MTU-sized ones.
fn forward(
    data: &[u8],
    primary: [u8; 6],
    ours: [u8; 6],
    outgoing: &mut Vec<Vec<u8>>,
    shared: &PlaneShared,
) {
    let mut frame = data.to_vec();
    frame[0..6].copy_from_slice(&primary);
    frame[6..12].copy_from_slice(&ours);
    if frame.len() > ETHERNET_HEADER_LEN + FORWARD_MTU {
        match steadfast_os::packet_port::segment_oversized_tcp(&frame, FORWARD_MTU) {
            Ok(pieces) => outgoing.extend(pieces),
            Err(e) => {
                shared
                    .counters
                    .frames_dropped
                    .fetch_add(1, Ordering::Relaxed);
                PlaneShared::count_reason(&shared.drop_reasons, "oversized");
                tracing::debug!("cannot segment an oversized frame: {e}");
            }
        }
        return;
    }
    if let Err(e) = tcp_checksum_fixup(&mut frame) {
        shared
            .counters
            .frames_dropped
            .fetch_add(1, Ordering::Relaxed);
        PlaneShared::count_reason(&shared.drop_reasons, "checksum");
        tracing::debug!("checksum fixup: {e}");
        return;
    }
    outgoing.push(frame);
}

/// The variant name of an error enum (its Debug form up to the first field), as a counter
/// label.
fn variant_label(error: &impl std::fmt::Debug) -> String {
    let debug = format!("{error:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or("unknown")
        .to_string()
}
