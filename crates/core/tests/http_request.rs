//! Unit tests of the request framer: every framing case, smuggling refusals, the request-id
//! rewrite.

use std::ops::Range;

use steadfast_core::http::{
    EntityTag, FramingError, FramingErrorKind, FramingLimits, HttpVersion, RequestBodyFraming,
    RequestEvent, RequestFramer, RequestHead, RequestId, StreamSide,
};

/// Feeds `stream` in pieces of `piece` bytes and returns the events with contiguous body and
/// framing ranges merged, plus the first error.
fn frame_in_pieces(stream: &[u8], piece: usize) -> (Vec<RequestEvent>, Result<(), FramingError>) {
    let mut framer = RequestFramer::default();
    let mut events = Vec::new();
    for chunk in stream.chunks(piece.max(1)) {
        if let Err(error) = framer.feed(chunk, &mut events) {
            return (merged(events), Err(error));
        }
    }
    (merged(events), Ok(()))
}

fn frame(stream: &[u8]) -> (Vec<RequestEvent>, Result<(), FramingError>) {
    let whole = frame_in_pieces(stream, stream.len());
    // Every case must come out the same byte by byte: the split never matters.
    let byte_by_byte = frame_in_pieces(stream, 1);
    assert_eq!(whole, byte_by_byte, "framing depends on the split");
    whole
}

fn merged(events: Vec<RequestEvent>) -> Vec<RequestEvent> {
    let mut out: Vec<RequestEvent> = Vec::new();
    for event in events {
        if let Some(last) = out.last_mut() {
            match (last, &event) {
                (
                    RequestEvent::Body { index: a, range },
                    RequestEvent::Body {
                        index: b,
                        range: next,
                    },
                )
                | (
                    RequestEvent::Framing { index: a, range },
                    RequestEvent::Framing {
                        index: b,
                        range: next,
                    },
                ) if a == b && range.end == next.start => {
                    range.end = next.end;
                    continue;
                }
                (RequestEvent::Tunnel { range }, RequestEvent::Tunnel { range: next })
                | (RequestEvent::Discarded { range }, RequestEvent::Discarded { range: next })
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

fn heads(events: &[RequestEvent]) -> Vec<&RequestHead> {
    events
        .iter()
        .filter_map(|e| match e {
            RequestEvent::Head(h) => Some(h),
            _ => None,
        })
        .collect()
}

fn ends(events: &[RequestEvent]) -> Vec<Range<u64>> {
    events
        .iter()
        .filter_map(|e| match e {
            RequestEvent::End { range, .. } => Some(range.clone()),
            _ => None,
        })
        .collect()
}

fn bodies(events: &[RequestEvent], index: u64) -> Vec<Range<u64>> {
    events
        .iter()
        .filter_map(|e| match e {
            RequestEvent::Body { index: i, range } if *i == index => Some(range.clone()),
            _ => None,
        })
        .collect()
}

fn error_kind(stream: &[u8]) -> (FramingErrorKind, u64, u64) {
    let (_, result) = frame(stream);
    let error = result.expect_err("stream must be refused");
    assert_eq!(error.side, StreamSide::Request);
    (error.kind, error.index, error.offset)
}

#[test]
fn simple_get_is_one_request_without_body() {
    let stream = b"GET /index.html HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
    let (events, result) = frame(stream);
    result.unwrap();
    assert_eq!(events.len(), 2);
    let head = heads(&events)[0];
    assert_eq!(head.index, 0);
    assert_eq!(head.method, "GET");
    assert_eq!(head.target, "/index.html");
    assert_eq!(head.version, HttpVersion::Http11);
    assert_eq!(head.range, 0..stream.len() as u64);
    assert_eq!(head.body, RequestBodyFraming::None);
    assert!(head.keep_alive);
    assert!(!head.expects_continue);
    assert_eq!(head.header("host"), Some(&b"a"[..]));
    assert_eq!(head.headers.len(), 2);
    assert_eq!(ends(&events), vec![0..stream.len() as u64]);
}

#[test]
fn content_length_body_is_reported_as_ranges() {
    let head = b"POST /commit HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
    let mut stream = head.to_vec();
    stream.extend_from_slice(b"hello world");
    let (events, result) = frame(&stream);
    result.unwrap();
    let h = heads(&events)[0];
    assert_eq!(h.body, RequestBodyFraming::ContentLength(11));
    let head_end = head.len() as u64;
    assert_eq!(bodies(&events, 0), vec![head_end..head_end + 11]);
    assert_eq!(ends(&events), vec![0..stream.len() as u64]);
}

#[test]
fn content_length_zero_ends_at_the_head() {
    let stream = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    let (events, result) = frame(stream);
    result.unwrap();
    assert_eq!(ends(&events).len(), 2);
    assert!(bodies(&events, 0).is_empty());
}

#[test]
fn identical_content_lengths_count_as_one() {
    let stream = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc";
    let (events, result) = frame(stream);
    result.unwrap();
    assert_eq!(heads(&events)[0].body, RequestBodyFraming::ContentLength(3));
    assert_eq!(ends(&events), vec![0..stream.len() as u64]);
}

#[test]
fn chunked_body_separates_data_from_framing() {
    let head = b"PUT /up HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    let body =
        b"5;name=value\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nChecksum: x\r\n\r\n";
    let mut stream = head.to_vec();
    stream.extend_from_slice(body);
    let (events, result) = frame(&stream);
    result.unwrap();
    assert_eq!(heads(&events)[0].body, RequestBodyFraming::Chunked);
    let h = head.len() as u64;
    let first_data = h + "5;name=value\r\n".len() as u64;
    let second_data = first_data + 5 + 2 + 4;
    assert_eq!(
        bodies(&events, 0),
        vec![first_data..first_data + 5, second_data..second_data + 26]
    );
    let framing: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            RequestEvent::Framing { range, .. } => Some(range.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        framing,
        vec![
            h..first_data,
            first_data + 5..second_data,
            second_data + 26..stream.len() as u64
        ]
    );
    assert_eq!(ends(&events), vec![0..stream.len() as u64]);
}

#[test]
fn chunk_size_accepts_uppercase_hex_and_leading_zeros() {
    let stream =
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000A\r\n0123456789\r\n00\r\n\r\n";
    let (events, result) = frame(stream);
    result.unwrap();
    assert_eq!(
        bodies(&events, 0)
            .iter()
            .map(|r| r.end - r.start)
            .sum::<u64>(),
        10
    );
    assert_eq!(ends(&events).len(), 1);
}

#[test]
fn pipelined_requests_get_contiguous_ranges_and_indices() {
    let first = b"GET /a HTTP/1.1\r\n\r\n".to_vec();
    let second = b"POST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody".to_vec();
    let third =
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n".to_vec();
    let stream = [first.clone(), second.clone(), third.clone()].concat();
    let (events, result) = frame(&stream);
    result.unwrap();
    let a = first.len() as u64;
    let b = a + second.len() as u64;
    let c = b + third.len() as u64;
    assert_eq!(ends(&events), vec![0..a, a..b, b..c]);
    let indices: Vec<u64> = heads(&events).iter().map(|h| h.index).collect();
    assert_eq!(indices, vec![0, 1, 2]);
    assert_eq!(
        heads(&events)
            .iter()
            .map(|h| h.target.as_str())
            .collect::<Vec<_>>(),
        vec!["/a", "/b", "/c"]
    );
}

#[test]
fn connection_close_discards_later_bytes() {
    let stream = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /more HTTP/1.1\r\n\r\n";
    let (events, result) = frame(stream);
    result.unwrap();
    assert!(!heads(&events)[0].keep_alive);
    assert_eq!(heads(&events).len(), 1);
    let first_len = "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".len() as u64;
    assert_eq!(
        events.last(),
        Some(&RequestEvent::Discarded {
            range: first_len..stream.len() as u64
        })
    );
}

#[test]
fn http10_closes_unless_keep_alive() {
    let (events, result) = frame(b"GET / HTTP/1.0\r\n\r\n");
    result.unwrap();
    assert_eq!(heads(&events)[0].version, HttpVersion::Http10);
    assert!(!heads(&events)[0].keep_alive);

    let (events, result) =
        frame(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET / HTTP/1.0\r\n\r\n");
    result.unwrap();
    assert!(heads(&events)[0].keep_alive);
    assert_eq!(heads(&events).len(), 2);
}

#[test]
fn connection_close_token_found_in_a_list() {
    let (events, result) = frame(b"GET / HTTP/1.1\r\nConnection: TE, Close\r\n\r\n");
    result.unwrap();
    assert!(!heads(&events)[0].keep_alive);
}

#[test]
fn expect_100_continue_is_flagged_on_http11_only() {
    let (events, result) =
        frame(b"PUT /up HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\nok");
    result.unwrap();
    assert!(heads(&events)[0].expects_continue);

    let (events, result) =
        frame(b"PUT /up HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok");
    result.unwrap();
    assert!(!heads(&events)[0].expects_continue);
}

#[test]
fn empty_lines_before_a_request_belong_to_its_head() {
    let stream = b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\nGET / HTTP/1.1\r\n\r\n";
    let (events, result) = frame(stream);
    result.unwrap();
    let first_end = "POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".len() as u64;
    assert_eq!(
        ends(&events),
        vec![0..first_end, first_end..stream.len() as u64]
    );
    assert_eq!(heads(&events)[1].range, first_end..stream.len() as u64);
}

#[test]
fn bare_lf_heads_are_accepted_and_re_encoded_with_crlf() {
    let stream = b"GET /x HTTP/1.1\nHost: a\n\n";
    let (events, result) = frame(stream);
    result.unwrap();
    let encoded = heads(&events)[0].encode_for_backend(&RequestId::new(7, 0));
    assert_eq!(
        encoded,
        b"GET /x HTTP/1.1\r\nHost: a\r\nSteadfast-Request-Id: 0000000000000007-0\r\n\r\n"
    );
}

#[test]
fn content_length_with_transfer_encoding_is_refused() {
    let (kind, index, offset) = error_kind(
        b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(kind, FramingErrorKind::ContentLengthWithTransferEncoding);
    assert_eq!((index, offset), (0, 0));
}

#[test]
fn smuggling_in_a_pipelined_request_keeps_earlier_requests() {
    let first = b"GET /ok HTTP/1.1\r\n\r\n";
    let mut stream = first.to_vec();
    stream.extend_from_slice(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    );
    let (events, result) = frame(&stream);
    let error = result.unwrap_err();
    assert_eq!(
        error.kind,
        FramingErrorKind::ContentLengthWithTransferEncoding
    );
    assert_eq!(error.index, 1);
    assert_eq!(error.offset, first.len() as u64);
    assert_eq!(ends(&events), vec![0..first.len() as u64]);
    let message = error.to_string();
    assert!(message.contains("request 1"), "{message}");
    assert!(
        message.contains(&format!("offset {}", first.len())),
        "{message}"
    );
}

#[test]
fn differing_content_lengths_are_refused() {
    let (kind, _, _) =
        error_kind(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
    assert_eq!(
        kind,
        FramingErrorKind::ConflictingContentLengths {
            first: 5,
            second: 6
        }
    );
    let (kind, _, _) = error_kind(b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n");
    assert!(matches!(
        kind,
        FramingErrorKind::ConflictingContentLengths { .. }
    ));
}

#[test]
fn malformed_content_lengths_are_refused() {
    for value in [
        "+5",
        "-1",
        "0x5",
        "5 5",
        "5,",
        "",
        "1.0",
        "99999999999999999999999",
    ] {
        let stream = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
        let (kind, _, _) = error_kind(stream.as_bytes());
        assert!(
            matches!(kind, FramingErrorKind::InvalidContentLength { .. }),
            "{value:?} gave {kind:?}"
        );
    }
}

#[test]
fn transfer_encodings_without_a_final_single_chunked_are_refused() {
    for value in [
        "gzip",
        "chunked, gzip",
        "chunked, chunked",
        "chunked;x=1",
        "xchunked",
        ",",
    ] {
        let stream = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {value}\r\n\r\n");
        let (kind, _, _) = error_kind(stream.as_bytes());
        assert!(
            matches!(kind, FramingErrorKind::UnsupportedTransferEncoding { .. }),
            "{value:?} gave {kind:?}"
        );
    }
    // Two header lines combine into one list: chunked is then not final.
    let (kind, _, _) = error_kind(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
    );
    assert!(matches!(
        kind,
        FramingErrorKind::UnsupportedTransferEncoding { .. }
    ));
}

#[test]
fn transfer_encoding_in_http10_is_refused() {
    let (kind, _, _) =
        error_kind(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(kind, FramingErrorKind::TransferEncodingInHttp10);
}

#[test]
fn whitespace_before_the_colon_is_refused() {
    let (kind, _, _) =
        error_kind(b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n");
    assert!(
        matches!(kind, FramingErrorKind::MalformedHead(_)),
        "{kind:?}"
    );
}

#[test]
fn obsolete_line_folding_is_refused() {
    let (kind, _, _) = error_kind(b"GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n");
    assert!(
        matches!(kind, FramingErrorKind::MalformedHead(_)),
        "{kind:?}"
    );
}

/// The offset of a chunk framing error is the offending byte.
fn chunk_error(body: &[u8]) -> (FramingErrorKind, u64) {
    let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut stream = head.to_vec();
    stream.extend_from_slice(body);
    let (kind, _, offset) = error_kind(&stream);
    (kind, offset - head.len() as u64)
}

#[test]
fn bad_chunk_sizes_are_refused_at_the_offending_byte() {
    let cases: &[(&[u8], u64)] = &[
        (b"0x5\r\nhello\r\n0\r\n\r\n", 1),
        (b"-5\r\n", 0),
        (b"+5\r\n", 0),
        (b" 5\r\n", 0),
        (b"\r\n", 0),
        (b"5 x\r\nhello\r\n", 2),
        (b"5\nhello\r\n", 1),
        (b"5\rhello", 2),
        (b"g\r\n", 0),
        (b"5;ext\nhello", 5),
        (b"5;a\x01b\r\n", 3),
        (b"10000000000000000\r\n", 16),
    ];
    for (body, expected_offset) in cases {
        let (kind, offset) = chunk_error(body);
        assert!(
            matches!(kind, FramingErrorKind::InvalidChunkSize { .. }),
            "{:?} gave {kind:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            offset,
            *expected_offset,
            "{:?}: {kind}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn chunk_size_with_whitespace_before_its_line_end_is_accepted() {
    // Not in RFC 9112's grammar, but nginx, apache2 and the builtin backend take it: a proxy
    // that refused it would be seen.
    for size_line in [&b"5 \r\n"[..], b"5\t\r\n", b"5  \t \r\n"] {
        let mut stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        stream.extend_from_slice(size_line);
        stream.extend_from_slice(b"hello\r\n0\r\n\r\n");
        let (events, result) = frame(&stream);
        assert_eq!(result, Ok(()), "{:?}", String::from_utf8_lossy(size_line));
        assert_eq!(ends(&events), vec![0..stream.len() as u64]);
    }
}

#[test]
fn chunk_size_with_whitespace_before_an_extension_is_accepted() {
    let stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 ;a=b\r\nabc\r\n0\r\n\r\n";
    let (events, result) = frame(stream);
    result.unwrap();
    assert_eq!(ends(&events).len(), 1);
}

#[test]
fn largest_chunk_size_does_not_overflow() {
    let stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc";
    let mut framer = RequestFramer::default();
    let mut events = Vec::new();
    framer.feed(stream, &mut events).unwrap();
    assert_eq!(framer.position(), stream.len() as u64);
    assert_eq!(
        bodies(&events, 0),
        vec![stream.len() as u64 - 3..stream.len() as u64]
    );
}

#[test]
fn missing_crlf_after_chunk_data_is_refused() {
    let (kind, offset) = chunk_error(b"5\r\nhelloX\r\n0\r\n\r\n");
    assert_eq!(kind, FramingErrorKind::MissingChunkDataCrlf);
    assert_eq!(offset, 8);
    let (kind, offset) = chunk_error(b"5\r\nhello\n0\r\n\r\n");
    assert_eq!(kind, FramingErrorKind::MissingChunkDataCrlf);
    assert_eq!(offset, 8);
}

#[test]
fn bad_trailers_are_refused() {
    for body in [
        &b"0\r\nX-A: 1\n\r\n"[..],
        b"0\r\n\n",
        b"0\r\nX A: 1\r\n\r\n",
        b"0\r\n: 1\r\n\r\n",
        b"0\r\n folded\r\n\r\n",
        b"0\r\nX-A: \x01\r\n\r\n",
        b"0\r\nX-A: 1\r\rX",
    ] {
        let (kind, _) = chunk_error(body);
        assert!(
            matches!(kind, FramingErrorKind::InvalidTrailer { .. }),
            "{:?} gave {kind:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn long_chunk_lines_and_trailers_are_refused() {
    let mut long_extension = b"5;".to_vec();
    long_extension.extend(std::iter::repeat_n(b'a', 5000));
    let (kind, _) = chunk_error(&long_extension);
    assert_eq!(kind, FramingErrorKind::ChunkLineTooLong { limit: 4096 });

    let mut long_trailer = b"0\r\nX-A: ".to_vec();
    long_trailer.extend(std::iter::repeat_n(b'a', 20_000));
    let (kind, _) = chunk_error(&long_trailer);
    assert_eq!(kind, FramingErrorKind::TrailerTooLarge { limit: 16 * 1024 });
}

/// A GET whose head has `fields` header fields, `filler` bytes of them in one field.
fn get_with_fields(fields: usize, filler: usize) -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', filler));
    head.extend_from_slice(b"\r\n");
    for i in 1..fields {
        head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[test]
fn heads_servers_accept_pass_whatever_their_number_of_fields() {
    // Beyond nginx's and apache2's defaults (which answer such requests themselves); the
    // field counts straddle the parser's steps of room (64, 256, 1024, 4096).
    let limits = FramingLimits::default();
    for fields in [1, 63, 64, 65, 140, 256, 257, 1025, 4097, limits.max_headers] {
        let (events, result) = frame(&get_with_fields(fields, 80_000));
        assert_eq!(result, Ok(()), "{fields} fields");
        assert_eq!(heads(&events).len(), 1, "{fields} fields");
        assert_eq!(heads(&events)[0].headers.len(), fields, "{fields} fields");
    }
}

#[test]
fn oversized_heads_too_many_headers_and_empty_line_floods_are_refused() {
    let limits = FramingLimits::default();
    let big = get_with_fields(1, limits.max_head_bytes + 10);
    let (kind, _, _) = error_kind(&big);
    assert_eq!(
        kind,
        FramingErrorKind::HeadTooLarge {
            limit: limits.max_head_bytes
        }
    );

    let (kind, _, _) = error_kind(&get_with_fields(limits.max_headers + 1, 0));
    assert_eq!(
        kind,
        FramingErrorKind::TooManyHeaders {
            limit: limits.max_headers
        }
    );

    let flood = b"\r\n".repeat(100);
    let (kind, _, _) = error_kind(&flood);
    assert_eq!(kind, FramingErrorKind::TooManyEmptyLines { limit: 64 });
}

#[test]
fn garbage_is_refused_before_the_head_could_end() {
    let mut framer = RequestFramer::default();
    let mut events = Vec::new();
    let error = framer
        .feed(b"\x16\x03\x01\x02\x00", &mut events)
        .unwrap_err();
    assert!(matches!(error.kind, FramingErrorKind::MalformedHead(_)));
}

#[test]
fn errors_are_sticky() {
    let mut framer = RequestFramer::default();
    let mut events = Vec::new();
    let error = framer
        .feed(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", &mut events)
        .unwrap_err();
    assert_eq!(
        framer.feed(b"GET / HTTP/1.1\r\n\r\n", &mut events),
        Err(error.clone())
    );
    assert_eq!(framer.finish(&mut events), Err(error));
}

#[test]
fn finish_reports_truncated_requests() {
    let mut framer = RequestFramer::default();
    let mut events = Vec::new();
    framer.feed(b"GET / HTTP/1.1\r\nHo", &mut events).unwrap();
    let error = framer.finish(&mut events).unwrap_err();
    assert_eq!(
        error.kind,
        FramingErrorKind::Truncated {
            inside: "request head"
        }
    );
    assert_eq!(error.offset, 18);

    let mut framer = RequestFramer::default();
    framer
        .feed(
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
            &mut events,
        )
        .unwrap();
    let error = framer.finish(&mut events).unwrap_err();
    assert_eq!(
        error.kind,
        FramingErrorKind::Truncated {
            inside: "request body"
        }
    );

    let mut framer = RequestFramer::default();
    let mut events = Vec::new();
    framer
        .feed(b"GET / HTTP/1.1\r\n\r\n\r\n", &mut events)
        .unwrap();
    framer.finish(&mut events).unwrap();
    assert_eq!(
        events.last(),
        Some(&RequestEvent::Discarded { range: 18..20 })
    );
}

#[test]
fn position_and_boundaries_follow_the_stream() {
    let mut framer = RequestFramer::starting_at(FramingLimits::default(), 1000, 5);
    let mut events = Vec::new();
    assert!(framer.at_request_boundary());
    framer
        .feed(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab",
            &mut events,
        )
        .unwrap();
    assert!(!framer.at_request_boundary());
    assert_eq!(framer.current_index(), 5);
    framer.feed(b"c", &mut events).unwrap();
    assert!(framer.at_request_boundary());
    assert_eq!(framer.current_index(), 6);
    assert_eq!(framer.position(), 1000 + 41);
    assert_eq!(ends(&events), vec![1000..1041]);
    assert_eq!(heads(&events)[0].index, 5);
}

#[test]
fn connect_turns_the_stream_into_a_tunnel() {
    let stream = b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n\x00\x01binary";
    let (events, result) = frame(stream);
    result.unwrap();
    let head_len = heads(&events)[0].range.end;
    assert_eq!(
        events.last(),
        Some(&RequestEvent::Tunnel {
            range: head_len..stream.len() as u64
        })
    );
}

#[test]
fn upgrade_is_flagged_and_switches_on_request() {
    let mut framer = RequestFramer::default();
    let mut events = Vec::new();
    framer
        .feed(
            b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            &mut events,
        )
        .unwrap();
    assert!(heads(&events)[0].wants_upgrade);
    framer.switch_to_tunnel();
    let start = framer.position();
    framer.feed(b"\x81\x05hello", &mut events).unwrap();
    assert_eq!(
        events.last(),
        Some(&RequestEvent::Tunnel {
            range: start..start + 7
        })
    );
}

#[test]
fn request_id_replaces_client_supplied_ones() {
    let stream = b"POST /commit HTTP/1.1\r\nHost: a\r\nsteadfast-request-id: forged\r\nContent-Length: 0\r\nSTEADFAST-REQUEST-ID: again\r\nX-Other:   spaced value \r\n\r\n";
    let (events, result) = frame(stream);
    result.unwrap();
    let id = RequestId::new(0xabc, 42);
    let encoded = heads(&events)[0].encode_for_backend(&id);
    assert_eq!(
        String::from_utf8(encoded).unwrap(),
        "POST /commit HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nX-Other: spaced value\r\nSteadfast-Request-Id: 0000000000000abc-42\r\n\r\n"
    );
}

#[test]
fn request_id_round_trips_and_is_stable() {
    let id = RequestId::new(u64::MAX, 7);
    let text = id.to_string();
    assert_eq!(text, "ffffffffffffffff-7");
    assert_eq!(text.parse::<RequestId>().unwrap(), id);
    assert_eq!(RequestId::new(u64::MAX, 7).to_string(), text);
    for bad in [
        "",
        "abc-1",
        "ffffffffffffffff-",
        "ffffffffffffffff-x",
        "gfffffffffffffff-1",
    ] {
        assert!(bad.parse::<RequestId>().is_err(), "{bad:?}");
    }
}

#[test]
fn resume_request_asks_for_the_rest_if_unchanged() {
    let (events, result) = frame(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    result.unwrap();
    let head = heads(&events)[0];
    let strong = EntityTag::parse(b"\"v1\"").unwrap();
    let encoded = head
        .encode_resume_request(&RequestId::new(1, 0), 5000, &strong)
        .unwrap();
    assert_eq!(
        String::from_utf8(encoded).unwrap(),
        "GET /big HTTP/1.1\r\nHost: a\r\nRange: bytes=5000-\r\nIf-Range: \"v1\"\r\nSteadfast-Request-Id: 0000000000000001-0\r\n\r\n"
    );
    let weak = EntityTag::parse(b"W/\"v1\"").unwrap();
    assert!(head
        .encode_resume_request(&RequestId::new(1, 0), 5000, &weak)
        .is_none());

    let (events, result) = frame(b"GET /big HTTP/1.1\r\nRange: bytes=0-10\r\n\r\n");
    result.unwrap();
    assert!(heads(&events)[0]
        .encode_resume_request(&RequestId::new(1, 0), 5, &strong)
        .is_none());
}

#[test]
fn large_body_is_never_buffered() {
    // A 1 GiB upload announced and streamed in 64 KiB pieces: only ranges come out.
    let mut framer = RequestFramer::default();
    let mut events = Vec::new();
    framer
        .feed(
            b"PUT /up HTTP/1.1\r\nContent-Length: 1073741824\r\n\r\n",
            &mut events,
        )
        .unwrap();
    let piece = vec![b'x'; 64 * 1024];
    for _ in 0..(1 << 14) {
        events.clear();
        framer.feed(&piece, &mut events).unwrap();
    }
    assert!(matches!(
        events.last(),
        Some(RequestEvent::End { index: 0, .. })
    ));
    assert!(framer.at_request_boundary());
}

#[test]
fn only_methods_rfc_9110_calls_idempotent_may_be_sent_twice() {
    let idempotent = |method: &str| {
        let (events, result) = frame(format!("{method} / HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        assert_eq!(result, Ok(()), "{method}");
        heads(&events)[0].is_idempotent()
    };
    for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(idempotent(method), "{method} is idempotent");
    }
    for method in ["POST", "PATCH", "LOCK", "get"] {
        assert!(!idempotent(method), "{method} is not idempotent");
    }
}
