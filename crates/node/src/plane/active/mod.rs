//! The data plane of active mode (seed 001): every member runs its own redis-server; the
//! primary frames the clients' requests, orders the updates and sends them to every replica
//! over a link of its own ([`link`]), spreads the reads, and compares the replicas' replies
//! ([`front`]); each member's replica runs what it is sent against its server ([`replica`]).
//!
//! The primary's own node is a replica like the others, linked over the same TCP link: one
//! code path for every replica, at the cost of a loopback hop on the primary.
//!
//! A replica whose link falls silent for one detection is taken out and its reads run again
//! elsewhere; a linked replica out of the ordering (lost, restarted, diverged or lagging) is
//! rebuilt from a live one's copy ([`replica`] takes and loads copies, [`front`] drives the
//! rebuild).
//!
//! A new primary goes on from the replica that received most ([`front`], `active_takeover` in
//! the core); its clients reconnect.
//!
//! Not built yet (issue 18): carrying the clients' connections to the new primary,
//! replicating the effects of non-deterministic writes other than SPOP (refused by name
//! meanwhile).
//!
//! The service chooses its delivery (`delivery`: best effort, or safe: a replica runs an
//! update once the primary announced it held by all) and which replicas serve reads
//! (`read_policy`); both reach the ordering through [`ActiveContext`].

pub mod front;
pub mod link;
pub mod replica;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use steadfast_core::active_order::{DeliveryStrategy, OrderingSettings, ReadPolicy};
use steadfast_core::heartbeat_wire::AuthKey;
use steadfast_core::replication_seal::Protection;
use steadfast_core::NodeId;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::{PlaneRole, PlaneSettings, PlaneShared};

/// The active link listens on the heartbeat port + 2 (the replication channel of duplex has
/// + 1).
pub const ACTIVE_LINK_PORT_OFFSET: u16 = 2;
/// How often the ordering's timers (retransmission, NAK repeats) run.
pub const TICK: Duration = Duration::from_millis(5);

/// What the primary's front and every replica share.
pub struct ActiveContext {
    pub node_id: NodeId,
    pub key: AuthKey,
    pub protection: Protection,
    /// The local redis-server.
    pub backend: SocketAddr,
    /// Every member's address (each runs a replica).
    pub members: BTreeMap<NodeId, Ipv4Addr>,
    pub link_port: u16,
    /// How long a link may leave data unacknowledged before the kernel ends it (the group's
    /// `replication_stall_ms`, as for duplex's stream): a replica whose host died is then
    /// found, and what only it would have answered is answered with an error.
    pub stall: Duration,
    /// A replica's link silent this long (the group's detection) is dropped and the replica
    /// taken out: its reads run again elsewhere and nothing waits for it.
    pub detection: Duration,
    /// The ordering's settings on both ends (the service's `delivery`): the primary's
    /// `Sequencer` and every `ReplicaOrder` must run the same strategy, or a safe replica waits
    /// for stability a best-effort group never needs it to wait for.
    pub ordering: OrderingSettings,
    /// Which replicas the primary's `ReadScheduler` sends reads to (`read_policy`).
    pub read_policy: ReadPolicy,
    /// The notify hook and its counters, for alarms.
    pub hook: Option<(crate::hooks::Hook, Arc<crate::hooks::HookCounters>)>,
    pub group_name: String,
    shared: Arc<PlaneShared>,
}

impl ActiveContext {
    pub fn shared(&self) -> &PlaneShared {
        &self.shared
    }

    /// Runs the notify hook for an alarm of the primary in `epoch` (`STEADFAST_EVENT` =
    /// `event`, `STEADFAST_REASON` = `reason`), without waiting for it.
    pub fn alarm(&self, event: &str, epoch: u64, reason: String) {
        if let Some((hook, counters)) = &self.hook {
            let change = crate::hooks::RoleChange {
                event,
                node_id: self.node_id,
                group: &self.group_name,
                role: "primary",
                epoch,
                reason,
            };
            // The hook's own task waits for it and kills it at its timeout.
            drop(crate::hooks::spawn(hook, change, counters.clone()));
        }
    }

    /// A link from `node` at `from` is one of the group's: the node is a member and the
    /// connection comes from its address.
    pub fn is_member(&self, node: NodeId, from: SocketAddr) -> bool {
        self.members
            .get(&node)
            .is_some_and(|address| from.ip() == std::net::IpAddr::V4(*address))
    }
}

/// Counters and gauges of active mode, for `status`.
#[derive(Default)]
pub struct ActiveShared {
    /// This node runs the primary's front.
    pub primary: AtomicBool,
    pub updates_ordered: AtomicU64,
    pub last_ordered: AtomicU64,
    /// Held by every replica.
    pub stable: AtomicU64,
    pub reads_scheduled: AtomicU64,
    /// Reads sent to each replica (round-robin).
    pub reads_by_replica: Mutex<BTreeMap<NodeId, u64>>,
    /// Updates whose replies every replica's digest matched.
    pub replies_agreed: AtomicU64,
    /// Replicas found diverged or lagging, and why (the primary itself when outvoted).
    pub divergences: Mutex<BTreeMap<NodeId, String>>,
    /// Requests answered with a refusal.
    pub refused: AtomicU64,
    /// Client sessions opened, and open now.
    pub sessions: AtomicU64,
    pub sessions_open: AtomicU64,
    /// Replicas linked to this primary now.
    pub linked: Mutex<BTreeSet<NodeId>>,
    /// Replica: every update up to here was handed to its redis-server.
    pub delivered: AtomicU64,
    /// Replica: reads it answered.
    pub reads_served: AtomicU64,
    /// Replica: sessions whose server connection failed, and work out of order.
    pub replica_errors: AtomicU64,
    /// Replicas whose link fell silent for a detection and were taken out.
    pub replicas_lost: AtomicU64,
    /// Reads a lost replica owed, run again on a live one.
    pub reads_rerun: AtomicU64,
    /// Replicas that serve reads now.
    pub serving: Mutex<BTreeSet<NodeId>>,
    /// Replicas rebuilt from a live one's copy and caught up, and how long the last took
    /// (from asking for the copy to serving reads).
    pub rebuilds: AtomicU64,
    pub last_rebuild_ms: AtomicU64,
    /// Primaries started here that went on from a replica's data, and the number the last one
    /// went on from.
    pub takeovers: AtomicU64,
    pub took_over_at: AtomicU64,
    /// Random writes (SPOP) run on this primary's own replica and replicated as their effect.
    pub random_writes: AtomicU64,
    /// The service's delivery strategy and read policy, set once the plane starts.
    pub choices: std::sync::OnceLock<(DeliveryStrategy, ReadPolicy)>,
}

impl ActiveShared {
    pub fn status(&self) -> crate::status::ActiveStatus {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        crate::status::ActiveStatus {
            primary: self.primary.load(Ordering::Relaxed),
            updates_ordered: load(&self.updates_ordered),
            last_ordered: load(&self.last_ordered),
            stable: load(&self.stable),
            reads_scheduled: load(&self.reads_scheduled),
            reads_by_replica: self
                .reads_by_replica
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            replies_agreed: load(&self.replies_agreed),
            divergences: self
                .divergences
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            refused: load(&self.refused),
            sessions: load(&self.sessions),
            sessions_open: load(&self.sessions_open),
            linked: self
                .linked
                .lock()
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            delivered: load(&self.delivered),
            reads_served: load(&self.reads_served),
            replica_errors: load(&self.replica_errors),
            replicas_lost: load(&self.replicas_lost),
            reads_rerun: load(&self.reads_rerun),
            rebuilds: load(&self.rebuilds),
            last_rebuild_ms: load(&self.last_rebuild_ms),
            takeovers: load(&self.takeovers),
            took_over_at: load(&self.took_over_at),
            random_writes: load(&self.random_writes),
            delivery: self
                .choices
                .get()
                .map(|(delivery, _)| delivery.name().to_string())
                .unwrap_or_default(),
            read_policy: self
                .choices
                .get()
                .map(|(_, policy)| policy.name().to_string())
                .unwrap_or_default(),
            serving: self
                .serving
                .lock()
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        }
    }
}

/// Runs active mode: the replica on every member, the front while this node is primary.
pub(super) async fn run(
    settings: PlaneSettings,
    listeners: Vec<TcpListener>,
    mut role_rx: watch::Receiver<PlaneRole>,
    shared: Arc<PlaneShared>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let link_port =
        settings.replication_port - super::REPLICATION_PORT_OFFSET + ACTIVE_LINK_PORT_OFFSET;
    let _ = shared
        .active
        .choices
        .set((settings.service.delivery, settings.service.read_policy));
    let ctx = Arc::new(ActiveContext {
        node_id: settings.node_id,
        key: settings.key.clone(),
        protection: settings.protection,
        backend: settings.service.backend,
        members: settings.members.clone(),
        link_port,
        stall: settings.replication_stall,
        detection: settings.detection,
        ordering: OrderingSettings {
            strategy: settings.service.delivery,
            ..OrderingSettings::default()
        },
        read_policy: settings.service.read_policy,
        hook: settings
            .hook
            .clone()
            .map(|hook| (hook, settings.hook_counters.clone())),
        group_name: settings.group_name.clone(),
        shared,
    });
    let address = replica::listen_address(settings.local_address, link_port);
    let replica_listener = match TcpListener::bind(address)
        .await
        .with_context(|| format!("active mode: listening for the primary's link on {address}"))
    {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(e));
            std::future::pending::<()>().await;
            return Ok(());
        }
    };
    let _ = ready.send(Ok(()));
    tokio::spawn(replica::run(ctx.clone(), replica_listener));

    // The accept loops hand clients to the front while there is one.
    let front_slot: Arc<Mutex<Option<mpsc::UnboundedSender<front::FrontEvent>>>> = Arc::default();
    for listener in listeners {
        let slot = front_slot.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let front = slot.lock().expect("front slot lock").clone();
                        match front {
                            Some(front) => {
                                let _ = front.send(front::FrontEvent::NewClient(stream));
                            }
                            // Not primary (any more): the client reconnects to the one that is.
                            None => drop(stream),
                        }
                    }
                    Err(e) => {
                        tracing::warn!("active mode: accepting clients: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }

    let mut running: Option<(u64, tokio::task::JoinHandle<()>)> = None;
    loop {
        let role = *role_rx.borrow_and_update();
        match role {
            PlaneRole::Primary { epoch, .. } => {
                if running.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    if let Some((_, task)) = running.take() {
                        task.abort();
                    }
                    let (tx, rx) = mpsc::unbounded_channel();
                    *front_slot.lock().expect("front slot lock") = Some(tx.clone());
                    let ctx = ctx.clone();
                    let task = tokio::spawn(async move {
                        if let Err(e) = front::run(ctx.clone(), epoch, tx, rx).await {
                            tracing::error!("active mode: the primary's front stopped: {e:#}");
                        }
                        ctx.shared().active.primary.store(false, Ordering::Relaxed);
                    });
                    running = Some((epoch, task));
                }
            }
            PlaneRole::Backup { .. } | PlaneRole::Idle => {
                if let Some((_, task)) = running.take() {
                    tracing::warn!(
                        "active mode: no longer primary; its clients' connections are dropped \
                         (carrying them to the new primary is not built yet)"
                    );
                    *front_slot.lock().expect("front slot lock") = None;
                    task.abort();
                    ctx.shared().active.primary.store(false, Ordering::Relaxed);
                }
            }
        }
        if role_rx.changed().await.is_err() {
            return Ok(());
        }
    }
}
