//! Framing of the client byte stream into requests.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use super::chunked::{ChunkPiece, ChunkedDecoder};
use super::fields::{self, EntityTag, Header, TransferEncoding};
use super::head_buffer::{self, HeadBuffer, HeadStep, ParseOutcome};
use super::{
    push_merged, FramingError, FramingErrorKind, FramingLimits, HttpVersion, MergeableEvent,
    StreamSide,
};

/// The header that carries a request's stable id to the backend (invariant I3).
pub const REQUEST_ID_HEADER: &str = "Steadfast-Request-Id";

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBodyFraming {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    ContentLength(u64),
    Chunked,
}

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Index of the request on its connection, from 0 (or from `starting_at`'s index).
    pub index: u64,
    /// Stream range of the head as the client sent it, including empty lines before the
    /// request line and the blank line that ends the head.
    pub range: Range<u64>,
    pub method: String,
    pub target: String,
    pub version: HttpVersion,
    /// In the order received, values with surrounding whitespace removed.
    pub headers: Vec<Header>,
    pub body: RequestBodyFraming,
    /// Whether the connection may carry another request after this one (HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request: the client may wait for a 100 before it
    /// sends the body.
    pub expects_continue: bool,
    /// The request asks for a protocol switch (`Upgrade` listed in `Connection`). The stream
    /// becomes a tunnel only if the backend answers 101: call
    /// [`RequestFramer::switch_to_tunnel`] then.
    pub wants_upgrade: bool,
}

impl RequestHead {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        fields::first_value(&self.headers, name)
    }

    /// The head to send to the backend: re-encoded in canonical form (CRLF line ends, one space
    /// after each colon), every client-supplied `Steadfast-Request-Id` removed and ours added
    /// last. The body bytes that follow are forwarded as they are in the client stream, from
    /// `range.end`.
    pub fn encode_for_backend(&self, id: &RequestId) -> Vec<u8> {
        self.encode_with(id, &[], &[])
    }

    /// The head that asks the backend for the rest of a reply after a failover in the middle of
    /// it (invariant I2): the same request with `Range: bytes=<resume_from>-` and `If-Range:
    /// <etag>`, so the backend sends the remainder only if the representation is unchanged
    /// (206), and the whole of it otherwise (200). `resume_from` counts payload bytes (after
    /// removing chunked framing). `None` when the rule does not allow a resume: not a GET, a
    /// weak ETag, or a request that already carried `Range` or `If-Range`.
    pub fn encode_resume_request(
        &self,
        id: &RequestId,
        resume_from: u64,
        etag: &EntityTag,
    ) -> Option<Vec<u8>> {
        if self.resume_refusal().is_some() || !etag.is_strong() {
            return None;
        }
        let range = format!("bytes={resume_from}-");
        let validator = etag.to_field_value();
        Some(self.encode_with(
            id,
            &["range", "if-range"],
            &[("Range", range.as_bytes()), ("If-Range", &validator)],
        ))
    }

    /// Whether sending the request twice has the effect of sending it once (RFC 9110 §9.2.2):
    /// such a request may be sent again on a fresh connection when the one it went on closed
    /// before any byte of its reply.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }

    /// Why a reply to this request could not be resumed by range, if it could not.
    pub fn resume_refusal(&self) -> Option<&'static str> {
        if self.method != "GET" {
            Some("only a GET is repeated with a range")
        } else if self.header("range").is_some() || self.header("if-range").is_some() {
            Some("the request already carries Range or If-Range")
        } else {
            None
        }
    }

    fn encode_with(&self, id: &RequestId, drop: &[&str], add: &[(&str, &[u8])]) -> Vec<u8> {
        let length = self.range.end - self.range.start;
        let mut out = Vec::with_capacity(usize::try_from(length).unwrap_or(0) + 64);
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.version.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
        for header in &self.headers {
            if header.is(REQUEST_ID_HEADER) || drop.iter().any(|name| header.is(name)) {
                continue;
            }
            fields::encode_field(&mut out, &header.name, &header.value);
        }
        for (name, value) in add {
            fields::encode_field(&mut out, name, value);
        }
        fields::encode_field(&mut out, REQUEST_ID_HEADER, id.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// The stable id of a request: the connection's id and the request's index on it. A request
/// replayed after a failover keeps both, so the backend sees the same id (invariant I3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId {
    pub connection: u64,
    pub index: u64,
}

impl RequestId {
    pub fn new(connection: u64, index: u64) -> Self {
        RequestId { connection, index }
    }
}

/// `<connection as 16 hex digits>-<index in decimal>`.
impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.connection, self.index)
    }
}

/// A string that is not `<16 hex digits>-<decimal>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request id {0:?}: expected <16 hex digits>-<decimal index>")]
pub struct InvalidRequestId(pub String);

impl FromStr for RequestId {
    type Err = InvalidRequestId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRequestId(s.to_owned());
        let (connection, index) = s.split_once('-').ok_or_else(invalid)?;
        if connection.len() != 16
            || !connection.bytes().all(|b| b.is_ascii_hexdigit())
            || index.is_empty()
            || !index.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid());
        }
        Ok(RequestId {
            connection: u64::from_str_radix(connection, 16).map_err(|_| invalid())?,
            index: index.parse().map_err(|_| invalid())?,
        })
    }
}

/// What the request framer found in the bytes fed to it (see
/// [`crate::exchange_framer::RequestEvent`]): `Tunnel` covers the bytes after a CONNECT request
/// or after [`RequestFramer::switch_to_tunnel`], `Discarded` those after a request that closes
/// the connection, or empty lines at the end of the stream.
pub type RequestEvent = crate::exchange_framer::RequestEvent<RequestHead>;

impl RequestEvent {
    /// The bytes this event accounts for in the tiling of the stream (`None` for `End`).
    pub fn tiled_range(&self) -> Option<Range<u64>> {
        match self {
            RequestEvent::Head(head) => Some(head.range.clone()),
            RequestEvent::Body { range, .. }
            | RequestEvent::Framing { range, .. }
            | RequestEvent::Tunnel { range }
            | RequestEvent::Discarded { range } => Some(range.clone()),
            RequestEvent::End { .. } => None,
        }
    }
}

impl MergeableEvent for RequestEvent {
    fn try_merge(&mut self, next: &Self) -> bool {
        use crate::exchange_framer::RequestEvent::{Body, Discarded, Framing, Tunnel};
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

#[derive(Debug)]
enum RequestState {
    Head,
    Body { remaining: u64 },
    Chunked(ChunkedDecoder),
    Closed,
    Tunnel,
}

/// What follows the current request once it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterRequest {
    NextRequest,
    Close,
    Tunnel,
}

/// Cuts a client byte stream into requests, fed incrementally.
#[derive(Debug)]
pub struct RequestFramer {
    limits: FramingLimits,
    position: u64,
    index: u64,
    request_start: u64,
    after_current: AfterRequest,
    state: RequestState,
    head: HeadBuffer,
    failed: Option<FramingError>,
}

struct ParsedRequest {
    method: String,
    target: String,
    minor_version: u8,
    headers: Vec<Header>,
}

fn parse_request(
    buffer: &[u8],
    limits: &FramingLimits,
) -> Result<ParseOutcome<ParsedRequest>, FramingErrorKind> {
    head_buffer::parse_with_room(limits.max_headers, |headers| {
        let mut request = httparse::Request::new(headers);
        Ok(match request.parse(buffer)? {
            httparse::Status::Partial => ParseOutcome::Partial,
            httparse::Status::Complete(len) => ParseOutcome::Complete {
                len,
                parsed: ParsedRequest {
                    method: request.method.unwrap_or_default().to_owned(),
                    target: request.path.unwrap_or_default().to_owned(),
                    minor_version: request.version.unwrap_or(1),
                    headers: fields::owned_headers(request.headers),
                },
            },
        })
    })
    .map_err(|error| head_buffer::parse_error(error, limits))
}

fn analyse_request(
    parsed: ParsedRequest,
    index: u64,
    range: Range<u64>,
) -> Result<RequestHead, FramingErrorKind> {
    let version = HttpVersion::from_minor(parsed.minor_version);
    let headers = parsed.headers;
    let has_content_length = headers.iter().any(|h| h.is("content-length"));
    let has_transfer_encoding = headers.iter().any(|h| h.is("transfer-encoding"));
    if has_content_length && has_transfer_encoding {
        return Err(FramingErrorKind::ContentLengthWithTransferEncoding);
    }
    if has_transfer_encoding && version == HttpVersion::Http10 {
        return Err(FramingErrorKind::TransferEncodingInHttp10);
    }
    let body = match fields::transfer_encoding(&headers)? {
        TransferEncoding::ChunkedFinal => RequestBodyFraming::Chunked,
        // A request body that is not chunked last has no knowable end (RFC 9112 §6.3).
        TransferEncoding::OtherFinal => {
            return Err(FramingErrorKind::UnsupportedTransferEncoding {
                value: headers
                    .iter()
                    .filter(|h| h.is("transfer-encoding"))
                    .map(|h| String::from_utf8_lossy(&h.value).into_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
        TransferEncoding::Absent => match fields::content_length(&headers)? {
            Some(length) => RequestBodyFraming::ContentLength(length),
            None => RequestBodyFraming::None,
        },
    };
    let closes = fields::connection_has(&headers, "close");
    let keep_alive = match version {
        HttpVersion::Http11 => !closes,
        HttpVersion::Http10 => !closes && fields::connection_has(&headers, "keep-alive"),
    };
    // RFC 9110 §10.1.1: an HTTP/1.0 client cannot wait for a 100, so the expectation is ignored.
    let expects_continue = version == HttpVersion::Http11
        && fields::first_value(&headers, "expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let wants_upgrade =
        fields::connection_has(&headers, "upgrade") && headers.iter().any(|h| h.is("upgrade"));
    Ok(RequestHead {
        index,
        range,
        method: parsed.method,
        target: parsed.target,
        version,
        headers,
        body,
        keep_alive,
        expects_continue,
        wants_upgrade,
    })
}

impl Default for RequestFramer {
    fn default() -> Self {
        RequestFramer::new(FramingLimits::default())
    }
}

impl RequestFramer {
    /// A framer for a stream that starts at offset 0 with request 0.
    pub fn new(limits: FramingLimits) -> Self {
        RequestFramer::starting_at(limits, 0, 0)
    }

    /// A framer for a stream whose next byte is at `offset` and starts request `index`: to
    /// resume framing at a request boundary after older bytes were trimmed.
    pub fn starting_at(limits: FramingLimits, offset: u64, index: u64) -> Self {
        RequestFramer {
            limits,
            position: offset,
            index,
            request_start: offset,
            after_current: AfterRequest::NextRequest,
            state: RequestState::Head,
            head: HeadBuffer::new(),
            failed: None,
        }
    }

    /// Offset of the next byte to be fed: every byte before it has been accounted for.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Index of the request being framed (or of the next one, between requests).
    pub fn current_index(&self) -> u64 {
        self.index
    }

    /// Offset where the request being framed (or the next one) starts.
    pub fn current_request_start(&self) -> u64 {
        self.request_start
    }

    /// Whether the framer is between requests: no byte of an unfinished request is pending.
    pub fn at_request_boundary(&self) -> bool {
        matches!(self.state, RequestState::Head) && self.head.is_empty()
    }

    /// Whether a request head has begun (some of its bytes came) and is not complete yet.
    pub fn reading_a_head(&self) -> bool {
        matches!(self.state, RequestState::Head) && !self.head.is_empty()
    }

    /// After the backend accepted a protocol switch (101) for the last request: every later
    /// client byte is opaque tunnel data.
    pub fn switch_to_tunnel(&mut self) {
        self.state = RequestState::Tunnel;
    }

    /// Frames `input`, the next bytes of the client stream, appending events to `events`.
    ///
    /// On error, the events appended before it remain valid (earlier pipelined requests are
    /// intact); the framer then refuses every later call with the same error.
    pub fn feed(
        &mut self,
        input: &[u8],
        events: &mut Vec<RequestEvent>,
    ) -> Result<(), FramingError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.feed_inner(input, events);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    /// The client closed its sending side (or the stream is otherwise over). Fails when a
    /// request is incomplete; trailing empty lines are reported as `Discarded`.
    pub fn finish(&mut self, events: &mut Vec<RequestEvent>) -> Result<(), FramingError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let inside = match &self.state {
            RequestState::Head if self.head.is_empty() => None,
            RequestState::Head if self.head.holds_only_empty_lines() => {
                events.push(RequestEvent::Discarded {
                    range: self.request_start..self.position,
                });
                None
            }
            RequestState::Head => Some("request head"),
            RequestState::Body { .. } | RequestState::Chunked(_) => Some("request body"),
            RequestState::Closed | RequestState::Tunnel => None,
        };
        if let Some(inside) = inside {
            let limits = self.limits;
            let error = match self
                .head
                .syntax_error(|buffer| parse_request(buffer, &limits))
            {
                Some(kind) => self.error(self.request_start, kind),
                None => self.error(self.position, FramingErrorKind::Truncated { inside }),
            };
            self.failed = Some(error.clone());
            return Err(error);
        }
        if !matches!(self.state, RequestState::Tunnel) {
            self.state = RequestState::Closed;
        }
        self.head = HeadBuffer::new();
        self.request_start = self.position;
        Ok(())
    }

    fn error(&self, offset: u64, kind: FramingErrorKind) -> FramingError {
        FramingError {
            side: StreamSide::Request,
            index: self.index,
            offset,
            kind,
        }
    }

    fn feed_inner(
        &mut self,
        input: &[u8],
        events: &mut Vec<RequestEvent>,
    ) -> Result<(), FramingError> {
        let first_new = events.len();
        let limits = self.limits;
        let mut rest = input;
        while !rest.is_empty() {
            match &mut self.state {
                RequestState::Head => {
                    let step = self
                        .head
                        .advance(rest, &limits, |buffer| parse_request(buffer, &limits))
                        .map_err(|kind| self.error(self.request_start, kind))?;
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
                            let range = self.request_start..self.request_start + head_len as u64;
                            self.position = range.end;
                            let head = analyse_request(parsed, self.index, range)
                                .map_err(|kind| self.error(self.request_start, kind))?;
                            self.start_body(&head);
                            events.push(RequestEvent::Head(head));
                            if matches!(self.state, RequestState::Head) {
                                self.end_request(events);
                            }
                        }
                    }
                }
                RequestState::Body { remaining } => {
                    let take = (*remaining).min(rest.len() as u64);
                    *remaining -= take;
                    let done = *remaining == 0;
                    let range = self.position..self.position + take;
                    push_merged(
                        events,
                        first_new,
                        RequestEvent::Body {
                            index: self.index,
                            range,
                        },
                    );
                    self.position += take;
                    // take <= rest.len()
                    rest = &rest[take as usize..];
                    if done {
                        self.end_request(events);
                    }
                }
                RequestState::Chunked(decoder) => {
                    let index = self.index;
                    let consumed = decoder
                        .advance(rest, self.position, &limits, |piece, range| {
                            let event = match piece {
                                ChunkPiece::Data => RequestEvent::Body { index, range },
                                ChunkPiece::Framing => RequestEvent::Framing { index, range },
                            };
                            push_merged(events, first_new, event);
                        })
                        .map_err(|(offset, kind)| FramingError {
                            side: StreamSide::Request,
                            index,
                            offset,
                            kind,
                        })?;
                    let done = decoder.is_done();
                    self.position += consumed as u64;
                    rest = &rest[consumed..];
                    if done {
                        self.end_request(events);
                    }
                }
                RequestState::Closed | RequestState::Tunnel => {
                    let range = self.position..self.position + rest.len() as u64;
                    let event = if matches!(self.state, RequestState::Tunnel) {
                        RequestEvent::Tunnel { range }
                    } else {
                        RequestEvent::Discarded { range }
                    };
                    push_merged(events, first_new, event);
                    self.position += rest.len() as u64;
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    /// Sets the state for the body of `head` (stays `Head` when there is none) and what follows.
    fn start_body(&mut self, head: &RequestHead) {
        self.after_current = if head.method == "CONNECT" {
            AfterRequest::Tunnel
        } else if head.keep_alive {
            AfterRequest::NextRequest
        } else {
            AfterRequest::Close
        };
        self.state = match head.body {
            RequestBodyFraming::None | RequestBodyFraming::ContentLength(0) => RequestState::Head,
            RequestBodyFraming::ContentLength(length) => RequestState::Body { remaining: length },
            RequestBodyFraming::Chunked => RequestState::Chunked(ChunkedDecoder::new()),
        };
    }

    fn end_request(&mut self, events: &mut Vec<RequestEvent>) {
        events.push(RequestEvent::End {
            index: self.index,
            range: self.request_start..self.position,
        });
        self.index += 1;
        self.request_start = self.position;
        self.state = match self.after_current {
            AfterRequest::NextRequest => RequestState::Head,
            AfterRequest::Close => RequestState::Closed,
            AfterRequest::Tunnel => RequestState::Tunnel,
        };
    }
}
