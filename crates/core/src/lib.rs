//! Deterministic cores of Steadfast.
//!
//! Nothing in this crate performs I/O or reads a clock: state machines take events and the
//! current time (`Duration` since an arbitrary origin) as input and return actions. The I/O
//! shells live in `steadfast-os` and `steadfast` (the node binary).

pub mod active_executor;
pub mod active_liveness;
pub mod active_order;
pub mod active_rebuild;
pub mod active_session_setup;
pub mod active_takeover;
pub mod active_wire;
pub mod client_timer;
pub mod config;
pub mod election;
pub mod election_messages;
pub mod exchange_framer;
pub mod heartbeat_wire;
pub mod http;
pub mod image;
pub mod interface_manager;
pub mod latency;
pub mod link_monitor;
pub mod redis_commands;
pub mod redis_effects;
pub mod redis_snapshot;
pub mod relay_agent;
pub mod relay_wire;
pub mod replication_seal;
pub mod replication_wire;
pub mod reply_compare;
pub mod reply_log;
pub mod reply_outbox;
pub mod request_ledger;
pub mod resp;
pub mod resp_request;
pub mod resp_stream;
pub mod resp_value;
pub mod signed_datagram;
pub mod stream_framer;

pub use election_messages::{Message, NodeId, Role};
