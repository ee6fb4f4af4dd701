//! Sending whole IPv4 packets the kernel routes but does not build (`SOCK_RAW`,
//! `IPPROTO_RAW`): the takeover's acknowledgement probes leave from the service address before
//! it is local, with TCP fields no socket of this node could produce.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::OsError;

/// A raw IPv4 socket that sends packets as given (header included).
pub struct RawIpSender {
    fd: OwnedFd,
}

impl RawIpSender {
    pub fn open() -> Result<RawIpSender, OsError> {
        // SAFETY: plain socket(2); the fd is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if raw < 0 {
            return Err(OsError::last_os("opening a raw IPv4 socket"));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        Ok(RawIpSender {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// Sends one IPv4 packet (header included) to `destination`.
    pub fn send(&self, packet: &[u8], destination: Ipv4Addr) -> Result<(), OsError> {
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(destination).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` and `to` are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
                libc::MSG_DONTWAIT,
                &to as *const libc::sockaddr_in as *const libc::sockaddr,
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(OsError::last_os(format!(
                "sending a {}-byte raw packet to {destination}",
                packet.len()
            )));
        }
        Ok(())
    }
}
