//! The table of Redis commands from a server's `COMMAND` reply, and the routing of requests by
//! it: the value decoder refuses malformed input with where and why and never panics, a reply
//! decodes back to the commands it was built from in RESP2 and RESP3 alike, and the reply of a
//! real redis-server 7 (fixtures, and a live server in the interop tier) classifies known
//! commands as active mode needs.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use steadfast_core::redis_commands::{
    Classification, CommandFlag, CommandInfo, CommandTable, CommandTableError,
    NonDeterminismSource, RefusalReason,
};
use steadfast_core::resp_value::{
    decode_value, decode_whole_value, DecodeError, DecodeErrorKind, RespData, ValueLimits,
};

mod redis_support;

const FIXTURE_RESP2: &[u8] = include_bytes!("data/redis7-command-resp2.bin");
const FIXTURE_RESP3: &[u8] = include_bytes!("data/redis7-command-resp3.bin");

// ---------------------------------------------------------------------------------------------
// A reply as a server would build it, encoded in either protocol.
// ---------------------------------------------------------------------------------------------

/// A value of a `COMMAND` reply, before the protocol decides its encoding.
#[derive(Debug, Clone)]
enum Shape {
    /// A string; `simple` picks `+…` over `$n…` (servers use both in the same reply).
    Text {
        text: String,
        simple: bool,
    },
    Integer(i64),
    /// An array in RESP2; a set in RESP3 when `set`.
    List {
        items: Vec<Shape>,
        set: bool,
    },
    /// A map in RESP3; a flat array of keys and values in RESP2.
    Map(Vec<(Shape, Shape)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Resp2,
    Resp3,
}

fn encode(shape: &Shape, protocol: Protocol, out: &mut Vec<u8>) {
    match shape {
        Shape::Text { text, simple: true } => {
            out.extend_from_slice(format!("+{text}\r\n").as_bytes())
        }
        Shape::Text {
            text,
            simple: false,
        } => out.extend_from_slice(format!("${}\r\n{text}\r\n", text.len()).as_bytes()),
        Shape::Integer(value) => out.extend_from_slice(format!(":{value}\r\n").as_bytes()),
        Shape::List { items, set } => {
            let kind = if *set && protocol == Protocol::Resp3 {
                '~'
            } else {
                '*'
            };
            out.extend_from_slice(format!("{kind}{}\r\n", items.len()).as_bytes());
            for item in items {
                encode(item, protocol, out);
            }
        }
        Shape::Map(pairs) => {
            match protocol {
                Protocol::Resp2 => {
                    out.extend_from_slice(format!("*{}\r\n", pairs.len() * 2).as_bytes())
                }
                Protocol::Resp3 => {
                    out.extend_from_slice(format!("%{}\r\n", pairs.len()).as_bytes())
                }
            }
            for (key, value) in pairs {
                encode(key, protocol, out);
                encode(value, protocol, out);
            }
        }
    }
}

fn encoded(shape: &Shape, protocol: Protocol) -> Vec<u8> {
    let mut out = Vec::new();
    encode(shape, protocol, &mut out);
    out
}

fn text(text: &str, simple: bool) -> Shape {
    Shape::Text {
        text: text.to_string(),
        simple,
    }
}

fn text_set(items: &[String], simple: bool) -> Shape {
    Shape::List {
        items: items.iter().map(|item| text(item, simple)).collect(),
        set: true,
    }
}

/// A command entry as redis-server 7 lays it out.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    arity: i64,
    flags: Vec<String>,
    first_key: i64,
    last_key: i64,
    key_step: i64,
    acl_categories: Vec<String>,
    tips: Vec<String>,
    key_specs: Vec<Shape>,
    subcommands: Vec<Entry>,
    /// Whether the strings of this entry are sent simple or bulk.
    simple_strings: bool,
}

impl Entry {
    fn shape(&self) -> Shape {
        Shape::List {
            items: vec![
                text(&self.name, self.simple_strings),
                Shape::Integer(self.arity),
                text_set(&self.flags, self.simple_strings),
                Shape::Integer(self.first_key),
                Shape::Integer(self.last_key),
                Shape::Integer(self.key_step),
                text_set(&self.acl_categories, self.simple_strings),
                text_set(&self.tips, self.simple_strings),
                Shape::List {
                    items: self.key_specs.clone(),
                    set: false,
                },
                Shape::List {
                    items: self.subcommands.iter().map(Entry::shape).collect(),
                    set: false,
                },
            ],
            set: false,
        }
    }

    /// What the table must hold for this entry.
    fn expected(&self) -> CommandInfo {
        CommandInfo {
            name: self.name.clone(),
            arity: self.arity,
            flags: self
                .flags
                .iter()
                .map(|f| CommandFlag::from_name(f))
                .collect(),
            first_key: self.first_key,
            last_key: self.last_key,
            key_step: self.key_step,
            acl_categories: self.acl_categories.clone(),
            tips: self.tips.clone(),
            subcommands: self.subcommands.iter().map(Entry::expected).collect(),
        }
    }
}

fn reply(entries: &[Entry]) -> Shape {
    Shape::List {
        items: entries.iter().map(Entry::shape).collect(),
        set: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn flag_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "write",
            "readonly",
            "denyoom",
            "admin",
            "pubsub",
            "noscript",
            "blocking",
            "loading",
            "stale",
            "skip_monitor",
            "skip_slowlog",
            "fast",
            "no_auth",
            "may_replicate",
            "no_multi",
            "movablekeys",
            "allow_busy",
            "no_mandatory_keys",
            "asking",
            "random",
        ])
        .prop_map(str::to_string),
        // Flags a future server may add.
        "[a-z][a-z_]{0,15}",
    ]
}

fn tip() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "nondeterministic_output",
            "nondeterministic_output_order",
            "request_policy:all_shards",
            "response_policy:agg_sum",
        ])
        .prop_map(str::to_string),
        "[a-z_:]{1,24}",
    ]
}

/// A key spec: nested maps, lists, strings and integers, as a server might send them.
fn key_spec() -> impl Strategy<Value = Shape> {
    let leaf = prop_oneof![
        ("[a-zA-Z_]{0,12}", any::<bool>()).prop_map(|(t, simple)| text(&t, simple)),
        any::<i64>().prop_map(Shape::Integer),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..4), any::<bool>())
                .prop_map(|(items, set)| Shape::List { items, set }),
            prop::collection::vec(("[a-z_]{1,10}".prop_map(|k| text(&k, false)), inner), 0..4)
                .prop_map(Shape::Map),
        ]
    })
}

/// An entry's fields after its name: arity, flags, key positions, ACL categories, tips, key
/// specs, and whether its strings are simple.
type EntryFields = (
    i64,
    Vec<String>,
    (i64, i64, i64),
    Vec<String>,
    Vec<String>,
    Vec<Shape>,
    bool,
);

fn entry_fields() -> impl Strategy<Value = EntryFields> {
    (
        -8i64..8,
        prop::collection::vec(flag_name(), 0..6),
        (-3i64..4, -3i64..4, 0i64..3),
        prop::collection::vec("@[a-z]{1,10}", 0..4),
        prop::collection::vec(tip(), 0..3),
        prop::collection::vec(key_spec(), 0..3),
        any::<bool>(),
    )
}

fn entry_from(
    name: String,
    (arity, flags, (first_key, last_key, key_step), acl_categories, tips, key_specs, simple): EntryFields,
    subcommands: Vec<Entry>,
) -> Entry {
    Entry {
        name,
        arity,
        flags,
        first_key,
        last_key,
        key_step,
        acl_categories,
        tips,
        key_specs,
        subcommands,
        simple_strings: simple,
    }
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        "[a-z][a-z0-9_-]{0,15}",
        entry_fields(),
        prop::collection::btree_map("[a-z][a-z-]{0,10}", entry_fields(), 0..3),
    )
        .prop_map(|(name, fields, subs)| {
            let subcommands = subs
                .into_iter()
                .map(|(sub, fields)| entry_from(format!("{name}|{sub}"), fields, Vec::new()))
                .collect();
            entry_from(name, fields, subcommands)
        })
}

/// Entries with distinct names, as one server's reply.
fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec(entry(), 0..10).prop_map(|entries| {
        let mut by_name = BTreeMap::new();
        for entry in entries {
            by_name.entry(entry.name.clone()).or_insert(entry);
        }
        by_name.into_values().collect()
    })
}

fn table_contents(table: &CommandTable) -> Vec<CommandInfo> {
    table.iter().cloned().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the bytes, decoding returns a value or an error.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_value(&bytes, ValueLimits::default());
        let _ = CommandTable::from_reply(&bytes);
    }

    /// Bytes that look like RESP (type bytes, digits, CRLF) reach deeper paths than noise.
    #[test]
    fn resp_like_bytes_never_panic(
        bytes in prop::collection::vec(
            prop::sample::select(b"+-:$*_#,(!=%~|>?0123456789-\r\ntxa".to_vec()),
            0..256,
        )
    ) {
        let _ = decode_value(&bytes, ValueLimits::default());
        let _ = CommandTable::from_reply(&bytes);
    }

    /// A reply built from random entries decodes back to them, in both protocols.
    #[test]
    fn random_entries_decode_back(entries in entries()) {
        let shape = reply(&entries);
        let expected: Vec<CommandInfo> = entries.iter().map(Entry::expected).collect();
        for protocol in [Protocol::Resp2, Protocol::Resp3] {
            let table = CommandTable::from_reply(&encoded(&shape, protocol))
                .map_err(|e| TestCaseError::fail(format!("{protocol:?}: {e}")))?;
            prop_assert_eq!(table_contents(&table), expected.clone(), "{:?}", protocol);
            for entry in &entries {
                prop_assert!(table.get(&entry.name.to_ascii_uppercase()).is_some());
                for sub in &entry.subcommands {
                    prop_assert_eq!(table.get(&sub.name).map(|s| &s.name), Some(&sub.name));
                }
            }
        }
    }

    /// RESP2 and RESP3 forms of one reply give the same table.
    #[test]
    fn resp2_and_resp3_decode_alike(entries in entries()) {
        let shape = reply(&entries);
        let resp2 = CommandTable::from_reply(&encoded(&shape, Protocol::Resp2));
        let resp3 = CommandTable::from_reply(&encoded(&shape, Protocol::Resp3));
        prop_assert!(resp2.is_ok());
        prop_assert_eq!(resp2, resp3);
    }

    /// Every proper prefix of a reply is truncated (what a socket reader waits on), whatever
    /// the cut; never a panic, never a shorter table.
    #[test]
    fn every_cut_is_truncated(entries in entries(), resp3 in any::<bool>(), cut in any::<prop::sample::Index>()) {
        let protocol = if resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
        let bytes = encoded(&reply(&entries), protocol);
        let cut = cut.index(bytes.len());
        match CommandTable::from_reply(&bytes[..cut]) {
            Err(CommandTableError::Decode(DecodeError { kind: DecodeErrorKind::Truncated, offset })) => {
                prop_assert!(offset <= cut);
            }
            other => prop_assert!(false, "cut at {} of {}: {:?}", cut, bytes.len(), other),
        }
    }

    /// A byte changed anywhere in a reply: an error or a table, never a panic.
    #[test]
    fn corrupted_reply_never_panics(entries in entries(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encoded(&reply(&entries), Protocol::Resp3);
        let at = at.index(bytes.len());
        bytes[at] = byte;
        let _ = CommandTable::from_reply(&bytes);
    }

    /// Classification is total: any name and argument against the real table gives an answer.
    #[test]
    fn classify_never_panics(
        command in prop::collection::vec(any::<u8>(), 0..80),
        argument in prop::option::of(prop::collection::vec(any::<u8>(), 0..80)),
    ) {
        let table = fixture_table(FIXTURE_RESP3);
        let _ = table.classify(&command, argument.as_deref());
    }
}

// ---------------------------------------------------------------------------------------------
// The value decoder
// ---------------------------------------------------------------------------------------------

fn decode(bytes: &[u8]) -> Result<RespData, DecodeError> {
    decode_whole_value(bytes, ValueLimits::default()).map(|value| value.data)
}

fn decode_error(bytes: &[u8]) -> (usize, DecodeErrorKind) {
    match decode_whole_value(bytes, ValueLimits::default()) {
        Err(DecodeError { offset, kind }) => (offset, kind),
        Ok(value) => panic!("{bytes:?} decoded to {value:?}"),
    }
}

#[test]
fn decodes_every_value_type() {
    use RespData::*;
    let cases: Vec<(&[u8], RespData)> = vec![
        (b"+OK\r\n", SimpleString(b"OK".to_vec())),
        (b"-ERR no\r\n", SimpleError(b"ERR no".to_vec())),
        (b":-42\r\n", Integer(-42)),
        (b"$5\r\nhe\r\no\r\n", BulkString(b"he\r\no".to_vec())),
        (b"$0\r\n\r\n", BulkString(Vec::new())),
        (b"$-1\r\n", Null),
        (b"*-1\r\n", Null),
        (b"_\r\n", Null),
        (b"#t\r\n", Boolean(true)),
        (b",1.5e3\r\n", Double(1500.0)),
        (b",-inf\r\n", Double(f64::NEG_INFINITY)),
        (
            b"(12345678901234567890\r\n",
            BigNumber("12345678901234567890".into()),
        ),
        (b"!3\r\nbad\r\n", BulkError(b"bad".to_vec())),
        (
            b"=8\r\ntxt:abcd\r\n",
            Verbatim {
                format: *b"txt",
                text: b"abcd".to_vec(),
            },
        ),
        (b"*0\r\n", Array(Vec::new())),
        (b"~0\r\n", Set(Vec::new())),
        (b"%0\r\n", Map(Vec::new())),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            decode(bytes),
            Ok(expected),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn aggregates_keep_offsets_and_drop_attributes() {
    let value = decode_whole_value(
        b"%1\r\n+k\r\n~2\r\n:1\r\n|1\r\n+a\r\n+b\r\n:2\r\n",
        ValueLimits::default(),
    )
    .expect("a map");
    let RespData::Map(pairs) = &value.data else {
        panic!("{value:?}");
    };
    let (key, set) = &pairs[0];
    assert_eq!(key.offset, 4);
    assert_eq!(set.offset, 8);
    let RespData::Set(items) = &set.data else {
        panic!("{set:?}");
    };
    assert_eq!(items[0].data, RespData::Integer(1));
    // The attribute `|1 a b` annotates `:2`, which is the set's second element.
    assert_eq!(items[1].data, RespData::Integer(2));
    assert_eq!(items.len(), 2);
}

#[test]
fn malformed_input_names_what_and_where() {
    use DecodeErrorKind::*;
    assert_eq!(decode_error(b"*2\r\n:1\r\n?x\r\n"), (8, UnknownType(b'?')));
    assert_eq!(decode_error(b"*1\r\n:1\n"), (4, BareLineFeed));
    assert_eq!(
        decode_error(b"*1\r\n:1x\r\n"),
        (
            4,
            BadScalar {
                what: "integer",
                value: "1x".into()
            }
        )
    );
    assert_eq!(decode_error(b"$-2\r\n"), (0, BadLength("-2".into())));
    assert_eq!(decode_error(b"*1\r\n$3\r\nabcd\r\n"), (4, MissingCrlf));
    assert_eq!(
        decode_error(b"=2\r\nab\r\n").1,
        BadScalar {
            what: "verbatim string",
            value: "ab".into()
        }
    );
    assert_eq!(
        decode_error(b"#x\r\n").1,
        BadScalar {
            what: "boolean",
            value: "x".into()
        }
    );
    assert_eq!(
        decode_error(b"_x\r\n").1,
        BadScalar {
            what: "null",
            value: "x".into()
        }
    );
    assert_eq!(decode_error(b"*?\r\n"), (0, Streamed('*')));
    assert_eq!(
        decode_error(b":1\r\n:2\r\n"),
        (4, TrailingBytes { count: 4 })
    );
    assert_eq!(decode_error(b"*3\r\n:1\r\n"), (8, Truncated));
    assert_eq!(decode_error(b""), (0, Truncated));
    assert_eq!(decode_error(b"$10\r\nabc"), (0, Truncated));
    assert_eq!(
        decode_error(b":99999999999999999999\r\n").1,
        BadScalar {
            what: "integer",
            value: "99999999999999999999".into()
        }
    );
}

#[test]
fn limits_bound_depth_size_and_lines() {
    use DecodeErrorKind::*;
    let limits = ValueLimits {
        max_depth: 3,
        max_elements: 4,
        max_bulk: 8,
        max_line: 16,
    };
    let error = |bytes: &[u8]| decode_value(bytes, limits).expect_err("over a limit");
    assert_eq!(
        error(b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"),
        DecodeError {
            offset: 12,
            kind: TooDeep { limit: 3 }
        }
    );
    assert_eq!(error(b"*5\r\n").kind, TooManyElements { len: 5, limit: 4 });
    assert_eq!(error(b"%5\r\n").kind, TooManyElements { len: 5, limit: 4 });
    assert_eq!(
        error(b"$9\r\n123456789\r\n").kind,
        BulkTooLong { len: 9, limit: 8 }
    );
    assert_eq!(error(&[b'+'; 40]).kind, LineTooLong { limit: 16 });
    // Deeply nested input with default limits: an error, not a stack overflow.
    let deep = b"*1\r\n".repeat(100_000);
    assert_eq!(
        decode_value(&deep, ValueLimits::default())
            .expect_err("too deep")
            .kind,
        TooDeep { limit: 32 }
    );
    // A run of attributes, each annotating the next: bounded like nesting.
    let attributes = b"|0\r\n".repeat(100_000);
    assert_eq!(
        decode_value(&attributes, ValueLimits::default())
            .expect_err("too deep")
            .kind,
        TooDeep { limit: 32 }
    );
    // A huge declared length reserves nothing up front.
    assert_eq!(
        decode_value(b"*1000000\r\n", ValueLimits::default())
            .expect_err("short")
            .kind,
        Truncated
    );
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

#[test]
fn server_errors_nulls_and_older_layouts() {
    assert_eq!(
        CommandTable::from_reply(b"-ERR unknown command 'COMMAND'\r\n"),
        Err(CommandTableError::ServerError(
            "ERR unknown command 'COMMAND'".into()
        ))
    );
    assert!(matches!(
        CommandTable::from_reply(b":1\r\n"),
        Err(CommandTableError::Shape { offset: 0, .. })
    ));
    // `COMMAND INFO get nosuch` in RESP2 and RESP3; Redis 6 (7 fields) and 5 (6 fields) layouts;
    // a newer server's extra field is ignored.
    let get6 = b"*7\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*2\r\n+@read\r\n+@string\r\n";
    let mut resp2 = b"*2\r\n".to_vec();
    resp2.extend_from_slice(get6);
    resp2.extend_from_slice(b"*-1\r\n");
    let mut resp3 = b"*2\r\n_\r\n".to_vec();
    resp3.extend_from_slice(get6);
    let from_resp2 = CommandTable::from_reply(&resp2).expect("a table");
    assert_eq!(
        from_resp2,
        CommandTable::from_reply(&resp3).expect("a table")
    );
    let get = from_resp2.get("GET").expect("get");
    assert_eq!(get.acl_categories, ["@read", "@string"]);
    assert!(get.tips.is_empty() && get.subcommands.is_empty());
    assert_eq!(from_resp2.classify(b"get", None), Classification::Read);
    let redis5 =
        b"*1\r\n*6\r\n$4\r\nspop\r\n:-2\r\n*3\r\n+write\r\n+random\r\n+fast\r\n:1\r\n:1\r\n:1\r\n";
    let table = CommandTable::from_reply(redis5).expect("a table");
    assert_eq!(
        table.classify(b"SPOP", None),
        Classification::NonDeterministic {
            writes: true,
            source: NonDeterminismSource::RandomFlag
        }
    );
    let newer = b"*1\r\n*11\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+some_new_flag\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n+a field from the future\r\n";
    let table = CommandTable::from_reply(newer).expect("a table");
    assert!(table
        .get("get")
        .expect("get")
        .has_flag(&CommandFlag::Other("some_new_flag".into())));
}

#[test]
fn wrong_field_types_are_shape_errors_at_their_offset() {
    // The arity is a string.
    let bytes = b"*1\r\n*6\r\n$3\r\nget\r\n+2\r\n*0\r\n:1\r\n:1\r\n:1\r\n";
    match CommandTable::from_reply(bytes) {
        Err(CommandTableError::Shape { offset, what }) => {
            assert_eq!(offset, 17);
            assert!(what.contains("\"get\"") && what.contains("arity"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    // Too few fields.
    assert!(matches!(
        CommandTable::from_reply(b"*1\r\n*2\r\n$3\r\nget\r\n:2\r\n"),
        Err(CommandTableError::Shape { offset: 4, .. })
    ));
}

fn fixture_table(bytes: &[u8]) -> CommandTable {
    CommandTable::from_reply(bytes).unwrap_or_else(|error| panic!("fixture: {error}"))
}

/// What active mode needs of real commands; `(command, first argument, classification)`.
fn expected_classifications() -> Vec<(&'static str, Option<&'static str>, Classification)> {
    use Classification::*;
    let tip = |writes| NonDeterministic {
        writes,
        source: NonDeterminismSource::Tip,
    };
    let refused = |reason| Refused { reason };
    vec![
        ("SET", None, Update),
        ("set", Some("k"), Update),
        ("GET", None, Read),
        ("INCR", None, Update),
        ("SPOP", None, tip(true)),
        ("SRANDMEMBER", None, tip(false)),
        ("RANDOMKEY", None, tip(false)),
        ("TIME", None, tip(false)),
        ("SMEMBERS", None, tip(false)),
        ("SELECT", Some("1"), SessionState),
        ("AUTH", None, SessionState),
        ("HELLO", Some("3"), SessionState),
        ("MULTI", None, SessionState),
        ("EXEC", None, SessionState),
        ("CLIENT", Some("SETNAME"), SessionState),
        ("client", Some("setname"), SessionState),
        ("CLIENT", Some("GETNAME"), Update),
        (
            "CLIENT",
            Some("ID"),
            NonDeterministic {
                writes: false,
                source: NonDeterminismSource::KnownCommand,
            },
        ),
        ("CLIENT", Some("REPLY"), refused(RefusalReason::ReplyMode)),
        (
            "CLIENT",
            Some("KILL"),
            refused(RefusalReason::Administrative),
        ),
        ("CLIENT", None, Unknown),
        ("CLIENT", Some("NOSUCH"), Unknown),
        ("DEBUG", Some("SLEEP"), refused(RefusalReason::Debug)),
        ("DEBUG", None, refused(RefusalReason::Debug)),
        ("DEBUG", Some("DIGEST"), Read),
        ("SHUTDOWN", None, refused(RefusalReason::Shutdown)),
        ("REPLICAOF", None, refused(RefusalReason::RedisReplication)),
        ("SLAVEOF", None, refused(RefusalReason::RedisReplication)),
        ("FAILOVER", None, refused(RefusalReason::RedisReplication)),
        ("PSYNC", None, refused(RefusalReason::RedisReplication)),
        ("WAIT", None, refused(RefusalReason::RedisReplication)),
        ("CLUSTER", Some("INFO"), refused(RefusalReason::Cluster)),
        ("MONITOR", None, refused(RefusalReason::Monitor)),
        ("SUBSCRIBE", None, refused(RefusalReason::PubSub)),
        ("PUBLISH", None, refused(RefusalReason::PubSub)),
        ("BLPOP", None, refused(RefusalReason::Blocking)),
        ("XREAD", None, refused(RefusalReason::Blocking)),
        ("CONFIG", Some("GET"), Read),
        (
            "CONFIG",
            Some("SET"),
            refused(RefusalReason::Administrative),
        ),
        ("FLUSHALL", None, Update),
        ("EVAL", None, Update),
        ("EVALSHA", None, Update),
        ("FCALL", None, Update),
        ("EVAL_RO", None, Read),
        ("PFCOUNT", None, Update),
        ("SCRIPT", Some("LOAD"), Update),
        ("PING", None, Update),
        ("COMMAND", None, tip(false)),
        ("NOSUCHCOMMAND", None, Unknown),
        ("", None, Unknown),
    ]
}

fn check_classifications(table: &CommandTable, source: &str) {
    for (command, argument, expected) in expected_classifications() {
        assert_eq!(
            table.classify(command.as_bytes(), argument.map(str::as_bytes)),
            expected,
            "{source}: {command} {argument:?}"
        );
    }
}

#[test]
fn real_redis7_fixtures_classify_known_commands() {
    for (source, bytes) in [("RESP2", FIXTURE_RESP2), ("RESP3", FIXTURE_RESP3)] {
        check_classifications(&fixture_table(bytes), source);
    }
}

#[test]
fn real_redis7_fixtures_give_identical_tables() {
    let resp2 = fixture_table(FIXTURE_RESP2);
    let resp3 = fixture_table(FIXTURE_RESP3);
    assert!(resp2.len() >= 200, "{} commands", resp2.len());
    assert_eq!(resp2, resp3);
}

#[test]
fn real_redis7_fixture_facts() {
    let table = fixture_table(FIXTURE_RESP3);
    let set = table.get("SET").expect("set");
    assert_eq!(set.arity, -3);
    assert!(set.has_flag(&CommandFlag::Write) && set.has_flag(&CommandFlag::Denyoom));
    assert_eq!((set.first_key, set.last_key, set.key_step), (1, 1, 1));
    assert!(set.acl_categories.iter().any(|c| c == "@write"));
    let setname = table.get("client|SETNAME").expect("client|setname");
    assert_eq!(setname.name, "client|setname");
    assert_eq!(setname.arity, 3);
    assert!(table
        .get("client")
        .expect("client")
        .subcommand("setname")
        .is_some());
    assert!(table
        .get("SPOP")
        .expect("spop")
        .has_tip("nondeterministic_output"));
    assert!(table
        .get("blpop")
        .expect("blpop")
        .has_flag(&CommandFlag::Blocking));
    // No command of the real table is left without a class (containers need a subcommand).
    for info in table.iter() {
        let name = info.name.as_bytes();
        if info.subcommands.is_empty() {
            assert_ne!(
                table.classify(name, None),
                Classification::Unknown,
                "{}",
                info.name
            );
        }
        for sub in &info.subcommands {
            let (_, sub_name) = sub.name.split_once('|').expect("container|sub");
            assert_ne!(
                table.classify(name, Some(sub_name.as_bytes())),
                Classification::Unknown,
                "{}",
                sub.name
            );
        }
    }
    // Every flag the real server sends is one this module names.
    let unnamed: BTreeSet<&CommandFlag> = table
        .iter()
        .flat_map(|info| std::iter::once(info).chain(&info.subcommands))
        .flat_map(|info| &info.flags)
        .filter(|flag| matches!(flag, CommandFlag::Other(_)))
        .collect();
    assert!(unnamed.is_empty(), "{unnamed:?}");
}

// ---------------------------------------------------------------------------------------------
// The interop tier: a live redis-server.
// ---------------------------------------------------------------------------------------------

mod live {
    use super::*;
    use redis_support::{ask, Server};

    #[test]
    #[ignore = "needs redis-server (the interop tier)"]
    fn live_redis_server_classifies_like_the_fixtures() {
        let server = Server::start();
        let command = b"*1\r\n$7\r\nCOMMAND\r\n";
        let resp2 = ask(&mut server.connect(), command);
        let mut resp3_connection = server.connect();
        let hello = ask(&mut resp3_connection, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n");
        assert_eq!(hello.first(), Some(&b'%'), "HELLO 3 answers a map");
        let resp3 = ask(&mut resp3_connection, command);
        assert_eq!(resp3.first(), Some(&b'*'));

        let live2 = fixture_table(&resp2);
        let live3 = fixture_table(&resp3);
        assert_eq!(live2, live3);
        check_classifications(&live2, "live");
        let fixture = fixture_table(FIXTURE_RESP2);
        for (command, argument, _) in expected_classifications() {
            assert_eq!(
                live2.classify(command.as_bytes(), argument.map(str::as_bytes)),
                fixture.classify(command.as_bytes(), argument.map(str::as_bytes)),
                "{command} {argument:?}"
            );
        }
        // `COMMAND INFO` of a few names, one unknown: the same entries, the unknown skipped.
        let info = ask(
            &mut server.connect(),
            b"*5\r\n$7\r\nCOMMAND\r\n$4\r\nINFO\r\n$3\r\nget\r\n$6\r\nclient\r\n$6\r\nnosuch\r\n",
        );
        let partial = fixture_table(&info);
        assert_eq!(partial.len(), 2);
        assert_eq!(partial.get("get"), live2.get("get"));
        assert_eq!(partial.get("client"), live2.get("client"));
    }
}
