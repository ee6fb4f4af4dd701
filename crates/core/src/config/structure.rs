//! The shape check: every key known, every value of the right type, every required key present,
//! in every table of the file at once.
//!
//! serde stops at the first mismatch, which would make a user fix a file one error per run; this
//! walk over the parsed document reports them all, each at its own span.

use std::ops::Range;

use toml_edit::{Item, Value};

/// One shape problem: where, which field, what is wrong.
pub(super) struct Problem {
    pub(super) span: Range<usize>,
    pub(super) field: String,
    pub(super) message: String,
}

#[derive(Clone, Copy)]
enum Shape {
    Integer { max: u64 },
    String,
    Boolean,
    Strings,
    Integers { max: u64 },
    Table(&'static [Key]),
    Tables(&'static [Key]),
}

struct Key {
    name: &'static str,
    shape: Shape,
    required: bool,
}

const fn key(name: &'static str, shape: Shape) -> Key {
    Key {
        name,
        shape,
        required: false,
    }
}

const fn required(name: &'static str, shape: Shape) -> Key {
    Key {
        name,
        shape,
        required: true,
    }
}

const U16: Shape = Shape::Integer {
    max: u16::MAX as u64,
};
const U32: Shape = Shape::Integer {
    max: u32::MAX as u64,
};
/// Milliseconds: any non-negative TOML integer.
const MILLIS: Shape = Shape::Integer {
    max: i64::MAX as u64,
};

const MEMBER: &[Key] = &[required("id", U16), required("address", Shape::String)];

const GROUP: &[Key] = &[
    key("name", Shape::String),
    required("auth_key_file", Shape::String),
    key("port", U16),
    key("heartbeat_interval_ms", MILLIS),
    key("miss_count", U32),
    key("holder_grace_ms", MILLIS),
    key("replication_stall_ms", MILLIS),
    key("replication_encryption", Shape::Boolean),
    key("preempt", Shape::Boolean),
    key("two_node", Shape::Boolean),
    key("member", Shape::Tables(MEMBER)),
    key("witness", Shape::Table(MEMBER)),
];

const SERVICE: &[Key] = &[
    required("name", Shape::String),
    required("vip", Shape::String),
    key("interface", Shape::String),
    required(
        "ports",
        Shape::Integers {
            max: u16::MAX as u64,
        },
    ),
    required("mode", Shape::String),
    required("backend", Shape::String),
    key("protocol", Shape::String),
    key("stream_replies_above", Shape::Integer { max: 1 << 40 }),
    key("client_header_timeout_ms", MILLIS),
    key("client_idle_timeout_ms", MILLIS),
    key("max_connections", U32),
    key("max_connections_per_source", U32),
    key("max_half_open_per_source", U32),
    key("max_request_bytes_held", Shape::Integer { max: 1 << 40 }),
    key("half_open_lifetime_ms", MILLIS),
    key("delivery", Shape::String),
    key("read_policy", Shape::String),
];

const HEALTH_CHECK: &[Key] = &[
    required("kind", Shape::String),
    key("target", Shape::String),
    key("path", Shape::String),
    key("expect_status", U16),
    key("command", Shape::Strings),
    key("interval_ms", MILLIS),
    key("timeout_ms", MILLIS),
    key("rise", U32),
    key("fall", U32),
];

const ARP: &[Key] = &[
    key("gratuitous_count", U32),
    key("gratuitous_spacing_ms", MILLIS),
    key("refresh_on_heal", Shape::Boolean),
];

const NOTIFY: &[Key] = &[
    required("command", Shape::Strings),
    key("timeout_ms", MILLIS),
];

const CONTROL: &[Key] = &[key("socket", Shape::String)];
const METRICS: &[Key] = &[required("listen", Shape::String)];

const RELAY_INTERFACE: &[Key] = &[
    required("name", Shape::String),
    required("class", Shape::String),
    key(
        "speed_mbps",
        Shape::Integer {
            max: i64::MAX as u64,
        },
    ),
    key("address", Shape::String),
    key("probe_targets", Shape::Strings),
];

const RELAY_SIBLING: &[Key] = &[
    required("id", U16),
    required("interface", Shape::String),
    required("address", Shape::String),
];

const RELAY: &[Key] = &[
    key("port", U16),
    key("probe_period_ms", MILLIS),
    key("probe_timeout_ms", MILLIS),
    key("probe_rise", U32),
    key("probe_fall", U32),
    key("hold_down_ms", MILLIS),
    key("lease_ms", MILLIS),
    key("refresh_ms", MILLIS),
    key("retry_ms", MILLIS),
    key("attempts_per_sibling", U32),
    key("interface", Shape::Tables(RELAY_INTERFACE)),
    key("sibling", Shape::Tables(RELAY_SIBLING)),
];

const ROOT: &[Key] = &[
    required("node_id", U16),
    required("group", Shape::Table(GROUP)),
    key("service", Shape::Tables(SERVICE)),
    key("health_check", Shape::Tables(HEALTH_CHECK)),
    key("arp", Shape::Table(ARP)),
    key("notify", Shape::Table(NOTIFY)),
    key("control", Shape::Table(CONTROL)),
    key("metrics", Shape::Table(METRICS)),
    key("relay", Shape::Table(RELAY)),
];

/// Checks the shape of `text`; `None` when it is not even TOML (the caller reports that).
pub(super) fn check(text: &str) -> Option<Vec<Problem>> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut problems = Vec::new();
    let root = Entries::of_table(doc.as_table()).with_span(0..0);
    check_table(&root, ROOT, "", &mut problems);
    Some(problems)
}

/// The keys of a `[table]` or an `{ inline = "table" }`, with the spans errors point at.
struct Entries<'a> {
    /// Where a missing key is reported: the table's header or opening brace.
    span: Range<usize>,
    items: Vec<(&'a str, Option<Range<usize>>, Entry<'a>)>,
}

#[derive(Clone, Copy)]
enum Entry<'a> {
    Item(&'a Item),
    Value(&'a Value),
}

impl<'a> Entries<'a> {
    fn of_table(table: &'a toml_edit::Table) -> Entries<'a> {
        let items = table
            .iter()
            .map(|(name, item)| {
                let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
                (name, key_span, Entry::Item(item))
            })
            .collect::<Vec<_>>();
        // An implicit table (`[group.member]` without `[group]`) has no text of its own: point
        // at its first key.
        let span = table
            .span()
            .or_else(|| items.iter().find_map(|(_, span, _)| span.clone()))
            .unwrap_or(0..0);
        Entries { span, items }
    }

    fn of_inline(table: &'a toml_edit::InlineTable) -> Entries<'a> {
        let items = table
            .iter()
            .map(|(name, value)| {
                let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
                (name, key_span, Entry::Value(value))
            })
            .collect();
        Entries {
            span: table.span().unwrap_or(0..0),
            items,
        }
    }

    fn with_span(mut self, span: Range<usize>) -> Self {
        self.span = span;
        self
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn check_table(entries: &Entries<'_>, keys: &[Key], prefix: &str, problems: &mut Vec<Problem>) {
    for (name, key_span, entry) in &entries.items {
        let field = join(prefix, name);
        let at = key_span
            .clone()
            .or_else(|| entry_span(*entry))
            .unwrap_or_else(|| entries.span.clone());
        match keys.iter().find(|k| k.name == *name) {
            Some(k) => check_entry(*entry, k.shape, &field, at, problems),
            None => {
                let expected = keys
                    .iter()
                    .map(|k| format!("`{}`", k.name))
                    .collect::<Vec<_>>()
                    .join(", ");
                problems.push(Problem {
                    span: at,
                    field,
                    message: format!("unknown field `{name}`, expected one of {expected}"),
                });
            }
        }
    }
    for k in keys.iter().filter(|k| k.required) {
        if !entries.items.iter().any(|(name, _, _)| *name == k.name) {
            problems.push(Problem {
                span: entries.span.clone(),
                field: join(prefix, k.name),
                message: format!("missing field `{}`", k.name),
            });
        }
    }
}

fn entry_span(entry: Entry<'_>) -> Option<Range<usize>> {
    match entry {
        Entry::Item(item) => item.span(),
        Entry::Value(value) => value.span(),
    }
}

/// What a value is, in the words of the error message.
fn describe(entry: Entry<'_>) -> &'static str {
    let value = match entry {
        Entry::Item(Item::Table(_)) => return "a table",
        Entry::Item(Item::ArrayOfTables(_)) => return "an array of tables",
        Entry::Item(Item::None) => return "nothing",
        Entry::Item(Item::Value(v)) | Entry::Value(v) => v,
    };
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "an inline table",
    }
}

fn check_entry(
    entry: Entry<'_>,
    shape: Shape,
    field: &str,
    key_at: Range<usize>,
    problems: &mut Vec<Problem>,
) {
    let value_at = entry_span(entry).unwrap_or_else(|| key_at.clone());
    let value = match entry {
        Entry::Item(Item::Value(v)) | Entry::Value(v) => Some(v),
        _ => None,
    };
    let wrong = |expected: &str, problems: &mut Vec<Problem>| {
        problems.push(Problem {
            span: value_at.clone(),
            field: field.to_string(),
            message: format!("expected {expected}, found {}", describe(entry)),
        });
    };
    match shape {
        Shape::Integer { max } => match value {
            Some(Value::Integer(i)) => {
                check_integer(*i.value(), max, field, value_at.clone(), problems)
            }
            _ => wrong(&format!("an integer from 0 to {max}"), problems),
        },
        Shape::String => {
            if !matches!(value, Some(Value::String(_))) {
                wrong("a string", problems);
            }
        }
        Shape::Boolean => {
            if !matches!(value, Some(Value::Boolean(_))) {
                wrong("true or false", problems);
            }
        }
        Shape::Strings | Shape::Integers { .. } => {
            let Some(Value::Array(array)) = value else {
                let what = match shape {
                    Shape::Strings => "an array of strings",
                    _ => "an array of integers",
                };
                return wrong(what, problems);
            };
            for (i, element) in array.iter().enumerate() {
                let element_field = format!("{field}[{i}]");
                let at = element.span().unwrap_or_else(|| value_at.clone());
                match (shape, element) {
                    (Shape::Strings, Value::String(_)) => {}
                    (Shape::Integers { max }, Value::Integer(n)) => {
                        check_integer(*n.value(), max, &element_field, at, problems)
                    }
                    _ => problems.push(Problem {
                        span: at,
                        field: element_field,
                        message: format!(
                            "expected {}, found {}",
                            match shape {
                                Shape::Strings => "a string".to_string(),
                                _ => format!("an integer from 0 to {}", shape_max(shape)),
                            },
                            describe(Entry::Value(element))
                        ),
                    }),
                }
            }
        }
        Shape::Table(keys) => {
            let entries = match entry {
                Entry::Item(Item::Table(t)) => Entries::of_table(t),
                Entry::Item(Item::Value(Value::InlineTable(t)))
                | Entry::Value(Value::InlineTable(t)) => Entries::of_inline(t),
                _ => return wrong("a table", problems),
            };
            check_table(&entries, keys, field, problems);
        }
        Shape::Tables(keys) => match entry {
            Entry::Item(Item::ArrayOfTables(array)) => {
                for (i, table) in array.iter().enumerate() {
                    let entries = Entries::of_table(table);
                    check_table(&entries, keys, &format!("{field}[{i}]"), problems);
                }
            }
            Entry::Item(Item::Value(Value::Array(array))) | Entry::Value(Value::Array(array)) => {
                for (i, element) in array.iter().enumerate() {
                    let element_field = format!("{field}[{i}]");
                    match element {
                        Value::InlineTable(t) => {
                            check_table(&Entries::of_inline(t), keys, &element_field, problems)
                        }
                        other => problems.push(Problem {
                            span: other.span().unwrap_or_else(|| value_at.clone()),
                            field: element_field,
                            message: format!(
                                "expected a table, found {}",
                                describe(Entry::Value(other))
                            ),
                        }),
                    }
                }
            }
            _ => wrong("an array of tables", problems),
        },
    }
}

fn shape_max(shape: Shape) -> u64 {
    match shape {
        Shape::Integer { max } | Shape::Integers { max } => max,
        _ => 0,
    }
}

fn check_integer(n: i64, max: u64, field: &str, at: Range<usize>, problems: &mut Vec<Problem>) {
    if u64::try_from(n).map_or(true, |n| n > max) {
        problems.push(Problem {
            span: at,
            field: field.to_string(),
            message: format!("{n} is out of range: expected an integer from 0 to {max}"),
        });
    }
}
