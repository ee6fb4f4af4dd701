//! The link between the primary and each replica in active mode: its frames, their encoding,
//! and an incremental reader for the TCP stream that carries them.
//!
//! The link is protected as the duplex replication stream is, with its pieces reused rather
//! than copied: a challenge-response over both ends' nonces
//! ([`replication_wire::handshake_proof`]), then every frame sealed
//! ([`replication_seal`]: a tag under a key of this stream and direction, an implicit frame
//! number, the body encrypted unless the group turned encryption off). Both run under a key
//! derived from the group key for this link alone ([`link_key`]), so that no proof or frame of
//! a duplex replication stream is ever valid here, nor one of this link there.
//!
//! Layout of every frame, as in the replication stream: `len: u32` (bytes after this field),
//! `kind: u8`, `epoch: u64`, body, and after the handshake a 16-byte tag. Integers big-endian.
//!
//! Only digests of the replicas' replies to updates cross the link
//! ([`crate::reply_compare`]); the whole reply comes from the replica on the primary's own
//! node, whose reply is the one the client gets, and from the replica a read was scheduled on.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::active_executor::SessionId;
use crate::active_order::{OrderNumber, ToPrimary, ToReplica};
use crate::active_takeover::ReplicaPosition;
use crate::heartbeat_wire::AuthKey;
use crate::replication_seal::{cut_frame, CutError, Opener, Protection, SealError, Sealer};
use crate::replication_wire::{LinkAttempt, NONCE_LEN};
use crate::reply_compare::ReplyDigest;
use crate::NodeId;

/// Longest frame accepted: a request or a reply of up to [`MAX_PAYLOAD_BYTES`] and its fields.
pub const MAX_FRAME_BYTES: usize = MAX_PAYLOAD_BYTES + 128;
/// Longest request or reply one frame carries. Requests and replies are not cut in pieces on
/// this link (yet): a longer one fails its session.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;
const HEADER_LEN: usize = 4 + 1 + 8;
const PROOF_LEN: usize = 32;
const LINK_KEY_LABEL: &[u8] = b"steadfast active link v1";

/// The key the active link's handshake and seals run under: HMAC-SHA256 of a label under the
/// group key, so that it differs from the duplex replication stream's (the group key itself)
/// and neither link's proofs or frames pass on the other.
pub fn link_key(group: &AuthKey) -> AuthKey {
    let mut mac = Hmac::<Sha256>::new_from_slice(group.secret()).expect("HMAC takes any key");
    mac.update(LINK_KEY_LABEL);
    let derived: [u8; 32] = mac.finalize().into_bytes().into();
    AuthKey::new(&derived).expect("32 bytes is longer than the shortest key")
}

/// What an update carries to every replica: which client session sent it, its place among
/// that session's requests, and the request's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePayload {
    pub session: SessionId,
    pub index: u64,
    pub request: Vec<u8>,
}

/// One frame of the active link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveFrame {
    /// First frame from each end (the replica's attempt is [`LinkAttempt::NONE`]).
    Hello {
        node: NodeId,
        nonce: [u8; NONCE_LEN],
        attempt: LinkAttempt,
        protection: Protection,
    },
    /// Second frame from each end: proves the key over both nonces.
    Proof { mac: [u8; PROOF_LEN] },
    /// Primary → replica: the ordering's messages (updates, stability).
    Order(ToReplica<UpdatePayload>),
    /// Primary → replica: a read scheduled on this replica, to run once every update up to
    /// `barrier` is answered.
    Read {
        session: SessionId,
        index: u64,
        barrier: OrderNumber,
        request: Vec<u8>,
    },
    /// Primary → replica: the client's connection closed after its updates up to `after`
    /// were ordered; the session's server connection closes once they and its reads ran.
    EndSession {
        session: SessionId,
        after: OrderNumber,
    },
    /// Primary → replica: answer with a [`ActiveFrame::ProbeReply`] of the same token at once
    /// (a silent link is how the primary finds a replica whose host died,
    /// [`crate::active_liveness`]).
    Probe { token: u64 },
    /// Replica → primary: acknowledgements and NAKs.
    Progress(ToPrimary),
    /// Replica → primary: the answer to a probe.
    ProbeReply { token: u64 },
    /// Primary → a live replica: take a copy of your data for rebuild `rebuild`, at a point
    /// between two updates, and send it in [`ActiveFrame::SnapshotPart`]s.
    SnapshotRequest { rebuild: u64 },
    /// Source replica → primary, then primary → the replica being rebuilt: a piece of the copy,
    /// taken once every update up to `at` ran and none after: `commands` RESP requests
    /// (`SELECT` and `RESTORE … REPLACE ABSTTL`) to run in order on an emptied server.
    SnapshotPart {
        rebuild: u64,
        at: OrderNumber,
        commands: u64,
        last: bool,
        requests: Vec<u8>,
    },
    /// Source replica → primary, then primary → the replica being rebuilt, before the copy's
    /// parts: the requests that set up client session `session`'s connection as it stood at
    /// update `at` (`commands` of them: AUTH, HELLO, SELECT, CLIENT SETNAME…), for the joiner
    /// to run on that session's new server connection before its next update.
    SessionPrelude {
        rebuild: u64,
        at: OrderNumber,
        session: SessionId,
        commands: u64,
        requests: Vec<u8>,
    },
    /// Rebuilt replica → primary: the whole copy is loaded; send the updates after `at`.
    SnapshotLoaded { rebuild: u64, at: OrderNumber },
    /// Replica → primary, first on every link: where its data stands, for a primary that
    /// takes over ([`crate::active_takeover`]).
    Position(ReplicaPosition),
    /// Replica → primary: the server answered update `number`. `reply` is the whole reply
    /// when the primary asked for it (its own node's replica), else empty: the digest alone
    /// is compared.
    UpdateReply {
        number: OrderNumber,
        session: SessionId,
        index: u64,
        digest: ReplyDigest,
        reply: Option<Vec<u8>>,
    },
    /// Replica → primary: the server answered a read scheduled here.
    ReadReply {
        session: SessionId,
        index: u64,
        reply: Vec<u8>,
    },
}

impl ActiveFrame {
    fn kind(&self) -> u8 {
        match self {
            ActiveFrame::Hello { .. } => 1,
            ActiveFrame::Proof { .. } => 2,
            ActiveFrame::Order(ToReplica::Update { .. }) => 10,
            ActiveFrame::Order(ToReplica::Stable { .. }) => 11,
            ActiveFrame::Read { .. } => 12,
            ActiveFrame::EndSession { .. } => 13,
            ActiveFrame::Probe { .. } => 14,
            ActiveFrame::SnapshotRequest { .. } => 15,
            ActiveFrame::SnapshotPart { .. } => 16,
            ActiveFrame::Progress(ToPrimary::Ack { .. }) => 20,
            ActiveFrame::Progress(ToPrimary::Nak { .. }) => 21,
            ActiveFrame::UpdateReply { .. } => 22,
            ActiveFrame::ReadReply { .. } => 23,
            ActiveFrame::ProbeReply { .. } => 24,
            ActiveFrame::SnapshotLoaded { .. } => 25,
            ActiveFrame::Position(_) => 26,
            ActiveFrame::SessionPrelude { .. } => 27,
        }
    }

    pub fn label(&self) -> &'static str {
        match self.kind() {
            1 => "hello",
            2 => "proof",
            10 => "update",
            11 => "stable",
            12 => "read",
            13 => "end-session",
            14 => "probe",
            15 => "snapshot-request",
            16 => "snapshot-part",
            20 => "ack",
            21 => "nak",
            22 => "update-reply",
            23 => "read-reply",
            24 => "probe-reply",
            25 => "snapshot-loaded",
            26 => "position",
            _ => "session-prelude",
        }
    }
}

/// Why a stream of the active link cannot be read on; it has no boundary after the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActiveWireError {
    #[error("active link frame at offset {offset}: length {len} above the {max} allowed")]
    TooLong { offset: u64, len: usize, max: usize },
    #[error("active link frame at offset {offset}: length {len} shorter than its header")]
    TooShort { offset: u64, len: usize },
    #[error("active link frame at offset {offset}: {error}")]
    Unsealed {
        offset: u64,
        #[source]
        error: SealError,
    },
    #[error("active link frame at offset {offset}: unknown kind {kind}")]
    UnknownKind { offset: u64, kind: u8 },
    #[error("active link {kind} frame at offset {offset}: {what}")]
    Malformed {
        offset: u64,
        kind: &'static str,
        what: &'static str,
    },
    #[error("active link: a {len}-byte {kind} frame exceeds the {max} bytes a frame may carry")]
    PayloadTooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
}

/// Appends `frame`, sent in `epoch`, sealed by `sealer`.
pub fn encode_sealed(
    frame: &ActiveFrame,
    epoch: u64,
    sealer: &mut Sealer,
    out: &mut Vec<u8>,
) -> Result<(), ActiveWireError> {
    let start = out.len();
    encode(frame, epoch, out)?;
    sealer.seal(out, start).map_err(|error| {
        out.truncate(start);
        ActiveWireError::Unsealed {
            offset: start as u64,
            error,
        }
    })
}

/// Appends the plain encoding of `frame`, sent in `epoch` (the handshake's frames go so).
pub fn encode(frame: &ActiveFrame, epoch: u64, out: &mut Vec<u8>) -> Result<(), ActiveWireError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(frame.kind());
    out.extend_from_slice(&epoch.to_be_bytes());
    let u64s = |out: &mut Vec<u8>, values: &[u64]| {
        for value in values {
            out.extend_from_slice(&value.to_be_bytes());
        }
    };
    let mut payload_len = 0;
    match frame {
        ActiveFrame::Hello {
            node,
            nonce,
            attempt,
            protection,
        } => {
            out.extend_from_slice(&node.to_be_bytes());
            out.extend_from_slice(nonce);
            u64s(out, &[attempt.incarnation, attempt.number]);
            out.push(protection.wire());
        }
        ActiveFrame::Proof { mac } => out.extend_from_slice(mac),
        ActiveFrame::Order(ToReplica::Update { number, payload }) => {
            u64s(out, &[*number, payload.session, payload.index]);
            out.extend_from_slice(&payload.request);
            payload_len = payload.request.len();
        }
        ActiveFrame::Order(ToReplica::Stable { up_to }) => u64s(out, &[*up_to]),
        ActiveFrame::Read {
            session,
            index,
            barrier,
            request,
        } => {
            u64s(out, &[*session, *index, *barrier]);
            out.extend_from_slice(request);
            payload_len = request.len();
        }
        ActiveFrame::EndSession { session, after } => u64s(out, &[*session, *after]),
        ActiveFrame::Probe { token } | ActiveFrame::ProbeReply { token } => u64s(out, &[*token]),
        ActiveFrame::SnapshotRequest { rebuild } => u64s(out, &[*rebuild]),
        ActiveFrame::SnapshotPart {
            rebuild,
            at,
            commands,
            last,
            requests,
        } => {
            u64s(out, &[*rebuild, *at, *commands]);
            out.push(u8::from(*last));
            out.extend_from_slice(requests);
            payload_len = requests.len();
        }
        ActiveFrame::SnapshotLoaded { rebuild, at } => u64s(out, &[*rebuild, *at]),
        ActiveFrame::Position(position) => {
            u64s(
                out,
                &[position.ordered_by, position.epoch, position.received],
            );
            out.push(u8::from(position.whole));
        }
        ActiveFrame::SessionPrelude {
            rebuild,
            at,
            session,
            commands,
            requests,
        } => {
            u64s(out, &[*rebuild, *at, *session, *commands]);
            out.extend_from_slice(requests);
            payload_len = requests.len();
        }
        ActiveFrame::Progress(ToPrimary::Ack { up_to }) => u64s(out, &[*up_to]),
        ActiveFrame::Progress(ToPrimary::Nak { missing }) => {
            u64s(out, &[missing.start, missing.end])
        }
        ActiveFrame::UpdateReply {
            number,
            session,
            index,
            digest,
            reply,
        } => {
            u64s(out, &[*number, *session, *index]);
            out.extend_from_slice(digest);
            out.push(u8::from(reply.is_some()));
            if let Some(reply) = reply {
                out.extend_from_slice(reply);
                payload_len = reply.len();
            }
        }
        ActiveFrame::ReadReply {
            session,
            index,
            reply,
        } => {
            u64s(out, &[*session, *index]);
            out.extend_from_slice(reply);
            payload_len = reply.len();
        }
    }
    if payload_len > MAX_PAYLOAD_BYTES {
        out.truncate(start);
        return Err(ActiveWireError::PayloadTooLong {
            kind: frame.label(),
            len: payload_len,
            max: MAX_PAYLOAD_BYTES,
        });
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Cuts an active link's stream into frames, fed in pieces of any size.
#[derive(Debug, Default)]
pub struct ActiveFrameReader {
    buffer: Vec<u8>,
    /// Where the first frame not yet returned starts in `buffer`.
    start: usize,
    /// Stream offset of `buffer[start]`.
    offset: u64,
    failed: Option<ActiveWireError>,
    /// Set once the handshake is over: every later frame is sealed.
    opener: Option<Opener>,
}

impl ActiveFrameReader {
    pub fn new() -> ActiveFrameReader {
        ActiveFrameReader::default()
    }

    /// Every frame after the one last returned is sealed and opened with `opener`.
    pub fn open_with(&mut self, opener: Opener) {
        self.opener = Some(opener);
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame and its epoch; `Ok(None)` until one is whole. After an error every
    /// call returns it again.
    pub fn next_frame(&mut self) -> Result<Option<(u64, ActiveFrame)>, ActiveWireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.try_next();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn try_next(&mut self) -> Result<Option<(u64, ActiveFrame)>, ActiveWireError> {
        let buffered = &mut self.buffer[self.start..];
        let offset = self.offset;
        let cut = match cut_frame(buffered, self.opener.as_mut(), HEADER_LEN, MAX_FRAME_BYTES) {
            Ok(Some(cut)) => cut,
            Ok(None) => return Ok(None),
            Err(CutError::TooLong { len, max }) => {
                return Err(ActiveWireError::TooLong { offset, len, max })
            }
            Err(CutError::TooShort { len }) => {
                return Err(ActiveWireError::TooShort { offset, len })
            }
            Err(CutError::Unsealed(error)) => {
                return Err(ActiveWireError::Unsealed { offset, error })
            }
        };
        let frame = decode_body(&buffered[4..cut.plain_end], offset)?;
        self.start += cut.end;
        self.offset += cut.end as u64;
        Ok(Some(frame))
    }
}

/// Reads fields front to back.
struct Fields<'a> {
    rest: &'a [u8],
    kind: &'static str,
    offset: u64,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ActiveWireError> {
        if self.rest.len() < n {
            return Err(self.malformed("body shorter than its fields"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, ActiveWireError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ActiveWireError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.rest).to_vec()
    }

    fn end(&self) -> Result<(), ActiveWireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("bytes after its last field"))
        }
    }

    fn malformed(&self, what: &'static str) -> ActiveWireError {
        ActiveWireError::Malformed {
            offset: self.offset,
            kind: self.kind,
            what,
        }
    }
}

/// Decodes a frame's bytes after the length field (kind, epoch, body).
fn decode_body(bytes: &[u8], offset: u64) -> Result<(u64, ActiveFrame), ActiveWireError> {
    let kind = bytes[0];
    let epoch = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let label = match kind {
        1 => "hello",
        2 => "proof",
        10 => "update",
        11 => "stable",
        12 => "read",
        13 => "end-session",
        14 => "probe",
        15 => "snapshot-request",
        16 => "snapshot-part",
        20 => "ack",
        21 => "nak",
        22 => "update-reply",
        23 => "read-reply",
        24 => "probe-reply",
        25 => "snapshot-loaded",
        26 => "position",
        27 => "session-prelude",
        _ => return Err(ActiveWireError::UnknownKind { offset, kind }),
    };
    let mut f = Fields {
        rest: &bytes[9..],
        kind: label,
        offset,
    };
    let frame = match kind {
        1 => {
            let node = u16::from_be_bytes(f.array()?);
            let nonce = f.array()?;
            let attempt = LinkAttempt {
                incarnation: f.u64()?,
                number: f.u64()?,
            };
            let protection = Protection::from_wire(f.array::<1>()?[0])
                .ok_or_else(|| f.malformed("unknown protection"))?;
            ActiveFrame::Hello {
                node,
                nonce,
                attempt,
                protection,
            }
        }
        2 => ActiveFrame::Proof { mac: f.array()? },
        10 => {
            let number = f.u64()?;
            let session = f.u64()?;
            let index = f.u64()?;
            ActiveFrame::Order(ToReplica::Update {
                number,
                payload: UpdatePayload {
                    session,
                    index,
                    request: f.rest(),
                },
            })
        }
        11 => ActiveFrame::Order(ToReplica::Stable { up_to: f.u64()? }),
        12 => ActiveFrame::Read {
            session: f.u64()?,
            index: f.u64()?,
            barrier: f.u64()?,
            request: f.rest(),
        },
        13 => ActiveFrame::EndSession {
            session: f.u64()?,
            after: f.u64()?,
        },
        14 => ActiveFrame::Probe { token: f.u64()? },
        24 => ActiveFrame::ProbeReply { token: f.u64()? },
        15 => ActiveFrame::SnapshotRequest { rebuild: f.u64()? },
        16 => {
            let rebuild = f.u64()?;
            let at = f.u64()?;
            let commands = f.u64()?;
            let last = match f.array::<1>()?[0] {
                0 => false,
                1 => true,
                _ => return Err(f.malformed("a last-part flag neither 0 nor 1")),
            };
            ActiveFrame::SnapshotPart {
                rebuild,
                at,
                commands,
                last,
                requests: f.rest(),
            }
        }
        25 => ActiveFrame::SnapshotLoaded {
            rebuild: f.u64()?,
            at: f.u64()?,
        },
        26 => {
            let ordered_by = f.u64()?;
            let epoch = f.u64()?;
            let received = f.u64()?;
            let whole = match f.array::<1>()?[0] {
                0 => false,
                1 => true,
                _ => return Err(f.malformed("a whole-data flag neither 0 nor 1")),
            };
            ActiveFrame::Position(ReplicaPosition {
                ordered_by,
                epoch,
                received,
                whole,
            })
        }
        27 => ActiveFrame::SessionPrelude {
            rebuild: f.u64()?,
            at: f.u64()?,
            session: f.u64()?,
            commands: f.u64()?,
            requests: f.rest(),
        },
        20 => ActiveFrame::Progress(ToPrimary::Ack { up_to: f.u64()? }),
        21 => {
            let start = f.u64()?;
            let end = f.u64()?;
            if end < start {
                return Err(f.malformed("a NAK whose range ends before it starts"));
            }
            ActiveFrame::Progress(ToPrimary::Nak {
                missing: start..end,
            })
        }
        22 => {
            let number = f.u64()?;
            let session = f.u64()?;
            let index = f.u64()?;
            let digest = f.array()?;
            let whole = f.array::<1>()?[0];
            let reply = match whole {
                0 => None,
                1 => Some(f.rest()),
                _ => return Err(f.malformed("a reply flag neither 0 nor 1")),
            };
            ActiveFrame::UpdateReply {
                number,
                session,
                index,
                digest,
                reply,
            }
        }
        _ => ActiveFrame::ReadReply {
            session: f.u64()?,
            index: f.u64()?,
            reply: f.rest(),
        },
    };
    f.end()?;
    Ok((epoch, frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication_seal::{channel, LinkEnd, TAG_LEN};
    use crate::replication_wire::{handshake_proof, verify_proof};

    fn every_kind() -> Vec<ActiveFrame> {
        vec![
            ActiveFrame::Hello {
                node: 2,
                nonce: [7; NONCE_LEN],
                attempt: LinkAttempt {
                    incarnation: 9,
                    number: 3,
                },
                protection: Protection::Encrypted,
            },
            ActiveFrame::Proof { mac: [5; 32] },
            ActiveFrame::Order(ToReplica::Update {
                number: 41,
                payload: UpdatePayload {
                    session: 3,
                    index: 8,
                    request: b"*1\r\n$4\r\nPING\r\n".to_vec(),
                },
            }),
            ActiveFrame::Order(ToReplica::Stable { up_to: 40 }),
            ActiveFrame::Probe { token: 77 },
            ActiveFrame::ProbeReply { token: 77 },
            ActiveFrame::SnapshotRequest { rebuild: 5 },
            ActiveFrame::SnapshotPart {
                rebuild: 5,
                at: 40,
                commands: 2,
                last: true,
                requests: b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            },
            ActiveFrame::SnapshotLoaded { rebuild: 5, at: 40 },
            ActiveFrame::Position(ReplicaPosition {
                ordered_by: 9,
                epoch: 65537,
                received: 40,
                whole: false,
            }),
            ActiveFrame::SessionPrelude {
                rebuild: 5,
                at: 40,
                session: 3,
                commands: 1,
                requests: b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n".to_vec(),
            },
            ActiveFrame::Read {
                session: 3,
                index: 9,
                barrier: 41,
                request: b"GET k\r\n".to_vec(),
            },
            ActiveFrame::EndSession {
                session: 3,
                after: 41,
            },
            ActiveFrame::Progress(ToPrimary::Ack { up_to: 41 }),
            ActiveFrame::Progress(ToPrimary::Nak { missing: 42..45 }),
            ActiveFrame::UpdateReply {
                number: 41,
                session: 3,
                index: 8,
                digest: [1; 32],
                reply: Some(b"+OK\r\n".to_vec()),
            },
            ActiveFrame::UpdateReply {
                number: 42,
                session: 3,
                index: 10,
                digest: [2; 32],
                reply: None,
            },
            ActiveFrame::ReadReply {
                session: 3,
                index: 9,
                reply: b"$-1\r\n".to_vec(),
            },
        ]
    }

    #[test]
    fn every_frame_decodes_to_itself_fed_a_byte_at_a_time() {
        let mut wire = Vec::new();
        for frame in every_kind() {
            encode(&frame, 6, &mut wire).unwrap();
        }
        let mut reader = ActiveFrameReader::new();
        let mut decoded = Vec::new();
        for byte in wire {
            reader.push(&[byte]);
            while let Some(frame) = reader.next_frame().unwrap() {
                decoded.push(frame);
            }
        }
        let expected: Vec<(u64, ActiveFrame)> = every_kind().into_iter().map(|f| (6, f)).collect();
        assert_eq!(decoded, expected);
    }

    fn ends() -> (LinkEnd, LinkEnd) {
        let primary = LinkEnd {
            node: 1,
            nonce: [1; NONCE_LEN],
            attempt: LinkAttempt {
                incarnation: 5,
                number: 1,
            },
        };
        let replica = LinkEnd {
            node: 2,
            nonce: [2; NONCE_LEN],
            attempt: LinkAttempt::NONE,
        };
        (primary, replica)
    }

    #[test]
    fn sealed_frames_open_under_the_link_key_and_fail_when_altered() {
        let key = link_key(&AuthKey::new(&[9; 32]).unwrap());
        let (primary, replica) = ends();
        let (mut sealer, _) = channel(&key, Protection::Encrypted, &primary, &replica);
        let (_, opener) = channel(&key, Protection::Encrypted, &replica, &primary);
        let mut wire = Vec::new();
        for frame in every_kind().into_iter().skip(2) {
            encode_sealed(&frame, 1, &mut sealer, &mut wire).unwrap();
        }
        let mut reader = ActiveFrameReader::new();
        reader.open_with(opener);
        reader.push(&wire);
        let mut count = 0;
        while reader.next_frame().unwrap().is_some() {
            count += 1;
        }
        assert_eq!(count, every_kind().len() - 2);

        let (mut sealer, _) = channel(&key, Protection::Authenticated, &primary, &replica);
        let (_, opener) = channel(&key, Protection::Authenticated, &replica, &primary);
        let mut wire = Vec::new();
        encode_sealed(
            &ActiveFrame::Progress(ToPrimary::Ack { up_to: 3 }),
            1,
            &mut sealer,
            &mut wire,
        )
        .unwrap();
        let last = wire.len() - TAG_LEN - 1;
        wire[last] ^= 1;
        let mut reader = ActiveFrameReader::new();
        reader.open_with(opener);
        reader.push(&wire);
        assert!(matches!(
            reader.next_frame(),
            Err(ActiveWireError::Unsealed { .. })
        ));
    }

    #[test]
    fn the_link_key_is_not_the_group_key_so_replication_proofs_do_not_pass() {
        let group = AuthKey::new(&[9; 32]).unwrap();
        let link = link_key(&group);
        assert_ne!(group.secret(), link.secret());
        let (primary, replica) = ends();
        let proof = handshake_proof(
            &group,
            primary.node,
            primary.attempt,
            &primary.nonce,
            &replica.nonce,
        );
        assert!(!verify_proof(
            &link,
            primary.node,
            primary.attempt,
            &primary.nonce,
            &replica.nonce,
            &proof
        ));
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused_with_where() {
        let mut wire = Vec::new();
        encode(
            &ActiveFrame::Progress(ToPrimary::Ack { up_to: 1 }),
            0,
            &mut wire,
        )
        .unwrap();
        wire.push(0);
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) + 1;
        wire[..4].copy_from_slice(&len.to_be_bytes());
        let mut reader = ActiveFrameReader::new();
        reader.push(&wire);
        assert!(matches!(
            reader.next_frame(),
            Err(ActiveWireError::Malformed { offset: 0, .. })
        ));
        let mut reader = ActiveFrameReader::new();
        reader.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            reader.next_frame(),
            Err(ActiveWireError::TooLong { .. })
        ));
    }
}
