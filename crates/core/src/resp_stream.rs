//! RESP (Redis) as the data plane's [`StreamFramer`], beside HTTP/1.x: what the reply log and
//! the takeover plan need to carry a Redis connection through a primary's crash.
//!
//! A RESP reply logged whole is resent from the log like any other; requests no complete reply
//! answers are executed again. What RESP lacks is HTTP's range request: a server cannot be
//! asked for the rest of a reply it sent in part, and executing the request again could give
//! other bytes (a counter moved on, a list grew). So a reply cut by a takeover in the middle of
//! its logged parts cannot be finished, and the connection is lost, counted with its reason. A
//! proxy keeps that rare by logging RESP replies whole up to its limit.

use crate::stream_framer::{ProgressError, StreamFramer};

/// The RESP framer as the reply log sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RespStream;

/// Why a RESP reply cut by a takeover cannot be finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RespNotResumable {
    #[error(
        "a RESP server cannot be asked for the rest of a reply, and running the command again \
         may answer other bytes"
    )]
    NoRestOfReply,
}

impl StreamFramer for RespStream {
    /// Never reached: no RESP reply resumes.
    type ResumePoint = std::convert::Infallible;
    type NotResumable = RespNotResumable;
    /// Nothing to follow: whatever the parts hold, the answer is the same.
    type PartialReply = ();

    fn begin_partial_reply(&self) {}

    fn partial_reply_from(&self, _progress: Result<std::convert::Infallible, RespNotResumable>) {}

    fn feed_partial_reply(&self, _reply: &mut (), _bytes: &[u8]) {}

    fn resume_point(&self, _reply: &()) -> Result<std::convert::Infallible, RespNotResumable> {
        Err(RespNotResumable::NoRestOfReply)
    }

    fn check_resumable_request(
        &self,
        _pending: &[u8],
        _request_offset: u64,
        _request_index: u64,
    ) -> Result<(), RespNotResumable> {
        Err(RespNotResumable::NoRestOfReply)
    }

    /// One byte: the only reason there is.
    fn encode_progress(
        progress: &Result<std::convert::Infallible, RespNotResumable>,
        out: &mut Vec<u8>,
    ) {
        match progress {
            Ok(never) => match *never {},
            Err(RespNotResumable::NoRestOfReply) => out.push(0),
        }
    }

    fn decode_progress(
        bytes: &[u8],
    ) -> Result<Result<std::convert::Infallible, RespNotResumable>, ProgressError> {
        match bytes {
            [0] => Ok(Err(RespNotResumable::NoRestOfReply)),
            [] => Err(ProgressError {
                at: 0,
                what: "an empty RESP reply progress",
            }),
            [_] => Err(ProgressError {
                at: 0,
                what: "unknown reason a RESP reply is not resumable",
            }),
            _ => Err(ProgressError {
                at: 1,
                what: "bytes after the RESP reply progress",
            }),
        }
    }
}
