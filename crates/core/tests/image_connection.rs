//! The connection image and table, case by case: handshake, wraparound, ACK/window/TSecr
//! bookkeeping, FIN and RST, limits, consumption, restore parameters.

mod image_support;

use image_support::*;
use steadfast_core::image::{
    parse_client_frame, ClientSegment, Closure, ConnectionImage, ConnectionTable, ConsumeError,
    ImageLimits, NegotiatedOptions, OpenedCheck, RefuseReason, RestoreError, TableError,
    TableLimits, TcpFlags, Timestamps, Tracking, WindowScales, DEFAULT_MSS,
};

fn opened(isn: u32) -> ConnectionImage {
    let mut image = ConnectionImage::new(&syn(isn), ImageLimits::default());
    image.ingest(&syn(isn), &[]).unwrap();
    image
}

fn data(isn: u32, position: u32, ack: u32, payload_len: usize) -> ClientSegment {
    segment(
        isn.wrapping_add(1).wrapping_add(position),
        ack,
        ACK,
        payload_len,
    )
}

fn established(isn: u32, server_isn: u32) -> ConnectionImage {
    let mut image = opened(isn);
    image
        .ingest(&data(isn, 0, server_isn.wrapping_add(1), 0), &[])
        .unwrap();
    image
}

const NEGOTIATED: NegotiatedOptions = NegotiatedOptions {
    window_scales: Some(WindowScales { snd: 7, rcv: 9 }),
    sack: true,
    timestamps: true,
};

#[test]
fn handshake_gives_isns_options_and_restore_params() {
    let mut image = opened(1000);
    assert_eq!(image.client_isn(), 1000);
    assert_eq!(image.syn_options().mss, Some(1460));
    assert_eq!(image.server_isn(), None);
    assert!(matches!(
        image.restore_params(),
        Err(RestoreError::HandshakeIncomplete { .. })
    ));

    let mut ack = data(1000, 0, 70001, 0);
    ack.options.timestamps = Some(Timestamps {
        value: 78,
        echo_reply: 5555,
    });
    ack.window = 502;
    image.ingest(&ack, &[]).unwrap();
    assert_eq!(image.server_isn(), Some(70000));
    assert_eq!(image.client_acked_reply_bytes(), 0);
    let error = image.restore_params().unwrap_err();
    assert!(matches!(error, RestoreError::NegotiationUnknown { .. }));
    assert!(error
        .to_string()
        .contains("10.9.0.2:40000 -> 10.9.0.100:80"));

    image.set_negotiated(NEGOTIATED);
    image.ingest(&data(1000, 0, 70001, 5), b"GET /").unwrap();
    let params = image.restore_params().unwrap();
    assert_eq!(params.local, SERVICE);
    assert_eq!(params.remote, CLIENT);
    assert_eq!(params.snd_una, 70001);
    assert_eq!(params.rcv_nxt, 1006);
    assert_eq!(params.mss, 1460);
    assert_eq!(params.window_scales, Some(WindowScales { snd: 7, rcv: 9 }));
    assert!(params.sack_ok && params.timestamps_ok);
    assert_eq!(params.last_tsecr, Some(5555));
    assert_eq!(params.client_window, 1000 << 7);
    assert!(!params.client_fin_received);
}

#[test]
fn a_client_without_mss_option_gets_the_default() {
    let mut opening = syn(5);
    opening.options.mss = None;
    let mut image = ConnectionImage::new(&opening, ImageLimits::default());
    image.ingest(&opening, &[]).unwrap();
    image.ingest(&data(5, 0, 1, 0), &[]).unwrap();
    image.set_negotiated(NegotiatedOptions::default());
    assert_eq!(image.restore_params().unwrap().mss, DEFAULT_MSS);
}

#[test]
fn negotiated_options_from_tcp_info_bits() {
    assert_eq!(
        NegotiatedOptions::from_tcp_info(1 | 2 | 4, 7, 9),
        NEGOTIATED
    );
    assert_eq!(
        NegotiatedOptions::from_tcp_info(2, 7, 9),
        NegotiatedOptions {
            window_scales: None,
            sack: true,
            timestamps: false
        }
    );
}

#[test]
fn sequence_numbers_wrap_in_both_directions() {
    let isn = u32::MAX - 2;
    let server_isn = u32::MAX - 1;
    let mut image = established(isn, server_isn);
    assert_eq!(image.server_isn(), Some(server_isn));
    // "world" crosses the client's wrap (positions 5..10 are sequence numbers 3..8).
    image
        .ingest(&data(isn, 5, server_isn.wrapping_add(1), 5), b"world")
        .unwrap();
    assert_eq!(image.received_bytes(), 0);
    assert_eq!(image.out_of_order_bytes(), 5);
    image
        .ingest(&data(isn, 0, server_isn.wrapping_add(1), 5), b"hello")
        .unwrap();
    assert_eq!(image.unconsumed_to_vec(), b"helloworld");
    assert_eq!(image.rcv_nxt(), 8);

    // The client's ACK wraps past zero: server ISN + 1 is u32::MAX, so ack 9 acks 10 bytes.
    image.ingest(&data(isn, 10, 9, 0), &[]).unwrap();
    assert_eq!(image.client_acked_reply_bytes(), 10);
    // An older ACK from before the wrap, delivered late, changes nothing.
    image.ingest(&data(isn, 10, u32::MAX, 0), &[]).unwrap();
    assert_eq!(image.client_acked_reply_bytes(), 10);
    assert_eq!(image.snd_una(), Some(9));
}

#[test]
fn tsecr_keeps_the_serial_maximum_across_the_wrap() {
    let mut image = established(1, 1);
    let mut with_tsecr = |echo_reply: u32| {
        let mut segment = data(1, 0, 2, 0);
        segment.options.timestamps = Some(Timestamps {
            value: 1,
            echo_reply,
        });
        image.ingest(&segment, &[]).unwrap();
        image.last_tsecr()
    };
    assert_eq!(with_tsecr(0xffff_fff0), Some(0xffff_fff0));
    assert_eq!(with_tsecr(0x10), Some(0x10));
    assert_eq!(with_tsecr(0xffff_ff00), Some(0x10), "older echo is ignored");
}

#[test]
fn window_scaling_follows_the_negotiation() {
    let mut image = opened(1);
    assert_eq!(
        image.client_window(),
        Some(64240),
        "SYN windows are never scaled"
    );
    image.ingest(&data(1, 0, 2, 0), &[]).unwrap();
    assert_eq!(image.client_window_raw(), 1000);
    assert_eq!(
        image.client_window(),
        None,
        "client offered scaling; scale unknown"
    );
    image.set_negotiated(NegotiatedOptions {
        window_scales: None,
        ..NEGOTIATED
    });
    assert_eq!(image.client_window(), Some(1000));
    image.set_negotiated(NegotiatedOptions {
        window_scales: Some(WindowScales { snd: 20, rcv: 0 }),
        ..NEGOTIATED
    });
    assert_eq!(
        image.client_window(),
        Some(1000 << 14),
        "shift capped at 14"
    );

    let mut unscaled = syn(1);
    unscaled.options.window_scale = None;
    let mut image = ConnectionImage::new(&unscaled, ImageLimits::default());
    image.ingest(&unscaled, &[]).unwrap();
    image.ingest(&data(1, 0, 2, 0), &[]).unwrap();
    assert_eq!(image.client_window(), Some(1000));
}

#[test]
fn a_reordered_old_segment_does_not_overwrite_a_newer_window() {
    let mut image = established(1, 1);
    let mut newer = data(1, 10, 50, 0);
    newer.window = 7;
    let mut older = data(1, 5, 40, 0);
    older.window = 9;
    image.ingest(&data(1, 0, 2, 10), &[0; 10]).unwrap();
    image.ingest(&newer, &[]).unwrap();
    image.ingest(&older, &[]).unwrap();
    assert_eq!(image.client_window_raw(), 7);
    // Same seq, higher ack: a pure window update is taken.
    let mut update = data(1, 10, 60, 0);
    update.window = 3;
    image.ingest(&update, &[]).unwrap();
    assert_eq!(image.client_window_raw(), 3);
}

#[test]
fn fin_ends_the_stream_and_later_bytes_are_ignored() {
    let mut image = established(100, 100);
    let fin = segment(101 + 3, 101, FIN_ACK, 3);
    image.ingest(&fin, b"def").unwrap();
    assert_eq!(image.client_fin_at(), Some(6));
    assert!(!image.client_fin_received(), "bytes 0..3 still missing");
    image.ingest(&data(100, 0, 101, 3), b"abc").unwrap();
    assert!(image.client_fin_received());
    let report = image.ingest(&data(100, 4, 101, 4), b"efgh").unwrap();
    assert_eq!(report.duplicate_bytes, 2);
    assert_eq!(report.ignored_bytes, 2, "bytes after the FIN");
    assert_eq!(image.unconsumed_to_vec(), b"abcdef");
    // A FIN elsewhere is a conflict; the first stays.
    image
        .ingest(&segment(101 + 8, 101, FIN_ACK, 0), &[])
        .unwrap();
    assert_eq!(image.client_fin_at(), Some(6));
    assert_eq!(image.counters().conflicting_fins, 1);

    image.set_negotiated(NEGOTIATED);
    let params = image.restore_params().unwrap();
    assert!(params.client_fin_received);
    assert_eq!(params.rcv_nxt, 107, "the FIN is not counted in rcv_nxt");
}

#[test]
fn only_an_rst_at_the_next_expected_sequence_resets() {
    let mut image = established(100, 100);
    image.ingest(&data(100, 0, 101, 4), b"abcd").unwrap();
    image.ingest(&segment(101 + 20, 0, RST, 0), &[]).unwrap();
    assert!(!image.is_reset());
    assert_eq!(image.counters().ignored_rsts, 1);
    image.ingest(&segment(101 + 4, 0, RST, 0), &[]).unwrap();
    assert!(image.is_reset());
    assert_eq!(image.bytes_held(), 0, "a reset connection keeps nothing");
    assert!(matches!(
        image.restore_params(),
        Err(RestoreError::Reset { .. })
    ));
}

#[test]
fn segments_the_server_would_discard_are_ignored() {
    let mut image = established(100, 100);
    let no_ack = segment(101, 0, TcpFlags::default(), 3);
    let report = image.ingest(&no_ack, b"xyz").unwrap();
    assert_eq!(report.ignored_bytes, 3);
    assert_eq!(image.received_bytes(), 0);
    // A data byte at the SYN's own sequence number lies before the stream.
    let report = image.ingest(&data(100, u32::MAX, 101, 2), b"!a").unwrap();
    assert_eq!((report.ignored_bytes, report.new_bytes), (1, 1));
    assert_eq!(image.unconsumed_to_vec(), b"a");
    assert_eq!(image.counters().ignored_segments, 1);
}

#[test]
fn data_on_the_syn_is_the_start_of_the_stream() {
    let mut image = ConnectionImage::new(&syn(9), ImageLimits::default());
    image.ingest(&syn(9), b"fast open").unwrap();
    assert_eq!(image.unconsumed_to_vec(), b"fast open");
    let report = image.ingest(&syn(9), b"fast open").unwrap();
    assert!(report.is_duplicate());
}

#[test]
fn consume_releases_bytes_and_refuses_too_much() {
    let mut image = established(0, 0);
    image.ingest(&data(0, 0, 1, 6), b"abcdef").unwrap();
    image.consume(2).unwrap();
    assert_eq!(image.unconsumed_to_vec(), b"cdef");
    assert_eq!(image.consumed_bytes(), 2);
    let error = image.consume(5).unwrap_err();
    assert_eq!(
        error,
        ConsumeError::BeyondReceived {
            tuple: tuple(),
            requested: 5,
            available: 4
        }
    );
    image.consume_up_to(4).unwrap();
    image.consume_up_to(3).unwrap();
    assert_eq!(image.unconsumed_to_vec(), b"ef");
    // A retransmit of consumed bytes is a duplicate that cannot be compared any more.
    let report = image.ingest(&data(0, 0, 1, 3), b"XYZ").unwrap();
    assert_eq!((report.duplicate_bytes, report.conflicting_bytes), (3, 0));
}

#[test]
fn overlapping_retransmits_keep_the_first_bytes_and_count_conflicts() {
    let mut image = established(0, 0);
    image.ingest(&data(0, 4, 1, 4), b"EFGH").unwrap();
    image.ingest(&data(0, 0, 1, 3), b"abc").unwrap();
    // Covers the held 0..3, the gap 3..4, the held 4..8 (two differ) and new 8..10.
    let report = image.ingest(&data(0, 0, 1, 10), b"abXdEfGhij").unwrap();
    assert_eq!(report.new_bytes, 3);
    assert_eq!(report.conflicting_bytes, 1 + 2);
    assert_eq!(report.duplicate_bytes, 2 + 2);
    assert_eq!(image.unconsumed_to_vec(), b"abcdEFGHij");
}

fn limited(limits: ImageLimits) -> ConnectionImage {
    let mut image = ConnectionImage::new(&syn(0), limits);
    image.ingest(&syn(0), &[]).unwrap();
    image.ingest(&data(0, 0, 1, 0), &[]).unwrap();
    image
}

#[test]
fn out_of_order_bytes_beyond_the_limit_are_refused_without_change() {
    let mut image = limited(ImageLimits {
        max_out_of_order_bytes: 8,
        ..ImageLimits::default()
    });
    image.ingest(&data(0, 10, 1, 6), b"klmnop").unwrap();
    let error = image.ingest(&data(0, 20, 1, 3), b"uvw").unwrap_err();
    assert!(matches!(
        error,
        RefuseReason::OutOfOrderBytesLimit {
            held: 6,
            adding: 3,
            limit: 8,
            ..
        }
    ));
    assert_eq!(image.out_of_order_bytes(), 6);
    assert_eq!(image.counters().refused_segments, 1);
    // Filling the gap is in order and not bound by the out-of-order limit.
    image.ingest(&data(0, 0, 1, 10), b"abcdefghij").unwrap();
    assert_eq!(image.unconsumed_to_vec(), b"abcdefghijklmnop");
    assert_eq!(image.out_of_order_bytes(), 0);
}

#[test]
fn out_of_order_pieces_beyond_the_limit_are_refused() {
    let mut image = limited(ImageLimits {
        max_out_of_order_pieces: 2,
        ..ImageLimits::default()
    });
    image.ingest(&data(0, 2, 1, 1), b"c").unwrap();
    image.ingest(&data(0, 4, 1, 1), b"e").unwrap();
    // Touching an existing run joins it: no new piece.
    image.ingest(&data(0, 5, 1, 1), b"f").unwrap();
    assert!(matches!(
        image.ingest(&data(0, 8, 1, 1), b"i"),
        Err(RefuseReason::OutOfOrderPiecesLimit { .. })
    ));
    image.ingest(&data(0, 0, 1, 2), b"ab").unwrap();
    image.ingest(&data(0, 3, 1, 1), b"d").unwrap();
    assert_eq!(image.unconsumed_to_vec(), b"abcdef");
}

#[test]
fn unconsumed_bytes_beyond_the_limit_are_refused_until_consumed() {
    let mut image = limited(ImageLimits {
        max_unconsumed_bytes: 4,
        ..ImageLimits::default()
    });
    image.ingest(&data(0, 0, 1, 3), b"abc").unwrap();
    let error = image.ingest(&data(0, 3, 1, 3), b"def").unwrap_err();
    assert!(error.to_string().contains("unconsumed"), "{error}");
    image.consume(3).unwrap();
    image.ingest(&data(0, 3, 1, 3), b"def").unwrap();
    assert_eq!(image.unconsumed_to_vec(), b"def");
}

#[test]
fn table_opens_tracks_and_closes_after_both_fins() {
    let mut table = ConnectionTable::new(TableLimits::default());
    let ingested = table.ingest(&syn(500), &[]).unwrap();
    assert_eq!(ingested.tracking, Tracking::Opened);
    assert_eq!(
        table.ingest(&syn(500), &[]).unwrap().tracking,
        Tracking::Tracked,
        "a retransmitted SYN"
    );
    table.ingest(&data(500, 0, 9001, 4), b"GET ").unwrap();
    table
        .set_negotiated(&tuple(), NEGOTIATED)
        .expect("known connection");
    table.consume(&tuple(), 4).unwrap();
    table
        .ingest(&segment(501 + 4, 9001 + 100, FIN_ACK, 0), &[])
        .unwrap();
    assert_eq!(table.len(), 1, "server FIN not acknowledged yet");
    // The server closes after 100 reply bytes; its FIN is acknowledged by ack 9001 + 101.
    assert_eq!(table.note_server_fin(&tuple(), 100), Ok(None));
    let last_ack = table
        .ingest(&segment(501 + 5, 9001 + 101, ACK, 0), &[])
        .unwrap();
    assert_eq!(last_ack.tracking, Tracking::Closed(Closure::Finished));
    assert!(table.is_empty());
    let counters = table.counters();
    assert_eq!((counters.opened, counters.finished), (1, 1));
    assert_eq!(
        table.consume(&tuple(), 1),
        Err(TableError::UnknownConnection { tuple: tuple() })
    );
}

#[test]
fn table_closes_on_server_fin_notice_when_the_ack_came_first() {
    let mut table = ConnectionTable::new(TableLimits::default());
    table.ingest(&syn(1), &[]).unwrap();
    table.ingest(&segment(2, 2, ACK, 0), &[]).unwrap();
    // 10 reply bytes and the server's FIN acknowledged, with the client's own FIN.
    table.ingest(&segment(2, 2 + 11, FIN_ACK, 0), &[]).unwrap();
    assert_eq!(
        table.note_server_fin(&tuple(), 10),
        Ok(Some(Closure::Finished))
    );
    assert!(table.is_empty());
}

#[test]
fn table_removes_on_reset_and_forwards_untracked_segments() {
    let mut table = ConnectionTable::new(TableLimits::default());
    let untracked = table.ingest(&data(7, 0, 1, 2), b"hi").unwrap();
    assert_eq!(untracked.tracking, Tracking::Untracked);
    table.ingest(&syn(7), &[]).unwrap();
    table.ingest(&data(7, 0, 1, 2), b"hi").unwrap();
    let reset = table.ingest(&segment(8 + 2, 0, RST, 0), &[]).unwrap();
    assert_eq!(reset.tracking, Tracking::Closed(Closure::Reset));
    assert!(table.is_empty());
    let counters = table.counters();
    assert_eq!(
        (
            counters.untracked_segments,
            counters.reset,
            counters.segments
        ),
        (1, 1, 4)
    );
}

#[test]
fn table_handles_new_syns_on_a_known_tuple() {
    let mut table = ConnectionTable::new(TableLimits::default());
    table.ingest(&syn(100), &[]).unwrap();
    table.ingest(&data(100, 0, 1, 0), &[]).unwrap();
    // Established: a SYN with another ISN is answered by a challenge ACK; the image stays.
    table.ingest(&syn(9999), &[]).unwrap();
    assert_eq!(table.get(&tuple()).unwrap().client_isn(), 100);
    assert_eq!(table.counters().ignored_syns, 1);
    // Once the client has closed, a new SYN on the same ports is a new connection.
    table.ingest(&segment(101, 1, FIN_ACK, 0), &[]).unwrap();
    let reopened = table.ingest(&syn(20000), &[]).unwrap();
    assert_eq!(reopened.tracking, Tracking::Opened);
    assert_eq!(table.get(&tuple()).unwrap().client_isn(), 20000);
    assert_eq!(table.counters().replaced, 1);
}

#[test]
fn table_refuses_syns_beyond_its_connection_limit() {
    let mut table = ConnectionTable::new(TableLimits {
        max_connections: 1,
        ..TableLimits::default()
    });
    table.ingest(&syn(1), &[]).unwrap();
    let mut other = syn(1);
    other.tuple.client.set_port(40001);
    let error = table.ingest(&other, &[]).unwrap_err();
    assert_eq!(
        error,
        RefuseReason::TableFull {
            tuple: other.tuple,
            limit: 1
        }
    );
    assert_eq!(table.counters().refused_segments, 1);
    assert_eq!(table.len(), 1);
}

/// Over its memory budget the table refuses new connections, not bytes of open ones: those
/// go on (each within its own limits) and, once the primary's replies release what they hold,
/// new connections are taken again.
#[test]
fn over_the_memory_budget_new_connections_wait_and_open_ones_go_on() {
    let (isn, server_isn) = (3000u32, 8000u32);
    let mut table = ConnectionTable::new(TableLimits {
        max_bytes_held: 10,
        ..TableLimits::default()
    });
    table.ingest(&syn(isn), &[]).unwrap();
    table.ingest(&data(isn, 0, server_isn + 1, 0), &[]).unwrap();
    table
        .ingest(&data(isn, 0, server_isn + 1, 10), b"GET / HTTP")
        .unwrap();
    assert_eq!(table.bytes_held(), 10);

    let mut newcomer = syn(5000);
    newcomer.tuple.client.set_port(40100);
    assert_eq!(
        table.ingest(&newcomer, &[]),
        Err(RefuseReason::MemoryBudget {
            tuple: newcomer.tuple,
            held: 10,
            limit: 10
        })
    );
    assert!(table.get(&newcomer.tuple).is_none());
    // The open connection is not held back.
    table
        .ingest(&data(isn, 10, server_isn + 1, 5), b"/1.1\r")
        .unwrap();
    assert_eq!(table.bytes_held(), 15);

    // Its request answered, the bytes are released and the SYN, resent, is taken.
    table.consume(&tuple(), 15).unwrap();
    assert_eq!(table.bytes_held(), 0);
    assert_eq!(
        table
            .ingest(&newcomer, &[])
            .map(|ingested| ingested.tracking),
        Ok(Tracking::Opened)
    );
    assert_eq!(table.counters().refused_over_budget, 1);
}

/// One address's SYNs that never complete cannot take more than its share of half-open room:
/// beyond it that address's new SYNs are refused (a real client resends), other addresses'
/// are taken, and a handshake that completes frees a place.
#[test]
fn one_address_has_at_most_its_share_of_half_open_connections() {
    let mut table = ConnectionTable::new(TableLimits {
        max_half_open_per_source: 3,
        ..TableLimits::default()
    });
    let from = |ip: [u8; 4], port: u16, isn: u32| {
        let mut opening = syn(isn);
        opening.tuple.client = std::net::SocketAddrV4::new(ip.into(), port);
        opening
    };
    for port in 0..3 {
        table
            .ingest(&from([10, 9, 0, 66], 50000 + port, 100), &[])
            .unwrap();
    }
    let fourth = from([10, 9, 0, 66], 50003, 100);
    assert_eq!(
        table.ingest(&fourth, &[]),
        Err(RefuseReason::SourceHalfOpen {
            tuple: fourth.tuple,
            limit: 3
        })
    );
    let elsewhere = from([10, 9, 0, 67], 50000, 100);
    assert!(
        table.ingest(&elsewhere, &[]).is_ok(),
        "another address is taken"
    );
    assert_eq!(table.half_open_from(&[10, 9, 0, 66].into()), 3);

    // A handshake of that address completes: its place is free.
    let mut handshake_ack = data(100, 0, 501, 0);
    handshake_ack.tuple = from([10, 9, 0, 66], 50000, 100).tuple;
    table.ingest(&handshake_ack, &[]).unwrap();
    assert_eq!(table.half_open_from(&[10, 9, 0, 66].into()), 2);
    assert_eq!(
        table.ingest(&fourth, &[]).map(|ingested| ingested.tracking),
        Ok(Tracking::Opened)
    );
    assert_eq!(table.counters().refused_half_open_source, 1);
}

/// A half-open image lives `half_open_lifetime` by the caller's clock: older ones go (counted,
/// named for the caller), younger ones and completed handshakes stay, and a handshake that
/// completes after its image expired is an untracked segment like any other.
#[test]
fn half_open_images_expire_after_their_lifetime_by_the_callers_clock() {
    use std::time::Duration;
    let mut table = ConnectionTable::new(TableLimits {
        half_open_lifetime: Duration::from_secs(64),
        ..TableLimits::default()
    });
    let from_port = |port: u16, isn: u32| {
        let mut opening = syn(isn);
        opening.tuple.client.set_port(port);
        opening
    };
    table.advance_clock(Duration::from_secs(100));
    table.ingest(&from_port(50000, 100), &[]).unwrap();
    table.ingest(&from_port(50001, 100), &[]).unwrap();
    // One of them completes its handshake: no longer half open.
    let mut handshake_ack = data(100, 0, 501, 0);
    handshake_ack.tuple = from_port(50001, 100).tuple;
    table.ingest(&handshake_ack, &[]).unwrap();
    table.advance_clock(Duration::from_secs(130));
    table.ingest(&from_port(50002, 100), &[]).unwrap();

    table.advance_clock(Duration::from_secs(163));
    assert_eq!(table.expire_half_open(), vec![], "63 s old: not yet");
    // A clock going back is ignored.
    table.advance_clock(Duration::from_secs(10));
    table.advance_clock(Duration::from_secs(164));
    assert_eq!(table.expire_half_open(), vec![from_port(50000, 100).tuple]);
    assert_eq!(table.counters().half_open_expired, 1);
    assert!(table.get(&from_port(50000, 100).tuple).is_none());
    assert!(
        table.get(&from_port(50001, 100).tuple).is_some(),
        "the completed handshake stays"
    );
    assert!(table.get(&from_port(50002, 100).tuple).is_some());
    assert_eq!(table.half_open_from(from_port(0, 0).tuple.client.ip()), 1);

    let mut late_ack = data(100, 0, 501, 0);
    late_ack.tuple = from_port(50000, 100).tuple;
    assert_eq!(
        table
            .ingest(&late_ack, &[])
            .map(|ingested| ingested.tracking),
        Ok(Tracking::Untracked),
        "a handshake completing after its image expired"
    );
    table.advance_clock(Duration::from_secs(194));
    assert_eq!(table.expire_half_open(), vec![from_port(50002, 100).tuple]);
    assert_eq!(table.expire_half_open(), vec![], "each goes once");
    assert_eq!(table.counters().half_open_expired, 2);
}

#[test]
fn table_refusal_of_a_segment_is_reported_for_the_logger() {
    let mut table = ConnectionTable::new(TableLimits {
        image: ImageLimits {
            max_out_of_order_bytes: 2,
            ..ImageLimits::default()
        },
        ..TableLimits::default()
    });
    table.ingest(&syn(1), &[]).unwrap();
    table.ingest(&data(1, 0, 1, 0), &[]).unwrap();
    assert!(table.ingest(&data(1, 5, 1, 3), b"xyz").is_err());
    assert_eq!(table.counters().refused_segments, 1);
    assert_eq!(table.bytes_held(), 0);
}

#[test]
fn a_parsed_frame_feeds_the_table() {
    let frame = FrameSpec {
        seq: 42,
        ack: 0,
        flags: TcpFlags {
            syn: true,
            ..TcpFlags::default()
        },
        options: syn_options(1400, 8, true, 99),
        ..FrameSpec::default()
    }
    .build();
    let parsed = parse_client_frame(&frame).unwrap();
    let mut table = ConnectionTable::new(TableLimits::default());
    let payload = parsed.payload_in(&frame).unwrap();
    assert_eq!(
        table.ingest(&parsed, payload).unwrap().tracking,
        Tracking::Opened
    );
    let image = table.get(&tuple()).unwrap();
    assert_eq!(image.syn_options().mss, Some(1400));
    assert_eq!(image.syn_options().window_scale, Some(8));
}

/// The adoption race: a connection opened before the backup joined passes through it
/// untracked; the primary describes it with the bytes *it* has received, while later segments
/// are already past the backup. The table replays those into the adopted image, so the image
/// holds the whole stream; without the replay it would hold a gap forever.
#[test]
fn adoption_replays_the_untracked_segments_that_passed_before_it() {
    let (isn, server_isn) = (5000u32, 9000u32);
    let stream = b"GET /a HTTP/1.1\r\n\r\nPOST /commit HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    let split = 19;
    let first = data(isn, 0, server_isn + 1, split);
    let second = data(isn, split as u32, server_isn + 1, stream.len() - split);
    let mut table = ConnectionTable::new(TableLimits::default());
    for (segment, payload) in [(&first, &stream[..split]), (&second, &stream[split..])] {
        let ingested = table.ingest(segment, payload).unwrap();
        assert_eq!(ingested.tracking, Tracking::Untracked);
    }
    assert!(table.recent_untracked_bytes() >= stream.len());
    // The primary had read only the first segment when it handed the connection over.
    let image = ConnectionImage::adopted(
        tuple(),
        isn,
        syn(isn).options,
        server_isn,
        0,
        &stream[..split],
        NEGOTIATED,
        ImageLimits::default(),
    );
    assert_eq!(table.adopt(image), 2);
    let adopted = table.get(&tuple()).unwrap();
    assert_eq!(adopted.unconsumed_to_vec(), stream.to_vec());
    assert_eq!(adopted.out_of_order_bytes(), 0);
    assert_eq!(
        table.recent_untracked_bytes(),
        0,
        "replayed segments are released"
    );
}

#[test]
fn untracked_segments_kept_for_adoption_are_bounded_and_dropped_at_close() {
    let isn = 7000u32;
    let mut table = ConnectionTable::new(TableLimits::default());
    let piece = vec![b'x'; 1400];
    for i in 0..400u32 {
        let segment = data(isn, i * 1400, 1, piece.len());
        table.ingest(&segment, &piece).unwrap();
    }
    let held = table.recent_untracked_bytes();
    assert!(held > 0 && held <= 256 * 1024, "held {held}");
    let mut fin = data(isn, 400 * 1400, 1, 0);
    fin.flags = FIN_ACK;
    table.ingest(&fin, &[]).unwrap();
    assert_eq!(
        table.recent_untracked_bytes(),
        0,
        "a closing connection is not adopted"
    );
}

/// A connection the primary opened before the backup joined is known by its client's latest
/// numbers until it ends or is adopted, so a takeover can tell its client it is lost.
#[test]
fn unadopted_connections_are_known_until_they_end_or_are_adopted() {
    let (isn, server_isn) = (3000u32, 8000u32);
    let mut table = ConnectionTable::new(TableLimits::default());
    let mut other = data(isn, 0, server_isn + 1, 0);
    other.tuple.client.set_port(40001);
    let mut closed = other.clone();
    closed.tuple.client.set_port(40002);
    table.expect_adoption(&[tuple(), other.tuple, closed.tuple]);
    let unseen: Vec<_> = table
        .unadopted()
        .filter(|(_, seen)| seen.is_none())
        .collect();
    assert_eq!(unseen.len(), 3, "listed, no segment seen yet");

    table
        .ingest(&data(isn, 0, server_isn + 1, 4), b"GET ")
        .unwrap();
    table
        .ingest(&data(isn, 4, server_isn + 501, 3), b"/a ")
        .unwrap();
    let record = *table
        .unadopted()
        .find(|(t, _)| *t == tuple())
        .and_then(|(_, seen)| seen)
        .expect("numbers from its segments");
    assert_eq!(
        (record.tuple, record.acked, record.next_seq),
        (tuple(), server_isn + 501, isn + 1 + 7)
    );

    // Adopted: protected from now on, no longer to be reset.
    let image = ConnectionImage::adopted(
        tuple(),
        isn,
        syn(isn).options,
        server_isn,
        0,
        b"GET /a ",
        NEGOTIATED,
        ImageLimits::default(),
    );
    table.adopt(image);
    assert!(!table.is_unadopted(&tuple()));

    // Ended by the client: nobody waits on it.
    table.ingest(&other, &[]).unwrap();
    assert!(table.is_unadopted(&other.tuple));
    other.flags = FIN_ACK;
    table.ingest(&other, &[]).unwrap();
    assert!(!table.is_unadopted(&other.tuple));

    // Reported closed by the primary.
    table.remove(&closed.tuple);
    assert_eq!(table.unadopted().count(), 0);

    // Segments of connections nobody listed (a late ACK of one that ended) make no record.
    table.ingest(&closed, &[]).unwrap();
    table.ingest(&other, &[]).unwrap();
    assert_eq!(table.unadopted().count(), 0);
}

/// A connection whose handshake reached the primary straight (before the backup stood in front
/// of it) but whose later segments passed here: expected for adoption with the numbers of the
/// segments kept, so a takeover before the hand-over can still reset its client.
#[test]
fn a_connection_seen_only_after_its_opening_is_expected_with_its_latest_numbers() {
    let (isn, server_isn) = (5000u32, 9000u32);
    let mut table = ConnectionTable::new(TableLimits::default());
    table
        .ingest(&data(isn, 0, server_isn + 1, 4), b"GET ")
        .unwrap();
    table
        .ingest(&data(isn, 4, server_isn + 301, 3), b"/b ")
        .unwrap();
    // Reordered: an older segment does not move the numbers back.
    table
        .ingest(&data(isn, 0, server_isn + 1, 4), b"GET ")
        .unwrap();
    assert_eq!(table.unadopted().count(), 0, "nobody listed it yet");
    table.expect_adoption(&[tuple()]);
    let record = *table
        .unadopted()
        .find(|(t, _)| *t == tuple())
        .and_then(|(_, seen)| seen)
        .expect("numbers from the kept segments");
    assert_eq!(
        (record.acked, record.next_seq),
        (server_isn + 301, isn + 1 + 7)
    );
    // The kept segments stay for the adoption to replay.
    assert!(table.recent_untracked_bytes() > 0);
}

/// The primary reports a connection opened: the table holds it from its start only if both its
/// SYN and its handshake ACK passed here. One whose ACK went around (its client's ARP entry
/// named the primary for a moment before the guard was set) or that never passed here is
/// expected for adoption, and a takeover cannot mistake its SYN-only image for the connection.
#[test]
fn a_connection_reported_opened_is_logged_only_with_its_handshake() {
    let (isn, server_isn) = (7000u32, 11000u32);
    let mut table = ConnectionTable::new(TableLimits::default());
    let mut whole = syn(isn);
    whole.tuple.client.set_port(42001);
    let mut around = syn(isn);
    around.tuple.client.set_port(42002);
    let mut unseen = tuple();
    unseen.client.set_port(42003);
    for opening in [&whole, &around] {
        table.ingest(opening, &[]).unwrap();
    }
    let mut handshake_ack = data(isn, 0, server_isn + 1, 0);
    handshake_ack.tuple = whole.tuple;
    table.ingest(&handshake_ack, &[]).unwrap();

    assert_eq!(table.reported_opened(&whole.tuple), OpenedCheck::Logged);
    assert_eq!(
        table.reported_opened(&around.tuple),
        OpenedCheck::HandshakeAround
    );
    assert_eq!(table.reported_opened(&unseen), OpenedCheck::NeverSeen);
    assert!(table.get(&whole.tuple).is_some() && !table.is_unadopted(&whole.tuple));
    assert!(
        table.get(&around.tuple).is_none(),
        "its SYN-only image is gone"
    );
    assert!(table.is_unadopted(&around.tuple) && table.is_unadopted(&unseen));

    // Its later segments, bounced here by the guard, are kept for the hand-over.
    let mut request = data(isn, 0, server_isn + 1, 4);
    request.tuple = around.tuple;
    let ingested = table.ingest(&request, b"GET ").unwrap();
    assert_eq!(ingested.tracking, Tracking::Untracked);
    let record = table
        .unadopted()
        .find(|(t, _)| *t == around.tuple)
        .and_then(|(_, seen)| seen.copied())
        .expect("numbers from its segments");
    assert_eq!(
        (record.acked, record.next_seq),
        (server_isn + 1, isn + 1 + 4)
    );
    // Reported again (a repeated frame): still expected, nothing else changes.
    assert_eq!(table.reported_opened(&around.tuple), OpenedCheck::NeverSeen);
    assert_eq!(table.unadopted().count(), 2);
}

/// A connection the primary lists for adoption whose SYN passed here but whose handshake went
/// on around this backup: its SYN-only image is dropped, so the segments that follow are kept
/// and replayed into the hand-over instead of being swallowed by an image the hand-over
/// replaces. A connection this table holds from its handshake on keeps its image.
#[test]
fn a_syn_only_image_gives_way_to_the_hand_over() {
    let (isn, server_isn) = (4000u32, 6000u32);
    let mut table = ConnectionTable::new(TableLimits::default());
    table.ingest(&syn(isn), &[]).unwrap();
    let mut whole = syn(isn);
    whole.tuple.client.set_port(40200);
    table.ingest(&whole, &[]).unwrap();
    let mut handshake_ack = data(isn, 0, server_isn + 1, 0);
    handshake_ack.tuple = whole.tuple;
    table.ingest(&handshake_ack, &[]).unwrap();

    table.expect_adoption(&[tuple(), whole.tuple]);
    assert!(table.get(&tuple()).is_none() && table.is_unadopted(&tuple()));
    assert!(table.get(&whole.tuple).is_some() && !table.is_unadopted(&whole.tuple));

    // A request passes while the hand-over is on its way: kept, and replayed into it.
    let ingested = table
        .ingest(&data(isn, 0, server_isn + 1, 4), b"GET ")
        .unwrap();
    assert_eq!(ingested.tracking, Tracking::Untracked);
    let handed_over = ConnectionImage::adopted(
        tuple(),
        isn,
        syn(isn).options,
        server_isn,
        0,
        b"",
        NEGOTIATED,
        ImageLimits::default(),
    );
    assert_eq!(table.adopt(handed_over), 1, "the kept segment is replayed");
    assert_eq!(table.get(&tuple()).unwrap().unconsumed_to_vec(), b"GET ");
}

#[test]
fn unadopted_records_are_bounded_by_the_connection_limit() {
    let mut table = ConnectionTable::new(TableLimits {
        max_connections: 2,
        ..TableLimits::default()
    });
    let tuples: Vec<_> = (0..5u16)
        .map(|port| {
            let mut t = tuple();
            t.client.set_port(41000 + port);
            t
        })
        .collect();
    table.expect_adoption(&tuples);
    assert_eq!(table.unadopted().count(), 2);
    assert_eq!(table.counters().unadopted_unrecorded, 3);
}

/// A connection the primary's kernel accepted but never reported (it was in the accept queue at
/// the crash): resumed from the image alone with a template of the primary's options adjusted
/// to this client's SYN, every request pending from the first; refused if the client shows it
/// received reply bytes the log never held.
#[test]
fn an_unreported_connection_resumes_from_the_image_and_a_template() {
    use steadfast_core::replication_wire::ConnectionOptions;
    use steadfast_core::reply_log::{LostReason, ReplicaLog};
    let (isn, server_isn) = (1000u32, 70000u32);
    let request = b"GET /a HTTP/1.1\r\n\r\n";
    let with_ts = |mut segment: ClientSegment| {
        segment.options.timestamps = Some(Timestamps {
            value: 90,
            echo_reply: 5555,
        });
        segment
    };
    let mut image = established(isn, server_isn);
    image
        .ingest(
            &with_ts(data(isn, 0, server_isn + 1, request.len())),
            request,
        )
        .unwrap();
    // Learnt from another connection: (client's shift, ours), SACK, timestamps, MSS.
    let template = ConnectionOptions {
        window_scales: Some((5, 9)),
        sack: true,
        timestamps: true,
        mss: 1448,
    };
    let plan = ReplicaLog::new()
        .plan_unreported(&image, &template)
        .unwrap();
    assert_eq!(
        plan.options.window_scales,
        Some((7, 9)),
        "this client's shift, ours"
    );
    assert!(plan.options.sack && plan.options.timestamps);
    assert_eq!(plan.options.mss, 1448);
    assert_eq!(plan.pending_request_bytes, request.to_vec());
    assert_eq!(
        (
            plan.reply_acked,
            plan.reply_offset,
            plan.request_offset,
            plan.next_request_index
        ),
        (0, 0, 0, 0)
    );
    assert!(plan.unacked_reply.is_empty());
    assert_eq!(plan.restore.snd_una, server_isn + 1);
    assert_eq!(plan.restore.rcv_nxt, isn + 1 + request.len() as u32);
    assert_eq!(plan.restore.last_tsecr, Some(5555));
    // A template without window scaling, or a client SYN without it: none.
    let plain = ConnectionOptions {
        window_scales: None,
        ..template
    };
    assert_eq!(
        ReplicaLog::new()
            .plan_unreported(&image, &plain)
            .unwrap()
            .options
            .window_scales,
        None
    );

    // The client acknowledges 5 reply bytes nobody logged: it cannot be resumed.
    image
        .ingest(
            &with_ts(data(isn, request.len() as u32, server_isn + 6, 0)),
            &[],
        )
        .unwrap();
    assert!(matches!(
        ReplicaLog::new().plan_unreported(&image, &template),
        Err(LostReason::AckBeyondLog { acked: 5, .. })
    ));
}

/// An established connection (timestamps off) whose client sent `request`, and a reply log
/// that has it opened with the options the primary negotiated.
fn opened_with_request(
    isn: u32,
    server_isn: u32,
    request: &[u8],
) -> (ConnectionImage, steadfast_core::reply_log::ReplicaLog) {
    use steadfast_core::replication_wire::ConnectionOptions;
    let mut image = established(isn, server_isn);
    image
        .ingest(&data(isn, 0, server_isn + 1, request.len()), request)
        .unwrap();
    image.set_negotiated(NegotiatedOptions {
        timestamps: false,
        ..NEGOTIATED
    });
    let mut log = steadfast_core::reply_log::ReplicaLog::new();
    let options = ConnectionOptions {
        window_scales: Some((7, 9)),
        sack: true,
        timestamps: false,
        mss: 1460,
    };
    log.opened(image.tuple(), isn, options);
    (image, log)
}

/// A reply logged in parts and cut by the crash: the plan resumes it by range when the reply
/// and the request allow it (a GET), and counts the connection lost otherwise; once the final
/// piece is logged, nothing is cut.
#[test]
fn a_reply_cut_in_parts_is_planned_for_a_range_resume() {
    use steadfast_core::http::{CutFraming, NotResumable};
    use steadfast_core::reply_log::LostReason;
    let (isn, server_isn) = (5000u32, 90000u32);
    let get: &[u8] = b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n";
    let post: &[u8] = b"POST /big HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    for (request, resumable) in [(get, true), (post, false)] {
        let (image, mut log) = opened_with_request(isn, server_isn, request);
        let tuple = image.tuple();
        let mut first = b"HTTP/1.1 200 OK\r\nETag: \"e1\"\r\nAccept-Ranges: bytes\r\nContent-Length: 1000\r\n\r\n".to_vec();
        first.extend([1u8; 300]);
        let first_len = first.len() as u64;
        log.log_reply(&tuple, 0, 0, None, first).unwrap();
        log.log_reply(&tuple, 0, first_len, None, vec![2u8; 200])
            .unwrap();
        let planned = log.plan(&image);
        if resumable {
            let plan = planned.unwrap();
            let cut = plan.cut_reply.expect("a cut reply");
            assert_eq!(cut.payload_sent, 500);
            assert_eq!(cut.framing, CutFraming::Length { remaining: 500 });
            assert_eq!(plan.pending_request_bytes, request.to_vec());
            assert_eq!(plan.reply_offset, first_len + 200);
            assert_eq!(plan.unacked_reply.len() as u64, first_len + 200);
        } else {
            assert!(matches!(
                planned,
                Err(LostReason::PartialReply {
                    why: NotResumable::Request(_),
                    ..
                })
            ));
        }
        log.log_reply(
            &tuple,
            0,
            first_len + 200,
            Some(request.len() as u64),
            vec![3u8; 500],
        )
        .unwrap();
        let plan = log.plan(&image).unwrap();
        assert_eq!(plan.cut_reply, None);
        assert!(plan.pending_request_bytes.is_empty());
    }
}

/// The same log, for a Redis connection (the RESP framer): pipelined commands, replies logged
/// whole are resent to the client and the commands no complete reply answers run again; a
/// reply cut in the middle of its logged parts cannot be finished (a server has no "rest of a
/// reply") and the connection is counted lost with that reason. Nothing of the log changes but
/// the framer it is built with.
#[test]
fn a_resp_connection_is_planned_by_the_same_log() {
    use steadfast_core::image::NegotiatedOptions;
    use steadfast_core::replication_wire::ConnectionOptions;
    use steadfast_core::reply_log::{LostReason, ReplicaLog};
    use steadfast_core::resp_stream::{RespNotResumable, RespStream};
    let (isn, server_isn) = (8000u32, 40000u32);
    let incr: &[u8] = b"*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n";
    let get: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    let stream = [incr, get].concat();
    let mut image = established(isn, server_isn);
    image
        .ingest(&data(isn, 0, server_isn + 1, stream.len()), &stream)
        .unwrap();
    image.set_negotiated(NegotiatedOptions {
        timestamps: false,
        ..NEGOTIATED
    });
    let mut log = ReplicaLog::with_framer(RespStream);
    let tuple = image.tuple();
    log.opened(
        tuple,
        isn,
        ConnectionOptions {
            window_scales: Some((7, 9)),
            sack: true,
            timestamps: false,
            mss: 1460,
        },
    );
    let counted = b":1\r\n".to_vec();
    log.log_reply(&tuple, 0, 0, Some(incr.len() as u64), counted.clone())
        .unwrap();
    let plan = log.plan(&image).unwrap();
    assert_eq!(
        plan.unacked_reply, counted,
        "the client still lacks the reply"
    );
    assert_eq!(plan.next_request_index, 1);
    assert_eq!(plan.pending_request_bytes, get.to_vec(), "GET runs again");
    assert_eq!(plan.cut_reply, None);
    // A long value, logged in parts: the crash between them loses the connection.
    let at = counted.len() as u64;
    log.log_reply(&tuple, 1, at, None, b"$100000\r\nxx".to_vec())
        .unwrap();
    assert!(matches!(
        log.plan(&image),
        Err(LostReason::PartialReply {
            why: RespNotResumable::NoRestOfReply,
            ..
        })
    ));
}

/// A reply after which the primary ends the connection (here: to an HTTP/1.0 request) leaves
/// the request pipelined behind it unanswered: the plan says so, so that a new primary closes
/// the connection after what the client lacks of that reply instead of answering the next
/// request, which the server would never have seen.
#[test]
fn a_reply_that_ends_the_connection_is_the_last_one_a_successor_sends() {
    let (isn, server_isn) = (7000u32, 30000u32);
    let first: &[u8] = b"GET /a HTTP/1.0\r\n\r\n";
    let stream = [first, b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
    let reply = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
    for closes in [false, true] {
        let (image, mut log) = opened_with_request(isn, server_isn, &stream);
        let tuple = image.tuple();
        log.log_reply(&tuple, 0, 0, Some(first.len() as u64), reply.clone())
            .unwrap();
        if closes {
            log.closes_after_last_reply(&tuple);
        }
        let plan = log.plan(&image).unwrap();
        assert_eq!(plan.close_after_reply, closes);
        assert_eq!(
            plan.unacked_reply, reply,
            "the client still lacks the reply"
        );
        assert_eq!(plan.next_request_index, 1);
        assert_eq!(plan.pending_request_bytes, stream[first.len()..].to_vec());
    }
}

/// A connection adopted in the middle of a streamed download: the primary hands over the reply
/// bytes its client had not acknowledged and where the reply stands. The log starts there, the
/// pieces the primary logs afterwards follow, and a takeover sends the client what it lacks,
/// then resumes the rest by range — as if the backup had followed the reply from its start.
#[test]
fn a_connection_adopted_in_the_middle_of_a_reply_is_resumed_from_the_log() {
    use steadfast_core::http::{CutFraming, CutPoint, EntityTag};
    use steadfast_core::replication_wire::ConnectionOptions;
    use steadfast_core::reply_log::{AdoptedConnection, ReplicaLog};
    let (isn, server_isn) = (5000u32, 90000u32);
    let request: &[u8] = b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n";
    let head_len = 80u64;
    // 10 000 reply bytes sent before the hand-over, the client acknowledged 7 000 of them.
    let (acked, sent) = (7_000u64, 10_000u64);
    let unacked: Vec<u8> = (acked..sent).map(|i| i as u8).collect();
    let cut = CutPoint {
        validator: EntityTag::parse(b"\"e1\"").unwrap(),
        payload_sent: sent - head_len,
        framing: CutFraming::Length {
            remaining: 1_000_000 - (sent - head_len),
        },
    };
    let image = ConnectionImage::adopted(
        tuple(),
        isn,
        syn(isn).options,
        server_isn,
        0,
        request,
        NegotiatedOptions {
            timestamps: false,
            ..NEGOTIATED
        },
        ImageLimits::default(),
    )
    .with_reply_acked(acked);
    let mut table = ConnectionTable::new(TableLimits::default());
    table.adopt(image);
    let mut log = ReplicaLog::new();
    log.adopt(AdoptedConnection {
        tuple: tuple(),
        client_isn: isn,
        options: ConnectionOptions {
            window_scales: Some((7, 9)),
            sack: true,
            timestamps: false,
            mss: 1460,
        },
        next_request: 0,
        request_offset: 0,
        reply_acked: acked,
        unacked_reply: unacked.clone(),
        reply_in_progress: Some(Ok(cut)),
    });
    log.log_reply(&tuple(), 0, sent, None, vec![9u8; 5_000])
        .unwrap();
    // The client acknowledges 2 000 more before the primary dies.
    table
        .ingest(
            &data(isn, request.len() as u32, server_isn + 1 + 9_000, 0),
            &[],
        )
        .unwrap();
    let plan = log.plan(table.get(&tuple()).unwrap()).unwrap();
    assert_eq!(plan.reply_acked, 9_000);
    let mut expected = unacked[2_000..].to_vec();
    expected.extend([9u8; 5_000]);
    assert_eq!(plan.unacked_reply, expected);
    assert_eq!(plan.reply_offset, sent + 5_000);
    assert_eq!(plan.pending_request_bytes, request.to_vec());
    let cut = plan.cut_reply.expect("the reply resumes by range");
    assert_eq!(cut.payload_sent, sent - head_len + 5_000);
    assert_eq!(
        cut.framing,
        CutFraming::Length {
            remaining: 1_000_000 - (sent - head_len + 5_000)
        }
    );
    assert_eq!(plan.restore.snd_una, server_isn + 1 + 9_000);
    // Once the final piece is logged the request is answered and nothing is cut.
    log.log_reply(
        &tuple(),
        0,
        sent + 5_000,
        Some(request.len() as u64),
        vec![8u8; 3],
    )
    .unwrap();
    let plan = log.plan(table.get(&tuple()).unwrap()).unwrap();
    assert_eq!(plan.cut_reply, None);
}

/// An upload adopted in its middle: the primary hands over the request bytes it received from
/// the request's start; those that pass the backup afterwards complete it, and a takeover sends
/// the whole request to its backend again (with its id), the way it does any unanswered one.
/// An adoption whose client bytes were partly dropped for room before it arrived is marked,
/// and a takeover counts the connection lost instead of rebuilding a socket that would wait
/// for them forever.
#[test]
fn an_upload_adopted_in_its_middle_is_replayed_whole_unless_bytes_went_missing() {
    use steadfast_core::replication_wire::ConnectionOptions;
    use steadfast_core::reply_log::{AdoptedConnection, LostReason, ReplicaLog};
    let (isn, server_isn) = (5000u32, 90000u32);
    let head = b"POST /commit HTTP/1.1\r\nContent-Length: 12000000\r\n\r\n".to_vec();
    let mut body = head.clone();
    body.extend((0..12_000_000u32).map(|i| (i % 251) as u8));
    let options = ConnectionOptions {
        window_scales: Some((7, 9)),
        sack: true,
        timestamps: false,
        mss: 1460,
    };
    let negotiated = NegotiatedOptions {
        timestamps: false,
        ..NEGOTIATED
    };
    for segment_len in [1400usize, 8000] {
        let mut table = ConnectionTable::new(TableLimits::default());
        table.expect_adoption(&[tuple()]);
        // The primary read the first 1 000 000 bytes when it handed the connection over; the
        // next `passed` bytes went through the backup meanwhile (8 000-byte segments: merged
        // by GRO). 6 MB (a receive window) fit what the table keeps; 9.5 MB (more than any
        // window) do not.
        let handed = 1_000_000usize;
        let passed = if segment_len == 1400 {
            6_000_000
        } else {
            9_500_000
        };
        let mut at = handed;
        while at < handed + passed {
            let end = (at + segment_len).min(handed + passed);
            table
                .ingest(
                    &data(isn, at as u32, server_isn + 1, end - at),
                    &body[at..end],
                )
                .unwrap();
            at = end;
        }
        let image = ConnectionImage::adopted(
            tuple(),
            isn,
            syn(isn).options,
            server_isn,
            0,
            &body[..handed],
            negotiated,
            ImageLimits::default(),
        );
        table.adopt(image);
        let mut log = ReplicaLog::new();
        log.adopt(AdoptedConnection {
            tuple: tuple(),
            client_isn: isn,
            options,
            next_request: 0,
            request_offset: 0,
            reply_acked: 0,
            unacked_reply: Vec::new(),
            reply_in_progress: None,
        });
        let image = table.get(&tuple()).unwrap();
        if segment_len == 1400 {
            assert!(!image.handover_gap());
            let plan = log.plan(image).unwrap();
            assert_eq!(plan.pending_request_bytes, body[..handed + passed].to_vec());
            assert_eq!(plan.next_request_index, 0);
        } else {
            assert!(image.handover_gap(), "9.5 MB passed, more than is kept");
            assert!(matches!(
                log.plan(image),
                Err(LostReason::HandoverGap { .. })
            ));
        }
    }
}

/// `segment` of the connection from client port `port`.
fn from_port(mut segment: ClientSegment, port: u16) -> ClientSegment {
    segment.tuple.client.set_port(port);
    segment
}

/// A SYN flood (spoofed SYNs that never complete their handshake) cannot fill the table: a
/// new half-open image beyond `max_half_open` pushes out the oldest one, established
/// connections are never touched, and a real handshake in the middle of the flood is tracked.
#[test]
fn a_flood_of_syns_that_never_complete_leaves_room_for_real_handshakes() {
    let mut table = ConnectionTable::new(TableLimits {
        max_connections: 1000,
        max_half_open: 100,
        ..TableLimits::default()
    });
    let (isn, server_isn) = (7000u32, 9000u32);
    table.ingest(&from_port(syn(isn), 1), &[]).unwrap();
    table
        .ingest(&from_port(data(isn, 0, server_isn + 1, 0), 1), &[])
        .unwrap();
    let flood = |table: &mut ConnectionTable, ports: std::ops::Range<u16>| {
        for port in ports {
            let opened = table.ingest(&from_port(syn(u32::from(port)), port), &[]);
            assert_eq!(opened.unwrap().tracking, Tracking::Opened, "port {port}");
        }
    };
    flood(&mut table, 1000..6000);
    // A real client in the middle of the flood: its ACK follows its SYN within a round trip.
    let real = 500;
    assert_eq!(
        table
            .ingest(&from_port(syn(isn), real), &[])
            .unwrap()
            .tracking,
        Tracking::Opened
    );
    flood(&mut table, 6000..6050);
    let acked = table
        .ingest(&from_port(data(isn, 0, server_isn + 1, 0), real), &[])
        .unwrap();
    assert_eq!(acked.tracking, Tracking::Tracked, "its handshake completes");
    flood(&mut table, 6050..20000);
    let established: Vec<u16> = table
        .iter()
        .filter(|image| image.server_isn().is_some())
        .map(|image| image.tuple().client.port())
        .collect();
    assert_eq!(established.len(), 2, "both established connections stay");
    assert!(established.contains(&1) && established.contains(&real));
    assert!(
        table.len() <= 102,
        "at most max_half_open half-open images beside them: {}",
        table.len()
    );
    assert_eq!(table.counters().refused_segments, 0, "no SYN refused");
    assert_eq!(
        table.counters().half_open_evicted,
        19_000 - 100,
        "every flood SYN but the newest 100 pushed out"
    );
    // A handshake slower than the flood: its image was pushed out, its ACK passes untracked
    // (the primary will hand the connection over).
    table.ingest(&from_port(syn(isn), 600), &[]).unwrap();
    flood(&mut table, 20000..20100);
    let late = table
        .ingest(&from_port(data(isn, 0, server_isn + 1, 0), 600), &[])
        .unwrap();
    assert_eq!(late.tracking, Tracking::Untracked);
}

/// Segments of connections the table does not track are kept for a later hand-over within a
/// total bound, oldest connection first out. A connection whose kept segments were forgotten
/// (it ended) and that sends again starts afresh at the back: its old place does not push the
/// new segments out.
#[test]
fn kept_untracked_segments_leave_oldest_connection_first_and_a_new_start_is_new() {
    let mut table = ConnectionTable::new(TableLimits::default());
    let (isn, server_isn) = (1000u32, 2000u32);
    let piece = vec![b'x'; 60_000];
    let kept = |table: &mut ConnectionTable, port: u16, position: u32| {
        table
            .ingest(
                &from_port(data(isn, position, server_isn + 1, piece.len()), port),
                &piece,
            )
            .unwrap();
    };
    kept(&mut table, 10, 0);
    // Port 10 ends (a FIN), then comes back with new segments later.
    let mut fin = from_port(data(isn, 60_000, server_isn + 1, 0), 10);
    fin.flags = FIN_ACK;
    table.ingest(&fin, &[]).unwrap();
    kept(&mut table, 11, 0);
    // Past 64 MiB in all: connections of four segments each (256 KiB per connection at most),
    // port 10 back among them.
    for port in 12..300u16 {
        if port == 150 {
            kept(&mut table, 10, 0);
        }
        for i in 0..4 {
            kept(&mut table, port, i * 60_000);
        }
    }
    assert!(table.recent_untracked_bytes() <= 64 * 1024 * 1024);
    // Port 11 went first; port 10's new segment is newer and kept (its stale first place did
    // not push it out), as the adoptions show.
    let adopted = |table: &mut ConnectionTable, port: u16| {
        let mut t = tuple();
        t.client.set_port(port);
        table.adopt(ConnectionImage::adopted(
            t,
            isn,
            syn(isn).options,
            server_isn,
            0,
            b"",
            NEGOTIATED,
            ImageLimits::default(),
        ))
    };
    assert_eq!(
        adopted(&mut table, 11),
        0,
        "the oldest connection's segments are gone"
    );
    assert_eq!(adopted(&mut table, 10), 1, "the new start was kept");
}
