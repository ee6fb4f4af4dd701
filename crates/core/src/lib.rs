//! Deterministic cores of Steadfast.
//!
//! Nothing in this crate performs I/O or reads a clock: state machines take events and the
//! current time (`Duration` since an arbitrary origin) as input and return actions. The I/O
//! shells live in `steadfast-os` and `steadfast` (the node binary).

pub mod config;
pub mod election;
pub mod frame;
pub mod http;
pub mod image;
pub mod protocol;
pub mod replica;
pub mod replication;

pub use protocol::{Message, NodeId, Role};
