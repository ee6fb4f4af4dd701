//! Unit tests of the reply framer: every framing case, connection reuse, resume validators.

use std::ops::Range;

use steadfast_core::http::{
    ContentRange, EntityTag, FramingError, FramingErrorKind, FramingLimits, HttpVersion,
    ReplyBodyFraming, ReplyEvent, ReplyHead, RequestEvent, RequestFramer, ResponseFramer,
    StreamSide,
};

/// Frames `stream` as the replies to `methods`, in pieces of `piece` bytes, then finishes when
/// `finish` is set. Body and framing ranges are merged.
fn frame_in_pieces(
    methods: &[&str],
    stream: &[u8],
    piece: usize,
    finish: bool,
) -> (Vec<ReplyEvent>, Result<(), FramingError>) {
    let mut framer = ResponseFramer::default();
    for method in methods {
        framer.expect_reply(method);
    }
    let mut events = Vec::new();
    for chunk in stream.chunks(piece.max(1)) {
        if let Err(error) = framer.feed(chunk, &mut events) {
            return (merged(events), Err(error));
        }
    }
    let result = if finish {
        framer.finish(&mut events)
    } else {
        Ok(())
    };
    (merged(events), result)
}

fn frame_with(
    methods: &[&str],
    stream: &[u8],
    finish: bool,
) -> (Vec<ReplyEvent>, Result<(), FramingError>) {
    let whole = frame_in_pieces(methods, stream, stream.len(), finish);
    let byte_by_byte = frame_in_pieces(methods, stream, 1, finish);
    assert_eq!(whole, byte_by_byte, "framing depends on the split");
    whole
}

fn frame(methods: &[&str], stream: &[u8]) -> (Vec<ReplyEvent>, Result<(), FramingError>) {
    frame_with(methods, stream, false)
}

fn merged(events: Vec<ReplyEvent>) -> Vec<ReplyEvent> {
    let mut out: Vec<ReplyEvent> = Vec::new();
    for event in events {
        if let Some(last) = out.last_mut() {
            match (last, &event) {
                (
                    ReplyEvent::Body { index: a, range },
                    ReplyEvent::Body {
                        index: b,
                        range: next,
                    },
                )
                | (
                    ReplyEvent::Framing { index: a, range },
                    ReplyEvent::Framing {
                        index: b,
                        range: next,
                    },
                ) if a == b && range.end == next.start => {
                    range.end = next.end;
                    continue;
                }
                (ReplyEvent::Tunnel { range }, ReplyEvent::Tunnel { range: next })
                | (ReplyEvent::Discarded { range }, ReplyEvent::Discarded { range: next })
                    if range.end == next.start =>
                {
                    range.end = next.end;
                    continue;
                }
                _ => {}
            }
        }
        out.push(event);
    }
    out
}

fn heads(events: &[ReplyEvent]) -> Vec<&ReplyHead> {
    events
        .iter()
        .filter_map(|e| match e {
            ReplyEvent::Head(h) => Some(h),
            _ => None,
        })
        .collect()
}

fn interims(events: &[ReplyEvent]) -> Vec<&ReplyHead> {
    events
        .iter()
        .filter_map(|e| match e {
            ReplyEvent::Interim(h) => Some(h),
            _ => None,
        })
        .collect()
}

fn ends(events: &[ReplyEvent]) -> Vec<(u64, Range<u64>, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            ReplyEvent::End {
                index,
                range,
                closes_connection,
            } => Some((*index, range.clone(), *closes_connection)),
            _ => None,
        })
        .collect()
}

fn bodies(events: &[ReplyEvent]) -> Vec<Range<u64>> {
    events
        .iter()
        .filter_map(|e| match e {
            ReplyEvent::Body { range, .. } => Some(range.clone()),
            _ => None,
        })
        .collect()
}

const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn content_length_reply_keeps_the_connection() {
    let (events, result) = frame(&["GET"], OK_5);
    result.unwrap();
    let head = heads(&events)[0];
    assert_eq!(head.status, 200);
    assert_eq!(head.reason, "OK");
    assert_eq!(head.version, HttpVersion::Http11);
    assert_eq!(head.body, ReplyBodyFraming::ContentLength(5));
    assert!(!head.closes_connection);
    let head_end = head.range.end;
    assert_eq!(bodies(&events), vec![head_end..head_end + 5]);
    assert_eq!(ends(&events), vec![(0, 0..OK_5.len() as u64, false)]);
}

#[test]
fn head_replies_have_no_body_whatever_they_announce() {
    let head_reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    let stream = [&head_reply[..], OK_5].concat();
    let (events, result) = frame(&["HEAD", "GET"], &stream);
    result.unwrap();
    assert_eq!(heads(&events)[0].body, ReplyBodyFraming::None);
    let a = head_reply.len() as u64;
    assert_eq!(
        ends(&events),
        vec![(0, 0..a, false), (1, a..stream.len() as u64, false)]
    );
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    let no_content = b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n";
    let not_modified = b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n";
    let stream = [&no_content[..], &not_modified[..], OK_5].concat();
    let (events, result) = frame(&["GET", "GET", "GET"], &stream);
    result.unwrap();
    let framings: Vec<_> = heads(&events).iter().map(|h| h.body).collect();
    assert_eq!(
        framings,
        vec![
            ReplyBodyFraming::None,
            ReplyBodyFraming::None,
            ReplyBodyFraming::ContentLength(5)
        ]
    );
    assert_eq!(ends(&events).len(), 3);
}

#[test]
fn interim_replies_precede_the_final_one() {
    let continue_head = b"HTTP/1.1 100 Continue\r\n\r\n";
    let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n";
    let stream = [&continue_head[..], &hints[..], OK_5].concat();
    let (events, result) = frame(&["POST"], &stream);
    result.unwrap();
    let interim: Vec<u16> = interims(&events).iter().map(|h| h.status).collect();
    assert_eq!(interim, vec![100, 103]);
    assert!(interims(&events)
        .iter()
        .all(|h| h.is_interim() && h.index == 0));
    assert_eq!(interims(&events)[0].range, 0..continue_head.len() as u64);
    // The reply spans its interim heads too.
    assert_eq!(ends(&events), vec![(0, 0..stream.len() as u64, false)]);
    assert_eq!(heads(&events).len(), 1);
}

#[test]
fn chunked_reply_separates_data_from_framing() {
    let stream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n";
    let (events, result) = frame(&["GET"], stream);
    result.unwrap();
    assert_eq!(heads(&events)[0].body, ReplyBodyFraming::Chunked);
    let head_end = heads(&events)[0].range.end;
    assert_eq!(
        bodies(&events),
        vec![head_end + 3..head_end + 7, head_end + 12..head_end + 17]
    );
    assert_eq!(ends(&events), vec![(0, 0..stream.len() as u64, false)]);
}

#[test]
fn reply_without_length_runs_until_close() {
    let stream = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome bytes until the end";
    let (events, result) = frame_with(&["GET"], stream, true);
    result.unwrap();
    let head = heads(&events)[0];
    assert_eq!(head.body, ReplyBodyFraming::UntilClose);
    assert!(head.closes_connection);
    assert_eq!(bodies(&events), vec![head.range.end..stream.len() as u64]);
    assert_eq!(ends(&events), vec![(0, 0..stream.len() as u64, true)]);

    // Without the close, the reply is not over.
    let (events, result) = frame(&["GET"], stream);
    result.unwrap();
    assert!(ends(&events).is_empty());
}

#[test]
fn transfer_coding_other_than_chunked_runs_until_close() {
    let stream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz";
    let (events, result) = frame_with(&["GET"], stream, true);
    result.unwrap();
    assert_eq!(heads(&events)[0].body, ReplyBodyFraming::UntilClose);
    assert_eq!(ends(&events), vec![(0, 0..stream.len() as u64, true)]);
}

#[test]
fn connection_close_and_http10_close_the_connection() {
    let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nokEXTRA";
    let (events, result) = frame(&["GET", "GET"], close);
    result.unwrap();
    assert!(heads(&events)[0].closes_connection);
    assert_eq!(ends(&events), vec![(0, 0..close.len() as u64 - 5, true)]);
    assert_eq!(
        events.last(),
        Some(&ReplyEvent::Discarded {
            range: close.len() as u64 - 5..close.len() as u64
        })
    );

    let old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (events, result) = frame(&["GET"], old);
    result.unwrap();
    assert!(heads(&events)[0].closes_connection);

    let old_kept = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
    let (events, result) = frame(&["GET"], old_kept);
    result.unwrap();
    assert!(!heads(&events)[0].closes_connection);
}

#[test]
fn a_request_that_closes_makes_its_reply_close() {
    let mut requests = RequestFramer::default();
    let mut request_events = Vec::new();
    requests
        .feed(
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            &mut request_events,
        )
        .unwrap();
    let RequestEvent::Head(request) = &request_events[0] else {
        panic!("no head: {request_events:?}");
    };
    let mut framer = ResponseFramer::default();
    framer.expect_reply_to(request);
    let mut events = Vec::new();
    framer.feed(OK_5, &mut events).unwrap();
    assert!(heads(&events)[0].closes_connection);
    assert!(ends(&events)[0].2);
}

#[test]
fn bytes_without_a_request_are_refused() {
    let (events, result) = frame(&[], b"HTTP/1.1 408 Request Timeout\r\n\r\n");
    assert!(events.is_empty());
    let error = result.unwrap_err();
    assert_eq!(error.side, StreamSide::Reply);
    assert_eq!(error.kind, FramingErrorKind::ReplyWithoutRequest);
    assert_eq!(error.offset, 0);

    // One request, two replies: the second is unsolicited.
    let stream = [OK_5, OK_5].concat();
    let (events, result) = frame(&["GET"], &stream);
    assert_eq!(ends(&events).len(), 1);
    let error = result.unwrap_err();
    assert_eq!(error.kind, FramingErrorKind::ReplyWithoutRequest);
    assert_eq!((error.index, error.offset), (1, OK_5.len() as u64));
}

#[test]
fn switching_protocols_and_connect_open_a_tunnel() {
    let switch =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let stream = [&switch[..], b"\x81\x02hi"].concat();
    let (events, result) = frame(&["GET"], &stream);
    result.unwrap();
    assert_eq!(heads(&events)[0].body, ReplyBodyFraming::Tunnel);
    assert_eq!(ends(&events), vec![(0, 0..switch.len() as u64, true)]);
    assert_eq!(
        events.last(),
        Some(&ReplyEvent::Tunnel {
            range: switch.len() as u64..stream.len() as u64
        })
    );

    let established = b"HTTP/1.1 200 Connection Established\r\n\r\n";
    let stream = [&established[..], b"raw"].concat();
    let (events, result) = frame(&["CONNECT"], &stream);
    result.unwrap();
    assert_eq!(heads(&events)[0].body, ReplyBodyFraming::Tunnel);

    // A refused CONNECT is an ordinary reply.
    let (events, result) = frame(
        &["CONNECT"],
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
    );
    result.unwrap();
    assert_eq!(heads(&events)[0].body, ReplyBodyFraming::ContentLength(0));
}

#[test]
fn ambiguous_reply_framing_is_refused() {
    let (_, result) = frame(
        &["GET"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(
        result.unwrap_err().kind,
        FramingErrorKind::ContentLengthWithTransferEncoding
    );
    let (_, result) = frame(
        &["GET"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    );
    assert!(matches!(
        result.unwrap_err().kind,
        FramingErrorKind::ConflictingContentLengths { .. }
    ));
    let (_, result) = frame(
        &["GET"],
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(
        result.unwrap_err().kind,
        FramingErrorKind::TransferEncodingInHttp10
    );
    let (_, result) = frame(
        &["GET"],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
    );
    let error = result.unwrap_err();
    assert!(matches!(
        error.kind,
        FramingErrorKind::InvalidChunkSize { .. }
    ));
    assert_eq!(error.offset, 47);
    let (_, result) = frame(&["GET"], b"HTTP/1.1 2000 OK\r\n\r\n");
    assert!(matches!(
        result.unwrap_err().kind,
        FramingErrorKind::MalformedHead(_)
    ));
}

#[test]
fn finish_reports_truncated_replies() {
    let (_, result) = frame_with(
        &["GET"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        true,
    );
    let error = result.unwrap_err();
    assert_eq!(
        error.kind,
        FramingErrorKind::Truncated {
            inside: "reply body"
        }
    );
    assert_eq!(error.offset, 42);

    let (_, result) = frame_with(&["GET"], b"HTTP/1.1 200 OK\r\nCont", true);
    assert_eq!(
        result.unwrap_err().kind,
        FramingErrorKind::Truncated {
            inside: "reply head"
        }
    );

    let (_, result) = frame_with(&["POST"], b"HTTP/1.1 100 Continue\r\n\r\n", true);
    assert!(matches!(
        result.unwrap_err().kind,
        FramingErrorKind::Truncated { .. }
    ));

    // Closing between replies is clean, even with requests still waiting.
    let mut framer = ResponseFramer::default();
    framer.expect_reply("GET");
    framer.expect_reply("GET");
    let mut events = Vec::new();
    framer.feed(OK_5, &mut events).unwrap();
    framer.finish(&mut events).unwrap();
    assert_eq!(framer.pending_replies(), 1);
}

#[test]
fn position_indices_and_boundaries() {
    let mut framer = ResponseFramer::starting_at(FramingLimits::default(), 500, 3);
    framer.expect_reply("GET");
    framer.expect_reply("GET");
    assert!(framer.at_reply_boundary());
    let mut events = Vec::new();
    framer.feed(&OK_5[..20], &mut events).unwrap();
    assert!(!framer.at_reply_boundary());
    framer.feed(&OK_5[20..], &mut events).unwrap();
    assert!(framer.at_reply_boundary());
    assert_eq!(framer.current_index(), 4);
    assert_eq!(framer.pending_replies(), 1);
    assert_eq!(framer.position(), 500 + OK_5.len() as u64);
    assert_eq!(
        ends(&events),
        vec![(3, 500..500 + OK_5.len() as u64, false)]
    );
}

#[test]
fn etag_and_accept_ranges_are_extracted() {
    let stream = b"HTTP/1.1 200 OK\r\nETag: \"abc-123\"\r\nAccept-Ranges: bytes\r\nContent-Length: 0\r\n\r\n";
    let (events, result) = frame(&["GET"], stream);
    result.unwrap();
    let head = heads(&events)[0];
    let etag = head.etag().unwrap();
    assert!(etag.is_strong());
    assert_eq!(etag.opaque, b"abc-123");
    assert!(head.accepts_byte_ranges());
    assert_eq!(head.resume_validator(), Some(etag));

    let weak =
        b"HTTP/1.1 200 OK\r\nETag: W/\"abc\"\r\nAccept-Ranges: bytes\r\nContent-Length: 0\r\n\r\n";
    let (events, result) = frame(&["GET"], weak);
    result.unwrap();
    let head = heads(&events)[0];
    assert!(head.etag().unwrap().weak);
    assert_eq!(head.resume_validator(), None);

    let no_ranges =
        b"HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nAccept-Ranges: none\r\nContent-Length: 0\r\n\r\n";
    let (events, result) = frame(&["GET"], no_ranges);
    result.unwrap();
    assert!(!heads(&events)[0].accepts_byte_ranges());
    assert_eq!(heads(&events)[0].resume_validator(), None);
}

#[test]
fn entity_tags_parse_strictly() {
    assert_eq!(
        EntityTag::parse(b" W/\"x\" "),
        Some(EntityTag {
            weak: true,
            opaque: b"x".to_vec()
        })
    );
    assert_eq!(
        EntityTag::parse(b"\"\"").map(|t| t.opaque),
        Some(Vec::new())
    );
    for bad in [
        &b"abc"[..],
        b"\"abc",
        b"w/\"abc\"",
        b"\"a\"b\"",
        b"\"a\" \"b\"",
        b"",
    ] {
        assert_eq!(
            EntityTag::parse(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let strong = EntityTag::parse(b"\"v\"").unwrap();
    let weak = EntityTag::parse(b"W/\"v\"").unwrap();
    assert!(strong.strong_eq(&strong.clone()));
    assert!(!strong.strong_eq(&weak));
    assert_eq!(weak.to_field_value(), b"W/\"v\"");
}

#[test]
fn content_range_parses_satisfied_byte_ranges() {
    assert_eq!(
        ContentRange::parse(b"bytes 100-199/1000"),
        Some(ContentRange {
            first: 100,
            last: 199,
            complete_length: Some(1000)
        })
    );
    assert_eq!(
        ContentRange::parse(b"bytes 0-0/*").map(|r| r.len()),
        Some(1)
    );
    assert_eq!(
        ContentRange::parse(b"bytes 0-18446744073709551614/*").map(|r| r.len()),
        Some(u64::MAX),
        "the longest range there is"
    );
    assert_eq!(
        ContentRange::parse(b"bytes 1-18446744073709551614/18446744073709551615")
            .map(|r| (r.len(), r.last + 1)),
        Some((u64::MAX - 1, u64::MAX))
    );
    for bad in [
        &b"bytes */1000"[..],
        b"bytes 5-4/10",
        b"bytes 0-10/10",
        b"items 0-1/2",
        b"bytes 0-1",
        b"bytes -1-2/3",
        // Its length and end would not fit in 64 bits.
        b"bytes 0-18446744073709551615/*",
        b"bytes 18446744073709551615-18446744073709551615/*",
        // Beyond 64 bits.
        b"bytes 0-18446744073709551616/*",
    ] {
        assert_eq!(
            ContentRange::parse(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let partial = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 5-9/10\r\nContent-Length: 5\r\n\r\n56789";
    let (events, result) = frame(&["GET"], partial);
    result.unwrap();
    assert_eq!(heads(&events)[0].content_range().map(|r| r.first), Some(5));
}

#[test]
fn a_large_streamed_reply_is_only_ranges() {
    let mut framer = ResponseFramer::default();
    framer.expect_reply("GET");
    let mut events = Vec::new();
    framer
        .feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            &mut events,
        )
        .unwrap();
    let mut chunk = b"10000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b'y', 0x10000));
    chunk.extend_from_slice(b"\r\n");
    let mut payload = 0u64;
    for _ in 0..64 {
        events.clear();
        framer.feed(&chunk, &mut events).unwrap();
        payload += bodies(&events).iter().map(|r| r.end - r.start).sum::<u64>();
    }
    events.clear();
    framer.feed(b"0\r\n\r\n", &mut events).unwrap();
    assert_eq!(payload, 64 * 0x10000);
    assert!(matches!(
        events.last(),
        Some(ReplyEvent::End { index: 0, .. })
    ));
}

#[test]
fn reply_heads_of_any_size_servers_send_are_framed() {
    // More fields and bytes than any server's defaults produce (a proxy that dropped such a
    // reply would be seen): 64 and 65 fields straddle the parser's first room for fields.
    for fields in [64, 65, 300, 5_000] {
        let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: ".to_vec();
        reply.extend(std::iter::repeat_n(b'a', 100_000));
        reply.extend_from_slice(b"\r\n");
        for i in 2..fields {
            reply.extend_from_slice(format!("Set-Cookie: c{i}=v\r\n").as_bytes());
        }
        reply.extend_from_slice(b"\r\nok");
        let (events, result) = frame(&["GET"], &reply);
        assert_eq!(result, Ok(()), "{fields} fields");
        assert_eq!(heads(&events)[0].headers.len(), fields, "{fields} fields");
        assert_eq!(
            ends(&events),
            vec![(0, 0..reply.len() as u64, false)],
            "{fields} fields"
        );
    }
}
