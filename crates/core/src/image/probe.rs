//! The acknowledgement probe a new primary sends each client before it rebuilds the client's
//! connection.
//!
//! The image knows the reply bytes the client acknowledged in the frames the logger saw. The
//! client may have acknowledged more just before the takeover (a delayed ACK, an ACK still in
//! flight, a window update after a full buffer): such ACKs never reach a log. A socket rebuilt
//! from the older value then ignores every client ACK for bytes it has not sent itself yet
//! ("ACK of unsent data", RFC 9293 3.10.7.4) and, once its first flight is out, waits forever.
//! The probe asks the client: it is a segment wholly before the client's window, which a TCP
//! must answer with an ACK carrying its current receive point (RFC 9293 3.10.7.4, "If a segment
//! is not acceptable, an acknowledgment should be sent"). The logger logs that answer like any
//! client frame, and the rebuild uses it.
//!
//! The probe carries one byte the client received long ago, not zero: Linux answers an
//! out-of-window *pure* ACK at most once per 500 ms per socket (`tcp_invalid_ratelimit`, counted
//! as `TCPACKSkippedSeq`), and a takeover may probe a client twice within milliseconds (here,
//! then again to reset a connection it cannot carry on); a segment with data is always answered.
//! Being wholly old, the byte is never delivered.

use std::net::Ipv4Addr;

use etherparse::{PacketBuilder, TcpOptionElement};

use super::{ConnectionImage, FourTuple, UnadoptedConnection};

/// One acknowledgement probe, server to client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckProbe {
    pub from: (Ipv4Addr, u16),
    pub to: (Ipv4Addr, u16),
    /// The probe's one byte ends one before the first reply byte the image says is
    /// unacknowledged: wholly before the client's window (which starts at or after that byte),
    /// so the client answers it and otherwise ignores it.
    pub seq: u32,
    /// The next client byte the image holds (no client byte is acknowledged beyond the log).
    pub ack: u32,
    /// (TSval, TSecr) when the connection uses timestamps. TSval must not be behind what the
    /// client last saw, or PAWS drops the probe without an answer.
    pub timestamps: Option<(u32, u32)>,
}

impl AckProbe {
    /// The probe for `image`, or `None` while its handshake is incomplete. `tsval` is the
    /// timestamp clock the rebuilt socket will continue.
    pub fn for_image(image: &ConnectionImage, tsval: Option<u32>) -> Option<AckProbe> {
        let snd_una = image.snd_una()?;
        Some(AckProbe::to_client(
            image.tuple(),
            snd_una.wrapping_sub(2),
            image.rcv_nxt(),
            tsval,
        ))
    }

    /// The probe for a connection the backup does not protect, only ever sent to end it: the
    /// client's answer meets no socket and is reset. With the client's latest numbers it is a
    /// byte wholly before the client's window; without them (no segment of the connection
    /// passed here) the numbers are arbitrary, which serves the same end: a TCP answers any
    /// segment it cannot accept with an ACK (RFC 9293 3.10.7.4), one that fails PAWS or
    /// arrives out of order included, and Linux limits none of those answers for a segment
    /// with data.
    pub fn for_unadopted(
        tuple: FourTuple,
        seen: Option<&UnadoptedConnection>,
        tsval: Option<u32>,
    ) -> AckProbe {
        let (seq, ack) = seen.map_or((0, 0), |record| {
            (record.acked.wrapping_sub(2), record.next_seq)
        });
        AckProbe::to_client(tuple, seq, ack, tsval)
    }

    fn to_client(tuple: FourTuple, seq: u32, ack: u32, tsval: Option<u32>) -> AckProbe {
        AckProbe {
            from: (*tuple.server.ip(), tuple.server.port()),
            to: (*tuple.client.ip(), tuple.client.port()),
            seq,
            ack,
            timestamps: tsval.map(|tsval| (tsval, 0)),
        }
    }

    /// The IPv4 packet (header and TCP segment, checksums filled in).
    pub fn encode(&self) -> Vec<u8> {
        // A small advertised window: the probe must not invite the client to send much before
        // the rebuilt socket exists (it drops what arrives meanwhile; the client resends).
        const PROBE_WINDOW: u16 = 1024;
        const PROBE_PAYLOAD: [u8; 1] = [0];
        let builder = PacketBuilder::ipv4(self.from.0.octets(), self.to.0.octets(), 64)
            .tcp(self.from.1, self.to.1, self.seq, PROBE_WINDOW)
            .ack(self.ack);
        let builder = match self.timestamps {
            Some((tsval, tsecr)) => builder
                .options(&[
                    TcpOptionElement::Noop,
                    TcpOptionElement::Noop,
                    TcpOptionElement::Timestamp(tsval, tsecr),
                ])
                .expect("12 bytes of options fit a TCP header"),
            None => builder,
        };
        let mut packet = Vec::with_capacity(builder.size(PROBE_PAYLOAD.len()));
        builder
            .write(&mut packet, &PROBE_PAYLOAD)
            .expect("writing to a Vec cannot fail");
        packet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn probe(timestamps: Option<(u32, u32)>) -> AckProbe {
        AckProbe {
            from: (Ipv4Addr::new(10, 0, 0, 100), 80),
            to: (Ipv4Addr::new(10, 0, 0, 2), 40000),
            seq: 0xffff_ffff,
            ack: 12345,
            timestamps,
        }
    }

    #[test]
    fn encodes_a_one_byte_ack_with_timestamps() {
        let packet = probe(Some((7, 0))).encode();
        let sliced = SlicedPacket::from_ip(&packet).expect("a valid IPv4 packet");
        let Some(NetSlice::Ipv4(ip)) = sliced.net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 0, 0, 2));
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("not TCP");
        };
        assert!(tcp.ack() && !tcp.syn() && !tcp.fin() && !tcp.rst());
        assert_eq!(tcp.sequence_number(), 0xffff_ffff);
        assert_eq!(tcp.acknowledgment_number(), 12345);
        assert_eq!(
            tcp.payload(),
            &[0],
            "one old byte, so Linux answers without rate limit"
        );
        let options: Vec<_> = tcp.options_iterator().collect::<Result<_, _>>().unwrap();
        assert!(options.contains(&TcpOptionElement::Timestamp(7, 0)));
        let checksum = tcp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
            .unwrap();
        assert_eq!(checksum, tcp.checksum(), "the TCP checksum is filled in");
    }

    #[test]
    fn an_unadopted_connection_is_probed_before_the_window_its_client_showed() {
        let tuple = FourTuple {
            client: "10.0.0.2:40000".parse().unwrap(),
            server: "10.0.0.100:80".parse().unwrap(),
        };
        let record = UnadoptedConnection {
            tuple,
            acked: 1,
            next_seq: 5000,
            last_tsecr: Some(9),
        };
        let probe = AckProbe::for_unadopted(tuple, Some(&record), Some(20));
        assert_eq!(
            (probe.seq, probe.ack, probe.timestamps),
            (u32::MAX, 5000, Some((20, 0))),
            "the byte two before the acknowledged point, wrapping below zero"
        );
        assert_eq!(probe.to, (Ipv4Addr::new(10, 0, 0, 2), 40000));
        let blind = AckProbe::for_unadopted(tuple, None, None);
        assert_eq!(
            blind.encode().len(),
            41,
            "still one byte, so always answered"
        );
    }

    #[test]
    fn encodes_without_options_when_timestamps_are_off() {
        let packet = probe(None).encode();
        assert_eq!(packet.len(), 41, "20 bytes of IPv4, 20 of TCP, one byte");
    }
}
