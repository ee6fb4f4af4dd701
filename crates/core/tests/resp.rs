//! RESP framing: every message of a stream is found whatever the cuts, requests name their
//! command, and malformed or oversized input is refused with where and why, never a panic.

use proptest::prelude::*;
use steadfast_core::resp::{
    Direction, RespError, RespErrorKind, RespFramer, RespLimits, RespMessage,
};

/// A RESP3 value, as a server sends it.
#[derive(Debug, Clone)]
enum Value {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    NullBulk,
    NullArray,
    Null,
    Boolean(bool),
    Double(f64),
    BigNumber(String),
    BulkError(Vec<u8>),
    Verbatim(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Set(Vec<Value>),
    Push(Vec<Value>),
    /// An attribute, then the value it annotates.
    Attributed(Vec<(Value, Value)>, Box<Value>),
}

fn encode(value: &Value, out: &mut Vec<u8>) {
    let bulk = |kind: char, bytes: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(format!("{kind}{}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    };
    let aggregate = |kind: char, items: &[Value], out: &mut Vec<u8>| {
        out.extend_from_slice(format!("{kind}{}\r\n", items.len()).as_bytes());
        for item in items {
            encode(item, out);
        }
    };
    let pairs = |kind: char, items: &[(Value, Value)], out: &mut Vec<u8>| {
        out.extend_from_slice(format!("{kind}{}\r\n", items.len()).as_bytes());
        for (k, v) in items {
            encode(k, out);
            encode(v, out);
        }
    };
    match value {
        Value::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        Value::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
        Value::Integer(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
        Value::Bulk(b) => bulk('$', b, out),
        Value::NullBulk => out.extend_from_slice(b"$-1\r\n"),
        Value::NullArray => out.extend_from_slice(b"*-1\r\n"),
        Value::Null => out.extend_from_slice(b"_\r\n"),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Value::Double(d) => out.extend_from_slice(format!(",{d}\r\n").as_bytes()),
        Value::BigNumber(n) => out.extend_from_slice(format!("({n}\r\n").as_bytes()),
        Value::BulkError(b) => bulk('!', b, out),
        Value::Verbatim(b) => bulk('=', &[b"txt:".as_slice(), b].concat(), out),
        Value::Array(items) => aggregate('*', items, out),
        Value::Map(items) => pairs('%', items, out),
        Value::Set(items) => aggregate('~', items, out),
        Value::Push(items) => aggregate('>', items, out),
        Value::Attributed(attributes, value) => {
            pairs('|', attributes, out);
            encode(value, out);
        }
    }
}

fn line_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 :._-]{0,20}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes, CR and LF included: a bulk string is counted, not scanned.
    proptest::collection::vec(any::<u8>(), 0..40)
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        line_text().prop_map(Value::Simple),
        line_text().prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        bytes().prop_map(Value::Bulk),
        Just(Value::NullBulk),
        Just(Value::NullArray),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Boolean),
        (-1e9f64..1e9).prop_map(Value::Double),
        "-?[0-9]{1,40}".prop_map(Value::BigNumber),
        bytes().prop_map(Value::BulkError),
        bytes().prop_map(Value::Verbatim),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        let pairs = proptest::collection::vec((inner.clone(), inner.clone()), 0..3);
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            pairs.clone().prop_map(Value::Map),
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Set),
            proptest::collection::vec(inner.clone(), 1..5).prop_map(Value::Push),
            (pairs, inner).prop_map(|(a, v)| Value::Attributed(a, Box::new(v))),
        ]
    })
}

/// A request: an array of bulk strings, or an inline command.
fn request() -> impl Strategy<Value = (Vec<u8>, String, u64)> {
    let name = "[a-zA-Z]{1,12}";
    prop_oneof![
        (name, proptest::collection::vec(bytes(), 0..4)).prop_map(|(name, args)| {
            let mut out =
                format!("*{}\r\n${}\r\n{name}\r\n", args.len() + 1, name.len()).into_bytes();
            for arg in &args {
                out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                out.extend_from_slice(arg);
                out.extend_from_slice(b"\r\n");
            }
            (out, name.to_ascii_uppercase(), args.len() as u64 + 1)
        }),
        (
            name,
            proptest::collection::vec("[a-z0-9]{1,8}", 0..4),
            any::<bool>()
        )
            .prop_map(|(name, args, crlf)| {
                let mut line = std::iter::once(name.clone())
                    .chain(args.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(" ");
                line.push_str(if crlf { "\r\n" } else { "\n" });
                (
                    line.into_bytes(),
                    name.to_ascii_uppercase(),
                    args.len() as u64 + 1,
                )
            }),
    ]
}

/// Every message of `stream` fed in pieces of `cut` bytes, and the error if any.
fn frame(direction: Direction, stream: &[u8], cut: usize) -> (Vec<RespMessage>, Option<RespError>) {
    let mut framer = RespFramer::new(direction, RespLimits::default());
    let mut messages = Vec::new();
    for piece in stream.chunks(cut.max(1)) {
        if let Err(e) = framer.feed(piece, &mut messages) {
            return (messages, Some(e));
        }
    }
    (messages, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn every_reply_is_found_however_the_stream_is_cut(
        values in proptest::collection::vec(value(), 1..6),
        cut in 1usize..64,
    ) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for value in &values {
            encode(value, &mut stream);
            ends.push(stream.len() as u64);
        }
        let (messages, error) = frame(Direction::Replies, &stream, cut);
        prop_assert_eq!(error, None);
        let found: Vec<u64> = messages.iter().map(|m| m.end).collect();
        prop_assert_eq!(found, ends);
        // The messages tile the stream.
        let mut start = 0;
        for m in &messages {
            prop_assert_eq!(m.start, start);
            start = m.end;
        }
    }

    #[test]
    fn every_request_names_its_command_however_the_stream_is_cut(
        requests in proptest::collection::vec(request(), 1..6),
        cut in 1usize..32,
    ) {
        let stream: Vec<u8> = requests.iter().flat_map(|(bytes, _, _)| bytes.clone()).collect();
        let (messages, error) = frame(Direction::Requests, &stream, cut);
        prop_assert_eq!(error, None);
        prop_assert_eq!(messages.len(), requests.len());
        let mut end = 0;
        for (m, (bytes, name, words)) in messages.iter().zip(&requests) {
            end += bytes.len() as u64;
            prop_assert_eq!(m.end, end);
            prop_assert_eq!(m.command.as_deref(), Some(name.as_str()));
            prop_assert_eq!(m.words, *words);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_an_error_sticks(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        cut in 1usize..16,
        requests in any::<bool>(),
    ) {
        let direction = if requests { Direction::Requests } else { Direction::Replies };
        let mut framer = RespFramer::new(direction, RespLimits::default());
        let mut messages = Vec::new();
        for piece in bytes.chunks(cut) {
            if let Err(e) = framer.feed(piece, &mut messages) {
                prop_assert_eq!(framer.feed(b"+OK\r\n", &mut messages), Err(e));
                break;
            }
        }
        for m in &messages {
            prop_assert!(m.start < m.end && m.end <= bytes.len() as u64);
        }
    }
}

fn error_of(direction: Direction, stream: &[u8]) -> RespErrorKind {
    frame(direction, stream, stream.len())
        .1
        .unwrap_or_else(|| panic!("{:?} should be refused", String::from_utf8_lossy(stream)))
        .kind
}

#[test]
fn malformed_replies_are_refused_with_what_is_wrong() {
    use RespErrorKind::*;
    let cases: Vec<(&[u8], RespErrorKind)> = vec![
        (b"?x\r\n", UnknownType(b'?')),
        (b"+OK\n", BareLineFeed),
        (
            b":12a\r\n",
            BadScalar {
                what: "integer",
                value: "12a".into(),
            },
        ),
        (
            b"#x\r\n",
            BadScalar {
                what: "boolean",
                value: "x".into(),
            },
        ),
        (
            b"_x\r\n",
            BadScalar {
                what: "null",
                value: "x".into(),
            },
        ),
        (
            b",abc\r\n",
            BadScalar {
                what: "double",
                value: "abc".into(),
            },
        ),
        (
            b"(1.5\r\n",
            BadScalar {
                what: "big number",
                value: "1.5".into(),
            },
        ),
        (b"$x\r\n", BadLength("x".into())),
        (b"$-2\r\n", BadLength("-2".into())),
        (b"$3\r\nabcXY", MissingCrlf),
        (b"$?\r\n", Streamed('$')),
        (b"*?\r\n", Streamed('*')),
        (
            b"$600000000\r\n",
            BulkTooLong {
                len: 600_000_000,
                limit: 512 * 1024 * 1024,
            },
        ),
    ];
    for (stream, kind) in cases {
        assert_eq!(
            error_of(Direction::Replies, stream),
            kind,
            "{:?}",
            String::from_utf8_lossy(stream)
        );
    }
    let deep = "*1\r\n".repeat(129) + ":1\r\n";
    assert_eq!(
        error_of(Direction::Replies, deep.as_bytes()),
        TooDeep { limit: 128 }
    );
    let long = format!("+{}\r\n", "a".repeat(64 * 1024 + 1));
    assert_eq!(
        error_of(Direction::Replies, long.as_bytes()),
        LineTooLong { limit: 64 * 1024 }
    );
    // The offset is the bad value's first byte, however the input was cut.
    for cut in 1..9 {
        let error = frame(Direction::Replies, b"+OK\r\n:x\r\n", cut).1.unwrap();
        assert_eq!(error.offset, 5, "where: {error}");
        assert!(error.to_string().contains("offset 5"), "{error}");
    }
}

#[test]
fn requests_are_arrays_of_bulk_strings_or_inline_lines() {
    use RespErrorKind::*;
    assert!(matches!(
        error_of(Direction::Requests, b"*1\r\n:1\r\n"),
        NotACommand(_)
    ));
    assert!(matches!(
        error_of(Direction::Requests, b"*1\r\n*1\r\n$1\r\na\r\n"),
        NotACommand(_)
    ));
    assert!(matches!(
        error_of(Direction::Requests, b"*1\r\n$-1\r\n"),
        BadLength(_)
    ));
    // As redis-server does, the two bytes after a request's bulk string are skipped unread: a
    // length one short frames `BOGU`, then a blank inline line (`\n`), then the next request.
    // Checked against redis-server 7: it answers an error for BOGU, nothing for the blank line,
    // then PONG.
    let (messages, error) = frame(
        Direction::Requests,
        b"*1\r\n$4\r\nBOGUS\r\n*1\r\n$4\r\nPING\r\n",
        3,
    );
    assert_eq!(error, None);
    let named: Vec<(Option<&str>, u64)> = messages
        .iter()
        .map(|m| (m.command.as_deref(), m.end))
        .collect();
    assert_eq!(
        named,
        vec![(Some("BOGU"), 14), (Some(""), 15), (Some("PING"), 29)]
    );
    // Inline: ended by LF alone or CRLF; a blank line names no command (redis-server skips it).
    let (messages, error) = frame(Direction::Requests, b"ping\n\r\nset k v\r\n*0\r\n", 100);
    assert_eq!(error, None);
    let named: Vec<(Option<&str>, u64, u64)> = messages
        .iter()
        .map(|m| (m.command.as_deref(), m.words, m.end))
        .collect();
    assert_eq!(
        named,
        vec![
            (Some("PING"), 1, 5),
            (Some(""), 0, 7),
            (Some("SET"), 3, 16),
            (Some(""), 0, 20)
        ]
    );
    // A first word longer than any command is framed, unnamed.
    let long = format!("*1\r\n${}\r\n{}\r\n", 70, "x".repeat(70));
    let (messages, _) = frame(Direction::Requests, long.as_bytes(), 7);
    assert_eq!(messages[0].command, None);
}

#[test]
fn an_attribute_belongs_to_the_reply_after_it() {
    let stream = b"|1\r\n+key\r\n+val\r\n:7\r\n|0\r\n+OK\r\n*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n";
    let (messages, error) = frame(Direction::Replies, stream, 1);
    assert_eq!(error, None);
    let ends: Vec<u64> = messages.iter().map(|m| m.end).collect();
    assert_eq!(ends, vec![20, 29, stream.len() as u64]);
    let starts: Vec<u64> = messages.iter().map(|m| m.start).collect();
    assert_eq!(starts, vec![0, 20, 29]);
}
