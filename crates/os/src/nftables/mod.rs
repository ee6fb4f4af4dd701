//! nf_tables over netlink, from this process: Steadfast's dead-man switch, ingress guard and
//! the lab's partitions write their tables with it, and `steadfast status --ruleset` reads
//! them back. No `nft` program, no libnftnl.
//!
//! The messages are netlink-packet-netfilter's (tables, chains, rules, sets, set elements,
//! generation; the meta, payload, cmp, lookup and immediate expressions). Written here, small
//! and typed, is only what that crate lacks:
//! - the transport and batch framing ([`NftSocket`]): NFNL_MSG_BATCH_BEGIN / END around a
//!   transaction, an acknowledgement asked for and read for every change, the extended ack;
//! - the counter, objref, dynset and fwd expressions' attributes (`expr.rs`);
//! - named objects (counters): creating one, reading its count ([`NftSocket::counter`]);
//! - a model of what Steadfast writes and reads ([`model`]), nft's phrases as expressions
//!   ([`RuleBuilder`]), and nft's syntax for what the kernel holds ([`render`]).
//!
//! Attribute numbers are the kernel's uapi `linux/netfilter/nf_tables.h`.

mod batch;
mod build;
mod decode;
mod expr;
pub mod model;
pub mod render;
mod socket;

use std::time::Duration;

pub use batch::Batch;
pub use build::{AddressField, PortMatch, RuleBuilder};
pub use model::{
    Chain, CmpOp, Counter, DynsetOp, Family, Hook, Rule, Ruleset, Set, SetElement, SetRef, Table,
    Verdict,
};
pub use socket::NftSocket;

/// What went wrong talking to nf_tables, naming the request and the object.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nf_tables netlink socket: {what}: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("nf_tables netlink: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a request; for a transaction, nothing of it was applied.
    #[error(
        "nf_tables refused {what}: {}{}{}",
        std::io::Error::from_raw_os_error(*.errno),
        .message.as_ref().map_or(String::new(), |m| format!("; the kernel says: {m}")),
        if *.others > 0 { format!(" (and {} more refusals in the same batch)", .others) } else { String::new() }
    )]
    Refused {
        what: String,
        errno: i32,
        /// The extended ack: the kernel's message, or where in the request the fault is.
        message: Option<String>,
        others: usize,
    },
    #[error("nf_tables: the kernel's answer to {what} is unreadable: {detail}")]
    Decode { what: String, detail: String },
    #[error("nf_tables: no answer from the kernel to {what} within {waited:?}")]
    NoAnswer { what: String, waited: Duration },
    #[error("nf_tables: {what}")]
    Unexpected { what: String },
}

impl NftError {
    /// The errno the kernel answered with, if it is one (EPERM: not root; ENOENT: no such
    /// table or chain; EEXIST; ...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            NftError::Refused { errno, .. } => Some(*errno),
            NftError::Socket { source, .. } | NftError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Interface and process names from this machine, for [`render`]: interfaces of the calling
/// thread's network namespace, owners from /proc.
pub struct SystemNames;

impl render::Names for SystemNames {
    fn interface(&self, index: u32) -> Option<String> {
        let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
        let found = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
        if found.is_null() {
            return None;
        }
        // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
        let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        Some(name.to_string_lossy().into_owned())
    }

    fn owner(&self, port: u32) -> Option<String> {
        owner_process(port)
    }
}

/// The process holding the netfilter netlink socket with `port`: /proc/net/netlink gives the
/// socket's inode, a process's /proc/PID/fd the socket.
fn owner_process(port: u32) -> Option<String> {
    const NETLINK_NETFILTER: &str = "12";
    let sockets = std::fs::read_to_string("/proc/net/netlink").ok()?;
    let inode = sockets.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() >= 10
            && fields[1] == NETLINK_NETFILTER
            && fields[2].parse::<u32>().ok() == Some(port))
        .then(|| fields[9].to_string())
    })?;
    let link = format!("socket:[{inode}]");
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = process.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()))
        {
            let name = std::fs::read_to_string(process.path().join("comm")).ok()?;
            return Some(format!("{} (pid {pid})", name.trim()));
        }
    }
    None
}

/// Whether a table is one of Steadfast's (they are all named `steadfast_*`).
pub fn is_steadfast_table(_family: Family, name: &str) -> bool {
    name.starts_with("steadfast_")
}

/// Steadfast's tables in the calling thread's network namespace, read from the kernel and
/// written in nft's syntax.
pub fn steadfast_ruleset_text() -> Result<String, NftError> {
    let ruleset = NftSocket::open()?.read_ruleset(&is_steadfast_table)?;
    Ok(render::ruleset(&ruleset, &SystemNames))
}
