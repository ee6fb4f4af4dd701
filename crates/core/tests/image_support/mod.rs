//! Shared helpers of the image tests: a byte-level frame builder and a plain checksum reference,
//! written independently of the parser under test.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use steadfast_core::image::{ClientSegment, FourTuple, TcpFlags, TcpOptions, Timestamps};

pub const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 2), 40000);
pub const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 100), 80);

pub fn tuple() -> FourTuple {
    FourTuple {
        client: CLIENT,
        server: SERVICE,
    }
}

/// Everything that goes into a client frame.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    /// Raw option bytes, padded here to a multiple of 4 with END.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Bytes of Ethernet padding after the IP packet.
    pub trailer: usize,
}

impl Default for FrameSpec {
    fn default() -> Self {
        FrameSpec {
            client: CLIENT,
            server: SERVICE,
            seq: 1000,
            ack: 5000,
            flags: TcpFlags {
                ack: true,
                ..TcpFlags::default()
            },
            window: 512,
            options: Vec::new(),
            payload: Vec::new(),
            trailer: 0,
        }
    }
}

pub fn flag_byte(flags: TcpFlags) -> u8 {
    u8::from(flags.fin)
        | u8::from(flags.syn) << 1
        | u8::from(flags.rst) << 2
        | u8::from(flags.psh) << 3
        | u8::from(flags.ack) << 4
        | u8::from(flags.urg) << 5
        | u8::from(flags.ece) << 6
        | u8::from(flags.cwr) << 7
}

/// Offsets of a built frame: the IP header at 14, the TCP header at `TCP_AT`.
pub const IP_AT: usize = 14;
pub const TCP_AT: usize = 34;

impl FrameSpec {
    pub fn build(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        assert!(options.len() <= 40, "TCP options cannot exceed 40 bytes");
        let tcp_len = 20 + options.len() + self.payload.len();
        let total_len = 20 + tcp_len;
        let mut frame = Vec::with_capacity(14 + total_len + self.trailer);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // destination MAC
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // source MAC
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.push(0x45);
        frame.push(0);
        frame.extend_from_slice(&(total_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0x12, 0x34, 0x40, 0x00]); // id, DF
        frame.push(64);
        frame.push(6);
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&self.client.ip().octets());
        frame.extend_from_slice(&self.server.ip().octets());
        frame.extend_from_slice(&self.client.port().to_be_bytes());
        frame.extend_from_slice(&self.server.port().to_be_bytes());
        frame.extend_from_slice(&self.seq.to_be_bytes());
        frame.extend_from_slice(&self.ack.to_be_bytes());
        frame.push((((20 + options.len()) / 4) as u8) << 4);
        frame.push(flag_byte(self.flags));
        frame.extend_from_slice(&self.window.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        frame.extend_from_slice(&options);
        frame.extend_from_slice(&self.payload);
        frame.extend(std::iter::repeat_n(0u8, self.trailer));
        fix_ip_checksum(&mut frame);
        let checksum = reference_tcp_checksum(&frame);
        frame[TCP_AT + 16..TCP_AT + 18].copy_from_slice(&checksum.to_be_bytes());
        frame
    }
}

/// Recomputes the IPv4 header checksum of a frame (after a test edited the header).
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[IP_AT] & 0x0f) * 4;
    frame[IP_AT + 10] = 0;
    frame[IP_AT + 11] = 0;
    let checksum = ones_complement_sum(&frame[IP_AT..IP_AT + ihl]);
    frame[IP_AT + 10..IP_AT + 12].copy_from_slice(&(!checksum).to_be_bytes());
}

/// RFC 1071, the plain way: 16-bit big-endian words into a wide sum, carries folded at the end.
pub fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u64::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP checksum a frame built by [`FrameSpec`] (IHL 5) should carry.
pub fn reference_tcp_checksum(frame: &[u8]) -> u16 {
    let total_len = usize::from(u16::from_be_bytes([frame[IP_AT + 2], frame[IP_AT + 3]]));
    let ihl = usize::from(frame[IP_AT] & 0x0f) * 4;
    let tcp_at = IP_AT + ihl;
    let tcp_end = IP_AT + total_len;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&frame[IP_AT + 12..IP_AT + 20]);
    bytes.push(0);
    bytes.push(6);
    bytes.extend_from_slice(&((tcp_end - tcp_at) as u16).to_be_bytes());
    let mut segment = frame[tcp_at..tcp_end].to_vec();
    segment[16] = 0;
    segment[17] = 0;
    bytes.extend_from_slice(&segment);
    !ones_complement_sum(&bytes)
}

pub fn syn_options(mss: u16, window_scale: u8, sack: bool, tsval: u32) -> Vec<u8> {
    let mut options = vec![2, 4];
    options.extend_from_slice(&mss.to_be_bytes());
    if sack {
        options.extend_from_slice(&[4, 2]);
    }
    options.extend_from_slice(&[8, 10]);
    options.extend_from_slice(&tsval.to_be_bytes());
    options.extend_from_slice(&0u32.to_be_bytes());
    options.extend_from_slice(&[1, 3, 3, window_scale]);
    options
}

/// A segment as the parser would return it, built without a frame (for image tests).
pub fn segment(seq: u32, ack: u32, flags: TcpFlags, payload_len: usize) -> ClientSegment {
    ClientSegment {
        tuple: tuple(),
        seq,
        ack,
        flags,
        window: 1000,
        options: TcpOptions::default(),
        payload: 0..payload_len,
    }
}

pub fn syn(isn: u32) -> ClientSegment {
    ClientSegment {
        options: TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some(Timestamps {
                value: 77,
                echo_reply: 0,
            }),
        },
        window: 64240,
        ..segment(
            isn,
            0,
            TcpFlags {
                syn: true,
                ..TcpFlags::default()
            },
            0,
        )
    }
}

pub const ACK: TcpFlags = TcpFlags {
    fin: false,
    syn: false,
    rst: false,
    psh: false,
    ack: true,
    urg: false,
    ece: false,
    cwr: false,
};
pub const FIN_ACK: TcpFlags = TcpFlags { fin: true, ..ACK };
pub const RST: TcpFlags = TcpFlags {
    rst: true,
    ack: false,
    ..ACK
};
