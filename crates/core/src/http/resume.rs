//! Finishing a reply that a failover cut in the middle.
//!
//! Replies above the whole-reply limit are logged and sent in pieces (invariant I2 still holds:
//! each piece reaches the backup before the client). If the primary dies in the middle of such
//! a reply, the new primary cannot repeat the request and send the reply again: the client
//! already holds its first part. The rule (docs/design.md, I2) is to resume only where the
//! backend promises the same bytes — a 200 with a strong ETag that accepts byte ranges — by
//! asking for the rest with `Range: bytes=<sent>-` and `If-Range: <etag>`, and to reset the
//! connection otherwise.
//!
//! Two deterministic halves: [`StreamedReply`] follows, on the backup, a reply logged in pieces
//! and says where its log ends ([`CutPoint`]); [`ReplyContinuation`], on the new primary, turns
//! the backend's answer to the resume request into exactly the bytes that follow the cut, in
//! the framing the client is reading (the rest of a Content-Length body, or the rest of the
//! current chunk followed by new chunks and the last chunk).

use super::fields::{ContentRange, EntityTag};
use super::response::{BodyCut, ReplyBodyFraming, ReplyEvent, ReplyHead, ResponseFramer};
use super::FramingLimits;

/// Where the log of a streamed reply ends, and what the client still needs after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutPoint {
    /// The reply's strong ETag: the resume asks for the rest of this representation only.
    pub validator: EntityTag,
    /// Payload bytes before the cut (chunk framing not counted): where the range starts.
    pub payload_sent: u64,
    pub framing: CutFraming,
}

/// How the client's reply is framed at the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutFraming {
    /// A Content-Length body with `remaining` bytes still owed.
    Length { remaining: u64 },
    /// A chunked body: `remaining` data bytes of the current chunk owed, then its CRLF when
    /// `crlf_owed`; after that any number of chunks and the last chunk.
    Chunked { remaining: u64, crlf_owed: bool },
}

/// Why a reply cut by a failover cannot be finished (the connection is closed and counted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotResumable {
    #[error("the logged reply cannot be framed: {0}")]
    Framing(String),
    #[error("the logged pieces do not hold the whole reply head")]
    HeadIncomplete,
    #[error("status {0}: only a 200 reply can be resumed by range")]
    Status(u16),
    #[error(
        "the reply has no strong ETag with `Accept-Ranges: bytes`: the backend does not promise \
         the same bytes again"
    )]
    NoValidator,
    #[error("the body runs until the backend closes: there is no length to resume against")]
    UntilClose,
    #[error("the log ends inside chunk framing, not at chunk data")]
    InsideFraming,
    #[error("the logged pieces hold the whole reply, yet none of them was marked final")]
    Ended,
    #[error("the request being answered is not in the log")]
    RequestMissing,
    #[error("the request cannot be repeated with a range: {0}")]
    Request(&'static str),
}

/// Follows, piece by piece, a reply that is logged in parts, from the first byte of its final
/// head (interim heads are logged apart and never reach it).
#[derive(Debug, Clone)]
pub struct StreamedReply {
    framer: ResponseFramer,
    /// What the final head allows: the strong validator of a resumable reply, or why it is not
    /// resumable. `None` until the head is whole.
    verdict: Option<Result<EntityTag, NotResumable>>,
    /// The body runs until the backend closes.
    until_close: bool,
    payload: u64,
    failure: Option<NotResumable>,
}

impl StreamedReply {
    pub fn new(limits: FramingLimits) -> StreamedReply {
        let mut framer = ResponseFramer::new(limits);
        // Only a GET reply can be resumed; framing it as one is right for every reply with a
        // body, and a reply to HEAD has none to stream.
        framer.expect_reply("GET");
        StreamedReply {
            framer,
            verdict: None,
            until_close: false,
            payload: 0,
            failure: None,
        }
    }

    /// Follows the rest of a reply whose start another node followed, from the cut point it
    /// computed there ([`StreamedReply::cut_point`]): fed the bytes after the cut, it says at
    /// every later point what a reply followed from its first byte would say. This is how a
    /// backup that joins in the middle of a reply (it adopts the connection) knows where a
    /// takeover can resume it.
    pub fn from_cut(limits: FramingLimits, cut: &CutPoint) -> StreamedReply {
        let body_cut = match cut.framing {
            CutFraming::Length { remaining } => BodyCut::Length { remaining },
            CutFraming::Chunked {
                remaining,
                crlf_owed,
            } => BodyCut::Chunk {
                remaining,
                crlf_owed,
            },
        };
        match ResponseFramer::inside_body(limits, body_cut) {
            Some(framer) => StreamedReply {
                framer,
                verdict: Some(Ok(cut.validator.clone())),
                until_close: false,
                payload: cut.payload_sent,
                failure: None,
            },
            // A body with nothing left: the reply ended, yet its last piece is still to come.
            None => StreamedReply::unresumable(limits, NotResumable::Ended),
        }
    }

    /// A reply that can never be resumed, whatever follows (handed over by a node that found
    /// it so, see [`StreamedReply::from_cut`]).
    pub fn unresumable(limits: FramingLimits, why: NotResumable) -> StreamedReply {
        let mut reply = StreamedReply::new(limits);
        reply.failure = Some(why);
        reply
    }

    /// The next logged piece of the reply.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failure.is_some() {
            return;
        }
        let mut events = Vec::new();
        let result = self.framer.feed(bytes, &mut events);
        for event in events {
            match event {
                ReplyEvent::Head(head) => {
                    self.until_close = head.body == ReplyBodyFraming::UntilClose;
                    self.verdict = Some(if head.status != 200 {
                        Err(NotResumable::Status(head.status))
                    } else {
                        head.resume_validator().ok_or(NotResumable::NoValidator)
                    });
                }
                ReplyEvent::Body { range, .. } => self.payload += range.end - range.start,
                ReplyEvent::End { .. } => self.failure = Some(NotResumable::Ended),
                ReplyEvent::Interim(_)
                | ReplyEvent::Framing { .. }
                | ReplyEvent::Tunnel { .. }
                | ReplyEvent::Discarded { .. } => {}
            }
        }
        if let Err(error) = result {
            self.failure = Some(NotResumable::Framing(error.to_string()));
        }
    }

    /// Where the log ends, if the reply can be finished from there.
    pub fn cut_point(&self) -> Result<CutPoint, NotResumable> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let validator = self
            .verdict
            .as_ref()
            .ok_or(NotResumable::HeadIncomplete)?
            .clone()?;
        let framing = match self.framer.body_cut() {
            BodyCut::Length { remaining } => CutFraming::Length { remaining },
            BodyCut::Chunk {
                remaining,
                crlf_owed,
            } => CutFraming::Chunked {
                remaining,
                crlf_owed,
            },
            BodyCut::Elsewhere if self.until_close => return Err(NotResumable::UntilClose),
            BodyCut::Elsewhere => return Err(NotResumable::InsideFraming),
        };
        Ok(CutPoint {
            validator,
            payload_sent: self.payload,
            framing,
        })
    }
}

/// Why the backend's answer to a resume request cannot finish the client's reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContinuationError {
    #[error("the backend answered the resume request with status {0}, not 206 or 200")]
    Refused(u16),
    #[error("the backend's reply carries no ETag, or not the strong one of the cut reply")]
    ChangedValidator,
    #[error("the backend's 206 Content-Range is {got}; the resume needs bytes {first}-{last}")]
    WrongRange {
        first: u64,
        last: String,
        got: String,
    },
    #[error("the backend's 200 holds {got} bytes; the cut reply holds {expected}")]
    WrongLength { expected: u64, got: String },
    #[error("the backend's reply ended {missing} bytes before the client's reply is complete")]
    Short { missing: u64 },
    #[error("the backend's reply carries more bytes than the client's reply has room for")]
    Long,
    #[error("backend payload arrived before its reply head")]
    PayloadBeforeHead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingHead,
    Body,
    Done,
}

/// Turns the backend's answer to a resume request into the bytes that finish the client's
/// reply after a [`CutPoint`]. Feed it the backend reply's head, then its payload (chunk
/// framing removed) in order, then its end.
#[derive(Debug, Clone)]
pub struct ReplyContinuation {
    cut: CutPoint,
    phase: Phase,
    /// Backend payload bytes still to drop (a 200 sends the representation from its start).
    skip: u64,
    /// Payload bytes the backend reply must carry, when its head says.
    expected_payload: Option<u64>,
    received: u64,
    /// The backend's reply carries nothing for the client (a 416 saying nothing is left).
    discard: bool,
    /// Length: body bytes still owed. Chunked: data bytes of the client's current chunk owed.
    owed: u64,
    crlf_owed: bool,
}

impl ReplyContinuation {
    pub fn new(cut: CutPoint) -> ReplyContinuation {
        let (owed, crlf_owed) = match cut.framing {
            CutFraming::Length { remaining } => (remaining, false),
            CutFraming::Chunked {
                remaining,
                crlf_owed,
            } => (remaining, crlf_owed),
        };
        ReplyContinuation {
            cut,
            phase: Phase::AwaitingHead,
            skip: 0,
            expected_payload: None,
            received: 0,
            discard: false,
            owed,
            crlf_owed,
        }
    }

    /// Whether the backend's reply has ended and the client's reply with it.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The backend's reply head (interim heads are ignored: the client has its own).
    pub fn head(&mut self, head: &ReplyHead) -> Result<(), ContinuationError> {
        if head.is_interim() {
            return Ok(());
        }
        let same = head
            .etag()
            .is_some_and(|etag| etag.strong_eq(&self.cut.validator));
        let sent = self.cut.payload_sent;
        let total = match self.cut.framing {
            CutFraming::Length { remaining } => Some(sent + remaining),
            CutFraming::Chunked { .. } => None,
        };
        match head.status {
            206 => {
                if !same {
                    return Err(ContinuationError::ChangedValidator);
                }
                let wrong = || ContinuationError::WrongRange {
                    first: sent,
                    last: total.map_or("end".into(), |t| t.saturating_sub(1).to_string()),
                    got: head
                        .header("content-range")
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_else(|| "missing".into()),
                };
                let range = head.content_range().ok_or_else(wrong)?;
                // The request asked for everything from `sent` on.
                let reaches_end = range
                    .complete_length
                    .is_none_or(|complete| range.last + 1 == complete);
                let matches_total = total.is_none_or(|t| {
                    range.last + 1 == t && range.complete_length.is_none_or(|c| c == t)
                });
                if range.first != sent || !reaches_end || !matches_total {
                    return Err(wrong());
                }
                self.expected_payload = Some(range.len());
            }
            200 => {
                if !same {
                    return Err(ContinuationError::ChangedValidator);
                }
                if let (Some(total), ReplyBodyFraming::ContentLength(length)) = (total, head.body) {
                    if length != total {
                        return Err(ContinuationError::WrongLength {
                            expected: total,
                            got: length.to_string(),
                        });
                    }
                }
                self.skip = sent;
            }
            // With If-Range, a server that evaluates the range has found the representation
            // unchanged; a 416 for "everything from `sent` on" then says the client has it all
            // (the cut fell after the last chunk's data, before the last chunk).
            416 if head
                .header("content-range")
                .and_then(ContentRange::parse_unsatisfied)
                .is_some_and(|complete| complete == sent && total.is_none_or(|t| t == sent)) =>
            {
                self.discard = true;
                self.expected_payload = None;
                self.phase = Phase::Body;
                return Ok(());
            }
            status => return Err(ContinuationError::Refused(status)),
        }
        if let ReplyBodyFraming::ContentLength(length) = head.body {
            if self.expected_payload.is_some_and(|e| e != length) {
                return Err(ContinuationError::WrongLength {
                    expected: self.expected_payload.unwrap_or(0),
                    got: length.to_string(),
                });
            }
        }
        self.phase = Phase::Body;
        Ok(())
    }

    /// Payload bytes of the backend's reply; appends what the client must be sent to `out`.
    pub fn payload(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), ContinuationError> {
        if self.phase != Phase::Body {
            return Err(ContinuationError::PayloadBeforeHead);
        }
        if self.discard {
            return Ok(());
        }
        self.received += bytes.len() as u64;
        if self.expected_payload.is_some_and(|e| self.received > e) {
            return Err(ContinuationError::Long);
        }
        let dropped = self.skip.min(bytes.len() as u64);
        self.skip -= dropped;
        // dropped <= bytes.len()
        let mut rest = &bytes[dropped as usize..];
        if rest.is_empty() {
            return Ok(());
        }
        match self.cut.framing {
            CutFraming::Length { .. } => {
                if rest.len() as u64 > self.owed {
                    return Err(ContinuationError::Long);
                }
                self.owed -= rest.len() as u64;
                out.extend_from_slice(rest);
            }
            CutFraming::Chunked { .. } => {
                let in_chunk = self.owed.min(rest.len() as u64);
                // in_chunk <= rest.len()
                out.extend_from_slice(&rest[..in_chunk as usize]);
                self.owed -= in_chunk;
                rest = &rest[in_chunk as usize..];
                if !rest.is_empty() {
                    self.close_chunk(out);
                    out.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
                    out.extend_from_slice(rest);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        Ok(())
    }

    /// The backend's reply ended; appends the client's last bytes (the last chunk) to `out`.
    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<(), ContinuationError> {
        if self.phase != Phase::Body {
            return Err(ContinuationError::Short {
                missing: self.owed.max(1),
            });
        }
        if let Some(expected) = self.expected_payload {
            if self.received < expected {
                return Err(ContinuationError::Short {
                    missing: expected - self.received,
                });
            }
        }
        if self.skip > 0 || self.owed > 0 {
            return Err(ContinuationError::Short {
                missing: self.skip + self.owed,
            });
        }
        if let CutFraming::Chunked { .. } = self.cut.framing {
            self.close_chunk(out);
            out.extend_from_slice(b"0\r\n\r\n");
        }
        self.phase = Phase::Done;
        Ok(())
    }

    fn close_chunk(&mut self, out: &mut Vec<u8>) {
        if self.crlf_owed {
            out.extend_from_slice(b"\r\n");
            self.crlf_owed = false;
        }
    }
}
