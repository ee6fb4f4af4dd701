//! Property tests of the HTTP framers: random pipelined requests and replies, cut into random
//! pieces, must come out with exactly the boundaries they were built with; arbitrary and
//! mutated streams never panic, frame the same whatever the split, and their event ranges tile
//! the stream.

use std::collections::BTreeMap;
use std::ops::Range;

use proptest::prelude::*;
use proptest::sample::Index;
use steadfast_core::http::{
    FramingError, ReplyEvent, RequestBodyFraming, RequestEvent, RequestFramer, ResponseFramer,
};

// ---------------------------------------------------------------- generated messages

#[derive(Debug, Clone)]
enum BodySpec {
    None,
    Length(Vec<u8>),
    Chunked {
        chunks: Vec<(Vec<u8>, bool)>,
        uppercase: bool,
        zero_padding: usize,
        trailers: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone)]
struct RequestSpec {
    leading_empty_line: bool,
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    body: BodySpec,
}

#[derive(Debug, Clone)]
struct ReplySpec {
    method: &'static str,
    interim: Vec<u16>,
    status: u16,
    headers: Vec<(String, String)>,
    body: BodySpec,
}

/// The boundaries a message was built with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Boundaries {
    interim: Vec<Range<u64>>,
    head: Option<Range<u64>>,
    body: Vec<Range<u64>>,
    framing: Vec<Range<u64>>,
    end: Option<Range<u64>>,
    closes: Option<bool>,
}

fn push_merged(ranges: &mut Vec<Range<u64>>, range: Range<u64>) {
    if range.is_empty() {
        return;
    }
    if let Some(last) = ranges.last_mut() {
        if last.end == range.start {
            last.end = range.end;
            return;
        }
    }
    ranges.push(range);
}

fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        // Bytes that look like HTTP inside a body must not confuse the framer.
        2 => Just(b"0\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 64..3000),
    ]
}

fn field() -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(vec!["Host", "Accept", "X-Trace", "User-Agent", "Cookie"]),
        "[ -~]{0,20}",
    )
        .prop_map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
}

fn body_spec() -> impl Strategy<Value = BodySpec> {
    prop_oneof![
        Just(BodySpec::None),
        body_bytes().prop_map(BodySpec::Length),
        (
            prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 1..200), any::<bool>()),
                0..6
            ),
            any::<bool>(),
            0usize..3,
            prop::collection::vec(field(), 0..3),
        )
            .prop_map(
                |(chunks, uppercase, zero_padding, trailers)| BodySpec::Chunked {
                    chunks,
                    uppercase,
                    zero_padding,
                    trailers,
                }
            ),
    ]
}

fn request_spec() -> impl Strategy<Value = RequestSpec> {
    (
        any::<bool>(),
        prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]),
        "/[a-z0-9/._-]{0,30}",
        prop::collection::vec(field(), 0..5),
        body_spec(),
    )
        .prop_map(
            |(leading_empty_line, method, target, headers, body)| RequestSpec {
                leading_empty_line,
                method,
                target,
                headers,
                body,
            },
        )
}

fn reply_spec() -> impl Strategy<Value = ReplySpec> {
    (
        prop::sample::select(vec!["GET", "GET", "POST", "HEAD"]),
        prop::collection::vec(prop::sample::select(vec![100u16, 102, 103]), 0..3),
        prop::sample::select(vec![200u16, 201, 204, 206, 304, 404, 500]),
        prop::collection::vec(field(), 0..4),
        body_spec(),
    )
        .prop_map(|(method, interim, status, headers, body)| ReplySpec {
            method,
            interim,
            status,
            headers,
            body,
        })
}

/// Appends the body of `spec` (after its head) and records its ranges.
fn write_body(out: &mut Vec<u8>, spec: &BodySpec, boundaries: &mut Boundaries) {
    let position = |out: &Vec<u8>| out.len() as u64;
    match spec {
        BodySpec::None => {}
        BodySpec::Length(bytes) => {
            let start = position(out);
            out.extend_from_slice(bytes);
            push_merged(&mut boundaries.body, start..position(out));
        }
        BodySpec::Chunked {
            chunks,
            uppercase,
            zero_padding,
            trailers,
        } => {
            for (data, extension) in chunks {
                let start = position(out);
                let size = if *uppercase {
                    format!("{}{:X}", "0".repeat(*zero_padding), data.len())
                } else {
                    format!("{}{:x}", "0".repeat(*zero_padding), data.len())
                };
                out.extend_from_slice(size.as_bytes());
                if *extension {
                    out.extend_from_slice(b";name=\"quoted value\"");
                }
                out.extend_from_slice(b"\r\n");
                push_merged(&mut boundaries.framing, start..position(out));
                let data_start = position(out);
                out.extend_from_slice(data);
                push_merged(&mut boundaries.body, data_start..position(out));
                let crlf = position(out);
                out.extend_from_slice(b"\r\n");
                push_merged(&mut boundaries.framing, crlf..position(out));
            }
            let start = position(out);
            out.extend_from_slice(b"0\r\n");
            for (name, value) in trailers {
                out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            push_merged(&mut boundaries.framing, start..position(out));
        }
    }
}

fn framing_headers(spec: &BodySpec) -> String {
    match spec {
        BodySpec::None => String::new(),
        BodySpec::Length(bytes) => format!("Content-Length: {}\r\n", bytes.len()),
        BodySpec::Chunked { .. } => "Transfer-Encoding: chunked\r\n".to_owned(),
    }
}

fn build_requests(specs: &[RequestSpec]) -> (Vec<u8>, Vec<Boundaries>) {
    let mut out = Vec::new();
    let mut all = Vec::new();
    for spec in specs {
        let mut boundaries = Boundaries::default();
        let start = out.len() as u64;
        if spec.leading_empty_line {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("{} {} HTTP/1.1\r\n", spec.method, spec.target).as_bytes());
        for (name, value) in &spec.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(framing_headers(&spec.body).as_bytes());
        out.extend_from_slice(b"\r\n");
        boundaries.head = Some(start..out.len() as u64);
        write_body(&mut out, &spec.body, &mut boundaries);
        boundaries.end = Some(start..out.len() as u64);
        all.push(boundaries);
    }
    (out, all)
}

/// Builds the replies; the last one is read until close when `until_close` is set.
fn build_replies(specs: &[ReplySpec], until_close: Option<Vec<u8>>) -> (Vec<u8>, Vec<Boundaries>) {
    let mut out = Vec::new();
    let mut all = Vec::new();
    for spec in specs {
        let mut boundaries = Boundaries::default();
        let start = out.len() as u64;
        for status in &spec.interim {
            let interim_start = out.len() as u64;
            out.extend_from_slice(
                format!("HTTP/1.1 {status} Interim\r\nX-Hint: a\r\n\r\n").as_bytes(),
            );
            boundaries.interim.push(interim_start..out.len() as u64);
        }
        let head_start = out.len() as u64;
        out.extend_from_slice(format!("HTTP/1.1 {} Whatever\r\n", spec.status).as_bytes());
        for (name, value) in &spec.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        // A final reply without any length runs until close: only the last reply may.
        let framing = match spec.body {
            BodySpec::None => "Content-Length: 0\r\n".to_owned(),
            _ => framing_headers(&spec.body),
        };
        out.extend_from_slice(framing.as_bytes());
        out.extend_from_slice(b"\r\n");
        boundaries.head = Some(head_start..out.len() as u64);
        let bodyless = spec.method == "HEAD" || spec.status == 204 || spec.status == 304;
        if !bodyless {
            write_body(&mut out, &spec.body, &mut boundaries);
        }
        boundaries.end = Some(start..out.len() as u64);
        boundaries.closes = Some(false);
        all.push(boundaries);
    }
    if let Some(body) = until_close {
        let mut boundaries = Boundaries::default();
        let start = out.len() as u64;
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n");
        boundaries.head = Some(start..out.len() as u64);
        let body_start = out.len() as u64;
        out.extend_from_slice(&body);
        push_merged(&mut boundaries.body, body_start..out.len() as u64);
        boundaries.end = Some(start..out.len() as u64);
        boundaries.closes = Some(true);
        all.push(boundaries);
    }
    (out, all)
}

// ---------------------------------------------------------------- feeding and observing

fn cut_points(length: usize, cuts: &[Index]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(length + 1)).collect();
    points.push(0);
    points.push(length);
    points.sort_unstable();
    points.dedup();
    points
}

fn pieces<'a>(stream: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    cut_points(stream.len(), cuts)
        .windows(2)
        .map(|w| &stream[w[0]..w[1]])
        .collect()
}

struct RequestRun {
    events: Vec<RequestEvent>,
    result: Result<(), FramingError>,
    position: u64,
}

fn run_requests(stream: &[u8], cuts: &[Index]) -> RequestRun {
    let mut framer = RequestFramer::default();
    let mut events = Vec::new();
    let mut result = Ok(());
    for piece in pieces(stream, cuts) {
        result = framer.feed(piece, &mut events);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = framer.finish(&mut events);
    }
    RequestRun {
        events,
        result,
        position: framer.position(),
    }
}

struct ReplyRun {
    events: Vec<ReplyEvent>,
    result: Result<(), FramingError>,
    position: u64,
}

fn run_replies(methods: &[&str], stream: &[u8], cuts: &[Index]) -> ReplyRun {
    let mut framer = ResponseFramer::default();
    for method in methods {
        framer.expect_reply(method);
    }
    let mut events = Vec::new();
    let mut result = Ok(());
    for piece in pieces(stream, cuts) {
        result = framer.feed(piece, &mut events);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = framer.finish(&mut events);
    }
    ReplyRun {
        events,
        result,
        position: framer.position(),
    }
}

/// Checks that the tiled ranges follow each other without gap or overlap from offset 0;
/// returns where they end.
fn tiling_end(ranges: impl Iterator<Item = Range<u64>>) -> Result<u64, TestCaseError> {
    let mut end = 0;
    for range in ranges {
        prop_assert_eq!(range.start, end, "gap or overlap at {}", end);
        prop_assert!(range.start < range.end, "empty range {:?}", range);
        end = range.end;
    }
    Ok(end)
}

fn observed_requests(events: &[RequestEvent]) -> BTreeMap<u64, Boundaries> {
    let mut by_index: BTreeMap<u64, Boundaries> = BTreeMap::new();
    for event in events {
        match event {
            RequestEvent::Head(head) => {
                by_index.entry(head.index).or_default().head = Some(head.range.clone())
            }
            RequestEvent::Body { index, range } => {
                push_merged(&mut by_index.entry(*index).or_default().body, range.clone())
            }
            RequestEvent::Framing { index, range } => push_merged(
                &mut by_index.entry(*index).or_default().framing,
                range.clone(),
            ),
            RequestEvent::End { index, range } => {
                by_index.entry(*index).or_default().end = Some(range.clone())
            }
            RequestEvent::Tunnel { .. } | RequestEvent::Discarded { .. } => {}
        }
    }
    by_index
}

fn observed_replies(events: &[ReplyEvent]) -> BTreeMap<u64, Boundaries> {
    let mut by_index: BTreeMap<u64, Boundaries> = BTreeMap::new();
    for event in events {
        match event {
            ReplyEvent::Interim(head) => by_index
                .entry(head.index)
                .or_default()
                .interim
                .push(head.range.clone()),
            ReplyEvent::Head(head) => {
                by_index.entry(head.index).or_default().head = Some(head.range.clone())
            }
            ReplyEvent::Body { index, range } => {
                push_merged(&mut by_index.entry(*index).or_default().body, range.clone())
            }
            ReplyEvent::Framing { index, range } => push_merged(
                &mut by_index.entry(*index).or_default().framing,
                range.clone(),
            ),
            ReplyEvent::End {
                index,
                range,
                closes_connection,
            } => {
                let entry = by_index.entry(*index).or_default();
                entry.end = Some(range.clone());
                entry.closes = Some(*closes_connection);
            }
            ReplyEvent::Tunnel { .. } | ReplyEvent::Discarded { .. } => {}
        }
    }
    by_index
}

/// Events with contiguous ranges of the same kind merged: the canonical form that must not
/// depend on how the stream was split.
fn canonical_requests(events: &[RequestEvent]) -> Vec<RequestEvent> {
    let mut out: Vec<RequestEvent> = Vec::new();
    for event in events.iter().cloned() {
        if let Some(last) = out.last_mut() {
            let merged = match (last, &event) {
                (
                    RequestEvent::Body { index: a, range },
                    RequestEvent::Body { index: b, range: n },
                )
                | (
                    RequestEvent::Framing { index: a, range },
                    RequestEvent::Framing { index: b, range: n },
                ) if a == b && range.end == n.start => {
                    range.end = n.end;
                    true
                }
                (RequestEvent::Tunnel { range }, RequestEvent::Tunnel { range: n })
                | (RequestEvent::Discarded { range }, RequestEvent::Discarded { range: n })
                    if range.end == n.start =>
                {
                    range.end = n.end;
                    true
                }
                _ => false,
            };
            if merged {
                continue;
            }
        }
        out.push(event);
    }
    out
}

fn canonical_replies(events: &[ReplyEvent]) -> Vec<ReplyEvent> {
    let mut out: Vec<ReplyEvent> = Vec::new();
    for event in events.iter().cloned() {
        if let Some(last) = out.last_mut() {
            let merged = match (last, &event) {
                (ReplyEvent::Body { index: a, range }, ReplyEvent::Body { index: b, range: n })
                | (
                    ReplyEvent::Framing { index: a, range },
                    ReplyEvent::Framing { index: b, range: n },
                ) if a == b && range.end == n.start => {
                    range.end = n.end;
                    true
                }
                (ReplyEvent::Tunnel { range }, ReplyEvent::Tunnel { range: n })
                | (ReplyEvent::Discarded { range }, ReplyEvent::Discarded { range: n })
                    if range.end == n.start =>
                {
                    range.end = n.end;
                    true
                }
                _ => false,
            };
            if merged {
                continue;
            }
        }
        out.push(event);
    }
    out
}

/// Token soup: pieces of HTTP syntax and stray bytes, to reach deep states with invalid input.
fn http_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"GET / HTTP/1.1\r\n".to_vec()),
        Just(b"POST /x HTTP/1.0\r\n".to_vec()),
        Just(b"HTTP/1.1 200 OK\r\n".to_vec()),
        Just(b"HTTP/1.1 100 Continue\r\n".to_vec()),
        Just(b"HTTP/1.1 101 Switching Protocols\r\n".to_vec()),
        Just(b"Content-Length: 5\r\n".to_vec()),
        Just(b"Content-Length: 18446744073709551616\r\n".to_vec()),
        Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
        Just(b"Connection: close\r\n".to_vec()),
        Just(b"Connection: upgrade\r\nUpgrade: x\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"0\r\n".to_vec()),
        Just(b"5\r\n".to_vec()),
        Just(b"ffffffffffffffff\r\n".to_vec()),
        Just(b"5;x\r\n".to_vec()),
        Just(b"hello".to_vec()),
        Just(b"X-T: v\r\n".to_vec()),
        Just(b": ".to_vec()),
        prop::collection::vec(any::<u8>(), 1..4),
    ];
    prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

fn mutate(stream: &[u8], edits: &[(Index, u8, u8)]) -> Vec<u8> {
    let mut out = stream.to_vec();
    for (at, kind, byte) in edits {
        if out.is_empty() {
            out.push(*byte);
            continue;
        }
        let i = at.index(out.len());
        match kind % 3 {
            0 => out[i] = *byte,
            1 => out.insert(i, *byte),
            _ => {
                out.remove(i);
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn requests_keep_their_boundaries_whatever_the_split(
        specs in prop::collection::vec(request_spec(), 1..6),
        cuts in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        let (stream, expected) = build_requests(&specs);
        let run = run_requests(&stream, &cuts);
        prop_assert!(run.result.is_ok(), "{:?}", run.result);
        prop_assert_eq!(run.position, stream.len() as u64);
        let end = tiling_end(run.events.iter().filter_map(RequestEvent::tiled_range))?;
        prop_assert_eq!(end, stream.len() as u64, "sum of ranges differs from bytes fed");
        let observed = observed_requests(&run.events);
        let expected: BTreeMap<u64, Boundaries> =
            expected.into_iter().enumerate().map(|(i, b)| (i as u64, b)).collect();
        prop_assert_eq!(&observed, &expected);
        for event in &run.events {
            if let RequestEvent::Head(head) = event {
                let spec = &specs[head.index as usize];
                prop_assert_eq!(head.method.as_str(), spec.method);
                prop_assert_eq!(&head.target, &spec.target);
                let framing = match &spec.body {
                    BodySpec::None => RequestBodyFraming::None,
                    BodySpec::Length(b) => RequestBodyFraming::ContentLength(b.len() as u64),
                    BodySpec::Chunked { .. } => RequestBodyFraming::Chunked,
                };
                prop_assert_eq!(head.body, framing);
                prop_assert!(head.keep_alive);
            }
        }
    }

    #[test]
    fn replies_keep_their_boundaries_whatever_the_split(
        specs in prop::collection::vec(reply_spec(), 0..6),
        until_close in prop::option::of(prop::collection::vec(any::<u8>(), 0..500)),
        cuts in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        let (stream, expected) = build_replies(&specs, until_close.clone());
        let mut methods: Vec<&str> = specs.iter().map(|s| s.method).collect();
        if until_close.is_some() {
            methods.push("GET");
        }
        let run = run_replies(&methods, &stream, &cuts);
        prop_assert!(run.result.is_ok(), "{:?}", run.result);
        prop_assert_eq!(run.position, stream.len() as u64);
        let end = tiling_end(run.events.iter().filter_map(ReplyEvent::tiled_range))?;
        prop_assert_eq!(end, stream.len() as u64, "sum of ranges differs from bytes fed");
        let observed = observed_replies(&run.events);
        let expected: BTreeMap<u64, Boundaries> =
            expected.into_iter().enumerate().map(|(i, b)| (i as u64, b)).collect();
        prop_assert_eq!(&observed, &expected);
    }

    #[test]
    fn arbitrary_request_bytes_never_panic_and_tile(
        stream in prop_oneof![prop::collection::vec(any::<u8>(), 0..600), http_soup()],
        cuts_a in prop::collection::vec(any::<Index>(), 0..16),
        cuts_b in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let a = run_requests(&stream, &cuts_a);
        let b = run_requests(&stream, &cuts_b);
        prop_assert_eq!(canonical_requests(&a.events), canonical_requests(&b.events));
        prop_assert_eq!(&a.result, &b.result);
        let end = tiling_end(a.events.iter().filter_map(RequestEvent::tiled_range))?;
        prop_assert!(end <= stream.len() as u64);
        if a.result.is_ok() {
            prop_assert_eq!(end, stream.len() as u64);
        }
        let ends: Vec<Range<u64>> = a.events.iter().filter_map(|e| match e {
            RequestEvent::End { range, .. } => Some(range.clone()),
            _ => None,
        }).collect();
        tiling_end(ends.into_iter())?;
    }

    #[test]
    fn arbitrary_reply_bytes_never_panic_and_tile(
        stream in prop_oneof![prop::collection::vec(any::<u8>(), 0..600), http_soup()],
        methods in prop::collection::vec(prop::sample::select(vec!["GET", "HEAD", "CONNECT"]), 0..4),
        cuts_a in prop::collection::vec(any::<Index>(), 0..16),
        cuts_b in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let a = run_replies(&methods, &stream, &cuts_a);
        let b = run_replies(&methods, &stream, &cuts_b);
        prop_assert_eq!(canonical_replies(&a.events), canonical_replies(&b.events));
        prop_assert_eq!(&a.result, &b.result);
        let end = tiling_end(a.events.iter().filter_map(ReplyEvent::tiled_range))?;
        prop_assert!(end <= stream.len() as u64);
        if a.result.is_ok() {
            prop_assert_eq!(end, stream.len() as u64);
        }
    }

    #[test]
    fn mutated_request_streams_never_panic_and_frame_the_same_whatever_the_split(
        specs in prop::collection::vec(request_spec(), 1..4),
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..4),
        cuts_a in prop::collection::vec(any::<Index>(), 0..16),
        cuts_b in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let (stream, _) = build_requests(&specs);
        let stream = mutate(&stream, &edits);
        let a = run_requests(&stream, &cuts_a);
        let b = run_requests(&stream, &cuts_b);
        prop_assert_eq!(canonical_requests(&a.events), canonical_requests(&b.events));
        prop_assert_eq!(&a.result, &b.result);
        let end = tiling_end(a.events.iter().filter_map(RequestEvent::tiled_range))?;
        if a.result.is_ok() {
            prop_assert_eq!(end, stream.len() as u64);
        }
    }

    #[test]
    fn mutated_reply_streams_never_panic_and_frame_the_same_whatever_the_split(
        specs in prop::collection::vec(reply_spec(), 1..4),
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..4),
        cuts_a in prop::collection::vec(any::<Index>(), 0..16),
        cuts_b in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let (stream, _) = build_replies(&specs, None);
        let stream = mutate(&stream, &edits);
        let methods: Vec<&str> = specs.iter().map(|s| s.method).collect();
        let a = run_replies(&methods, &stream, &cuts_a);
        let b = run_replies(&methods, &stream, &cuts_b);
        prop_assert_eq!(canonical_replies(&a.events), canonical_replies(&b.events));
        prop_assert_eq!(&a.result, &b.result);
        let end = tiling_end(a.events.iter().filter_map(ReplyEvent::tiled_range))?;
        if a.result.is_ok() {
            prop_assert_eq!(end, stream.len() as u64);
        }
    }
}
