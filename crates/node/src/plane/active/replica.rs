//! Every member's replica in active mode: it accepts the primary's link, delivers the ordered
//! updates in their order ([`ReplicaOrder`]) through the [`ReplicaExecutor`] to its own
//! redis-server (one server connection per client session), runs the reads scheduled on it
//! once their barrier is delivered, and answers each update with the digest of the server's
//! reply (the whole reply too when the primary is on this node: the client gets that one).
//!
//! It also takes part in rebuilds: asked for a copy, it holds back its next update at a point
//! outside every MULTI, reads its server's data once every update handed is answered, and
//! sends it; being rebuilt, it empties its server, loads the copy and starts over at the copy's
//! ordering number.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steadfast_core::active_executor::{ExecAction, ReplicaExecutor, SessionId, Work};
use steadfast_core::active_order::{OrderNumber, ReplicaAction, ReplicaOrder};
use steadfast_core::active_session_setup::{sets_up_a_session, SessionSetup};
use steadfast_core::active_takeover::ReplicaPosition;
use steadfast_core::active_wire::{ActiveFrame, UpdatePayload};
use steadfast_core::redis_snapshot::{
    cut_parts, keyspace_databases, restore_requests, DUMP_SCRIPT,
};
use steadfast_core::reply_compare::digest_reply;
use steadfast_core::resp::{Direction, RespFramer, RespLimits};
use steadfast_core::resp_request::{encode_request, request_words};
use steadfast_core::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::link::{self, LinkIdentity};
use super::{ActiveContext, TICK};

/// What the replica's task hears.
enum Event {
    /// A primary linked (a newer link replaces an older one).
    LinkUp {
        primary: NodeId,
        /// The primary process's incarnation: its ordering numbers mean nothing to another.
        incarnation: u64,
        generation: u64,
        writer: mpsc::UnboundedSender<ActiveFrame>,
    },
    LinkDown {
        generation: u64,
        why: String,
    },
    Frame {
        generation: u64,
        /// The epoch the primary sent it in.
        epoch: u64,
        frame: ActiveFrame,
    },
    ServerBytes {
        session: SessionId,
        /// Which of the session's server connections (a rebuild opens new ones).
        connection: u64,
        bytes: Vec<u8>,
    },
    ServerClosed {
        session: SessionId,
        connection: u64,
        why: String,
    },
    /// The copy taken at update `at` (its parts), or why not.
    CopyTaken {
        at: OrderNumber,
        copy: Result<Vec<(u64, Vec<u8>)>, String>,
        took: Duration,
    },
}

/// How long a replica asked for a copy waits for a point outside every session's MULTI
/// before it gives up (the primary asks again).
const COPY_WAIT: Duration = Duration::from_secs(2);
/// How long loading one part of a copy into the server may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of RESTORE requests per link frame.
const COPY_PART_BYTES: usize = 4 << 20;

struct CopyAsked {
    /// Every rebuild that asked (two replicas healed at once get one copy).
    rebuilds: Vec<u64>,
    asked_at: Instant,
    /// The next updates are held back: the copy is taken once the server answered every
    /// update handed to it.
    holding: bool,
    /// The copy is being read (in a task of its own, so that this replica keeps answering
    /// probes and reads meanwhile).
    reading: bool,
}

/// A copy being loaded into this replica's emptied server.
struct Loading {
    rebuild: u64,
    at: OrderNumber,
    server: TcpStream,
}

/// A read scheduled here that waits until every update up to its barrier was delivered.
struct HeldRead {
    session: SessionId,
    index: u64,
    barrier: OrderNumber,
    request: Vec<u8>,
}

struct Replica {
    ctx: Arc<ActiveContext>,
    order: ReplicaOrder<UpdatePayload>,
    executor: ReplicaExecutor,
    origin: Instant,
    events: mpsc::UnboundedSender<Event>,
    link: Option<(NodeId, u64, mpsc::UnboundedSender<ActiveFrame>)>,
    /// The incarnation of the primary process linked last: its sessions are the ones this
    /// replica runs.
    incarnation: Option<u64>,
    /// The newest epoch a primary sent in: a primary of an older one was deposed, and its
    /// frames are refused.
    followed_epoch: u64,
    /// The primary process (incarnation, epoch) that numbered the updates this replica
    /// received, or the copy it loaded: its numbers mean nothing in another's numbering.
    numbered_by: (u64, u64),
    /// False from the first part of a copy loaded until its last: the server holds no one's
    /// data meanwhile.
    whole: bool,
    /// Each session's connection to the local redis-server, and its number.
    servers: BTreeMap<SessionId, (u64, mpsc::UnboundedSender<Vec<u8>>)>,
    next_connection: u64,
    /// The last update handed to the executor: the ordering may have delivered more, held
    /// back while a copy of this replica's data is taken.
    handed: OrderNumber,
    /// Updates delivered by the ordering and held back while the copy is taken.
    deferred: VecDeque<(OrderNumber, UpdatePayload)>,
    /// Sessions between MULTI and EXEC (or DISCARD) in the updates handed: a copy is never
    /// taken there, since a replica loaded from it would get the rest of the transaction
    /// without its MULTI.
    in_multi: BTreeSet<SessionId>,
    /// The copy the primary asked of this replica.
    copy_asked: Option<CopyAsked>,
    /// The rebuild of this replica from a copy under way.
    loading: Option<Loading>,
    /// Updates delivered and not yet answered: their session's request index, by number.
    update_index: BTreeMap<OrderNumber, u64>,
    /// Reads handed to the executor and not yet answered, per session, in order.
    read_index: BTreeMap<SessionId, VecDeque<u64>>,
    held_reads: Vec<HeldRead>,
    /// Sessions whose client left: closed once every update up to the number was delivered
    /// and the executor has nothing of theirs outstanding.
    ending: BTreeMap<SessionId, OrderNumber>,
    /// Sessions whose server connection failed: their later work is answered with an error.
    broken: BTreeSet<SessionId>,
    /// How each session's server connection is set up (SELECT, AUTH, CLIENT SETNAME…): sent
    /// with a copy, and run on a session's new connection after a rebuild.
    setups: BTreeMap<SessionId, SessionSetup>,
    /// Setup requests handed and not yet answered: they count once they succeed.
    pending_setups: BTreeMap<OrderNumber, (SessionId, Vec<u8>)>,
}

/// Accepts the primary's links on `listener` and runs the replica for as long as the process.
pub async fn run(ctx: Arc<ActiveContext>, listener: TcpListener) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(accept_links(ctx.clone(), listener, events_tx.clone()));
    let mut replica = Replica {
        order: ReplicaOrder::new(ctx.ordering, 0),
        executor: ReplicaExecutor::new(0, RespLimits::default()),
        origin: Instant::now(),
        events: events_tx,
        link: None,
        incarnation: None,
        followed_epoch: 0,
        numbered_by: (0, 0),
        whole: true,
        servers: BTreeMap::new(),
        next_connection: 0,
        handed: 0,
        deferred: VecDeque::new(),
        in_multi: BTreeSet::new(),
        copy_asked: None,
        loading: None,
        update_index: BTreeMap::new(),
        read_index: BTreeMap::new(),
        held_reads: Vec::new(),
        ending: BTreeMap::new(),
        broken: BTreeSet::new(),
        setups: BTreeMap::new(),
        pending_setups: BTreeMap::new(),
        ctx,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return };
                replica.on_event(event).await;
            }
            _ = tick.tick() => {
                let now = replica.origin.elapsed();
                let actions = replica.order.tick(now);
                replica.act(actions).await;
                // A copy waiting on a MULTI or on the server is given up in time.
                replica.copy_when_ready().await;
            }
        }
    }
}

async fn accept_links(
    ctx: Arc<ActiveContext>,
    listener: TcpListener,
    events: mpsc::UnboundedSender<Event>,
) {
    let identity = LinkIdentity {
        node: ctx.node_id,
        group_key: ctx.key.clone(),
        protection: ctx.protection,
        attempt: steadfast_core::replication_wire::LinkAttempt::NONE,
    };
    let mut generation = 0u64;
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("active link: accepting on the replica's port: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        generation += 1;
        if let Err(e) = super::super::bound_replication_stalls(&stream, ctx.stall) {
            tracing::warn!("active link from {from}: bounding its stalls: {e}");
        }
        let ctx = ctx.clone();
        let identity = identity.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let open = match link::handshake(stream, &identity, |node, at| ctx.is_member(node, at))
                .await
            {
                Ok(open) => open,
                Err(e) => {
                    ctx.shared()
                        .counters
                        .handshakes_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("active link from {from} refused: {e}");
                    return;
                }
            };
            tracing::info!(
                "active link: primary {} linked from {from} (link {generation})",
                open.peer_node
            );
            let down = events.clone();
            let writer = link::spawn_writer(open.write_half, open.sealer, open.peer, 0, move |e| {
                let _ = down.send(Event::LinkDown {
                    generation,
                    why: e.to_string(),
                });
            });
            if events
                .send(Event::LinkUp {
                    primary: open.peer_node,
                    incarnation: open.peer_attempt.incarnation,
                    generation,
                    writer,
                })
                .is_err()
            {
                return;
            }
            let frames = events.clone();
            let why = link::read_frames(open.reader, open.read_half, open.peer, |epoch, frame| {
                frames
                    .send(Event::Frame {
                        generation,
                        epoch,
                        frame,
                    })
                    .is_ok()
            })
            .await;
            let _ = events.send(Event::LinkDown {
                generation,
                why: why.to_string(),
            });
        });
    }
}

impl Replica {
    async fn on_event(&mut self, event: Event) {
        match event {
            Event::LinkUp {
                primary,
                incarnation,
                generation,
                writer,
            } => {
                if self.incarnation.is_some_and(|i| i != incarnation) {
                    self.another_primary_process(primary).await;
                }
                self.incarnation = Some(incarnation);
                self.link = Some((primary, generation, writer));
                // Tell the new link at once where this replica stands: a primary taking over
                // goes on from the replica that received most (`active_takeover`).
                let position = self.position();
                self.send(ActiveFrame::Position(position));
                self.send(ActiveFrame::Progress(
                    steadfast_core::active_order::ToPrimary::Ack {
                        up_to: self.order.received(),
                    },
                ));
            }
            Event::LinkDown { generation, why } => {
                if self.link.as_ref().is_some_and(|l| l.1 == generation) {
                    tracing::warn!("active link to the primary lost: {why}");
                    self.link = None;
                }
            }
            Event::Frame {
                generation,
                epoch,
                frame,
            } => {
                if self.link.as_ref().is_none_or(|l| l.1 != generation) {
                    return;
                }
                if epoch < self.followed_epoch {
                    // A deposed primary that has not yet learnt it: what it orders now would
                    // split this replica from the group the new primary leads.
                    tracing::warn!(
                        "active replica: the primary's link sends in epoch {epoch}, older than \
                         the {} followed: dropped",
                        self.followed_epoch
                    );
                    self.link = None;
                    return;
                }
                self.followed_epoch = epoch;
                self.on_frame(epoch, frame).await;
            }
            Event::ServerBytes {
                session,
                connection,
                bytes,
            } => {
                if self
                    .servers
                    .get(&session)
                    .is_none_or(|(c, _)| *c != connection)
                {
                    // A connection dropped by a rebuild.
                    return;
                }
                match self.executor.server_bytes(session, &bytes) {
                    Ok(actions) => self.exec(actions).await,
                    Err(e) => self.fail_session(session, &e.to_string()),
                }
                self.close_ended_sessions();
                self.copy_when_ready().await;
            }
            Event::CopyTaken { at, copy, took } => self.copy_taken(at, copy, took).await,
            Event::ServerClosed {
                session,
                connection,
                why,
            } => {
                if self
                    .servers
                    .get(&session)
                    .is_some_and(|(c, _)| *c == connection)
                {
                    self.servers.remove(&session);
                    if !self.ending.contains_key(&session) {
                        self.fail_session(session, &why);
                    }
                }
            }
        }
    }

    async fn on_frame(&mut self, epoch: u64, frame: ActiveFrame) {
        let now = self.origin.elapsed();
        match frame {
            ActiveFrame::Order(message) => {
                if matches!(
                    message,
                    steadfast_core::active_order::ToReplica::Update { .. }
                ) {
                    // Sent only to replicas in this primary's ordering, which goes on from
                    // what this replica holds.
                    self.numbered_by = (self.incarnation.unwrap_or(0), epoch);
                }
                let actions = self.order.on_message(message, now);
                self.act(actions).await;
            }
            ActiveFrame::Read {
                session,
                index,
                barrier,
                request,
            } => {
                self.held_reads.push(HeldRead {
                    session,
                    index,
                    barrier,
                    request,
                });
                self.release_reads().await;
            }
            ActiveFrame::EndSession { session, after } => {
                self.ending.insert(session, after);
                self.close_ended_sessions();
            }
            ActiveFrame::Probe { token } => self.send(ActiveFrame::ProbeReply { token }),
            ActiveFrame::SnapshotRequest { rebuild } => {
                match &mut self.copy_asked {
                    // A copy under way serves this rebuild too: it is taken at one number.
                    Some(asked) => asked.rebuilds.push(rebuild),
                    None => {
                        self.copy_asked = Some(CopyAsked {
                            rebuilds: vec![rebuild],
                            asked_at: Instant::now(),
                            holding: false,
                            reading: false,
                        })
                    }
                }
                self.copy_when_ready().await;
            }
            ActiveFrame::SessionPrelude {
                rebuild,
                at,
                session,
                commands,
                requests,
            } => {
                if let Err(e) = self
                    .load_prelude(rebuild, at, session, commands, &requests)
                    .await
                {
                    self.load_failed(&format!(
                        "the setup of session {session} in the copy of rebuild {rebuild}: {e}"
                    ));
                }
            }
            ActiveFrame::SnapshotPart {
                rebuild,
                at,
                commands,
                last,
                requests,
            } => {
                if let Err(e) = self
                    .load_part(rebuild, at, commands, last, &requests, epoch)
                    .await
                {
                    self.load_failed(&format!("loading the copy of rebuild {rebuild}: {e}"));
                }
            }
            other => tracing::warn!(
                "active link: a {} frame from the primary, which only a replica sends",
                other.label()
            ),
        }
    }

    async fn act(&mut self, actions: Vec<ReplicaAction<UpdatePayload>>) {
        for action in actions {
            match action {
                ReplicaAction::Send(message) => self.send(ActiveFrame::Progress(message)),
                ReplicaAction::Deliver { number, payload } => {
                    if self.copy_asked.as_ref().is_some_and(|c| c.holding) {
                        self.deferred.push_back((number, payload));
                    } else {
                        self.hand(number, payload).await;
                        self.copy_when_ready().await;
                    }
                }
            }
        }
        self.close_ended_sessions();
    }

    /// Hands update `number` to the executor.
    async fn hand(&mut self, number: OrderNumber, payload: UpdatePayload) {
        self.handed = number;
        self.ctx
            .shared()
            .active
            .delivered
            .store(number, Ordering::Relaxed);
        if !self.in_multi.contains(&payload.session) && sets_up_a_session(&payload.request) {
            self.pending_setups
                .insert(number, (payload.session, payload.request.clone()));
        }
        match transaction_boundary(&payload.request) {
            Some(TransactionBoundary::Opens) => {
                self.in_multi.insert(payload.session);
            }
            Some(TransactionBoundary::Closes) => {
                self.in_multi.remove(&payload.session);
            }
            None => {}
        }
        self.update_index.insert(number, payload.index);
        self.submit(Work::Update {
            number,
            session: payload.session,
            request: payload.request,
        })
        .await;
        // Reads behind this update go before the next one, so that each runs in its session's
        // order on this replica.
        self.release_reads().await;
    }

    /// Takes the copy the primary asked for as soon as it can: outside every MULTI, the next
    /// updates held back, every update handed answered by the server.
    async fn copy_when_ready(&mut self) {
        let Some(asked) = self.copy_asked.as_mut() else {
            return;
        };
        if asked.reading {
            return;
        }
        if !asked.holding {
            if !self.in_multi.is_empty() {
                if asked.asked_at.elapsed() >= COPY_WAIT {
                    tracing::warn!(
                        "active replica: no point outside every MULTI within {COPY_WAIT:?} for \
                         the copy of rebuilds {:?}; not taken (the primary asks again)",
                        asked.rebuilds
                    );
                    self.copy_asked = None;
                }
                return;
            }
            asked.holding = true;
        }
        if self.executor.answered_up_to() < self.handed {
            if asked.asked_at.elapsed() >= COPY_WAIT * 2 {
                // A server that does not answer must not hold this replica's updates back for
                // ever: the copy is not taken, the primary asks again.
                tracing::warn!(
                    "active replica: the server answered updates up to {} of {} within {:?}; \
                     the copy for rebuilds {:?} is not taken",
                    self.executor.answered_up_to(),
                    self.handed,
                    COPY_WAIT * 2,
                    asked.rebuilds
                );
                self.copy_asked = None;
                while let Some((number, payload)) = self.deferred.pop_front() {
                    self.hand(number, payload).await;
                }
            }
            return;
        }
        asked.reading = true;
        let at = self.handed;
        let backend = self.ctx.backend;
        let events = self.events.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let copy = take_copy(backend).await;
            let _ = events.send(Event::CopyTaken {
                at,
                copy,
                took: started.elapsed(),
            });
        });
    }

    /// Sends the copy to the primary for every rebuild that asked, then hands on the updates
    /// held back meanwhile.
    async fn copy_taken(
        &mut self,
        at: OrderNumber,
        copy: Result<Vec<(u64, Vec<u8>)>, String>,
        took: Duration,
    ) {
        let Some(asked) = self.copy_asked.take() else {
            return;
        };
        match copy {
            Ok(parts) => {
                let count = parts.len();
                let requests: u64 = parts.iter().map(|(n, _)| n).sum();
                // Every update handed was answered: the setups stand as at `at`.
                let preludes: Vec<(SessionId, (u64, Vec<u8>))> = self
                    .setups
                    .iter()
                    .filter(|(session, setup)| {
                        !setup.is_empty() && !self.ending.contains_key(session)
                    })
                    .map(|(&session, setup)| (session, setup.prelude()))
                    .collect();
                for &rebuild in &asked.rebuilds {
                    for (session, (commands, requests)) in &preludes {
                        self.send(ActiveFrame::SessionPrelude {
                            rebuild,
                            at,
                            session: *session,
                            commands: *commands,
                            requests: requests.clone(),
                        });
                    }
                    for (i, (commands, bytes)) in parts.iter().enumerate() {
                        self.send(ActiveFrame::SnapshotPart {
                            rebuild,
                            at,
                            commands: *commands,
                            last: i + 1 == count,
                            requests: bytes.clone(),
                        });
                    }
                }
                tracing::info!(
                    "active replica: copy for rebuilds {:?} taken at update {at} in {took:?} \
                     ({requests} requests, {count} parts)",
                    asked.rebuilds
                );
            }
            Err(e) => tracing::error!(
                "active replica: the copy for rebuilds {:?} at update {at}: {e}; not taken \
                 (the primary asks again)",
                asked.rebuilds
            ),
        }
        while let Some((number, payload)) = self.deferred.pop_front() {
            self.hand(number, payload).await;
        }
        self.close_ended_sessions();
    }

    /// Loads one part of a copy taken at update `at`. The first part of a rebuild empties the
    /// server and forgets everything this replica held; after the last, the primary is told,
    /// and sends the updates after `at`.
    async fn load_part(
        &mut self,
        rebuild: u64,
        at: OrderNumber,
        commands: u64,
        last: bool,
        requests: &[u8],
        epoch: u64,
    ) -> Result<(), String> {
        let backend = self.ctx.backend;
        let loading = self.begin_load(rebuild, at).await?;
        let load = run_requests(&mut loading.server, requests, commands);
        tokio::time::timeout(LOAD_TIMEOUT, load)
            .await
            .map_err(|_| {
                format!("the redis-server at {backend} did not load a part within {LOAD_TIMEOUT:?}")
            })?
            .map_err(|e| format!("the redis-server at {backend}: {e}"))?;
        if last {
            self.loading = None;
            self.whole = true;
            self.numbered_by = (self.incarnation.unwrap_or(0), epoch);
            self.send(ActiveFrame::SnapshotLoaded { rebuild, at });
        }
        Ok(())
    }

    /// A copy could not be loaded: this replica's data is partial until the primary, which
    /// hears no `SnapshotLoaded`, starts the rebuild again.
    fn load_failed(&mut self, what: &str) {
        self.ctx
            .shared()
            .active
            .replica_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!("active replica: {what}; the primary starts the rebuild again");
        self.loading = None;
    }

    /// The load of rebuild `rebuild`'s copy, begun by its first frame: this replica forgets
    /// everything it held and its server is emptied, after every other connection to it went
    /// (a write the old sessions still had queued must not land after it was emptied).
    async fn begin_load(&mut self, rebuild: u64, at: OrderNumber) -> Result<&mut Loading, String> {
        let backend = self.ctx.backend;
        if self.loading.as_ref().is_none_or(|l| l.rebuild != rebuild) {
            self.start_over_at(at);
            let mut server = tokio::time::timeout(LOAD_TIMEOUT, TcpStream::connect(backend))
                .await
                .map_err(|_| format!("connecting to the redis-server at {backend}: timed out"))?
                .map_err(|e| format!("connecting to the redis-server at {backend}: {e}"))?;
            let mut empty = encode_request(&[
                b"CLIENT".to_vec(),
                b"KILL".to_vec(),
                b"TYPE".to_vec(),
                b"normal".to_vec(),
                b"SKIPME".to_vec(),
                b"yes".to_vec(),
            ]);
            empty.extend_from_slice(b"*1\r\n$8\r\nFLUSHALL\r\n");
            tokio::time::timeout(LOAD_TIMEOUT, run_requests(&mut server, &empty, 2))
                .await
                .map_err(|_| {
                    format!("the redis-server at {backend} was not emptied within {LOAD_TIMEOUT:?}")
                })?
                .map_err(|e| format!("emptying the redis-server at {backend}: {e}"))?;
            self.loading = Some(Loading {
                rebuild,
                at,
                server,
            });
            tracing::info!(
                "active replica: loading a copy taken at update {at} (rebuild {rebuild})"
            );
        }
        let loading = self.loading.as_mut().expect("set above");
        if loading.at != at {
            return Err(format!(
                "a part taken at update {at} in a copy taken at {}",
                loading.at
            ));
        }
        Ok(loading)
    }

    /// A session's setup in the copy: run on its new server connection (`connect_server`)
    /// before its next work.
    async fn load_prelude(
        &mut self,
        rebuild: u64,
        at: OrderNumber,
        session: SessionId,
        commands: u64,
        requests: &[u8],
    ) -> Result<(), String> {
        self.begin_load(rebuild, at).await?;
        let setup = SessionSetup::from_prelude(requests)?;
        let held = setup.prelude().0;
        if held != commands {
            return Err(format!("a prelude of {commands} requests holding {held}"));
        }
        self.setups.insert(session, setup);
        Ok(())
    }

    /// Forgets every update, read and session this replica held: its server is about to hold
    /// a copy taken at update `at`.
    fn start_over_at(&mut self, at: OrderNumber) {
        self.whole = false;
        self.order = ReplicaOrder::new(self.ctx.ordering, at);
        self.executor = ReplicaExecutor::new(at, RespLimits::default());
        self.servers.clear();
        self.update_index.clear();
        self.read_index.clear();
        self.held_reads.clear();
        self.ending.clear();
        self.broken.clear();
        self.setups.clear();
        self.pending_setups.clear();
        self.deferred.clear();
        self.in_multi.clear();
        self.copy_asked = None;
        self.handed = at;
        self.ctx
            .shared()
            .active
            .delivered
            .store(at, Ordering::Relaxed);
    }

    /// Where this replica's data stands, for a primary taking over.
    fn position(&self) -> ReplicaPosition {
        ReplicaPosition {
            ordered_by: self.numbered_by.0,
            epoch: self.numbered_by.1,
            received: self.order.received(),
            whole: self.whole,
        }
    }

    /// Another primary process linked: the one whose sessions this replica ran is gone (its
    /// clients' connections went with it). Its sessions end once their work is answered (the
    /// server drops an open MULTI with the connection), updates received beyond a gap are
    /// dropped (the new primary numbers its own there), and a copy it asked for or was loading
    /// is given up. The updates received are kept: the new primary goes on from them if they
    /// are the group's, or rebuilds this replica.
    async fn another_primary_process(&mut self, primary: NodeId) {
        tracing::info!(
            "active replica: primary {primary} is another primary process; the sessions of the \
             last one end, this replica holds updates up to {}",
            self.order.received()
        );
        let now = self.origin.elapsed();
        let received = self.order.received();
        // Never refused: nothing beyond what it received was delivered.
        let _ = self.order.follow(received, now);
        self.held_reads.clear();
        let sessions: BTreeSet<SessionId> = self
            .servers
            .keys()
            .chain(self.broken.iter())
            .copied()
            .collect();
        for session in sessions {
            self.ending.insert(session, self.handed);
        }
        if self.loading.take().is_some() {
            tracing::warn!(
                "active replica: the copy being loaded came from the last primary; this \
                 replica's data is partial until it is rebuilt"
            );
        }
        self.copy_asked = None;
        while let Some((number, payload)) = self.deferred.pop_front() {
            self.hand(number, payload).await;
        }
        self.close_ended_sessions();
    }

    /// Hands the executor the reads whose barrier is delivered, in the order they came.
    async fn release_reads(&mut self) {
        let delivered = self.handed;
        let ready: Vec<HeldRead>;
        (ready, self.held_reads) = std::mem::take(&mut self.held_reads)
            .into_iter()
            .partition(|read| read.barrier <= delivered);
        for read in ready {
            self.read_index
                .entry(read.session)
                .or_default()
                .push_back(read.index);
            self.submit(Work::Read {
                session: read.session,
                barrier: read.barrier,
                request: read.request,
            })
            .await;
        }
    }

    async fn submit(&mut self, work: Work) {
        let session = match &work {
            Work::Update { session, .. } | Work::Read { session, .. } => *session,
        };
        if !self.servers.contains_key(&session) && !self.broken.contains(&session) {
            if let Err(e) = self.connect_server(session).await {
                self.fail_session(session, &e);
            }
        }
        match self.executor.submit(work) {
            Ok(actions) => self.exec(actions).await,
            Err(e) => {
                // Out of order: the ordering core and the executor disagree, which no input
                // should cause; this replica's data can no longer be trusted.
                self.ctx
                    .shared()
                    .active
                    .replica_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!("active replica: session {session}: {e}");
            }
        }
    }

    async fn exec(&mut self, actions: Vec<ExecAction>) {
        for action in actions {
            match action {
                ExecAction::Write { session, bytes } => match self.servers.get(&session) {
                    Some((_, server)) if server.send(bytes).is_ok() => {}
                    _ => self.answer_locally_failed(session),
                },
                ExecAction::Replied {
                    session,
                    number: Some(number),
                    reply,
                } => {
                    if let Some((of, request)) = self.pending_setups.remove(&number) {
                        if !matches!(reply.first(), Some(b'-' | b'!')) {
                            self.setups.entry(of).or_default().succeeded(&request);
                        }
                    }
                    let index = self.update_index.remove(&number).unwrap_or_default();
                    let whole = self
                        .link
                        .as_ref()
                        .is_some_and(|(primary, _, _)| *primary == self.ctx.node_id);
                    self.send(ActiveFrame::UpdateReply {
                        number,
                        session,
                        index,
                        digest: digest_reply(&reply),
                        reply: whole.then_some(reply),
                    });
                }
                ExecAction::Replied {
                    session,
                    number: None,
                    reply,
                } => {
                    let index = self
                        .read_index
                        .get_mut(&session)
                        .and_then(VecDeque::pop_front)
                        .unwrap_or_default();
                    self.ctx
                        .shared()
                        .active
                        .reads_served
                        .fetch_add(1, Ordering::Relaxed);
                    self.send(ActiveFrame::ReadReply {
                        session,
                        index,
                        reply,
                    });
                }
            }
        }
    }

    /// A write for a session whose server connection is gone: the executor waits for a reply
    /// that never comes, so the work is answered here with an error the client can read.
    fn answer_locally_failed(&mut self, session: SessionId) {
        let reply = b"-ERR steadfast: this replica's connection to its redis-server failed\r\n";
        if let Ok(actions) = self.executor.server_bytes(session, reply) {
            // Answered synchronously: no further writes can come from a session's own reply.
            for action in actions {
                if let ExecAction::Replied {
                    session,
                    number,
                    reply,
                } = action
                {
                    match number {
                        Some(number) => {
                            self.pending_setups.remove(&number);
                            let index = self.update_index.remove(&number).unwrap_or_default();
                            self.send(ActiveFrame::UpdateReply {
                                number,
                                session,
                                index,
                                digest: digest_reply(&reply),
                                reply: Some(reply),
                            });
                        }
                        None => {
                            let index = self
                                .read_index
                                .get_mut(&session)
                                .and_then(VecDeque::pop_front)
                                .unwrap_or_default();
                            self.send(ActiveFrame::ReadReply {
                                session,
                                index,
                                reply,
                            });
                        }
                    }
                }
            }
        }
    }

    fn fail_session(&mut self, session: SessionId, why: &str) {
        self.ctx
            .shared()
            .active
            .replica_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!("active replica: session {session}: {why}");
        self.servers.remove(&session);
        self.broken.insert(session);
    }

    fn close_ended_sessions(&mut self) {
        let delivered = self.handed;
        let done: Vec<SessionId> = self
            .ending
            .iter()
            .filter(|(session, after)| {
                **after <= delivered && !self.held_reads.iter().any(|r| r.session == **session)
            })
            .map(|(session, _)| *session)
            .collect();
        for session in done {
            if self.executor.end_session(session).is_ok() {
                self.ending.remove(&session);
                self.servers.remove(&session);
                self.read_index.remove(&session);
                self.broken.remove(&session);
                self.setups.remove(&session);
                // Its server connection closes: the server drops an open transaction.
                self.in_multi.remove(&session);
            }
        }
    }

    fn send(&mut self, frame: ActiveFrame) {
        if let Some((_, _, writer)) = &self.link {
            // A closed writer is reported as a link loss by its own task.
            let _ = writer.send(frame);
        }
    }

    /// Opens the session's connection to the local redis-server, with a task that hands what
    /// the server sends to the replica's task and one that writes what it is given.
    async fn connect_server(&mut self, session: SessionId) -> Result<(), String> {
        let backend = self.ctx.backend;
        let mut stream = TcpStream::connect(backend)
            .await
            .map_err(|e| format!("connecting to the redis-server at {backend}: {e}"))?;
        let _ = stream.set_nodelay(true);
        // A session this replica got from a copy: its connection is set up as the source's was.
        if let Some((commands, requests)) = self
            .setups
            .get(&session)
            .map(SessionSetup::prelude)
            .filter(|(commands, _)| *commands > 0)
        {
            tokio::time::timeout(LOAD_TIMEOUT, run_requests(&mut stream, &requests, commands))
                .await
                .map_err(|_| {
                    format!("setting up the session's connection to {backend}: timed out")
                })?
                .map_err(|e| format!("setting up the session's connection to {backend}: {e}"))?;
        }
        let (mut read_half, mut write_half) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        self.next_connection += 1;
        let connection = self.next_connection;
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if let Err(e) = write_half.write_all(&bytes).await {
                    let _ = events.send(Event::ServerClosed {
                        session,
                        connection,
                        why: format!("writing to the redis-server at {backend}: {e}"),
                    });
                    return;
                }
            }
            // The session ended: close the server connection.
            let _ = write_half.shutdown().await;
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match read_half.read(&mut buf).await {
                    Ok(0) => {
                        let _ = events.send(Event::ServerClosed {
                            session,
                            connection,
                            why: format!("the redis-server at {backend} closed the connection"),
                        });
                        return;
                    }
                    Ok(n) => {
                        if events
                            .send(Event::ServerBytes {
                                session,
                                connection,
                                bytes: buf[..n].to_vec(),
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = events.send(Event::ServerClosed {
                            session,
                            connection,
                            why: format!("reading from the redis-server at {backend}: {e}"),
                        });
                        return;
                    }
                }
            }
        });
        self.servers.insert(session, (connection, tx));
        Ok(())
    }
}

enum TransactionBoundary {
    /// MULTI.
    Opens,
    /// EXEC or DISCARD.
    Closes,
}

/// Whether an update opens or closes a transaction. Every update on every replica goes
/// through here, so the request is decoded only when it is short enough to be one of the
/// three (a command of no argument).
fn transaction_boundary(request: &[u8]) -> Option<TransactionBoundary> {
    if request.len() > 32 {
        return None;
    }
    let words = request_words(request)?;
    match words.first()?.to_ascii_uppercase().as_slice() {
        b"MULTI" => Some(TransactionBoundary::Opens),
        b"EXEC" | b"DISCARD" => Some(TransactionBoundary::Closes),
        _ => None,
    }
}

/// Reads a copy of the local server's data: every database `INFO keyspace` lists, each by
/// [`DUMP_SCRIPT`] (whole, so consistent), as RESTORE requests cut in link-sized parts. The
/// caller holds back every update while this runs, so the copy is at one ordering number.
async fn take_copy(backend: SocketAddr) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let work = async {
        let mut server = TcpStream::connect(backend)
            .await
            .map_err(|e| format!("connecting to the redis-server at {backend}: {e}"))?;
        let info = exchange(
            &mut server,
            &encode_request(&[b"INFO".to_vec(), b"keyspace".to_vec()]),
        )
        .await?;
        let databases = keyspace_databases(&info).map_err(|e| e.to_string())?;
        let mut requests = Vec::new();
        for db in databases {
            exchange(
                &mut server,
                &encode_request(&[b"SELECT".to_vec(), db.to_string().into_bytes()]),
            )
            .await?;
            let dump = exchange(
                &mut server,
                &encode_request(&[
                    b"EVAL".to_vec(),
                    DUMP_SCRIPT.as_bytes().to_vec(),
                    b"0".to_vec(),
                ]),
            )
            .await?;
            requests.extend(restore_requests(db, &dump).map_err(|e| e.to_string())?);
        }
        let mut parts = cut_parts(requests, COPY_PART_BYTES);
        if parts.is_empty() {
            // An empty dataset is a copy too: the joiner empties its server and is told so.
            parts.push((0, Vec::new()));
        }
        Ok::<_, String>(parts)
    };
    tokio::time::timeout(LOAD_TIMEOUT, work)
        .await
        .map_err(|_| format!("reading the copy from the redis-server at {backend}: timed out"))?
        .map_err(|e| format!("reading the copy from the redis-server at {backend}: {e}"))
}

/// Sends one request and returns its whole reply.
async fn exchange(server: &mut TcpStream, request: &[u8]) -> Result<Vec<u8>, String> {
    server
        .write_all(request)
        .await
        .map_err(|e| format!("writing: {e}"))?;
    let mut framer = RespFramer::new(Direction::Replies, copy_limits());
    let mut reply = Vec::new();
    let mut messages = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while messages.is_empty() {
        let n = server
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".to_string());
        }
        reply.extend_from_slice(&buf[..n]);
        framer
            .feed(&buf[..n], &mut messages)
            .map_err(|e| format!("framing its reply: {e}"))?;
    }
    Ok(reply)
}

/// Sends `requests` (pipelined) and reads `expected` replies, failing on the first error reply.
async fn run_requests(
    server: &mut TcpStream,
    requests: &[u8],
    expected: u64,
) -> Result<(), String> {
    server
        .write_all(requests)
        .await
        .map_err(|e| format!("writing: {e}"))?;
    let mut framer = RespFramer::new(Direction::Replies, copy_limits());
    let mut messages = Vec::new();
    let mut answered = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    while answered < expected {
        let n = server
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".to_string());
        }
        // Offsets count from the framer's start; the replies are short (+OK), kept whole.
        seen.extend_from_slice(&buf[..n]);
        messages.clear();
        framer
            .feed(&buf[..n], &mut messages)
            .map_err(|e| format!("framing its replies: {e}"))?;
        for message in &messages {
            let reply = &seen[message.start as usize..message.end as usize];
            if reply.first() == Some(&b'-') {
                return Err(format!(
                    "reply {} of {expected}: {}",
                    answered + 1,
                    String::from_utf8_lossy(reply).trim_end()
                ));
            }
            answered += 1;
        }
    }
    Ok(())
}

fn copy_limits() -> RespLimits {
    RespLimits {
        max_bulk: steadfast_core::active_wire::MAX_PAYLOAD_BYTES as u64,
        ..RespLimits::default()
    }
}

/// The replica's listening address: this member's own address, the active port.
pub fn listen_address(local: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(local, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_multi_exec_and_discard_bound_a_transaction() {
        let opens = |r: &[u8]| matches!(transaction_boundary(r), Some(TransactionBoundary::Opens));
        let closes =
            |r: &[u8]| matches!(transaction_boundary(r), Some(TransactionBoundary::Closes));
        assert!(opens(b"*1\r\n$5\r\nMULTI\r\n"));
        assert!(opens(b"multi\r\n"));
        assert!(closes(b"*1\r\n$4\r\nexec\r\n"));
        assert!(closes(b"*1\r\n$7\r\nDISCARD\r\n"));
        assert!(transaction_boundary(b"*2\r\n$4\r\nINCR\r\n$5\r\nMULTI\r\n").is_none());
        let long = encode_request(&[b"SET".to_vec(), b"MULTI".to_vec(), vec![b'x'; 40]]);
        assert!(transaction_boundary(&long).is_none());
    }
}
