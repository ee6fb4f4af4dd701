//! The TCP segments a relay's sibling saw but could not yet carry (issue 19; docs/design.md,
//! Link relay): between a node's link cut and the moment its sibling answers for it, the
//! segment's frames for the node still go somewhere, and a sibling on the same segment sees
//! many of them:
//! - on the public interface, frames for the node's MAC: a switch flushes the addresses it
//!   learnt on a port whose link went down and floods their frames to every other port until
//!   it learns them again (hence promiscuous mode: a NIC drops another host's unicast);
//! - on the private interface, the node's own replies, which it routes through the sibling as
//!   soon as it asks for the relay, before the sibling forwards (they would be dropped).
//!
//! Lost, each costs a TCP retransmission: a second for a SYN, 200 ms or more for data. The
//! sibling keeps the last of them for a short time and sends them again through its kernel
//! once the relay is installed, as [`crate::raw_ip::RawIpSender`] packets, which its routes
//! then carry. Only TCP: a duplicate of a segment that did arrive is something TCP absorbs by
//! design, which other protocols need not.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::bpf::{attach, bpf, JEQ_K, JSET_K, LD_B_ABS, LD_H_ABS, LD_W_ABS, RET_K};
use crate::OsError;

const ETH_P_IP: u16 = 0x0800;
const PACKET_HOST: u32 = 0;
const PACKET_OTHERHOST: u32 = 3;
/// `SKF_AD_OFF + SKF_AD_PKTTYPE`: the classic BPF load of the frame's packet type.
const LOAD_PKTTYPE: u32 = 0xffff_f000 + 4;
/// `SKF_AD_OFF + SKF_AD_PROTOCOL`: the frame's EtherType, in host order.
const LOAD_PROTOCOL: u32 = 0xffff_f000;
/// Every protocol: only such a socket sees the frames its host sends (`dev_queue_xmit_nit`
/// hands outgoing frames to the taps of every protocol only).
const ETH_P_ALL: u16 = 0x0003;
/// The largest packet kept: a full Ethernet payload.
pub const MAX_PACKET: usize = 1500;

/// Which frames an interface's catcher keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchKind {
    /// The public interface: TCP in frames for another host's MAC.
    Flooded,
    /// The private interface: TCP in frames for this host whose source is none of `exclude`
    /// (the siblings' own private addresses: their traffic to this host is not a relay's).
    Routed { exclude: Vec<Ipv4Addr> },
}

const PACKET_OUTGOING: u32 = 4;

/// What a catcher catches now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Catching {
    Off,
    /// What its [`CatchKind`] says.
    On,
    /// On a public interface, also the TCP segments this host itself sends out of it from
    /// sources other than `not_from` (this host's own addresses): a duplex backup's logger
    /// forwards the client's frames to the primary, and between a cut of the primary's link
    /// and the relay it forwards them into the dead port. A private interface catches as `On`.
    WithOutgoing {
        not_from: Vec<Ipv4Addr>,
    },
}

/// Offsets are from the IP header: the socket is `SOCK_DGRAM`.
fn filter_program(kind: &CatchKind, catching: &Catching) -> Vec<libc::sock_filter> {
    let (pkttypes, exclude): (Vec<u32>, &[Ipv4Addr]) = match (kind, catching) {
        (_, Catching::Off) => return vec![bpf(RET_K, 0, 0, 0)],
        (CatchKind::Flooded, Catching::On) => (vec![PACKET_OTHERHOST], &[]),
        (CatchKind::Flooded, Catching::WithOutgoing { not_from }) => {
            (vec![PACKET_OTHERHOST, PACKET_OUTGOING], not_from)
        }
        (CatchKind::Routed { exclude }, _) => (vec![PACKET_HOST], exclude),
    };
    // Layout: 0 EtherType, 1 IPv4 test (a public interface's socket takes every protocol),
    // 2 pkttype, 3..3+n one test per packet type, then proto, is-TCP, frag, first-fragment
    // test, saddr, one test per excluded source, accept, reject.
    let proto = 3 + pkttypes.len();
    let saddr = proto + 4;
    let accept = saddr + 1 + exclude.len();
    let reject = accept + 1;
    let to = |from: usize, target: usize| (target - from - 1) as u8;
    let mut p = vec![
        bpf(LD_W_ABS, 0, 0, LOAD_PROTOCOL),
        bpf(JEQ_K, 0, to(1, reject), u32::from(ETH_P_IP)),
        bpf(LD_W_ABS, 0, 0, LOAD_PKTTYPE),
    ];
    for (i, pkttype) in pkttypes.iter().enumerate() {
        let at = 3 + i;
        // Matched: on to the protocol; else the next type, or reject after the last.
        let otherwise = if at + 1 == proto { reject } else { at + 1 };
        p.push(bpf(JEQ_K, to(at, proto), to(at, otherwise), *pkttype));
    }
    p.extend([
        bpf(LD_B_ABS, 0, 0, 9),
        bpf(JEQ_K, 0, to(proto + 1, reject), 6),
        bpf(LD_H_ABS, 0, 0, 6),
        bpf(JSET_K, to(proto + 3, reject), 0, 0x1fff),
        bpf(LD_W_ABS, 0, 0, 12),
    ]);
    for (i, address) in exclude.iter().enumerate() {
        p.push(bpf(
            JEQ_K,
            to(saddr + 1 + i, reject),
            0,
            u32::from(*address),
        ));
    }
    p.push(bpf(RET_K, 0, 0, MAX_PACKET as u32));
    p.push(bpf(RET_K, 0, 0, 0));
    p
}

/// The IPv4 source and destination of a packet that starts with its IPv4 header.
pub fn addresses(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let at = |i: usize| Ipv4Addr::new(packet[i], packet[i + 1], packet[i + 2], packet[i + 3]);
    Some((at(12), at(16)))
}

/// One interface's catcher: a filtered, non-blocking packet socket.
pub struct FrameCatcher {
    fd: OwnedFd,
    ifindex: u32,
    kind: CatchKind,
}

impl FrameCatcher {
    pub fn open(ifindex: u32, kind: &CatchKind) -> Result<FrameCatcher, OsError> {
        let what =
            |step: &str| format!("catching missed frames on interface index {ifindex}: {step}");
        // Protocol 0: nothing arrives before the filter is attached and `bind` names the
        // protocol.
        // SAFETY: plain socket(2); the result is checked and owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(OsError::last_os(what("socket(AF_PACKET)")));
        }
        // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        attach(raw, &filter_program(kind, &Catching::On))
            .map_err(|e| OsError::io(what("SO_ATTACH_FILTER"), e))?;
        let one: libc::c_int = 1;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_AUXDATA, &one)
            .map_err(|e| OsError::io(what("PACKET_AUXDATA"), e))?;
        if *kind == CatchKind::Flooded {
            // Dropped with the socket: the kernel counts promiscuous users.
            let mreq = libc::packet_mreq {
                mr_ifindex: ifindex as i32,
                mr_type: libc::PACKET_MR_PROMISC as u16,
                mr_alen: 0,
                mr_address: [0; 8],
            };
            setsockopt(raw, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
                .map_err(|e| OsError::io(what("promiscuous mode"), e))?;
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = match kind {
            CatchKind::Flooded => ETH_P_ALL,
            CatchKind::Routed { .. } => ETH_P_IP,
        }
        .to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a properly initialised sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                raw,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(OsError::last_os(what("bind")));
        }
        Ok(FrameCatcher {
            fd,
            ifindex,
            kind: kind.clone(),
        })
    }

    /// Stops catching ([`Catching::Off`]) or starts again. While this host relays for a
    /// sibling, the sibling's segments are what it forwards: caught, each would be copied for
    /// nothing.
    pub fn set_catching(&self, catching: &Catching) -> Result<(), OsError> {
        attach(self.fd.as_raw_fd(), &filter_program(&self.kind, catching)).map_err(|e| {
            OsError::io(
                format!(
                    "setting catching to {catching:?} on interface index {}",
                    self.ifindex
                ),
                e,
            )
        })
    }

    /// Hands the packets waiting to `keep` (IPv4 header first, TCP checksum complete), at most
    /// `max` of them; true when `max` were read and more may wait.
    pub fn drain(&self, max: usize, mut keep: impl FnMut(&[u8])) -> Result<bool, OsError> {
        let mut buf = [0u8; MAX_PACKET];
        // Room for one tpacket_auxdata control message.
        let mut control = [0u64; 8];
        for _ in 0..max {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: msghdr is plain data; all-zero is a valid value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            // SAFETY: msg points at live buffers of the lengths given; non-blocking.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(false),
                    Some(libc::EINTR) => continue,
                    _ => Err(OsError::io(
                        format!("reading caught frames on interface index {}", self.ifindex),
                        err,
                    )),
                };
            }
            let packet = &mut buf[..n as usize];
            // A segment larger than a frame (one the stack hands a device that segments it
            // later) is cut short here: sent again, it would be a broken packet.
            if packet.len() < 4
                || usize::from(u16::from_be_bytes([packet[2], packet[3]])) > packet.len()
            {
                continue;
            }
            // A segment that a local stack handed to a checksum-offloading device (a veth, a
            // virtual NIC) carries only the pseudo-header's sum: sent again as it is, its
            // receiver would drop it. The device would have finished it; so does this.
            if checksum_not_ready(&msg) && !complete_tcp_checksum(packet) {
                continue;
            }
            keep(packet);
        }
        Ok(true)
    }
}

/// Whether the kernel said (`PACKET_AUXDATA`) that the packet's checksum is left to the device.
fn checksum_not_ready(msg: &libc::msghdr) -> bool {
    const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
    // SAFETY: the control buffer was filled by recvmsg and msg describes it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg points inside the control buffer, as CMSG_FIRSTHDR/NXTHDR return.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_PACKET && header.cmsg_type == libc::PACKET_AUXDATA {
            // SAFETY: a PACKET_AUXDATA message carries a tpacket_auxdata, status first.
            let status = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const u32) };
            return status & TP_STATUS_CSUMNOTREADY != 0;
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    false
}

/// Writes the TCP checksum of an IPv4 packet (pseudo-header, header and payload); false when
/// the packet is not a whole IPv4 TCP segment.
pub fn complete_tcp_checksum(packet: &mut [u8]) -> bool {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != 6 {
        return false;
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header < 20 || total < header + 20 || total > packet.len() {
        return false;
    }
    let segment_len = total - header;
    packet[header + 16] = 0;
    packet[header + 17] = 0;
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    };
    add(&packet[12..20]);
    add(&[0, 6]);
    add(&(segment_len as u16).to_be_bytes());
    add(&packet[header..total]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !(sum as u16);
    packet[header + 16..header + 18].copy_from_slice(&checksum.to_be_bytes());
    true
}

impl AsRawFd for FrameCatcher {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> Result<(), std::io::Error> {
    // SAFETY: `value` points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_ends_accepting_then_rejecting_and_jumps_inside() {
        let exclude = vec![Ipv4Addr::new(10, 78, 0, 11), Ipv4Addr::new(10, 78, 0, 13)];
        let outgoing = Catching::WithOutgoing {
            not_from: vec![Ipv4Addr::new(10, 77, 0, 12)],
        };
        for (kind, catching) in [
            (CatchKind::Flooded, Catching::On),
            (CatchKind::Flooded, outgoing.clone()),
            (CatchKind::Routed { exclude }, Catching::On),
            (CatchKind::Routed { exclude: vec![] }, outgoing),
        ] {
            let p = filter_program(&kind, &catching);
            let (accept, reject) = (p.len() - 2, p.len() - 1);
            assert_eq!(p[reject].k, 0);
            assert_eq!(p[accept].k, MAX_PACKET as u32);
            for (i, insn) in p.iter().enumerate() {
                if insn.code & 0x07 == 0x05 {
                    for jump in [insn.jt, insn.jf] {
                        let target = i + 1 + usize::from(jump);
                        assert!(target < p.len(), "instruction {i} jumps past the end");
                    }
                }
            }
        }
    }

    #[test]
    fn a_completed_tcp_checksum_is_the_one_a_sender_computes() {
        // A SYN from 10.77.0.2:34472 to 10.77.0.100:80 as captured from a client whose stack
        // filled in the checksum itself (0x3d2e), with options.
        let mut packet: Vec<u8> = vec![
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 77, 0, 2,
            10, 77, 0, 100, // IPv4
            0x86, 0xa8, 0x00, 0x50, 0x12, 0x34, 0x56, 0x78, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02,
            0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00, // TCP, checksum zero
            0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x01, 0x02, 0x03, 0x00, 0x00,
            0x00, 0x00, 0x01, 0x03, 0x03, 0x07, // options
        ];
        assert!(complete_tcp_checksum(&mut packet));
        // The receiver's check: the one's complement sum over pseudo-header and segment,
        // checksum included, is all ones.
        let mut sum: u32 = 0;
        let mut add = |bytes: &[u8]| {
            for pair in bytes.chunks(2) {
                sum += u32::from(u16::from_be_bytes([
                    pair[0],
                    pair.get(1).copied().unwrap_or(0),
                ]));
            }
        };
        add(&packet[12..20]);
        add(&[0, 6, 0, 40]);
        add(&packet[20..]);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        // Not TCP, or cut short: left alone.
        let mut udp = packet.clone();
        udp[9] = 17;
        assert!(!complete_tcp_checksum(&mut udp));
        assert!(!complete_tcp_checksum(&mut packet[..30]));
    }

    #[test]
    fn addresses_are_read_from_an_ipv4_header_only() {
        let mut packet = [0u8; 20];
        packet[0] = 0x45;
        packet[12..16].copy_from_slice(&[10, 77, 0, 2]);
        packet[16..20].copy_from_slice(&[10, 77, 0, 100]);
        assert_eq!(
            addresses(&packet),
            Some((Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 100)))
        );
        packet[0] = 0x65;
        assert_eq!(addresses(&packet), None);
        assert_eq!(addresses(&packet[..19]), None);
    }
}
