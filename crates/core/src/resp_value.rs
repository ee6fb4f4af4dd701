//! Whole RESP2 and RESP3 values decoded from a complete buffer: for the few replies a proxy
//! must understand rather than pass on (the reply of `COMMAND`, read once per connection to a
//! server; see [`redis_commands`](crate::redis_commands)). Message boundaries in a stream are
//! [`resp`](crate::resp)'s job, which decodes no value.

use crate::resp::{is_decimal, parse_integer};

/// Bounds on a decoded value: input from a server is trusted for its meaning, not its size (a
/// proxy may be pointed at anything that speaks on the port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueLimits {
    /// Deepest nesting of aggregates (a `COMMAND` reply nests 8 deep: reply, entry,
    /// subcommands, entry, key specs, spec, `begin_search`, its `spec`).
    pub max_depth: usize,
    /// Most elements (or pairs) in one aggregate.
    pub max_elements: u64,
    /// Longest bulk or verbatim string.
    pub max_bulk: u64,
    /// Longest header or simple-string line.
    pub max_line: usize,
}

impl Default for ValueLimits {
    fn default() -> Self {
        ValueLimits {
            max_depth: 32,
            max_elements: 1 << 20,
            max_bulk: 1 << 20,
            max_line: 64 * 1024,
        }
    }
}

/// A decoded RESP2 or RESP3 value and the offset of its type byte in the input, so that what
/// is wrong with it can be reported where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RespValue {
    pub offset: usize,
    pub data: RespData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RespData {
    SimpleString(Vec<u8>),
    SimpleError(Vec<u8>),
    Integer(i64),
    BulkString(Vec<u8>),
    BulkError(Vec<u8>),
    /// RESP3 `=`: a three-letter format (`txt`, `mkd`) and the text.
    Verbatim {
        format: [u8; 3],
        text: Vec<u8>,
    },
    /// RESP3 `_`, and RESP2's null bulk string (`$-1`) and null array (`*-1`).
    Null,
    Boolean(bool),
    Double(f64),
    /// RESP3 `(`: kept as its decimal digits.
    BigNumber(String),
    Array(Vec<RespValue>),
    Set(Vec<RespValue>),
    Map(Vec<(RespValue, RespValue)>),
    Push(Vec<RespValue>),
}

impl RespData {
    /// What a value is, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            RespData::SimpleString(_) => "a simple string",
            RespData::SimpleError(_) => "an error",
            RespData::Integer(_) => "an integer",
            RespData::BulkString(_) => "a bulk string",
            RespData::BulkError(_) => "a bulk error",
            RespData::Verbatim { .. } => "a verbatim string",
            RespData::Null => "a null",
            RespData::Boolean(_) => "a boolean",
            RespData::Double(_) => "a double",
            RespData::BigNumber(_) => "a big number",
            RespData::Array(_) => "an array",
            RespData::Set(_) => "a set",
            RespData::Map(_) => "a map",
            RespData::Push(_) => "a push",
        }
    }

    /// The bytes of any string-like value (RESP2 servers and RESP3 servers pick different
    /// string types for the same field).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            RespData::SimpleString(bytes) | RespData::BulkString(bytes) => Some(bytes),
            RespData::Verbatim { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The elements of an array or a set: RESP3 sends sets where RESP2 sends arrays.
    pub fn as_list(&self) -> Option<&[RespValue]> {
        match self {
            RespData::Array(items) | RespData::Set(items) => Some(items),
            _ => None,
        }
    }
}

/// Why bytes are not one RESP value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RESP value at byte {offset}: {kind}")]
pub struct DecodeError {
    /// The type byte of the value that could not be decoded (for [`DecodeErrorKind::Truncated`],
    /// the innermost value left unfinished; for trailing bytes, the first of them).
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The input ends inside the value: more bytes may complete it.
    #[error("the input ends before the value does")]
    Truncated,
    #[error("unknown type byte {0:#04x}")]
    UnknownType(u8),
    #[error("a line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("a line ended by a bare line feed")]
    BareLineFeed,
    #[error("invalid length {0:?}")]
    BadLength(String),
    #[error("a string of {len} bytes, more than the {limit} allowed")]
    BulkTooLong { len: u64, limit: u64 },
    #[error("an aggregate of {len} elements, more than the {limit} allowed")]
    TooManyElements { len: u64, limit: u64 },
    #[error("aggregates nested deeper than {limit}")]
    TooDeep { limit: usize },
    #[error("a string not followed by CRLF")]
    MissingCrlf,
    #[error("invalid {what} {value:?}")]
    BadScalar { what: &'static str, value: String },
    #[error("streamed strings and aggregates ({0}?) are not supported")]
    Streamed(char),
    #[error("{count} bytes after the value")]
    TrailingBytes { count: usize },
}

/// Decodes the one value at the start of `input`; returns it and how many bytes it took.
/// [`DecodeErrorKind::Truncated`] means a longer input may hold a whole value (what a reader of
/// a socket waits on); every other error is final. An attribute (`|`) is read and dropped: it
/// annotates the value after it and is not part of it.
pub fn decode_value(input: &[u8], limits: ValueLimits) -> Result<(RespValue, usize), DecodeError> {
    let mut decoder = Decoder {
        input,
        at: 0,
        limits,
    };
    let value = decoder.value(0)?;
    Ok((value, decoder.at))
}

/// Decodes `input` as exactly one value, nothing after it.
pub fn decode_whole_value(input: &[u8], limits: ValueLimits) -> Result<RespValue, DecodeError> {
    let (value, used) = decode_value(input, limits)?;
    if used < input.len() {
        return Err(DecodeError {
            offset: used,
            kind: DecodeErrorKind::TrailingBytes {
                count: input.len() - used,
            },
        });
    }
    Ok(value)
}

struct Decoder<'a> {
    input: &'a [u8],
    at: usize,
    limits: ValueLimits,
}

impl<'a> Decoder<'a> {
    fn value(&mut self, depth: usize) -> Result<RespValue, DecodeError> {
        let offset = self.at;
        let fail = |kind| DecodeError { offset, kind };
        let Some(&kind) = self.input.get(offset) else {
            return Err(fail(DecodeErrorKind::Truncated));
        };
        if !b"+-:$*_#,(!=%~|>".contains(&kind) {
            return Err(fail(DecodeErrorKind::UnknownType(kind)));
        }
        self.at += 1;
        let line = self.line().map_err(fail)?;
        let text = || String::from_utf8_lossy(line).into_owned();
        if line == b"?" && b"$!=*%~|>".contains(&kind) {
            return Err(fail(DecodeErrorKind::Streamed(kind as char)));
        }
        let data = match kind {
            b'+' => RespData::SimpleString(line.to_vec()),
            b'-' => RespData::SimpleError(line.to_vec()),
            b':' => RespData::Integer(parse_integer(line).ok_or_else(|| {
                fail(DecodeErrorKind::BadScalar {
                    what: "integer",
                    value: text(),
                })
            })?),
            b'_' if line.is_empty() => RespData::Null,
            b'#' if line == b"t" => RespData::Boolean(true),
            b'#' if line == b"f" => RespData::Boolean(false),
            b',' => RespData::Double(parse_double(line).ok_or_else(|| {
                fail(DecodeErrorKind::BadScalar {
                    what: "double",
                    value: text(),
                })
            })?),
            b'(' if is_decimal(line) => RespData::BigNumber(text()),
            b'_' | b'#' | b'(' => {
                let what = match kind {
                    b'_' => "null",
                    b'#' => "boolean",
                    _ => "big number",
                };
                return Err(fail(DecodeErrorKind::BadScalar {
                    what,
                    value: text(),
                }));
            }
            b'$' | b'!' | b'=' => {
                let len =
                    parse_integer(line).ok_or_else(|| fail(DecodeErrorKind::BadLength(text())))?;
                // RESP2's null bulk string.
                if len == -1 && kind == b'$' {
                    return Ok(RespValue {
                        offset,
                        data: RespData::Null,
                    });
                }
                let len =
                    u64::try_from(len).map_err(|_| fail(DecodeErrorKind::BadLength(text())))?;
                if len > self.limits.max_bulk {
                    return Err(fail(DecodeErrorKind::BulkTooLong {
                        len,
                        limit: self.limits.max_bulk,
                    }));
                }
                let bytes = self.payload(len).map_err(fail)?;
                match kind {
                    b'$' => RespData::BulkString(bytes.to_vec()),
                    b'!' => RespData::BulkError(bytes.to_vec()),
                    _ => match bytes {
                        [a, b, c, b':', text @ ..] => RespData::Verbatim {
                            format: [*a, *b, *c],
                            text: text.to_vec(),
                        },
                        _ => {
                            return Err(fail(DecodeErrorKind::BadScalar {
                                what: "verbatim string",
                                value: String::from_utf8_lossy(bytes).into_owned(),
                            }))
                        }
                    },
                }
            }
            _ => {
                // Aggregates: * ~ > % |.
                let len =
                    parse_integer(line).ok_or_else(|| fail(DecodeErrorKind::BadLength(text())))?;
                // RESP2's null array.
                if len == -1 && kind == b'*' {
                    return Ok(RespValue {
                        offset,
                        data: RespData::Null,
                    });
                }
                let len =
                    u64::try_from(len).map_err(|_| fail(DecodeErrorKind::BadLength(text())))?;
                if len > self.limits.max_elements {
                    return Err(fail(DecodeErrorKind::TooManyElements {
                        len,
                        limit: self.limits.max_elements,
                    }));
                }
                if depth >= self.limits.max_depth {
                    return Err(fail(DecodeErrorKind::TooDeep {
                        limit: self.limits.max_depth,
                    }));
                }
                // Each element takes at least 3 bytes (`_\r\n`): a declared length cannot make
                // the decoder reserve more than the input could fill.
                let room = (self.input.len() - self.at) / 3;
                let capacity = usize::try_from(len).unwrap_or(usize::MAX).min(room);
                match kind {
                    b'%' | b'|' => {
                        let mut pairs = Vec::with_capacity(capacity / 2);
                        for _ in 0..len {
                            let key = self.value(depth + 1)?;
                            let value = self.value(depth + 1)?;
                            pairs.push((key, value));
                        }
                        if kind == b'|' {
                            // Metadata about the next value, which is the one returned. One
                            // level deeper, so that a run of attributes is bounded too.
                            return self.value(depth + 1);
                        }
                        RespData::Map(pairs)
                    }
                    _ => {
                        let mut items = Vec::with_capacity(capacity);
                        for _ in 0..len {
                            items.push(self.value(depth + 1)?);
                        }
                        match kind {
                            b'*' => RespData::Array(items),
                            b'~' => RespData::Set(items),
                            _ => RespData::Push(items),
                        }
                    }
                }
            }
        };
        Ok(RespValue { offset, data })
    }

    /// The line from here up to CRLF, which it moves past.
    fn line(&mut self) -> Result<&'a [u8], DecodeErrorKind> {
        let rest = &self.input[self.at..];
        // The CR of the line's CRLF may sit just past the limit.
        let window = &rest[..rest.len().min(self.limits.max_line.saturating_add(2))];
        let Some(newline) = window.iter().position(|&b| b == b'\n') else {
            if rest.len() > self.limits.max_line.saturating_add(1) {
                return Err(DecodeErrorKind::LineTooLong {
                    limit: self.limits.max_line,
                });
            }
            return Err(DecodeErrorKind::Truncated);
        };
        let Some(line) = rest[..newline].strip_suffix(b"\r") else {
            return Err(DecodeErrorKind::BareLineFeed);
        };
        if line.len() > self.limits.max_line {
            return Err(DecodeErrorKind::LineTooLong {
                limit: self.limits.max_line,
            });
        }
        self.at += newline + 1;
        Ok(line)
    }

    /// `len` bytes then CRLF, which it moves past.
    fn payload(&mut self, len: u64) -> Result<&'a [u8], DecodeErrorKind> {
        let rest = &self.input[self.at..];
        let len = usize::try_from(len).map_err(|_| DecodeErrorKind::Truncated)?;
        let Some(after) = rest.get(len..) else {
            return Err(DecodeErrorKind::Truncated);
        };
        match after {
            [b'\r', b'\n', ..] => {}
            [] | [b'\r'] => return Err(DecodeErrorKind::Truncated),
            _ => return Err(DecodeErrorKind::MissingCrlf),
        }
        self.at += len + 2;
        Ok(&rest[..len])
    }
}

/// RESP3 doubles: decimal or exponent notation, `inf`, `-inf`, `nan`.
fn parse_double(line: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(line).ok()?;
    match text {
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ if text
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            text.parse().ok()
        }
        _ => None,
    }
}
