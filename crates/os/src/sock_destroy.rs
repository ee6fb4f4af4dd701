//! Destroying TCP sockets through NETLINK_SOCK_DIAG (`SOCK_DESTROY`, kernel option
//! CONFIG_INET_DIAG_DESTROY): a socket of a previous life on the service address — TIME_WAIT
//! especially, which answers a rebuilt connection's client with an ACK instead of an RST and
//! hangs it — must be gone before a node serves or rebuilds that 4-tuple.
//!
//! Written by hand: the message layout is four fixed structs, and no maintained crate sends
//! SOCK_DESTROY.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDR_LEN: usize = 16;
/// inet_diag_req_v2: family, protocol, ext, pad, states, then the 48-byte inet_diag_sockid.
const REQ_LEN: usize = 8 + SOCKID_LEN;
const SOCKID_LEN: usize = 48;
/// inet_diag_msg: family, state, timer, retrans, sockid, expires, rqueue, wqueue, uid, inode.
const DIAG_MSG_MIN_LEN: usize = 4 + SOCKID_LEN + 20;
/// TCP_LISTEN: a listener is this life's own, never a leftover connection.
const TCP_LISTEN: u8 = 10;

#[derive(Debug, thiserror::Error)]
pub enum SockDestroyError {
    #[error("sock_diag netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("sock_diag {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("sock_diag dump: malformed reply ({0})")]
    Malformed(&'static str),
}

/// Which sockets to destroy; `None` matches any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketMatch {
    pub local: Option<SocketAddrV4>,
    pub remote: Option<SocketAddrV4>,
}

impl SocketMatch {
    fn matches(&self, local: SocketAddrV4, remote: SocketAddrV4) -> bool {
        self.local.is_none_or(|l| l == local) && self.remote.is_none_or(|r| r == remote)
    }
}

/// One socket found by the dump: its id (to name it in SOCK_DESTROY) and its state.
struct Found {
    sockid: [u8; SOCKID_LEN],
    state: u8,
}

/// Destroys every IPv4 TCP connection (any state but LISTEN, TIME_WAIT included) that `m`
/// matches; returns how many were destroyed.
pub fn destroy_tcp_sockets(m: &SocketMatch) -> Result<usize, SockDestroyError> {
    let fd = open()?;
    let found = dump(&fd, m)?;
    let mut destroyed = 0;
    for (seq, socket) in found.iter().enumerate() {
        let request = request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            seq as u32 + 2,
            1u32 << socket.state,
            &socket.sockid,
        );
        send(&fd, &request, "destroy request")?;
        // The ack: an NLMSG_ERROR with code 0, or the reason (ENOENT: it went away meanwhile).
        let mut buf = vec![0u8; 4096];
        let n = recv(&fd, &mut buf)?;
        if n >= NLMSG_HDR_LEN + 4 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
            let code = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
            if code == 0 {
                destroyed += 1;
            }
        }
    }
    Ok(destroyed)
}

fn open() -> Result<OwnedFd, SockDestroyError> {
    // SAFETY: plain socket(2); the fd is owned right below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(SockDestroyError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn request(kind: u16, flags: u16, seq: u32, states: u32, sockid: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = (NLMSG_HDR_LEN + REQ_LEN) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    out.extend_from_slice(&states.to_ne_bytes());
    out.extend_from_slice(sockid);
    out
}

fn send(fd: &OwnedFd, bytes: &[u8], what: &'static str) -> Result<(), SockDestroyError> {
    // SAFETY: `bytes` is valid for its length; the kernel is the destination (no address).
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            bytes.as_ptr() as *const libc::c_void,
            bytes.len(),
            0,
        )
    };
    if n < 0 {
        return Err(SockDestroyError::Io {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, SockDestroyError> {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    if n < 0 {
        return Err(SockDestroyError::Io {
            what: "receive",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(n as usize)
}

fn dump(fd: &OwnedFd, m: &SocketMatch) -> Result<Vec<Found>, SockDestroyError> {
    let request = request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        u32::MAX,
        &[0; SOCKID_LEN],
    );
    send(fd, &request, "dump request")?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd, &mut buf)?;
        let mut at = 0;
        while at + NLMSG_HDR_LEN <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < NLMSG_HDR_LEN || at + len > n {
                return Err(SockDestroyError::Malformed("message length"));
            }
            match kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(
                        buf[at + 16..at + 20]
                            .try_into()
                            .map_err(|_| SockDestroyError::Malformed("error message"))?,
                    );
                    return Err(SockDestroyError::Io {
                        what: "dump",
                        source: std::io::Error::from_raw_os_error(-code),
                    });
                }
                SOCK_DIAG_BY_FAMILY => {
                    let body = &buf[at + NLMSG_HDR_LEN..at + len];
                    if body.len() < DIAG_MSG_MIN_LEN {
                        return Err(SockDestroyError::Malformed("inet_diag_msg too short"));
                    }
                    let state = body[1];
                    let sockid: [u8; SOCKID_LEN] =
                        body[4..4 + SOCKID_LEN].try_into().expect("48 bytes");
                    let (local, remote) = endpoints(&sockid);
                    if state != TCP_LISTEN && m.matches(local, remote) {
                        found.push(Found { sockid, state });
                    }
                }
                _ => {}
            }
            // Messages are 4-byte aligned.
            at += (len + 3) & !3;
        }
    }
}

/// (local, remote) of an inet_diag_sockid: ports and addresses in network order.
fn endpoints(sockid: &[u8; SOCKID_LEN]) -> (SocketAddrV4, SocketAddrV4) {
    let sport = u16::from_be_bytes([sockid[0], sockid[1]]);
    let dport = u16::from_be_bytes([sockid[2], sockid[3]]);
    let src = Ipv4Addr::new(sockid[4], sockid[5], sockid[6], sockid[7]);
    let dst = Ipv4Addr::new(sockid[20], sockid[21], sockid[22], sockid[23]);
    (SocketAddrV4::new(src, sport), SocketAddrV4::new(dst, dport))
}
