//! Finishing a reply cut by a failover (I2 above the whole-reply limit): the backup's view of
//! where the log ends, and the new primary's continuation from the backend's answer to the
//! range request. The property: whatever the reply's framing, wherever the log is cut at chunk
//! data, and however the backend frames its answer (206 in either framing, a 200 that ignored
//! the range, a 416 when nothing is left), the client reads exactly the original payload, in
//! one well-framed reply.

use proptest::prelude::*;
use steadfast_core::http::{
    ContinuationError, CutFraming, CutPoint, EntityTag, FramingLimits, NotResumable,
    ReplyContinuation, ReplyEvent, ResponseFramer, StreamedReply,
};

const ETAG: &str = "\"v1-abc\"";

/// A reply with `status_and_fields` (start line and extra fields) whose body carries `payload`,
/// with Content-Length, or chunked in chunks of the sizes given (cycled).
fn reply(status_and_fields: &str, payload: &[u8], chunks: Option<&[usize]>) -> Vec<u8> {
    let mut out = status_and_fields.as_bytes().to_vec();
    match chunks {
        None => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", payload.len()).as_bytes());
            out.extend_from_slice(payload);
        }
        Some(sizes) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut rest = payload;
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].clamp(1, rest.len());
                i += 1;
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    out
}

fn original(payload: &[u8], chunks: Option<&[usize]>) -> Vec<u8> {
    let head = format!("HTTP/1.1 200 OK\r\nETag: {ETAG}\r\nAccept-Ranges: bytes\r\n");
    reply(&head, payload, chunks)
}

/// Runs the backend's `answer` (fed in two parts split at `split`) through a reply framer and
/// the continuation, as the proxy does; returns the bytes for the client.
fn continue_with(
    cut: &CutPoint,
    answer: &[u8],
    split: usize,
) -> Result<Vec<u8>, ContinuationError> {
    let mut framer = ResponseFramer::new(FramingLimits::default());
    framer.expect_reply("GET");
    let mut continuation = ReplyContinuation::new(cut.clone());
    let mut out = Vec::new();
    let split = split.min(answer.len());
    for part in [&answer[..split], &answer[split..]] {
        let mut events = Vec::new();
        framer
            .feed(part, &mut events)
            .expect("the test's backend reply frames");
        for event in events {
            match event {
                ReplyEvent::Head(head) | ReplyEvent::Interim(head) => continuation.head(&head)?,
                ReplyEvent::Body { range, .. } => continuation
                    .payload(&answer[range.start as usize..range.end as usize], &mut out)?,
                ReplyEvent::End { .. } => continuation.end(&mut out)?,
                _ => {}
            }
        }
    }
    assert!(continuation.is_done(), "the backend reply ended");
    Ok(out)
}

/// The payload a client reads from `stream`, which must hold exactly one complete reply.
fn client_reads(stream: &[u8]) -> Vec<u8> {
    let mut framer = ResponseFramer::new(FramingLimits::default());
    framer.expect_reply("GET");
    let mut events = Vec::new();
    framer
        .feed(stream, &mut events)
        .expect("the client's stream frames");
    let mut payload = Vec::new();
    let mut ends = 0;
    for event in events {
        match event {
            ReplyEvent::Body { range, .. } => {
                payload.extend_from_slice(&stream[range.start as usize..range.end as usize])
            }
            ReplyEvent::End { range, .. } => {
                assert_eq!(range.end, stream.len() as u64, "the reply ends the stream");
                ends += 1;
            }
            _ => {}
        }
    }
    assert_eq!(ends, 1, "exactly one complete reply");
    payload
}

#[derive(Debug, Clone)]
enum Answer {
    /// 206 with the rest, chunked when sizes are given.
    Partial(Option<Vec<usize>>),
    /// 200 with everything (the backend ignored Range but kept the ETag).
    Whole(Option<Vec<usize>>),
}

fn answer_for(cut: &CutPoint, payload: &[u8], answer: &Answer) -> Vec<u8> {
    let sent = cut.payload_sent as usize;
    let total = payload.len();
    match answer {
        Answer::Partial(_) if sent == total => {
            // Nothing left: the server cannot satisfy the range.
            let head =
                format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\n");
            reply(&head, b"<html>416</html>", None)
        }
        Answer::Partial(chunks) => {
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\nContent-Range: bytes {sent}-{}/{total}\r\n",
                total - 1
            );
            reply(&head, &payload[sent..], chunks.as_deref())
        }
        Answer::Whole(chunks) => original(payload, chunks.as_deref()),
    }
}

fn chunk_sizes() -> impl Strategy<Value = Option<Vec<usize>>> {
    prop::option::of(prop::collection::vec(1usize..700, 1..6))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_cut_reply_is_finished_exactly(
        payload in prop::collection::vec(any::<u8>(), 0..3000),
        chunks in chunk_sizes(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
        answer_chunks in chunk_sizes(),
        whole in any::<bool>(),
        split in any::<prop::sample::Index>(),
    ) {
        let wire = original(&payload, chunks.as_deref());
        let mut boundaries: Vec<usize> = cuts.iter().map(|c| c.index(wire.len())).collect();
        boundaries.sort_unstable();
        boundaries.dedup();
        let answer = if whole { Answer::Whole(answer_chunks) } else { Answer::Partial(answer_chunks) };
        let mut streamed = StreamedReply::new(FramingLimits::default());
        let mut fed = 0;
        for end in boundaries {
            streamed.feed(&wire[fed..end]);
            fed = end;
            let cut = match streamed.cut_point() {
                Ok(cut) => cut,
                Err(NotResumable::HeadIncomplete) | Err(NotResumable::InsideFraming) => {
                    // Only chunk framing (or the head) may leave the log somewhere a resume
                    // cannot start; a Content-Length body resumes anywhere after its head.
                    prop_assert!(chunks.is_some() || streamed.cut_point() == Err(NotResumable::HeadIncomplete));
                    continue;
                }
                Err(other) => return Err(TestCaseError::fail(format!("cut at {end}: {other}"))),
            };
            prop_assert_eq!(cut.validator.clone(), EntityTag::parse(ETAG.as_bytes()).unwrap());
            let backend = answer_for(&cut, &payload, &answer);
            let rest = continue_with(&cut, &backend, split.index(backend.len() + 1))
                .map_err(|e| TestCaseError::fail(format!("cut at {end}: {e}")))?;
            let mut client = wire[..end].to_vec();
            client.extend_from_slice(&rest);
            prop_assert_eq!(client_reads(&client), payload.clone(), "cut at {}", end);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A backup that joins in the middle of a streamed reply never saw its start: it follows
    /// the rest from the cut point the primary hands over. Wherever the hand-over falls (at a
    /// point the proxy cuts at) and however the rest arrives, it must say at every later point
    /// exactly what a log fed from the first byte says: where a takeover resumes, or why not.
    #[test]
    fn a_reply_followed_from_a_handed_over_cut_says_what_one_followed_whole_says(
        payload in prop::collection::vec(any::<u8>(), 1..3000),
        chunks in chunk_sizes(),
        handover in any::<prop::sample::Index>(),
        later in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
    ) {
        let wire = original(&payload, chunks.as_deref());
        let limits = FramingLimits::default();
        // Hand over at the first point from `handover` on where a cut point exists.
        let mut whole = StreamedReply::new(limits);
        let start = handover.index(wire.len());
        whole.feed(&wire[..start]);
        let mut at = start;
        let cut = loop {
            if let Ok(cut) = whole.cut_point() {
                break Some(cut);
            }
            if at == wire.len() {
                break None;
            }
            whole.feed(&wire[at..at + 1]);
            at += 1;
        };
        let Some(cut) = cut else {
            return Ok(());
        };
        let mut resumed = StreamedReply::from_cut(limits, &cut);
        prop_assert_eq!(resumed.cut_point(), Ok(cut));
        let mut ends: Vec<usize> = later.iter().map(|i| at + i.index(wire.len() - at + 1)).collect();
        ends.push(wire.len());
        ends.sort_unstable();
        ends.dedup();
        for end in ends {
            whole.feed(&wire[at..end]);
            resumed.feed(&wire[at..end]);
            at = end;
            prop_assert_eq!(resumed.cut_point(), whole.cut_point(), "at {} of {}", end, wire.len());
        }
    }
}

#[test]
fn a_reply_found_unresumable_at_the_hand_over_stays_so() {
    let mut reply = StreamedReply::unresumable(FramingLimits::default(), NotResumable::NoValidator);
    reply.feed(b"more bytes of its body");
    assert_eq!(reply.cut_point(), Err(NotResumable::NoValidator));
}

fn cut_of(wire: &[u8]) -> Result<CutPoint, NotResumable> {
    let mut streamed = StreamedReply::new(FramingLimits::default());
    streamed.feed(wire);
    streamed.cut_point()
}

#[test]
fn replies_the_backend_does_not_promise_to_repeat_are_not_resumed() {
    let payload = vec![b'x'; 100];
    let weak = "HTTP/1.1 200 OK\r\nETag: W/\"v1\"\r\nAccept-Ranges: bytes\r\n";
    let no_ranges = format!("HTTP/1.1 200 OK\r\nETag: {ETAG}\r\n");
    let no_etag = "HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\n";
    for head in [weak, no_ranges.as_str(), no_etag] {
        let wire = reply(head, &payload, None);
        assert_eq!(
            cut_of(&wire[..wire.len() - 10]),
            Err(NotResumable::NoValidator)
        );
    }
    let partial = format!(
        "HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\nAccept-Ranges: bytes\r\nContent-Range: bytes 0-99/200\r\n"
    );
    let wire = reply(&partial, &payload, None);
    assert_eq!(
        cut_of(&wire[..wire.len() - 10]),
        Err(NotResumable::Status(206))
    );
    let until_close = format!(
        "HTTP/1.1 200 OK\r\nETag: {ETAG}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\nabc"
    );
    assert_eq!(
        cut_of(until_close.as_bytes()),
        Err(NotResumable::UntilClose)
    );
    // Inside a chunk size line.
    let wire = original(&payload, Some(&[40]));
    let size_line = wire.windows(4).position(|w| w == b"28\r\n").unwrap();
    assert_eq!(
        cut_of(&wire[..size_line + 1]),
        Err(NotResumable::InsideFraming)
    );
    // A reply that ended in pieces none of which was final: the primary and backup disagree.
    assert_eq!(cut_of(&wire), Err(NotResumable::Ended));
    let garbage = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
    assert!(matches!(cut_of(garbage), Err(NotResumable::Framing(_))));
}

#[test]
fn a_changed_or_refused_answer_is_an_error_never_spliced() {
    let payload: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    let wire = original(&payload, None);
    let cut = cut_of(&wire[..wire.len() - 50]).unwrap();
    assert_eq!(cut.payload_sent, 150);
    assert_eq!(cut.framing, CutFraming::Length { remaining: 50 });

    let changed = reply(
        "HTTP/1.1 200 OK\r\nETag: \"v2\"\r\nAccept-Ranges: bytes\r\n",
        &payload,
        None,
    );
    assert_eq!(
        continue_with(&cut, &changed, 0),
        Err(ContinuationError::ChangedValidator)
    );
    let weak_206 = reply(
        "HTTP/1.1 206 Partial Content\r\nETag: W/\"v1-abc\"\r\nContent-Range: bytes 150-199/200\r\n",
        &payload[150..],
        None,
    );
    assert_eq!(
        continue_with(&cut, &weak_206, 0),
        Err(ContinuationError::ChangedValidator)
    );
    let wrong_start = reply(
        &format!(
            "HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\nContent-Range: bytes 100-199/200\r\n"
        ),
        &payload[100..],
        None,
    );
    assert!(matches!(
        continue_with(&cut, &wrong_start, 0),
        Err(ContinuationError::WrongRange { first: 150, .. })
    ));
    let grown = reply(
        &format!(
            "HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\nContent-Range: bytes 150-299/300\r\n"
        ),
        &[0u8; 150],
        None,
    );
    assert!(matches!(
        continue_with(&cut, &grown, 0),
        Err(ContinuationError::WrongRange { .. })
    ));
    // A range whose end does not fit in 64 bits is refused, never computed with.
    let endless = reply(
        &format!(
            "HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\nContent-Range: bytes \
             150-18446744073709551615/*\r\n"
        ),
        &payload[150..],
        None,
    );
    assert!(matches!(
        continue_with(&cut, &endless, 0),
        Err(ContinuationError::WrongRange { first: 150, .. })
    ));
    let precondition = reply("HTTP/1.1 412 Precondition Failed\r\n", b"", None);
    assert_eq!(
        continue_with(&cut, &precondition, 0),
        Err(ContinuationError::Refused(412))
    );
    // A 416 while the client still lacks bytes is a refusal, not the end.
    let unsatisfiable = reply(
        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */200\r\n",
        b"",
        None,
    );
    assert_eq!(
        continue_with(&cut, &unsatisfiable, 0),
        Err(ContinuationError::Refused(416))
    );
    // A chunked 206 that ends short, or runs long.
    let short = reply(
        &format!(
            "HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\nContent-Range: bytes 150-199/200\r\n"
        ),
        &payload[150..190],
        Some(&[16]),
    );
    assert_eq!(
        continue_with(&cut, &short, 0),
        Err(ContinuationError::Short { missing: 10 })
    );
    let long = reply(
        &format!(
            "HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\nContent-Range: bytes 150-199/200\r\n"
        ),
        &[7u8; 60],
        Some(&[16]),
    );
    assert_eq!(continue_with(&cut, &long, 0), Err(ContinuationError::Long));
}

#[test]
fn a_chunked_cut_continues_the_current_chunk_then_new_ones() {
    let payload = b"0123456789abcdefghij".to_vec();
    let wire = original(&payload, Some(&[8]));
    // Cut 3 bytes into the second chunk: "8\r\n01234567\r\n8\r\n89a".
    let body = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let cut_at = body + "8\r\n01234567\r\n8\r\n89a".len();
    let cut = cut_of(&wire[..cut_at]).unwrap();
    assert_eq!(cut.payload_sent, 11);
    assert_eq!(
        cut.framing,
        CutFraming::Chunked {
            remaining: 5,
            crlf_owed: true
        }
    );
    let answer = reply(
        &format!(
            "HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\nContent-Range: bytes 11-19/20\r\n"
        ),
        &payload[11..],
        None,
    );
    let rest = continue_with(&cut, &answer, 7).unwrap();
    assert_eq!(rest, b"bcdef\r\n4\r\nghij\r\n0\r\n\r\n".to_vec());
}
