//! Framing of the backend byte stream into replies.

use std::collections::VecDeque;
use std::ops::Range;

use super::chunked::{ChunkPiece, ChunkedDecoder};
use super::fields::{self, ContentRange, EntityTag, Header, TransferEncoding};
use super::head_buffer::{self, HeadBuffer, HeadStep, ParseOutcome};
use super::request::RequestHead;
use super::{
    push_merged, FramingError, FramingErrorKind, FramingLimits, HttpVersion, MergeableEvent,
    StreamSide,
};

/// How the body of a reply is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyBodyFraming {
    /// No body: 1xx, 204, 304, or any reply to HEAD.
    None,
    ContentLength(u64),
    Chunked,
    /// Neither length nor chunked: the body runs until the backend closes the connection.
    UntilClose,
    /// 101 Switching Protocols, or 2xx to CONNECT: the reply ends with its head and every later
    /// byte is opaque tunnel data.
    Tunnel,
}

/// Where the framer stands inside a reply body: what another sender must still send to finish
/// the reply in the same framing (see [`ResponseFramer::body_cut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCut {
    /// A Content-Length body with `remaining` bytes still to come.
    Length { remaining: u64 },
    /// A chunked body: `remaining` data bytes of the current chunk still to come, then its CRLF
    /// when `crlf_owed`; `remaining` 0 and `crlf_owed` false between two chunks.
    Chunk { remaining: u64, crlf_owed: bool },
    /// Anywhere else: inside a head or chunk framing, a body read until close, between replies.
    Elsewhere,
}

/// A reply head, interim (1xx) or final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHead {
    /// Index of the request this reply answers.
    pub index: u64,
    /// Stream range of the head as the backend sent it.
    pub range: Range<u64>,
    pub version: HttpVersion,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
    /// `None` for interim replies.
    pub body: ReplyBodyFraming,
    /// Whether the backend connection ends after this reply (`Connection: close`, HTTP/1.0
    /// without keep-alive, a body read until close, a tunnel, or a request that asked to close).
    /// Always false for interim replies.
    pub closes_connection: bool,
}

impl ReplyHead {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        fields::first_value(&self.headers, name)
    }

    /// 1xx other than 101: another head follows for the same request.
    pub fn is_interim(&self) -> bool {
        is_interim_status(self.status)
    }

    /// The `ETag`, strong or weak, if present and well formed.
    pub fn etag(&self) -> Option<EntityTag> {
        EntityTag::parse(self.header("etag")?)
    }

    /// `Accept-Ranges` lists `bytes`.
    pub fn accepts_byte_ranges(&self) -> bool {
        fields::list_has(&self.headers, "accept-ranges", "bytes")
    }

    /// The `Content-Range` of a 206 reply, if present and well formed.
    pub fn content_range(&self) -> Option<ContentRange> {
        ContentRange::parse(self.header("content-range")?)
    }

    /// The validator that lets a failover resume this reply by Range (invariant I2): a 200 that
    /// accepts byte ranges and carries a strong ETag. `None` means the reply cannot be resumed
    /// and a failover in the middle of it must close the client connection.
    pub fn resume_validator(&self) -> Option<EntityTag> {
        if self.status != 200 || !self.accepts_byte_ranges() {
            return None;
        }
        self.etag().filter(EntityTag::is_strong)
    }
}

fn is_interim_status(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}

/// What the reply framer found in the bytes fed to it (see
/// [`crate::exchange_framer::ReplyEvent`]): `Interim` heads are 1xx (100 Continue, 103 Early
/// Hints, ...), `Framing` covers chunked framing, `Tunnel` the bytes after a 101 or a 2xx to
/// CONNECT.
pub type ReplyEvent = crate::exchange_framer::ReplyEvent<ReplyHead>;

impl ReplyEvent {
    /// The bytes this event accounts for in the tiling of the stream (`None` for `End`).
    pub fn tiled_range(&self) -> Option<Range<u64>> {
        match self {
            ReplyEvent::Interim(head) | ReplyEvent::Head(head) => Some(head.range.clone()),
            ReplyEvent::Body { range, .. }
            | ReplyEvent::Framing { range, .. }
            | ReplyEvent::Tunnel { range }
            | ReplyEvent::Discarded { range } => Some(range.clone()),
            ReplyEvent::End { .. } => None,
        }
    }
}

impl MergeableEvent for ReplyEvent {
    fn try_merge(&mut self, next: &Self) -> bool {
        use crate::exchange_framer::ReplyEvent::{Body, Discarded, Framing, Tunnel};
        let (range, next_range) = match (self, next) {
            (Body { index: a, range }, Body { index: b, range: n })
            | (Framing { index: a, range }, Framing { index: b, range: n })
                if a == b =>
            {
                (range, n)
            }
            (Tunnel { range }, Tunnel { range: n })
            | (Discarded { range }, Discarded { range: n }) => (range, n),
            _ => return false,
        };
        if range.end != next_range.start {
            return false;
        }
        range.end = next_range.end;
        true
    }
}

/// What the framer must know about a request to frame its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExpectedReply {
    to_head: bool,
    to_connect: bool,
    request_closes: bool,
}

#[derive(Debug, Clone)]
enum ReplyState {
    Head,
    Body { remaining: u64 },
    Chunked(ChunkedDecoder),
    UntilClose,
    Closed,
    Tunnel,
}

/// Cuts a backend byte stream into replies, fed incrementally, given the pipelined requests in
/// the order they were sent.
#[derive(Debug, Clone)]
pub struct ResponseFramer {
    limits: FramingLimits,
    position: u64,
    index: u64,
    reply_start: u64,
    /// Where the head being buffered starts: the reply start, or the end of an interim head.
    head_start: u64,
    pending: VecDeque<ExpectedReply>,
    closes_after_current: bool,
    state: ReplyState,
    head: HeadBuffer,
    failed: Option<FramingError>,
}

struct ParsedReply {
    minor_version: u8,
    status: u16,
    reason: String,
    headers: Vec<Header>,
}

fn parse_reply(
    buffer: &[u8],
    limits: &FramingLimits,
) -> Result<ParseOutcome<ParsedReply>, FramingErrorKind> {
    head_buffer::parse_with_room(limits.max_headers, |headers| {
        let mut reply = httparse::Response::new(headers);
        Ok(match reply.parse(buffer)? {
            httparse::Status::Partial => ParseOutcome::Partial,
            httparse::Status::Complete(len) => ParseOutcome::Complete {
                len,
                parsed: ParsedReply {
                    minor_version: reply.version.unwrap_or(1),
                    status: reply.code.unwrap_or(0),
                    reason: reply.reason.unwrap_or_default().to_owned(),
                    headers: fields::owned_headers(reply.headers),
                },
            },
        })
    })
    .map_err(|error| head_buffer::parse_error(error, limits))
}

fn analyse_reply(
    parsed: ParsedReply,
    expected: ExpectedReply,
    index: u64,
    range: Range<u64>,
) -> Result<ReplyHead, FramingErrorKind> {
    let version = HttpVersion::from_minor(parsed.minor_version);
    let headers = parsed.headers;
    let status = parsed.status;
    let body = if is_interim_status(status) {
        ReplyBodyFraming::None
    } else if status == 101 || (expected.to_connect && (200..300).contains(&status)) {
        ReplyBodyFraming::Tunnel
    } else if expected.to_head || status == 204 || status == 304 {
        // RFC 9112 §6.3 rule 1: whatever the length fields say, there is no body.
        ReplyBodyFraming::None
    } else {
        let has_content_length = headers.iter().any(|h| h.is("content-length"));
        let has_transfer_encoding = headers.iter().any(|h| h.is("transfer-encoding"));
        // RFC 9112 lets Transfer-Encoding override Content-Length in a reply, but a backend
        // that sends both is broken or compromised; refusing keeps client and proxy in step.
        if has_content_length && has_transfer_encoding {
            return Err(FramingErrorKind::ContentLengthWithTransferEncoding);
        }
        if has_transfer_encoding && version == HttpVersion::Http10 {
            return Err(FramingErrorKind::TransferEncodingInHttp10);
        }
        match fields::transfer_encoding(&headers)? {
            TransferEncoding::ChunkedFinal => ReplyBodyFraming::Chunked,
            TransferEncoding::OtherFinal => ReplyBodyFraming::UntilClose,
            TransferEncoding::Absent => match fields::content_length(&headers)? {
                Some(length) => ReplyBodyFraming::ContentLength(length),
                None => ReplyBodyFraming::UntilClose,
            },
        }
    };
    let closes_connection = if is_interim_status(status) {
        false
    } else {
        let connection_close = fields::connection_has(&headers, "close");
        let keep_alive = match version {
            HttpVersion::Http11 => !connection_close,
            HttpVersion::Http10 => {
                !connection_close && fields::connection_has(&headers, "keep-alive")
            }
        };
        !keep_alive
            || expected.request_closes
            || matches!(
                body,
                ReplyBodyFraming::UntilClose | ReplyBodyFraming::Tunnel
            )
    };
    Ok(ReplyHead {
        index,
        range,
        version,
        status,
        reason: parsed.reason,
        headers,
        body,
        closes_connection,
    })
}

impl Default for ResponseFramer {
    fn default() -> Self {
        ResponseFramer::new(FramingLimits::default())
    }
}

impl ResponseFramer {
    /// A framer for a stream that starts at offset 0 with the reply to request 0.
    pub fn new(limits: FramingLimits) -> Self {
        ResponseFramer::starting_at(limits, 0, 0)
    }

    /// A framer for a stream whose next byte is at `offset` and starts the reply to request
    /// `index`.
    pub fn starting_at(limits: FramingLimits, offset: u64, index: u64) -> Self {
        ResponseFramer {
            limits,
            position: offset,
            index,
            reply_start: offset,
            head_start: offset,
            pending: VecDeque::new(),
            closes_after_current: false,
            state: ReplyState::Head,
            head: HeadBuffer::new(),
            failed: None,
        }
    }

    /// A framer standing inside the body of a reply to a GET whose earlier bytes it never saw
    /// (another node framed them), where `cut` says: it frames the rest of that reply. `None`
    /// where no body goes on (`Elsewhere`, a length body with nothing left, or a chunk with data
    /// left but no CRLF owed, which no framer reports).
    pub fn inside_body(limits: FramingLimits, cut: BodyCut) -> Option<Self> {
        let state = match cut {
            BodyCut::Length { remaining } if remaining > 0 => ReplyState::Body { remaining },
            BodyCut::Chunk {
                remaining,
                crlf_owed,
            } => ReplyState::Chunked(ChunkedDecoder::at_data_boundary(remaining, crlf_owed)?),
            BodyCut::Length { .. } | BodyCut::Elsewhere => return None,
        };
        let mut framer = ResponseFramer::new(limits);
        framer.expect_reply("GET");
        framer.state = state;
        Some(framer)
    }

    /// Announces the next request sent on this backend connection, by its method (`HEAD`
    /// replies have no body; a 2xx to `CONNECT` opens a tunnel). Call it in sending order,
    /// before feeding the reply's bytes.
    pub fn expect_reply(&mut self, method: &str) {
        self.pending.push_back(ExpectedReply {
            to_head: method == "HEAD",
            to_connect: method == "CONNECT",
            request_closes: false,
        });
    }

    /// Like [`expect_reply`](Self::expect_reply), and also remembers whether the request asked
    /// to close the connection, so the reply's `closes_connection` says so.
    pub fn expect_reply_to(&mut self, request: &RequestHead) {
        self.pending.push_back(ExpectedReply {
            to_head: request.method == "HEAD",
            to_connect: request.method == "CONNECT",
            request_closes: !request.keep_alive,
        });
    }

    /// Requests announced whose reply has not ended yet (including the one being framed).
    pub fn pending_replies(&self) -> usize {
        self.pending.len()
    }

    /// Offset of the next byte to be fed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Index of the request whose reply is being framed (or comes next).
    pub fn current_index(&self) -> u64 {
        self.index
    }

    /// Offset where the reply being framed (or the next one) starts.
    pub fn current_reply_start(&self) -> u64 {
        self.reply_start
    }

    /// Where the bytes fed so far leave the current reply's body.
    pub fn body_cut(&self) -> BodyCut {
        match &self.state {
            ReplyState::Body { remaining } => BodyCut::Length {
                remaining: *remaining,
            },
            ReplyState::Chunked(decoder) => match decoder.data_boundary() {
                Some((remaining, crlf_owed)) => BodyCut::Chunk {
                    remaining,
                    crlf_owed,
                },
                None => BodyCut::Elsewhere,
            },
            _ => BodyCut::Elsewhere,
        }
    }

    /// Whether no byte of an unfinished reply is pending.
    pub fn at_reply_boundary(&self) -> bool {
        matches!(self.state, ReplyState::Head)
            && self.head.is_empty()
            && self.reply_start == self.position
    }

    /// Frames `input`, the next bytes of the backend stream, appending events to `events`.
    ///
    /// On error, the events appended before it remain valid; the framer then refuses every
    /// later call with the same error.
    pub fn feed(&mut self, input: &[u8], events: &mut Vec<ReplyEvent>) -> Result<(), FramingError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.feed_inner(input, events);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    /// The backend closed the connection. Ends a reply read until close; fails when a reply is
    /// incomplete otherwise. Requests still pending simply got no reply
    /// ([`pending_replies`](Self::pending_replies)).
    pub fn finish(&mut self, events: &mut Vec<ReplyEvent>) -> Result<(), FramingError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let inside = match &self.state {
            ReplyState::Head if self.head.is_empty() && self.reply_start == self.position => None,
            ReplyState::Head if self.head.is_empty() => Some("reply (after an interim reply)"),
            ReplyState::Head if self.head.holds_only_empty_lines() => {
                events.push(ReplyEvent::Discarded {
                    range: self.head_start..self.position,
                });
                None
            }
            ReplyState::Head => Some("reply head"),
            ReplyState::Body { .. } | ReplyState::Chunked(_) => Some("reply body"),
            ReplyState::UntilClose => {
                self.end_reply(events);
                None
            }
            ReplyState::Closed | ReplyState::Tunnel => None,
        };
        if let Some(inside) = inside {
            let limits = self.limits;
            let error = match self
                .head
                .syntax_error(|buffer| parse_reply(buffer, &limits))
            {
                Some(kind) => self.error(self.head_start, kind),
                None => self.error(self.position, FramingErrorKind::Truncated { inside }),
            };
            self.failed = Some(error.clone());
            return Err(error);
        }
        if !matches!(self.state, ReplyState::Tunnel) {
            self.state = ReplyState::Closed;
        }
        self.head = HeadBuffer::new();
        Ok(())
    }

    fn error(&self, offset: u64, kind: FramingErrorKind) -> FramingError {
        FramingError {
            side: StreamSide::Reply,
            index: self.index,
            offset,
            kind,
        }
    }

    fn feed_inner(
        &mut self,
        input: &[u8],
        events: &mut Vec<ReplyEvent>,
    ) -> Result<(), FramingError> {
        let first_new = events.len();
        let limits = self.limits;
        let mut rest = input;
        while !rest.is_empty() {
            match &mut self.state {
                ReplyState::Head => {
                    let Some(&expected) = self.pending.front() else {
                        return Err(
                            self.error(self.position, FramingErrorKind::ReplyWithoutRequest)
                        );
                    };
                    if self.head.is_empty() {
                        self.head_start = self.position;
                    }
                    let head_start = self.head_start;
                    let step = self
                        .head
                        .advance(rest, &limits, |buffer| parse_reply(buffer, &limits))
                        .map_err(|kind| self.error(head_start, kind))?;
                    match step {
                        HeadStep::NeedMore => {
                            self.position += rest.len() as u64;
                            rest = &[];
                        }
                        HeadStep::Complete {
                            parsed,
                            head_len,
                            consumed,
                        } => {
                            rest = &rest[consumed..];
                            let range = head_start..head_start + head_len as u64;
                            self.position = range.end;
                            let head = analyse_reply(parsed, expected, self.index, range)
                                .map_err(|kind| self.error(head_start, kind))?;
                            if head.is_interim() {
                                events.push(ReplyEvent::Interim(head));
                                continue;
                            }
                            self.closes_after_current = head.closes_connection;
                            self.state = match head.body {
                                ReplyBodyFraming::None
                                | ReplyBodyFraming::ContentLength(0)
                                | ReplyBodyFraming::Tunnel => ReplyState::Head,
                                ReplyBodyFraming::ContentLength(length) => {
                                    ReplyState::Body { remaining: length }
                                }
                                ReplyBodyFraming::Chunked => {
                                    ReplyState::Chunked(ChunkedDecoder::new())
                                }
                                ReplyBodyFraming::UntilClose => ReplyState::UntilClose,
                            };
                            let tunnel = head.body == ReplyBodyFraming::Tunnel;
                            events.push(ReplyEvent::Head(head));
                            if matches!(self.state, ReplyState::Head) {
                                self.end_reply(events);
                                if tunnel {
                                    self.state = ReplyState::Tunnel;
                                }
                            }
                        }
                    }
                }
                ReplyState::Body { remaining } => {
                    let take = (*remaining).min(rest.len() as u64);
                    *remaining -= take;
                    let done = *remaining == 0;
                    let range = self.position..self.position + take;
                    push_merged(
                        events,
                        first_new,
                        ReplyEvent::Body {
                            index: self.index,
                            range,
                        },
                    );
                    self.position += take;
                    // take <= rest.len()
                    rest = &rest[take as usize..];
                    if done {
                        self.end_reply(events);
                    }
                }
                ReplyState::Chunked(decoder) => {
                    let index = self.index;
                    let consumed = decoder
                        .advance(rest, self.position, &limits, |piece, range| {
                            let event = match piece {
                                ChunkPiece::Data => ReplyEvent::Body { index, range },
                                ChunkPiece::Framing => ReplyEvent::Framing { index, range },
                            };
                            push_merged(events, first_new, event);
                        })
                        .map_err(|(offset, kind)| FramingError {
                            side: StreamSide::Reply,
                            index,
                            offset,
                            kind,
                        })?;
                    let done = decoder.is_done();
                    self.position += consumed as u64;
                    rest = &rest[consumed..];
                    if done {
                        self.end_reply(events);
                    }
                }
                ReplyState::UntilClose => {
                    let range = self.position..self.position + rest.len() as u64;
                    push_merged(
                        events,
                        first_new,
                        ReplyEvent::Body {
                            index: self.index,
                            range,
                        },
                    );
                    self.position += rest.len() as u64;
                    rest = &[];
                }
                ReplyState::Closed | ReplyState::Tunnel => {
                    let range = self.position..self.position + rest.len() as u64;
                    let event = if matches!(self.state, ReplyState::Tunnel) {
                        ReplyEvent::Tunnel { range }
                    } else {
                        ReplyEvent::Discarded { range }
                    };
                    push_merged(events, first_new, event);
                    self.position += rest.len() as u64;
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    fn end_reply(&mut self, events: &mut Vec<ReplyEvent>) {
        events.push(ReplyEvent::End {
            index: self.index,
            range: self.reply_start..self.position,
            closes_connection: self.closes_after_current,
        });
        self.pending.pop_front();
        self.index += 1;
        self.reply_start = self.position;
        self.state = if self.closes_after_current {
            ReplyState::Closed
        } else {
            ReplyState::Head
        };
    }
}
