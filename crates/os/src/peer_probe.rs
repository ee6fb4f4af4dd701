//! Asking a silent peer's host whether it is still there, below its daemon: an ICMP echo
//! request (its kernel answers it even while the daemon is paused or starved) and an empty UDP
//! datagram to its heartbeat port (its kernel answers "port unreachable" once the daemon
//! process is gone). The election uses the answers to tell a peer that is only slow from one
//! that is dead (see `steadfast_core::election::DeathEvidence`).
//!
//! One raw ICMP socket receives both kinds of answer: echo replies carrying this prober's
//! identifier, and port-unreachable errors quoting a datagram sent to a heartbeat port. The
//! datagrams themselves leave from the daemon's own heartbeat socket.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use etherparse::{
    IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type, Ipv4HeaderSlice, UdpHeaderSlice,
};

use crate::OsError;

/// What one received ICMP packet says about a probed peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// `from`'s kernel answered one of this prober's echo requests.
    HostAnswered { from: Ipv4Addr },
    /// Nothing listens on UDP `port` at `host` (its kernel said so).
    PortClosed { host: Ipv4Addr, port: u16 },
}

/// Sends echo requests and reads the answers, without blocking.
pub struct PeerProber {
    socket: OwnedFd,
    identifier: u16,
    sequence: u16,
}

impl PeerProber {
    /// A raw ICMP socket (needs CAP_NET_RAW) in the current network namespace.
    pub fn open() -> Result<PeerProber, OsError> {
        // SAFETY: plain socket(2); the fd is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::IPPROTO_ICMP,
            )
        };
        if raw < 0 {
            return Err(OsError::last_os(
                "opening a raw ICMP socket to probe silent peers",
            ));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        // Every raw ICMP socket of the namespace sees every ICMP packet: the identifier tells
        // this prober's echo replies from those of another (a `ping`, a second daemon).
        let identifier = (std::process::id() & 0xffff) as u16;
        Ok(PeerProber {
            socket,
            identifier,
            sequence: 0,
        })
    }

    /// Sends one echo request to `host`.
    pub fn send_echo(&mut self, host: Ipv4Addr) -> Result<(), OsError> {
        self.sequence = self.sequence.wrapping_add(1);
        let packet = echo_request(self.identifier, self.sequence);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(host).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and the address are valid for the sizes passed.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_DONTWAIT,
                (&to as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(OsError::last_os(format!(
                "sending an echo request to peer {host}"
            )));
        }
        Ok(())
    }

    /// Every answer waiting in the socket (none when nothing came).
    pub fn answers(&self) -> Result<Vec<ProbeAnswer>, OsError> {
        let mut answers = Vec::new();
        let mut buf = [0u8; 1500];
        loop {
            // SAFETY: `buf` is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(answers);
                }
                return Err(OsError::io("reading the peer prober's ICMP socket", error));
            }
            answers.extend(parse_answer(&buf[..n as usize], self.identifier));
        }
    }
}

impl AsFd for PeerProber {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for PeerProber {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// An ICMP echo request (header and an 8-byte payload), checksum included.
fn echo_request(identifier: u16, sequence: u16) -> Vec<u8> {
    let payload = *b"stdfast\0";
    let header = Icmpv4Header::with_checksum(
        Icmpv4Type::EchoRequest(IcmpEchoHeader {
            id: identifier,
            seq: sequence,
        }),
        &payload,
    );
    let mut packet = header.to_bytes().to_vec();
    packet.extend_from_slice(&payload);
    packet
}

/// What an IPv4 packet received on a raw ICMP socket (IP header included) tells, if anything:
/// an echo reply to `identifier`, or a port-unreachable error about a UDP datagram.
pub fn parse_answer(packet: &[u8], identifier: u16) -> Option<ProbeAnswer> {
    let ip = Ipv4HeaderSlice::from_slice(packet).ok()?;
    let icmp = Icmpv4Slice::from_slice(packet.get(ip.slice().len()..)?).ok()?;
    match icmp.icmp_type() {
        Icmpv4Type::EchoReply(echo) if echo.id == identifier => Some(ProbeAnswer::HostAnswered {
            from: ip.source_addr(),
        }),
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port) => {
            // The error quotes the offending datagram's IP header and first 8 bytes.
            let quoted = icmp.payload();
            let inner = Ipv4HeaderSlice::from_slice(quoted).ok()?;
            if inner.protocol() != etherparse::IpNumber::UDP {
                return None;
            }
            let udp = UdpHeaderSlice::from_slice(quoted.get(inner.slice().len()..)?).ok()?;
            Some(ProbeAnswer::PortClosed {
                host: inner.destination_addr(),
                port: udp.destination_port(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn ip_icmp(source: [u8; 4], icmp: &[u8]) -> Vec<u8> {
        let header = etherparse::Ipv4Header::new(
            icmp.len() as u16,
            64,
            etherparse::IpNumber::ICMP,
            source,
            [10, 0, 0, 1],
        )
        .unwrap();
        let mut packet = header.to_bytes().to_vec();
        packet.extend_from_slice(icmp);
        packet
    }

    #[test]
    fn an_echo_reply_to_this_prober_says_the_host_answered() {
        let reply = Icmpv4Header::with_checksum(
            Icmpv4Type::EchoReply(IcmpEchoHeader { id: 7, seq: 3 }),
            b"stdfast\0",
        );
        let mut icmp = reply.to_bytes().to_vec();
        icmp.extend_from_slice(b"stdfast\0");
        let packet = ip_icmp([10, 0, 0, 12], &icmp);
        assert_eq!(
            parse_answer(&packet, 7),
            Some(ProbeAnswer::HostAnswered {
                from: Ipv4Addr::new(10, 0, 0, 12)
            })
        );
        assert_eq!(parse_answer(&packet, 8), None, "another prober's reply");
    }

    #[test]
    fn a_port_unreachable_error_names_the_quoted_datagrams_destination() {
        let mut datagram = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 12], 64)
            .udp(40000, 7410)
            .write(&mut datagram, &[])
            .unwrap();
        let error = Icmpv4Header::with_checksum(
            Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port),
            &datagram,
        );
        let mut icmp = error.to_bytes().to_vec();
        icmp.extend_from_slice(&datagram);
        let packet = ip_icmp([10, 0, 0, 12], &icmp);
        assert_eq!(
            parse_answer(&packet, 7),
            Some(ProbeAnswer::PortClosed {
                host: Ipv4Addr::new(10, 0, 0, 12),
                port: 7410
            })
        );
    }

    #[test]
    fn anything_else_says_nothing() {
        assert_eq!(parse_answer(&[], 7), None);
        assert_eq!(parse_answer(&[0x45; 30], 7), None);
        let request = echo_request(7, 1);
        assert_eq!(parse_answer(&ip_icmp([10, 0, 0, 12], &request), 7), None);
        // Truncated quotes and other protocols are ignored, not misread.
        let error = Icmpv4Header::with_checksum(
            Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port),
            &[0x45, 0, 0],
        );
        let mut icmp = error.to_bytes().to_vec();
        icmp.extend_from_slice(&[0x45, 0, 0]);
        assert_eq!(parse_answer(&ip_icmp([10, 0, 0, 12], &icmp), 7), None);
    }
}
