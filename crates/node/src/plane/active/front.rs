//! The primary's side of active mode: client connections on VIP:port, framed ([`RespFramer`])
//! and classified by the local redis-server's own `COMMAND` table; updates numbered by the
//! [`Sequencer`] and sent to every replica (this node's own included, over the same link),
//! reads sent to one replica in turn ([`ReadScheduler`]) behind the last update ordered, the
//! replies to updates compared by digest ([`ReplyComparator`]) and each client's replies
//! returned in its requests' order.
//!
//! The client gets the reply of this node's replica to an update once every replica in the
//! ordering holds the update: whichever of them takes over holds every update a client was
//! answered. A primary taking over first gathers the replicas' positions for up to one
//! detection and goes on from the one that received most ([`plan_takeover`]); it holds the
//! clients' requests meanwhile, and while its own replica (whose replies the clients get) is
//! being rebuilt.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steadfast_core::active_executor::SessionId;
use steadfast_core::active_liveness::{ReadsInFlight, ReplicaWatch, WatchAction};
use steadfast_core::active_order::{OrderNumber, Outgoing, ReadScheduler, Sequencer, ToPrimary};
use steadfast_core::active_rebuild::{CopyRequest, Rebuilds};
use steadfast_core::active_takeover::{plan_takeover, ReplicaPosition, TakeoverPlan};
use steadfast_core::active_wire::{ActiveFrame, UpdatePayload};
use steadfast_core::redis_commands::{Classification, CommandTable};
use steadfast_core::redis_effects::{
    absolute_expiry, is_random_write, popped_members, random_effect,
};
use steadfast_core::replication_wire::LinkAttempt;
use steadfast_core::reply_compare::{ReplyComparator, Verdict};
use steadfast_core::resp::{Direction, RespFramer, RespLimits, RespMessage};
use steadfast_core::resp_request::{encode_request, request_words};
use steadfast_core::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::link::{self, LinkIdentity};
use super::{ActiveContext, TICK};

/// Updates whose digests may be awaited at once before the replicas still missing are judged
/// lagging (and taken out of the comparison and the reads).
const MAX_PENDING_DIGESTS: usize = 4096;
/// The answer to an update while this node's own replica is not linked.
const NO_OWN_REPLICA: &[u8] =
    b"-ERR steadfast active mode: this primary's own replica is not linked; try again\r\n";
/// The answer to an update whose reply was lost with the link to this node's own replica: it
/// was ordered, and may have run.
const OWN_REPLICA_LOST: &[u8] = b"-ERR steadfast active mode: the link to this primary's own \
replica was lost before it answered; the update was ordered and may have run\r\n";
/// The answer to a SPOP whose reply this node's own replica sent could not be read.
const UNREADABLE_RANDOM_WRITE: &[u8] = b"-ERR steadfast active mode: the SPOP's reply could \
not be read to replicate its effect; it may have run on one replica, which is rebuilt\r\n";
/// The answer to a read when no replica at all serves reads.
const NO_READER: &[u8] = b"-ERR steadfast active mode: no replica is linked to serve reads\r\n";
/// How long the primary waits between attempts to link a replica.
const RELINK_PAUSE: Duration = Duration::from_millis(100);
/// A rebuild whose copy is not loaded by then is given up and started again (its source may
/// have been unable to find a point outside every MULTI, or a frame was lost with a link).
const REBUILD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests held while the primary takes over or its own replica is rebuilt; beyond this many
/// a request is answered with [`TAKING_OVER`] instead of waiting.
const MAX_HELD_REQUESTS: usize = 100_000;
/// The answer to a request beyond [`MAX_HELD_REQUESTS`].
const TAKING_OVER: &[u8] = b"-ERR steadfast active mode: the primary is taking over and holds \
too many requests already; try again\r\n";

/// How a request goes.
#[derive(Debug)]
pub enum Routed {
    /// Ordered and run by every replica.
    Ordered(Vec<u8>),
    /// Run by one replica.
    Read(Vec<u8>),
    /// Run by this node's own replica while nothing else is ordered, then replicated as its
    /// effect (`SPOP`: chance picks what it removes).
    RandomWrite(Vec<u8>),
    /// Answered here (a refusal).
    Answer(Vec<u8>),
}

pub enum FrontEvent {
    NewClient(TcpStream),
    LinkUp {
        node: NodeId,
        generation: u64,
        writer: mpsc::UnboundedSender<ActiveFrame>,
    },
    LinkDown {
        node: NodeId,
        generation: u64,
        why: String,
    },
    Frame {
        node: NodeId,
        generation: u64,
        frame: ActiveFrame,
    },
    Request {
        session: SessionId,
        index: u64,
        routed: Routed,
    },
    ClientClosed {
        session: SessionId,
    },
}

struct ClientSession {
    writer: mpsc::UnboundedSender<Vec<u8>>,
    /// The index of the next reply the client gets.
    next_reply: u64,
    /// Replies that came before an earlier one.
    ready: BTreeMap<u64, Vec<u8>>,
}

/// The replicas' positions, gathered by a primary that has just started.
struct Gathering {
    positions: BTreeMap<NodeId, ReplicaPosition>,
}

struct Front {
    ctx: Arc<ActiveContext>,
    epoch: u64,
    origin: Instant,
    /// Until the plan is made (`None` then), nothing is ordered.
    gathering: Option<Gathering>,
    /// Requests waiting, in the order they came: while the positions are gathered, or while
    /// this node's own replica is out of the ordering (being rebuilt).
    held: VecDeque<(SessionId, u64, Routed)>,
    /// Replies of this node's own replica to updates not yet held by every replica in the
    /// ordering: the client gets each once it is.
    unstable_replies: BTreeMap<OrderNumber, (SessionId, u64, Vec<u8>)>,
    /// The random write this node's own replica runs now (session, index, request): nothing
    /// else is routed until its effect is ordered.
    random_write: Option<(SessionId, u64, Vec<u8>)>,
    /// The effects of random writes ordered, and the reply each client gets (the random
    /// write's own) once every replica in the ordering holds the effect.
    effect_replies: BTreeMap<OrderNumber, (SessionId, u64, Vec<u8>)>,
    events: mpsc::UnboundedSender<FrontEvent>,
    table: Arc<CommandTable>,
    sequencer: Sequencer<UpdatePayload>,
    comparator: ReplyComparator,
    scheduler: ReadScheduler,
    links: BTreeMap<NodeId, (u64, mpsc::UnboundedSender<ActiveFrame>)>,
    /// Replicas taken out of the reads (diverged or lagging).
    taken_out: BTreeSet<NodeId>,
    /// Linked replicas whose first acknowledgement on their current link showed they hold
    /// what the ordering recorded of them: only these serve reads.
    verified: BTreeSet<NodeId>,
    sessions: BTreeMap<SessionId, ClientSession>,
    /// Updates whose reply (from this node's own replica) the client still waits for.
    awaiting_own_reply: BTreeMap<OrderNumber, (SessionId, u64)>,
    /// Reads sent to each replica and not yet answered: their barrier and request, to run
    /// them again elsewhere if the replica is lost.
    reads_out: ReadsInFlight<(SessionId, u64), (OrderNumber, Vec<u8>)>,
    /// Probes the replicas' links (not this node's own: its loss is the primary's).
    watch: ReplicaWatch,
    /// Replicas being rebuilt from a copy of a live one, then catching up.
    rebuilds: Rebuilds,
    /// Session ids are unique across this node's lives: random high bits, a counter.
    next_session: SessionId,
}

/// Runs the primary's side until `events` is closed by every sender going (never, while the
/// node is primary). `events` takes new clients from the accept loop.
pub async fn run(
    ctx: Arc<ActiveContext>,
    epoch: u64,
    events_tx: mpsc::UnboundedSender<FrontEvent>,
    mut events: mpsc::UnboundedReceiver<FrontEvent>,
) -> anyhow::Result<()> {
    let table = Arc::new(command_table(ctx.backend).await?);
    tracing::info!(
        "active mode: primary in epoch {epoch}; {} commands classified from the redis-server at {}",
        table.len(),
        ctx.backend
    );
    let origin = Instant::now();
    let incarnation = random_u64()?;
    for (&node, &address) in &ctx.members {
        tokio::spawn(link_replica(
            ctx.clone(),
            node,
            SocketAddr::V4(SocketAddrV4::new(address, ctx.link_port)),
            incarnation,
            epoch,
            events_tx.clone(),
        ));
    }
    let detection = ctx.detection;
    let mut front = Front {
        // Both are made anew from the takeover plan; nothing is ordered before.
        sequencer: Sequencer::new(ctx.ordering, [], 0, Duration::ZERO),
        comparator: ReplyComparator::new(u32::from(ctx.node_id), [], 1, MAX_PENDING_DIGESTS),
        epoch,
        gathering: Some(Gathering {
            positions: BTreeMap::new(),
        }),
        held: VecDeque::new(),
        unstable_replies: BTreeMap::new(),
        random_write: None,
        effect_replies: BTreeMap::new(),
        scheduler: ReadScheduler::new(ctx.read_policy),
        ctx,
        origin,
        events: events_tx,
        table,
        links: BTreeMap::new(),
        taken_out: BTreeSet::new(),
        verified: BTreeSet::new(),
        sessions: BTreeMap::new(),
        awaiting_own_reply: BTreeMap::new(),
        reads_out: ReadsInFlight::default(),
        watch: ReplicaWatch::new(detection),
        rebuilds: Rebuilds::new(REBUILD_TIMEOUT),
        next_session: (incarnation & 0xffff_ffff) << 32,
    };
    front
        .ctx
        .shared()
        .active
        .primary
        .store(true, Ordering::Relaxed);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return Ok(()) };
                front.on_event(event);
            }
            _ = tick.tick() => {
                let now = front.origin.elapsed();
                front.plan_when_gathered(now);
                let out = front.sequencer.tick(now);
                front.send_all(out);
                front.watch_links(now);
                front.start_rebuilds(now);
                front.publish();
            }
        }
    }
}

/// The local redis-server's command table, asked once it answers (it may start after the
/// daemon): `COMMAND`, framed whole and decoded.
async fn command_table(backend: SocketAddr) -> anyhow::Result<CommandTable> {
    use anyhow::Context;
    let mut last = String::new();
    for _ in 0..100 {
        match ask_command(backend).await {
            Ok(table) => return Ok(table),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!(last)).with_context(|| {
        format!("active mode: reading the command table of the redis-server at {backend} (10 s)")
    })
}

async fn ask_command(backend: SocketAddr) -> anyhow::Result<CommandTable> {
    use anyhow::Context;
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend))
        .await
        .context("connecting: timed out")?
        .context("connecting")?;
    stream
        .write_all(b"*1\r\n$7\r\nCOMMAND\r\n")
        .await
        .context("sending COMMAND")?;
    let mut framer = RespFramer::new(Direction::Replies, RespLimits::default());
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut messages: Vec<RespMessage> = Vec::new();
    while messages.is_empty() {
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .context("reading the COMMAND reply: timed out")?
            .context("reading the COMMAND reply")?;
        anyhow::ensure!(
            n > 0,
            "the server closed before its COMMAND reply was whole"
        );
        reply.extend_from_slice(&buf[..n]);
        framer
            .feed(&buf[..n], &mut messages)
            .context("framing the COMMAND reply")?;
    }
    CommandTable::from_reply(&reply[..messages[0].end as usize]).context("decoding COMMAND")
}

fn random_u64() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| anyhow::anyhow!("drawing a random incarnation: {e}"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Keeps a link to one replica up for as long as the primary runs.
async fn link_replica(
    ctx: Arc<ActiveContext>,
    node: NodeId,
    address: SocketAddr,
    incarnation: u64,
    epoch: u64,
    events: mpsc::UnboundedSender<FrontEvent>,
) {
    let mut attempt = 0u64;
    let mut last_error = String::new();
    while !events.is_closed() {
        attempt += 1;
        let identity = LinkIdentity {
            node: ctx.node_id,
            group_key: ctx.key.clone(),
            protection: ctx.protection,
            attempt: LinkAttempt {
                incarnation,
                number: attempt,
            },
        };
        let result = async {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
                .await
                .map_err(|_| format!("connecting to {address}: timed out"))?
                .map_err(|e| format!("connecting to {address}: {e}"))?;
            super::super::bound_replication_stalls(&stream, ctx.stall)
                .map_err(|e| format!("bounding the stalls of the link to {address}: {e}"))?;
            link::handshake(stream, &identity, |peer, _| peer == node)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let open = match result {
            Ok(open) => open,
            Err(e) => {
                if e != last_error {
                    tracing::warn!("active link to replica {node}: {e}; trying again");
                    last_error = e;
                }
                tokio::time::sleep(RELINK_PAUSE).await;
                continue;
            }
        };
        last_error.clear();
        let down = events.clone();
        let writer = link::spawn_writer(open.write_half, open.sealer, open.peer, epoch, move |e| {
            let _ = down.send(FrontEvent::LinkDown {
                node,
                generation: attempt,
                why: e.to_string(),
            });
        });
        if events
            .send(FrontEvent::LinkUp {
                node,
                generation: attempt,
                writer,
            })
            .is_err()
        {
            return;
        }
        let frames = events.clone();
        let why = link::read_frames(open.reader, open.read_half, open.peer, |_, frame| {
            frames
                .send(FrontEvent::Frame {
                    node,
                    generation: attempt,
                    frame,
                })
                .is_ok()
        })
        .await;
        let _ = events.send(FrontEvent::LinkDown {
            node,
            generation: attempt,
            why: why.to_string(),
        });
        tokio::time::sleep(RELINK_PAUSE).await;
    }
}

impl Front {
    fn on_event(&mut self, event: FrontEvent) {
        let now = self.origin.elapsed();
        match event {
            FrontEvent::NewClient(stream) => self.open_session(stream),
            FrontEvent::LinkUp {
                node,
                generation,
                writer,
            } => {
                tracing::info!("active link to replica {node} up (attempt {generation})");
                self.links.insert(node, (generation, writer));
                self.verified.remove(&node);
                if node != self.ctx.node_id {
                    self.watch.linked(u32::from(node), now);
                }
                // What it lacks goes at once, not at the next retransmission.
                let out = self.sequencer.tick(now + Duration::from_secs(3600));
                self.send_all(out);
            }
            FrontEvent::LinkDown {
                node,
                generation,
                why,
            } => {
                if self.links.get(&node).is_some_and(|(g, _)| *g == generation) {
                    tracing::warn!("active link to replica {node} lost: {why}");
                    if let Some(gathering) = &mut self.gathering {
                        // Whatever it holds, the group cannot go on from it now.
                        gathering.positions.remove(&node);
                    }
                    self.links.remove(&node);
                    self.verified.remove(&node);
                    self.watch.unlinked(u32::from(node));
                    self.abandon_rebuilds_with(node);
                    if node != self.ctx.node_id {
                        // Out of the ordering and the comparison at once, as a silent one is
                        // after a detection: kept in, it would pile up the updates and digests
                        // ordered meanwhile and be taken out as lagging. It relinks to be
                        // rebuilt (`verify`).
                        self.leave_ordering(node);
                    }
                    self.answer_what_the_link_owed(node);
                }
            }
            FrontEvent::Frame {
                node,
                generation,
                frame,
            } => {
                if self.links.get(&node).is_some_and(|(g, _)| *g == generation) {
                    self.watch.heard(u32::from(node), now);
                    self.on_frame(node, frame, now);
                }
            }
            FrontEvent::Request {
                session,
                index,
                routed,
            } => {
                if self.held.len() >= MAX_HELD_REQUESTS {
                    self.reply(session, index, TAKING_OVER.to_vec());
                } else {
                    self.held.push_back((session, index, routed));
                    self.route_held();
                }
            }
            FrontEvent::ClientClosed { session } => {
                self.sessions.remove(&session);
                let after = self.sequencer.last_ordered();
                for (_, writer) in self.links.values() {
                    let _ = writer.send(ActiveFrame::EndSession { session, after });
                }
                self.ctx
                    .shared()
                    .active
                    .sessions_open
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Nothing is ordered while the positions are gathered; nothing is routed while this
    /// node's own replica, whose replies the clients get, is out of the ordering (its rebuild
    /// then brings it back): a read routed past an update held would miss it. Nor while a
    /// random write runs: an update ordered before its effect would run before it on the
    /// replica that ran it and after it everywhere else.
    fn holding(&self) -> bool {
        self.gathering.is_some()
            || self.random_write.is_some()
            || self
                .sequencer
                .acknowledged(u32::from(self.ctx.node_id))
                .is_none()
    }

    /// Routes the requests held, in order, while nothing holds them.
    fn route_held(&mut self) {
        while !self.holding() {
            let Some((session, index, routed)) = self.held.pop_front() else {
                return;
            };
            self.route(session, index, routed);
        }
    }

    /// Makes the takeover plan once every member reported its position, or one detection
    /// after the front started with at least one position in (a member silent that long is
    /// taken for dead: every replica that was in the last primary's ordering holds every
    /// update a client was answered).
    fn plan_when_gathered(&mut self, now: Duration) {
        let Some(gathering) = &self.gathering else {
            return;
        };
        // Only replicas linked now: one whose link dropped (or that the watch found silent)
        // since it reported could neither be copied from nor hold back the ordering.
        let positions: BTreeMap<u32, ReplicaPosition> = gathering
            .positions
            .iter()
            .filter(|(node, _)| self.links.contains_key(node))
            .map(|(&node, &position)| (u32::from(node), position))
            .collect();
        let everyone = positions.len() == self.ctx.members.len();
        let waited = now >= self.ctx.detection && !positions.is_empty();
        if !(everyone || waited) {
            return;
        }
        self.gathering = None;
        let plan = plan_takeover(&positions, u32::from(self.ctx.node_id));
        self.take_over(plan, &positions, now);
    }

    /// Starts the ordering from the plan: the continuing replicas hold every update up to its
    /// start and serve reads at once; the others are out of the ordering, and the tick
    /// rebuilds them from a copy.
    fn take_over(
        &mut self,
        plan: TakeoverPlan,
        positions: &BTreeMap<u32, ReplicaPosition>,
        now: Duration,
    ) {
        self.sequencer = Sequencer::new(
            self.ctx.ordering,
            plan.continuing.iter().copied(),
            plan.start,
            now,
        );
        self.comparator = ReplyComparator::new(
            u32::from(self.ctx.node_id),
            plan.continuing.iter().copied(),
            plan.start + 1,
            MAX_PENDING_DIGESTS,
        );
        for node in plan.continuing.iter().filter_map(|&id| to_node(id)) {
            if self.links.contains_key(&node) {
                self.verified.insert(node);
            }
        }
        let active = &self.ctx.shared().active;
        if plan.start > 0 {
            active.takeovers.fetch_add(1, Ordering::Relaxed);
        }
        active.took_over_at.store(plan.start, Ordering::Relaxed);
        let reference = plan
            .reference
            .and_then(|id| positions.get(&id).map(|p| (id, p)));
        match reference {
            Some((id, position)) => tracing::info!(
                "active mode: primary in epoch {} goes on from replica {id}'s data at update {} \
                 (numbered in epoch {}); in the ordering: {:?}; rebuilt from a copy: {:?}",
                self.epoch,
                plan.start,
                position.epoch,
                plan.continuing,
                plan.rebuilt
            ),
            None => tracing::warn!(
                "active mode: primary in epoch {}: no replica reported a whole dataset \
                 ({:?} are partial); nothing can be served until one can be copied",
                self.epoch,
                plan.rebuilt
            ),
        }
        self.route_held();
    }

    /// Sends each client the replies of its updates that every replica in the ordering now
    /// holds.
    fn release_replies(&mut self) {
        let held = self.sequencer.held_by_every_replica();
        let waiting = self.unstable_replies.split_off(&(held + 1));
        let ready = std::mem::replace(&mut self.unstable_replies, waiting);
        for (session, index, reply) in ready.into_values() {
            self.reply(session, index, reply);
        }
    }

    fn route(&mut self, session: SessionId, index: u64, routed: Routed) {
        let active = &self.ctx.shared().active;
        match routed {
            Routed::Ordered(_) if !self.links.contains_key(&self.ctx.node_id) => {
                // Its reply would come from this node's own replica: without its link the
                // client would wait for ever.
                self.reply(session, index, NO_OWN_REPLICA.to_vec());
            }
            Routed::Ordered(request) => {
                let (number, out) = self.sequencer.order(UpdatePayload {
                    session,
                    index,
                    request,
                });
                self.awaiting_own_reply.insert(number, (session, index));
                active.updates_ordered.fetch_add(1, Ordering::Relaxed);
                self.send_all(out);
            }
            Routed::Read(request) => {
                let barrier = self.sequencer.last_ordered();
                self.send_read(session, index, barrier, request);
            }
            Routed::RandomWrite(request) => {
                let Some((_, writer)) = self.links.get(&self.ctx.node_id) else {
                    self.reply(session, index, NO_OWN_REPLICA.to_vec());
                    return;
                };
                // Behind every update ordered: it runs once they all ran, as a read does.
                let _ = writer.send(ActiveFrame::Read {
                    session,
                    index,
                    barrier: self.sequencer.last_ordered(),
                    request: request.clone(),
                });
                self.random_write = Some((session, index, request));
            }
            Routed::Answer(reply) => {
                active.refused.fetch_add(1, Ordering::Relaxed);
                self.reply(session, index, reply);
            }
        }
    }

    fn on_frame(&mut self, from: NodeId, frame: ActiveFrame, now: Duration) {
        if let Some(gathering) = &mut self.gathering {
            // Until the plan, only where each replica stands counts: anything else it sends
            // answers the last primary.
            if let ActiveFrame::Position(position) = frame {
                gathering.positions.insert(from, position);
                self.plan_when_gathered(now);
            }
            return;
        }
        match frame {
            // Only a primary taking over uses it; a relinking replica is judged by its
            // acknowledgement (`verify`).
            ActiveFrame::Position(_) => {}
            ActiveFrame::Progress(message) => {
                if self.rebuilds.awaits_copy(u32::from(from)) {
                    // What it held before its copy: nothing the ordering can use.
                    return;
                }
                if self.rebuilds.involves(u32::from(from)) {
                    if let ToPrimary::Ack { up_to } = message {
                        if let Some(took) = self.rebuilds.acknowledged(u32::from(from), up_to, now)
                        {
                            self.caught_up(from, took);
                        }
                    }
                } else if !self.verified.contains(&from) && !self.verify(from, &message) {
                    return;
                }
                let out = self.sequencer.on_message(u32::from(from), message, now);
                self.send_all(out);
                self.release_replies();
            }
            part @ (ActiveFrame::SnapshotPart { rebuild, .. }
            | ActiveFrame::SessionPrelude { rebuild, .. }) => {
                let Some(joiner) = self
                    .rebuilds
                    .joiner_of(rebuild, u32::from(from))
                    .and_then(to_node)
                else {
                    return;
                };
                match self.links.get(&joiner) {
                    Some((_, writer)) => {
                        let _ = writer.send(part);
                    }
                    None => self.abandon_rebuilds_with(joiner),
                }
            }
            ActiveFrame::SnapshotLoaded { rebuild, at } => {
                let last_ordered = self.sequencer.last_ordered();
                let Some(started) = self.rebuilds.loaded(u32::from(from), rebuild, last_ordered)
                else {
                    return;
                };
                self.loaded(from, at, started, now);
            }
            ActiveFrame::UpdateReply {
                number,
                session,
                index,
                digest,
                reply,
            } => {
                if let (true, Some(reply)) = (from == self.ctx.node_id, reply) {
                    if self.awaiting_own_reply.remove(&number).is_some() {
                        self.unstable_replies
                            .insert(number, (session, index, reply));
                        self.release_replies();
                    } else if let Some(popped) = self.effect_replies.remove(&number) {
                        // The client gets the random write's reply, not its effect's.
                        self.unstable_replies.insert(number, popped);
                        self.release_replies();
                    }
                }
                let verdicts = self.comparator.record(number, u32::from(from), digest);
                self.judge(verdicts);
            }
            ActiveFrame::ReadReply {
                session,
                index,
                reply,
            } => {
                let ran_random_write = from == self.ctx.node_id
                    && self
                        .random_write
                        .as_ref()
                        .is_some_and(|(s, i, _)| (*s, *i) == (session, index));
                if ran_random_write {
                    if let Some((_, _, request)) = self.random_write.take() {
                        self.order_effect(session, index, &request, reply);
                        self.route_held();
                    }
                } else if self.reads_out.answered(u32::from(from), (session, index)) {
                    self.reply(session, index, reply);
                }
            }
            ActiveFrame::ProbeReply { .. } => {}
            other => tracing::warn!(
                "active link: a {} frame from replica {from}, which only a primary sends",
                other.label()
            ),
        }
    }

    fn judge(&mut self, verdicts: Vec<Verdict>) {
        let ctx = self.ctx.clone();
        let active = &ctx.shared().active;
        for verdict in verdicts {
            match verdict {
                Verdict::Agreed { .. } => {
                    active.replies_agreed.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Diverged { number, replicas } => {
                    for replica in replicas.into_iter().filter_map(to_node) {
                        let why = format!(
                            "its reply to update {number} differs from the primary's: its data \
                             diverged; taken out of the reads and the comparison"
                        );
                        tracing::error!("active mode: replica {replica}: {why}");
                        self.take_out(replica, why);
                    }
                }
                Verdict::PrimaryOutvoted { number, majority } => {
                    let why = format!(
                        "replicas {majority:?} agree on a reply to update {number} other than \
                         this primary's, which its client got: this node's data is the suspect"
                    );
                    tracing::error!("active mode: {why}");
                    self.ctx.alarm("replica-diverged", self.epoch, why.clone());
                    active
                        .divergences
                        .lock()
                        .expect("divergences lock")
                        .insert(self.ctx.node_id, why);
                }
                Verdict::Lagging { replica } => {
                    let Some(replica) = to_node(replica) else {
                        continue;
                    };
                    let why = format!(
                        "more than {MAX_PENDING_DIGESTS} updates behind in its replies; taken \
                         out of the reads and the comparison"
                    );
                    tracing::error!("active mode: replica {replica}: {why}");
                    self.take_out(replica, why);
                }
            }
        }
    }

    /// A replica's first acknowledgement on a new link: whether it holds what it acknowledged
    /// before, and so may serve reads. One that holds less restarted and lost updates the
    /// primary no longer keeps: it leaves the ordering and is rebuilt from a live replica.
    fn verify(&mut self, replica: NodeId, message: &ToPrimary) -> bool {
        let ToPrimary::Ack { up_to } = message else {
            return false;
        };
        // Out of the ordering (lost, or taken out): the tick rebuilds it.
        let Some(recorded) = self.sequencer.acknowledged(u32::from(replica)) else {
            return false;
        };
        if *up_to >= recorded {
            self.verified.insert(replica);
            return true;
        }
        tracing::warn!(
            "active mode: replica {replica} holds updates up to {up_to} only, having \
             acknowledged {recorded}: it restarted and lost them; it is rebuilt from a live \
             replica"
        );
        self.leave_ordering(replica);
        false
    }

    /// Starts the rebuild of every linked replica out of the ordering (lost, restarted empty,
    /// or taken out for diverging or lagging: its copy replaces its data), and gives up
    /// rebuilds that took too long.
    fn start_rebuilds(&mut self, now: Duration) {
        for joiner in self.rebuilds.expired(now) {
            tracing::warn!(
                "active mode: the rebuild of replica {joiner} did not finish within \
                 {REBUILD_TIMEOUT:?}; starting it again"
            );
            let out = self.sequencer.unpin(joiner);
            self.send_all(out);
        }
        if self.gathering.is_some() {
            return;
        }
        // This node's own replica too: out of the ordering after a takeover that went on from
        // another one's data.
        let joiners: Vec<NodeId> = self
            .links
            .keys()
            .copied()
            .filter(|&n| {
                self.sequencer.acknowledged(u32::from(n)).is_none()
                    && !self.rebuilds.involves(u32::from(n))
            })
            .collect();
        for joiner in joiners {
            let serving: Vec<u32> = self.readers().into_iter().map(u32::from).collect();
            let Some(CopyRequest { id, source }) = self.rebuilds.start(
                u32::from(joiner),
                &serving,
                u32::from(self.ctx.node_id),
                now,
            ) else {
                continue;
            };
            // Every replica serving reads is linked.
            let Some((_, writer)) = to_node(source).and_then(|source| self.links.get(&source))
            else {
                self.rebuilds.lost(u32::from(joiner));
                continue;
            };
            let _ = writer.send(ActiveFrame::SnapshotRequest { rebuild: id });
            let kept_from = self.sequencer.pin(u32::from(joiner));
            tracing::info!(
                "active mode: rebuilding replica {joiner} from a copy of replica {source}'s data \
                 (rebuild {id}; updates after {kept_from} kept for it)"
            );
        }
    }

    /// The joiner loaded the copy taken at `at`: it joins the ordering from there and is sent
    /// what came after.
    fn loaded(&mut self, joiner: NodeId, at: OrderNumber, started: Duration, now: Duration) {
        match self.sequencer.add_replica(u32::from(joiner), at, now) {
            Ok(out) => {
                self.send_all(out);
                self.comparator.add(u32::from(joiner), at + 1);
                tracing::info!(
                    "active mode: replica {joiner} loaded a copy at update {at} in {:?}; it runs \
                     the updates up to {} before it serves reads",
                    now.saturating_sub(started),
                    self.sequencer.last_ordered()
                );
                if let Some(took) = self.rebuilds.acknowledged(u32::from(joiner), at, now) {
                    self.caught_up(joiner, took);
                }
                // This node's own replica back in the ordering: the requests held go.
                self.route_held();
            }
            Err(e) => {
                tracing::error!("active mode: replica {joiner}: {e}; rebuilding it again");
                self.rebuilds.lost(u32::from(joiner));
                let out = self.sequencer.unpin(u32::from(joiner));
                self.send_all(out);
            }
        }
    }

    fn caught_up(&mut self, replica: NodeId, took: Duration) {
        self.verified.insert(replica);
        // Its data is the copy's now; why it was taken out stays in `status` as the alarm.
        self.taken_out.remove(&replica);
        tracing::info!(
            "active mode: replica {replica} rebuilt and caught up in {took:?}; it serves reads again"
        );
        let active = &self.ctx.shared().active;
        active.rebuilds.fetch_add(1, Ordering::Relaxed);
        active
            .last_rebuild_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
    }

    /// `node` is lost or its link went down: a rebuild it takes part in cannot finish, and one
    /// catching up is judged by what it acknowledges once it relinks.
    fn abandon_rebuilds_with(&mut self, node: NodeId) {
        for joiner in self.rebuilds.lost(u32::from(node)) {
            let out = self.sequencer.unpin(joiner);
            self.send_all(out);
        }
    }

    /// `replica` leaves the ordering and the reply comparison: nothing more is kept for it or
    /// sent to it, and the updates that waited for its digest are judged without it.
    fn leave_ordering(&mut self, replica: NodeId) {
        let out = self.sequencer.remove_replica(u32::from(replica));
        self.send_all(out);
        let verdicts = self.comparator.remove(u32::from(replica));
        self.judge(verdicts);
        // Its acknowledgement no longer holds replies back.
        self.release_replies();
    }

    fn take_out(&mut self, replica: NodeId, why: String) {
        self.taken_out.insert(replica);
        self.ctx.alarm(
            "replica-diverged",
            self.epoch,
            format!("replica {replica}: {why}"),
        );
        self.ctx
            .shared()
            .active
            .divergences
            .lock()
            .expect("divergences lock")
            .insert(replica, why);
        self.leave_ordering(replica);
    }

    /// A link went down: the requests only it would have answered are answered with an error
    /// now, so that no client waits for ever (a relinked replica's late answer is dropped).
    fn answer_what_the_link_owed(&mut self, node: NodeId) {
        if node == self.ctx.node_id {
            for (session, index) in std::mem::take(&mut self.awaiting_own_reply).into_values() {
                self.reply(session, index, OWN_REPLICA_LOST.to_vec());
            }
            for (session, index, _) in std::mem::take(&mut self.effect_replies).into_values() {
                self.reply(session, index, OWN_REPLICA_LOST.to_vec());
            }
            if let Some((session, index, _)) = self.random_write.take() {
                // It may have run there, and nobody else will run its effect: that replica
                // is rebuilt before anything more is routed.
                tracing::warn!(
                    "active mode: this node's replica was lost running a SPOP; it is rebuilt"
                );
                self.reply(session, index, OWN_REPLICA_LOST.to_vec());
                self.leave_ordering(node);
                self.route_held();
            }
        }
        self.rerun_reads_of(node);
    }

    /// This node's own replica ran a random write and answered `reply`: its effect is ordered
    /// to every replica (that one too, where it changes nothing), and the client gets `reply`
    /// once every replica in the ordering holds the effect. Nothing popped (an error, an
    /// empty set): the client gets the reply now, there is nothing to replicate.
    fn order_effect(&mut self, session: SessionId, index: u64, request: &[u8], reply: Vec<u8>) {
        let failed = matches!(reply.first(), Some(b'-' | b'!'));
        let popped = if failed {
            Ok(None)
        } else {
            popped_members(&reply)
        };
        let words = request_words(request).unwrap_or_default();
        let effect = match popped {
            Ok(popped) => random_effect(&words, popped.as_deref()),
            Err(e) => {
                // It may have removed members nobody else knows of: its replica is rebuilt.
                tracing::error!(
                    "active mode: this node's replica answered a SPOP with a reply that could \
                     not be read ({e}); it is rebuilt"
                );
                self.reply(session, index, UNREADABLE_RANDOM_WRITE.to_vec());
                self.leave_ordering(self.ctx.node_id);
                return;
            }
        };
        let Some(effect) = effect else {
            self.reply(session, index, reply);
            return;
        };
        let (number, out) = self.sequencer.order(UpdatePayload {
            session,
            index,
            request: encode_request(&effect),
        });
        self.effect_replies.insert(number, (session, index, reply));
        let active = &self.ctx.shared().active;
        active.updates_ordered.fetch_add(1, Ordering::Relaxed);
        active.random_writes.fetch_add(1, Ordering::Relaxed);
        self.send_all(out);
    }

    /// Sends a read to the next replica in the rotation, behind `barrier`.
    fn send_read(
        &mut self,
        session: SessionId,
        index: u64,
        barrier: OrderNumber,
        request: Vec<u8>,
    ) {
        let readers: Vec<u32> = self.readers().into_iter().map(u32::from).collect();
        if readers.is_empty() {
            self.reply(session, index, NO_READER.to_vec());
            return;
        }
        let header = self
            .scheduler
            .schedule(&readers, u32::from(self.ctx.node_id), barrier);
        // Scheduled among linked members, whose ids are node ids.
        let replica = NodeId::try_from(header.replica).unwrap_or(self.ctx.node_id);
        let Some((_, writer)) = self.links.get(&replica) else {
            self.reply(session, index, NO_READER.to_vec());
            return;
        };
        let _ = writer.send(ActiveFrame::Read {
            session,
            index,
            barrier: header.barrier,
            request: request.clone(),
        });
        self.reads_out
            .sent(header.replica, (session, index), (header.barrier, request));
        let active = &self.ctx.shared().active;
        active.reads_scheduled.fetch_add(1, Ordering::Relaxed);
        *active
            .reads_by_replica
            .lock()
            .expect("reads_by_replica lock")
            .entry(replica)
            .or_default() += 1;
    }

    /// The replicas in the read rotation: linked, holding what they acknowledged, not taken
    /// out.
    fn readers(&self) -> Vec<NodeId> {
        self.links
            .keys()
            .copied()
            .filter(|n| self.verified.contains(n) && !self.taken_out.contains(n))
            .collect()
    }

    /// The reads `node` owed run again on a live replica: reads change nothing, so running one
    /// twice is harmless, and its client sees only the later reply.
    fn rerun_reads_of(&mut self, node: NodeId) {
        let owed = self.reads_out.lost(u32::from(node));
        if owed.is_empty() {
            return;
        }
        tracing::info!(
            "active mode: {} reads replica {node} owed run again elsewhere",
            owed.len()
        );
        self.ctx
            .shared()
            .active
            .reads_rerun
            .fetch_add(owed.len() as u64, Ordering::Relaxed);
        for ((session, index), (barrier, request)) in owed {
            self.send_read(session, index, barrier, request);
        }
    }

    /// Probes the replicas' links and takes out a replica silent for a whole detection: out of
    /// the reads (what it owed runs elsewhere), the ordering (updates stop waiting for its
    /// acknowledgement) and the comparison; its link is dropped.
    fn watch_links(&mut self, now: Duration) {
        for action in self.watch.tick(now) {
            match action {
                WatchAction::Probe(replica) => {
                    let Some(node) = to_node(replica) else {
                        continue;
                    };
                    if let Some((_, writer)) = self.links.get(&node) {
                        let _ = writer.send(ActiveFrame::Probe {
                            token: now.as_millis() as u64,
                        });
                    }
                }
                WatchAction::Lost { replica, silent } => {
                    let Some(node) = to_node(replica) else {
                        continue;
                    };
                    tracing::warn!(
                        "active mode: replica {node} silent for {silent:?} (detection {:?}): \
                         taken out of the reads, the ordering and the comparison until it is \
                         rebuilt",
                        self.watch.detection()
                    );
                    self.ctx
                        .shared()
                        .active
                        .replicas_lost
                        .fetch_add(1, Ordering::Relaxed);
                    // Dropping the writer ends the link; a relink starts afresh.
                    self.links.remove(&node);
                    self.verified.remove(&node);
                    self.abandon_rebuilds_with(node);
                    self.leave_ordering(node);
                    self.rerun_reads_of(node);
                }
            }
        }
    }

    /// Queues `reply` as the session's `index`th and sends every reply now in order.
    fn reply(&mut self, session: SessionId, index: u64, reply: Vec<u8>) {
        let Some(state) = self.sessions.get_mut(&session) else {
            return;
        };
        if index < state.next_reply || state.ready.contains_key(&index) {
            // Answered already (with an error when its replica's link went down).
            return;
        }
        state.ready.insert(index, reply);
        while let Some(next) = state.ready.remove(&state.next_reply) {
            state.next_reply += 1;
            let _ = state.writer.send(next);
        }
    }

    fn send_all(&self, out: Vec<Outgoing<UpdatePayload>>) {
        for Outgoing { to, message } in out {
            let Some(to) = to_node(to) else { continue };
            if let Some((_, writer)) = self.links.get(&to) {
                let _ = writer.send(ActiveFrame::Order(message));
            }
        }
    }

    /// The gauges `status` shows.
    fn publish(&self) {
        let active = &self.ctx.shared().active;
        active
            .last_ordered
            .store(self.sequencer.last_ordered(), Ordering::Relaxed);
        active
            .stable
            .store(self.sequencer.stable(), Ordering::Relaxed);
        *active.linked.lock().expect("linked lock") = self.links.keys().copied().collect();
        *active.serving.lock().expect("serving lock") = self.readers().into_iter().collect();
    }

    fn open_session(&mut self, stream: TcpStream) {
        self.next_session += 1;
        let session = self.next_session;
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "an unknown client".to_string(), |a| a.to_string());
        let _ = stream.set_nodelay(true);
        let (mut read_half, mut write_half) = stream.into_split();
        let (writer, mut replies) = mpsc::unbounded_channel::<Vec<u8>>();
        self.sessions.insert(
            session,
            ClientSession {
                writer,
                next_reply: 0,
                ready: BTreeMap::new(),
            },
        );
        let active = &self.ctx.shared().active;
        active.sessions_open.fetch_add(1, Ordering::Relaxed);
        active.sessions.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            while let Some(reply) = replies.recv().await {
                if write_half.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
        let events = self.events.clone();
        let table = self.table.clone();
        tokio::spawn(async move {
            if let Err(why) = read_requests(session, &mut read_half, &table, &events).await {
                tracing::debug!("active mode: client {peer} (session {session}): {why}");
            }
            let _ = events.send(FrontEvent::ClientClosed { session });
        });
    }
}

/// The comparison and the ordering number replicas as `u32`; every one is a member's id.
fn to_node(replica: u32) -> Option<NodeId> {
    NodeId::try_from(replica).ok()
}

/// Frames a client's requests, classifies each and hands it to the front in order.
async fn read_requests(
    session: SessionId,
    half: &mut tokio::net::tcp::OwnedReadHalf,
    table: &CommandTable,
    events: &mpsc::UnboundedSender<FrontEvent>,
) -> Result<(), String> {
    // Requests cross the link whole: none may be longer than a link frame carries.
    let limits = RespLimits {
        max_bulk: steadfast_core::active_wire::MAX_PAYLOAD_BYTES as u64 / 2,
        ..RespLimits::default()
    };
    let mut framer = RespFramer::new(Direction::Requests, limits);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut messages = Vec::new();
    let mut index = 0u64;
    let mut in_multi = false;
    loop {
        let n = half
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        messages.clear();
        framer
            .feed(&buf[..n], &mut messages)
            .map_err(|e| format!("framing its requests: {e}"))?;
        let mut consumed = 0usize;
        for message in &messages {
            let len = (message.end - message.start) as usize;
            let request = pending[consumed..consumed + len].to_vec();
            consumed += len;
            let Some(routed) = route(table, request, &mut in_multi) else {
                continue;
            };
            events
                .send(FrontEvent::Request {
                    session,
                    index,
                    routed,
                })
                .map_err(|_| "the primary's front stopped".to_string())?;
            index += 1;
        }
        pending.drain(..consumed);
    }
}

/// How `request` goes; `None` for an empty inline line, which redis-server skips unanswered.
fn route(table: &CommandTable, request: Vec<u8>, in_multi: &mut bool) -> Option<Routed> {
    let Some(words) = request_words(&request) else {
        // Not one the server accepts either: one replica answers with its own error.
        return Some(Routed::Read(request));
    };
    let name = words.first()?.to_ascii_uppercase();
    let classification = table.classify(&name, words.get(1).map(Vec::as_slice));
    let refuse = |why: String| {
        let why = why.replace(['\r', '\n'], " ");
        Some(Routed::Answer(
            format!(
                "-ERR steadfast active mode refuses {}: {why}\r\n",
                String::from_utf8_lossy(&name)
            )
            .into_bytes(),
        ))
    };
    match classification {
        Classification::Refused { reason } => return refuse(reason.to_string()),
        Classification::NonDeterministic { writes: true, .. } if is_random_write(&words) => {
            if *in_multi {
                return refuse(
                    "inside MULTI its effect would be chosen on every replica apart; outside a \
                     transaction it is replicated"
                        .to_string(),
                );
            }
            return Some(Routed::RandomWrite(request));
        }
        Classification::NonDeterministic { writes: true, .. } => {
            return refuse(
                "its effect differs from replica to replica, and replicating its effect is not \
                 built yet"
                    .to_string(),
            )
        }
        _ => {}
    }
    let ordered = *in_multi
        || matches!(
            classification,
            Classification::Update | Classification::SessionState
        );
    if name == b"MULTI" {
        *in_multi = true;
    } else if name == b"EXEC" || name == b"DISCARD" {
        *in_multi = false;
    }
    if !ordered {
        return Some(Routed::Read(request));
    }
    // A relative expiry becomes an absolute one at this node's clock, so every replica sets
    // the same deadline.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let request = match absolute_expiry(&words, now_ms) {
        Some(rewritten) => encode_request(&rewritten),
        None => request,
    };
    Some(Routed::Ordered(request))
}
