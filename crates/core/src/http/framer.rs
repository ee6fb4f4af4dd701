//! HTTP/1.x as the data plane's [`StreamFramer`]: a reply logged in parts is resumed by a range
//! request (see [`super::resume`]), when the reply has a strong validator and the request
//! being answered can be repeated with a range.

use super::fields::EntityTag;
use super::request::{RequestEvent, RequestFramer};
use super::resume::{CutFraming, CutPoint, NotResumable, StreamedReply};
use super::FramingLimits;
use crate::stream_framer::{ProgressError, StreamFramer};

/// Longest reason text of an unresumable reply carried in a hand-over.
const MAX_REASON_BYTES: usize = 512;

/// The HTTP/1.x framer, with the limits its heads are framed under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Http1 {
    pub limits: FramingLimits,
}

impl StreamFramer for Http1 {
    type ResumePoint = CutPoint;
    type NotResumable = NotResumable;
    type PartialReply = StreamedReply;

    fn begin_partial_reply(&self) -> StreamedReply {
        StreamedReply::new(self.limits)
    }

    fn partial_reply_from(&self, progress: Result<CutPoint, NotResumable>) -> StreamedReply {
        match progress {
            Ok(cut) => StreamedReply::from_cut(self.limits, &cut),
            Err(why) => StreamedReply::unresumable(self.limits, why),
        }
    }

    fn feed_partial_reply(&self, reply: &mut StreamedReply, bytes: &[u8]) {
        reply.feed(bytes);
    }

    fn resume_point(&self, reply: &StreamedReply) -> Result<CutPoint, NotResumable> {
        reply.cut_point()
    }

    /// The request must be the one the log expects, whole, and repeatable with a range (a GET
    /// without a range of its own, see [`super::RequestHead::resume_refusal`]).
    fn check_resumable_request(
        &self,
        pending: &[u8],
        request_offset: u64,
        request_index: u64,
    ) -> Result<(), NotResumable> {
        let mut framer = RequestFramer::starting_at(self.limits, request_offset, request_index);
        let mut events = Vec::new();
        // An error after the first head concerns a later request, answered normally.
        let _ = framer.feed(pending, &mut events);
        let head = events
            .iter()
            .find_map(|event| match event {
                RequestEvent::Head(head) => Some(head),
                _ => None,
            })
            .filter(|head| head.index == request_index && head.range.start == request_offset)
            .ok_or(NotResumable::RequestMissing)?;
        match head.resume_refusal() {
            Some(why) => Err(NotResumable::Request(why)),
            None => Ok(()),
        }
    }

    /// `1` a cut point (payload sent, framing, validator); `2` why the reply cannot be resumed
    /// (a code, with a status or a text for the kinds that carry one).
    fn encode_progress(progress: &Result<CutPoint, NotResumable>, out: &mut Vec<u8>) {
        match progress {
            Ok(cut) => {
                out.push(1);
                out.extend_from_slice(&cut.payload_sent.to_be_bytes());
                let (kind, remaining, crlf_owed) = match cut.framing {
                    CutFraming::Length { remaining } => (0, remaining, false),
                    CutFraming::Chunked {
                        remaining,
                        crlf_owed,
                    } => (1, remaining, crlf_owed),
                };
                out.push(kind);
                out.extend_from_slice(&remaining.to_be_bytes());
                out.push(u8::from(crlf_owed));
                out.push(u8::from(cut.validator.weak));
                put_short_bytes(out, &cut.validator.opaque);
            }
            Err(why) => {
                out.push(2);
                match why {
                    NotResumable::HeadIncomplete => out.push(1),
                    NotResumable::Status(status) => {
                        out.push(2);
                        out.extend_from_slice(&status.to_be_bytes());
                    }
                    NotResumable::NoValidator => out.push(3),
                    NotResumable::UntilClose => out.push(4),
                    NotResumable::InsideFraming => out.push(5),
                    NotResumable::Ended => out.push(6),
                    other => {
                        // Framing errors travel as their text; the reasons only the backup's
                        // own plan finds (the request) never describe a reply handed over.
                        out.push(0);
                        let text = match other {
                            NotResumable::Framing(text) => text.clone(),
                            other => other.to_string(),
                        };
                        let mut end = text.len().min(MAX_REASON_BYTES);
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        put_short_bytes(out, &text.as_bytes()[..end]);
                    }
                }
            }
        }
    }

    fn decode_progress(bytes: &[u8]) -> Result<Result<CutPoint, NotResumable>, ProgressError> {
        let mut f = Reader { bytes, at: 0 };
        let progress = match f.byte()? {
            1 => {
                let payload_sent = f.u64()?;
                let framing = f.byte()?;
                let remaining = f.u64()?;
                let crlf_owed = f.byte()?;
                if payload_sent.checked_add(remaining).is_none() {
                    return Err(f.malformed("a reply longer than any stream"));
                }
                let framing = match (framing, crlf_owed) {
                    (0, 0) => CutFraming::Length { remaining },
                    (1, crlf_owed @ (0 | 1)) => CutFraming::Chunked {
                        remaining,
                        crlf_owed: crlf_owed == 1,
                    },
                    _ => return Err(f.malformed("unknown reply framing")),
                };
                let weak = f.byte()?;
                if weak > 1 {
                    return Err(f.malformed("invalid weak flag"));
                }
                let opaque = f.short_bytes()?.to_vec();
                Ok(CutPoint {
                    validator: EntityTag {
                        weak: weak == 1,
                        opaque,
                    },
                    payload_sent,
                    framing,
                })
            }
            2 => Err(match f.byte()? {
                0 => NotResumable::Framing(String::from_utf8_lossy(f.short_bytes()?).into_owned()),
                1 => NotResumable::HeadIncomplete,
                2 => NotResumable::Status(u16::from_be_bytes(f.array()?)),
                3 => NotResumable::NoValidator,
                4 => NotResumable::UntilClose,
                5 => NotResumable::InsideFraming,
                6 => NotResumable::Ended,
                _ => return Err(f.malformed("unknown reason a reply is not resumable")),
            }),
            _ => return Err(f.malformed("unknown reply progress")),
        };
        if f.at != bytes.len() {
            return Err(f.malformed("bytes after the reply progress"));
        }
        Ok(progress)
    }
}

/// A `u16` length, then the bytes (at most `u16::MAX`, cut there).
fn put_short_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a progress front to back, failing with where.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProgressError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(ProgressError {
                at: self.at,
                what: "shorter than its fields",
            })?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProgressError> {
        Ok(self.take(N)?.try_into().expect("N bytes taken"))
    }

    fn byte(&mut self) -> Result<u8, ProgressError> {
        Ok(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, ProgressError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn short_bytes(&mut self) -> Result<&'a [u8], ProgressError> {
        let len = u16::from_be_bytes(self.array()?);
        self.take(usize::from(len))
    }

    fn malformed(&self, what: &'static str) -> ProgressError {
        ProgressError { at: self.at, what }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(progress: Result<CutPoint, NotResumable>) {
        let mut out = Vec::new();
        Http1::encode_progress(&progress, &mut out);
        assert_eq!(Http1::decode_progress(&out), Ok(progress));
    }

    #[test]
    fn cut_points_and_reasons_survive_the_hand_over() {
        round_trip(Ok(CutPoint {
            validator: EntityTag {
                weak: false,
                opaque: b"abc".to_vec(),
            },
            payload_sent: 1_000,
            framing: CutFraming::Chunked {
                remaining: 7,
                crlf_owed: true,
            },
        }));
        round_trip(Err(NotResumable::Status(404)));
        round_trip(Err(NotResumable::Framing("a bad chunk size".into())));
    }

    #[test]
    fn a_truncated_or_padded_progress_is_refused_with_where() {
        let mut out = Vec::new();
        Http1::encode_progress(&Err(NotResumable::Status(500)), &mut out);
        assert_eq!(
            Http1::decode_progress(&out[..out.len() - 1]),
            Err(ProgressError {
                at: 2,
                what: "shorter than its fields"
            })
        );
        out.push(0);
        assert_eq!(
            Http1::decode_progress(&out),
            Err(ProgressError {
                at: 4,
                what: "bytes after the reply progress"
            })
        );
    }
}
