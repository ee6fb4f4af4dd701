//! Parsing client frames: every drop reason reached by a handcrafted frame, valid frames read
//! in full, no panic on arbitrary or mutated input, and the TCP checksum repair.

mod image_support;

use std::net::{Ipv4Addr, SocketAddrV4};

use image_support::*;
use proptest::prelude::*;
use steadfast_core::image::{
    parse_client_frame, tcp_checksum_fixup, tcp_checksum_is_valid, FrameDrop, TcpFlags, Timestamps,
};

fn valid_frame() -> Vec<u8> {
    FrameSpec {
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ..FrameSpec::default()
    }
    .build()
}

fn with_options(options: &[u8]) -> Vec<u8> {
    FrameSpec {
        options: options.to_vec(),
        payload: b"x".to_vec(),
        ..FrameSpec::default()
    }
    .build()
}

fn set_total_len(frame: &mut [u8], total_len: u16) {
    frame[IP_AT + 2..IP_AT + 4].copy_from_slice(&total_len.to_be_bytes());
    fix_ip_checksum(frame);
}

fn drop_of(frame: &[u8]) -> FrameDrop {
    match parse_client_frame(frame) {
        Ok(segment) => panic!("frame {frame:02x?} parsed as {segment:?}, expected a drop"),
        Err(drop) => drop,
    }
}

#[test]
fn every_drop_reason_is_reached_by_a_handcrafted_frame() {
    let mut seen = Vec::new();
    let mut expect = |frame: Vec<u8>, expected: FrameDrop| {
        let drop = drop_of(&frame);
        assert_eq!(drop, expected, "{drop}");
        assert!(!drop.to_string().is_empty());
        seen.push(drop.reason_code());
    };

    expect(vec![0; 10], FrameDrop::TruncatedEthernet { len: 10 });

    let mut frame = valid_frame();
    frame[12..14].copy_from_slice(&[0x86, 0xdd]);
    expect(frame, FrameDrop::NotIpv4 { ether_type: 0x86dd });

    let frame = valid_frame()[..IP_AT + 19].to_vec();
    expect(frame, FrameDrop::TruncatedIpv4Header { available: 19 });

    let mut frame = valid_frame();
    frame[IP_AT] = 0x65;
    expect(frame, FrameDrop::NotIpVersion4 { version: 6 });

    let mut frame = valid_frame();
    frame[IP_AT] = 0x44;
    expect(frame, FrameDrop::Ipv4HeaderLengthTooSmall { ihl: 4 });

    let mut frame = FrameSpec::default().build();
    frame[IP_AT] = 0x4f;
    expect(
        frame,
        FrameDrop::Ipv4HeaderBeyondFrame {
            header_len: 60,
            available: 40,
        },
    );

    let mut frame = valid_frame();
    set_total_len(&mut frame, 19);
    expect(
        frame,
        FrameDrop::Ipv4TotalLengthTooSmall {
            total_len: 19,
            header_len: 20,
        },
    );

    let mut frame = valid_frame();
    let available = frame.len() - IP_AT;
    set_total_len(&mut frame, 1500);
    expect(
        frame,
        FrameDrop::Ipv4TotalLengthBeyondFrame {
            total_len: 1500,
            available,
        },
    );

    let mut frame = valid_frame();
    let found = u16::from_be_bytes([frame[IP_AT + 10], frame[IP_AT + 11]]);
    frame[IP_AT + 8] = 3; // TTL changed, checksum not
    expect(frame, FrameDrop::BadIpv4HeaderChecksum { found });

    let mut frame = valid_frame();
    frame[IP_AT + 6] = 0x20; // more fragments, offset 0
    fix_ip_checksum(&mut frame);
    expect(
        frame,
        FrameDrop::Fragmented {
            more_fragments: true,
            offset_bytes: 0,
        },
    );

    let mut frame = valid_frame();
    frame[IP_AT + 6] = 0x00;
    frame[IP_AT + 7] = 0x03; // last fragment, at offset 24
    fix_ip_checksum(&mut frame);
    expect(
        frame,
        FrameDrop::Fragmented {
            more_fragments: false,
            offset_bytes: 24,
        },
    );

    let mut frame = valid_frame();
    frame[IP_AT + 9] = 17;
    fix_ip_checksum(&mut frame);
    expect(frame, FrameDrop::NotTcp { protocol: 17 });

    let mut frame = valid_frame();
    set_total_len(&mut frame, 20 + 12);
    expect(frame, FrameDrop::TruncatedTcpHeader { segment_len: 12 });

    let mut frame = valid_frame();
    frame[TCP_AT + 12] = 0x40;
    expect(frame, FrameDrop::TcpDataOffsetTooSmall { data_offset: 4 });

    let mut frame = FrameSpec::default().build();
    frame[TCP_AT + 12] = 0xf0;
    expect(
        frame,
        FrameDrop::TcpHeaderBeyondSegment {
            header_len: 60,
            segment_len: 20,
        },
    );

    // A window-scale kind in the last option byte: no room for its length.
    expect(
        with_options(&[1, 1, 1, 3]),
        FrameDrop::TcpOptionTruncated { kind: 3, offset: 3 },
    );

    // An MSS that claims 3 bytes.
    expect(
        with_options(&[2, 3, 5, 0]),
        FrameDrop::TcpOptionBadLength {
            kind: 2,
            length: 3,
            offset: 0,
        },
    );

    // Timestamps claiming 10 bytes with 2 left.
    expect(
        with_options(&[1, 1, 8, 10]),
        FrameDrop::TcpOptionBeyondHeader {
            kind: 8,
            length: 10,
            offset: 2,
            available: 2,
        },
    );

    let mut codes = seen.clone();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), 17, "every variant once at least: {seen:?}");
}

#[test]
fn options_that_lie_about_their_length_are_dropped() {
    let lying: &[(&[u8], &str)] = &[
        (&[30, 1, 0, 0], "unknown kind with length 1"),
        (
            &[30, 0, 0, 0],
            "unknown kind with length 0 (would loop forever)",
        ),
        (&[8, 8, 0, 0, 0, 0, 0, 0], "timestamps of 8 bytes"),
        (&[3, 4, 7, 0], "window scale of 4 bytes"),
        (&[4, 3, 0, 1], "SACK-permitted of 3 bytes"),
        (
            &[5, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "SACK block list of 9 bytes",
        ),
        (
            &[30, 12, 0, 0, 0, 0, 0, 0],
            "unknown kind longer than the option area",
        ),
        (
            &[2, 4, 5],
            "MSS cut by the header end (pad is END, so 2 4 5 0: fine) ",
        ),
    ];
    for (options, what) in lying.iter().take(7) {
        let result = parse_client_frame(&with_options(options));
        assert!(
            matches!(
                result,
                Err(FrameDrop::TcpOptionBadLength { .. } | FrameDrop::TcpOptionBeyondHeader { .. })
            ),
            "{what}: {result:?}"
        );
    }
    // The last case is well formed once padded: it must parse.
    let segment = parse_client_frame(&with_options(lying[7].0)).expect("MSS 0x0500");
    assert_eq!(segment.options.mss, Some(0x0500));
}

#[test]
fn a_syn_with_every_option_is_read_in_full() {
    let mut options = syn_options(1460, 7, true, 0xdead_beef);
    // Options the image does not read but a valid client may send: a TFO cookie, MPTCP.
    options.extend_from_slice(&[34, 10, 1, 2, 3, 4, 5, 6, 7, 8]);
    options.extend_from_slice(&[30, 6, 0xaa, 0xbb, 0xcc, 0xdd]);
    let frame = FrameSpec {
        seq: 0xffff_fff0,
        ack: 0,
        flags: TcpFlags {
            syn: true,
            ..TcpFlags::default()
        },
        window: 64240,
        options,
        payload: b"early data".to_vec(),
        trailer: 6,
        ..FrameSpec::default()
    }
    .build();
    let segment = parse_client_frame(&frame).expect("valid SYN");
    assert_eq!(segment.tuple, tuple());
    assert_eq!(segment.seq, 0xffff_fff0);
    assert!(segment.flags.syn && !segment.flags.ack);
    assert_eq!(segment.window, 64240);
    assert_eq!(segment.options.mss, Some(1460));
    assert_eq!(segment.options.window_scale, Some(7));
    assert!(segment.options.sack_permitted);
    assert_eq!(
        segment.options.timestamps,
        Some(Timestamps {
            value: 0xdead_beef,
            echo_reply: 0
        })
    );
    assert_eq!(segment.payload_in(&frame), Some(&b"early data"[..]));
    assert_eq!(
        segment.payload.end,
        frame.len() - 6,
        "Ethernet padding excluded"
    );
}

#[test]
fn bytes_after_the_end_option_are_not_read() {
    let frame = with_options(&[2, 4, 1, 0, 0, 0xff, 0xff, 0xff]);
    let segment = parse_client_frame(&frame).expect("END stops the walk");
    assert_eq!(segment.options.mss, Some(256));
    assert_eq!(segment.options.window_scale, None);
}

#[test]
fn a_frame_built_by_etherparse_parses_to_the_same_fields() {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([192, 168, 7, 1], [192, 168, 7, 200], 64)
        .tcp(51000, 8080, 0x8000_0001, 4096)
        .ack(77)
        .psh();
    let payload = b"POST /commit HTTP/1.1\r\n";
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    let segment = parse_client_frame(&frame).expect("etherparse frame");
    assert_eq!(
        segment.tuple.client,
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 7, 1), 51000)
    );
    assert_eq!(
        segment.tuple.server,
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 7, 200), 8080)
    );
    assert_eq!(
        (segment.seq, segment.ack, segment.window),
        (0x8000_0001, 77, 4096)
    );
    assert!(segment.flags.ack && segment.flags.psh && !segment.flags.syn);
    assert_eq!(segment.payload_in(&frame), Some(&payload[..]));
    assert_eq!(tcp_checksum_is_valid(&frame), Ok(true));
    let before = frame.clone();
    tcp_checksum_fixup(&mut frame).unwrap();
    assert_eq!(frame, before, "a correct checksum is left as it is");
}

#[test]
fn checksum_fixup_repairs_a_partial_checksum() {
    let mut frame = valid_frame();
    let correct = frame.clone();
    // What a veth with offload hands over: only the pseudo-header sum in the field.
    frame[TCP_AT + 16] = 0x1b;
    frame[TCP_AT + 17] = 0x2c;
    assert_eq!(tcp_checksum_is_valid(&frame), Ok(false));
    tcp_checksum_fixup(&mut frame).unwrap();
    assert_eq!(frame, correct);
    assert_eq!(tcp_checksum_is_valid(&frame), Ok(true));
}

#[test]
fn checksum_fixup_leaves_a_malformed_frame_untouched() {
    let mut frame = valid_frame();
    frame[TCP_AT + 12] = 0x40;
    frame[TCP_AT + 16] = 0;
    let before = frame.clone();
    assert_eq!(
        tcp_checksum_fixup(&mut frame),
        Err(FrameDrop::TcpDataOffsetTooSmall { data_offset: 4 })
    );
    assert_eq!(frame, before);
}

fn any_flags() -> impl Strategy<Value = TcpFlags> {
    any::<u8>().prop_map(|bits| TcpFlags {
        fin: bits & 1 != 0,
        syn: bits & 2 != 0,
        rst: bits & 4 != 0,
        psh: bits & 8 != 0,
        ack: bits & 16 != 0,
        urg: bits & 32 != 0,
        ece: bits & 64 != 0,
        cwr: bits & 128 != 0,
    })
}

prop_compose! {
    fn any_spec()(
        client_ip in any::<[u8; 4]>(),
        server_ip in any::<[u8; 4]>(),
        client_port in any::<u16>(),
        server_port in any::<u16>(),
        seq in any::<u32>(),
        ack in any::<u32>(),
        flags in any_flags(),
        window in any::<u16>(),
        with_syn_options in any::<bool>(),
        mss in any::<u16>(),
        scale in 0u8..15,
        tsval in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        trailer in 0usize..8,
    ) -> FrameSpec {
        FrameSpec {
            client: SocketAddrV4::new(client_ip.into(), client_port),
            server: SocketAddrV4::new(server_ip.into(), server_port),
            seq,
            ack,
            flags,
            window,
            options: if with_syn_options { syn_options(mss, scale, true, tsval) } else { Vec::new() },
            payload,
            trailer,
        }
    }
}

/// What a successful parse must satisfy whatever the input: the payload lies inside the frame.
fn check_parse_result(frame: &[u8]) {
    if let Ok(segment) = parse_client_frame(frame) {
        assert!(segment.payload.start <= segment.payload.end);
        assert!(segment.payload.end <= frame.len());
        assert!(segment.payload.start >= 14 + 20 + 20);
        assert!(segment.payload_in(frame).is_some());
    }
    let mut copy = frame.to_vec();
    let fixed = tcp_checksum_fixup(&mut copy);
    assert_eq!(
        fixed.is_ok(),
        parse_client_frame(frame).is_ok()
            || matches!(
                parse_client_frame(frame),
                Err(FrameDrop::TcpOptionTruncated { .. }
                    | FrameDrop::TcpOptionBadLength { .. }
                    | FrameDrop::TcpOptionBeyondHeader { .. })
            )
    );
    let _ = tcp_checksum_is_valid(frame);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_parse_result(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_an_ipv4_ethernet_header_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..120),
        fix_checksum in any::<bool>(),
    ) {
        let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        frame.extend_from_slice(&tail);
        if fix_checksum && frame.len() >= IP_AT + 20 && frame[IP_AT] & 0x0f >= 5
            && frame.len() >= IP_AT + usize::from(frame[IP_AT] & 0x0f) * 4
        {
            fix_ip_checksum(&mut frame);
        }
        check_parse_result(&frame);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        spec in any_spec(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        fix_checksum in any::<bool>(),
    ) {
        let mut frame = spec.build();
        for (at, value) in edits {
            let at = at.index(frame.len());
            frame[at] = value;
        }
        if truncate {
            frame.truncate(cut.index(frame.len() + 1));
        }
        if fix_checksum && frame.len() >= IP_AT + 20 && frame[IP_AT] & 0x0f >= 5
            && frame.len() >= IP_AT + usize::from(frame[IP_AT] & 0x0f) * 4
        {
            fix_ip_checksum(&mut frame);
        }
        check_parse_result(&frame);
    }

    #[test]
    fn valid_frames_parse_to_what_was_built(spec in any_spec()) {
        let frame = spec.build();
        let segment = parse_client_frame(&frame).expect("built frame is valid");
        prop_assert_eq!(segment.tuple.client, spec.client);
        prop_assert_eq!(segment.tuple.server, spec.server);
        prop_assert_eq!((segment.seq, segment.ack, segment.window), (spec.seq, spec.ack, spec.window));
        prop_assert_eq!(segment.flags, spec.flags);
        prop_assert_eq!(segment.payload_in(&frame), Some(&spec.payload[..]));
        prop_assert_eq!(tcp_checksum_is_valid(&frame), Ok(true));
    }

    #[test]
    fn checksum_fixup_agrees_with_the_reference(
        spec in any_spec(),
        garbage in any::<u16>(),
    ) {
        let mut frame = spec.build();
        frame[TCP_AT + 16..TCP_AT + 18].copy_from_slice(&garbage.to_be_bytes());
        tcp_checksum_fixup(&mut frame).expect("valid frame");
        let stored = u16::from_be_bytes([frame[TCP_AT + 16], frame[TCP_AT + 17]]);
        prop_assert_eq!(stored, reference_tcp_checksum(&frame));
        prop_assert_eq!(tcp_checksum_is_valid(&frame), Ok(true));
    }
}
