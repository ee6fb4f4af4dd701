//! The status document a daemon serves on its control socket (JSON), and its human rendering.

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// `steadfast status --ruleset`: Steadfast's nftables tables in the network namespace this
/// process runs in, read from the kernel over netlink and written in nft's syntax.
pub fn ruleset_text() -> anyhow::Result<String> {
    let text = steadfast_os::nftables::steadfast_ruleset_text()
        .context("reading Steadfast's nftables tables from the kernel (needs CAP_NET_ADMIN)")?;
    if text.is_empty() {
        return Ok("# no steadfast_* nftables table in this network namespace\n".to_string());
    }
    Ok(text)
}

/// This process's resident memory (`/proc/self/statm`), None where it cannot be read.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * page as u64)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub ports: Vec<u16>,
    pub mode: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: u16,
    pub role: Option<String>,
    pub healthy: bool,
    pub has_quorum: bool,
    /// It carries open connections no other node could carry on (duplex).
    #[serde(default)]
    pub holds_connections: bool,
    pub alive: bool,
    pub last_heard_ms: Option<u64>,
    /// Why this node knows the silent peer is dead (its host does not answer, its daemon is
    /// gone), when it probed it.
    #[serde(default)]
    pub dead: Option<String>,
    /// Its frames that came more than two heartbeat intervals after the one before, and the
    /// longest such gap.
    #[serde(default)]
    pub late_heartbeats: u64,
    #[serde(default)]
    pub longest_gap_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub frames_sent: u64,
    pub send_errors: u64,
    pub frames_received: u64,
    pub dropped_malformed: u64,
    pub dropped_bad_mac: u64,
    pub dropped_unknown_node: u64,
    pub dropped_replay: u64,
    /// Frames that did not name this node's current incarnation: sent before it started (a
    /// replay across its restart), or by a peer that had not heard it yet.
    #[serde(default)]
    pub dropped_unfresh: u64,
    pub dropped_old_epoch: u64,
    pub role_changes: u64,
    pub elections_started: u64,
    pub elections_won: u64,
    pub garp_sent: u64,
    pub hooks_run: u64,
    pub hooks_failed: u64,
    pub address_errors: u64,
    /// Renewals of the fence's kernel lease the kernel refused (the addresses go dark).
    #[serde(default)]
    pub kernel_lease_errors: u64,
    /// Step-downs while this node held open connections no other node could carry on, by
    /// reason: each put those connections at risk (they are lost unless it is elected again
    /// with nobody between; the data plane counts the ones lost).
    #[serde(default)]
    pub step_downs_holding: std::collections::BTreeMap<String, u64>,
    /// Silent peers found dead by a probe of their host (see `peers[].dead`).
    #[serde(default)]
    pub peers_found_dead: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: u16,
    pub group: String,
    pub role: String,
    pub epoch: u64,
    /// This process's incarnation, which its peers' heartbeats must echo.
    #[serde(default)]
    pub incarnation: u64,
    pub healthy: bool,
    pub health_detail: Vec<String>,
    pub has_quorum: bool,
    /// In standby (`steadfast standby on`): never stands, serves nothing.
    #[serde(default)]
    pub standby: bool,
    /// The member a planned switchover (`steadfast move`) is under way to: only it may be
    /// elected for now.
    #[serde(default)]
    pub handoff_to: Option<u16>,
    /// This node carries open connections its backup does not protect: the election ranks it
    /// first (duplex).
    #[serde(default)]
    pub holds_connections: bool,
    /// A peer holding open connections that went silent, which this node waits for (up to
    /// `holder_grace_ms`) instead of standing against it.
    #[serde(default)]
    pub waiting_for_holder: Option<u16>,
    #[serde(default)]
    pub holder_grace_ms: u64,
    pub primary: Option<u16>,
    pub vip_held: bool,
    pub uptime_ms: u64,
    /// The daemon's resident memory (gauge), to read the data plane's budgets against.
    #[serde(default)]
    pub resident_bytes: u64,
    pub heartbeat_interval_ms: u64,
    pub miss_count: u32,
    pub services: Vec<ServiceStatus>,
    pub peers: Vec<PeerStatus>,
    pub counters: Counters,
    /// The simplex/duplex data plane, when the node runs one.
    #[serde(default)]
    pub data_plane: Option<DataPlaneStatus>,
}

/// Counters of the data plane (cumulative unless marked as a gauge).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataPlaneStatus {
    pub mode: String,
    /// Backup: client frames logged, forwarded to the primary, dropped as malformed (by
    /// reason) and refused by the connection image.
    pub frames_logged: u64,
    pub frames_forwarded: u64,
    pub frames_dropped: u64,
    pub frames_refused: u64,
    pub drop_reasons: std::collections::BTreeMap<String, u64>,
    pub arp_replies: u64,
    /// Bytes logged: client payload and reply bytes.
    pub log_bytes: u64,
    /// Gauge: connections protected now (primary: by a backup; backup: images held).
    pub protected_connections: u64,
    pub replies_logged: u64,
    /// Time the primary served with no backup, and whether it does now.
    pub unprotected_ms: u64,
    pub unprotected_now: bool,
    pub backups_joined: u64,
    pub backup_losses: u64,
    /// Established connections handed to (primary) or taken by (backup) a backup that joined
    /// after they opened.
    pub adopted: u64,
    /// Client frames held during takeovers' rebuilds and handed to the rebuilt sockets.
    pub frames_held_at_takeover: u64,
    /// Primary: client frames refused for not coming through the backup (I1).
    pub guard_dropped: u64,
    /// Primary: client frames that came straight to it and were bounced to the backup to be
    /// logged first (I1), instead of dropped.
    pub guard_bounced: u64,
    pub adoptions_skipped: u64,
    pub takeovers: u64,
    pub connections_restored: u64,
    /// Of those, connections the old primary had accepted but not reported (in its accept
    /// queue at the crash), resumed from the log alone.
    #[serde(default)]
    pub connections_restored_unreported: u64,
    /// Clients a takeover asked how far they read (each with a reply in flight).
    #[serde(default)]
    pub probes_sent: u64,
    /// Clients that did not answer a takeover's acknowledgement probe within its wait: their
    /// connections were rebuilt from the backup's image of them, which may lag.
    #[serde(default)]
    pub probes_unanswered: u64,
    pub connections_lost: u64,
    pub lost_reasons: std::collections::BTreeMap<String, u64>,
    /// Connections whose handshake had not completed at a takeover (not counted as lost):
    /// their logged SYN replayed to the new primary's kernel, which answered the client at
    /// once, or left to the client's own retransmission.
    #[serde(default)]
    pub syns_replayed: u64,
    #[serde(default)]
    pub syns_not_replayed: u64,
    pub last_takeover_us: u64,
    pub last_restore_per_second: u64,
    pub replication_frames_refused: u64,
    pub replication_old_epoch: u64,
    pub handshakes_refused: u64,
    /// Links the primary dropped because its backup left pieces unacknowledged too long.
    #[serde(default)]
    pub replication_stalls: u64,
    /// Replication streams refused because the same primary had linked with a later attempt.
    #[serde(default)]
    pub stale_link_attempts: u64,
    /// Connections reported opened whose opening the backup never saw, sent back for adoption.
    #[serde(default)]
    pub opened_unlogged: u64,
    /// Of those, connections whose SYN the backup logged but whose handshake went around it.
    #[serde(default)]
    pub opened_around: u64,
    /// Half-open connection images pushed out by newer SYNs (a SYN flood).
    #[serde(default)]
    pub half_open_evicted: u64,
    /// Half-open connection images dropped after the SYN-RECV lifetime (64 s).
    #[serde(default)]
    pub half_open_expired: u64,
    /// Client request bytes the backup's connection images hold now, and the budget at or
    /// above which new connections wait.
    #[serde(default)]
    pub held_request_bytes: u64,
    #[serde(default)]
    pub request_bytes_budget: u64,
    /// Reply bytes the backup's log holds until their clients acknowledge them.
    #[serde(default)]
    pub held_reply_bytes: u64,
    pub forged_frames: u64,
    /// The proxy.
    pub connections: u64,
    pub connections_unprotected: u64,
    pub requests: u64,
    pub replies: u64,
    pub reply_bytes: u64,
    pub replies_unprotected: u64,
    /// Reply pieces that waited for this node's lease before going out unlogged (it was told
    /// late that its backup was gone, or its lease lapsed for a moment).
    #[serde(default)]
    pub replies_fenced: u64,
    pub bad_requests: u64,
    pub backend_errors: u64,
    /// Idempotent requests sent again on a fresh backend connection: the reused one closed
    /// before any byte of their reply (the server's keep-alive timeout crossing the request).
    #[serde(default)]
    pub backend_retries: u64,
    /// Client connections closed after the idle timeout with no request under way.
    #[serde(default)]
    pub client_idle_timeouts: u64,
    /// Request heads not complete within the header timeout: answered 408 and closed.
    #[serde(default)]
    pub client_header_timeouts: u64,
    /// Connections closed at once because their address had `max_connections_per_source`.
    #[serde(default)]
    pub connections_refused: u64,
    /// Connections whose handshake a SYN cookie completed (a full SYN queue: a flood).
    #[serde(default)]
    pub accepted_by_syn_cookie: u64,
    /// The most client connections served at once (`max_connections`, or what the open-file
    /// limit allows).
    #[serde(default)]
    pub max_connections: u64,
    /// Replies cut by a takeover in the middle and finished by a range request (I2).
    #[serde(default)]
    pub replies_resumed: u64,
    /// Of the cut replies taken over, those the backend would not finish (changed ETag, a
    /// refused range): the client connection was reset rather than sent a spliced body.
    #[serde(default)]
    pub resumes_failed: u64,
    /// Replies already partly sent when the backend failed: the client connection was reset.
    #[serde(default)]
    pub replies_aborted: u64,
    /// Gauge: client connections open on this node's proxy.
    #[serde(default)]
    pub sessions_open: u64,
    /// Sessions ended without a byte to their clients when another node became primary and
    /// carried their connections on.
    #[serde(default)]
    pub sessions_retired: u64,
    /// Of those, the ones the new primary could not carry on (not protected by it): lost.
    #[serde(default)]
    pub sessions_dropped_at_step_down: u64,
    /// Primary: of `adopted`, connections handed over in the middle of a request (an upload,
    /// a reply the backend has not begun) and in the middle of a reply (a streamed reply under
    /// way, or reply bytes the client had not acknowledged).
    #[serde(default)]
    pub adopted_mid_request: u64,
    #[serde(default)]
    pub adopted_mid_reply: u64,
    /// Primary: why hand-overs had to wait (tried again later), by reason.
    #[serde(default)]
    pub adoption_waits: std::collections::BTreeMap<String, u64>,
    /// Gauge, primary with a backup: open connections the backup does not protect yet.
    #[serde(default)]
    pub unadopted_now: u64,
    /// Primary: how long the latest backup took from its join until every open connection was
    /// protected (adopted or ended), the longest such time, and how many joins got there.
    #[serde(default)]
    pub join_protected_last_ms: u64,
    #[serde(default)]
    pub join_protected_max_ms: u64,
    #[serde(default)]
    pub joins_protected: u64,
    /// Where time goes, stage by stage (only stages this node ran): see `StageLatency`.
    #[serde(default)]
    pub stages: std::collections::BTreeMap<String, StageLatency>,
    /// Active mode's ordering, reads and reply comparison.
    #[serde(default)]
    pub active: Option<ActiveStatus>,
}

/// Active mode on one member: its part as primary (ordering, reads, comparison) and as replica.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActiveStatus {
    /// This node runs the primary's front now.
    pub primary: bool,
    pub updates_ordered: u64,
    pub last_ordered: u64,
    /// Held by every replica.
    pub stable: u64,
    pub reads_scheduled: u64,
    /// Reads sent to each replica, by node id.
    pub reads_by_replica: std::collections::BTreeMap<u16, u64>,
    /// Updates whose replies every replica's digest matched.
    pub replies_agreed: u64,
    /// Replicas found diverged or lagging (the primary itself when outvoted), and why.
    pub divergences: std::collections::BTreeMap<u16, String>,
    pub refused: u64,
    pub sessions: u64,
    pub sessions_open: u64,
    /// Replicas linked to this primary now.
    pub linked: Vec<u16>,
    /// As a replica: every update up to here went to its redis-server.
    pub delivered: u64,
    pub reads_served: u64,
    pub replica_errors: u64,
    /// Replicas whose link fell silent for a detection and were taken out.
    #[serde(default)]
    pub replicas_lost: u64,
    /// Reads a lost replica owed, run again on a live one.
    #[serde(default)]
    pub reads_rerun: u64,
    /// Replicas that serve reads now.
    #[serde(default)]
    pub serving: Vec<u16>,
    /// Replicas rebuilt from a live one's copy and caught up.
    #[serde(default)]
    pub rebuilds: u64,
    /// How long the last rebuild took, from asking for the copy to serving reads.
    #[serde(default)]
    pub last_rebuild_ms: u64,
    /// Primaries started on this node that went on from a replica's data (not a new group).
    #[serde(default)]
    pub takeovers: u64,
    /// The update number this node's last primary went on from.
    #[serde(default)]
    pub took_over_at: u64,
    /// Random writes (SPOP) run on the primary's own replica and replicated as their effect.
    #[serde(default)]
    pub random_writes: u64,
    /// The service's `delivery` ("best-effort" or "safe") and `read_policy` ("with-primary"
    /// or "without-primary"), as this node runs them.
    #[serde(default)]
    pub delivery: String,
    #[serde(default)]
    pub read_policy: String,
}

/// One stage's durations since the daemon started, in microseconds; quantiles are the upper
/// edges of log-linear buckets (at most 1/8 above the exact value).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StageLatency {
    pub count: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The durations by power-of-two buckets, for the Prometheus endpoint's histograms (in
    /// the daemon only: the control socket's document keeps the quantiles).
    #[serde(skip)]
    pub histogram: steadfast_core::latency::PowerOfTwoBuckets,
}

impl From<steadfast_core::latency::LatencySummary> for StageLatency {
    fn from(s: steadfast_core::latency::LatencySummary) -> Self {
        StageLatency {
            count: s.count,
            mean_us: s.mean_us,
            p50_us: s.p50_us,
            p90_us: s.p90_us,
            p99_us: s.p99_us,
            max_us: s.max_us,
            histogram: Default::default(),
        }
    }
}

impl NodeStatus {
    /// A few lines for a person.
    pub fn render(&self) -> String {
        let mut s = format!(
            "node {} of group {}: {} in epoch {} ({}), {}, primary {}, address {}\n",
            self.node_id,
            self.group,
            self.role,
            self.epoch,
            epoch_label(self.epoch),
            if self.healthy { "healthy" } else { "UNHEALTHY" },
            self.primary
                .map_or("unknown".to_string(), |p| p.to_string()),
            if self.vip_held {
                "held here"
            } else {
                "not here"
            },
        );
        if !self.has_quorum {
            s.push_str("  WITHOUT QUORUM: will not serve\n");
        }
        if self.standby {
            s.push_str(
                "  STANDBY: serves nothing and never stands (tells its peers it cannot serve); \
                 `steadfast standby off` ends it\n",
            );
        }
        if let Some(to) = self.handoff_to {
            s.push_str(&format!(
                "  planned switchover to node {to} under way: only it may be elected\n"
            ));
        }
        if self.holds_connections {
            s.push_str(
                "  holds open connections its backup does not protect: elections rank it first\n",
            );
        }
        if let Some(holder) = self.waiting_for_holder {
            s.push_str(&format!(
                "  waiting for node {holder}, silent and holding connections no other node could \
                 carry on (up to {} ms, unless found dead)\n",
                self.holder_grace_ms
            ));
        }
        for d in &self.health_detail {
            s.push_str(&format!("  health: {d}\n"));
        }
        s.push_str(&format!(
            "  resident memory {:.1} MiB, up {:.1} s\n",
            self.resident_bytes as f64 / (1024.0 * 1024.0),
            self.uptime_ms as f64 / 1000.0
        ));
        for svc in &self.services {
            s.push_str(&format!(
                "  service {}: {} ports {:?} mode {}\n",
                svc.name, svc.vip, svc.ports, svc.mode
            ));
        }
        for p in &self.peers {
            s.push_str(&format!(
                "  peer {}: {} {} {}{}, last heard {}{}; {} late heartbeats (longest gap {} ms)\n",
                p.id,
                p.role.as_deref().unwrap_or("never heard"),
                if p.alive { "alive" } else { "DEAD" },
                if p.healthy { "healthy" } else { "unhealthy" },
                if p.holds_connections {
                    ", holds connections"
                } else {
                    ""
                },
                p.last_heard_ms
                    .map_or("never".to_string(), |ms| format!("{ms} ms ago")),
                p.dead
                    .as_ref()
                    .map_or(String::new(), |why| format!(" (found dead: {why})")),
                p.late_heartbeats,
                p.longest_gap_ms,
            ));
        }
        if let Some(d) = &self.data_plane {
            s.push_str(&format!(
                "  {} data plane: {} requests, {} replies ({} bytes), {} connections ({} unprotected), {} open, {} protected now{}\n",
                d.mode, d.requests, d.replies, d.reply_bytes, d.connections, d.connections_unprotected,
                d.sessions_open, d.protected_connections,
                if d.unprotected_now { ", SERVING WITHOUT A BACKUP" } else { "" }
            ));
            s.push_str(&format!(
                "  logger: {} frames logged, {} forwarded, {} dropped {:?}, {} refused, {} ARP replies; {} log bytes, {} replies logged; guard bounced {} frames that bypassed the backup to it, dropped {}; half-open images pushed out by newer SYNs {}, expired {}; request bytes held {} of {}, reply bytes held {}\n",
                d.frames_logged, d.frames_forwarded, d.frames_dropped, d.drop_reasons, d.frames_refused,
                d.arp_replies, d.log_bytes, d.replies_logged, d.guard_bounced, d.guard_dropped,
                d.half_open_evicted, d.half_open_expired, d.held_request_bytes, d.request_bytes_budget, d.held_reply_bytes
            ));
            s.push_str(&format!(
                "  takeovers {}: {} connections restored, {} lost {:?}, {} half-open SYNs replayed ({} not), {} client frames held; last took {} µs ({} conn/s); unprotected {} ms; backups joined {} lost {}; adopted {}\n",
                d.takeovers, d.connections_restored, d.connections_lost, d.lost_reasons,
                d.syns_replayed, d.syns_not_replayed,
                d.frames_held_at_takeover, d.last_takeover_us, d.last_restore_per_second,
                d.unprotected_ms, d.backups_joined, d.backup_losses, d.adopted
            ));
            s.push_str(&format!(
                "  adoption: {} mid-request, {} mid-reply, {} not yet; waits {:?}; every connection protected {} ms after the last join (longest {} ms, {} joins)\n",
                d.adopted_mid_request, d.adopted_mid_reply, d.unadopted_now, d.adoption_waits,
                d.join_protected_last_ms, d.join_protected_max_ms, d.joins_protected
            ));
            s.push_str(&format!(
                "  cut replies finished by range {}, not finishable {}; replies aborted after a backend failure {}; sessions retired at a step-down {} (of which lost, the new primary could not carry them on: {})\n",
                d.replies_resumed, d.resumes_failed, d.replies_aborted, d.sessions_retired,
                d.sessions_dropped_at_step_down
            ));
            s.push_str(&format!(
                "  backend: errors {}, requests sent again on a fresh connection {}\n",
                d.backend_errors, d.backend_retries
            ));
            s.push_str(&format!(
                "  clients: closed idle {}, request heads timed out (408) {}; at most {} at once, refused (per-address limit) {}, accepted by SYN cookie {}\n",
                d.client_idle_timeouts, d.client_header_timeouts, d.max_connections, d.connections_refused,
                d.accepted_by_syn_cookie
            ));
            if let Some(a) = &d.active {
                s.push_str(&format!(
                    "  active: {}, delivery {}, read policy {}; {} updates ordered (last {}, stable {}), {} reads scheduled {:?}, {} replies agreed, {} refused; {} client sessions ({} open); replicas linked {:?}\n",
                    if a.primary { "primary" } else { "replica" },
                    a.delivery, a.read_policy,
                    a.updates_ordered, a.last_ordered, a.stable, a.reads_scheduled,
                    a.reads_by_replica, a.replies_agreed, a.refused, a.sessions, a.sessions_open,
                    a.linked
                ));
                s.push_str(&format!(
                    "  active replica: delivered up to {}, {} reads served, {} errors\n",
                    a.delivered, a.reads_served, a.replica_errors
                ));
                for (node, why) in &a.divergences {
                    s.push_str(&format!("  active: REPLICA {node} TAKEN OUT: {why}\n"));
                }
            }
            if !d.stages.is_empty() {
                s.push_str("  stages (µs: p50 p90 p99 max, mean, count):");
                for (name, l) in &d.stages {
                    s.push_str(&format!(
                        " {name} {} {} {} {}, {}, {};",
                        l.p50_us, l.p90_us, l.p99_us, l.max_us, l.mean_us, l.count
                    ));
                }
                s.pop();
                s.push('\n');
            }
        }
        let c = &self.counters;
        s.push_str(&format!(
            "  frames sent {} received {}; dropped: malformed {} bad-mac {} unknown-node {} replay {} unfresh {} old-epoch {}\n",
            c.frames_sent, c.frames_received, c.dropped_malformed, c.dropped_bad_mac,
            c.dropped_unknown_node, c.dropped_replay, c.dropped_unfresh, c.dropped_old_epoch
        ));
        s.push_str(&format!(
            "  role changes {}, elections started {} won {}, gratuitous ARPs {}, hooks run {} failed {}, address errors {}, kernel lease errors {}\n",
            c.role_changes, c.elections_started, c.elections_won, c.garp_sent, c.hooks_run, c.hooks_failed,
            c.address_errors, c.kernel_lease_errors
        ));
        if !c.step_downs_holding.is_empty() || c.peers_found_dead > 0 {
            s.push_str(&format!(
                "  step-downs while holding connections {:?}; silent peers found dead {}\n",
                c.step_downs_holding, c.peers_found_dead
            ));
        }
        s
    }
}

/// `term.node` form of an epoch, easier to read than the raw number.
pub fn epoch_label(epoch: u64) -> String {
    format!(
        "term {} of node {}",
        steadfast_core::election::epoch_term(epoch),
        steadfast_core::election::epoch_owner(epoch)
    )
}
