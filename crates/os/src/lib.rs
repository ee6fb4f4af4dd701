//! Thin kernel edges of Steadfast, each small: netlink addresses, gratuitous ARP through a
//! packet socket, network-namespace entry, and realtime scheduling.

pub mod addr;
pub mod garp;
pub mod netns;
pub mod sched;

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
}
