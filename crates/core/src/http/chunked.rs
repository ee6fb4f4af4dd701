//! Chunked transfer coding (RFC 9112 §7.1), decoded as ranges without copying data.
//!
//! The framing bytes (size lines, the CRLF after each chunk, the trailer section) are checked
//! strictly: exact CRLF, no bare LF, no whitespace unless an extension follows, no sign or `0x`.
//! We forward chunked bodies verbatim, so anything a backend might read differently from us is a
//! desynchronisation risk and is refused instead.

use std::ops::Range;

use super::{FramingErrorKind, FramingLimits};

/// What a range reported by the decoder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkPiece {
    /// Chunk data: the message's payload.
    Data,
    /// Size lines, CRLFs after data, the last chunk and the trailer section.
    Framing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizePhase {
    Digits,
    WhitespaceBeforeExtension,
    Extension,
    Cr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size {
        value: u64,
        digits: u32,
        phase: SizePhase,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerName,
    TrailerValue,
    TrailerCr,
    FinalLf,
    Done,
}

#[derive(Debug, Clone)]
pub(super) struct ChunkedDecoder {
    state: ChunkState,
    size_line_len: usize,
    trailer_len: usize,
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80
}

impl ChunkedDecoder {
    pub(super) fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
                phase: SizePhase::Digits,
            },
            size_line_len: 0,
            trailer_len: 0,
        }
    }

    /// A decoder standing where [`ChunkedDecoder::data_boundary`] would report
    /// `(remaining, crlf_owed)`; `None` for a pair it never reports.
    pub(super) fn at_data_boundary(remaining: u64, crlf_owed: bool) -> Option<Self> {
        let state = match (remaining, crlf_owed) {
            (0, false) => return Some(ChunkedDecoder::new()),
            (0, true) => ChunkState::DataCr,
            (remaining, true) => ChunkState::Data { remaining },
            (_, false) => return None,
        };
        Some(ChunkedDecoder {
            state,
            size_line_len: 0,
            trailer_len: 0,
        })
    }

    pub(super) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Where the decoder stands, if another encoder could take over from here: inside chunk
    /// data (`Some((remaining, true))`, remaining 0 when only the CRLF after the data is owed)
    /// or at the start of a size line (`Some((0, false))`). `None` inside any other framing.
    pub(super) fn data_boundary(&self) -> Option<(u64, bool)> {
        match self.state {
            ChunkState::Data { remaining } => Some((remaining, true)),
            ChunkState::DataCr => Some((0, true)),
            ChunkState::Size {
                digits: 0,
                phase: SizePhase::Digits,
                ..
            } if self.size_line_len == 0 => Some((0, false)),
            _ => None,
        }
    }

    /// Decodes `input`, which starts at stream offset `base`, and reports its data and framing
    /// runs in order through `emit`. Stops after the end of the body; returns how many bytes of
    /// `input` belong to the body. An error carries the offset of the offending byte; the
    /// ranges before it have been emitted.
    pub(super) fn advance(
        &mut self,
        input: &[u8],
        base: u64,
        limits: &FramingLimits,
        mut emit: impl FnMut(ChunkPiece, Range<u64>),
    ) -> Result<usize, (u64, FramingErrorKind)> {
        let at = |i: usize| base + i as u64;
        let mut i = 0usize;
        let mut framing_start: Option<usize> = None;
        while i < input.len() && self.state != ChunkState::Done {
            if let ChunkState::Data { remaining } = self.state {
                if let Some(start) = framing_start.take() {
                    emit(ChunkPiece::Framing, at(start)..at(i));
                }
                let available = (input.len() - i) as u64;
                let take = remaining.min(available);
                emit(ChunkPiece::Data, at(i)..at(i) + take);
                // take <= available, which came from a usize.
                i += take as usize;
                self.state = if take == remaining {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data {
                        remaining: remaining - take,
                    }
                };
                continue;
            }
            framing_start.get_or_insert(i);
            if let Err(kind) = self.framing_byte(input[i], limits) {
                // Report the framing accepted so far: events tile the stream up to the error
                // whatever the split.
                if let Some(start) = framing_start.filter(|&start| start < i) {
                    emit(ChunkPiece::Framing, at(start)..at(i));
                }
                return Err((at(i), kind));
            }
            i += 1;
        }
        if let Some(start) = framing_start {
            emit(ChunkPiece::Framing, at(start)..at(i));
        }
        Ok(i)
    }

    fn framing_byte(&mut self, byte: u8, limits: &FramingLimits) -> Result<(), FramingErrorKind> {
        let invalid_size = |reason| FramingErrorKind::InvalidChunkSize { reason };
        let invalid_trailer = |reason| FramingErrorKind::InvalidTrailer { reason };
        match self.state {
            ChunkState::Size {
                value,
                digits,
                phase,
            } => {
                self.size_line_len += 1;
                if self.size_line_len > limits.max_chunk_line_bytes {
                    return Err(FramingErrorKind::ChunkLineTooLong {
                        limit: limits.max_chunk_line_bytes,
                    });
                }
                let next_phase = |phase| ChunkState::Size {
                    value,
                    digits,
                    phase,
                };
                self.state = match (phase, byte) {
                    (SizePhase::Digits, b) if b.is_ascii_hexdigit() => {
                        if value > u64::MAX >> 4 {
                            return Err(invalid_size("chunk size overflows 64 bits"));
                        }
                        // is_ascii_hexdigit guarantees to_digit succeeds.
                        let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                        ChunkState::Size {
                            value: (value << 4) | digit,
                            digits: digits + 1,
                            phase,
                        }
                    }
                    (SizePhase::Digits, b';' | b' ' | b'\t' | b'\r') if digits == 0 => {
                        return Err(invalid_size("no hex digits in chunk size"));
                    }
                    (SizePhase::Digits, b';') => next_phase(SizePhase::Extension),
                    (SizePhase::Digits, b' ' | b'\t') => {
                        next_phase(SizePhase::WhitespaceBeforeExtension)
                    }
                    (SizePhase::Digits, b'\r') => next_phase(SizePhase::Cr),
                    (SizePhase::Digits, b'\n') | (SizePhase::Extension, b'\n') => {
                        return Err(invalid_size("bare LF ends the chunk size line"));
                    }
                    (SizePhase::Digits, _) => {
                        return Err(invalid_size("invalid character in chunk size"));
                    }
                    (SizePhase::WhitespaceBeforeExtension, b' ' | b'\t') => self.state,
                    (SizePhase::WhitespaceBeforeExtension, b';') => {
                        next_phase(SizePhase::Extension)
                    }
                    // Whitespace before the line end: servers take it, so must the proxy.
                    (SizePhase::WhitespaceBeforeExtension, b'\r') => next_phase(SizePhase::Cr),
                    (SizePhase::WhitespaceBeforeExtension, _) => {
                        return Err(invalid_size(
                            "whitespace after chunk size not followed by an extension or the \
                             line end",
                        ));
                    }
                    (SizePhase::Extension, b'\r') => next_phase(SizePhase::Cr),
                    (SizePhase::Extension, b) if is_field_value_byte(b) => self.state,
                    (SizePhase::Extension, _) => {
                        return Err(invalid_size("control character in chunk extension"));
                    }
                    (SizePhase::Cr, b'\n') => {
                        self.size_line_len = 0;
                        if value == 0 {
                            ChunkState::TrailerLineStart
                        } else {
                            ChunkState::Data { remaining: value }
                        }
                    }
                    (SizePhase::Cr, _) => {
                        return Err(invalid_size("CR not followed by LF"));
                    }
                };
            }
            ChunkState::DataCr => {
                if byte != b'\r' {
                    return Err(FramingErrorKind::MissingChunkDataCrlf);
                }
                self.state = ChunkState::DataLf;
            }
            ChunkState::DataLf => {
                if byte != b'\n' {
                    return Err(FramingErrorKind::MissingChunkDataCrlf);
                }
                self.state = ChunkState::Size {
                    value: 0,
                    digits: 0,
                    phase: SizePhase::Digits,
                };
            }
            ChunkState::TrailerLineStart
            | ChunkState::TrailerName
            | ChunkState::TrailerValue
            | ChunkState::TrailerCr
            | ChunkState::FinalLf => {
                self.trailer_len += 1;
                if self.trailer_len > limits.max_trailer_bytes {
                    return Err(FramingErrorKind::TrailerTooLarge {
                        limit: limits.max_trailer_bytes,
                    });
                }
                self.state = match (self.state, byte) {
                    (ChunkState::TrailerLineStart, b'\r') => ChunkState::FinalLf,
                    (ChunkState::TrailerLineStart, b' ' | b'\t') => {
                        return Err(invalid_trailer("obsolete line folding"));
                    }
                    (ChunkState::TrailerLineStart | ChunkState::TrailerName, b)
                        if is_token_byte(b) =>
                    {
                        ChunkState::TrailerName
                    }
                    (ChunkState::TrailerName, b':') => ChunkState::TrailerValue,
                    (ChunkState::TrailerLineStart | ChunkState::TrailerValue, b'\n') => {
                        return Err(invalid_trailer("bare LF ends a trailer line"));
                    }
                    (ChunkState::TrailerLineStart | ChunkState::TrailerName, _) => {
                        return Err(invalid_trailer("invalid character in trailer field name"));
                    }
                    (ChunkState::TrailerValue, b'\r') => ChunkState::TrailerCr,
                    (ChunkState::TrailerValue, b) if is_field_value_byte(b) => self.state,
                    (ChunkState::TrailerValue, _) => {
                        return Err(invalid_trailer("control character in trailer field value"));
                    }
                    (ChunkState::TrailerCr, b'\n') => ChunkState::TrailerLineStart,
                    (ChunkState::FinalLf, b'\n') => ChunkState::Done,
                    _ => return Err(invalid_trailer("CR not followed by LF")),
                };
            }
            ChunkState::Data { .. } | ChunkState::Done => {}
        }
        Ok(())
    }
}
