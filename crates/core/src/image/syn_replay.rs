//! A client's SYN, given again to a new primary's kernel at a takeover.
//!
//! A connection whose handshake the log never saw complete (its SYN logged, no ACK yet) cannot
//! be rebuilt: the server ISN the client may have been told is unknown. Its client is waiting
//! for a SYN-ACK the dead primary either never sent or sent and lost; left alone, it sends its
//! SYN again only after its retransmission timeout (1 s on Linux, 3 s on older stacks), so
//! every connection a client opened during the failover would stall a second or more.
//!
//! The new primary instead hands the logged SYN to its own kernel as soon as the service
//! address is local: the listening socket answers at once with a SYN-ACK of its own, which a
//! client still in SYN-SENT accepts. A client that had already accepted the dead primary's
//! SYN-ACK acknowledged it before the freeze (its ACK passes the logger within a round trip),
//! so its image is complete and rebuilt instead; only if that ACK was itself lost does the
//! client meet a second SYN-ACK, and it ends as it would have without the replay.

use std::net::Ipv4Addr;

use etherparse::{PacketBuilder, TcpOptionElement};

use super::{ConnectionImage, TcpOptions};

/// The SYN of one connection whose handshake did not complete, client to server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayedSyn {
    pub from: (Ipv4Addr, u16),
    pub to: (Ipv4Addr, u16),
    pub isn: u32,
    /// The window field as the client sent it (never scaled on a SYN).
    pub window: u16,
    /// The options of the client's SYN: the new primary negotiates from the same offer. Its
    /// TSval is the client's own clock at that SYN, which the client accepts echoed back.
    pub options: TcpOptions,
}

impl ReplayedSyn {
    /// The SYN to replay for `image`: `None` once its handshake is complete (it is rebuilt
    /// instead), after a client reset, or when the client already sent FIN.
    pub fn for_image(image: &ConnectionImage) -> Option<ReplayedSyn> {
        if image.server_isn().is_some() || image.is_reset() || image.client_fin_at().is_some() {
            return None;
        }
        let tuple = image.tuple();
        Some(ReplayedSyn {
            from: (*tuple.client.ip(), tuple.client.port()),
            to: (*tuple.server.ip(), tuple.server.port()),
            isn: image.client_isn(),
            window: image.client_window_raw(),
            options: image.syn_options(),
        })
    }

    /// The IPv4 packet (header and TCP segment, checksums filled in), options in the order
    /// Linux sends them.
    pub fn encode(&self) -> Vec<u8> {
        let mut options = Vec::with_capacity(6);
        if let Some(mss) = self.options.mss {
            options.push(TcpOptionElement::MaximumSegmentSize(mss));
        }
        match (self.options.sack_permitted, self.options.timestamps) {
            (true, Some(ts)) => {
                options.push(TcpOptionElement::SelectiveAcknowledgementPermitted);
                options.push(TcpOptionElement::Timestamp(ts.value, 0));
            }
            (false, Some(ts)) => {
                options.push(TcpOptionElement::Noop);
                options.push(TcpOptionElement::Noop);
                options.push(TcpOptionElement::Timestamp(ts.value, 0));
            }
            (true, None) => {
                options.push(TcpOptionElement::Noop);
                options.push(TcpOptionElement::Noop);
                options.push(TcpOptionElement::SelectiveAcknowledgementPermitted);
            }
            (false, None) => {}
        }
        if let Some(shift) = self.options.window_scale {
            options.push(TcpOptionElement::Noop);
            options.push(TcpOptionElement::WindowScale(shift));
        }
        let builder = PacketBuilder::ipv4(self.from.0.octets(), self.to.0.octets(), 64)
            .tcp(self.from.1, self.to.1, self.isn, self.window)
            .syn()
            .options(&options)
            .expect("at most 20 bytes of options fit a TCP header");
        let mut packet = Vec::with_capacity(builder.size(0));
        builder
            .write(&mut packet, &[])
            .expect("writing to a Vec cannot fail");
        packet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ClientSegment, FourTuple, ImageLimits, TcpFlags, Timestamps};
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn tuple() -> FourTuple {
        FourTuple {
            client: "10.0.0.2:40000".parse().unwrap(),
            server: "10.0.0.100:80".parse().unwrap(),
        }
    }

    fn segment(seq: u32, ack: u32, flags: TcpFlags, options: TcpOptions) -> ClientSegment {
        ClientSegment {
            tuple: tuple(),
            seq,
            ack,
            flags,
            window: 64240,
            options,
            payload: 0..0,
        }
    }

    fn linux_offer() -> TcpOptions {
        TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some(Timestamps {
                value: 123_456,
                echo_reply: 0,
            }),
        }
    }

    fn syn_image(options: TcpOptions) -> ConnectionImage {
        let syn = segment(
            0xffff_fff0,
            0,
            TcpFlags {
                syn: true,
                ..TcpFlags::default()
            },
            options,
        );
        let mut image = ConnectionImage::new(&syn, ImageLimits::default());
        image.ingest(&syn, &[]).expect("the SYN is taken");
        image
    }

    fn parse(packet: &[u8]) -> (etherparse::Ipv4Header, etherparse::TcpHeader, Vec<u8>) {
        let sliced = SlicedPacket::from_ip(packet).expect("a valid IPv4 packet");
        let Some(NetSlice::Ipv4(ip)) = sliced.net else {
            panic!("not IPv4");
        };
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("not TCP");
        };
        (
            ip.header().to_header(),
            tcp.to_header(),
            tcp.payload().to_vec(),
        )
    }

    #[test]
    fn a_logged_syn_is_replayed_as_the_client_sent_it() {
        let replay = ReplayedSyn::for_image(&syn_image(linux_offer())).expect("a replay");
        let packet = replay.encode();
        let (ip, tcp, payload) = parse(&packet);
        assert_eq!(ip.source, [10, 0, 0, 2], "from the client");
        assert_eq!(ip.destination, [10, 0, 0, 100], "to the service address");
        assert_eq!((tcp.source_port, tcp.destination_port), (40000, 80));
        assert!(tcp.syn && !tcp.ack && !tcp.rst && !tcp.fin);
        assert_eq!(tcp.sequence_number, 0xffff_fff0, "the client's ISN");
        assert_eq!(tcp.window_size, 64240);
        assert!(payload.is_empty());
        let options: Vec<_> = tcp
            .options_iterator()
            .collect::<Result<_, _>>()
            .expect("well-formed options");
        for expected in [
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
            TcpOptionElement::Timestamp(123_456, 0),
            TcpOptionElement::WindowScale(7),
        ] {
            assert!(options.contains(&expected), "{expected:?} in {options:?}");
        }
        assert_eq!(
            tcp.calc_checksum_ipv4(&ip, &payload).unwrap(),
            tcp.checksum,
            "the TCP checksum is filled in"
        );
    }

    #[test]
    fn every_combination_of_options_encodes_within_a_header() {
        for mss in [None, Some(536)] {
            for window_scale in [None, Some(0), Some(14)] {
                for sack_permitted in [false, true] {
                    for timestamps in [
                        None,
                        Some(Timestamps {
                            value: 9,
                            echo_reply: 0,
                        }),
                    ] {
                        let options = TcpOptions {
                            mss,
                            window_scale,
                            sack_permitted,
                            timestamps,
                        };
                        let replay = ReplayedSyn::for_image(&syn_image(options)).expect("a replay");
                        let (_, tcp, _) = parse(&replay.encode());
                        let got: Vec<_> = tcp
                            .options_iterator()
                            .collect::<Result<_, _>>()
                            .expect("well-formed options");
                        assert_eq!(
                            got.contains(&TcpOptionElement::SelectiveAcknowledgementPermitted),
                            sack_permitted
                        );
                        assert_eq!(
                            got.iter()
                                .any(|o| matches!(o, TcpOptionElement::WindowScale(_))),
                            window_scale.is_some()
                        );
                        assert_eq!(
                            got.iter()
                                .any(|o| matches!(o, TcpOptionElement::Timestamp(9, 0))),
                            timestamps.is_some()
                        );
                        assert_eq!(
                            got.iter()
                                .any(|o| matches!(o, TcpOptionElement::MaximumSegmentSize(_))),
                            mss.is_some()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_completed_or_reset_handshake_is_not_replayed() {
        let ack_flags = TcpFlags {
            ack: true,
            ..TcpFlags::default()
        };
        let mut completed = syn_image(linux_offer());
        let ack = segment(0xffff_fff1, 5001, ack_flags, TcpOptions::default());
        completed
            .ingest(&ack, &[])
            .expect("the handshake ACK is taken");
        assert_eq!(completed.server_isn(), Some(5000));
        assert_eq!(ReplayedSyn::for_image(&completed), None, "rebuilt instead");

        let mut reset = syn_image(linux_offer());
        let rst = segment(
            0xffff_fff1,
            0,
            TcpFlags {
                rst: true,
                ..TcpFlags::default()
            },
            TcpOptions::default(),
        );
        reset.ingest(&rst, &[]).expect("the RST is taken");
        assert!(
            reset.is_reset(),
            "an RST at the next expected number resets"
        );
        assert_eq!(ReplayedSyn::for_image(&reset), None, "the client gave up");
    }
}
