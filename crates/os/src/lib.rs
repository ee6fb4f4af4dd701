//! Thin kernel edges of Steadfast, each small: netlink addresses, gratuitous ARP through a
//! packet socket, network namespaces, realtime scheduling and sysctl writes, nf_tables over
//! netlink (the dead-man switch); for duplex the ingress logger's packet ring, the ingress
//! guard, TCP_REPAIR and socket destruction.

pub mod addr;
mod bpf;
pub mod fence;
pub mod garp;
pub mod ingress_guard;
pub mod limits;
pub mod netns;
pub mod nftables;
pub mod packet_port;
pub mod peer_probe;
pub mod raw_ip;
pub mod relay_catch;
pub mod relay_fence;
pub mod relay_kernel;
pub mod repair;
pub mod sched;
pub mod sock_destroy;
pub mod sysctl;

/// The name of one of a group's nf_tables tables (`kind`: fence, live, guard, bounce). Each
/// group on a host, one daemon each, has its own: several groups share a network namespace
/// without one replacing, or one daemon's death dropping, another's. The group name is
/// checked where the configuration is read (letters, digits, '-', '_', '.').
pub fn group_table(kind: &str, group: &str) -> String {
    format!("steadfast_{kind}_{group}")
}

/// What went wrong at a kernel edge, naming the object involved.
#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A helper program (only `ip netns add/del`, lab setup) exited unsuccessfully.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    /// A name that would escape its directory or that the kernel would refuse.
    #[error("invalid {kind} {name:?}: {why}")]
    InvalidName {
        kind: &'static str,
        name: String,
        why: &'static str,
    },
    /// The kernel accepted every request yet the state did not follow.
    #[error("{what}")]
    Unexpected { what: String },
    #[error("{what}: no tokio runtime on this thread (build one before calling)")]
    NoRuntime { what: String },
    #[error("{what}: {source}")]
    Nftables {
        what: String,
        #[source]
        source: crate::nftables::NftError,
    },
}

impl OsError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> OsError {
        OsError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn last_os(what: impl Into<String>) -> OsError {
        OsError::io(what, std::io::Error::last_os_error())
    }

    /// The errno behind the error, when the kernel gave one (EPERM tells "not root", ENODEV
    /// "interface gone", and so on).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            OsError::Io { source, .. } => source.raw_os_error(),
            OsError::Netlink {
                source: rtnetlink::Error::NetlinkError(message),
                ..
            } => message.code.map(|c| -c.get()),
            OsError::Nftables { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
