//! HTTP/1.1 stream framing for the duplex proxy.
//!
//! The proxy must know exactly which client bytes make up request k and which backend bytes make
//! up its reply (to replay unanswered requests after a failover, to log whole replies, to trim
//! memory), yet it must never hold a whole body in memory: bodies can be any size. So the framers
//! here are fed the byte streams incrementally, in pieces of any size, and answer with events
//! that carry **absolute stream offsets** (byte 0 is the first byte of the stream, or the offset
//! given to `starting_at`). Only heads (start line and header fields, bounded by
//! [`FramingLimits`]) are copied; body bytes are reported as ranges and never stored.
//!
//! Every byte fed is accounted for by exactly one range among the events `Head`, `Body`,
//! `Framing`, `Tunnel` and `Discarded` (and `Interim` for replies), in stream order, so the
//! ranges of those events tile the stream without gap or overlap. `End` events carry the span of
//! the whole message, which overlaps the others by design.
//!
//! The request framer refuses the shapes that let two parsers disagree on where a request ends
//! (request smuggling): Content-Length together with Transfer-Encoding, differing
//! Content-Lengths, a Transfer-Encoding whose final coding is not a single `chunked`, malformed
//! chunk sizes, bare LF or whitespace tricks in chunk framing. The proxy hands such a request to
//! the server as the client sent it, on a connection of its own, and passes on the server's
//! answer; it answers 400 itself only when the server gives none.
//! Heads are forwarded to the backend re-encoded from their parsed form
//! ([`RequestHead::encode_for_backend`]), so a head that the lenient head parser accepted (bare LF
//! line ends, for example) reaches the backend in canonical form and cannot be read differently
//! there.

mod chunked;
mod exchange;
mod fields;
mod framer;
mod head_buffer;
mod request;
mod response;
mod resume;

pub use fields::{ContentRange, EntityTag, Header};
pub use framer::Http1;
pub use request::{
    InvalidRequestId, RequestBodyFraming, RequestEvent, RequestFramer, RequestHead, RequestId,
    REQUEST_ID_HEADER,
};
pub use response::{BodyCut, ReplyBodyFraming, ReplyEvent, ReplyHead, ResponseFramer};
pub use resume::{
    ContinuationError, CutFraming, CutPoint, NotResumable, ReplyContinuation, StreamedReply,
};

use std::fmt;

/// The protocol version of a message head. HTTP/0.9 and HTTP/2+ are not framed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http10,
    Http11,
}

impl HttpVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "HTTP/1.0",
            HttpVersion::Http11 => "HTTP/1.1",
        }
    }

    fn from_minor(minor: u8) -> HttpVersion {
        if minor == 0 {
            HttpVersion::Http10
        } else {
            HttpVersion::Http11
        }
    }
}

impl fmt::Display for HttpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bounds on what a framer copies into memory. Bodies are never copied, so they have no bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingLimits {
    /// Longest head (start line, header fields and the blank line) accepted.
    pub max_head_bytes: usize,
    /// Most header fields in one head.
    pub max_headers: usize,
    /// Longest chunk-size line (size, extensions, CRLF).
    pub max_chunk_line_bytes: usize,
    /// Longest trailer section of a chunked body (trailer fields and the final CRLF).
    pub max_trailer_bytes: usize,
    /// Most bytes of empty lines tolerated before a start line (RFC 9112 §2.2 asks a server to
    /// ignore at least one; some clients send a stray CRLF after a POST body).
    pub max_leading_empty_line_bytes: usize,
}

impl Default for FramingLimits {
    fn default() -> Self {
        FramingLimits {
            // Far above what servers accept or send by default (nginx: 4 buffers of 8 KiB;
            // apache2: 100 fields of 8 KiB), so that the server, not the proxy, decides what a
            // request too large gets: the proxy must not be seen.
            max_head_bytes: 1024 * 1024,
            max_headers: 10_000,
            max_chunk_line_bytes: 4096,
            max_trailer_bytes: 16 * 1024,
            max_leading_empty_line_bytes: 64,
        }
    }
}

/// Which byte stream a framing error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSide {
    /// Client to backend.
    Request,
    /// Backend to client.
    Reply,
}

impl fmt::Display for StreamSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamSide::Request => "request",
            StreamSide::Reply => "reply",
        })
    }
}

/// A stream that cannot be framed safely. Once a framer returns one, it returns the same error
/// for every later call: the stream has no trustworthy boundary after that point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{side} {index} at stream offset {offset}: {kind}")]
pub struct FramingError {
    pub side: StreamSide,
    /// Index of the message (request k, or the reply to request k) being framed.
    pub index: u64,
    /// Absolute stream offset: the offending byte for chunk framing errors, the first byte of
    /// the head for errors found in a head, the end of the stream for truncation.
    pub offset: u64,
    pub kind: FramingErrorKind,
}

/// What was wrong; see [`FramingError`] for where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingErrorKind {
    #[error("malformed head: {0}")]
    MalformedHead(&'static str),
    #[error("head longer than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("more than {limit} bytes of empty lines before the start line")]
    TooManyEmptyLines { limit: usize },
    #[error("both Content-Length and Transfer-Encoding (request smuggling shape)")]
    ContentLengthWithTransferEncoding,
    #[error("Content-Length values differ: {first} and {second} (request smuggling shape)")]
    ConflictingContentLengths { first: u64, second: u64 },
    #[error("invalid Content-Length value {value:?}")]
    InvalidContentLength { value: String },
    #[error("Transfer-Encoding {value:?} does not end in a single chunked coding")]
    UnsupportedTransferEncoding { value: String },
    #[error("Transfer-Encoding in an HTTP/1.0 message (framing would be ambiguous)")]
    TransferEncodingInHttp10,
    #[error("invalid chunk size line: {reason}")]
    InvalidChunkSize { reason: &'static str },
    #[error("chunk size line longer than {limit} bytes")]
    ChunkLineTooLong { limit: usize },
    #[error("chunk data not followed by CRLF")]
    MissingChunkDataCrlf,
    #[error("invalid trailer section: {reason}")]
    InvalidTrailer { reason: &'static str },
    #[error("trailer section longer than {limit} bytes")]
    TrailerTooLarge { limit: usize },
    #[error("reply bytes arrived while no request was waiting for a reply")]
    ReplyWithoutRequest,
    #[error("stream ended inside the {inside}")]
    Truncated { inside: &'static str },
}

/// Events whose ranges can be merged with a contiguous successor of the same kind.
trait MergeableEvent: Sized {
    /// Extends `self` by `next` when both are body (or both framing, ...) ranges of the same
    /// message and `next` starts where `self` ends; returns whether it did.
    fn try_merge(&mut self, next: &Self) -> bool;
}

/// Appends `event` to `events`, merging it into the previous event when possible. Only events
/// pushed during the current call (at index `first_new` or later) are merged, so a caller's
/// older events are never changed.
fn push_merged<E: MergeableEvent>(events: &mut Vec<E>, first_new: usize, event: E) {
    if events.len() > first_new {
        if let Some(last) = events.last_mut() {
            if last.try_merge(&event) {
                return;
            }
        }
    }
    events.push(event);
}
