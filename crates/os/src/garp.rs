//! Gratuitous ARP through an AF_PACKET socket: after taking the address, tell the segment's
//! hosts and switches where it lives now.
//!
//! The request form (opcode 1, sender IP = target IP = the address) is what Linux itself and
//! keepalived send; Linux hosts update an existing neighbour entry on it.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use crate::OsError;

const ETH_P_ARP: u16 = 0x0806;

/// A packet socket bound to one interface; cheap to clone.
#[derive(Clone, Debug)]
pub struct GarpSender {
    fd: Arc<OwnedFd>,
    ifindex: u32,
    mac: [u8; 6],
}

/// The fields of an Ethernet ARP frame for IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    pub opcode: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

/// The whole Ethernet frame of a gratuitous ARP request for `ip` from `mac`.
pub fn gratuitous_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target MAC stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Parses an Ethernet frame carrying an IPv4-over-Ethernet ARP packet.
pub fn parse_arp(frame: &[u8]) -> Option<ArpPacket> {
    if frame.len() < 42 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let a = &frame[14..42];
    if a[0..2] != [0, 1] || a[2..4] != [8, 0] || a[4] != 6 || a[5] != 4 {
        return None;
    }
    let mac = |s: &[u8]| {
        let mut m = [0u8; 6];
        m.copy_from_slice(s);
        m
    };
    let ip = |s: &[u8]| Ipv4Addr::new(s[0], s[1], s[2], s[3]);
    Some(ArpPacket {
        opcode: u16::from_be_bytes([a[6], a[7]]),
        sender_mac: mac(&a[8..14]),
        sender_ip: ip(&a[14..18]),
        target_mac: mac(&a[18..24]),
        target_ip: ip(&a[24..28]),
    })
}

impl GarpSender {
    pub fn open(ifindex: u32, mac: [u8; 6]) -> Result<GarpSender, OsError> {
        // Protocol 0: the socket only sends. Subscribing to ETH_P_ARP would queue every ARP
        // frame of the segment into a receive buffer nobody reads.
        // SAFETY: plain socket(2); the result is checked and owned right away.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(OsError::last_os(format!(
                "opening a packet socket on interface index {ifindex}"
            )));
        }
        // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a properly initialised sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(OsError::last_os(format!(
                "binding a packet socket to interface index {ifindex}"
            )));
        }
        Ok(GarpSender {
            fd: Arc::new(fd),
            ifindex,
            mac,
        })
    }

    /// Sends one gratuitous ARP for `vip`; never blocks.
    pub fn send(&self, vip: Ipv4Addr) -> Result<(), OsError> {
        let frame = gratuitous_frame(self.mac, vip);
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = self.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: frame and addr are valid for the lengths passed.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(OsError::last_os(format!(
                "sending a gratuitous ARP for {vip} on interface index {}",
                self.ifindex
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn gratuitous_frame_parses_back_as_a_request_for_the_address() {
        let vip = Ipv4Addr::new(10, 1, 2, 3);
        let frame = gratuitous_frame(MAC, vip);
        assert_eq!(frame[0..6], [0xff; 6], "Ethernet broadcast");
        assert_eq!(frame[6..12], MAC, "Ethernet source");
        assert_eq!(
            parse_arp(&frame),
            Some(ArpPacket {
                opcode: 1,
                sender_mac: MAC,
                sender_ip: vip,
                target_mac: [0; 6],
                target_ip: vip,
            })
        );
    }

    #[test]
    fn parse_arp_rejects_short_and_foreign_frames() {
        let frame = gratuitous_frame(MAC, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(parse_arp(&frame[..41]), None);
        let mut ipv4 = frame;
        ipv4[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(parse_arp(&ipv4), None);
        let mut ipv6_arp = frame;
        ipv6_arp[16..18].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(parse_arp(&ipv6_arp), None);
    }

    #[test]
    fn parse_arp_accepts_padded_frames() {
        // Frames below 60 bytes are padded on the wire; a receiver sees the padding.
        let mut padded = [0u8; 60];
        padded[..42].copy_from_slice(&gratuitous_frame(MAC, Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(parse_arp(&padded).map(|a| a.opcode), Some(1));
    }
}
