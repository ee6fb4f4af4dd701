//! Gratuitous ARP through an AF_PACKET socket: after taking the address, tell the segment's
//! hosts and switches where it lives now. Also a parser and a capture socket for ARP frames,
//! which tests and the lab's split-brain check use to see who announces an address.
//!
//! Only the request form is sent (opcode 1, sender IP = target IP = the address, target MAC
//! zero, Ethernet broadcast): it is the ARP Announcement of RFC 5227, what Linux itself sends
//! (`arp_notify`, `arping -U`) and what keepalived sends. Linux receivers update an existing
//! neighbour entry from it, and switches learn the port from any frame. The reply form
//! (`arping -A`) exists for old stacks that ignore unsolicited requests; none of the hosts we
//! target needs it, and sending both would double the frames of every announcement burst.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::OsError;

const ETH_P_ARP: u16 = 0x0806;
/// ARP opcode of a request (a gratuitous ARP announcement uses this form).
pub const ARP_REQUEST: u16 = 1;
/// ARP opcode of a reply.
pub const ARP_REPLY: u16 = 2;
/// Length of an Ethernet frame carrying an IPv4 ARP packet, before padding.
pub const ARP_FRAME_LEN: usize = 42;

/// A packet socket bound to one interface; cheap to clone.
#[derive(Clone, Debug)]
pub struct GarpSender {
    fd: Arc<OwnedFd>,
    ifindex: u32,
    mac: [u8; 6],
}

/// An Ethernet frame carrying an IPv4-over-Ethernet ARP packet, field by field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    pub eth_destination: [u8; 6],
    pub eth_source: [u8; 6],
    pub opcode: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// Whether the packet announces `sender_ip` (sender IP = target IP) rather than asking for
    /// or answering about another host, in either form.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip && !self.sender_ip.is_unspecified()
    }
}

/// The whole Ethernet frame of a gratuitous ARP request for `ip` from `mac`.
pub fn gratuitous_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    request_frame(mac, ip, ip)
}

/// The whole Ethernet frame of an RFC 5227 ARP probe for `target` from `mac`: sender IP
/// 0.0.0.0, so no host that sees it learns anything from it.
pub fn probe_frame(mac: [u8; 6], target: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    request_frame(mac, Ipv4Addr::UNSPECIFIED, target)
}

/// A broadcast ARP request from `mac` (and `sender`) asking for `target`.
fn request_frame(mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware type Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&sender.octets());
    // The target MAC stays zero: RFC 5227 says so, and receivers ignore it in a request.
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// Sends `frame` to the Ethernet broadcast address on `ifindex` through the packet socket
/// `fd`; never blocks (a full device queue is an error, ENOBUFS or EAGAIN, not a wait).
pub(crate) fn send_broadcast(fd: &impl AsRawFd, ifindex: u32, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and addr are valid for the lengths passed.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT,
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Parses an Ethernet frame carrying an IPv4-over-Ethernet ARP packet (padding after the 42
/// bytes is ignored). Anything else, VLAN-tagged frames included, is `None`.
pub fn parse_arp(frame: &[u8]) -> Option<ArpPacket> {
    if frame.len() < ARP_FRAME_LEN || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let a = &frame[14..ARP_FRAME_LEN];
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
        eth_destination: mac(&frame[0..6]),
        eth_source: mac(&frame[6..12]),
        opcode: u16::from_be_bytes([a[6], a[7]]),
        sender_mac: mac(&a[8..14]),
        sender_ip: ip(&a[14..18]),
        target_mac: mac(&a[18..24]),
        target_ip: ip(&a[24..28]),
    })
}

pub(crate) fn packet_socket(
    protocol_be: u16,
    ifindex: u32,
    what: &str,
) -> Result<OwnedFd, OsError> {
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from(protocol_be),
        )
    };
    if raw < 0 {
        return Err(OsError::last_os(format!(
            "{what}: opening a packet socket on interface index {ifindex}"
        )));
    }
    // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol_be;
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
            "{what}: binding a packet socket to interface index {ifindex}"
        )));
    }
    Ok(fd)
}

/// Receives the ARP frames arriving on one interface (not the ones it sends).
#[derive(Debug)]
pub struct ArpCapture {
    fd: OwnedFd,
    ifindex: u32,
}

/// Frames looked at in one `recv` call at most, so a flood cannot keep it busy past its time.
const MAX_FRAMES_PER_RECV: usize = 4096;

impl ArpCapture {
    /// Starts capturing on `ifindex` of the calling thread's network namespace. Frames that
    /// arrived before this call are not seen.
    pub fn open(ifindex: u32) -> Result<ArpCapture, OsError> {
        let fd = packet_socket(ETH_P_ARP.to_be(), ifindex, "capturing ARP")?;
        Ok(ArpCapture { fd, ifindex })
    }

    /// The next ARP packet received on the interface, waiting at most `timeout`; `None` when
    /// none came in time. Frames that are not IPv4 ARP are skipped.
    pub fn recv(&self, timeout: Duration) -> Result<Option<ArpPacket>, OsError> {
        let deadline = Instant::now() + timeout;
        for _ in 0..MAX_FRAMES_PER_RECV {
            let mut buf = [0u8; 256];
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut from_len,
                )
            };
            if n >= 0 {
                // A frame queued between socket() and bind() may come from another interface.
                if from.sll_pkttype == libc::PACKET_OUTGOING
                    || from.sll_ifindex != self.ifindex as i32
                {
                    continue;
                }
                match parse_arp(&buf[..n as usize]) {
                    Some(packet) => return Ok(Some(packet)),
                    None => continue,
                }
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => {}
                Some(libc::EINTR) => continue,
                _ => {
                    return Err(OsError::io(
                        format!("receiving ARP on interface index {}", self.ifindex),
                        err,
                    ))
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pollfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Rounded up so that a sub-millisecond remainder still waits instead of spinning.
            let wait_ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pollfd, 1, wait_ms) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINTR) {
                    return Err(OsError::io(
                        format!("waiting for ARP on interface index {}", self.ifindex),
                        err,
                    ));
                }
            }
        }
        Ok(None)
    }
}

impl GarpSender {
    /// A sender on `ifindex` of the calling thread's network namespace, announcing `mac`
    /// (the interface's own address: switches learn the port from the Ethernet source).
    pub fn open(ifindex: u32, mac: [u8; 6]) -> Result<GarpSender, OsError> {
        // Protocol 0: the socket only sends. Subscribing to ETH_P_ARP would queue every ARP
        // frame of the segment into a receive buffer nobody reads.
        let fd = packet_socket(0, ifindex, "sending gratuitous ARP")?;
        Ok(GarpSender {
            fd: Arc::new(fd),
            ifindex,
            mac,
        })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends one gratuitous ARP request for `vip`; never blocks (a full device queue is an
    /// error, ENOBUFS or EAGAIN, not a wait).
    pub fn send(&self, vip: Ipv4Addr) -> Result<(), OsError> {
        send_broadcast(&*self.fd, self.ifindex, &gratuitous_frame(self.mac, vip)).map_err(|e| {
            OsError::io(
                format!(
                    "sending a gratuitous ARP for {vip} on interface index {}",
                    self.ifindex
                ),
                e,
            )
        })
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
                eth_destination: [0xff; 6],
                eth_source: MAC,
                opcode: ARP_REQUEST,
                sender_mac: MAC,
                sender_ip: vip,
                target_mac: [0; 6],
                target_ip: vip,
            })
        );
    }

    #[test]
    fn a_probe_asks_for_its_target_from_no_address() {
        let target = Ipv4Addr::new(10, 1, 2, 9);
        let probe = parse_arp(&probe_frame(MAC, target)).expect("an ARP frame");
        assert_eq!(probe.opcode, ARP_REQUEST);
        assert_eq!(probe.sender_mac, MAC);
        assert_eq!(probe.sender_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(probe.target_ip, target);
        assert!(!probe.is_gratuitous(), "nobody learns from a probe");
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
        assert_eq!(parse_arp(&padded).map(|a| a.opcode), Some(ARP_REQUEST));
    }

    #[test]
    fn an_ordinary_reply_is_not_gratuitous_and_is_read_field_by_field() {
        // 10.0.0.2 (02:aa..) answers 10.0.0.1 (02:bb..): bytes as a capture shows them.
        let frame: [u8; 42] = [
            0x02, 0xbb, 0, 0, 0, 1, 0x02, 0xaa, 0, 0, 0, 2, 0x08, 0x06, // Ethernet
            0, 1, 8, 0, 6, 4, 0, 2, // Ethernet/IPv4, reply
            0x02, 0xaa, 0, 0, 0, 2, 10, 0, 0, 2, // sender
            0x02, 0xbb, 0, 0, 0, 1, 10, 0, 0, 1, // target
        ];
        let arp = parse_arp(&frame).expect("an ARP reply");
        assert_eq!(arp.opcode, ARP_REPLY);
        assert_eq!(arp.eth_destination, [0x02, 0xbb, 0, 0, 0, 1]);
        assert_eq!(arp.sender_mac, [0x02, 0xaa, 0, 0, 0, 2]);
        assert_eq!(arp.sender_ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(arp.target_mac, [0x02, 0xbb, 0, 0, 0, 1]);
        assert_eq!(arp.target_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert!(!arp.is_gratuitous());
    }

    #[test]
    fn announcements_in_either_form_are_gratuitous_but_probes_are_not() {
        let vip = Ipv4Addr::new(10, 0, 0, 7);
        let mut frame = gratuitous_frame(MAC, vip);
        assert!(parse_arp(&frame).unwrap().is_gratuitous());
        frame[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
        assert!(parse_arp(&frame).unwrap().is_gratuitous());
        // An RFC 5227 probe has sender IP 0.0.0.0: it claims nothing.
        frame[28..32].copy_from_slice(&[0; 4]);
        frame[38..42].copy_from_slice(&[0; 4]);
        assert!(!parse_arp(&frame).unwrap().is_gratuitous());
    }
}
