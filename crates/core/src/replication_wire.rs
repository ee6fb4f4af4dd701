//! The replication channel between the primary and its backup (duplex mode): frames, their
//! encoding, and an incremental reader for the TCP stream that carries them.
//!
//! Both ends prove the group key when the stream opens (`Hello` + `Proof`, a challenge-response
//! over both nonces); every later frame is sealed (`replication_seal`: a tag under a key of that
//! stream and direction, an implicit frame number, the body encrypted unless the group turned
//! encryption off) and carries the sender's epoch: a frame from an older epoch is refused by the
//! receiver (the fencing token of docs/design.md).
//!
//! Layout of every frame: `len: u32` (bytes after this field), `kind: u8`, `epoch: u64`, body,
//! and after the handshake a 16-byte tag. All integers are big-endian.

use std::net::{Ipv4Addr, SocketAddrV4};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::heartbeat_wire::AuthKey;
use crate::image::{FourTuple, NegotiatedOptions, WindowScales};
use crate::replication_seal::{
    cut_frame, CutError, Opener, Protection, SealError, Sealer, TAG_LEN,
};
use crate::NodeId;

/// Tuples in one `Unadopted` frame (12 bytes each): a primary with more sends several.
pub const MAX_UNADOPTED_PER_FRAME: usize = 65_536;
/// Longest frame accepted: a reply piece of up to [`MAX_PIECE_BYTES`] plus its header.
pub const MAX_FRAME_BYTES: usize = MAX_PIECE_BYTES + 128;
/// Longest reply piece one frame carries; longer replies travel as several pieces.
pub const MAX_PIECE_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of the random challenge each end sends in its `Hello`.
pub const NONCE_LEN: usize = 16;
const PROOF_LEN: usize = 32;
const PROOF_LABEL: &[u8] = b"steadfast replication v1";
/// What every frame has before its body: length, kind and epoch.
pub(crate) const HEADER_LEN: usize = 4 + 1 + 8;

/// Which of a primary's attempts to link a replication stream is. A late stream (its SYN
/// retransmitted, its handshake held up) may reach the backup after a newer one; the backup
/// keeps the newest, or the late one would take the place of the stream the primary uses
/// (docs/design.md, "A backup joins").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkAttempt {
    /// Drawn at random when the primary's process starts: numbers of another process of the
    /// same node are not comparable.
    pub incarnation: u64,
    /// Grows with every attempt of one process.
    pub number: u64,
}

impl LinkAttempt {
    /// What a backup's `Hello` carries.
    pub const NONE: LinkAttempt = LinkAttempt {
        incarnation: 0,
        number: 0,
    };

    /// Whether the same process made this attempt before `other`.
    pub fn precedes(&self, other: &LinkAttempt) -> bool {
        self.incarnation == other.incarnation && self.number < other.number
    }
}

/// The TCP options the primary's kernel negotiated with the client, from its `TCP_INFO`; the
/// backup cannot see them (the primary's SYN-ACK does not pass through it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// (the client's, ours) window scale shifts as `TCP_INFO` names them (snd, rcv), when
    /// window scaling is on.
    pub window_scales: Option<(u8, u8)>,
    pub sack: bool,
    pub timestamps: bool,
    /// The MSS the primary sends with.
    pub mss: u16,
}

/// Bytes the timestamp option takes in every segment (RFC 7323, padded), which the sending
/// size leaves out of the client's MSS.
const TIMESTAMP_OPTION_BYTES: u16 = 12;

impl ConnectionOptions {
    /// The size a sender uses with the client's MSS and these options.
    pub fn sending_mss(client_mss: u16, timestamps: bool) -> u16 {
        client_mss.saturating_sub(if timestamps {
            TIMESTAMP_OPTION_BYTES
        } else {
            0
        })
    }

    /// The client's MSS behind `mss`, the sending size (the kernel takes the former and
    /// deducts the options itself).
    pub fn client_mss(&self) -> u16 {
        self.mss.saturating_add(if self.timestamps {
            TIMESTAMP_OPTION_BYTES
        } else {
            0
        })
    }

    /// The same agreement in the connection image's terms.
    pub fn negotiated(&self) -> NegotiatedOptions {
        NegotiatedOptions {
            window_scales: self
                .window_scales
                .map(|(snd, rcv)| WindowScales { snd, rcv }),
            sack: self.sack,
            timestamps: self.timestamps,
        }
    }
}

/// Which stream of a connection the bytes of an adoption belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptedStream {
    /// Client bytes no complete reply answers yet.
    Request,
    /// Reply bytes the client has not acknowledged yet.
    Reply,
}

/// Longest reply progress an `Adopt` frame carries (a validator of up to 64 KiB and a few
/// fields, in the HTTP framer's encoding).
pub const MAX_PROGRESS_BYTES: usize = 96 * 1024;

/// One frame of the replication channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationFrame {
    /// First frame from each end. A primary numbers its attempts to link (a backup sends
    /// [`LinkAttempt::NONE`]).
    Hello {
        node: NodeId,
        nonce: [u8; NONCE_LEN],
        attempt: LinkAttempt,
        /// What the sender puts on the frames after the handshake; both ends must agree.
        protection: Protection,
    },
    /// Second frame from each end: proves the key over both nonces.
    Proof { mac: [u8; PROOF_LEN] },
    /// Backup → primary: the ingress logger runs on this MAC; set the guard to it.
    BackupReady { mac: [u8; 6] },
    /// Primary → backup: log and forward client frames, answer ARP for the address and
    /// announce it (gratuitous ARP) now. The primary sets its guard to the backup's MAC and
    /// takes the address off its link right after sending this (docs/design.md, "A backup
    /// joining"); frames that still reach it meanwhile are bounced to the backup.
    Announce,
    /// Primary → backup: a connection was accepted and is protected from now on.
    Opened {
        tuple: FourTuple,
        client_isn: u32,
        options: ConnectionOptions,
    },
    /// Primary → backup: reply bytes `[reply_offset, reply_offset + bytes.len())` of the
    /// connection's server stream. `request_end` is set on the last piece of the reply to
    /// request `request_index`: the client stream offset just after that request.
    /// `closes_after` (only with `request_end`): the primary ends the connection after this
    /// reply, so no later request of it may be answered, by it or by a successor.
    Reply {
        seq: u64,
        tuple: FourTuple,
        request_index: u64,
        reply_offset: u64,
        request_end: Option<u64>,
        closes_after: bool,
        bytes: Vec<u8>,
    },
    /// Primary → backup: the connection ended; forget it.
    Closed { tuple: FourTuple },
    /// Primary → backup: protect a connection accepted before this backup joined, wherever it
    /// stands (between requests, in the middle of a request or of a reply). The sequence
    /// numbers were read from the primary's socket. The client bytes from `request_offset` on
    /// that no complete reply answers (`request_len` of them) and the reply bytes from
    /// `reply_acked` (the client had acknowledged everything before) to `reply_offset` came
    /// just before, in [`ReplicationFrame::AdoptBytes`] frames. Acknowledged like a reply piece:
    /// the primary reads no more of the client until the backup holds the connection, which
    /// bounds what the backup must keep of the client segments that pass meanwhile.
    Adopt {
        seq: u64,
        tuple: FourTuple,
        client_isn: u32,
        server_isn: u32,
        options: ConnectionOptions,
        client_mss: u16,
        next_request: u64,
        request_offset: u64,
        request_len: u64,
        reply_acked: u64,
        reply_offset: u64,
        /// The primary's TCP timestamp clock for the connection at the adoption, when it uses
        /// timestamps: a rebuilt clock must not be behind what the client has seen (PAWS),
        /// even if no client segment passes the backup before a takeover.
        timestamp: Option<u32>,
        /// The reply to `next_request` was begun in parts (streamed) and goes on: where a
        /// takeover would resume it from `reply_offset`, or why it could not, as the service's
        /// framer writes it ([`StreamFramer::encode_progress`]): the replication stream does
        /// not know the protocol.
        ///
        /// [`StreamFramer::encode_progress`]: crate::stream_framer::StreamFramer::encode_progress
        reply_in_progress: Option<Vec<u8>>,
    },
    /// Primary → backup: bytes of a connection about to be adopted (see
    /// [`ReplicationFrame::Adopt`]), in order within each stream.
    AdoptBytes {
        tuple: FourTuple,
        stream: AdoptedStream,
        bytes: Vec<u8>,
    },
    /// Primary → backup, before `Announce`: connections accepted before this backup joined.
    /// Until each is adopted or closed a takeover cannot carry it on; the backup follows their
    /// clients' sequence numbers so a takeover can reset them rather than leave them waiting.
    Unadopted { tuples: Vec<FourTuple> },
    /// Primary → backup: an interim (1xx) reply head to request `request_index`, sent to the
    /// client before the final reply. Unlike a partial reply it does not stop a resume: a client
    /// must accept repeated 1xx replies (RFC 9110 §15.2), so the replayed request may send it
    /// again.
    Interim {
        seq: u64,
        tuple: FourTuple,
        request_index: u64,
        reply_offset: u64,
        bytes: Vec<u8>,
    },
    /// Backup → primary: every `Reply` up to `seq` is held.
    Ack { seq: u64 },
    /// Backup → primary: connections reported `Opened` whose opening this backup never saw
    /// (their handshake reached the primary straight, before the backup stood in front of it,
    /// and they were accepted after it joined). It holds no image of them, so it expects them
    /// to be adopted like connections opened before it joined.
    Unlogged { tuples: Vec<FourTuple> },
}

impl ReplicationFrame {
    fn kind(&self) -> u8 {
        match self {
            ReplicationFrame::Hello { .. } => 1,
            ReplicationFrame::Proof { .. } => 2,
            ReplicationFrame::BackupReady { .. } => 3,
            ReplicationFrame::Announce => 4,
            ReplicationFrame::Opened { .. } => 5,
            ReplicationFrame::Reply { .. } => REPLY_KIND,
            ReplicationFrame::Closed { .. } => 7,
            ReplicationFrame::Ack { .. } => 8,
            ReplicationFrame::Interim { .. } => 9,
            ReplicationFrame::Adopt { .. } => 10,
            ReplicationFrame::Unadopted { .. } => 11,
            ReplicationFrame::AdoptBytes { .. } => 12,
            ReplicationFrame::Unlogged { .. } => 13,
        }
    }

    /// A short name for logs and counters.
    pub fn label(&self) -> &'static str {
        match self {
            ReplicationFrame::Hello { .. } => "hello",
            ReplicationFrame::Proof { .. } => "proof",
            ReplicationFrame::BackupReady { .. } => "backup-ready",
            ReplicationFrame::Announce => "announce",
            ReplicationFrame::Opened { .. } => "opened",
            ReplicationFrame::Reply { .. } => "reply",
            ReplicationFrame::Closed { .. } => "closed",
            ReplicationFrame::Ack { .. } => "ack",
            ReplicationFrame::Interim { .. } => "interim",
            ReplicationFrame::Adopt { .. } => "adopt",
            ReplicationFrame::Unadopted { .. } => "unadopted",
            ReplicationFrame::AdoptBytes { .. } => "adopt-bytes",
            ReplicationFrame::Unlogged { .. } => "unlogged",
        }
    }
}

/// A frame that cannot be read; the stream carrying it must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    #[error("frame at stream offset {offset} declares {len} bytes, more than the {max} allowed")]
    TooLong { offset: u64, len: usize, max: usize },
    #[error("frame at stream offset {offset} declares {len} bytes, fewer than a header")]
    TooShort { offset: u64, len: usize },
    #[error("frame at stream offset {offset}: {error}")]
    Unsealed { offset: u64, error: SealError },
    #[error("frame at stream offset {offset}: unknown kind {kind}")]
    UnknownKind { offset: u64, kind: u8 },
    #[error("{kind} frame at stream offset {offset}: {what}")]
    Malformed {
        offset: u64,
        kind: &'static str,
        what: &'static str,
    },
}

/// The kind byte of [`ReplicationFrame::Reply`].
const REPLY_KIND: u8 = 6;
/// What a reply frame adds to its bytes (see [`ReplyHeader`]).
const REPLY_HEAD_BYTES: usize = HEADER_LEN + 8 + 12 + 8 + 8 + 1 + 8;

/// The fields of a [`ReplicationFrame::Reply`] but its bytes, so that a reply piece can be
/// encoded straight from the bytes it borrows ([`encode_reply`]): on the primary's data path
/// every reply byte is copied once into its frame, not first into a frame value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    pub seq: u64,
    pub tuple: FourTuple,
    pub request_index: u64,
    pub reply_offset: u64,
    pub request_end: Option<u64>,
    pub closes_after: bool,
}

/// Appends the encoding of the [`ReplicationFrame::Reply`] made of `header` and `bytes`, sent
/// in `epoch`, to `out`: the same bytes as [`encode`] of that frame.
pub fn encode_reply(header: &ReplyHeader, bytes: &[u8], epoch: u64, out: &mut Vec<u8>) {
    // With room for the tag: a piece sealed where it was encoded is not moved to grow by it.
    out.reserve(REPLY_HEAD_BYTES + bytes.len() + TAG_LEN);
    let start = begin_frame(out, REPLY_KIND, epoch);
    put_reply_header(out, header);
    out.extend_from_slice(bytes);
    end_frame(out, start);
}

fn begin_frame(out: &mut Vec<u8>, kind: u8, epoch: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&epoch.to_be_bytes());
    start
}

/// Writes the length of the frame that starts at `start` into its first four bytes.
fn end_frame(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_reply_header(out: &mut Vec<u8>, header: &ReplyHeader) {
    out.extend_from_slice(&header.seq.to_be_bytes());
    put_tuple(out, &header.tuple);
    out.extend_from_slice(&header.request_index.to_be_bytes());
    out.extend_from_slice(&header.reply_offset.to_be_bytes());
    out.push(u8::from(header.request_end.is_some()) | (u8::from(header.closes_after) << 1));
    out.extend_from_slice(&header.request_end.unwrap_or(0).to_be_bytes());
}

/// Appends `frame`, sent in `epoch`, to `out`, sealed by `sealer`.
pub fn encode_sealed(
    frame: &ReplicationFrame,
    epoch: u64,
    sealer: &mut Sealer,
    out: &mut Vec<u8>,
) -> Result<(), SealError> {
    let start = out.len();
    encode(frame, epoch, out);
    sealer.seal(out, start)
}

/// Appends the encoding of `frame`, sent in `epoch`, to `out`.
pub fn encode(frame: &ReplicationFrame, epoch: u64, out: &mut Vec<u8>) {
    let start = begin_frame(out, frame.kind(), epoch);
    match frame {
        ReplicationFrame::Hello {
            node,
            nonce,
            attempt,
            protection,
        } => {
            out.extend_from_slice(&node.to_be_bytes());
            out.extend_from_slice(nonce);
            out.extend_from_slice(&attempt.incarnation.to_be_bytes());
            out.extend_from_slice(&attempt.number.to_be_bytes());
            out.push(protection.wire());
        }
        ReplicationFrame::Proof { mac } => out.extend_from_slice(mac),
        ReplicationFrame::BackupReady { mac } => out.extend_from_slice(mac),
        ReplicationFrame::Announce => {}
        ReplicationFrame::Opened {
            tuple,
            client_isn,
            options,
        } => {
            put_tuple(out, tuple);
            out.extend_from_slice(&client_isn.to_be_bytes());
            put_options(out, options);
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
            out.extend_from_slice(&seq.to_be_bytes());
            put_tuple(out, tuple);
            out.extend_from_slice(&client_isn.to_be_bytes());
            put_options(out, options);
            out.extend_from_slice(&server_isn.to_be_bytes());
            out.extend_from_slice(&client_mss.to_be_bytes());
            for n in [
                next_request,
                request_offset,
                request_len,
                reply_acked,
                reply_offset,
            ] {
                out.extend_from_slice(&n.to_be_bytes());
            }
            out.push(u8::from(timestamp.is_some()));
            out.extend_from_slice(&timestamp.unwrap_or(0).to_be_bytes());
            match reply_in_progress {
                None => out.push(0),
                Some(progress) => {
                    out.push(1);
                    out.extend_from_slice(&(progress.len() as u32).to_be_bytes());
                    out.extend_from_slice(progress);
                }
            }
        }
        ReplicationFrame::AdoptBytes {
            tuple,
            stream,
            bytes,
        } => {
            put_tuple(out, tuple);
            out.push(match stream {
                AdoptedStream::Request => 0,
                AdoptedStream::Reply => 1,
            });
            out.extend_from_slice(bytes);
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
            put_reply_header(
                out,
                &ReplyHeader {
                    seq: *seq,
                    tuple: *tuple,
                    request_index: *request_index,
                    reply_offset: *reply_offset,
                    request_end: *request_end,
                    closes_after: *closes_after,
                },
            );
            out.extend_from_slice(bytes);
        }
        ReplicationFrame::Closed { tuple } => put_tuple(out, tuple),
        ReplicationFrame::Unadopted { tuples } | ReplicationFrame::Unlogged { tuples } => {
            for tuple in tuples {
                put_tuple(out, tuple);
            }
        }
        ReplicationFrame::Ack { seq } => out.extend_from_slice(&seq.to_be_bytes()),
        ReplicationFrame::Interim {
            seq,
            tuple,
            request_index,
            reply_offset,
            bytes,
        } => {
            out.extend_from_slice(&seq.to_be_bytes());
            put_tuple(out, tuple);
            out.extend_from_slice(&request_index.to_be_bytes());
            out.extend_from_slice(&reply_offset.to_be_bytes());
            out.extend_from_slice(bytes);
        }
    }
    end_frame(out, start);
}

fn put_options(out: &mut Vec<u8>, options: &ConnectionOptions) {
    let (ours, theirs) = options.window_scales.unwrap_or((0, 0));
    let flags = u8::from(options.window_scales.is_some())
        | u8::from(options.sack) << 1
        | u8::from(options.timestamps) << 2;
    out.extend_from_slice(&[flags, ours, theirs]);
    out.extend_from_slice(&options.mss.to_be_bytes());
}

fn put_tuple(out: &mut Vec<u8>, tuple: &FourTuple) {
    for addr in [tuple.client, tuple.server] {
        out.extend_from_slice(&addr.ip().octets());
        out.extend_from_slice(&addr.port().to_be_bytes());
    }
}

/// Cuts a replication stream into frames, fed incrementally in pieces of any size.
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Where the first frame not yet returned starts in `buffer`: bytes before it are dropped
    /// when more room is needed, not after every frame.
    start: usize,
    /// Stream offset of `buffer[start]`.
    offset: u64,
    failed: Option<ReplicationError>,
    /// Set once the handshake is over: every later frame is sealed.
    opener: Option<Opener>,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Every frame after the one last returned is sealed and is opened with `opener` (the
    /// handshake is over); bytes already buffered count as such.
    pub fn open_with(&mut self, opener: Opener) {
        self.opener = Some(opener);
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The buffer received bytes are appended to (a socket read into its spare capacity),
    /// which saves [`push`](Self::push)'s copy. It has room for at least `at_least` more bytes
    /// and for the rest of the frame under way, so that a long frame is read where it is
    /// opened and decoded rather than moved as it grows. Only appending keeps the stream whole.
    pub fn receive_buffer(&mut self, at_least: usize) -> &mut Vec<u8> {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        let frame_rest = match self.buffer.get(..4) {
            Some(len) => {
                let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
                // A length the next call refuses must not make room for itself.
                (4 + len.min(MAX_FRAME_BYTES + TAG_LEN)).saturating_sub(self.buffer.len())
            }
            None => 0,
        };
        self.buffer.reserve(at_least.max(frame_rest));
        &mut self.buffer
    }

    /// The next complete frame and the epoch it was sent in; `Ok(None)` until one is whole.
    /// After an error every call returns it again: the stream has no boundary after it.
    pub fn next_frame(&mut self) -> Result<Option<(u64, ReplicationFrame)>, ReplicationError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.try_next();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn try_next(&mut self) -> Result<Option<(u64, ReplicationFrame)>, ReplicationError> {
        let buffered = &mut self.buffer[self.start..];
        let offset = self.offset;
        let cut = match cut_frame(buffered, self.opener.as_mut(), HEADER_LEN, MAX_FRAME_BYTES) {
            Ok(Some(cut)) => cut,
            Ok(None) => return Ok(None),
            Err(CutError::TooLong { len, max }) => {
                return Err(ReplicationError::TooLong { offset, len, max })
            }
            Err(CutError::TooShort { len }) => {
                return Err(ReplicationError::TooShort { offset, len })
            }
            Err(CutError::Unsealed(error)) => {
                return Err(ReplicationError::Unsealed { offset, error })
            }
        };
        let frame = decode_body(&buffered[4..cut.plain_end], offset)?;
        self.start += cut.end;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        self.offset += cut.end as u64;
        Ok(Some(frame))
    }
}

/// Reads fields front to back, failing with the frame's kind and offset.
struct Fields<'a> {
    rest: &'a [u8],
    kind: &'static str,
    offset: u64,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ReplicationError> {
        if self.rest.len() < n {
            return Err(self.malformed("body shorter than its fields"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReplicationError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u16(&mut self) -> Result<u16, ReplicationError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ReplicationError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ReplicationError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn address(&mut self) -> Result<SocketAddrV4, ReplicationError> {
        let ip = Ipv4Addr::from(self.array::<4>()?);
        Ok(SocketAddrV4::new(ip, self.u16()?))
    }

    fn tuple(&mut self) -> Result<FourTuple, ReplicationError> {
        Ok(FourTuple {
            client: self.address()?,
            server: self.address()?,
        })
    }

    fn options(&mut self) -> Result<ConnectionOptions, ReplicationError> {
        let [flags, ours, theirs] = self.array()?;
        if flags & !0b111 != 0 {
            return Err(self.malformed("unknown option flags"));
        }
        if ours > 14 || theirs > 14 {
            return Err(self.malformed("window scale above 14"));
        }
        let mss = self.u16()?;
        Ok(ConnectionOptions {
            window_scales: (flags & 1 != 0).then_some((ours, theirs)),
            sack: flags & 2 != 0,
            timestamps: flags & 4 != 0,
            mss,
        })
    }

    /// `0` none; `1` a `u32` length and the framer's bytes.
    fn reply_in_progress(&mut self) -> Result<Option<Vec<u8>>, ReplicationError> {
        let [present] = self.array()?;
        match present {
            0 => Ok(None),
            1 => {
                let len = self.u32()? as usize;
                if len > MAX_PROGRESS_BYTES {
                    return Err(self.malformed("a reply progress longer than any validator"));
                }
                Ok(Some(self.take(len)?.to_vec()))
            }
            _ => Err(self.malformed("unknown reply progress")),
        }
    }

    fn end(self) -> Result<(), ReplicationError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("bytes after the last field"))
        }
    }

    fn malformed(&self, what: &'static str) -> ReplicationError {
        ReplicationError::Malformed {
            offset: self.offset,
            kind: self.kind,
            what,
        }
    }
}

fn decode_body(body: &[u8], offset: u64) -> Result<(u64, ReplicationFrame), ReplicationError> {
    let kind = body[0];
    let epoch = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
    let label = match kind {
        1 => "hello",
        2 => "proof",
        3 => "backup-ready",
        4 => "announce",
        5 => "opened",
        6 => "reply",
        7 => "closed",
        8 => "ack",
        9 => "interim",
        10 => "adopt",
        11 => "unadopted",
        12 => "adopt-bytes",
        13 => "unlogged",
        _ => return Err(ReplicationError::UnknownKind { offset, kind }),
    };
    let mut f = Fields {
        rest: &body[9..],
        kind: label,
        offset,
    };
    let frame = match kind {
        1 => ReplicationFrame::Hello {
            node: f.u16()?,
            nonce: f.array()?,
            attempt: LinkAttempt {
                incarnation: f.u64()?,
                number: f.u64()?,
            },
            protection: {
                let [byte] = f.array()?;
                Protection::from_wire(byte).ok_or(f.malformed("unknown protection"))?
            },
        },
        2 => ReplicationFrame::Proof { mac: f.array()? },
        3 => ReplicationFrame::BackupReady { mac: f.array()? },
        4 => ReplicationFrame::Announce,
        5 => ReplicationFrame::Opened {
            tuple: f.tuple()?,
            client_isn: f.u32()?,
            options: f.options()?,
        },
        10 => ReplicationFrame::Adopt {
            seq: f.u64()?,
            tuple: f.tuple()?,
            client_isn: f.u32()?,
            options: f.options()?,
            server_isn: f.u32()?,
            client_mss: f.u16()?,
            next_request: f.u64()?,
            request_offset: f.u64()?,
            request_len: f.u64()?,
            reply_acked: f.u64()?,
            reply_offset: f.u64()?,
            timestamp: {
                let [present] = f.array()?;
                let value = f.u32()?;
                match present {
                    0 if value == 0 => None,
                    1 => Some(value),
                    _ => return Err(f.malformed("invalid timestamp flag")),
                }
            },
            reply_in_progress: f.reply_in_progress()?,
        },
        12 => {
            let tuple = f.tuple()?;
            let [stream] = f.array()?;
            let stream = match stream {
                0 => AdoptedStream::Request,
                1 => AdoptedStream::Reply,
                _ => return Err(f.malformed("unknown stream")),
            };
            let bytes = f.rest.to_vec();
            if bytes.len() > MAX_PIECE_BYTES {
                return Err(f.malformed("adopted bytes longer than the maximum"));
            }
            f.rest = &[];
            ReplicationFrame::AdoptBytes {
                tuple,
                stream,
                bytes,
            }
        }
        6 => {
            let seq = f.u64()?;
            let tuple = f.tuple()?;
            let request_index = f.u64()?;
            let reply_offset = f.u64()?;
            let [end_flags] = f.array()?;
            let end = f.u64()?;
            // Bit 0: the reply ends at `end`; bit 1: the connection closes after it.
            let (request_end, closes_after) = match end_flags {
                0 if end == 0 => (None, false),
                1 => (Some(end), false),
                3 => (Some(end), true),
                _ => return Err(f.malformed("invalid request-end flags")),
            };
            let bytes = f.rest.to_vec();
            if bytes.len() > MAX_PIECE_BYTES {
                return Err(f.malformed("reply piece longer than the maximum"));
            }
            f.rest = &[];
            ReplicationFrame::Reply {
                seq,
                tuple,
                request_index,
                reply_offset,
                request_end,
                closes_after,
                bytes,
            }
        }
        7 => ReplicationFrame::Closed { tuple: f.tuple()? },
        11 | 13 => {
            let mut tuples = Vec::new();
            while !f.rest.is_empty() {
                tuples.push(f.tuple()?);
            }
            if kind == 11 {
                ReplicationFrame::Unadopted { tuples }
            } else {
                ReplicationFrame::Unlogged { tuples }
            }
        }
        8 => ReplicationFrame::Ack { seq: f.u64()? },
        _ => {
            let seq = f.u64()?;
            let tuple = f.tuple()?;
            let request_index = f.u64()?;
            let reply_offset = f.u64()?;
            let bytes = f.rest.to_vec();
            if bytes.len() > MAX_PIECE_BYTES {
                return Err(f.malformed("reply piece longer than the maximum"));
            }
            f.rest = &[];
            ReplicationFrame::Interim {
                seq,
                tuple,
                request_index,
                reply_offset,
                bytes,
            }
        }
    };
    f.end()?;
    Ok((epoch, frame))
}

/// The proof an end sends: HMAC over a label, its own node id, link attempt and nonce, then the
/// peer's nonce. Binding both nonces stops a replay of an earlier handshake; binding the
/// sender's id stops a reflection of the peer's own proof back at it; binding the attempt stops
/// a forger from passing a late stream off as the newest.
pub fn handshake_proof(
    key: &AuthKey,
    sender: NodeId,
    attempt: LinkAttempt,
    own_nonce: &[u8; NONCE_LEN],
    peer_nonce: &[u8; NONCE_LEN],
) -> [u8; PROOF_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.secret()).expect("HMAC takes any key");
    mac.update(PROOF_LABEL);
    mac.update(&sender.to_be_bytes());
    mac.update(&attempt.incarnation.to_be_bytes());
    mac.update(&attempt.number.to_be_bytes());
    mac.update(own_nonce);
    mac.update(peer_nonce);
    mac.finalize().into_bytes().into()
}

/// Checks a peer's proof in constant time.
pub fn verify_proof(
    key: &AuthKey,
    peer: NodeId,
    peer_attempt: LinkAttempt,
    peer_nonce: &[u8; NONCE_LEN],
    own_nonce: &[u8; NONCE_LEN],
    proof: &[u8; PROOF_LEN],
) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.secret()).expect("HMAC takes any key");
    mac.update(PROOF_LABEL);
    mac.update(&peer.to_be_bytes());
    mac.update(&peer_attempt.incarnation.to_be_bytes());
    mac.update(&peer_attempt.number.to_be_bytes());
    mac.update(peer_nonce);
    mac.update(own_nonce);
    mac.verify_slice(proof).is_ok()
}
