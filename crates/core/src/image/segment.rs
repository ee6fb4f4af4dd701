//! Parsing of client frames (Ethernet II / IPv4 / TCP) and TCP checksum repair.
//!
//! The fixed headers are sliced with `etherparse`; the TCP options are walked here because
//! etherparse stops at the first option kind it does not know (TFO, MD5, MPTCP, ...), and a client
//! that sends one of those is a valid client. Every length in the frame is checked against the
//! bytes that are really there before anything is read, so a malformed frame always becomes a
//! [`FrameDrop`] and never a half-parsed segment.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;

use etherparse::checksum::Sum16BitWords;
use etherparse::{err, Ethernet2HeaderSlice, Ipv4HeaderSlice, TcpHeaderSlice};

/// Length of an Ethernet II header (no VLAN tag: `AF_PACKET` hands tags over out of band).
pub const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IP_PROTOCOL_TCP: u8 = 6;
const IPV4_MIN_HEADER_LEN: usize = 20;
const TCP_MIN_HEADER_LEN: usize = 20;
/// Offset of the checksum field inside the TCP header.
const TCP_CHECKSUM_OFFSET: usize = 16;

const OPTION_END: u8 = 0;
const OPTION_NOOP: u8 = 1;
const OPTION_MSS: u8 = 2;
const OPTION_WINDOW_SCALE: u8 = 3;
const OPTION_SACK_PERMITTED: u8 = 4;
const OPTION_SACK: u8 = 5;
const OPTION_TIMESTAMPS: u8 = 8;

/// A connection as seen from the client's frames: the client is the source, the service
/// (VIP:port) the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FourTuple {
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
}

impl std::fmt::Display for FourTuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.client, self.server)
    }
}

/// The TCP header flags (NS is not kept: ECN nonces are obsolete, RFC 8311).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags {
    pub fin: bool,
    pub syn: bool,
    pub rst: bool,
    pub psh: bool,
    pub ack: bool,
    pub urg: bool,
    pub ece: bool,
    pub cwr: bool,
}

/// The TCP timestamps option (RFC 7323).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timestamps {
    /// TSval: the sender's (here the client's) timestamp clock.
    pub value: u32,
    /// TSecr: the peer's (here the server's) TSval echoed back.
    pub echo_reply: u32,
}

/// The TCP options the image needs; every other well-formed option is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    /// The shift as sent (RFC 7323 caps its use at 14; the cap is applied where it is used).
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: Option<Timestamps>,
}

/// One TCP segment sent by a client, as parsed from its Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientSegment {
    pub tuple: FourTuple,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    /// The window field as sent, before any window scaling.
    pub window: u16,
    pub options: TcpOptions,
    /// Where the TCP payload lies in the frame (Ethernet padding after the IPv4 total length
    /// is excluded).
    pub payload: Range<usize>,
}

impl ClientSegment {
    /// The payload bytes of this segment inside `frame`, the frame it was parsed from; `None`
    /// when `frame` is shorter than that (it is another frame).
    pub fn payload_in<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.payload.clone())
    }
}

/// Why a frame was dropped by the parser. Every variant says where in the frame the fault is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameDrop {
    #[error(
        "frame of {len} bytes is shorter than an Ethernet header ({ETHERNET_HEADER_LEN} bytes)"
    )]
    TruncatedEthernet { len: usize },
    #[error("Ethernet type {ether_type:#06x} is not IPv4 (0x0800)")]
    NotIpv4 { ether_type: u16 },
    #[error(
        "only {available} bytes follow the Ethernet header, fewer than an IPv4 header (20 bytes)"
    )]
    TruncatedIpv4Header { available: usize },
    #[error("IP version field is {version}, expected 4 (Ethernet type said IPv4)")]
    NotIpVersion4 { version: u8 },
    #[error("IPv4 header length field (IHL) is {ihl} words, below the minimum of 5")]
    Ipv4HeaderLengthTooSmall { ihl: u8 },
    #[error(
        "IPv4 header length {header_len} bytes (from IHL) runs beyond the frame: \
         {available} bytes follow the Ethernet header"
    )]
    Ipv4HeaderBeyondFrame { header_len: usize, available: usize },
    #[error("IPv4 total length {total_len} is smaller than its own header ({header_len} bytes)")]
    Ipv4TotalLengthTooSmall { total_len: usize, header_len: usize },
    #[error(
        "IPv4 total length {total_len} runs beyond the frame: {available} bytes follow the \
         Ethernet header"
    )]
    Ipv4TotalLengthBeyondFrame { total_len: usize, available: usize },
    #[error("IPv4 header checksum {found:#06x} does not match the header")]
    BadIpv4HeaderChecksum { found: u16 },
    #[error(
        "IPv4 fragment (more-fragments {more_fragments}, offset {offset_bytes} bytes): \
         fragments are not reassembled by the logger"
    )]
    Fragmented {
        more_fragments: bool,
        offset_bytes: u32,
    },
    #[error("IPv4 protocol {protocol} is not TCP (6)")]
    NotTcp { protocol: u8 },
    #[error("TCP segment of {segment_len} bytes is shorter than a TCP header (20 bytes)")]
    TruncatedTcpHeader { segment_len: usize },
    #[error("TCP data offset is {data_offset} words, below the minimum of 5")]
    TcpDataOffsetTooSmall { data_offset: u8 },
    #[error(
        "TCP header length {header_len} bytes (from the data offset) runs beyond the segment of \
         {segment_len} bytes"
    )]
    TcpHeaderBeyondSegment {
        header_len: usize,
        segment_len: usize,
    },
    #[error(
        "TCP option kind {kind} at option byte {offset} has no length byte: the option area \
         ends there"
    )]
    TcpOptionTruncated { kind: u8, offset: usize },
    #[error(
        "TCP option kind {kind} at option byte {offset} claims length {length}, which is not \
         valid for this kind"
    )]
    TcpOptionBadLength { kind: u8, length: u8, offset: usize },
    #[error(
        "TCP option kind {kind} at option byte {offset} claims length {length}, but only \
         {available} option bytes remain"
    )]
    TcpOptionBeyondHeader {
        kind: u8,
        length: u8,
        offset: usize,
        available: usize,
    },
}

impl FrameDrop {
    /// A stable short name per variant, for counters and status output.
    pub fn reason_code(&self) -> &'static str {
        match self {
            FrameDrop::TruncatedEthernet { .. } => "truncated_ethernet",
            FrameDrop::NotIpv4 { .. } => "not_ipv4",
            FrameDrop::TruncatedIpv4Header { .. } => "truncated_ipv4_header",
            FrameDrop::NotIpVersion4 { .. } => "not_ip_version_4",
            FrameDrop::Ipv4HeaderLengthTooSmall { .. } => "ipv4_header_length_too_small",
            FrameDrop::Ipv4HeaderBeyondFrame { .. } => "ipv4_header_beyond_frame",
            FrameDrop::Ipv4TotalLengthTooSmall { .. } => "ipv4_total_length_too_small",
            FrameDrop::Ipv4TotalLengthBeyondFrame { .. } => "ipv4_total_length_beyond_frame",
            FrameDrop::BadIpv4HeaderChecksum { .. } => "bad_ipv4_header_checksum",
            FrameDrop::Fragmented { .. } => "fragmented",
            FrameDrop::NotTcp { .. } => "not_tcp",
            FrameDrop::TruncatedTcpHeader { .. } => "truncated_tcp_header",
            FrameDrop::TcpDataOffsetTooSmall { .. } => "tcp_data_offset_too_small",
            FrameDrop::TcpHeaderBeyondSegment { .. } => "tcp_header_beyond_segment",
            FrameDrop::TcpOptionTruncated { .. } => "tcp_option_truncated",
            FrameDrop::TcpOptionBadLength { .. } => "tcp_option_bad_length",
            FrameDrop::TcpOptionBeyondHeader { .. } => "tcp_option_beyond_header",
        }
    }
}

/// The validated layout of a frame, shared by the parser and the checksum functions.
struct Layout<'a> {
    ip_header: Ipv4HeaderSlice<'a>,
    tcp_header: TcpHeaderSlice<'a>,
    /// Where the TCP header starts in the frame.
    tcp_start: usize,
    /// Where the TCP segment (header and payload) ends in the frame.
    tcp_end: usize,
}

fn validate_layout(frame: &[u8]) -> Result<Layout<'_>, FrameDrop> {
    let ethernet = Ethernet2HeaderSlice::from_slice(frame)
        .map_err(|_| FrameDrop::TruncatedEthernet { len: frame.len() })?;
    let ether_type = ethernet.ether_type().0;
    if ether_type != ETHERTYPE_IPV4 {
        return Err(FrameDrop::NotIpv4 { ether_type });
    }

    let ip_bytes = &frame[ETHERNET_HEADER_LEN..];
    let available = ip_bytes.len();
    let ip_header = Ipv4HeaderSlice::from_slice(ip_bytes).map_err(|error| match error {
        err::ipv4::HeaderSliceError::Content(err::ipv4::HeaderError::UnexpectedVersion {
            version_number,
        }) => FrameDrop::NotIpVersion4 {
            version: version_number,
        },
        err::ipv4::HeaderSliceError::Content(
            err::ipv4::HeaderError::HeaderLengthSmallerThanHeader { ihl },
        ) => FrameDrop::Ipv4HeaderLengthTooSmall { ihl },
        err::ipv4::HeaderSliceError::Len(len) if len.required_len <= IPV4_MIN_HEADER_LEN => {
            FrameDrop::TruncatedIpv4Header { available }
        }
        err::ipv4::HeaderSliceError::Len(len) => FrameDrop::Ipv4HeaderBeyondFrame {
            header_len: len.required_len,
            available,
        },
    })?;
    let header_len = ip_header.slice().len();
    let total_len = usize::from(ip_header.total_len());
    if total_len < header_len {
        return Err(FrameDrop::Ipv4TotalLengthTooSmall {
            total_len,
            header_len,
        });
    }
    if total_len > available {
        return Err(FrameDrop::Ipv4TotalLengthBeyondFrame {
            total_len,
            available,
        });
    }
    // The kernel of the primary would drop such a packet; logging its bytes would put into the
    // image data the primary never accepted.
    if Sum16BitWords::new()
        .add_slice(ip_header.slice())
        .ones_complement()
        != 0
    {
        return Err(FrameDrop::BadIpv4HeaderChecksum {
            found: ip_header.header_checksum(),
        });
    }
    if ip_header.is_fragmenting_payload() {
        return Err(FrameDrop::Fragmented {
            more_fragments: ip_header.more_fragments(),
            offset_bytes: u32::from(ip_header.fragments_offset().value()) * 8,
        });
    }
    let protocol = ip_header.protocol().0;
    if protocol != IP_PROTOCOL_TCP {
        return Err(FrameDrop::NotTcp { protocol });
    }

    let tcp_start = ETHERNET_HEADER_LEN + header_len;
    let tcp_end = ETHERNET_HEADER_LEN + total_len;
    let segment = &frame[tcp_start..tcp_end];
    let segment_len = segment.len();
    let tcp_header = TcpHeaderSlice::from_slice(segment).map_err(|error| match error {
        err::tcp::HeaderSliceError::Content(err::tcp::HeaderError::DataOffsetTooSmall {
            data_offset,
        }) => FrameDrop::TcpDataOffsetTooSmall { data_offset },
        err::tcp::HeaderSliceError::Len(len) if len.required_len <= TCP_MIN_HEADER_LEN => {
            FrameDrop::TruncatedTcpHeader { segment_len }
        }
        err::tcp::HeaderSliceError::Len(len) => FrameDrop::TcpHeaderBeyondSegment {
            header_len: len.required_len,
            segment_len,
        },
    })?;
    Ok(Layout {
        ip_header,
        tcp_header,
        tcp_start,
        tcp_end,
    })
}

/// Walks the option area. Every option but END and NOOP has a length byte that counts its kind
/// and length bytes and must fit in what remains; the kinds the image reads must also have
/// their fixed length (RFC 9293, RFC 7323, RFC 2018), else the option lies about its content.
fn parse_options(area: &[u8]) -> Result<TcpOptions, FrameDrop> {
    let mut options = TcpOptions::default();
    let mut offset = 0;
    while offset < area.len() {
        let kind = area[offset];
        match kind {
            OPTION_END => break,
            OPTION_NOOP => {
                offset += 1;
                continue;
            }
            _ => {}
        }
        let Some(&length) = area.get(offset + 1) else {
            return Err(FrameDrop::TcpOptionTruncated { kind, offset });
        };
        let available = area.len() - offset;
        let fixed_length_ok = match kind {
            OPTION_MSS => length == 4,
            OPTION_WINDOW_SCALE => length == 3,
            OPTION_SACK_PERMITTED => length == 2,
            OPTION_TIMESTAMPS => length == 10,
            OPTION_SACK => length >= 10 && (length - 2).is_multiple_of(8),
            _ => length >= 2,
        };
        if !fixed_length_ok {
            return Err(FrameDrop::TcpOptionBadLength {
                kind,
                length,
                offset,
            });
        }
        if usize::from(length) > available {
            return Err(FrameDrop::TcpOptionBeyondHeader {
                kind,
                length,
                offset,
                available,
            });
        }
        let body = &area[offset + 2..offset + usize::from(length)];
        match kind {
            OPTION_MSS => options.mss = Some(u16::from_be_bytes([body[0], body[1]])),
            OPTION_WINDOW_SCALE => options.window_scale = Some(body[0]),
            OPTION_SACK_PERMITTED => options.sack_permitted = true,
            OPTION_TIMESTAMPS => {
                options.timestamps = Some(Timestamps {
                    value: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    echo_reply: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                })
            }
            _ => {}
        }
        offset += usize::from(length);
    }
    Ok(options)
}

/// Parses a raw Ethernet frame sent by a client. Either every length and offset in it is
/// consistent and the whole segment is returned, or the frame is dropped with the reason.
/// Checksums other than the IPv4 header's are not checked here: see [`tcp_checksum_is_valid`].
pub fn parse_client_frame(frame: &[u8]) -> Result<ClientSegment, FrameDrop> {
    let layout = validate_layout(frame)?;
    let tcp = &layout.tcp_header;
    let options = parse_options(tcp.options())?;
    let header_len = tcp.slice().len();
    Ok(ClientSegment {
        tuple: FourTuple {
            client: SocketAddrV4::new(layout.ip_header.source_addr(), tcp.source_port()),
            server: SocketAddrV4::new(layout.ip_header.destination_addr(), tcp.destination_port()),
        },
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags: TcpFlags {
            fin: tcp.fin(),
            syn: tcp.syn(),
            rst: tcp.rst(),
            psh: tcp.psh(),
            ack: tcp.ack(),
            urg: tcp.urg(),
            ece: tcp.ece(),
            cwr: tcp.cwr(),
        },
        window: tcp.window_size(),
        options,
        payload: layout.tcp_start + header_len..layout.tcp_end,
    })
}

/// The ones' complement sum of the pseudo-header and the TCP segment, with the checksum field
/// itself counted or skipped.
fn tcp_sum(layout: &Layout<'_>, frame: &[u8], include_checksum_field: bool) -> Sum16BitWords {
    let segment = &frame[layout.tcp_start..layout.tcp_end];
    // The IPv4 total length is a u16, so the segment length always fits.
    let tcp_len_field = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    let src: Ipv4Addr = layout.ip_header.source_addr();
    let dst: Ipv4Addr = layout.ip_header.destination_addr();
    let pseudo_header = Sum16BitWords::new()
        .add_4bytes(src.octets())
        .add_4bytes(dst.octets())
        .add_2bytes([0, IP_PROTOCOL_TCP])
        .add_2bytes(tcp_len_field.to_be_bytes());
    if include_checksum_field {
        pseudo_header.add_slice(segment)
    } else {
        pseudo_header
            .add_slice(&segment[..TCP_CHECKSUM_OFFSET])
            .add_slice(&segment[TCP_CHECKSUM_OFFSET + 2..])
    }
}

/// Rewrites the TCP checksum of `frame` in place so it is correct for the segment's bytes.
/// Frames captured from a veth carry only the pseudo-header sum (checksum offload); re-sent as
/// they are, the primary counts them in `TcpInCsumErrors` and drops them. The frame is validated
/// first; a malformed one is left untouched.
pub fn tcp_checksum_fixup(frame: &mut [u8]) -> Result<(), FrameDrop> {
    let (checksum, at) = {
        let layout = validate_layout(frame)?;
        (
            // etherparse sums native-endian words; from_be turns its result into the value.
            u16::from_be(tcp_sum(&layout, frame, false).ones_complement()),
            layout.tcp_start + TCP_CHECKSUM_OFFSET,
        )
    };
    frame[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
    Ok(())
}

/// Whether the TCP checksum of `frame` is correct. Only meaningful for frames the kernel did
/// not mark as checksum-partial (`TP_STATUS_CSUMNOTREADY`); those are fixed, not judged.
pub fn tcp_checksum_is_valid(frame: &[u8]) -> Result<bool, FrameDrop> {
    let layout = validate_layout(frame)?;
    // A correct checksum makes the sum over everything, itself included, all ones.
    Ok(tcp_sum(&layout, frame, true).ones_complement() == 0)
}
