//! The data plane of simplex and duplex services: the proxy on VIP:port, the reply gate, and in
//! duplex the replication channel, the backup's ingress logger and the takeover.
//!
//! It runs on its own threads at normal priority (the election loop keeps its real-time
//! priority, `SCHED_RESET_ON_FORK` stops these threads inheriting it): a saturated proxy must
//! never delay a heartbeat. The daemon tells it the node's role through a watch channel; it
//! reports counters through shared atomics.

pub mod active;
pub mod admission;
pub mod backup;
pub mod census;
pub mod gate;
pub mod lease;
pub mod primary;
mod probes;
pub mod proxy;
pub mod takeover;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use steadfast_core::heartbeat_wire::AuthKey;
use steadfast_core::image::FourTuple;
use steadfast_core::latency::LatencyHistogram;
use steadfast_core::replication_seal::Protection;
use steadfast_core::replication_wire::{ConnectionOptions, ReplicationError};
use steadfast_core::NodeId;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use self::gate::{LocalGate, ReplyGate};
use self::proxy::{ProxyContext, SessionStart};

/// The protocol of the services the simplex and duplex planes carry. The proxy, the reply log
/// and the takeover know it only through its traits (`ExchangeFramer`, `StreamFramer`): this is
/// the one place that names it.
pub type ServiceFramer = steadfast_core::http::Http1;

/// The replication channel listens on the heartbeat port + 1.
pub const REPLICATION_PORT_OFFSET: u16 = 1;

/// A simplex or duplex service, as the plane needs it.
#[derive(Debug, Clone)]
pub struct PlaneService {
    pub name: String,
    pub vip: Ipv4Addr,
    /// Prefix length of the VIP on the interface (the member address's).
    pub prefix_len: u8,
    pub ports: Vec<u16>,
    pub interface: String,
    pub duplex: bool,
    /// Active mode (a Redis service run by every member): its own plane, [`active`].
    pub active: bool,
    pub backend: SocketAddr,
    pub stream_above: u64,
    pub client_timeouts: steadfast_core::client_timer::ClientTimeouts,
    pub max_connections: Option<u32>,
    pub max_connections_per_source: Option<u32>,
    /// Duplex backup: half-open images from one address, and request bytes held in all
    /// (`None`: the table's defaults).
    pub max_half_open_per_source: Option<u32>,
    pub max_request_bytes_held: Option<u64>,
    pub half_open_lifetime: Option<Duration>,
    /// Active mode: when replicas run updates (`service.delivery`), and which serve reads
    /// (`service.read_policy`).
    pub delivery: steadfast_core::active_order::DeliveryStrategy,
    pub read_policy: steadfast_core::active_order::ReadPolicy,
    pub garp_count: u32,
    pub garp_spacing: Duration,
}

impl PlaneService {
    /// The bounds of the backup's connection table for this service.
    pub fn table_limits(&self) -> steadfast_core::image::TableLimits {
        let defaults = steadfast_core::image::TableLimits::default();
        steadfast_core::image::TableLimits {
            max_half_open_per_source: self
                .max_half_open_per_source
                .map_or(defaults.max_half_open_per_source, |n| n as usize),
            max_bytes_held: self
                .max_request_bytes_held
                .map_or(defaults.max_bytes_held, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
            half_open_lifetime: self
                .half_open_lifetime
                .unwrap_or(defaults.half_open_lifetime),
            ..defaults
        }
    }
}

#[derive(Debug, Clone)]
pub struct PlaneSettings {
    /// The notify hook, run on the plane's alarms (an active replica diverged), and the
    /// counters it shares with the daemon's role changes.
    pub hook: Option<crate::hooks::Hook>,
    pub hook_counters: std::sync::Arc<crate::hooks::HookCounters>,
    /// Names the group's nf_tables tables (the ingress guard's) on this host.
    pub group_name: String,
    pub node_id: NodeId,
    pub key: AuthKey,
    pub local_address: Ipv4Addr,
    pub replication_port: u16,
    /// How long a replication stream may leave a frame unacknowledged (or its TCP leave data
    /// undelivered) before the link is dropped.
    pub replication_stall: Duration,
    /// How long a member may be silent before the group holds it dead (heartbeat interval ×
    /// miss count): active mode takes a silent replica out after as long.
    pub detection: Duration,
    /// What the replication stream's frames get after its handshake.
    pub protection: Protection,
    /// Every member's address (not the witness: it has no data plane).
    pub members: BTreeMap<NodeId, Ipv4Addr>,
    pub service: PlaneService,
}

/// A member of the group as the plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub address: Ipv4Addr,
}

/// What the election made of this node, as far as the data plane cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaneRole {
    /// Not serving and not protecting anybody (starting, no quorum, unhealthy).
    Idle,
    /// The node owns the service; `backup` is the member that should protect it.
    Primary { epoch: u64, backup: Option<Peer> },
    /// Another node serves; this one protects it.
    Backup { epoch: u64, primary: Option<Peer> },
}

/// Counters the control socket reports (all cumulative unless said otherwise).
#[derive(Debug, Default)]
pub struct PlaneCounters {
    /// Backup: one pass of the logger over its ring that had client frames to forward, from
    /// waking to the last frame sent on (status `stages`).
    pub logger_batch: LatencyHistogram,
    /// Backup: bytes read from the replication stream → their pieces logged and acknowledged.
    pub replication_batch: LatencyHistogram,
    /// Backup: a client frame received by the kernel → sent on to the primary (logged first,
    /// I1): what the backup in front adds to every client frame.
    pub ingress_wait: LatencyHistogram,
    pub frames_logged: AtomicU64,
    pub frames_forwarded: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_refused: AtomicU64,
    pub arp_replies: AtomicU64,
    pub log_bytes: AtomicU64,
    pub replies_logged: AtomicU64,
    pub replication_frames_refused: AtomicU64,
    pub replication_old_epoch: AtomicU64,
    pub handshakes_refused: AtomicU64,
    /// Primary: links dropped because the backup left pieces unacknowledged for
    /// `replication_stall`.
    pub replication_stalls: AtomicU64,
    /// Backup: replication streams refused because the same primary had already linked with a
    /// later attempt (a late SYN or handshake).
    pub stale_link_attempts: AtomicU64,
    /// Backup: connections the primary reported opened whose opening this backup never saw,
    /// sent back to be adopted.
    pub opened_unlogged: AtomicU64,
    /// Backup: of those, connections whose SYN it logged but whose handshake ACK reached the
    /// primary around it (also counted in `opened_unlogged`).
    pub opened_around: AtomicU64,
    /// Backup: half-open connection images pushed out by newer SYNs beyond the table's bound
    /// (a SYN flood; a real handshake completes long before).
    pub half_open_evicted: AtomicU64,
    pub half_open_expired: AtomicU64,
    pub takeovers: AtomicU64,
    pub connections_restored: AtomicU64,
    pub connections_restored_unreported: AtomicU64,
    /// Clients a takeover asked how far they read.
    pub probes_sent: AtomicU64,
    /// Clients that did not answer a takeover's acknowledgement probe in time.
    pub probes_unanswered: AtomicU64,
    pub connections_lost: AtomicU64,
    /// Connections whose handshake had not completed at a takeover (never open for their
    /// clients, so not lost): their logged SYN replayed to this node's kernel, or left to the
    /// client's retransmission (too old, too many, or the replay failed).
    pub syns_replayed: AtomicU64,
    pub syns_not_replayed: AtomicU64,
    /// Open connections this node held when another node became primary that the new primary
    /// could not carry on (its backup link did not protect them): lost at a step-down.
    pub sessions_dropped_at_step_down: AtomicU64,
    /// Restore rate of the last takeover, connections per second.
    pub last_restore_per_second: AtomicU64,
    pub last_takeover_us: AtomicU64,
    pub unprotected_ms: AtomicU64,
    pub backup_losses: AtomicU64,
    pub backups_joined: AtomicU64,
    /// Replication frames whose tag failed and handshake proofs that failed (forged,
    /// replayed, reordered, corrupted, or from a stream keyed otherwise).
    pub forged_frames: AtomicU64,
    /// Backup: connections adopted from the primary after they had opened.
    pub adopted: AtomicU64,
    /// Client frames that arrived during a takeover's rebuild, held and then handed to the
    /// rebuilt sockets (instead of lost and resent by the clients 200 ms or more later).
    pub frames_held_at_takeover: AtomicU64,
    /// Primary: client frames the ingress guard refused because they did not come through the
    /// backup (I1), as nftables counted them at the last reading.
    pub guard_dropped: AtomicU64,
    /// Primary: client frames that came straight to it, bounced to the backup to be logged.
    pub guard_bounced: AtomicU64,
    /// Primary: how long the latest backup took from its join until every open connection
    /// was protected (adopted or ended), the longest such time, and how many joins got there.
    pub join_protected_last_ms: AtomicU64,
    pub join_protected_max_ms: AtomicU64,
    pub joins_protected: AtomicU64,
}

/// Has the kernel end a replication stream whose data stays unacknowledged for twice `stall`
/// (`TCP_USER_TIMEOUT`, RFC 5482), and probe an idle one every second, so that a path that died
/// in silence while the heartbeats still pass is found too (keepalive, ended by the same
/// timeout). Twice: on the primary the link's own watch (`watch_for_stalls`) acts at `stall`;
/// the kernel's timeout is the backstop, and the backup's only watch.
pub fn bound_replication_stalls(
    stream: &tokio::net::TcpStream,
    stall: Duration,
) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let set = |e: nix::Error| std::io::Error::from(e);
    let ms = u32::try_from(stall.as_millis() * 2).unwrap_or(u32::MAX);
    setsockopt(stream, sockopt::TcpUserTimeout, &ms).map_err(set)?;
    setsockopt(stream, sockopt::KeepAlive, &true).map_err(set)?;
    setsockopt(stream, sockopt::TcpKeepIdle, &1).map_err(set)?;
    setsockopt(stream, sockopt::TcpKeepInterval, &1).map_err(set)?;
    Ok(())
}

/// Shared by the plane's tasks and read by the daemon for `status`.
#[derive(Default)]
pub struct PlaneShared {
    pub counters: PlaneCounters,
    /// Why connections were lost at takeovers, by reason label.
    pub lost_reasons: Mutex<BTreeMap<String, u64>>,
    /// Drop reasons of the ingress logger, by label.
    pub drop_reasons: Mutex<BTreeMap<String, u64>>,
    /// Gauge: connections the backup holds an image of, or the primary protects.
    pub protected_connections: AtomicU64,
    /// Gauge: 1 while the primary serves without a backup.
    pub unprotected_now: AtomicU64,
    /// Gauge, backup: client request bytes its connection images hold (against the table's
    /// memory budget, `TableLimits::max_bytes_held`).
    pub held_request_bytes: AtomicU64,
    /// The budget of `held_request_bytes` (0 until this node first protects a primary).
    pub request_bytes_budget: AtomicU64,
    /// Gauge, backup: reply bytes its log holds until their clients acknowledge them.
    pub held_reply_bytes: AtomicU64,
    /// Set once at start; read without a lock (the daemon's realtime thread reads it).
    pub proxy: std::sync::OnceLock<Arc<ProxyContext<ServiceFramer>>>,
    /// Set while a takeover rebuilds connections, until their sessions are counted.
    pub taking_over: AtomicBool,
    /// Active mode's counters and gauges.
    pub active: active::ActiveShared,
}

impl PlaneShared {
    /// Counts a replication stream that could not be read on: a frame whose tag failed
    /// (forged, replayed, reordered or corrupted) or one that does not decode.
    pub fn count_unreadable(&self, error: &ReplicationError) {
        let counter = match error {
            ReplicationError::Unsealed { .. } => &self.counters.forged_frames,
            _ => &self.counters.replication_frames_refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The adoption figures of the status (hand-overs to a backup that joined after the
    /// connections opened, and how long a join takes to protect them all).
    pub fn fill_adoption_status(&self, status: &mut crate::status::DataPlaneStatus) {
        let c = &self.counters;
        status.join_protected_last_ms = c.join_protected_last_ms.load(Ordering::Relaxed);
        status.join_protected_max_ms = c.join_protected_max_ms.load(Ordering::Relaxed);
        status.joins_protected = c.joins_protected.load(Ordering::Relaxed);
        if let Some(proxy) = self.proxy.get() {
            let p = &proxy.counters;
            status.adopted_mid_request = p.adopted_mid_request.load(Ordering::Relaxed);
            status.adopted_mid_reply = p.adopted_mid_reply.load(Ordering::Relaxed);
            status.adoption_waits = p
                .adoption_waits
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default();
            if proxy.gate.generation() != 0 {
                status.unadopted_now = proxy.census.unprotected_count();
            }
        }
    }

    pub fn count_reason(map: &Mutex<BTreeMap<String, u64>>, label: &str) {
        Self::count_reasons(map, label, 1);
    }

    pub fn count_reasons(map: &Mutex<BTreeMap<String, u64>>, label: &str, count: u64) {
        *map.lock()
            .expect("reason map lock")
            .entry(label.to_string())
            .or_default() += count;
    }
}

/// The running plane; dropping it does not stop it (the process exit does).
pub struct PlaneHandle {
    pub role: watch::Sender<PlaneRole>,
    /// Until when this node holds its lease as primary (see [`lease`]).
    pub lease: lease::LeaseSender,
    pub shared: Arc<PlaneShared>,
    duplex: bool,
    hand_over: mpsc::Sender<HandOverRequest>,
}

/// A request to stop serving the protected connections so that the backup can carry them on
/// (a planned stop); the reply says how many sessions were handed over.
pub type HandOverRequest = tokio::sync::oneshot::Sender<u64>;

impl PlaneHandle {
    /// Before a planned stop of a protected primary: its sessions stop sending (their
    /// sockets in repair mode) and no client frame reaches it any more, so the backup, which
    /// stands as soon as it hears the stop, rebuilds the connections exactly where their
    /// clients are. Returns how many sessions were handed over (0 when there is no backup, or
    /// within `within`).
    pub fn hand_over(&self, within: Duration) -> impl std::future::Future<Output = u64> + Send {
        let requests = self.hand_over.clone();
        async move {
            let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
            if requests.send(reply_tx).await.is_err() {
                return 0;
            }
            tokio::time::timeout(within, reply_rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0)
        }
    }

    /// Whether this duplex node carries open client connections that its backup does not
    /// protect (none joined yet, or it has not adopted them all): electing another node would
    /// drop them, so the election ranks this node first. Never in simplex: no backup ever
    /// protects its connections, so the rank would only block preemption for good.
    /// A takeover under way counts: the connections it rebuilds are in no census yet, and a
    /// lapse of this node's lease before they are would hand the service to a node that holds
    /// none of them.
    pub fn carries_unprotected_connections(&self) -> bool {
        self.duplex
            && (self.shared.taking_over.load(Ordering::Relaxed)
                || self
                    .shared
                    .proxy
                    .get()
                    .is_some_and(|proxy| proxy.census.carries_unprotected()))
    }
}

/// Starts the plane's runtime on its own threads.
pub fn start(settings: PlaneSettings) -> anyhow::Result<PlaneHandle> {
    let (role_tx, role_rx) = watch::channel(PlaneRole::Idle);
    let (lease_tx, lease_fence) = lease::lease();
    let (hand_over_tx, hand_over_rx) = mpsc::channel(1);
    let shared = Arc::new(PlaneShared::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("steadfast-plane")
        .enable_all()
        .build()
        .context("building the data plane runtime")?;
    let listeners = bind_listeners(&runtime, &settings.service)?;
    let duplex = settings.service.duplex;
    let plane_shared = shared.clone();
    // The daemon must not run a service whose data plane could not start: the set-up result
    // comes back before `start` returns.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("steadfast-plane".into())
        .spawn(move || {
            runtime.block_on(async move {
                let run = run(
                    settings,
                    listeners,
                    role_rx,
                    lease_fence,
                    hand_over_rx,
                    plane_shared,
                    ready_tx,
                );
                if let Err(e) = run.await {
                    tracing::error!("data plane stopped: {e:#}");
                    // Serving without the plane would break I1/I2 silently: stop the node.
                    std::process::exit(1);
                }
            })
        })
        .context("starting the data plane thread")?;
    ready_rx
        .recv()
        .context("the data plane thread ended during set-up")??;
    Ok(PlaneHandle {
        role: role_tx,
        lease: lease_tx,
        shared,
        duplex,
        hand_over: hand_over_tx,
    })
}

/// Listeners on VIP:port exist from the start (IP_FREEBIND): when the address arrives they
/// accept at once, and a takeover needs no extra step for new connections.
fn bind_listeners(
    runtime: &tokio::runtime::Runtime,
    service: &PlaneService,
) -> anyhow::Result<Vec<TcpListener>> {
    let _guard = runtime.enter();
    service
        .ports
        .iter()
        .map(|&port| {
            let addr = SocketAddrV4::new(service.vip, port);
            let std_listener = steadfast_os::repair::listener_on_foreign_address(addr, 4096)
                .with_context(|| format!("service {}: listening on {addr}", service.name))?;
            std_listener.set_nonblocking(true)?;
            TcpListener::from_std(std_listener)
                .with_context(|| format!("service {}: registering {addr}", service.name))
        })
        .collect()
}

/// A previous life of this node may have left sockets on the service address (TIME_WAIT ones
/// answer a rebuilt connection's client with an ACK, not an RST; orphans retransmit their FIN):
/// remove them first. Call it before the dead-man switch is armed: destroying a socket sends an
/// RST, which the previous life's fence still drops then, but would reach a client whose
/// connection another node now carries once this node's packets are live again.
pub(crate) fn destroy_lingering_sockets(service: &PlaneService) {
    for &port in &service.ports {
        let m = steadfast_os::sock_destroy::SocketMatch {
            local: Some(SocketAddrV4::new(service.vip, port)),
            remote: None,
        };
        match steadfast_os::sock_destroy::destroy_tcp_sockets(&m) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("destroyed {n} lingering sockets of a previous life on port {port}")
            }
            Err(e) => tracing::warn!("cannot destroy lingering sockets on port {port}: {e}"),
        }
    }
}

async fn run(
    settings: PlaneSettings,
    listeners: Vec<TcpListener>,
    role_rx: watch::Receiver<PlaneRole>,
    lease: lease::LeaseFence,
    mut hand_over_rx: mpsc::Receiver<HandOverRequest>,
    shared: Arc<PlaneShared>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let service = settings.service.clone();
    let framer = ServiceFramer::default();
    if service.active {
        // No backup carries an active primary's connections on (yet): nothing to hand over.
        tokio::spawn(async move {
            while let Some(reply) = hand_over_rx.recv().await {
                let _ = reply.send(0);
            }
        });
        return active::run(settings, listeners, role_rx, shared, ready).await;
    }
    if !service.duplex {
        let gate: Arc<dyn ReplyGate> = Arc::new(LocalGate::default());
        // No other node ever carries a simplex connection on: no lease fences it.
        let ctx = Arc::new(ProxyContext::for_service(
            &settings,
            framer,
            gate,
            lease::LeaseFence::unfenced(),
        ));
        let _ = shared.proxy.set(ctx.clone());
        for listener in listeners {
            tokio::spawn(accept_loop(listener, ctx.clone(), shared.clone()));
        }
        let _ = ready.send(Ok(()));
        // No backup ever carries a simplex connection on: nothing to hand over.
        while let Some(reply) = hand_over_rx.recv().await {
            let _ = reply.send(0);
        }
        std::future::pending::<()>().await;
        return Ok(());
    }
    let duplex = match primary::Duplex::new(settings, shared.clone(), framer, lease).await {
        Ok(duplex) => duplex,
        Err(e) => {
            let _ = ready.send(Err(e.context("starting the duplex plane")));
            std::future::pending::<()>().await;
            return Ok(());
        }
    };
    let _ = ready.send(Ok(()));
    for listener in listeners {
        tokio::spawn(accept_loop(listener, duplex.proxy.clone(), shared.clone()));
    }
    duplex.run(role_rx, hand_over_rx).await
}

/// Accepts client connections and runs a session for each.
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ProxyContext<ServiceFramer>>,
    shared: Arc<PlaneShared>,
) {
    loop {
        // At the limit, connections wait in the kernel's accept queue until a session ends.
        let slot = ctx.admission.slot().await;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (SocketAddr::V4(client), Ok(SocketAddr::V4(server))) = (peer, stream.local_addr())
        else {
            continue;
        };
        let tuple = FourTuple { client, server };
        let Some(admitted) = ctx.admission.admit(slot, *client.ip()) else {
            ctx.counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("{tuple}: refused, its address has as many connections as it may");
            // A backup that saw the handshake forgets the connection.
            if ctx.gate.generation() != 0 {
                ctx.gate.closed(tuple);
            }
            continue;
        };
        let (isn, client_mss, options) = match accepted_connection_facts(&stream) {
            Ok(facts) => {
                if facts.by_syn_cookie {
                    ctx.counters
                        .accepted_by_syn_cookie
                        .fetch_add(1, Ordering::Relaxed);
                }
                (facts.client_isn, facts.client_mss, facts.options)
            }
            Err(e) => {
                tracing::warn!("connection {tuple}: {e:#}");
                continue;
            }
        };
        let generation = ctx.gate.generation();
        // Counted before the backup hears of it: its answer that it never saw the connection
        // open (`Unlogged`) may come back at once, and must find the session.
        let mut protection = ctx.census.enter(tuple, generation);
        let protected = generation != 0 && ctx.gate.opened(tuple, isn, options);
        if !protected {
            protection.protected_by(0);
        }
        if protected {
            shared.protected_connections.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            "{tuple}: accepted (protected by link generation {generation}: {protected})"
        );
        let connection_id = ctx.request_ids.connection_id(&tuple, isn);
        let start = SessionStart::fresh(tuple, connection_id, isn, options, client_mss);
        let ctx = ctx.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            proxy::serve(ctx, stream, start, protection).await;
            drop(admitted);
            if protected {
                shared.protected_connections.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
}

/// What the plane needs to know of an accepted connection.
struct AcceptedFacts {
    /// The request ids depend on it.
    client_isn: u32,
    client_mss: u16,
    /// What the kernel negotiated (the backup needs it to rebuild the socket).
    options: ConnectionOptions,
    /// The handshake was completed by a SYN cookie: no SYN was saved.
    by_syn_cookie: bool,
}

/// The client's ISN and MSS from the saved SYN, or, for a handshake a SYN cookie completed (the
/// listener's SYN queue overflowed: a flood), the ISN from the socket's receive sequence and
/// the default MSS; and the options the kernel negotiated.
fn accepted_connection_facts(stream: &tokio::net::TcpStream) -> anyhow::Result<AcceptedFacts> {
    let (client_isn, client_mss, by_syn_cookie) = match steadfast_os::repair::saved_syn(stream) {
        Ok(syn) => (
            syn.client_isn,
            syn.mss.unwrap_or(steadfast_core::image::DEFAULT_MSS),
            false,
        ),
        Err(saved) => {
            let isn = steadfast_os::repair::client_isn_of_unread_socket(stream)
                .with_context(|| format!("no saved SYN ({saved}), and no receive sequence"))?;
            (isn, steadfast_core::image::DEFAULT_MSS, true)
        }
    };
    let info = steadfast_os::repair::tcp_info_options(stream).context("reading TCP_INFO")?;
    Ok(AcceptedFacts {
        client_isn,
        client_mss,
        by_syn_cookie,
        options: ConnectionOptions {
            window_scales: info.window_scales,
            sack: info.sack,
            timestamps: info.timestamps,
            mss: info.snd_mss,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(half_open: Option<u32>, bytes: Option<u64>) -> PlaneService {
        PlaneService {
            name: "web".into(),
            vip: Ipv4Addr::new(10, 0, 0, 100),
            prefix_len: 24,
            ports: vec![80],
            interface: "eth0".into(),
            duplex: true,
            active: false,
            backend: "127.0.0.1:80".parse().unwrap(),
            stream_above: 1 << 20,
            client_timeouts: steadfast_core::client_timer::ClientTimeouts {
                header: Duration::from_secs(60),
                idle: Duration::from_secs(75),
            },
            max_connections: None,
            max_connections_per_source: None,
            max_half_open_per_source: half_open,
            max_request_bytes_held: bytes,
            half_open_lifetime: None,
            delivery: Default::default(),
            read_policy: Default::default(),
            garp_count: 1,
            garp_spacing: Duration::from_millis(100),
        }
    }

    #[test]
    fn the_backup_table_takes_the_configured_bounds_else_its_defaults() {
        let defaults = steadfast_core::image::TableLimits::default();
        assert_eq!(service(None, None).table_limits(), defaults);
        let configured = service(Some(64), Some(1 << 20)).table_limits();
        assert_eq!(
            (
                configured.max_half_open_per_source,
                configured.max_bytes_held
            ),
            (64, 1 << 20)
        );
        assert_eq!(
            (configured.max_connections, configured.max_half_open),
            (defaults.max_connections, defaults.max_half_open)
        );
    }
}
