//! Fuzz targets: each takes arbitrary bytes, drives one of the decoders that read what peers,
//! clients, servers and operators send, and panics only on a bug: a decoder that panics, or a
//! property of its output that does not hold.
//!
//! The same functions run in two places. `fuzz/` (outside the workspace: libFuzzer needs a C++
//! compiler) wraps each in a coverage-guided libFuzzer binary built on the stable toolchain
//! (`fuzz/run`, see the README). `tests/corpus.rs` replays the committed corpus through them
//! and mutates it for a short while, so every `cargo test` is a short fuzz run.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use steadfast_core::active_wire::{self, ActiveFrameReader};
use steadfast_core::heartbeat_wire::{self, AuthKey};
use steadfast_core::http::Http1;
use steadfast_core::http::{
    ContentRange, EntityTag, FramingLimits, ReplyEvent, RequestEvent, RequestFramer, ResponseFramer,
};
use steadfast_core::image::{parse_client_frame, ConnectionTable, TableLimits};
use steadfast_core::relay_wire;
use steadfast_core::replication_wire::{self, FrameReader};
use steadfast_core::resp::{Direction, RespFramer, RespLimits};
use steadfast_core::stream_framer::StreamFramer;

/// A fuzz target: any bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus directory and libFuzzer binary carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("heartbeat_frame", heartbeat_frame),
    ("replication_stream", replication_stream),
    ("http_requests", http_requests),
    ("http_replies", http_replies),
    ("http_fields", http_fields),
    ("client_frames", client_frames),
    ("config", config),
    ("resp_stream", resp_stream),
    ("relay_frame", relay_frame),
    ("active_link", active_link),
    ("reply_progress", reply_progress),
];

/// The group key of the heartbeat target.
const KEY: &[u8] = b"fuzzing key, 32 bytes or longer!";

/// A heartbeat frame whose MAC is right (appended here: a fuzzer cannot forge one, and the
/// body parser behind the MAC check is what a peer holding the key reaches). A frame that
/// decodes encodes again to one that decodes to the same envelope.
pub fn heartbeat_frame(data: &[u8]) {
    let key = AuthKey::new(KEY).expect("a long enough key");
    let mut frame = data.to_vec();
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).expect("HMAC takes any key");
    mac.update(data);
    frame.extend_from_slice(&mac.finalize().into_bytes());
    let _ = heartbeat_wire::decode(data, &key);
    if let Ok(envelope) = heartbeat_wire::decode(&frame, &key) {
        let again = heartbeat_wire::encode(&envelope, &key);
        assert_eq!(
            heartbeat_wire::decode(&again, &key).as_ref(),
            Ok(&envelope),
            "a decoded heartbeat encodes to itself"
        );
    }
}

/// `data` cut into pieces: each piece's length is the byte before it (0 taken as 1), so the
/// fuzzer chooses where a stream breaks between reads.
fn pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len.max(1)).min(tail.len());
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    out
}

/// A link-relay frame whose MAC is right (appended here, as for heartbeats). A frame that
/// decodes encodes again to the same bytes: its encoder refuses exactly what its decoder
/// refuses.
pub fn relay_frame(data: &[u8]) {
    let key = AuthKey::new(KEY).expect("a long enough key");
    let mut frame = data.to_vec();
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).expect("HMAC takes any key");
    mac.update(data);
    frame.extend_from_slice(&mac.finalize().into_bytes());
    let _ = relay_wire::decode(data, &key);
    if let Ok(decoded) = relay_wire::decode(&frame, &key) {
        let again = relay_wire::encode(&decoded, &key).expect("a decoded frame encodes");
        assert_eq!(again, frame, "a decoded relay frame encodes to its bytes");
    }
}

/// An active link's stream read in pieces; every frame decoded encodes again to itself.
pub fn active_link(data: &[u8]) {
    let mut reader = ActiveFrameReader::new();
    for piece in pieces(data) {
        reader.push(piece);
        while let Ok(Some((epoch, frame))) = reader.next_frame() {
            let mut bytes = Vec::new();
            active_wire::encode(&frame, epoch, &mut bytes).expect("a decoded frame encodes");
            let mut again = ActiveFrameReader::new();
            again.push(&bytes);
            assert_eq!(
                again.next_frame(),
                Ok(Some((epoch, frame))),
                "a decoded active link frame encodes to itself"
            );
        }
    }
}

/// The progress of an HTTP reply handed over in its middle (the bytes an `Adopt` frame carries
/// for the backup's framer): one that decodes encodes to a progress that decodes the same.
pub fn reply_progress(data: &[u8]) {
    if let Ok(progress) = Http1::decode_progress(data) {
        let mut bytes = Vec::new();
        Http1::encode_progress(&progress, &mut bytes);
        assert_eq!(
            Http1::decode_progress(&bytes),
            Ok(progress),
            "a decoded reply progress encodes to itself"
        );
    }
}

/// The replication stream read in pieces; every frame decoded encodes again to itself.
pub fn replication_stream(data: &[u8]) {
    let mut reader = FrameReader::new();
    for piece in pieces(data) {
        reader.push(piece);
        while let Ok(Some((epoch, frame))) = reader.next_frame() {
            let mut bytes = Vec::new();
            replication_wire::encode(&frame, epoch, &mut bytes);
            let mut again = FrameReader::new();
            again.push(&bytes);
            assert_eq!(
                again.next_frame(),
                Ok(Some((epoch, frame))),
                "a decoded frame encodes to itself"
            );
        }
    }
}

/// The outcome of framing a stream: the requests' or replies' heads and whole extents, and
/// whether the stream framed cleanly. The same whatever the pieces the stream came in.
#[derive(Debug, PartialEq)]
struct Framed {
    heads: Vec<String>,
    ends: Vec<(u64, std::ops::Range<u64>)>,
    failed: bool,
}

/// What one framer event says of the messages: a head (its Debug form), a message's end, or
/// nothing the comparison needs.
enum Seen {
    Head(String),
    End(u64, std::ops::Range<u64>),
    Other,
}

/// Feeds `stream`'s pieces to a framer (`feed` and `finish` say whether it accepted them) and
/// gathers what its events say.
fn frame<E>(
    stream: &[&[u8]],
    mut feed: impl FnMut(&[u8], &mut Vec<E>) -> bool,
    finish: impl FnOnce(&mut Vec<E>) -> bool,
    seen: impl Fn(E) -> Seen,
) -> Framed {
    let mut events = Vec::new();
    let mut failed = !stream.iter().all(|piece| feed(piece, &mut events));
    failed |= !failed && !finish(&mut events);
    let mut framed = Framed {
        heads: Vec::new(),
        ends: Vec::new(),
        failed,
    };
    for event in events {
        match seen(event) {
            Seen::Head(head) => framed.heads.push(head),
            Seen::End(index, range) => framed.ends.push((index, range)),
            Seen::Other => {}
        }
    }
    framed
}

fn frame_requests(stream: &[&[u8]]) -> Framed {
    let framer = std::cell::RefCell::new(RequestFramer::new(FramingLimits::default()));
    frame(
        stream,
        |piece, events| framer.borrow_mut().feed(piece, events).is_ok(),
        |events| framer.borrow_mut().finish(events).is_ok(),
        |event| match event {
            RequestEvent::Head(head) => Seen::Head(format!("{head:?}")),
            RequestEvent::End { index, range } => Seen::End(index, range),
            _ => Seen::Other,
        },
    )
}

/// A client's byte stream: framing it in the fuzzer's pieces or whole gives the same requests
/// with the same extents, and consecutive requests tile the stream.
pub fn http_requests(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let at = usize::from(cut) * stream.len() / 256;
    let whole = frame_requests(&[stream]);
    let split = frame_requests(&[&stream[..at], &stream[at..]]);
    assert_eq!(
        whole, split,
        "framing does not depend on where the stream was cut"
    );
    for pair in whole.ends.windows(2) {
        assert_eq!(pair[0].1.end, pair[1].1.start, "requests tile the stream");
        assert_eq!(pair[0].0 + 1, pair[1].0, "requests are numbered in order");
    }
}

fn frame_replies(methods: &[&str], stream: &[&[u8]]) -> Framed {
    let mut framer = ResponseFramer::new(FramingLimits::default());
    for method in methods {
        framer.expect_reply(method);
    }
    let framer = std::cell::RefCell::new(framer);
    frame(
        stream,
        |piece, events| framer.borrow_mut().feed(piece, events).is_ok(),
        |events| framer.borrow_mut().finish(events).is_ok(),
        |event| match event {
            ReplyEvent::Head(head) => Seen::Head(format!("{head:?}")),
            ReplyEvent::End { index, range, .. } => Seen::End(index, range),
            _ => Seen::Other,
        },
    )
}

/// A server's byte stream answering up to four requests (their methods chosen by the first
/// byte): the same replies whole or cut, tiling the stream.
pub fn http_replies(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Some((&cut, stream)) = rest.split_first() else {
        return;
    };
    let methods: Vec<&str> = (0..(1 + choice % 4))
        .map(|i| match (u32::from(choice) >> (2 + 2 * i)) & 3 {
            0 => "GET",
            1 => "HEAD",
            2 => "POST",
            _ => "CONNECT",
        })
        .collect();
    let at = usize::from(cut) * stream.len() / 256;
    let whole = frame_replies(&methods, &[stream]);
    let split = frame_replies(&methods, &[&stream[..at], &stream[at..]]);
    assert_eq!(
        whole, split,
        "framing does not depend on where the stream was cut"
    );
    for pair in whole.ends.windows(2) {
        assert_eq!(pair[0].1.end, pair[1].1.start, "replies tile the stream");
    }
}

/// The fields a long reply is resumed by: `ETag`, `Content-Range` (satisfied or not).
pub fn http_fields(data: &[u8]) {
    if let Some(tag) = EntityTag::parse(data) {
        let _ = tag.is_strong();
    }
    if let Some(range) = ContentRange::parse(data) {
        assert!(range.first <= range.last, "a parsed range is not empty");
        if let Some(complete) = range.complete_length {
            assert!(
                range.last < complete,
                "a parsed range lies inside its length"
            );
        }
        let _ = range.len();
    }
    let _ = ContentRange::parse_unsatisfied(data);
}

/// Writes a right IPv4 header checksum into an Ethernet frame that has room for the header
/// its IHL names (a fuzzer seldom finds one; the TCP and image logic lie behind it).
fn fix_ipv4_checksum(frame: &mut [u8]) {
    const IP: usize = 14;
    let Some(&version_ihl) = frame.get(IP) else {
        return;
    };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if header_len < 20 || frame.len() < IP + header_len {
        return;
    }
    frame[IP + 10..IP + 12].fill(0);
    let mut sum: u32 = frame[IP..IP + header_len]
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[IP + 10..IP + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// Frames as the backup's logger sees them (each prefixed by a 2-byte length; IPv4 header
/// checksums made right), parsed and logged into a small connection table in order.
pub fn client_frames(data: &[u8]) {
    let mut table = ConnectionTable::new(TableLimits {
        max_connections: 8,
        max_half_open: 4,
        max_half_open_per_source: 2,
        max_bytes_held: 1 << 16,
        ..TableLimits::default()
    });
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let mut frame = rest[2..2 + len].to_vec();
        rest = &rest[2 + len..];
        fix_ipv4_checksum(&mut frame);
        if let Ok(segment) = parse_client_frame(&frame) {
            let payload = segment.payload_in(&frame).unwrap_or(&[]);
            let _ = table.ingest(&segment, payload);
        }
    }
    let _ = table.bytes_held();
}

/// A configuration file.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ =
        steadfast_core::config::parse(&text, "fuzz.toml", &|_| true, Path::new("/etc/steadfast"));
}

/// A RESP stream, requests when the first byte is even, replies when odd, also fed in pieces
/// of a size the first byte sets: both ways give the same messages and the same verdict, and the
/// messages tile the stream.
pub fn resp_stream(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let direction = if selector % 2 == 0 {
        Direction::Requests
    } else {
        Direction::Replies
    };
    let frame = |cut: usize| {
        let mut framer = RespFramer::new(direction, RespLimits::default());
        let mut messages = Vec::new();
        let verdict = stream
            .chunks(cut)
            .try_for_each(|piece| framer.feed(piece, &mut messages));
        (messages, verdict)
    };
    let whole = frame(stream.len().max(1));
    let cut = frame(1 + usize::from(selector / 2));
    assert_eq!(
        whole, cut,
        "the same messages and verdict however the stream is cut"
    );
    let mut start = 0;
    for message in &whole.0 {
        assert_eq!(message.start, start, "messages tile the stream");
        assert!(message.end > message.start && message.end <= stream.len() as u64);
        start = message.end;
    }
}
