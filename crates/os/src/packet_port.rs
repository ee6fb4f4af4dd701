//! The backup's ingress logger socket: AF_PACKET with a TPACKET_V2 receive ring and a classic
//! BPF filter, so only ARP and the service's TCP frames reach user space, without a syscall per
//! frame. (Not TPACKET_V3: a V3 block reaches user space only when full or when its ≥ 1 ms
//! retire timer fires, which delayed every request by about a millisecond in the prototype.)
//!
//! The ring's slots are sized for one MTU-sized frame, so that it holds thousands of them: a
//! burst of small frames (10,000 clients sending a byte each at once) must wait there, not be
//! dropped, while the logger is busy or descheduled. A larger frame (GRO-merged, up to 64 KiB
//! and more, or a jumbo frame) does not fit a slot: the kernel then also queues it whole on the
//! socket (PACKET_COPY_THRESH) and marks its truncated slot TP_STATUS_COPY, and the drain reads
//! it from there, in ring order.
//!
//! Also the pure helpers of the forwarding path: the ARP answer for the VIP and the split of a
//! GRO-merged frame back into MTU-sized ones.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, Ordering};

use crate::bpf::{
    attach, bpf, JEQ_K, JSET_K, LDX_B_MSH, LD_B_ABS, LD_H_ABS, LD_H_IND, LD_W_ABS, RET_K,
};

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ETH_HLEN: usize = 14;
const TPACKET_V2: libc::c_int = 1;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_COPY_THRESH: libc::c_int = 7;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_COPY: u32 = 2;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
const TP_STATUS_CSUM_VALID: u32 = 1 << 7;
const PACKET_HOST: u8 = 0;
const PACKET_BROADCAST: u8 = 1;
/// A ring slot holds a 1500-byte-MTU frame (with VLAN tags) behind the slot's 80 bytes of
/// headers; larger frames come whole through the socket's queue.
const SLOT_SIZE: usize = 2048;
/// Blocks of 128 KiB (order-5 allocations, as the kernel prefers them small).
const BLOCK_SIZE: usize = 128 * 1024;
const BLOCK_COUNT: usize = 256;
/// 16,384 slots in 32 MiB.
const SLOT_COUNT: usize = BLOCK_SIZE / SLOT_SIZE * BLOCK_COUNT;
/// The socket queue's budget for the whole copies of frames larger than a slot: about 250
/// GRO-merged 64 KiB frames waiting at once.
const LARGE_FRAME_QUEUE_BYTES: libc::c_int = 16 * 1024 * 1024;
/// The largest frame read whole from the socket queue (GRO merges up to 64 KiB by default;
/// BIG TCP raises that): longer ones are truncated and dropped as such.
const LARGE_FRAME_MAX: usize = 256 * 1024;
/// tpacket2_hdr is 32 bytes; the sockaddr_ll follows at the next 16-byte boundary.
const SOCKADDR_LL_OFFSET: usize = 32;

#[repr(C)]
struct Tpacket2Hdr {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_sec: u32,
    tp_nsec: u32,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
    tp_padding: [u8; 4],
}

#[repr(C)]
struct TpacketReq {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PacketPortError {
    #[error("packet socket on {interface}: {step}: {source}")]
    Setup {
        interface: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("packet socket on {interface}: sending a {len}-byte frame: {source}")]
    Send {
        interface: String,
        len: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Which frames the logger wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressFilter {
    pub vip: Ipv4Addr,
    pub ports: Vec<u16>,
}

/// One received frame, borrowed from the ring.
#[derive(Debug)]
pub struct RxFrame<'a> {
    pub data: &'a [u8],
    /// Its length on the wire (larger than `data` when truncated).
    pub original_len: usize,
    pub truncated: bool,
    pub checksum: RxChecksum,
    /// When the kernel put it in the ring (`CLOCK_REALTIME`, since the Unix epoch): how long a
    /// frame waited for its reader is the reader's clock minus this.
    pub received_at: std::time::Duration,
}

/// What the kernel knows of a received frame's transport checksum (`tp_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxChecksum {
    /// Not computed yet (checksum offload: a frame from a local or virtual sender that never
    /// crossed a wire); the field holds the pseudo-header sum and is to be filled in, not
    /// judged.
    Partial,
    /// Verified by the NIC or the kernel.
    Verified,
    /// Nobody checked it: whoever trusts the frame's bytes must verify it.
    Unchecked,
}

impl RxChecksum {
    fn from_status(status: u32) -> RxChecksum {
        if status & TP_STATUS_CSUMNOTREADY != 0 {
            RxChecksum::Partial
        } else if status & TP_STATUS_CSUM_VALID != 0 {
            RxChecksum::Verified
        } else {
            RxChecksum::Unchecked
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketPortCounters {
    pub frames_received: u64,
    pub not_for_host: u64,
    pub truncated: u64,
    /// Frames the kernel dropped because the ring was full (PACKET_STATISTICS, cumulative).
    pub ring_drops: u64,
}

/// The packet socket and its mapped ring.
pub struct PacketPort {
    fd: OwnedFd,
    ring: *mut u8,
    ring_len: usize,
    next: usize,
    /// Where a frame larger than a slot is read to from the socket queue.
    large_frame: Vec<u8>,
    interface: String,
    ifindex: u32,
    mac: [u8; 6],
    counters: PacketPortCounters,
}

// SAFETY: the ring mapping belongs to this value alone; it is only touched through &mut self.
unsafe impl Send for PacketPort {}

impl Drop for PacketPort {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.ring as *mut libc::c_void, self.ring_len) };
    }
}

/// ARP, or IPv4 TCP to `vip` on one of `ports` (first fragments only: later fragments carry no
/// port and are not something a TCP client sends).
fn filter_program(filter: &IngressFilter) -> Vec<libc::sock_filter> {
    let ports = filter.ports.len();
    // Layout: 0 ethertype, 1 is-ARP, 2 is-IP, 3 daddr, 4 is-VIP, 5 proto, 6 is-TCP, 7 frag,
    // 8 frag-test, 9 ihl, 10 dport, 11.. one test per port, then reject, accept.
    let reject = 11 + ports;
    let accept = reject + 1;
    let to = |from: usize, target: usize| (target - from - 1) as u8;
    let mut p = vec![
        bpf(LD_H_ABS, 0, 0, 12),
        bpf(JEQ_K, to(1, accept), 0, u32::from(ETH_P_ARP)),
        bpf(JEQ_K, 0, to(2, reject), u32::from(ETH_P_IP)),
        bpf(LD_W_ABS, 0, 0, 30),
        bpf(JEQ_K, 0, to(4, reject), u32::from(filter.vip)),
        bpf(LD_B_ABS, 0, 0, 23),
        bpf(JEQ_K, 0, to(6, reject), 6),
        bpf(LD_H_ABS, 0, 0, 20),
        bpf(JSET_K, to(8, reject), 0, 0x1fff),
        bpf(LDX_B_MSH, 0, 0, ETH_HLEN as u32),
        bpf(LD_H_IND, 0, 0, ETH_HLEN as u32 + 2),
    ];
    for (i, port) in filter.ports.iter().enumerate() {
        let at = 11 + i;
        p.push(bpf(JEQ_K, to(at, accept), 0, u32::from(*port)));
    }
    p.push(bpf(RET_K, 0, 0, 0));
    p.push(bpf(RET_K, 0, 0, u32::MAX));
    p
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> bool {
    // SAFETY: `value` points to a live T of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        ) == 0
    }
}

impl PacketPort {
    pub fn open(interface: &str, filter: &IngressFilter) -> Result<PacketPort, PacketPortError> {
        let fail = |step| PacketPortError::Setup {
            interface: interface.to_string(),
            step,
            source: std::io::Error::last_os_error(),
        };
        let ifindex =
            nix::net::if_::if_nametoindex(interface).map_err(|e| PacketPortError::Setup {
                interface: interface.to_string(),
                step: "finding the interface",
                source: e.into(),
            })?;
        // Protocol 0: the socket receives nothing until `bind` names ETH_P_ALL, after the
        // filter is attached, so no unfiltered frame ever sits in the ring.
        // SAFETY: plain socket(2); the fd is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(fail("socket(AF_PACKET)"));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if !setsockopt(raw, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V2) {
            return Err(fail("PACKET_VERSION=TPACKET_V2"));
        }
        if attach(raw, &filter_program(filter)).is_err() {
            return Err(fail("SO_ATTACH_FILTER"));
        }
        let one: libc::c_int = 1;
        if !setsockopt(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &one) {
            return Err(fail("PACKET_IGNORE_OUTGOING"));
        }
        if !setsockopt(raw, libc::SOL_PACKET, PACKET_COPY_THRESH, &one) {
            return Err(fail("PACKET_COPY_THRESH"));
        }
        // Beyond net.core.rmem_max where the daemon may (CAP_NET_ADMIN); within it otherwise,
        // where fewer large frames can wait.
        if !setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &LARGE_FRAME_QUEUE_BYTES,
        ) && !setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &LARGE_FRAME_QUEUE_BYTES,
        ) {
            return Err(fail("SO_RCVBUF"));
        }
        let req = TpacketReq {
            tp_block_size: BLOCK_SIZE as u32,
            tp_block_nr: BLOCK_COUNT as u32,
            tp_frame_size: SLOT_SIZE as u32,
            tp_frame_nr: SLOT_COUNT as u32,
        };
        if !setsockopt(raw, libc::SOL_PACKET, PACKET_RX_RING, &req) {
            return Err(fail("PACKET_RX_RING"));
        }
        let ring_len = BLOCK_SIZE * BLOCK_COUNT;
        // SAFETY: maps the ring the kernel just allocated for this socket.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(fail("mmap of the ring"));
        }
        let port = PacketPort {
            fd,
            ring: ring as *mut u8,
            ring_len,
            next: 0,
            large_frame: vec![0; LARGE_FRAME_MAX],
            interface: interface.to_string(),
            ifindex,
            mac: interface_mac(interface).unwrap_or([0; 6]),
            counters: PacketPortCounters::default(),
        };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid before the fields are set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: a valid sockaddr_ll of the size passed.
        if unsafe {
            libc::bind(
                raw,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        } != 0
        {
            return Err(fail("bind to the interface"));
        }
        Ok(port)
    }

    pub fn interface_mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn interface_index(&self) -> u32 {
        self.ifindex
    }

    /// Hands the frames ready in the ring, at most `max`, to `f` in arrival order, and gives
    /// their slots back. Returns how many were handed.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(RxFrame<'_>)) -> usize {
        let mut handed = 0;
        for _ in 0..max.min(SLOT_COUNT) {
            // SAFETY: slot `next` lies inside the mapping (blocks are whole multiples of
            // slots, mapped one after the other); the header is the slot's start.
            let slot = unsafe { self.ring.add(self.next * SLOT_SIZE) };
            let header = slot as *mut Tpacket2Hdr;
            // SAFETY: the kernel writes tp_status concurrently: read it volatile.
            let status = unsafe { std::ptr::read_volatile(&(*header).tp_status) };
            if status & TP_STATUS_USER == 0 {
                break;
            }
            // The frame's bytes are visible once the status says so.
            fence(Ordering::Acquire);
            // SAFETY: the kernel handed this slot to user space; its header is complete.
            let (mac_offset, snaplen, len, received_at) = unsafe {
                (
                    usize::from((*header).tp_mac),
                    (*header).tp_snaplen as usize,
                    (*header).tp_len as usize,
                    std::time::Duration::new(
                        u64::from((*header).tp_sec),
                        (*header).tp_nsec.min(999_999_999),
                    ),
                )
            };
            // SAFETY: sll_pkttype of the sockaddr_ll after the header, inside the slot.
            let pkttype = unsafe { *slot.add(SOCKADDR_LL_OFFSET + 10) };
            self.counters.frames_received += 1;
            // The whole copy of a frame larger than a slot waits on the socket queue, queued
            // before its slot was handed over: it is the queue's oldest now. Taken even when
            // the frame is not ours, to keep the queue in step with the ring.
            let whole = if status & TP_STATUS_COPY != 0 {
                self.read_queued_frame()
            } else {
                None
            };
            if mac_offset + snaplen <= SLOT_SIZE {
                // Broadcasts too: a client's ARP request for the VIP is one.
                if pkttype == PACKET_HOST || pkttype == PACKET_BROADCAST {
                    let (data, truncated) = match whole {
                        Some(n) if n <= self.large_frame.len() => (&self.large_frame[..n], false),
                        _ => {
                            // SAFETY: [mac_offset, mac_offset + snaplen) lies inside the
                            // slot, which stays ours until tp_status is written below.
                            let data = unsafe {
                                std::slice::from_raw_parts(slot.add(mac_offset), snaplen)
                            };
                            (data, snaplen < len)
                        }
                    };
                    if truncated {
                        self.counters.truncated += 1;
                    }
                    f(RxFrame {
                        data,
                        original_len: len,
                        truncated,
                        checksum: RxChecksum::from_status(status),
                        received_at,
                    });
                    handed += 1;
                } else {
                    self.counters.not_for_host += 1;
                }
            }
            fence(Ordering::Release);
            // SAFETY: gives the slot back to the kernel.
            unsafe { std::ptr::write_volatile(&mut (*header).tp_status, TP_STATUS_KERNEL) };
            self.next = (self.next + 1) % SLOT_COUNT;
        }
        handed
    }

    /// Reads the oldest whole frame of the socket queue into `large_frame`; its length on the
    /// wire (longer than the buffer when it did not fit), or None when the queue was empty.
    fn read_queued_frame(&mut self) -> Option<usize> {
        // SAFETY: the buffer is valid for its length; MSG_TRUNC makes the kernel return the
        // frame's real length without writing past the buffer.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.large_frame.as_mut_ptr() as *mut libc::c_void,
                self.large_frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        usize::try_from(n).ok()
    }

    /// Sends a whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> Result<(), PacketPortError> {
        // SAFETY: `frame` is valid for its length; the socket is bound to the interface.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            return Err(PacketPortError::Send {
                interface: self.interface.clone(),
                len: frame.len(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    pub fn counters(&mut self) -> PacketPortCounters {
        let mut stats = [0u32; 2];
        let mut len = std::mem::size_of_val(&stats) as libc::socklen_t;
        // SAFETY: tpacket_stats is two u32 (packets, drops); `stats` has room for them.
        let ok = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                stats.as_mut_ptr() as *mut libc::c_void,
                &mut len,
            )
        } == 0;
        if ok {
            // The kernel resets its statistics on every read: accumulate.
            self.counters.ring_drops += u64::from(stats[1]);
        }
        self.counters
    }
}

impl AsRawFd for PacketPort {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PacketPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn interface_mac(interface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in mac.iter_mut() {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

/// When `frame` is an ARP request asking who has `vip` (and not a gratuitous one), the reply
/// that says `our_mac` has it.
pub fn arp_reply_for(frame: &[u8], vip: Ipv4Addr, our_mac: [u8; 6]) -> Option<Vec<u8>> {
    if frame.len() < ETH_HLEN + 28 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let arp = &frame[ETH_HLEN..ETH_HLEN + 28];
    let well_formed = arp[0..2] == [0, 1] && arp[2..4] == ETH_P_IP.to_be_bytes() && arp[4] == 6;
    if !well_formed || arp[5] != 4 || arp[6..8] != [0, 1] {
        return None;
    }
    let sender_mac: [u8; 6] = arp[8..14].try_into().ok()?;
    let sender_ip: [u8; 4] = arp[14..18].try_into().ok()?;
    let target_ip: [u8; 4] = arp[24..28].try_into().ok()?;
    if Ipv4Addr::from(target_ip) != vip || sender_ip == target_ip || sender_ip == [0; 4] {
        return None;
    }
    let mut reply = Vec::with_capacity(60);
    reply.extend_from_slice(&sender_mac);
    reply.extend_from_slice(&our_mac);
    reply.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    reply.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&our_mac);
    reply.extend_from_slice(&vip.octets());
    reply.extend_from_slice(&sender_mac);
    reply.extend_from_slice(&sender_ip);
    reply.resize(60, 0);
    Some(reply)
}

/// A frame that cannot be cut into MTU-sized pieces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("not an IPv4/TCP frame")]
    NotTcp,
    #[error("header lengths do not fit the frame ({0})")]
    BadLength(&'static str),
    #[error("MTU {mtu} leaves no room for payload after {headers} header bytes")]
    MtuTooSmall { mtu: usize, headers: usize },
}

fn ones_complement_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Splits an IPv4/TCP Ethernet frame whose IP packet exceeds `mtu` (a GRO-merged frame) into
/// frames that fit, with correct lengths, sequence numbers and checksums; a frame that fits is
/// returned as it is.
pub fn segment_oversized_tcp(frame: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>, SegmentError> {
    if frame.len() < ETH_HLEN + 20 || frame[12..14] != ETH_P_IP.to_be_bytes() {
        return Err(SegmentError::NotTcp);
    }
    let ip = &frame[ETH_HLEN..];
    if ip[0] >> 4 != 4 || ip[9] != 6 {
        return Err(SegmentError::NotTcp);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl + 20 || total > ip.len() {
        return Err(SegmentError::BadLength("IP header or total length"));
    }
    let doff = usize::from(ip[ihl + 12] >> 4) * 4;
    if doff < 20 || ihl + doff > total {
        return Err(SegmentError::BadLength("TCP data offset"));
    }
    if total <= mtu {
        return Ok(vec![frame[..ETH_HLEN + total].to_vec()]);
    }
    let headers = ihl + doff;
    if mtu <= headers {
        return Err(SegmentError::MtuTooSmall { mtu, headers });
    }
    let mss = mtu - headers;
    let payload = &ip[headers..total];
    let seq = u32::from_be_bytes(ip[ihl + 4..ihl + 8].try_into().expect("4 bytes"));
    let id = u16::from_be_bytes([ip[4], ip[5]]);
    let pieces = payload.len().div_ceil(mss);
    let mut out = Vec::with_capacity(pieces);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let last = i + 1 == pieces;
        let mut piece = Vec::with_capacity(ETH_HLEN + headers + chunk.len());
        piece.extend_from_slice(&frame[..ETH_HLEN + headers]);
        piece.extend_from_slice(chunk);
        let ip = &mut piece[ETH_HLEN..];
        let length = (headers + chunk.len()) as u16;
        ip[2..4].copy_from_slice(&length.to_be_bytes());
        ip[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let ip_sum = fold(ones_complement_sum(0, &ip[..ihl]));
        ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let tcp = ihl;
        let piece_seq = seq.wrapping_add((i * mss) as u32);
        ip[tcp + 4..tcp + 8].copy_from_slice(&piece_seq.to_be_bytes());
        if !last {
            // FIN and PSH belong to the last byte of the original segment.
            ip[tcp + 13] &= !0x09;
        }
        ip[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&ip[12..20]);
        pseudo[9] = 6;
        let tcp_len = (doff + chunk.len()) as u16;
        pseudo[10..12].copy_from_slice(&tcp_len.to_be_bytes());
        let sum = ones_complement_sum(ones_complement_sum(0, &pseudo), &ip[tcp..]);
        let checksum = fold(sum);
        ip[tcp + 16..tcp + 18].copy_from_slice(&checksum.to_be_bytes());
        out.push(piece);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(payload_len: usize, flags: u8) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 100], 64)
            .tcp(40000, 80, 0xffff_fff0, 1000);
        let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
        let mut frame = Vec::new();
        builder.write(&mut frame, &payload).unwrap();
        // The pieces' checksums are computed afresh, so the flags can be set after the fact.
        frame[ETH_HLEN + 20 + 13] |= flags;
        frame
    }

    #[test]
    fn a_partial_checksum_is_filled_in_a_verified_one_trusted_any_other_checked() {
        let user = TP_STATUS_USER;
        assert_eq!(
            RxChecksum::from_status(user | TP_STATUS_CSUMNOTREADY),
            RxChecksum::Partial
        );
        assert_eq!(
            RxChecksum::from_status(user | TP_STATUS_CSUM_VALID),
            RxChecksum::Verified
        );
        assert_eq!(
            RxChecksum::from_status(user | TP_STATUS_COPY),
            RxChecksum::Unchecked
        );
        // The kernel sets one or the other; partial wins (its field is not a checksum yet).
        assert_eq!(
            RxChecksum::from_status(user | TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID),
            RxChecksum::Partial
        );
    }

    #[test]
    fn oversized_frames_are_cut_with_valid_checksums_and_sequence() {
        let frame = tcp_frame(5000, 0x09);
        let pieces = segment_oversized_tcp(&frame, 1500).unwrap();
        assert_eq!(pieces.len(), 4);
        let mut joined = Vec::new();
        let mut expected_seq = 0xffff_fff0u32;
        for (i, piece) in pieces.iter().enumerate() {
            let sliced = etherparse::SlicedPacket::from_ethernet(piece).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
                panic!("not IPv4")
            };
            assert!(ip.header().total_len() as usize <= 1500);
            let header = ip.header().to_header();
            assert_eq!(header.header_checksum, header.calc_header_checksum());
            let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
                panic!("not TCP")
            };
            assert_eq!(tcp.sequence_number(), expected_seq);
            let payload = tcp.payload();
            let checksum = tcp
                .to_header()
                .calc_checksum_ipv4(&header, payload)
                .unwrap();
            assert_eq!(tcp.checksum(), checksum, "piece {i}");
            let last = i + 1 == pieces.len();
            assert_eq!(tcp.fin(), last);
            assert_eq!(tcp.psh(), last);
            expected_seq = expected_seq.wrapping_add(payload.len() as u32);
            joined.extend_from_slice(payload);
        }
        let original: Vec<u8> = (0..5000).map(|i| (i % 251) as u8).collect();
        assert_eq!(joined, original);
    }

    #[test]
    fn fitting_frames_pass_unchanged_and_lies_are_refused() {
        let frame = tcp_frame(100, 0);
        assert_eq!(
            segment_oversized_tcp(&frame, 1500).unwrap(),
            vec![frame.clone()]
        );
        let mut lying = frame.clone();
        lying[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&9000u16.to_be_bytes());
        assert!(segment_oversized_tcp(&lying, 1500).is_err());
        let mut bad_offset = frame.clone();
        bad_offset[ETH_HLEN + 20 + 12] = 0x20;
        assert!(segment_oversized_tcp(&bad_offset, 1500).is_err());
        assert_eq!(
            segment_oversized_tcp(&frame[..20], 1500),
            Err(SegmentError::NotTcp)
        );
    }

    #[test]
    fn arp_requests_for_the_vip_get_our_mac() {
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        let ours = [2, 0, 0, 0, 0, 9];
        let mut request = vec![0xff; 6];
        request.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        request.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 0, 2]);
        request.extend_from_slice(&[0; 6]);
        request.extend_from_slice(&vip.octets());
        let reply = arp_reply_for(&request, vip, ours).unwrap();
        assert_eq!(&reply[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&reply[20..22], &[0, 2]);
        assert_eq!(&reply[22..28], &ours);
        assert_eq!(&reply[28..32], &vip.octets());
        assert_eq!(&reply[38..42], &[10, 0, 0, 2]);
        // Another address, a gratuitous announcement, a truncated frame: no answer.
        assert!(arp_reply_for(&request, Ipv4Addr::new(10, 0, 0, 101), ours).is_none());
        let mut gratuitous = request.clone();
        gratuitous[28..32].copy_from_slice(&vip.octets());
        assert!(arp_reply_for(&gratuitous, vip, ours).is_none());
        assert!(arp_reply_for(&request[..30], vip, ours).is_none());
    }
}
