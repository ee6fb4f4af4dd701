//! Duplex takeover: every protected connection's socket rebuilt with TCP_REPAIR from the
//! backup's logs, then its proxy session resumed where the logs end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use steadfast_core::image::{rebuilt_tsval, AckProbe, FourTuple, ReplayedSyn, RestoreError};
use steadfast_core::reply_log::{LostReason, ResumePlan};
use steadfast_os::repair::{self, RepairTarget};

use super::backup::Frozen;
use super::probes::{send_probes, send_raw_packets};
use super::proxy::{self, ProxyContext, SessionStart};
use super::{PlaneShared, ServiceFramer};

/// Sockets are rebuilt on this many threads at once.
const REBUILD_THREADS: usize = 2;

/// A half-open connection's SYN is replayed only if its client sent something this recently:
/// a live client in SYN-SENT sends its SYN again after 1 s, then 2 s and 4 s later, so an
/// older image is most likely a client that gave up (or a spoofed SYN of a flood).
const SYN_REPLAY_MAX_IDLE: Duration = Duration::from_secs(3);
/// At most this many SYNs are replayed, the most recent first: after a SYN flood the table
/// may hold many thousands of half-open images, and the kernel's own SYN backlog and cookies
/// are the place to meet a flood, not a burst of SYN-ACKs from this node.
const MAX_REPLAYED_SYNS: usize = 4096;

#[derive(Debug, Default, Clone, Copy)]
pub struct TakeoverReport {
    pub restored: u64,
    pub lost: u64,
    /// Of the restored: connections the primary had accepted but not reported (its accept
    /// queue at the crash), resumed from the log alone.
    pub unreported: u64,
    /// Connections whose handshake had not completed: their logged SYN handed to this node's
    /// kernel (which answers the client at once), or left to the client's own retransmission.
    /// Neither is a lost connection: no client considered it open.
    pub syns_replayed: u64,
    pub syns_not_replayed: u64,
    pub rebuild_time: Duration,
}

/// Sockets rebuilt in repair mode, waiting for the VIP to become local.
pub struct Rebuilt {
    sockets: Vec<(ResumePlan, repair::RepairedSocket)>,
    /// An ACK for each lost connection's client (see [`resume_all`]).
    lost_probes: Vec<(FourTuple, AckProbe)>,
    /// The SYNs of connections whose handshake had not completed (see [`ReplayedSyn`]).
    syn_replays: Vec<ReplayedSyn>,
    pub report: TakeoverReport,
}

/// Rebuilds every connection of the frozen logs, in repair mode (they send nothing yet). The
/// VIP must not be local yet: an address added before a socket exists makes the kernel reset
/// that socket's client.
pub fn rebuild_all(frozen: Frozen, shared: &Arc<PlaneShared>) -> Rebuilt {
    let mut report = TakeoverReport::default();
    let mut sockets = Vec::new();
    let mut lost_probes = Vec::new();
    let mut syn_replays: Vec<(Duration, ReplayedSyn)> = Vec::new();
    let Frozen { state, at } = frozen;
    let Some(table) = state.table else {
        return Rebuilt {
            sockets,
            lost_probes,
            syn_replays: Vec::new(),
            report,
        };
    };
    // How long each client has been silent, and the timestamp clock a segment to it needs
    // (PAWS drops one behind what the client last saw).
    let idle_of = |tuple: &FourTuple| {
        state
            .last_seen
            .get(tuple)
            .map_or(Duration::ZERO, |seen| at.saturating_duration_since(*seen))
    };
    let tsval_for = |tuple: &FourTuple, last_tsecr: Option<u32>| {
        last_tsecr.map(|tsecr| rebuilt_tsval(Some(tsecr), idle_of(tuple)))
    };
    let mut work = Vec::new();
    for image in table.iter() {
        let planned = match (state.replica.plan(image), &state.template) {
            (Err(LostReason::NotOpenedByPrimary { .. }), Some(template)) => {
                let unreported = state.replica.plan_unreported(image, template);
                if unreported.is_ok() {
                    report.unreported += 1;
                }
                unreported
            }
            (planned, _) => planned,
        };
        match planned {
            Ok(plan) => {
                let target = repair_target(&plan, idle_of(&image.tuple()));
                work.push((plan, target));
            }
            Err(LostReason::Restore(RestoreError::HandshakeIncomplete { .. })) => {
                let idle = idle_of(&image.tuple());
                match ReplayedSyn::for_image(image) {
                    Some(syn) if idle <= SYN_REPLAY_MAX_IDLE => syn_replays.push((idle, syn)),
                    _ => report.syns_not_replayed += 1,
                }
            }
            Err(reason) => {
                report.lost += 1;
                PlaneShared::count_reason(&shared.lost_reasons, reason.label());
                tracing::info!("takeover: {reason}");
                let tsval = tsval_for(&image.tuple(), image.last_tsecr());
                if let Some(probe) = AckProbe::for_image(image, tsval) {
                    lost_probes.push((image.tuple(), probe));
                }
            }
        }
    }
    // Connections opened before this node joined as backup that the old primary had not handed
    // over: their early bytes were never logged, so they cannot go on. Their clients are told
    // at once, like those of every other lost connection.
    for (tuple, seen) in table.unadopted() {
        report.lost += 1;
        PlaneShared::count_reason(&shared.lost_reasons, "not-adopted");
        tracing::info!(
            "takeover: {tuple}: lost, opened before this node protected the primary and not handed over"
        );
        let tsval = tsval_for(&tuple, seen.and_then(|record| record.last_tsecr));
        lost_probes.push((tuple, AckProbe::for_unadopted(tuple, seen, tsval)));
    }
    syn_replays.sort_by_key(|(idle, _)| *idle);
    if syn_replays.len() > MAX_REPLAYED_SYNS {
        report.syns_not_replayed += (syn_replays.len() - MAX_REPLAYED_SYNS) as u64;
        syn_replays.truncate(MAX_REPLAYED_SYNS);
    }
    let syn_replays: Vec<ReplayedSyn> = syn_replays.into_iter().map(|(_, syn)| syn).collect();
    let started = Instant::now();
    // Sockets of an earlier life on the service address (TIME_WAIT ones would answer a rebuilt
    // connection's client in its place): one dump for all connections, not one per socket.
    let mut ports: Vec<_> = work.iter().map(|(plan, _)| plan.restore.local).collect();
    ports.sort();
    ports.dedup();
    for local in ports {
        let m = steadfast_os::sock_destroy::SocketMatch {
            local: Some(local),
            remote: None,
        };
        if let Err(e) = steadfast_os::sock_destroy::destroy_tcp_sockets(&m) {
            tracing::debug!("destroying old sockets on {local}: {e}");
        }
    }
    // Rebuilding is a few syscalls per socket: spread over threads, on this thread's time
    // (the takeover is the only thing that matters now).
    let per_thread = work.len().div_ceil(REBUILD_THREADS).max(1);
    let mut batches = Vec::new();
    while !work.is_empty() {
        let rest = work.split_off(work.len().min(per_thread));
        batches.push(std::mem::replace(&mut work, rest));
    }
    let results: Vec<Vec<_>> = std::thread::scope(|scope| {
        let handles: Vec<_> = batches
            .into_iter()
            .map(|batch| {
                scope.spawn(move || {
                    batch
                        .into_iter()
                        .map(|(plan, target)| {
                            let rebuilt = repair::rebuild(&target).map_err(|e| e.to_string());
                            (plan, rebuilt)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    for (plan, rebuilt) in results.into_iter().flatten() {
        match rebuilt {
            Ok(socket) => sockets.push((plan, socket)),
            Err(why) => {
                report.lost += 1;
                PlaneShared::count_reason(&shared.lost_reasons, "rebuild-failed");
                tracing::warn!("takeover: {why}");
            }
        }
    }
    report.rebuild_time = started.elapsed();
    Rebuilt {
        sockets,
        lost_probes,
        syn_replays,
        report,
    }
}

/// Once the VIP is local: every rebuilt socket leaves repair mode (the kernel sends a window
/// probe) and its proxy session resumes.
pub fn resume_all(
    rebuilt: Rebuilt,
    ctx: Arc<ProxyContext<ServiceFramer>>,
    shared: &PlaneShared,
) -> TakeoverReport {
    let mut report = rebuilt.report;
    for (plan, socket) in rebuilt.sockets {
        let live = socket
            .leave_repair()
            .map_err(|e| e.to_string())
            .and_then(|stream| {
                stream
                    .set_nonblocking(true)
                    .map(|()| stream)
                    .map_err(|e| format!("non-blocking: {e}"))
            });
        match live {
            Ok(stream) => {
                report.restored += 1;
                resume(ctx.clone(), stream, plan);
            }
            Err(why) => {
                report.lost += 1;
                PlaneShared::count_reason(&shared.lost_reasons, "leave-repair-failed");
                tracing::warn!("takeover: {why}");
            }
        }
    }
    reset_lost(&rebuilt.lost_probes);
    let replayed = replay_syns(&rebuilt.syn_replays);
    report.syns_replayed += replayed;
    report.syns_not_replayed += rebuilt.syn_replays.len() as u64 - replayed;
    report
}

/// Hands each half-open connection's logged SYN to this node's kernel, now that the service
/// address is local and the listener takes it: the kernel answers the client with a SYN-ACK
/// at once instead of after the client's next retransmission (1 s or more). Returns how many
/// were handed over.
fn replay_syns(syns: &[ReplayedSyn]) -> u64 {
    if syns.is_empty() {
        return 0;
    }
    let replayed = send_raw_packets(
        syns.iter().map(|syn| (syn.encode(), syn.to.0)),
        "the SYNs of half-open connections (their clients send them again)",
    )
    .unwrap_or(0);
    tracing::info!(
        "takeover: {replayed} of {} half-open connections' SYNs handed to the kernel",
        syns.len()
    );
    replayed
}

/// A lost connection's client may be waiting in silence (for the rest of a reply, say) and
/// would hang until its own timeout. An ACK outside its window makes it answer; its answer
/// meets no socket here and the kernel resets the connection: the client fails at once, as a
/// production client expects from a lost connection, instead of minutes later.
fn reset_lost(probes: &[(FourTuple, AckProbe)]) {
    if !probes.is_empty() && send_probes(probes, "the lost connections' clients") {
        tracing::info!(
            "takeover: {} lost connections' clients probed (the kernel resets their answers)",
            probes.len()
        );
    }
}

fn repair_target(plan: &ResumePlan, idle: Duration) -> RepairTarget {
    let restore = &plan.restore;
    let timestamp = (restore.timestamps_ok || plan.options.timestamps)
        .then(|| rebuilt_tsval(restore.last_tsecr, idle));
    RepairTarget {
        local: restore.local,
        remote: restore.remote,
        snd_una: restore.snd_una,
        rcv_nxt: restore.rcv_nxt,
        mss: if plan.options.mss > 0 {
            plan.options.client_mss()
        } else {
            restore.mss
        },
        window_scales: restore.window_scales.map(|w| (w.snd, w.rcv)),
        sack: restore.sack_ok,
        timestamp,
        client_window: restore.client_window,
    }
}

fn resume(ctx: Arc<ProxyContext<ServiceFramer>>, stream: std::net::TcpStream, plan: ResumePlan) {
    let tuple = steadfast_core::image::FourTuple {
        client: plan.restore.remote,
        server: plan.restore.local,
    };
    let start = SessionStart {
        tuple,
        connection_id: ctx.request_ids.connection_id(&tuple, plan.client_isn),
        client_isn: plan.client_isn,
        options: plan.options,
        client_mss: plan.restore.mss,
        request_offset: plan.request_offset,
        request_index: plan.next_request_index,
        pending_request: plan.pending_request_bytes,
        reply_offset: plan.reply_offset,
        unacked_reply: plan.unacked_reply,
        cut_reply: plan.cut_reply,
        close_after_reply: plan.close_after_reply,
    };
    // No backup yet: one that joins later adopts the connection, wherever it stands.
    let protection = ctx.census.enter(tuple, 0);
    tokio::spawn(async move {
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => proxy::serve(ctx, stream, start, protection).await,
            Err(e) => tracing::warn!("takeover: registering {tuple}: {e}"),
        }
    });
}
