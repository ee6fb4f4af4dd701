//! Accumulates the bytes of one head until it is complete, without copying what follows it.
//!
//! The end of a head is found by a byte scan for an empty line (`\n\n` or `\n\r\n`), so the
//! bytes after the head (a body, the next pipelined request) are never copied here, and the
//! head parser runs once per head instead of once per arriving piece. To still refuse garbage
//! early (a client that sends junk and waits), the parser also runs whenever the buffer has
//! doubled since the last run: amortised linear work whatever the split.

use super::{FramingErrorKind, FramingLimits};

/// Outcome of a head parse attempt on the buffered bytes.
pub(super) enum ParseOutcome<P> {
    Partial,
    /// The head is the first `len` bytes.
    Complete {
        len: usize,
        parsed: P,
    },
}

pub(super) enum HeadStep<P> {
    /// Every input byte was taken into the buffer; the head is not complete yet.
    NeedMore,
    Complete {
        parsed: P,
        /// Length of the whole head, including bytes buffered by earlier calls.
        head_len: usize,
        /// How many bytes of this call's input belong to the head.
        consumed: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    InLine,
    AfterLf,
    AfterLfCr,
}

#[derive(Debug, Clone)]
pub(super) struct HeadBuffer {
    bytes: Vec<u8>,
    line: LineState,
    only_empty_lines: bool,
    next_parse_at: usize,
}

impl HeadBuffer {
    pub(super) fn new() -> Self {
        HeadBuffer {
            bytes: Vec::new(),
            line: LineState::InLine,
            only_empty_lines: true,
            next_parse_at: 1,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether everything buffered so far is empty lines (no start line has begun).
    pub(super) fn holds_only_empty_lines(&self) -> bool {
        self.only_empty_lines
    }

    fn reset(&mut self) {
        self.bytes.clear();
        // Do not keep a 64 KiB allocation alive per idle connection because of one large head.
        if self.bytes.capacity() > 4096 {
            self.bytes.shrink_to(4096);
        }
        self.line = LineState::InLine;
        self.only_empty_lines = true;
        self.next_parse_at = 1;
    }

    pub(super) fn advance<P>(
        &mut self,
        input: &[u8],
        limits: &FramingLimits,
        mut parse: impl FnMut(&[u8]) -> Result<ParseOutcome<P>, FramingErrorKind>,
    ) -> Result<HeadStep<P>, FramingErrorKind> {
        let mut appended = 0usize;
        while appended < input.len() {
            let window = &input[appended..];
            let mut terminator_end = None;
            let mut over_limit = false;
            let mut examined = window.len();
            for (i, &byte) in window.iter().enumerate() {
                let buffered = self.bytes.len() + i;
                if buffered >= limits.max_head_bytes {
                    over_limit = true;
                    examined = i;
                    break;
                }
                if self.only_empty_lines && byte != b'\r' && byte != b'\n' {
                    self.only_empty_lines = false;
                }
                if self.only_empty_lines && buffered >= limits.max_leading_empty_line_bytes {
                    return Err(FramingErrorKind::TooManyEmptyLines {
                        limit: limits.max_leading_empty_line_bytes,
                    });
                }
                let ends_head = byte == b'\n' && self.line != LineState::InLine;
                self.line = match (self.line, byte) {
                    (_, b'\n') => LineState::AfterLf,
                    (LineState::AfterLf, b'\r') => LineState::AfterLfCr,
                    _ => LineState::InLine,
                };
                // Empty lines before the start line are skipped by the parser, not head ends.
                if ends_head && !self.only_empty_lines {
                    terminator_end = Some(i + 1);
                    examined = i + 1;
                    break;
                }
            }
            self.bytes.extend_from_slice(&window[..examined]);
            appended += examined;
            if terminator_end.is_some() || over_limit {
                if let ParseOutcome::Complete { len, parsed } = parse(&self.bytes)? {
                    return self.complete(len, parsed, appended);
                }
                if over_limit {
                    return Err(FramingErrorKind::HeadTooLarge {
                        limit: limits.max_head_bytes,
                    });
                }
            }
        }
        if !self.only_empty_lines && self.bytes.len() >= self.next_parse_at {
            self.next_parse_at = self.bytes.len().saturating_mul(2);
            if let ParseOutcome::Complete { len, parsed } = parse(&self.bytes)? {
                return self.complete(len, parsed, appended);
            }
        }
        Ok(HeadStep::NeedMore)
    }

    /// Runs the parser over what is buffered, for a syntax error to report when the stream
    /// ends inside a head: the same error whatever the split, since early parses only ever saw
    /// a prefix of these bytes.
    pub(super) fn syntax_error<P>(
        &self,
        mut parse: impl FnMut(&[u8]) -> Result<ParseOutcome<P>, FramingErrorKind>,
    ) -> Option<FramingErrorKind> {
        parse(&self.bytes).err()
    }

    fn complete<P>(
        &mut self,
        head_len: usize,
        parsed: P,
        appended_now: usize,
    ) -> Result<HeadStep<P>, FramingErrorKind> {
        // The parser may only end the head inside what this call appended: bytes of earlier
        // calls were already scanned and held no head end.
        let beyond_head = self.bytes.len().checked_sub(head_len);
        match beyond_head {
            Some(beyond) if beyond <= appended_now => {
                self.reset();
                Ok(HeadStep::Complete {
                    parsed,
                    head_len,
                    consumed: appended_now - beyond,
                })
            }
            _ => Err(FramingErrorKind::MalformedHead(
                "head parser and head scanner disagree on the end of the head",
            )),
        }
    }
}

/// Header fields a head is first parsed with room for, on the stack: most heads have a few.
const FEW_HEADERS: usize = 64;

/// Runs `attempt` (a parse of one head) with room for [`FEW_HEADERS`] header fields, then
/// four times as many each time the head has more, up to `max_headers`: room for thousands
/// on every parse would cost every request.
pub(super) fn parse_with_room<'b, T>(
    max_headers: usize,
    mut attempt: impl FnMut(&mut [httparse::Header<'b>]) -> Result<T, httparse::Error>,
) -> Result<T, httparse::Error> {
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    let mut room = FEW_HEADERS.min(max_headers);
    let mut outcome = attempt(&mut few[..room]);
    while matches!(outcome, Err(httparse::Error::TooManyHeaders)) && room < max_headers {
        room = room.saturating_mul(4).min(max_headers);
        outcome = attempt(&mut vec![httparse::EMPTY_HEADER; room]);
    }
    outcome
}

/// Maps a head parser error to our error kind.
pub(super) fn parse_error(error: httparse::Error, limits: &FramingLimits) -> FramingErrorKind {
    match error {
        httparse::Error::TooManyHeaders => FramingErrorKind::TooManyHeaders {
            limit: limits.max_headers,
        },
        httparse::Error::HeaderName => FramingErrorKind::MalformedHead("invalid header name"),
        httparse::Error::HeaderValue => FramingErrorKind::MalformedHead("invalid header value"),
        httparse::Error::NewLine => FramingErrorKind::MalformedHead("invalid line ending"),
        httparse::Error::Status => FramingErrorKind::MalformedHead("invalid status line"),
        httparse::Error::Token => FramingErrorKind::MalformedHead("invalid token in start line"),
        httparse::Error::Version => FramingErrorKind::MalformedHead("invalid HTTP version"),
    }
}
