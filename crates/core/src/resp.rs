//! Framing of the Redis protocol (RESP2 and RESP3): where each request and each reply begins
//! and ends in a byte stream fed in pieces of any size, and which command a request names. The
//! first piece of active mode (a RESP service replicated on every member): the proxy must know
//! message boundaries to order updates and spread reads, without buffering a value (a bulk
//! string may be 512 MiB) or parsing it twice.
//!
//! Requests are what redis-server accepts: an array of bulk strings (`*2\r\n$3\r\nGET\r\n…`)
//! or an inline command (a line of words, ended by `\n` or `\r\n`). Replies are any RESP3 value
//! (RESP2's are a subset), an attribute (`|`) before a value belonging to that value's message.
//! Streamed strings and aggregates (`$?`, `*?`) are refused: redis-server never sends them.
//!
//! Written here rather than taken from a crate: the RESP crates (redis-protocol, resp) decode
//! whole values into memory; a proxy needs the extents alone, resumable at any byte.

/// Bounds on what one message may declare; beyond them the stream is refused (as redis-server
/// refuses a request beyond its own `proto-max-bulk-len` and multibulk limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    /// Longest bulk string (redis-server's `proto-max-bulk-len` default, 512 MiB).
    pub max_bulk: u64,
    /// Most elements of one aggregate (redis-server refuses multibulk lengths above 1024^2 in
    /// an unauthenticated request, and 2^31 in any).
    pub max_elements: u64,
    /// Deepest nesting of aggregates.
    pub max_depth: usize,
    /// Longest line: a type's header, a simple string, or an inline command (redis-server's
    /// `PROTO_INLINE_MAX_SIZE`, 64 KiB).
    pub max_line: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits {
            max_bulk: 512 * 1024 * 1024,
            max_elements: 1 << 31,
            max_depth: 128,
            max_line: 64 * 1024,
        }
    }
}

/// Which way the stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    Requests,
    /// Server to client.
    Replies,
}

/// One whole message: its extent in the stream and, for a request, what it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespMessage {
    /// Stream offset of its first byte.
    pub start: u64,
    /// Stream offset just after its last byte.
    pub end: u64,
    /// Requests: the command name, upper-cased (empty for an empty inline line, which
    /// redis-server skips without a reply; `None` when longer than [`MAX_COMMAND_NAME`]).
    pub command: Option<String>,
    /// Requests: the number of words, the command included.
    pub words: u64,
}

/// Longest command name kept (Redis' longest is under 32 bytes).
pub const MAX_COMMAND_NAME: usize = 64;

/// Why a stream cannot be framed; it has no boundary after the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RESP {direction:?} stream at offset {offset}: {kind}")]
pub struct RespError {
    pub direction: Direction,
    pub offset: u64,
    pub kind: RespErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespErrorKind {
    #[error("unknown type byte {0:#04x}")]
    UnknownType(u8),
    #[error("a line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("a line not ended by CRLF")]
    BareLineFeed,
    #[error("invalid length {0:?}")]
    BadLength(String),
    #[error("a bulk string of {len} bytes, more than the {limit} allowed")]
    BulkTooLong { len: u64, limit: u64 },
    #[error("an aggregate of {len} elements, more than the {limit} allowed")]
    TooManyElements { len: u64, limit: u64 },
    #[error("aggregates nested deeper than {limit}")]
    TooDeep { limit: usize },
    /// Replies only: redis-server does not check it after a request's bulk string.
    #[error("a bulk string not followed by CRLF")]
    MissingCrlf,
    #[error("invalid {what} {value:?}")]
    BadScalar { what: &'static str, value: String },
    #[error("streamed strings and aggregates ({0}?) are not supported")]
    Streamed(char),
    #[error("a request must be an array of bulk strings or an inline command, not {0}")]
    NotACommand(&'static str),
}

/// Cuts a RESP stream into messages, fed incrementally.
#[derive(Debug)]
pub struct RespFramer {
    direction: Direction,
    limits: RespLimits,
    /// Stream offset of the next byte fed.
    offset: u64,
    /// Where the message under way began, if one is under way (an attribute before a reply
    /// has begun it).
    message_start: Option<u64>,
    /// Where the value being read began: errors name it, whatever the cuts of the input.
    value_start: u64,
    state: State,
    /// Elements still due in each open aggregate, innermost last.
    open: Vec<Open>,
    /// Requests: the command name read so far, and the words.
    command: Option<String>,
    words: u64,
    failed: Option<RespError>,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    remaining: u64,
    /// An attribute precedes a value and is not one of its parent's elements.
    attribute: bool,
}

#[derive(Debug)]
enum State {
    /// At a value's type byte.
    Type,
    /// Reading the line after type byte `kind`.
    Line { kind: u8, line: Vec<u8> },
    /// Reading an inline command up to its line feed.
    Inline { line: Vec<u8> },
    /// Inside a bulk value: `remaining` payload bytes, then CRLF; `name` is kept when the value
    /// is a request's first word.
    Bulk {
        remaining: u64,
        crlf: u8,
        name: Option<Vec<u8>>,
    },
}

impl RespFramer {
    pub fn new(direction: Direction, limits: RespLimits) -> RespFramer {
        RespFramer {
            direction,
            limits,
            offset: 0,
            message_start: None,
            value_start: 0,
            state: State::Type,
            open: Vec::new(),
            command: None,
            words: 0,
            failed: None,
        }
    }

    /// Whether the bytes fed so far end exactly after a whole message.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Type) && self.message_start.is_none() && self.failed.is_none()
    }

    /// Frames `input`, appending each message it completes to `out`. After an error the
    /// messages appended before it stand, and every later call returns the same error.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<RespMessage>) -> Result<(), RespError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let mut at = 0;
        while at < input.len() {
            match self.step(&input[at..], out) {
                Ok(used) => {
                    at += used;
                    self.offset += used as u64;
                }
                Err(kind) => {
                    let error = RespError {
                        direction: self.direction,
                        offset: self.value_start,
                        kind,
                    };
                    self.failed = Some(error.clone());
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Takes what it can of `input` and says how much (nothing only when it turns to an
    /// inline command, which the next step reads).
    fn step(&mut self, input: &[u8], out: &mut Vec<RespMessage>) -> Result<usize, RespErrorKind> {
        match &mut self.state {
            State::Type => {
                let kind = input[0];
                self.value_start = self.offset;
                if self.message_start.is_none() {
                    self.message_start = Some(self.offset);
                    self.command = None;
                    self.words = 0;
                    if self.direction == Direction::Requests && kind != b'*' {
                        self.state = State::Inline { line: Vec::new() };
                        return Ok(0);
                    }
                }
                if !b"+-:$*_#,(!=%~|>".contains(&kind) {
                    return Err(RespErrorKind::UnknownType(kind));
                }
                if self.direction == Direction::Requests && !self.open.is_empty() && kind != b'$' {
                    return Err(RespErrorKind::NotACommand(
                        "an array holding other than bulk strings",
                    ));
                }
                self.state = State::Line {
                    kind,
                    line: Vec::new(),
                };
                Ok(1)
            }
            State::Line { kind, line } => {
                let kind = *kind;
                let (used, ended) = take_line(input, line, self.limits.max_line, LineEnd::Crlf)?;
                if ended {
                    let line = std::mem::take(line);
                    self.state = State::Type;
                    self.header(kind, &line, used, out)?;
                }
                Ok(used)
            }
            State::Inline { line } => {
                let (used, ended) = take_line(input, line, self.limits.max_line, LineEnd::Lf)?;
                if ended {
                    let line = std::mem::take(line);
                    self.state = State::Type;
                    let words = split_inline(&line);
                    self.words = words.len() as u64;
                    self.command = words.first().and_then(|first| command_name(first));
                    self.message_done(used, out);
                }
                Ok(used)
            }
            State::Bulk {
                remaining,
                crlf,
                name,
            } => {
                let mut used = 0;
                if *remaining > 0 {
                    let take = (*remaining).min(input.len() as u64) as usize;
                    if let Some(name) = name.as_mut() {
                        if name.len() + take <= MAX_COMMAND_NAME {
                            name.extend_from_slice(&input[..take]);
                        } else {
                            name.resize(MAX_COMMAND_NAME + 1, 0);
                        }
                    }
                    *remaining -= take as u64;
                    used = take;
                }
                while used < input.len() && *crlf < 2 {
                    let expected = if *crlf == 0 { b'\r' } else { b'\n' };
                    // redis-server skips the two bytes after a request's bulk string unread
                    // (`querypos += bulklen + 2`): framing them otherwise would cut the stream
                    // where the server does not.
                    if input[used] != expected && self.direction == Direction::Replies {
                        return Err(RespErrorKind::MissingCrlf);
                    }
                    *crlf += 1;
                    used += 1;
                }
                if *crlf == 2 {
                    if let Some(name) = name.take() {
                        self.command = command_name(&name);
                    }
                    self.state = State::Type;
                    self.element_done(used, out);
                }
                Ok(used)
            }
        }
    }

    /// A header line of type `kind` is whole.
    /// `used` bytes of the current input, up to the line's end, are not yet in the offset.
    fn header(
        &mut self,
        kind: u8,
        line: &[u8],
        used: usize,
        out: &mut Vec<RespMessage>,
    ) -> Result<(), RespErrorKind> {
        let text = || String::from_utf8_lossy(line).into_owned();
        if line == b"?" && b"$!=*%~|>".contains(&kind) {
            return Err(RespErrorKind::Streamed(kind as char));
        }
        match kind {
            b'+' | b'-' => {}
            b':' => {
                parse_integer(line).ok_or_else(|| RespErrorKind::BadScalar {
                    what: "integer",
                    value: text(),
                })?;
            }
            b'(' if !is_decimal(line) => {
                return Err(RespErrorKind::BadScalar {
                    what: "big number",
                    value: text(),
                })
            }
            b'_' if !line.is_empty() => {
                return Err(RespErrorKind::BadScalar {
                    what: "null",
                    value: text(),
                })
            }
            b'#' if line != b"t" && line != b"f" => {
                return Err(RespErrorKind::BadScalar {
                    what: "boolean",
                    value: text(),
                })
            }
            b',' if std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .is_none() =>
            {
                return Err(RespErrorKind::BadScalar {
                    what: "double",
                    value: text(),
                })
            }
            b'_' | b'#' | b',' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let len = parse_integer(line).ok_or_else(|| RespErrorKind::BadLength(text()))?;
                if len == -1 && kind == b'$' && self.direction == Direction::Replies {
                    // A RESP2 null bulk string.
                    self.element_done(used, out);
                    return Ok(());
                }
                let len = u64::try_from(len).map_err(|_| RespErrorKind::BadLength(text()))?;
                if len > self.limits.max_bulk {
                    return Err(RespErrorKind::BulkTooLong {
                        len,
                        limit: self.limits.max_bulk,
                    });
                }
                let first_word = self.direction == Direction::Requests && self.words == 0;
                if self.direction == Direction::Requests {
                    self.words += 1;
                }
                self.state = State::Bulk {
                    remaining: len,
                    crlf: 0,
                    name: first_word.then(Vec::new),
                };
            }
            _ => {
                // Aggregates: * % ~ | > (a request's elements are bulk strings, checked at
                // their type byte, so only a top-level `*` of one reaches here).
                let len = parse_integer(line).ok_or_else(|| RespErrorKind::BadLength(text()))?;
                if len == -1 && kind == b'*' {
                    // A RESP2 null array (a request's `*-1` is skipped by redis-server alike).
                    self.element_done(used, out);
                    return Ok(());
                }
                let len = u64::try_from(len).map_err(|_| RespErrorKind::BadLength(text()))?;
                if len > self.limits.max_elements {
                    return Err(RespErrorKind::TooManyElements {
                        len,
                        limit: self.limits.max_elements,
                    });
                }
                if self.open.len() >= self.limits.max_depth {
                    return Err(RespErrorKind::TooDeep {
                        limit: self.limits.max_depth,
                    });
                }
                let pairs = matches!(kind, b'%' | b'|');
                let remaining = if pairs { len.saturating_mul(2) } else { len };
                if remaining == 0 {
                    // An empty attribute annotates nothing: the value it precedes is still due.
                    if kind != b'|' {
                        self.element_done(used, out);
                    }
                    return Ok(());
                }
                self.open.push(Open {
                    remaining,
                    attribute: kind == b'|',
                });
            }
        }
        if matches!(kind, b'+' | b'-' | b':' | b'(' | b'_' | b'#' | b',') {
            self.element_done(used, out);
        }
        Ok(())
    }

    /// A value ended; `used` more bytes of the current input belong to it (the offset has not
    /// moved over them yet).
    fn element_done(&mut self, used: usize, out: &mut Vec<RespMessage>) {
        loop {
            let Some(parent) = self.open.last_mut() else {
                self.message_done(used, out);
                return;
            };
            parent.remaining -= 1;
            if parent.remaining > 0 {
                return;
            }
            let closed = self.open.pop().expect("the parent above");
            if closed.attribute {
                // The attribute is whole; the value it annotates follows in the same place.
                return;
            }
        }
    }

    fn message_done(&mut self, used: usize, out: &mut Vec<RespMessage>) {
        let command = match self.direction {
            // An empty request (`*0`, `*-1`, a blank inline line) names no command.
            Direction::Requests if self.words == 0 => Some(String::new()),
            _ => self.command.take(),
        };
        out.push(RespMessage {
            start: self.message_start.take().unwrap_or(self.offset),
            end: self.offset + used as u64,
            command,
            words: self.words,
        });
    }
}

/// How a line ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    /// CRLF, as every RESP line.
    Crlf,
    /// LF, a CR before it dropped: an inline command, as redis-server reads one.
    Lf,
}

/// Appends to `line` the bytes of `input` up to the line's end; returns how many it took and
/// whether the line ended (its end taken, not kept).
fn take_line(
    input: &[u8],
    line: &mut Vec<u8>,
    max: usize,
    end: LineEnd,
) -> Result<(usize, bool), RespErrorKind> {
    let Some(at) = input.iter().position(|&b| b == b'\n') else {
        line.extend_from_slice(input);
        // The CR of a CRLF may be the last byte of the limit.
        if line.len() > max + 1 {
            return Err(RespErrorKind::LineTooLong { limit: max });
        }
        return Ok((input.len(), false));
    };
    line.extend_from_slice(&input[..at]);
    let cr = line.last() == Some(&b'\r');
    if cr {
        line.pop();
    } else if end == LineEnd::Crlf {
        return Err(RespErrorKind::BareLineFeed);
    }
    if line.len() > max {
        return Err(RespErrorKind::LineTooLong { limit: max });
    }
    Ok((at + 1, true))
}

/// The words of an inline command, split on spaces and tabs (redis-server also honours quotes;
/// only the first word and the count are used here, and a quoted first word is rare).
fn split_inline(line: &[u8]) -> Vec<&[u8]> {
    line.split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty())
        .collect()
}

/// A command name upper-cased; `None` when longer than any command.
fn command_name(word: &[u8]) -> Option<String> {
    (word.len() <= MAX_COMMAND_NAME).then(|| String::from_utf8_lossy(word).to_ascii_uppercase())
}

/// An optional minus and decimal digits (a big number, or an integer of any size).
pub(crate) fn is_decimal(line: &[u8]) -> bool {
    let digits = line.strip_prefix(b"-").unwrap_or(line);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// A RESP integer: [`is_decimal`], within `i64`.
pub(crate) fn parse_integer(line: &[u8]) -> Option<i64> {
    is_decimal(line)
        .then(|| std::str::from_utf8(line).ok()?.parse().ok())
        .flatten()
}
