//! One connection's image, fed the client's segments in log order.
//!
//! Sequence numbers are 32-bit and wrap; inside the image every byte has a 64-bit *position*
//! instead: request position 0 is the client's first data byte (client ISN + 1), reply position
//! 0 the server's (server ISN + 1). A sequence number is turned into the position nearest to the
//! image's current point (serial arithmetic, RFC 1982), so streams longer than 4 GiB and ISNs
//! near 2^32 need no special case.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddrV4;

use super::segment::{ClientSegment, FourTuple, TcpOptions};

/// The MSS a peer that sent no MSS option is assumed to accept (RFC 9293 3.7.1).
pub const DEFAULT_MSS: u16 = 536;
/// RFC 7323 2.3: a larger shift is used as 14.
const MAX_WINDOW_SHIFT: u8 = 14;
/// Bits of `tcp_info.tcpi_options` (linux/tcp.h).
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

/// Memory bounds of one image. A segment that would exceed one is refused: the frame must not
/// be forwarded (the primary would acknowledge bytes the backup does not hold), and the client
/// sends it again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Bytes held beyond a gap in the client stream.
    pub max_out_of_order_bytes: usize,
    /// Separate runs of bytes held beyond gaps (each costs bookkeeping beyond its bytes).
    pub max_out_of_order_pieces: usize,
    /// Contiguous request bytes received and not yet consumed by the proxy.
    pub max_unconsumed_bytes: usize,
}

impl Default for ImageLimits {
    /// Sized for Linux's default receive buffers (tcp_rmem max 6 MiB): a client cannot have
    /// more than a receive window beyond the primary's next expected byte.
    fn default() -> Self {
        ImageLimits {
            max_out_of_order_bytes: 8 << 20,
            max_out_of_order_pieces: 1024,
            max_unconsumed_bytes: 64 << 20,
        }
    }
}

/// The window scale shifts of an established connection, as `TCP_REPAIR_OPTIONS` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowScales {
    /// The client's shift: applied to the windows the client advertises.
    pub snd: u8,
    /// The server's shift: applied to the windows the server advertises.
    pub rcv: u8,
}

/// What the primary's kernel agreed with the client, read from `TCP_INFO` on the primary. The
/// backup never sees the server's SYN-ACK, so it cannot know these from frames alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NegotiatedOptions {
    /// `None` when window scaling is off for the connection.
    pub window_scales: Option<WindowScales>,
    pub sack: bool,
    pub timestamps: bool,
}

impl NegotiatedOptions {
    /// From the `tcpi_options`, `tcpi_snd_wscale` and `tcpi_rcv_wscale` fields of
    /// `struct tcp_info`.
    pub fn from_tcp_info(tcpi_options: u8, snd_wscale: u8, rcv_wscale: u8) -> NegotiatedOptions {
        NegotiatedOptions {
            window_scales: (tcpi_options & TCPI_OPT_WSCALE != 0).then_some(WindowScales {
                snd: snd_wscale,
                rcv: rcv_wscale,
            }),
            sack: tcpi_options & TCPI_OPT_SACK != 0,
            timestamps: tcpi_options & TCPI_OPT_TIMESTAMPS != 0,
        }
    }
}

/// What one accepted segment did to the client byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentReport {
    /// Bytes the image did not hold before (in order or beyond a gap).
    pub new_bytes: u64,
    /// Bytes the image already held, or had already handed on, with the same or unknown value.
    pub duplicate_bytes: u64,
    /// Bytes the image already held with a different value; the first value is kept.
    pub conflicting_bytes: u64,
    /// Bytes the server's kernel would discard too: before the stream's first byte, after its
    /// FIN, on an RST, on a segment without ACK, or on a connection already reset.
    pub ignored_bytes: u64,
}

impl SegmentReport {
    /// The segment carried data and none of it was new: a retransmit or a duplicate.
    pub fn is_duplicate(&self) -> bool {
        self.new_bytes == 0 && self.duplicate_bytes + self.conflicting_bytes > 0
    }
}

/// Why a segment was refused. A refused frame must not be forwarded to the primary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefuseReason {
    #[error(
        "connection {tuple}: {adding} more out-of-order bytes would exceed the limit of {limit} \
         ({held} held)"
    )]
    OutOfOrderBytesLimit {
        tuple: FourTuple,
        held: usize,
        adding: u64,
        limit: usize,
    },
    #[error(
        "connection {tuple}: {adding} more out-of-order pieces would exceed the limit of {limit} \
         ({held} held)"
    )]
    OutOfOrderPiecesLimit {
        tuple: FourTuple,
        held: usize,
        adding: usize,
        limit: usize,
    },
    #[error(
        "connection {tuple}: {adding} more unconsumed request bytes would exceed the limit of \
         {limit} ({held} held)"
    )]
    UnconsumedBytesLimit {
        tuple: FourTuple,
        held: usize,
        adding: u64,
        limit: usize,
    },
    #[error("SYN of connection {tuple} refused: the table already holds its limit of {limit} connections")]
    TableFull { tuple: FourTuple, limit: usize },
    #[error(
        "SYN of connection {tuple} refused: the connection images hold {held} request bytes, \
         at or above the budget of {limit}"
    )]
    MemoryBudget {
        tuple: FourTuple,
        held: usize,
        limit: usize,
    },
    #[error(
        "SYN of connection {tuple} refused: its client address already has {limit} \
         connections whose handshake has not completed"
    )]
    SourceHalfOpen { tuple: FourTuple, limit: usize },
}

/// Misuse of [`ConnectionImage::consume`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumeError {
    #[error(
        "connection {tuple}: cannot consume {requested} request bytes, only {available} are \
         received and unconsumed"
    )]
    BeyondReceived {
        tuple: FourTuple,
        requested: u64,
        available: u64,
    },
}

/// Why an image cannot give restore parameters yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("connection {tuple}: handshake not complete (no client ACK seen), server ISN unknown")]
    HandshakeIncomplete { tuple: FourTuple },
    #[error(
        "connection {tuple}: the primary's TCP_INFO (window scales, SACK, timestamps) has not \
         reached the backup"
    )]
    NegotiationUnknown { tuple: FourTuple },
    #[error("connection {tuple}: reset by the client, nothing to restore")]
    Reset { tuple: FourTuple },
}

/// What a takeover needs to rebuild the server socket of this connection with `TCP_REPAIR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RestoreParams {
    /// The service address (VIP:port): the socket's local end.
    pub local: SocketAddrV4,
    /// The client: the socket's remote end.
    pub remote: SocketAddrV4,
    /// The first reply sequence number the client has not acknowledged (`TCP_QUEUE_SEQ` of the
    /// send queue): server ISN + 1 + reply bytes the client holds.
    pub snd_una: u32,
    /// The next request sequence number expected (`TCP_QUEUE_SEQ` of the receive queue): client
    /// ISN + 1 + contiguous bytes received. A client FIN is not counted in it.
    pub rcv_nxt: u32,
    /// The client's MSS option, or [`DEFAULT_MSS`] when it sent none.
    pub mss: u16,
    /// Window scale shifts (`TCP_REPAIR_OPTIONS` `TCPOPT_WINDOW`); `None` when scaling is off.
    pub window_scales: Option<WindowScales>,
    pub sack_ok: bool,
    pub timestamps_ok: bool,
    /// The highest TSecr the client sent: the primary's timestamp clock as the client last saw
    /// it. The restored clock must not be behind it (PAWS).
    pub last_tsecr: Option<u32>,
    /// The client's latest receive window in bytes, scaled.
    pub client_window: u32,
    /// The client has sent FIN and every byte before it is held: the connection is half-closed.
    pub client_fin_received: bool,
}

/// Per-image counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageCounters {
    pub segments: u64,
    pub duplicate_segments: u64,
    pub duplicate_bytes: u64,
    pub conflicting_bytes: u64,
    pub refused_segments: u64,
    /// Segments the server's kernel discards (no ACK flag, another ISN's SYN, after a reset).
    pub ignored_segments: u64,
    /// RSTs whose sequence number is not exactly the next expected one (RFC 5961: the server
    /// answers them with a challenge ACK and keeps the connection).
    pub ignored_rsts: u64,
    /// FINs at a different stream end than the first FIN seen.
    pub conflicting_fins: u64,
}

/// The window the client last advertised, with the RFC 9293 (3.10.7.4) bookkeeping that keeps
/// a reordered old segment from overwriting a newer window.
#[derive(Debug, Clone, Copy)]
struct WindowState {
    raw: u16,
    /// Windows on SYN segments are never scaled (RFC 7323 2.2).
    from_syn: bool,
    /// Request position of the segment that set it (SND.WL1).
    wl1: i64,
    /// Reply position it acknowledged (SND.WL2).
    wl2: i64,
}

/// A run of new bytes to store, as (stream position, offset into the segment payload, length).
type Gap = (u64, usize, usize);

/// The backup's image of one client connection.
#[derive(Debug, Clone)]
pub struct ConnectionImage {
    tuple: FourTuple,
    client_isn: u32,
    syn_options: TcpOptions,
    limits: ImageLimits,
    negotiated: Option<NegotiatedOptions>,
    /// Request position of the first byte in `unconsumed`.
    consumed: u64,
    /// Contiguous request bytes received and not yet consumed.
    unconsumed: VecDeque<u8>,
    /// Disjoint runs of bytes beyond the first gap, keyed by position; every key is beyond
    /// `received()` (runs are moved to `unconsumed` as soon as the gap before them fills).
    out_of_order: BTreeMap<u64, Vec<u8>>,
    out_of_order_bytes: usize,
    /// Request position of the client's FIN (= the stream's length).
    client_fin_at: Option<u64>,
    reset: bool,
    server_isn: Option<u32>,
    /// Reply positions the client has acknowledged (includes the server's FIN once acked).
    acked_reply: u64,
    window: WindowState,
    last_tsecr: Option<u32>,
    /// Reply position of the server's FIN, as the primary reported it.
    server_fin_at: Option<u64>,
    /// Adopted with client bytes missing for good: segments that passed this backup while the
    /// hand-over was on its way were no longer held when it arrived (see
    /// [`ConnectionImage::mark_handover_gap`]).
    handover_gap: bool,
    counters: ImageCounters,
}

/// Keeps the newest server timestamp a client echoed (serial order: the clock wraps).
pub(super) fn note_tsecr(last_tsecr: &mut Option<u32>, segment: &ClientSegment) {
    if let Some(timestamps) = segment.options.timestamps {
        let newer = last_tsecr.is_none_or(|last| serial_delta(timestamps.echo_reply, last) > 0);
        if newer {
            *last_tsecr = Some(timestamps.echo_reply);
        }
    }
}

pub(super) fn serial_delta(a: u32, b: u32) -> i64 {
    // Reinterpreting the wrapped difference as signed is the serial-number comparison.
    i64::from(a.wrapping_sub(b) as i32)
}

impl ConnectionImage {
    /// An image for the connection a client's SYN opens. The SYN itself (and any data on it)
    /// still has to be fed through [`ConnectionImage::ingest`].
    pub fn new(syn: &ClientSegment, limits: ImageLimits) -> ConnectionImage {
        ConnectionImage {
            tuple: syn.tuple,
            client_isn: syn.seq,
            syn_options: syn.options,
            limits,
            negotiated: None,
            consumed: 0,
            unconsumed: VecDeque::new(),
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            client_fin_at: None,
            reset: false,
            server_isn: None,
            acked_reply: 0,
            window: WindowState {
                raw: syn.window,
                from_syn: true,
                wl1: -1,
                wl2: i64::MIN,
            },
            last_tsecr: None,
            server_fin_at: None,
            handover_gap: false,
            counters: ImageCounters::default(),
        }
    }

    /// An image of a connection that was already established when this backup started to
    /// protect it: the primary read the exact sequence numbers from its socket (TCP_REPAIR) and
    /// handed over the client bytes it had received but not yet answered. `received` counts the
    /// client bytes before `pending` (already answered), `server_isn` and `acked_reply` place
    /// the reply stream; the window and TSecr come with the client's next segment.
    #[allow(clippy::too_many_arguments)]
    pub fn adopted(
        tuple: FourTuple,
        client_isn: u32,
        syn_options: TcpOptions,
        server_isn: u32,
        answered: u64,
        pending: &[u8],
        negotiated: NegotiatedOptions,
        limits: ImageLimits,
    ) -> ConnectionImage {
        ConnectionImage {
            tuple,
            client_isn,
            syn_options,
            limits,
            negotiated: Some(negotiated),
            consumed: answered,
            unconsumed: pending.iter().copied().collect(),
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            client_fin_at: None,
            reset: false,
            server_isn: Some(server_isn),
            acked_reply: 0,
            window: WindowState {
                raw: 0,
                from_syn: false,
                wl1: -1,
                wl2: i64::MIN,
            },
            last_tsecr: None,
            server_fin_at: None,
            handover_gap: false,
            counters: ImageCounters::default(),
        }
    }

    /// An adopted image whose client had acknowledged `acked` reply bytes when the primary
    /// handed it over (read from the primary's socket): the reply log of a connection adopted in
    /// the middle of a reply starts there, not at the stream's start.
    pub fn with_reply_acked(mut self, acked: u64) -> ConnectionImage {
        self.acked_reply = self.acked_reply.max(acked);
        self
    }

    /// An adopted image that knows the primary's timestamp clock at the hand-over: what the
    /// client last saw is not ahead of it, so a takeover can rebuild the clock without waiting
    /// for a client segment (PAWS).
    pub fn with_primary_clock(mut self, tsval: u32) -> ConnectionImage {
        let newer = self
            .last_tsecr
            .is_none_or(|last| serial_delta(tsval, last) > 0);
        if newer {
            self.last_tsecr = Some(tsval);
        }
        self
    }

    /// Client bytes of this adopted connection are missing for good: the primary received and
    /// acknowledged them, and this backup no longer held them when the hand-over arrived. A
    /// takeover cannot carry the connection on (its rebuilt socket would wait for bytes the
    /// client never sends again).
    pub fn mark_handover_gap(&mut self) {
        self.handover_gap = true;
    }

    pub fn handover_gap(&self) -> bool {
        self.handover_gap
    }

    pub fn tuple(&self) -> FourTuple {
        self.tuple
    }

    pub fn client_isn(&self) -> u32 {
        self.client_isn
    }

    /// The options of the client's SYN.
    pub fn syn_options(&self) -> TcpOptions {
        self.syn_options
    }

    /// Known once the client's handshake ACK is logged: its acknowledgment number − 1.
    pub fn server_isn(&self) -> Option<u32> {
        self.server_isn
    }

    /// Contiguous request bytes received since the stream's start (consumed ones included).
    pub fn received_bytes(&self) -> u64 {
        self.consumed + self.unconsumed.len() as u64
    }

    /// Request bytes handed on by the proxy and released.
    pub fn consumed_bytes(&self) -> u64 {
        self.consumed
    }

    /// The received request bytes not consumed yet, in order, as two slices (ring buffer).
    pub fn unconsumed(&self) -> (&[u8], &[u8]) {
        self.unconsumed.as_slices()
    }

    pub fn unconsumed_len(&self) -> usize {
        self.unconsumed.len()
    }

    pub fn unconsumed_to_vec(&self) -> Vec<u8> {
        self.unconsumed.iter().copied().collect()
    }

    /// Bytes held beyond a gap in the stream.
    pub fn out_of_order_bytes(&self) -> usize {
        self.out_of_order_bytes
    }

    /// All request bytes this image keeps in memory.
    pub fn bytes_held(&self) -> usize {
        self.unconsumed.len() + self.out_of_order_bytes
    }

    /// The request position of the client's FIN, i.e. the length of the whole request stream.
    pub fn client_fin_at(&self) -> Option<u64> {
        self.client_fin_at
    }

    /// The client sent FIN and every byte before it is held.
    pub fn client_fin_received(&self) -> bool {
        self.client_fin_at == Some(self.received_bytes())
    }

    pub fn is_reset(&self) -> bool {
        self.reset
    }

    /// How far into the reply stream the client has acknowledged: the reply bytes it holds
    /// (plus one for the server's FIN once that is acknowledged). Reply-log memory below this
    /// can be released.
    pub fn client_acked_reply_bytes(&self) -> u64 {
        self.acked_reply
    }

    /// The window field of the client's latest window update, unscaled.
    pub fn client_window_raw(&self) -> u16 {
        self.window.raw
    }

    /// The client's latest receive window in bytes. `None` while the scale is unknown: the
    /// client offered window scaling and the primary's TCP_INFO has not arrived.
    pub fn client_window(&self) -> Option<u32> {
        let raw = u32::from(self.window.raw);
        if self.window.from_syn {
            return Some(raw);
        }
        let shift = match self.negotiated {
            Some(negotiated) => negotiated.window_scales.map_or(0, |scales| scales.snd),
            None if self.syn_options.window_scale.is_none() => 0,
            None => return None,
        };
        Some(raw << shift.min(MAX_WINDOW_SHIFT))
    }

    /// The highest (in serial order) TSecr on the client's ACKs.
    pub fn last_tsecr(&self) -> Option<u32> {
        self.last_tsecr
    }

    pub fn negotiated(&self) -> Option<NegotiatedOptions> {
        self.negotiated
    }

    /// Records what the primary's kernel negotiated (from its TCP_INFO).
    pub fn set_negotiated(&mut self, negotiated: NegotiatedOptions) {
        self.negotiated = Some(negotiated);
    }

    /// Records that the server closed its side after `reply_len` reply bytes (the primary
    /// reports it; the backup never sees server frames).
    pub fn note_server_fin(&mut self, reply_len: u64) {
        self.server_fin_at = Some(reply_len);
    }

    /// Both directions are closed: the client's FIN is held with every byte before it, and the
    /// client acknowledged the server's FIN. Nothing of the connection remains to restore.
    pub fn is_finished(&self) -> bool {
        self.client_fin_received()
            && self
                .server_fin_at
                .is_some_and(|fin_at| self.acked_reply > fin_at)
    }

    pub fn counters(&self) -> ImageCounters {
        self.counters
    }

    /// The next request sequence number expected: client ISN + 1 + contiguous bytes.
    pub fn rcv_nxt(&self) -> u32 {
        self.seq_at(self.received_bytes())
    }

    /// The first reply sequence number the client has not acknowledged.
    pub fn snd_una(&self) -> Option<u32> {
        self.server_isn
            .map(|isn| isn.wrapping_add(1).wrapping_add(self.acked_reply as u32))
    }

    /// Releases the first `n` unconsumed request bytes: the proxy handed them on and no longer
    /// needs the backup to hold them.
    pub fn consume(&mut self, n: u64) -> Result<(), ConsumeError> {
        let available = self.unconsumed.len() as u64;
        if n > available {
            return Err(ConsumeError::BeyondReceived {
                tuple: self.tuple,
                requested: n,
                available,
            });
        }
        self.unconsumed.drain(..n as usize);
        self.consumed += n;
        // A burst (a large upload) must not pin its peak buffer for the connection's lifetime.
        let capacity = self.unconsumed.capacity();
        if capacity > 64 * 1024 && capacity > 4 * self.unconsumed.len() {
            self.unconsumed.shrink_to(2 * self.unconsumed.len());
        }
        Ok(())
    }

    /// Like [`ConnectionImage::consume`] but by absolute request position, so a repeated or
    /// late notice is harmless.
    pub fn consume_up_to(&mut self, position: u64) -> Result<(), ConsumeError> {
        if position <= self.consumed {
            return Ok(());
        }
        self.consume(position - self.consumed)
    }

    /// The parameters to rebuild this connection's server socket at takeover.
    pub fn restore_params(&self) -> Result<RestoreParams, RestoreError> {
        if self.reset {
            return Err(RestoreError::Reset { tuple: self.tuple });
        }
        let snd_una = self
            .snd_una()
            .ok_or(RestoreError::HandshakeIncomplete { tuple: self.tuple })?;
        let negotiated = self
            .negotiated
            .ok_or(RestoreError::NegotiationUnknown { tuple: self.tuple })?;
        let client_window = self
            .client_window()
            .ok_or(RestoreError::NegotiationUnknown { tuple: self.tuple })?;
        Ok(RestoreParams {
            local: self.tuple.server,
            remote: self.tuple.client,
            snd_una,
            rcv_nxt: self.rcv_nxt(),
            mss: self.syn_options.mss.unwrap_or(DEFAULT_MSS),
            window_scales: negotiated.window_scales,
            sack_ok: negotiated.sack,
            timestamps_ok: negotiated.timestamps,
            last_tsecr: self.last_tsecr,
            client_window,
            client_fin_received: self.client_fin_received(),
        })
    }

    /// Takes one client segment, in log order. `payload` is the segment's payload
    /// (`&frame[segment.payload.clone()]`). On `Err` nothing changed and the frame must not be
    /// forwarded.
    pub fn ingest(
        &mut self,
        segment: &ClientSegment,
        payload: &[u8],
    ) -> Result<SegmentReport, RefuseReason> {
        self.counters.segments += 1;
        let flags = segment.flags;
        let discarded_by_server = self.reset
            || (flags.syn && segment.seq != self.client_isn)
            || (!flags.syn && !flags.ack && !flags.rst);
        if discarded_by_server {
            self.counters.ignored_segments += 1;
            return Ok(SegmentReport {
                ignored_bytes: payload.len() as u64,
                ..SegmentReport::default()
            });
        }
        if flags.rst {
            self.take_rst(segment);
            return Ok(SegmentReport {
                ignored_bytes: payload.len() as u64,
                ..SegmentReport::default()
            });
        }

        // The SYN occupies the ISN; its data (TCP Fast Open) starts after it.
        let data_seq = if flags.syn {
            segment.seq.wrapping_add(1)
        } else {
            segment.seq
        };
        let start = self.position_of(data_seq);
        let report = match self.take_data(start, payload) {
            Ok(report) => report,
            Err(reason) => {
                self.counters.refused_segments += 1;
                return Err(reason);
            }
        };
        self.counters.duplicate_bytes += report.duplicate_bytes;
        self.counters.conflicting_bytes += report.conflicting_bytes;
        if report.is_duplicate() {
            self.counters.duplicate_segments += 1;
        }

        if flags.ack && !flags.syn {
            self.take_ack(segment);
        }
        if flags.fin {
            let fin_at = start + payload.len() as i64;
            match self.client_fin_at {
                _ if fin_at < 0 => {}
                None => self.client_fin_at = Some(fin_at as u64),
                Some(first) if first == fin_at as u64 => {}
                Some(_) => self.counters.conflicting_fins += 1,
            }
        }
        Ok(report)
    }

    fn seq_at(&self, position: u64) -> u32 {
        // Truncation to 32 bits is the sequence-number wrap.
        self.client_isn
            .wrapping_add(1)
            .wrapping_add(position as u32)
    }

    /// The request position nearest to the stream's current end for `seq`; negative before the
    /// stream's first byte (the SYN is at −1).
    fn position_of(&self, seq: u32) -> i64 {
        let received = self.received_bytes();
        received as i64 + serial_delta(seq, self.seq_at(received))
    }

    fn take_rst(&mut self, segment: &ClientSegment) {
        // RFC 5961 3.2: only an RST at exactly the next expected sequence number resets; the
        // server's kernel answers any other with a challenge ACK, and so must not the image
        // forget a live connection on a guessed RST.
        let received = self.received_bytes();
        let next_expected = received + u64::from(self.client_fin_received());
        if self.position_of(segment.seq) == next_expected as i64 {
            self.reset = true;
            self.unconsumed = VecDeque::new();
            self.out_of_order.clear();
            self.out_of_order_bytes = 0;
        } else {
            self.counters.ignored_rsts += 1;
        }
    }

    fn take_ack(&mut self, segment: &ClientSegment) {
        let server_isn = *self
            .server_isn
            .get_or_insert_with(|| segment.ack.wrapping_sub(1));
        let acked_seq = server_isn
            .wrapping_add(1)
            .wrapping_add(self.acked_reply as u32);
        let ack_position = self.acked_reply as i64 + serial_delta(segment.ack, acked_seq);
        if ack_position > self.acked_reply as i64 {
            self.acked_reply = ack_position as u64;
        }

        let seq_position = self.position_of(segment.seq);
        let window = &mut self.window;
        if window.wl1 < seq_position || (window.wl1 == seq_position && window.wl2 <= ack_position) {
            *window = WindowState {
                raw: segment.window,
                from_syn: false,
                wl1: seq_position,
                wl2: ack_position,
            };
        }

        // RFC 7323: TSecr is meaningful only on segments with ACK set.
        note_tsecr(&mut self.last_tsecr, segment);
    }

    /// Merges a segment's payload starting at request position `start`. Checks the limits
    /// before changing anything, so a refusal leaves the image as it was.
    fn take_data(&mut self, start: i64, payload: &[u8]) -> Result<SegmentReport, RefuseReason> {
        let mut report = SegmentReport::default();
        if payload.is_empty() {
            return Ok(report);
        }
        let end = start + payload.len() as i64;
        // The stream has no bytes before position 0, and none after the client's FIN (the
        // server's kernel ignores data past a FIN it has received).
        let lo = start.max(0);
        let hi = match self.client_fin_at {
            Some(fin_at) => end.min(fin_at as i64),
            None => end,
        };
        if hi <= lo {
            report.ignored_bytes = payload.len() as u64;
            return Ok(report);
        }
        report.ignored_bytes = (payload.len() as i64 - (hi - lo)) as u64;
        let (lo, hi) = (lo as u64, hi as u64);
        let at = |position: u64| (position as i64 - start) as usize;

        // Already released: it cannot be compared any more.
        let consumed = self.consumed;
        report.duplicate_bytes += hi.min(consumed).saturating_sub(lo);

        let received = self.received_bytes();
        let held_lo = lo.max(consumed);
        let held_hi = hi.min(received);
        if held_lo < held_hi {
            let differing = self
                .unconsumed
                .range((held_lo - consumed) as usize..(held_hi - consumed) as usize)
                .zip(&payload[at(held_lo)..at(held_hi)])
                .filter(|(held, new)| held != new)
                .count() as u64;
            report.conflicting_bytes += differing;
            report.duplicate_bytes += held_hi - held_lo - differing;
        }

        let new_lo = lo.max(received);
        if new_lo >= hi {
            return Ok(report);
        }
        let in_order = new_lo == received;
        if in_order && self.out_of_order.is_empty() {
            let adding = hi - new_lo;
            self.check_unconsumed_limit(adding)?;
            self.unconsumed.extend(&payload[at(new_lo)..at(hi)]);
            report.new_bytes = adding;
            return Ok(report);
        }

        let gaps = self.compare_with_out_of_order(new_lo, hi, payload, at, &mut report);
        let adding: u64 = gaps.iter().map(|&(_, _, len)| len as u64).sum();
        if in_order {
            self.check_unconsumed_limit(adding)?;
        } else {
            let held = self.out_of_order_bytes;
            if held as u64 + adding > self.limits.max_out_of_order_bytes as u64 {
                return Err(RefuseReason::OutOfOrderBytesLimit {
                    tuple: self.tuple,
                    held,
                    adding,
                    limit: self.limits.max_out_of_order_bytes,
                });
            }
            let pieces = self.out_of_order.len();
            let adding_pieces = self.new_piece_count(&gaps);
            if adding_pieces > 0 && pieces + adding_pieces > self.limits.max_out_of_order_pieces {
                return Err(RefuseReason::OutOfOrderPiecesLimit {
                    tuple: self.tuple,
                    held: pieces,
                    adding: adding_pieces,
                    limit: self.limits.max_out_of_order_pieces,
                });
            }
        }
        for &(position, offset, len) in &gaps {
            self.insert_out_of_order(position, &payload[offset..offset + len]);
        }
        report.new_bytes = adding;
        self.drain_filled_gap();
        Ok(report)
    }

    fn check_unconsumed_limit(&self, adding: u64) -> Result<(), RefuseReason> {
        let held = self.unconsumed.len();
        if held as u64 + adding > self.limits.max_unconsumed_bytes as u64 {
            return Err(RefuseReason::UnconsumedBytesLimit {
                tuple: self.tuple,
                held,
                adding,
                limit: self.limits.max_unconsumed_bytes,
            });
        }
        Ok(())
    }

    /// Compares `[lo, hi)` of the payload with the runs already held there (counting duplicate
    /// and conflicting bytes) and returns the parts no run covers.
    fn compare_with_out_of_order(
        &self,
        lo: u64,
        hi: u64,
        payload: &[u8],
        at: impl Fn(u64) -> usize,
        report: &mut SegmentReport,
    ) -> Vec<Gap> {
        let mut gaps = Vec::new();
        let mut cursor = lo;
        let run_before = self
            .out_of_order
            .range(..lo)
            .next_back()
            .filter(|(&run_at, run)| run_at + run.len() as u64 > lo);
        for (&run_at, run) in run_before
            .into_iter()
            .chain(self.out_of_order.range(lo..hi))
        {
            if run_at > cursor {
                gaps.push((cursor, at(cursor), (run_at - cursor) as usize));
            }
            let overlap_lo = cursor.max(run_at);
            let overlap_hi = hi.min(run_at + run.len() as u64);
            if overlap_lo < overlap_hi {
                let held = &run[(overlap_lo - run_at) as usize..(overlap_hi - run_at) as usize];
                let new = &payload[at(overlap_lo)..at(overlap_hi)];
                let differing = held.iter().zip(new).filter(|(a, b)| a != b).count() as u64;
                report.conflicting_bytes += differing;
                report.duplicate_bytes += (overlap_hi - overlap_lo) - differing;
            }
            cursor = cursor.max(overlap_hi);
        }
        if cursor < hi {
            gaps.push((cursor, at(cursor), (hi - cursor) as usize));
        }
        gaps
    }

    /// How many more runs there will be once `gaps` are stored: a gap touching a held run joins
    /// it, one between two runs even merges them.
    fn new_piece_count(&self, gaps: &[Gap]) -> usize {
        let mut count: isize = 0;
        for &(position, _, len) in gaps {
            let joins_before = self
                .out_of_order
                .range(..position)
                .next_back()
                .is_some_and(|(&at, run)| at + run.len() as u64 == position);
            let joins_after = self.out_of_order.contains_key(&(position + len as u64));
            count += 1 - isize::from(joins_before) - isize::from(joins_after);
        }
        count.max(0) as usize
    }

    /// Stores a run that overlaps no held run, joined to its neighbours when they touch it so
    /// that a stream filled piece by piece does not stay in many small runs.
    fn insert_out_of_order(&mut self, position: u64, bytes: &[u8]) {
        self.out_of_order_bytes += bytes.len();
        let mut run_start = position;
        match self.out_of_order.range_mut(..position).next_back() {
            Some((&before_at, before)) if before_at + before.len() as u64 == position => {
                before.extend_from_slice(bytes);
                run_start = before_at;
            }
            _ => {
                self.out_of_order.insert(position, bytes.to_vec());
            }
        }
        let run_end = position + bytes.len() as u64;
        if let Some(after) = self.out_of_order.remove(&run_end) {
            if let Some(run) = self.out_of_order.get_mut(&run_start) {
                run.extend_from_slice(&after);
            }
        }
    }

    fn drain_filled_gap(&mut self) {
        while let Some(entry) = self.out_of_order.first_entry() {
            let received = self.consumed + self.unconsumed.len() as u64;
            if *entry.key() != received {
                break;
            }
            let run = entry.remove();
            self.out_of_order_bytes -= run.len();
            self.unconsumed.extend(run);
        }
    }
}
