//! The backup's table of connection images, keyed by 4-tuple.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use super::connection::{
    serial_delta, ConnectionImage, ConsumeError, ImageLimits, NegotiatedOptions, RefuseReason,
    SegmentReport,
};
use super::segment::{ClientSegment, FourTuple};
use super::unadopted::UnadoptedConnection;

/// Bounds of the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLimits {
    /// SYNs beyond this many tracked connections are refused (not forwarded): a connection the
    /// backup cannot protect is better not opened than opened unprotected.
    pub max_connections: usize,
    /// Images of connections whose handshake has not completed (a SYN seen, not yet the
    /// client's ACK of the server's SYN-ACK). A new one beyond this many evicts the oldest,
    /// as a SYN queue under a flood drops its oldest entry: spoofed SYNs, which never
    /// complete, cannot fill the table, and a real handshake completes long before a flood
    /// pushes its image out. A connection whose image was pushed out all the same reaches the
    /// primary untracked and is handed over like one opened before this backup joined.
    pub max_half_open: usize,
    /// Half-open images from one client address. A new SYN from an address that has this many
    /// is refused (not forwarded; a real client resends it), so that one host's SYNs cannot
    /// push out everybody else's half-open images; spoofed sources spread over many addresses
    /// are the `max_half_open` bound's matter.
    pub max_half_open_per_source: usize,
    /// Request bytes all images may hold together (the memory budget). At or above it a new
    /// connection's SYN is refused (not forwarded; the client resends it) while the open
    /// connections go on, each within its own [`ImageLimits`].
    pub max_bytes_held: usize,
    /// How long a half-open image is kept: the kernel's own SYN-RECV lifetime (63 s with the
    /// default five SYN-ACK retransmissions) and a little more. A handshake that completes
    /// later all the same reaches the primary untracked and is handed over like a connection
    /// opened before this backup joined.
    pub half_open_lifetime: Duration,
    pub image: ImageLimits,
}

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits {
            max_connections: 262_144,
            max_half_open: 65_536,
            max_half_open_per_source: 4_096,
            max_bytes_held: 1 << 30,
            half_open_lifetime: Duration::from_secs(64),
            image: ImageLimits::default(),
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Closure {
    /// Both sides sent FIN and the client acknowledged the server's.
    Finished,
    /// The client sent an acceptable RST.
    Reset,
}

/// Whether the table logged the opening of a connection the primary reports opened
/// ([`ConnectionTable::reported_opened`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedCheck {
    /// Its SYN and handshake ACK passed here: the image holds the connection from its start.
    Logged,
    /// No image: expected for adoption.
    NeverSeen,
    /// Its SYN passed here, not its handshake ACK: the image was dropped, expected for
    /// adoption.
    HandshakeAround,
}

/// What the table did with a segment's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tracking {
    /// The segment was a SYN that opened a new image.
    Opened,
    /// The segment went to an existing image, which stays.
    Tracked,
    /// The segment closed its connection; the image was removed.
    Closed(Closure),
    /// No image for this 4-tuple and not a SYN: a connection opened before this backup started
    /// logging, or already closed. Forwarding it is safe but the connection is not protected.
    Untracked,
}

/// The outcome of a segment the table accepted; its frame is to be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub tracking: Tracking,
    pub report: SegmentReport,
    /// The half-open connection whose image this SYN pushed out (see
    /// [`TableLimits::max_half_open`]): whatever else follows it goes too.
    pub evicted: Option<FourTuple>,
}

/// Cumulative counters of the table (status output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableCounters {
    /// Every segment given to [`ConnectionTable::ingest`].
    pub segments: u64,
    pub untracked_segments: u64,
    /// Segments with data of which none was new (retransmits).
    pub duplicate_segments: u64,
    pub duplicate_bytes: u64,
    /// Bytes that differed from bytes already held at the same position (the first kept).
    pub conflicting_bytes: u64,
    /// Segments refused for a limit: not to be forwarded.
    pub refused_segments: u64,
    pub opened: u64,
    pub finished: u64,
    pub reset: u64,
    /// Images replaced by a new SYN on the same 4-tuple (port reuse after close, or a client
    /// restarting a handshake that never completed).
    pub replaced: u64,
    /// SYNs with a new ISN on an established connection: the server answers them with a
    /// challenge ACK (RFC 5961 4), the image stays.
    pub ignored_syns: u64,
    /// Connections the primary said it had not handed over that found no room among the
    /// unadopted records (more than `max_connections` of them): a takeover does not count them
    /// nor tell their clients they are lost.
    pub unadopted_unrecorded: u64,
    /// Half-open images pushed out by newer ones (more than `max_half_open`: a SYN flood).
    pub half_open_evicted: u64,
    /// Half-open images dropped after `half_open_lifetime` without a completed handshake.
    pub half_open_expired: u64,
    /// SYNs refused because the images held `max_bytes_held` request bytes or more.
    pub refused_over_budget: u64,
    /// SYNs refused because their address had `max_half_open_per_source` half-open images.
    pub refused_half_open_source: u64,
}

/// Per connection nobody announced for adoption, the most recent untracked segments kept.
const RECENT_UNTRACKED_PER_CONNECTION: usize = 256 * 1024;
/// Per connection the primary said it will hand over: what passes here between the moment it
/// reads the connection's sequence numbers and the moment its hand-over arrives must all be
/// replayed. The primary reads nothing more of that client until the backup has acknowledged
/// the hand-over, so the client can send at most one receive window meanwhile (Linux's
/// tcp_rmem allows up to 6 MiB).
const RECENT_UNTRACKED_PER_ANNOUNCED: usize = 8 * 1024 * 1024;
/// All connections together; beyond it the oldest connection's segments go first.
const RECENT_UNTRACKED_TOTAL: usize = 64 * 1024 * 1024;

/// What a kept untracked segment counts against the bounds: its payload and its header.
fn segment_cost(payload: &[u8]) -> usize {
    payload.len() + 64
}

fn held_bytes(recent: &VecDeque<(ClientSegment, Vec<u8>)>) -> usize {
    recent
        .iter()
        .map(|(_, payload)| segment_cost(payload))
        .sum()
}

/// The images by 4-tuple, with what the bounds read kept up to date as they change, so that
/// a SYN is checked in O(1): the request bytes they hold (the memory budget) and the half-open
/// ones per client address.
#[derive(Debug, Clone, Default)]
struct Images {
    map: HashMap<FourTuple, ConnectionImage>,
    held: usize,
    half_open_by_source: HashMap<Ipv4Addr, usize>,
}

/// A connection whose handshake has not completed here (no ACK of the server's SYN yet).
fn is_half_open(image: &ConnectionImage) -> bool {
    image.server_isn().is_none()
}

impl Images {
    fn get(&self, tuple: &FourTuple) -> Option<&ConnectionImage> {
        self.map.get(tuple)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn half_open_from(&self, source: &Ipv4Addr) -> usize {
        self.half_open_by_source.get(source).copied().unwrap_or(0)
    }

    /// Counts `image` into the figures (`add`) or out of them.
    fn count(&mut self, image: &ConnectionImage, add: bool) {
        let bytes = image.bytes_held();
        if add {
            self.held += bytes;
        } else {
            self.held -= bytes;
        }
        if is_half_open(image) {
            self.count_half_open(*image.tuple().client.ip(), add);
        }
    }

    fn count_half_open(&mut self, source: Ipv4Addr, add: bool) {
        let count = self.half_open_by_source.entry(source).or_default();
        if add {
            *count += 1;
        } else {
            *count -= 1;
            if *count == 0 {
                self.half_open_by_source.remove(&source);
            }
        }
    }

    fn insert(&mut self, tuple: FourTuple, image: ConnectionImage) {
        self.count(&image, true);
        if let Some(old) = self.map.insert(tuple, image) {
            self.count(&old, false);
        }
    }

    fn remove(&mut self, tuple: &FourTuple) -> Option<ConnectionImage> {
        let image = self.map.remove(tuple)?;
        self.count(&image, false);
        Some(image)
    }

    /// Applies `change` to the image of `tuple`, if any, and counts it anew.
    fn update<R>(
        &mut self,
        tuple: &FourTuple,
        change: impl FnOnce(&mut ConnectionImage) -> R,
    ) -> Option<R> {
        let image = self.map.get_mut(tuple)?;
        let (bytes_before, half_open_before) = (image.bytes_held(), is_half_open(image));
        let result = change(image);
        let (bytes_after, half_open_after) = (image.bytes_held(), is_half_open(image));
        let source = *image.tuple().client.ip();
        self.held = self.held - bytes_before + bytes_after;
        if half_open_before != half_open_after {
            self.count_half_open(source, half_open_after);
        }
        Some(result)
    }
}

/// All connection images of a backup.
#[derive(Debug, Clone, Default)]
pub struct ConnectionTable {
    images: Images,
    limits: TableLimits,
    counters: TableCounters,
    /// Segments of connections the table does not track (opened before this backup joined),
    /// most recent last. The primary hands such a connection over ([`ConnectionTable::adopt`])
    /// with the bytes *it* has received; segments that passed through here after those — while
    /// the hand-over was on its way — would otherwise be missing from the image forever (the
    /// client will not resend what the primary acknowledged), so the adoption replays them.
    recent_untracked: HashMap<FourTuple, RecentSegments>,
    /// Tuples of `recent_untracked` in the order they first got a segment (oldest first), each
    /// with the `since` of its entry then. An entry forgotten since (or forgotten and begun
    /// again) leaves a stale pair here, skipped when it comes first: forgetting stays O(1)
    /// however many connections a flood of stray segments brings.
    recent_order: VecDeque<(FourTuple, u64)>,
    recent_bytes: usize,
    /// Numbers the entries of `recent_untracked`.
    next_recent: u64,
    /// The half-open images in the order they opened (oldest first), each with its client's
    /// ISN and the table's clock then; entries whose image completed its handshake, ended or
    /// was replaced since are stale, skipped when they come first.
    half_open_order: VecDeque<HalfOpenEntry>,
    /// The caller's clock as last given ([`ConnectionTable::advance_clock`]): the table reads
    /// no clock of its own.
    now: Duration,
    /// The connections the primary said it opened before this backup joined
    /// ([`ConnectionTable::expect_adoption`]), each with its client's latest numbers once a
    /// segment of it passed, until it ends or is adopted (bounded by `max_connections`): a
    /// takeover counts them lost and resets their clients. Only listed tuples are followed: a
    /// segment of a connection that already ended here (a late ACK after both FINs, say) must
    /// not pass for a live one.
    unadopted: HashMap<FourTuple, Option<UnadoptedConnection>>,
    /// Per connection announced for adoption, the end (client sequence number) of the furthest
    /// segment dropped from `recent_untracked` for room: an adoption whose image does not reach
    /// it has lost bytes for good.
    evicted_end: HashMap<FourTuple, u32>,
}

/// A half-open image as queued when it opened.
#[derive(Debug, Clone, Copy)]
struct HalfOpenEntry {
    tuple: FourTuple,
    isn: u32,
    opened: Duration,
}

/// Whether `entry` of the half-open queue still names a half-open image.
fn still_half_open(images: &Images, entry: &HalfOpenEntry) -> bool {
    images
        .get(&entry.tuple)
        .is_some_and(|image| image.client_isn() == entry.isn && image.server_isn().is_none())
}

/// A queue whose entries go stale instead of being removed (forgetting stays O(1)) is
/// compacted once stale entries may outnumber the `live` ones, so it stays O(live).
fn drop_stale_entries<T>(queue: &mut VecDeque<T>, live: usize, is_live: impl Fn(&T) -> bool) {
    if queue.len() > 2 * live + 1024 {
        queue.retain(is_live);
    }
}

/// The untracked segments kept for one connection.
#[derive(Debug, Clone, Default)]
struct RecentSegments {
    /// Its place in `recent_order`.
    since: u64,
    segments: VecDeque<(ClientSegment, Vec<u8>)>,
}

/// Errors of the table's per-connection operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("no connection image for {tuple}")]
    UnknownConnection { tuple: FourTuple },
    #[error(transparent)]
    Consume(#[from] ConsumeError),
}

impl ConnectionTable {
    pub fn new(limits: TableLimits) -> ConnectionTable {
        ConnectionTable {
            images: Images::default(),
            limits,
            ..ConnectionTable::default()
        }
    }

    /// Routes one client segment, in log order, to its image. `payload` is
    /// `&frame[segment.payload.clone()]`. `Ok`: forward the frame. `Err`: the backup could not
    /// hold it; the frame must not reach the primary (I1), the client will resend it.
    pub fn ingest(
        &mut self,
        segment: &ClientSegment,
        payload: &[u8],
    ) -> Result<Ingested, RefuseReason> {
        self.counters.segments += 1;
        let tuple = segment.tuple;
        let flags = segment.flags;
        let opening_syn = flags.syn && !flags.ack && !flags.rst;
        let mut tracking = Tracking::Tracked;
        let mut evicted = None;
        if opening_syn {
            match self.images.get(&tuple) {
                None => tracking = Tracking::Opened,
                Some(image) if image.client_isn() == segment.seq => {}
                Some(image) if image.server_isn().is_none() || image.client_fin_at().is_some() => {
                    self.images.remove(&tuple);
                    self.counters.replaced += 1;
                    tracking = Tracking::Opened;
                }
                Some(_) => self.counters.ignored_syns += 1,
            }
            if tracking == Tracking::Opened {
                let source = *tuple.client.ip();
                if self.images.half_open_from(&source) >= self.limits.max_half_open_per_source {
                    self.counters.refused_segments += 1;
                    self.counters.refused_half_open_source += 1;
                    return Err(RefuseReason::SourceHalfOpen {
                        tuple,
                        limit: self.limits.max_half_open_per_source,
                    });
                }
                // Over the memory budget, new connections wait (their SYNs go unanswered and
                // are resent) while the open ones go on: what they hold shrinks as the primary
                // answers their requests.
                if self.images.held >= self.limits.max_bytes_held {
                    self.counters.refused_segments += 1;
                    self.counters.refused_over_budget += 1;
                    return Err(RefuseReason::MemoryBudget {
                        tuple,
                        held: self.images.held,
                        limit: self.limits.max_bytes_held,
                    });
                }
                // Only now, so that a SYN refused above pushes no other half-open image out.
                evicted = self.make_room_for_a_half_open_image();
                if self.images.len() >= self.limits.max_connections {
                    self.counters.refused_segments += 1;
                    return Err(RefuseReason::TableFull {
                        tuple,
                        limit: self.limits.max_connections,
                    });
                }
                self.images
                    .insert(tuple, ConnectionImage::new(segment, self.limits.image));
                self.half_open_order.push_back(HalfOpenEntry {
                    tuple,
                    isn: segment.seq,
                    opened: self.now,
                });
                self.unadopted.remove(&tuple);
            }
        }

        let Some(ingested) = self
            .images
            .update(&tuple, |image| image.ingest(segment, payload))
        else {
            self.counters.untracked_segments += 1;
            self.remember_untracked(segment, payload);
            return Ok(Ingested {
                tracking: Tracking::Untracked,
                report: SegmentReport::default(),
                evicted,
            });
        };
        let report = match ingested {
            Ok(report) => report,
            Err(reason) => {
                self.counters.refused_segments += 1;
                if tracking == Tracking::Opened {
                    self.images.remove(&tuple);
                }
                return Err(reason);
            }
        };
        if tracking == Tracking::Opened {
            self.counters.opened += 1;
        }
        self.counters.duplicate_bytes += report.duplicate_bytes;
        self.counters.conflicting_bytes += report.conflicting_bytes;
        if report.is_duplicate() {
            self.counters.duplicate_segments += 1;
        }
        if let Some(closure) = self.close_if_done(&tuple) {
            tracking = Tracking::Closed(closure);
        }
        Ok(Ingested {
            tracking,
            report,
            evicted,
        })
    }

    /// With `max_half_open` half-open images or more in the queue, drops the oldest entry:
    /// its image if that is still half open, else just the stale entry. Either way the queue,
    /// and so the number of half-open images, stays below the bound after the new one. Returns
    /// the connection whose image went.
    fn make_room_for_a_half_open_image(&mut self) -> Option<FourTuple> {
        let mut evicted = None;
        while self.half_open_order.len() >= self.limits.max_half_open.max(1) {
            let Some(entry) = self.half_open_order.pop_front() else {
                break;
            };
            if still_half_open(&self.images, &entry) {
                self.images.remove(&entry.tuple);
                self.counters.half_open_evicted += 1;
                evicted = Some(entry.tuple);
            }
        }
        let images = &self.images;
        drop_stale_entries(&mut self.half_open_order, images.len(), |entry| {
            still_half_open(images, entry)
        });
        evicted
    }

    /// Moves the table's clock to `now` (the caller's monotonic time; an earlier time is
    /// ignored). Half-open images are stamped with it when they open.
    pub fn advance_clock(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    /// Drops the half-open images older than `half_open_lifetime` by the table's clock; the
    /// connections whose image went. O(entries dropped): the queue is in opening order.
    pub fn expire_half_open(&mut self) -> Vec<FourTuple> {
        let mut expired = Vec::new();
        while let Some(entry) = self.half_open_order.front().copied() {
            if entry.opened + self.limits.half_open_lifetime > self.now {
                break;
            }
            self.half_open_order.pop_front();
            if still_half_open(&self.images, &entry) {
                self.images.remove(&entry.tuple);
                self.counters.half_open_expired += 1;
                expired.push(entry.tuple);
            }
        }
        expired
    }

    fn remember_untracked(&mut self, segment: &ClientSegment, payload: &[u8]) {
        let tuple = segment.tuple;
        if segment.flags.rst || segment.flags.fin {
            // The connection is ending: nobody will adopt it.
            self.forget_untracked(&tuple);
            self.unadopted.remove(&tuple);
            self.evicted_end.remove(&tuple);
            return;
        }
        match self.unadopted.get_mut(&tuple) {
            Some(Some(record)) => record.note(segment, payload.len()),
            Some(unseen) => *unseen = UnadoptedConnection::from_segment(segment, payload.len()),
            None => {}
        }
        let announced = self.unadopted.contains_key(&tuple);
        let limit = if announced {
            RECENT_UNTRACKED_PER_ANNOUNCED
        } else {
            RECENT_UNTRACKED_PER_CONNECTION
        };
        let cost = segment_cost(payload);
        let recent = self.recent_untracked.entry(tuple).or_insert_with(|| {
            let since = self.next_recent;
            self.next_recent += 1;
            self.recent_order.push_back((tuple, since));
            RecentSegments {
                since,
                segments: VecDeque::new(),
            }
        });
        recent
            .segments
            .push_back((segment.clone(), payload.to_vec()));
        self.recent_bytes += cost;
        let mut held = held_bytes(&recent.segments);
        let mut evicted = Vec::new();
        while held > limit {
            let Some(dropped) = recent.segments.pop_front() else {
                break;
            };
            held -= segment_cost(&dropped.1);
            self.recent_bytes -= segment_cost(&dropped.1);
            evicted.push(dropped);
        }
        for (segment, payload) in evicted {
            self.note_evicted(&segment, payload.len());
        }
        while self.recent_bytes > RECENT_UNTRACKED_TOTAL {
            let Some((oldest, since)) = self.recent_order.pop_front() else {
                break;
            };
            let dropped: Vec<_> = match self.recent_untracked.get(&oldest) {
                Some(recent) if recent.since == since => recent
                    .segments
                    .iter()
                    .map(|(segment, payload)| (segment.clone(), payload.len()))
                    .collect(),
                // Forgotten since, or begun again later: a stale pair.
                _ => continue,
            };
            for (segment, len) in dropped {
                self.note_evicted(&segment, len);
            }
            self.forget_untracked(&oldest);
        }
        let recent = &self.recent_untracked;
        drop_stale_entries(&mut self.recent_order, recent.len(), |(tuple, since)| {
            recent.get(tuple).is_some_and(|r| r.since == *since)
        });
    }

    /// A kept segment of `segment.tuple` was dropped for room: remembered, for a connection
    /// announced for adoption, so that its adoption can tell whether it now lacks bytes.
    fn note_evicted(&mut self, segment: &ClientSegment, payload_len: usize) {
        if payload_len == 0 || !self.unadopted.contains_key(&segment.tuple) {
            return;
        }
        let end = segment.seq.wrapping_add(payload_len as u32);
        let furthest = self.evicted_end.entry(segment.tuple).or_insert(end);
        if serial_delta(end, *furthest) > 0 {
            *furthest = end;
        }
    }

    /// O(1): the tuple's pair in `recent_order` goes stale.
    fn forget_untracked(&mut self, tuple: &FourTuple) -> Option<RecentSegments> {
        let recent = self.recent_untracked.remove(tuple)?;
        self.recent_bytes -= held_bytes(&recent.segments);
        Some(recent)
    }

    /// Untracked segments held for adoption, all connections (status and tests).
    pub fn recent_untracked_bytes(&self) -> usize {
        self.recent_bytes
    }

    /// The primary reports `tuple` opened: its proxy accepted it, so the client's handshake ACK
    /// reached the primary's TCP, which it does only through this table when the backup stands
    /// in front (I1). Without an image (the handshake came before the backup stood in front)
    /// or with one that took no ACK (its SYN passed here, its ACK went around: a client whose
    /// ARP entry still named the primary before the guard was set) the table does not hold
    /// what the client sent the primary straight: the image, if any, is dropped and the
    /// connection expected for adoption like one opened before the join.
    pub fn reported_opened(&mut self, tuple: &FourTuple) -> OpenedCheck {
        let check = match self.images.get(tuple) {
            Some(image) if image.server_isn().is_some() => return OpenedCheck::Logged,
            Some(_) => OpenedCheck::HandshakeAround,
            None => OpenedCheck::NeverSeen,
        };
        // Drops a SYN-only image as it lists the connection.
        self.expect_adoption(&[*tuple]);
        check
    }

    /// The primary opened these connections before this backup stood in front of it and will
    /// hand them over (or report them closed) later; until then a takeover cannot carry them
    /// on. Each record takes its numbers from the segments of it kept here (a connection whose
    /// opening the backup missed but whose later segments it saw), else from the next segment.
    /// An image that holds only the connection's SYN (its handshake went on around this
    /// backup) is dropped: the segments that follow must be kept for the hand-over to replay,
    /// not swallowed by an image the hand-over replaces.
    pub fn expect_adoption(&mut self, tuples: &[FourTuple]) {
        for tuple in tuples {
            if self.unadopted.contains_key(tuple) {
                continue;
            }
            match self.images.get(tuple) {
                Some(image) if image.server_isn().is_some() => continue,
                Some(_) => {
                    self.images.remove(tuple);
                }
                None => {}
            }
            if self.unadopted.len() >= self.limits.max_connections {
                self.counters.unadopted_unrecorded += 1;
                continue;
            }
            let mut record: Option<UnadoptedConnection> = None;
            let kept = self.recent_untracked.get(tuple);
            for (segment, payload) in kept.into_iter().flat_map(|recent| &recent.segments) {
                match record.as_mut() {
                    Some(record) => record.note(segment, payload.len()),
                    None => record = UnadoptedConnection::from_segment(segment, payload.len()),
                }
            }
            self.unadopted.insert(*tuple, record);
        }
    }

    /// The connections expected to be adopted that have not been, nor ended: each with its
    /// client's latest numbers, `None` when no segment of it has passed here.
    pub fn unadopted(&self) -> impl Iterator<Item = (FourTuple, Option<&UnadoptedConnection>)> {
        self.unadopted
            .iter()
            .map(|(tuple, record)| (*tuple, record.as_ref()))
    }

    pub fn is_unadopted(&self, tuple: &FourTuple) -> bool {
        self.unadopted.contains_key(tuple)
    }

    fn close_if_done(&mut self, tuple: &FourTuple) -> Option<Closure> {
        let image = self.images.get(tuple)?;
        let closure = if image.is_reset() {
            self.counters.reset += 1;
            Closure::Reset
        } else if image.is_finished() {
            self.counters.finished += 1;
            Closure::Finished
        } else {
            return None;
        };
        self.images.remove(tuple);
        Some(closure)
    }

    /// Releases the first `n` unconsumed request bytes of a connection.
    pub fn consume(&mut self, tuple: &FourTuple, n: u64) -> Result<(), TableError> {
        self.update(tuple, |image| image.consume(n))??;
        Ok(())
    }

    /// Releases the request bytes of a connection before `position`.
    pub fn consume_up_to(&mut self, tuple: &FourTuple, position: u64) -> Result<(), TableError> {
        self.update(tuple, |image| image.consume_up_to(position))??;
        Ok(())
    }

    /// Records the primary's TCP_INFO for a connection.
    pub fn set_negotiated(
        &mut self,
        tuple: &FourTuple,
        negotiated: NegotiatedOptions,
    ) -> Result<(), TableError> {
        self.update(tuple, |image| image.set_negotiated(negotiated))?;
        Ok(())
    }

    /// Records that the server closed after `reply_len` reply bytes; returns `Some` when this
    /// finished the connection and its image was removed.
    pub fn note_server_fin(
        &mut self,
        tuple: &FourTuple,
        reply_len: u64,
    ) -> Result<Option<Closure>, TableError> {
        self.update(tuple, |image| image.note_server_fin(reply_len))?;
        Ok(self.close_if_done(tuple))
    }

    fn update<R>(
        &mut self,
        tuple: &FourTuple,
        change: impl FnOnce(&mut ConnectionImage) -> R,
    ) -> Result<R, TableError> {
        self.images
            .update(tuple, change)
            .ok_or(TableError::UnknownConnection { tuple: *tuple })
    }

    pub fn get(&self, tuple: &FourTuple) -> Option<&ConnectionImage> {
        self.images.get(tuple)
    }

    /// Takes an image made elsewhere (an adopted connection), replacing any of the same tuple,
    /// and gives it the untracked segments of that connection that passed through here
    /// recently: those the primary had not yet received when it described the connection
    /// complete the image, the others are duplicates it ignores. Returns how many segments it
    /// was given. If bytes that passed here were dropped for room before the hand-over came and
    /// the image does not reach past them, the image is marked: the client will not send them
    /// again (the primary acknowledged them), so a takeover must not carry it on.
    pub fn adopt(&mut self, mut image: ConnectionImage) -> usize {
        let tuple = image.tuple();
        let mut replayed = 0;
        self.unadopted.remove(&tuple);
        let evicted_end = self.evicted_end.remove(&tuple);
        if let Some(recent) = self.forget_untracked(&tuple) {
            for (segment, payload) in recent.segments {
                // A segment the image cannot hold was forwarded long ago; the image is what
                // the primary described, and a takeover reports what is missing.
                if image.ingest(&segment, &payload).is_ok() {
                    replayed += 1;
                }
            }
        }
        if evicted_end.is_some_and(|end| serial_delta(end, image.rcv_nxt()) > 0) {
            image.mark_handover_gap();
        }
        self.images.insert(tuple, image);
        replayed
    }

    /// Forgets a connection (the primary reported it gone, or it was handed over).
    pub fn remove(&mut self, tuple: &FourTuple) -> Option<ConnectionImage> {
        self.forget_untracked(tuple);
        self.unadopted.remove(tuple);
        self.evicted_end.remove(tuple);
        self.images.remove(tuple)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ConnectionImage> {
        self.images.map.values()
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.map.is_empty()
    }

    pub fn limits(&self) -> TableLimits {
        self.limits
    }

    pub fn counters(&self) -> TableCounters {
        self.counters
    }

    /// Half-open images from `source` (O(1): counted as they change).
    pub fn half_open_from(&self, source: &Ipv4Addr) -> usize {
        self.images.half_open_from(source)
    }

    /// Request bytes held by all images (O(1): counted as they change).
    pub fn bytes_held(&self) -> usize {
        self.images.held
    }
}
