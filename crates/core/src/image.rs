//! The connection image: what the backup knows about each client connection, built only from the
//! client frames its ingress logger saw (duplex mode, docs/design.md "The connection image").
//!
//! Three layers, all pure:
//! - [`parse_client_frame`] turns a raw Ethernet frame, as an `AF_PACKET` socket delivers it, into
//!   a [`ClientSegment`] or a typed [`FrameDrop`]; [`tcp_checksum_fixup`] rewrites the TCP
//!   checksum of a frame before it is re-sent (frames from a veth may carry a partial one).
//! - [`ConnectionImage`] follows one connection: handshake, the reassembled client byte stream,
//!   the client's view of the reply stream (its ACK, window, timestamp echo), FIN and RST.
//! - [`ConnectionTable`] routes segments to images by 4-tuple, opens and closes them, bounds their
//!   memory and counts what happened.
//!
//! The rule that ties them to invariant I1: a segment is forwarded to the primary only when the
//! image holds every byte it carries. [`ConnectionTable::ingest`] returns `Err` exactly when the
//! frame must not be forwarded.

mod clock;
mod connection;
mod handover;
mod probe;
mod segment;
mod syn_replay;
mod table;
mod unadopted;

pub use clock::{rebuilt_tsval, TIMESTAMP_MARGIN_MS};
pub use connection::{
    ConnectionImage, ConsumeError, ImageCounters, ImageLimits, NegotiatedOptions, RefuseReason,
    RestoreError, RestoreParams, SegmentReport, WindowScales, DEFAULT_MSS,
};
pub use handover::{handover, Handover, HandoverStep, HandoverWait, SessionStreams, SocketStreams};
pub use probe::AckProbe;
pub use segment::{
    parse_client_frame, tcp_checksum_fixup, tcp_checksum_is_valid, ClientSegment, FourTuple,
    FrameDrop, TcpFlags, TcpOptions, Timestamps, ETHERNET_HEADER_LEN,
};
pub use syn_replay::ReplayedSyn;
pub use table::{
    Closure, ConnectionTable, Ingested, OpenedCheck, TableCounters, TableError, TableLimits,
    Tracking,
};
pub use unadopted::UnadoptedConnection;
