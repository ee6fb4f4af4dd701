//! Duplex: the role machine of the data plane, and the primary's side of the replication
//! channel (the gate that waits for the backup's acknowledgements).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use steadfast_core::image::FourTuple;
use steadfast_core::replication_wire::{
    self, AdoptedStream, ConnectionOptions, FrameReader, LinkAttempt, ReplicationFrame, ReplyHeader,
};
use steadfast_core::NodeId;
use steadfast_os::ingress_guard::{GuardError, GuardState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::backup::{self, BackupPlane};
use super::gate::{AckState, AckWaiter, Piece, PieceKind, ReplyGate};
use super::proxy::ProxyContext;
use super::{Peer, PlaneRole, PlaneSettings, PlaneShared, ServiceFramer};

/// How long the primary waits for a backup to connect, prove the key and say ready.
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);
const LOOPBACK_IFINDEX: u32 = 1;

/// The live link to the backup, as the gate uses it.
struct Link {
    generation: u64,
    /// The ingress guard sends the backup every client frame that still comes here.
    guarded: bool,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    acks: watch::Receiver<AckState>,
    epoch: u64,
    /// The number of the last piece queued (numbers are given under the gate lock); shared
    /// with the link task, which watches how long the backup leaves pieces unacknowledged.
    last_queued: Arc<AtomicU64>,
}

/// The gate of a duplex primary: with a backup, pieces go to it and the client waits for the
/// acknowledgement; without one, connections are not protected.
pub struct ReplicatedGate {
    link: Mutex<Option<Link>>,
    /// The adoption generation, for the sessions to watch (see `ReplyGate::adoption_notice`).
    adoption: watch::Sender<u64>,
}

impl Default for ReplicatedGate {
    fn default() -> Self {
        ReplicatedGate {
            link: Mutex::new(None),
            adoption: watch::Sender::new(0),
        }
    }
}

impl ReplicatedGate {
    fn attach(&self, link: Link) {
        *self.link.lock().expect("gate lock") = Some(link);
    }

    /// The guard filters now: established connections can be adopted, and their sessions are
    /// told so at once.
    fn mark_guarded(&self) {
        let generation = {
            let mut guard = self.link.lock().expect("gate lock");
            let Some(link) = guard.as_mut() else {
                return;
            };
            link.guarded = true;
            link.generation
        };
        self.adoption.send_replace(generation);
    }

    fn detach(&self) {
        *self.link.lock().expect("gate lock") = None;
        self.adoption.send_replace(0);
    }

    /// Queues a frame to the backup; false when there is no link.
    fn send(&self, frame: &ReplicationFrame) -> bool {
        self.link
            .lock()
            .expect("gate lock")
            .as_mut()
            .is_some_and(|link| link.queue(frame))
    }

    /// Numbers a frame that the backup acknowledges and queues it, under one lock: the
    /// backup's acknowledgements are cumulative, so frames must leave in the order of their
    /// numbers (were a later number queued first, its acknowledgement would release the
    /// earlier piece to the client before the backup held it, I2).
    /// `encode` appends the frame numbered `seq` in `epoch` to `out`.
    fn send_numbered(
        &self,
        encode: impl FnOnce(u64, u64, &mut Vec<u8>),
    ) -> Option<(u64, watch::Receiver<AckState>)> {
        let mut guard = self.link.lock().expect("gate lock");
        let link = guard.as_mut()?;
        let seq = link.last_queued.load(Ordering::Relaxed) + 1;
        if !link.queue_encoded(|epoch, out| encode(seq, epoch, out)) {
            return None;
        }
        link.last_queued.store(seq, Ordering::Relaxed);
        Some((seq, link.acks.clone()))
    }
}

impl Link {
    /// Encodes a frame in this link's epoch and queues it; false when the link task is gone.
    fn queue(&self, frame: &ReplicationFrame) -> bool {
        self.queue_encoded(|epoch, out| replication_wire::encode(frame, epoch, out))
    }

    /// Queues what `encode` appends, given this link's epoch; false when the link task is
    /// gone.
    fn queue_encoded(&self, encode: impl FnOnce(u64, &mut Vec<u8>)) -> bool {
        let mut bytes = Vec::new();
        encode(self.epoch, &mut bytes);
        self.frames.send(bytes).is_ok()
    }
}

impl ReplyGate for ReplicatedGate {
    fn generation(&self) -> u64 {
        self.link
            .lock()
            .expect("gate lock")
            .as_ref()
            .map_or(0, |link| link.generation)
    }

    fn adoption_generation(&self) -> u64 {
        self.link
            .lock()
            .expect("gate lock")
            .as_ref()
            .filter(|link| link.guarded)
            .map_or(0, |link| link.generation)
    }

    fn adopts(&self) -> bool {
        true
    }

    fn adoption_notice(&self) -> Option<watch::Receiver<u64>> {
        Some(self.adoption.subscribe())
    }

    /// The connection's bytes go first, as frames of at most a reply piece (encoded outside the
    /// gate lock: an upload handed over may be tens of megabytes), then the numbered hand-over
    /// that makes the backup take them.
    fn adopt(&self, a: super::gate::Adoption) -> Option<AckWaiter> {
        let (epoch, generation) = {
            let guard = self.link.lock().expect("gate lock");
            let link = guard.as_ref()?;
            (link.epoch, link.generation)
        };
        let mut encoded = Vec::new();
        for (stream, bytes) in [
            (AdoptedStream::Request, &a.pending),
            (AdoptedStream::Reply, &a.unacked_reply),
        ] {
            for chunk in bytes.chunks(replication_wire::MAX_PIECE_BYTES) {
                let mut out = Vec::with_capacity(chunk.len() + 64);
                replication_wire::encode(
                    &ReplicationFrame::AdoptBytes {
                        tuple: a.tuple,
                        stream,
                        bytes: chunk.to_vec(),
                    },
                    epoch,
                    &mut out,
                );
                encoded.push(out);
            }
        }
        let mut guard = self.link.lock().expect("gate lock");
        let link = guard
            .as_mut()
            .filter(|link| link.generation == generation)?;
        for frame in encoded {
            link.frames.send(frame).ok()?;
        }
        let seq = link.last_queued.load(Ordering::Relaxed) + 1;
        let queued = link.queue(&ReplicationFrame::Adopt {
            seq,
            tuple: a.tuple,
            client_isn: a.client_isn,
            server_isn: a.server_isn,
            options: a.options,
            client_mss: a.client_mss,
            next_request: a.next_request,
            request_offset: a.request_offset,
            request_len: a.pending.len() as u64,
            reply_acked: a.reply_acked,
            reply_offset: a.reply_acked + a.unacked_reply.len() as u64,
            timestamp: a.timestamp,
            reply_in_progress: a.reply_in_progress,
        });
        if !queued {
            return None;
        }
        link.last_queued.store(seq, Ordering::Relaxed);
        Some(AckWaiter {
            seq,
            acks: link.acks.clone(),
        })
    }

    fn opened(&self, tuple: FourTuple, client_isn: u32, options: ConnectionOptions) -> bool {
        self.send(&ReplicationFrame::Opened {
            tuple,
            client_isn,
            options,
        })
    }

    fn log(&self, piece: Piece<'_>) -> Option<AckWaiter> {
        let (seq, acks) = self.send_numbered(|seq, epoch, out| match piece.kind {
            PieceKind::Interim => replication_wire::encode(
                &ReplicationFrame::Interim {
                    seq,
                    tuple: piece.tuple,
                    request_index: piece.request_index,
                    reply_offset: piece.reply_offset,
                    bytes: piece.bytes.to_vec(),
                },
                epoch,
                out,
            ),
            // Reply bytes are copied once, into their frame.
            PieceKind::Partial | PieceKind::Final { .. } => replication_wire::encode_reply(
                &ReplyHeader {
                    seq,
                    tuple: piece.tuple,
                    request_index: piece.request_index,
                    reply_offset: piece.reply_offset,
                    request_end: match piece.kind {
                        PieceKind::Final { request_end } => Some(request_end),
                        _ => None,
                    },
                    closes_after: piece.closes_after,
                },
                piece.bytes,
                epoch,
                out,
            ),
        })?;
        Some(AckWaiter { seq, acks })
    }

    fn closed(&self, tuple: FourTuple) {
        self.send(&ReplicationFrame::Closed { tuple });
    }
}

/// A frame at least this long is sealed and written on its own, not copied into a batch.
const WRITTEN_IN_PLACE_BYTES: usize = 64 * 1024;

/// How long a step-down waits for its sessions to end before dropping their held replies.
const RETIRE_WAIT: Duration = Duration::from_secs(1);

/// What the link task tells the role machine.
enum LinkEvent {
    Ready {
        generation: u64,
        backup_mac: [u8; 6],
        link: Link,
        ack_tx: watch::Sender<AckState>,
    },
    Lost {
        generation: u64,
        why: String,
    },
}

/// The duplex plane of one node, whatever its role.
pub struct Duplex {
    settings: PlaneSettings,
    shared: Arc<PlaneShared>,
    pub proxy: Arc<ProxyContext<ServiceFramer>>,
    gate: Arc<ReplicatedGate>,
    netlink: steadfast_os::addr::Netlink,
    ifindex: u32,
    garp: crate::announce::Announcer,
    guard: steadfast_os::ingress_guard::IngressGuard,
    backup: BackupPlane,
    /// Where the VIP is configured now.
    vip_on_link: bool,
    vip_on_lo: bool,
    link_generation: u64,
    /// Drawn at start: this process's link attempts are numbered by `link_generation` within it.
    link_incarnation: u64,
    link_acks: Option<watch::Sender<AckState>>,
    /// The acknowledgements of a link this node dropped when it stopped being primary. Its
    /// sessions' replies still wait on them: released if this node is elected again with
    /// nobody between (as after a lapse), never if another node took the connections over.
    stepped_down_acks: Vec<watch::Sender<AckState>>,
    /// Set by a planned stop ([`Duplex::hand_over`]): the guard stays shut to the end.
    handing_over: bool,
    protected_by: Option<Peer>,
    /// The backup that protected this node's sessions when it last stopped being primary, and
    /// the link generation it protected them under: the sessions that node can carry on if it
    /// is the next primary.
    protected_at_step_down: Option<(NodeId, u64)>,
    unprotected_since: Option<Instant>,
    guard_read_at: Option<Instant>,
    /// When the current backup joined and how many open sessions it had to adopt, until it
    /// protects every open connection (the join-to-protected figure).
    join_started: Option<(Instant, usize)>,
}

impl Duplex {
    pub async fn new(
        settings: PlaneSettings,
        shared: Arc<PlaneShared>,
        framer: ServiceFramer,
        lease: super::lease::LeaseFence,
    ) -> anyhow::Result<Duplex> {
        let service = &settings.service;
        let netlink = steadfast_os::addr::Netlink::new()
            .await
            .context("opening a netlink socket for the data plane")?;
        let link = netlink
            .link_by_name(&service.interface)
            .await
            .with_context(|| {
                format!("service {}: interface {}", service.name, service.interface)
            })?;
        let garp = steadfast_os::garp::GarpSender::open(link.index, link.mac)
            .with_context(|| format!("opening a packet socket on {}", service.interface))?;
        // The primary must never answer ARP for the VIP while a backup receives first (I1):
        // with the VIP on lo, arp_ignore=1 keeps the kernel quiet for it on the link, and
        // arp_announce=2 keeps the VIP out of the kernel's own ARP requests.
        for (key, value) in [
            (
                format!("net/ipv4/conf/{}/arp_ignore", service.interface),
                "1",
            ),
            (
                format!("net/ipv4/conf/{}/arp_announce", service.interface),
                "2",
            ),
            ("net/ipv4/conf/all/arp_ignore".to_string(), "1"),
            ("net/ipv4/conf/all/arp_announce".to_string(), "2"),
        ] {
            steadfast_os::sysctl::write(&key, value)?;
        }
        let mut guard = steadfast_os::ingress_guard::IngressGuard::install(
            &settings.group_name,
            &service.interface,
            link.mac,
            service.vip,
            &service.ports,
        )
        .context("installing the ingress guard (nftables)")?;
        guard.open().context("opening the ingress guard")?;
        let gate = Arc::new(ReplicatedGate::default());
        let proxy = Arc::new(ProxyContext::for_service(
            &settings,
            framer,
            gate.clone(),
            lease,
        ));
        let _ = shared.proxy.set(proxy.clone());
        let backup = BackupPlane::start(&settings, shared.clone(), link.mac, link.index)
            .await
            .context("starting the backup side (replication listener)")?;
        Ok(Duplex {
            settings,
            shared,
            proxy,
            gate,
            netlink,
            ifindex: link.index,
            garp: crate::announce::Announcer::new(garp),
            guard,
            backup,
            vip_on_link: false,
            vip_on_lo: false,
            link_generation: 0,
            link_incarnation: draw_incarnation()?,
            link_acks: None,
            stepped_down_acks: Vec::new(),
            handing_over: false,
            protected_by: None,
            protected_at_step_down: None,
            unprotected_since: None,
            guard_read_at: None,
            join_started: None,
        })
    }

    fn vip(&self) -> Ipv4Addr {
        self.settings.service.vip
    }

    pub async fn run(
        mut self,
        mut role_rx: watch::Receiver<PlaneRole>,
        mut hand_over_rx: mpsc::Receiver<super::HandOverRequest>,
    ) -> anyhow::Result<()> {
        let (link_tx, mut link_rx) = mpsc::unbounded_channel::<LinkEvent>();
        let mut current = PlaneRole::Idle;
        let mut unprotected = self.proxy.census.watch_unprotected();
        // Leftovers of a previous life: this node starts owning nothing.
        self.place_vip(false, false).await;
        loop {
            let role = *role_rx.borrow_and_update();
            if role != current {
                self.transition(current, role, &link_tx).await;
                current = role;
            }
            tokio::select! {
                changed = role_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                Some(event) = link_rx.recv() => self.on_link_event(event, current).await,
                Ok(()) = unprotected.changed() => self.note_protection(),
                Some(reply) = hand_over_rx.recv() => {
                    let handed = self.hand_over(current).await;
                    let _ = reply.send(handed);
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    self.account_unprotected();
                    self.read_guard_counter();
                    // A backup that is alive but not linked (refused, timed out): try again.
                    if let PlaneRole::Primary { epoch, backup: Some(peer) } = current {
                        if self.protected_by.is_none() && self.link_acks.is_none() {
                            self.connect_backup(peer, epoch, &link_tx);
                        }
                    }
                }
            }
        }
    }

    /// Refreshes the status' counts of client frames that did not come through the backup
    /// (I1): bounced to it to be logged, or dropped. A status figure: read (a netlink dump)
    /// at most once a second, and only while the guard filters.
    fn read_guard_counter(&mut self) {
        if !matches!(self.guard.state(), GuardState::OnlyFrom(_))
            || self
                .guard_read_at
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.guard_read_at = Some(Instant::now());
        let counters = &self.shared.counters;
        match tokio::task::block_in_place(|| self.guard.counts()) {
            Ok(counts) => {
                counters
                    .guard_dropped
                    .store(counts.dropped, Ordering::Relaxed);
                let before = counters
                    .guard_bounced
                    .swap(counts.bounced, Ordering::Relaxed);
                // A client that sends here straight (its ARP entry names this node, a burst
                // of an earlier role was heard last, or a static entry) is logged all the
                // same, but if this node crashed its frames would go to a dead MAC. The
                // backup announces the VIP again.
                if counts.bounced > before && self.protected_by.is_some() {
                    let fresh = counts.bounced - before;
                    if before == 0 {
                        tracing::info!(
                            "{fresh} client frames came straight to this node: the backup \
                             announces the address again (each second while they come)"
                        );
                    } else {
                        tracing::debug!("{fresh} more client frames came straight to this node");
                    }
                    self.gate.send(&ReplicationFrame::Announce);
                }
            }
            Err(e) => tracing::debug!("{e}"),
        }
    }

    async fn transition(
        &mut self,
        from: PlaneRole,
        to: PlaneRole,
        link_tx: &mpsc::UnboundedSender<LinkEvent>,
    ) {
        tracing::info!("data plane: {from:?} -> {to:?}");
        match to {
            PlaneRole::Primary { epoch, backup } => {
                let was_primary = matches!(from, PlaneRole::Primary { .. });
                if !was_primary {
                    // A hand-over that did not end the process (`steadfast move`, standby)
                    // ends with the next life as primary: its guard is set anew below.
                    self.handing_over = false;
                }
                if let PlaneRole::Backup { .. } = from {
                    self.take_over().await;
                }
                // Elected again with no other primary between (that one would have retired
                // the sessions): the replies held since the step-down go out, unprotected.
                for acks in self.stepped_down_acks.drain(..) {
                    acks.send_modify(|state| state.released = true);
                }
                self.backup.set_epoch(epoch);
                let keep_link = was_primary && backup.is_some() && backup == self.protected_by;
                if !keep_link {
                    if was_primary && self.protected_by.is_some() {
                        // The election saw the backup go before the replication stream did.
                        self.shared
                            .counters
                            .backup_losses
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    self.drop_link("the backup changed").await;
                    self.serve_unprotected().await;
                    if let Some(peer) = backup {
                        self.connect_backup(peer, epoch, link_tx);
                    }
                }
            }
            PlaneRole::Backup { epoch, primary } => {
                if matches!(from, PlaneRole::Primary { .. }) {
                    self.step_down("no longer primary");
                    self.place_vip(false, false).await;
                }
                if let Some(primary) = primary {
                    self.retire_sessions(primary).await;
                }
                self.backup.protect(epoch, primary);
            }
            PlaneRole::Idle => {
                self.step_down("idle");
                self.place_vip(false, false).await;
                self.backup.stop_logging();
            }
        }
    }

    /// The backup becomes the primary: rebuild every protected connection (docs/design.md,
    /// "Takeover"), then serve.
    async fn take_over(&mut self) {
        let started = Instant::now();
        // The order of docs/design.md "Takeover": claim the VIP, ask the clients how far they
        // read (forwarding stops, logging goes on), freeze (client frames are held from then
        // on), rebuild the sockets in repair mode, make the VIP local, leave repair, resume the
        // sessions, reinject the held frames, announce. The clients' ARP entries already name
        // this node, so no frame is lost at the switch.
        // Clients point at this node's MAC already, unless one was drawn to the old primary's
        // (its frames were bounced to be logged, see `read_guard_counter`): since that MAC is
        // dead, it would neither answer the probes nor be heard until the VIP is local. This
        // node answers for the VIP since it protected the primary, so claiming it now moves
        // nothing else.
        if let Err(e) = self.garp.announce_once(self.vip()) {
            tracing::warn!("takeover: gratuitous ARP for {}: {e}", self.vip());
        }
        self.shared.taking_over.store(true, Ordering::Relaxed);
        let (probed, answered) = self.backup.refresh_acknowledgements();
        let probed_at = started.elapsed();
        let frozen = self.backup.freeze();
        if frozen.state.table.is_none() {
            // This node never protected anybody: nothing to carry over.
            self.shared.taking_over.store(false, Ordering::Relaxed);
            self.backup.release_held_frames();
            return;
        }
        let frozen_at = started.elapsed();
        let rebuilt = super::takeover::rebuild_all(frozen, &self.shared);
        let rebuilt_at = started.elapsed();
        self.place_vip(true, false).await;
        let vip_at = started.elapsed();
        let mut report = super::takeover::resume_all(rebuilt, self.proxy.clone(), &self.shared);
        // The resumed sessions are in the census now (entered before their tasks start).
        self.shared.taking_over.store(false, Ordering::Relaxed);
        self.backup.release_held_frames();
        report.rebuild_time = started.elapsed() - frozen_at;
        self.announce();
        let elapsed = started.elapsed();
        tracing::info!(
            "takeover phases: {probed} clients probed, {answered} answered {probed_at:?}, logger \
             stopped {frozen_at:?}, sockets rebuilt {rebuilt_at:?}, VIP local {vip_at:?}, \
             sessions resumed {elapsed:?}"
        );
        let c = &self.shared.counters;
        c.probes_sent.fetch_add(probed as u64, Ordering::Relaxed);
        let unanswered = probed - answered;
        if unanswered > 0 {
            c.probes_unanswered
                .fetch_add(unanswered as u64, Ordering::Relaxed);
            tracing::warn!(
                "takeover: {unanswered} of {probed} clients did not answer the acknowledgement \
                 probe in time; their connections were rebuilt from the log's image of them"
            );
        }
        c.connections_restored
            .fetch_add(report.restored, Ordering::Relaxed);
        c.connections_restored_unreported
            .fetch_add(report.unreported, Ordering::Relaxed);
        c.connections_lost.fetch_add(report.lost, Ordering::Relaxed);
        c.syns_replayed
            .fetch_add(report.syns_replayed, Ordering::Relaxed);
        c.syns_not_replayed
            .fetch_add(report.syns_not_replayed, Ordering::Relaxed);
        c.last_takeover_us
            .store(elapsed.as_micros() as u64, Ordering::Relaxed);
        if report.restored > 0 {
            let rate = report.restored as f64 / report.rebuild_time.as_secs_f64().max(1e-6);
            c.last_restore_per_second
                .store(rate as u64, Ordering::Relaxed);
        }
        // Counted last: a status that shows the takeover shows all of its figures.
        c.takeovers.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "takeover: {} connections restored ({} never reported by the primary), {} lost, \
             {} half-open ones' SYNs replayed ({} not), in {:?} (rebuild {:?})",
            report.restored,
            report.unreported,
            report.lost,
            report.syns_replayed,
            report.syns_not_replayed,
            elapsed,
            report.rebuild_time
        );
    }

    /// Sets the ingress guard: one nf_tables transaction, which waits for the namespace's
    /// commit lock (0.1 ms idle, over a millisecond under load): meanwhile the sessions queued
    /// on this worker thread move to another one instead of waiting.
    fn set_guard(&mut self, state: GuardState) -> Result<(), GuardError> {
        tokio::task::block_in_place(|| self.guard.apply(state))
    }

    /// No backup: the primary answers ARP for the VIP itself and lets every client frame in.
    async fn serve_unprotected(&mut self) {
        if let Err(e) = self.set_guard(GuardState::Open) {
            tracing::error!("opening the ingress guard: {e}");
        }
        let announce = !self.vip_on_link;
        self.place_vip(true, false).await;
        if announce || self.protected_by.is_some() {
            self.announce();
        }
        self.protected_by = None;
        if self.unprotected_since.is_none() {
            self.unprotected_since = Some(Instant::now());
        }
        self.shared.unprotected_now.store(1, Ordering::Relaxed);
    }

    fn account_unprotected(&mut self) {
        if let Some(since) = self.unprotected_since {
            let now = Instant::now();
            self.shared.counters.unprotected_ms.fetch_add(
                now.duration_since(since).as_millis() as u64,
                Ordering::Relaxed,
            );
            self.unprotected_since = Some(now);
        }
    }

    fn connect_backup(
        &mut self,
        peer: Peer,
        epoch: u64,
        link_tx: &mpsc::UnboundedSender<LinkEvent>,
    ) {
        self.link_generation += 1;
        let generation = self.link_generation;
        let settings = self.settings.clone();
        let shared = self.shared.clone();
        let tx = link_tx.clone();
        // Marks "a link attempt is under way" until Ready or Lost.
        let (placeholder, _) = watch::channel(AckState::default());
        self.link_acks = Some(placeholder);
        let attempt = LinkAttempt {
            incarnation: self.link_incarnation,
            number: generation,
        };
        tokio::spawn(async move {
            if let Err(e) = run_link(settings, shared, peer, epoch, attempt, tx.clone()).await {
                let _ = tx.send(LinkEvent::Lost {
                    generation,
                    why: format!("{e:#}"),
                });
            }
        });
    }

    async fn on_link_event(&mut self, event: LinkEvent, current: PlaneRole) {
        match event {
            LinkEvent::Ready {
                generation,
                backup_mac,
                link,
                ack_tx,
            } => {
                let PlaneRole::Primary {
                    backup: Some(peer), ..
                } = current
                else {
                    return;
                };
                if generation != self.link_generation {
                    return;
                }
                // The order is what a takeover relies on. The gate attaches first: every
                // connection accepted from now on is reported to the backup before any reply
                // of it, and its replies are logged before they leave. Only then is the backup
                // told to log, forward, answer ARP and announce itself; the guard then sends it
                // whatever still comes here, and the VIP leaves the link (the primary stops
                // answering ARP for it). So a connection the backup has logged from its SYN is
                // one the primary protects from its first byte (see
                // `ReplicaLog::plan_unreported`).
                let joined_at = Instant::now();
                self.gate.attach(link);
                self.proxy.census.link_changed(generation);
                // Sessions opened before now are not protected: the backup is told which, so a
                // takeover before it has adopted them all resets their clients instead of
                // leaving them to wait for replies that cannot come.
                let unadopted = self.proxy.census.unprotected_connections(generation);
                for tuples in unadopted.chunks(replication_wire::MAX_UNADOPTED_PER_FRAME) {
                    self.gate.send(&ReplicationFrame::Unadopted {
                        tuples: tuples.to_vec(),
                    });
                }
                self.join_started = Some((joined_at, unadopted.len()));
                // This node's own burst (it served unprotected until now) ends before the
                // backup's begins: the clients must hear the backup last.
                self.garp.cancel();
                // A link already gone reports itself lost.
                self.gate.send(&ReplicationFrame::Announce);
                if let Err(e) = self.set_guard(GuardState::OnlyFrom(backup_mac)) {
                    tracing::error!("cannot set the ingress guard to the backup's MAC: {e}");
                    self.drop_link("the ingress guard could not be set").await;
                    return;
                }
                self.gate.mark_guarded();
                self.place_vip(false, true).await;
                self.link_acks = Some(ack_tx);
                self.protected_by = Some(peer);
                self.account_unprotected();
                self.unprotected_since = None;
                self.shared.unprotected_now.store(0, Ordering::Relaxed);
                self.shared
                    .counters
                    .backups_joined
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "backup {} joined: new connections are protected from now on, the {} open \
                     ones once it adopts them",
                    peer.id,
                    self.join_started.map_or(0, |(_, n)| n)
                );
                self.note_protection();
            }
            LinkEvent::Lost { generation, why } => {
                if generation != self.link_generation {
                    return;
                }
                tracing::warn!("replication link lost: {why}");
                let was_protected = self.protected_by.is_some();
                self.drop_link(&why).await;
                if was_protected {
                    self.shared
                        .counters
                        .backup_losses
                        .fetch_add(1, Ordering::Relaxed);
                }
                if matches!(current, PlaneRole::Primary { .. }) {
                    self.serve_unprotected().await;
                }
            }
        }
    }

    /// Once the backup that joined last protects every open connection: how long that took
    /// (from the moment it joined), logged and kept for the status.
    fn note_protection(&mut self) {
        if self.protected_by.is_none() || self.proxy.census.carries_unprotected() {
            return;
        }
        let Some((joined_at, to_adopt)) = self.join_started.take() else {
            return;
        };
        let took = joined_at.elapsed();
        let ms = took.as_millis() as u64;
        let c = &self.shared.counters;
        c.join_protected_last_ms.store(ms, Ordering::Relaxed);
        c.join_protected_max_ms.fetch_max(ms, Ordering::Relaxed);
        c.joins_protected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "every open connection is protected {took:?} after the backup joined ({to_adopt} \
             opened before it were adopted or ended)"
        );
    }

    /// Stops waiting for the backup: every waiting reply goes out, nothing more is logged.
    async fn drop_link(&mut self, why: &str) {
        self.detach_link();
        if let Some(acks) = self.link_acks.take() {
            acks.send_modify(|state| state.released = true);
        }
        if self.protected_by.take().is_some() {
            tracing::info!("serving without a backup: {why}");
        }
    }

    fn detach_link(&mut self) {
        self.join_started = None;
        self.gate.detach();
        self.proxy.census.link_changed(0);
        self.link_generation += 1;
    }

    /// This node is no longer primary: the link goes, but the replies waiting for the backup's
    /// acknowledgement keep waiting (see `stepped_down_acks`). Releasing them now would send
    /// replies the backup never logged to clients whose connections it may be taking over.
    fn step_down(&mut self, why: &str) {
        if let Some(peer) = &self.protected_by {
            self.protected_at_step_down = Some((peer.id, self.link_generation));
        }
        self.detach_link();
        // A guard left admitting only the old backup's frames would bounce every client frame
        // to that node — which may be the new primary, or an old one whose kernel still holds
        // the connections and would acknowledge bytes the real primary never sees. Open, it
        // leaves the frames to this node's logger (the VIP is not local here any more). After
        // a hand-over it stays shut: this node's kernel no longer has the connections and
        // would reset their clients.
        if !self.handing_over {
            if let Err(e) = self.set_guard(GuardState::Open) {
                tracing::error!("opening the ingress guard at a step-down: {e}");
            }
        }
        if let Some(acks) = self.link_acks.take() {
            self.stepped_down_acks.push(acks);
        }
        if self.protected_by.take().is_some() {
            tracing::info!("stopped protecting replies with a backup: {why}");
        }
    }

    /// A planned stop of a protected primary (see [`super::PlaneHandle::hand_over`]): no client
    /// frame reaches this node's kernel any more (the backup logs them all, and holds them at
    /// its takeover), and every session the backup protects stops sending and ends silently.
    /// The unprotected ones are left to end with the process; the backup resets their clients.
    async fn hand_over(&mut self, current: PlaneRole) -> u64 {
        if !matches!(current, PlaneRole::Primary { .. }) || self.protected_by.is_none() {
            return 0;
        }
        self.handing_over = true;
        let started = Instant::now();
        if let Err(e) = self.set_guard(GuardState::DropAll) {
            tracing::error!("shutting the ingress guard for a hand-over: {e}");
        }
        let generation = self.gate.generation();
        let (told, ending) = self
            .proxy
            .census
            .retire_where(|protected_by| protected_by == generation, RETIRE_WAIT)
            .await;
        tracing::info!(
            "planned stop: {told} protected sessions handed to the backup in {:?} ({ending} \
             still ending)",
            started.elapsed(),
        );
        told
    }

    /// Another node is primary: it carries this node's connections on (or has reset them), so
    /// every session here ends without a byte to its client, and only then are the replies
    /// they held dropped.
    async fn retire_sessions(&mut self, primary: Peer) {
        // The new primary carries on the sessions its backup link protected here; the others
        // are gone (it resets those it was told of as unadopted, the rest it never knew).
        let carried_generation = self
            .protected_at_step_down
            .take()
            .filter(|&(backup, _)| backup == primary.id)
            .map(|(_, generation)| generation);
        let dropped = self
            .proxy
            .census
            .count_where(|generation| Some(generation) != carried_generation);
        let (told, ending) = self.proxy.census.retire_where(|_| true, RETIRE_WAIT).await;
        if told > 0 {
            tracing::info!(
                "node {} is primary: {told} sessions ended without a word to their clients \
                 ({ending} still ending)",
                primary.id
            );
        }
        if dropped > 0 {
            self.shared
                .counters
                .sessions_dropped_at_step_down
                .fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                "node {} is primary but could not carry on {dropped} of this node's open \
                 connections (its backup link did not protect them): they are lost",
                primary.id
            );
        }
        self.stepped_down_acks.clear();
    }

    /// Puts the VIP on the link, on lo, or nowhere; a failure is logged and retried at the
    /// next change.
    async fn place_vip(&mut self, on_link: bool, on_lo: bool) {
        let vip = self.vip();
        // Add before remove: the VIP stays local throughout, or established sockets would
        // have no local address for a moment.
        if on_lo && !self.vip_on_lo {
            match self.netlink.add_address(LOOPBACK_IFINDEX, vip, 32).await {
                Ok(()) => self.vip_on_lo = true,
                Err(e) => tracing::error!("adding {vip} to lo: {e}"),
            }
        }
        if on_link && !self.vip_on_link {
            match self
                .netlink
                .add_address(self.ifindex, vip, self.prefix_len())
                .await
            {
                Ok(()) => self.vip_on_link = true,
                Err(e) => {
                    tracing::error!("adding {vip} to {}: {e}", self.settings.service.interface)
                }
            }
        }
        if !on_link {
            // What is left of a burst would draw the clients back to this node's MAC.
            self.garp.cancel();
            let _ = self
                .netlink
                .remove_address(self.ifindex, vip, self.prefix_len())
                .await;
            self.vip_on_link = false;
        }
        if !on_lo {
            let _ = self.netlink.remove_address(LOOPBACK_IFINDEX, vip, 32).await;
            self.vip_on_lo = false;
        }
    }

    fn prefix_len(&self) -> u8 {
        self.settings.service.prefix_len
    }

    fn announce(&mut self) {
        let service = &self.settings.service;
        let (first, _) = self
            .garp
            .announce(service.vip, service.garp_count, service.garp_spacing);
        if let Err(e) = first {
            tracing::warn!("gratuitous ARP for {}: {e}", service.vip);
        }
    }
}

/// A random number for this process's link attempts (see [`LinkAttempt`]).
fn draw_incarnation() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| anyhow::anyhow!("drawing the link incarnation: {e}"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Connects to the backup, proves the key, waits for its logger, then carries frames out and
/// acknowledgements in until the stream ends.
async fn run_link(
    settings: PlaneSettings,
    shared: Arc<PlaneShared>,
    peer: Peer,
    epoch: u64,
    attempt: LinkAttempt,
    events: mpsc::UnboundedSender<LinkEvent>,
) -> anyhow::Result<()> {
    let generation = attempt.number;
    let target = SocketAddr::V4(SocketAddrV4::new(peer.address, settings.replication_port));
    let (mut stream, mut reader, mut sealer) = tokio::time::timeout(JOIN_TIMEOUT, async {
        // From the member address, never the VIP: the backup admits members by address.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(settings.local_address, 0)))?;
        let mut stream: TcpStream = socket
            .connect(target)
            .await
            .with_context(|| format!("connecting to backup {} at {target}", peer.id))?;
        stream.set_nodelay(true)?;
        super::bound_replication_stalls(&stream, settings.replication_stall)
            .context("bounding the replication stream's stalls")?;
        let mut reader = FrameReader::new();
        let (_, _, sealer) = backup::handshake(
            &mut stream,
            &mut reader,
            &settings,
            peer.id,
            epoch,
            attempt,
            &shared,
        )
        .await?;
        Ok::<_, anyhow::Error>((stream, reader, sealer))
    })
    .await
    .with_context(|| format!("backup {} did not complete the handshake in time", peer.id))??;
    let mac = tokio::time::timeout(JOIN_TIMEOUT, async {
        loop {
            let frame = backup::read_frame(&mut stream, &mut reader).await;
            if let Some(e) = frame.as_ref().err().and_then(|e| e.downcast_ref()) {
                shared.count_unreadable(e);
            }
            match frame? {
                (_, ReplicationFrame::BackupReady { mac }) => return Ok::<_, anyhow::Error>(mac),
                (_, other) => tracing::debug!("before ready, ignored {}", other.label()),
            }
        }
    })
    .await
    .with_context(|| format!("backup {} did not start its logger in time", peer.id))??;
    let (frames_tx, mut frames_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (ack_tx, ack_rx) = watch::channel(AckState::default());
    let last_queued = Arc::new(AtomicU64::new(0));
    let stall_watch = watch_for_stalls(
        settings.replication_stall,
        last_queued.clone(),
        ack_tx.subscribe(),
    );
    let link = Link {
        generation,
        guarded: false,
        frames: frames_tx,
        acks: ack_rx,
        epoch,
        last_queued,
    };
    let _ = events.send(LinkEvent::Ready {
        generation,
        backup_mac: mac,
        link,
        ack_tx: ack_tx.clone(),
    });
    let shared_at_stall = shared.clone();
    let (mut read_half, mut write_half) = stream.into_split();
    let writer = async move {
        let mut batch = Vec::new();
        // Sealed here, where the frames take their order on the wire: the tag numbers them.
        let mut seal = |frame: &mut Vec<u8>, start: usize| {
            sealer
                .seal(frame, start)
                .map_err(|e| std::io::Error::other(e.to_string()))
        };
        while let Some(first) = frames_rx.recv().await {
            let mut next = Some(first);
            // Everything queued meanwhile goes in as few writes as it can; a reply piece is
            // sealed and written where it was encoded rather than copied into the batch.
            while let Some(mut frame) = next.take() {
                if frame.len() >= WRITTEN_IN_PLACE_BYTES {
                    if !batch.is_empty() {
                        write_half.write_all(&batch).await?;
                        batch.clear();
                    }
                    seal(&mut frame, 0)?;
                    write_half.write_all(&frame).await?;
                } else {
                    let start = batch.len();
                    batch.extend_from_slice(&frame);
                    seal(&mut batch, start)?;
                }
                if batch.len() < 1 << 20 {
                    next = frames_rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                write_half.write_all(&batch).await?;
                batch.clear();
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let acks = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = read_half.read(&mut buf).await?;
            if n == 0 {
                anyhow::bail!("the backup closed the replication stream");
            }
            reader.push(&buf[..n]);
            while let Some((frame_epoch, frame)) = reader
                .next_frame()
                .inspect_err(|e| shared.count_unreadable(e))?
            {
                if frame_epoch < epoch {
                    shared
                        .counters
                        .replication_old_epoch
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match frame {
                    ReplicationFrame::Ack { seq } => {
                        ack_tx.send_if_modified(|state| {
                            if seq > state.acked {
                                state.acked = seq;
                                true
                            } else {
                                false
                            }
                        });
                    }
                    ReplicationFrame::Unlogged { tuples } => {
                        let disowned = shared
                            .proxy
                            .get()
                            .map_or(0, |proxy| proxy.census.disown(&tuples, generation));
                        tracing::info!(
                            "backup {} never saw {} connections open (they reached this node \
                             before it stood in front): {disowned} sessions hand them over",
                            peer.id,
                            tuples.len()
                        );
                    }
                    other => tracing::debug!("from the backup, ignored {}", other.label()),
                }
            }
        }
    };
    tokio::select! {
        result = writer => result.context("writing to the backup")?,
        result = acks => result?,
        stalled = stall_watch => {
            shared_at_stall
                .counters
                .replication_stalls
                .fetch_add(1, Ordering::Relaxed);
            anyhow::bail!(
                "backup {} acknowledged nothing for {stalled:?} while pieces waited",
                peer.id
            )
        }
    }
    anyhow::bail!("the replication stream to backup {} ended", peer.id)
}

/// Resolves once pieces have waited `stall` for an acknowledgement without any coming (the
/// backup or the path to it is stuck while its heartbeats may still pass), with how long
/// they waited. Looked at twenty times per `stall`, so it fires within `stall * 21 / 20`.
async fn watch_for_stalls(
    stall: Duration,
    last_queued: Arc<AtomicU64>,
    acks: watch::Receiver<AckState>,
) -> Duration {
    let mut tick = tokio::time::interval(stall / 20);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watched = StallWatch::default();
    loop {
        tick.tick().await;
        let acked = acks.borrow().acked;
        let queued = last_queued.load(Ordering::Relaxed);
        if watched.look(Instant::now(), queued, acked, stall).is_some() {
            // Acknowledgements that came while this task was not polled may sit unread: the
            // link's reader, polled beside this watch, takes them before it is called a stall.
            tokio::task::yield_now().await;
            let acked = acks.borrow().acked;
            let queued = last_queued.load(Ordering::Relaxed);
            if let Some(waited) = watched.look(Instant::now(), queued, acked, stall) {
                return waited;
            }
        }
    }
}

/// Whether pieces have waited too long for the backup: the oldest look that saw pieces waiting
/// with no acknowledgement since.
#[derive(Debug, Default)]
struct StallWatch {
    acked: u64,
    waiting_since: Option<Instant>,
    last_look: Option<Instant>,
}

impl StallWatch {
    /// One look at `now`: the last piece queued and the last one acknowledged. Returns how long
    /// pieces have waited once that reaches `stall`.
    fn look(&mut self, now: Instant, queued: u64, acked: u64, stall: Duration) -> Option<Duration> {
        // A look long after the last one: this process did not run meanwhile (paused, starved),
        // and the acknowledgements that came may not have been read yet. Its own silence is not
        // the backup's: the wait starts again.
        let resumed = self
            .last_look
            .replace(now)
            .is_some_and(|last| now.saturating_duration_since(last) > stall / 4);
        if acked >= queued || acked > self.acked || resumed {
            // Nothing waits, or the backup is moving: the wait starts again.
            self.acked = acked;
            self.waiting_since = (acked < queued).then_some(now);
            return None;
        }
        let since = *self.waiting_since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        (waited >= stall).then_some(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steadfast_core::replication_wire::FrameReader;

    /// The watch fires only after pieces waited a whole `stall` with no acknowledgement: any
    /// acknowledgement starts the wait again, nothing waiting is never a stall, and neither is
    /// a time this process itself did not run.
    #[test]
    fn a_stall_is_a_wait_with_no_acknowledgement() {
        let stall = Duration::from_millis(800);
        let base = Instant::now();
        let after = |ms: u64| base + Duration::from_millis(ms);
        // Looks every 100 ms from `from` to `to` (inclusive) with the same numbers.
        let looks = |watch: &mut StallWatch, from: u64, to: u64, queued: u64, acked: u64| {
            (from..=to)
                .step_by(100)
                .map(|ms| watch.look(after(ms), queued, acked, stall))
                .collect::<Vec<_>>()
        };
        let mut watch = StallWatch::default();
        assert!(
            looks(&mut watch, 0, 1_000, 3, 3)
                .iter()
                .all(Option::is_none),
            "all held"
        );
        assert!(
            looks(&mut watch, 1_100, 1_800, 5, 3)
                .iter()
                .all(Option::is_none),
            "pieces waited 700 ms"
        );
        assert_eq!(
            watch.look(after(1_850), 6, 4, stall),
            None,
            "an acknowledgement: the wait starts again"
        );
        assert!(looks(&mut watch, 1_900, 2_600, 6, 4)
            .iter()
            .all(Option::is_none));
        assert_eq!(
            watch.look(after(2_650), 7, 4, stall),
            Some(Duration::from_millis(800)),
            "800 ms with pieces waiting and none acknowledged"
        );

        let mut paused = StallWatch::default();
        assert!(looks(&mut paused, 0, 500, 5, 3).iter().all(Option::is_none));
        assert_eq!(
            paused.look(after(2_500), 5, 3, stall),
            None,
            "no look for 2 s: this process did not run, the acknowledgements may be unread"
        );
        assert!(looks(&mut paused, 2_600, 3_200, 5, 3)
            .iter()
            .all(Option::is_none));
        assert_eq!(
            paused.look(after(3_300), 5, 3, stall),
            Some(Duration::from_millis(800)),
            "800 ms since the pause"
        );
    }

    /// Many sessions log pieces at once: the frames reach the backup in the order of their
    /// numbers, or a cumulative acknowledgement would release a piece the backup lacks.
    #[test]
    fn pieces_logged_at_once_leave_in_the_order_of_their_numbers() {
        let gate = Arc::new(ReplicatedGate::default());
        let (frames_tx, mut frames_rx) = mpsc::unbounded_channel();
        let (_ack_tx, ack_rx) = watch::channel(AckState::default());
        gate.attach(Link {
            generation: 1,
            guarded: true,
            frames: frames_tx,
            acks: ack_rx,
            epoch: 7,
            last_queued: Arc::default(),
        });
        let tuple = FourTuple {
            client: "10.0.0.2:40000".parse().expect("an address"),
            server: "10.0.0.100:80".parse().expect("an address"),
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        gate.log(Piece {
                            tuple,
                            request_index: 0,
                            reply_offset: 0,
                            kind: PieceKind::Partial,
                            bytes: b"piece",
                            closes_after: false,
                        })
                        .expect("the link takes the piece");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a logging thread");
        }
        let mut reader = FrameReader::new();
        while let Ok(bytes) = frames_rx.try_recv() {
            reader.push(&bytes);
        }
        let mut expected = 1;
        while let Some((_, frame)) = reader.next_frame().expect("well-formed frames") {
            let ReplicationFrame::Reply { seq, .. } = frame else {
                panic!("only reply pieces were logged, got {}", frame.label());
            };
            assert_eq!(seq, expected, "frames left out of order");
            expected += 1;
        }
        assert_eq!(expected, 8_001, "every piece was queued");
    }
}
