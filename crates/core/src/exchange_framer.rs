//! What the duplex proxy needs to know of the protocol a service speaks, beyond what the reply
//! log asks of a [`StreamFramer`]: where each request and each reply begins and ends in the two
//! byte streams of a connection, how a request goes to the backend, how a reply cut by a
//! takeover is finished, and the few replies the proxy gives of its own.
//!
//! The proxy (`node::plane::proxy`) works on the events of this module: ranges of absolute
//! stream offsets, tiling each stream in order, with the heads of requests and replies as the
//! protocol's own types, read only through [`RequestHeadView`] and [`ReplyHeadView`]. A
//! protocol fits beside HTTP/1.x ([`crate::http::Http1`], the first) by implementing
//! [`ExchangeFramer`]; the proxy, its reply gate and the takeover do not change.

use std::fmt::{Debug, Display};
use std::ops::Range;

use crate::stream_framer::StreamFramer;

/// What a request framer found in the client's bytes.
///
/// `Head`, `Body`, `Framing`, `Tunnel` and `Discarded` ranges tile the stream in order; `End`
/// gives the span of a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestEvent<Head> {
    Head(Head),
    /// Payload bytes of request `index`.
    Body {
        index: u64,
        range: Range<u64>,
    },
    /// Framing bytes of request `index` that are not payload (HTTP: chunk size lines, CRLFs,
    /// the last chunk, trailers).
    Framing {
        index: u64,
        range: Range<u64>,
    },
    /// Request `index` is complete; `range` is every byte of it, head first. The ranges of
    /// consecutive `End`s are contiguous.
    End {
        index: u64,
        range: Range<u64>,
    },
    /// Opaque bytes after a request that switched the connection to another protocol.
    Tunnel {
        range: Range<u64>,
    },
    /// Bytes no request will be executed from (after a request that closes the connection).
    Discarded {
        range: Range<u64>,
    },
}

/// What a reply framer found in the backend's bytes.
///
/// `Interim`, `Head`, `Body`, `Framing`, `Tunnel` and `Discarded` ranges tile the stream in
/// order; `End` gives the span of a whole reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEvent<Head> {
    /// A head that precedes the final reply to the same request (HTTP: 1xx).
    Interim(Head),
    /// The final head of the reply to request `head.index()`.
    Head(Head),
    /// Payload bytes.
    Body { index: u64, range: Range<u64> },
    /// Framing bytes that are not payload.
    Framing { index: u64, range: Range<u64> },
    /// The reply to request `index` is complete; `range` is every byte of it, interim heads
    /// included. `closes_connection`: the backend connection carries nothing after it.
    End {
        index: u64,
        range: Range<u64>,
        closes_connection: bool,
    },
    /// Bytes after a reply that switched the connection to another protocol.
    Tunnel { range: Range<u64> },
    /// Bytes after a reply that closed the connection: not part of any reply.
    Discarded { range: Range<u64> },
}

/// What the proxy reads of a request head.
pub trait RequestHeadView: Clone + Debug + Send + Sync {
    /// The request's place on its connection (0 for the first).
    fn index(&self) -> u64;
    /// The head's bytes in the client stream.
    fn range(&self) -> Range<u64>;
    /// The client lets the connection carry another request after this one.
    fn keep_alive(&self) -> bool;
    /// Sending it twice has the effect of sending it once: it may go again on a fresh backend
    /// connection when the one it went on closed before any byte of its reply.
    fn is_idempotent(&self) -> bool;
}

/// What the proxy reads of a reply head.
pub trait ReplyHeadView: Clone + Debug + Send + Sync {
    /// The request this head answers.
    fn index(&self) -> u64;
    /// The head's bytes in the backend stream.
    fn range(&self) -> Range<u64>;
    /// The payload length the head announces, when it announces one: a reply longer than the
    /// proxy holds whole is streamed from its first byte.
    fn declared_length(&self) -> Option<u64>;
}

/// A framing error: the stream has no trustworthy boundary after it.
pub trait ExchangeError: std::error::Error + Clone + Send + Sync + 'static {
    /// The request (or the reply to the request) in which it was found.
    fn request_index(&self) -> u64;
}

/// Frames a client stream into requests, fed in pieces of any size.
pub trait RequestStream<Head, Error>: Send {
    fn feed(&mut self, bytes: &[u8], events: &mut Vec<RequestEvent<Head>>) -> Result<(), Error>;
    /// The client finished its stream.
    fn finish(&mut self, events: &mut Vec<RequestEvent<Head>>) -> Result<(), Error>;
    /// The request being framed (or the next one).
    fn current_index(&self) -> u64;
    /// Every byte fed so far belongs to complete requests.
    fn at_request_boundary(&self) -> bool;
    /// A request has begun and its head is not complete yet (the client's header timeout).
    fn reading_a_head(&self) -> bool;
}

/// Frames a backend stream into replies, fed in pieces of any size.
pub trait ReplyStream<RequestHead, Head, Error>: Send {
    /// Announces the next request sent on this connection, in sending order, before the bytes
    /// of its reply are fed.
    fn expect_reply_to(&mut self, request: &RequestHead);
    /// Announces a request the request framer could not frame, sent as the client's `bytes`.
    fn expect_reply_to_unframed(&mut self, bytes: &[u8]);
    fn feed(&mut self, bytes: &[u8], events: &mut Vec<ReplyEvent<Head>>) -> Result<(), Error>;
    /// The backend closed its stream.
    fn finish(&mut self, events: &mut Vec<ReplyEvent<Head>>) -> Result<(), Error>;
    /// Every byte fed so far belongs to complete replies, and none is announced.
    fn at_reply_boundary(&self) -> bool;
}

/// Turns the backend's answer to a resume request into the rest of the reply a takeover cut,
/// in the client's framing.
pub trait ReplyFinisher<Head>: Send {
    type Error: Display;
    fn head(&mut self, head: &Head) -> Result<(), Self::Error>;
    fn payload(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Self::Error>;
    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), Self::Error>;
}

/// A reply the proxy gives of its own, as the server would: each ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnReply<'a> {
    /// The request cannot be framed, and the server did not answer it.
    Malformed { detail: &'a str },
    /// The client did not finish a request head in time.
    HeadTimeout { detail: &'a str },
    /// The backend could not be reached, or failed before its reply began.
    BackendUnreachable { detail: &'a str },
}

/// The protocol knowledge of the duplex proxy: both streams framed into exchanges.
pub trait ExchangeFramer: StreamFramer {
    type RequestHead: RequestHeadView;
    type ReplyHead: ReplyHeadView;
    type Error: ExchangeError;
    type Requests: RequestStream<Self::RequestHead, Self::Error>;
    type Replies: ReplyStream<Self::RequestHead, Self::ReplyHead, Self::Error>;
    type Finisher: ReplyFinisher<Self::ReplyHead>;

    /// A framer of a client stream whose byte `offset` begins request `index`.
    fn requests_from(&self, offset: u64, index: u64) -> Self::Requests;
    /// A framer of a new backend connection's stream.
    fn replies(&self) -> Self::Replies;
    /// The bytes that carry `head` to the backend, naming request `head.index()` of connection
    /// `connection_id` the same way on every node (invariant I3). The request's body follows as
    /// the client sent it.
    fn encode_request(&self, head: &Self::RequestHead, connection_id: u64) -> Vec<u8>;
    /// The request that asks the backend for the rest of the reply to `head` after `cut`, and
    /// what turns its answer into that rest; `None` when the request cannot ask for it.
    fn resume_request(
        &self,
        head: &Self::RequestHead,
        connection_id: u64,
        cut: &Self::ResumePoint,
    ) -> Option<(Vec<u8>, Self::Finisher)>;
    /// The bytes of a reply of the proxy's own.
    fn own_reply(&self, reply: OwnReply<'_>) -> Vec<u8>;
}
