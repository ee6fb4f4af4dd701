//! HTTP/1.x as the proxy's [`ExchangeFramer`]: the framers of this module frame both streams,
//! requests carry a `Steadfast-Request-Id`, a cut reply is finished by a range request, and
//! the proxy's own replies are plain-text 400, 408 and 502 that close the connection.

use std::ops::Range;

use super::{
    ContinuationError, CutPoint, FramingError, Http1, ReplyBodyFraming, ReplyContinuation,
    ReplyEvent, ReplyHead, RequestEvent, RequestFramer, RequestHead, RequestId, ResponseFramer,
};
use crate::exchange_framer::{
    ExchangeError, ExchangeFramer, OwnReply, ReplyFinisher, ReplyHeadView, ReplyStream,
    RequestHeadView, RequestStream,
};

impl ExchangeFramer for Http1 {
    type RequestHead = RequestHead;
    type ReplyHead = ReplyHead;
    type Error = FramingError;
    type Requests = RequestFramer;
    type Replies = ResponseFramer;
    type Finisher = ReplyContinuation;

    fn requests_from(&self, offset: u64, index: u64) -> RequestFramer {
        RequestFramer::starting_at(self.limits, offset, index)
    }

    fn replies(&self) -> ResponseFramer {
        ResponseFramer::new(self.limits)
    }

    fn encode_request(&self, head: &RequestHead, connection_id: u64) -> Vec<u8> {
        head.encode_for_backend(&RequestId::new(connection_id, head.index))
    }

    /// The same request with `Range` from the payload the client has and `If-Range` on the
    /// cut reply's validator (see [`RequestHead::encode_resume_request`]).
    fn resume_request(
        &self,
        head: &RequestHead,
        connection_id: u64,
        cut: &CutPoint,
    ) -> Option<(Vec<u8>, ReplyContinuation)> {
        let id = RequestId::new(connection_id, head.index);
        let bytes = head.encode_resume_request(&id, cut.payload_sent, &cut.validator)?;
        Some((bytes, ReplyContinuation::new(cut.clone())))
    }

    fn own_reply(&self, reply: OwnReply<'_>) -> Vec<u8> {
        let (status, detail) = match reply {
            OwnReply::Malformed { detail } => ("400 Bad Request", detail),
            OwnReply::HeadTimeout { detail } => ("408 Request Timeout", detail),
            OwnReply::BackendUnreachable { detail } => ("502 Bad Gateway", detail),
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{detail}\n",
            detail.len() + 1
        )
        .into_bytes()
    }
}

impl RequestHeadView for RequestHead {
    fn index(&self) -> u64 {
        self.index
    }

    fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    fn is_idempotent(&self) -> bool {
        RequestHead::is_idempotent(self)
    }
}

impl ReplyHeadView for ReplyHead {
    fn index(&self) -> u64 {
        self.index
    }

    fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    fn declared_length(&self) -> Option<u64> {
        match self.body {
            ReplyBodyFraming::ContentLength(length) => Some(length),
            _ => None,
        }
    }
}

impl ExchangeError for FramingError {
    fn request_index(&self) -> u64 {
        self.index
    }
}

impl RequestStream<RequestHead, FramingError> for RequestFramer {
    fn feed(&mut self, bytes: &[u8], events: &mut Vec<RequestEvent>) -> Result<(), FramingError> {
        RequestFramer::feed(self, bytes, events)
    }

    fn finish(&mut self, events: &mut Vec<RequestEvent>) -> Result<(), FramingError> {
        RequestFramer::finish(self, events)
    }

    fn current_index(&self) -> u64 {
        RequestFramer::current_index(self)
    }

    fn at_request_boundary(&self) -> bool {
        RequestFramer::at_request_boundary(self)
    }

    fn reading_a_head(&self) -> bool {
        RequestFramer::reading_a_head(self)
    }
}

impl ReplyStream<RequestHead, ReplyHead, FramingError> for ResponseFramer {
    fn expect_reply_to(&mut self, request: &RequestHead) {
        ResponseFramer::expect_reply_to(self, request)
    }

    /// Only the method changes how a reply is framed; of the unframed request only a `HEAD`
    /// can be told apart (its reply has no body), and anything else is framed as a GET's.
    fn expect_reply_to_unframed(&mut self, bytes: &[u8]) {
        self.expect_reply(if bytes.starts_with(b"HEAD ") {
            "HEAD"
        } else {
            "GET"
        })
    }

    fn feed(&mut self, bytes: &[u8], events: &mut Vec<ReplyEvent>) -> Result<(), FramingError> {
        ResponseFramer::feed(self, bytes, events)
    }

    fn finish(&mut self, events: &mut Vec<ReplyEvent>) -> Result<(), FramingError> {
        ResponseFramer::finish(self, events)
    }

    fn at_reply_boundary(&self) -> bool {
        ResponseFramer::at_reply_boundary(self)
    }
}

impl ReplyFinisher<ReplyHead> for ReplyContinuation {
    type Error = ContinuationError;

    fn head(&mut self, head: &ReplyHead) -> Result<(), ContinuationError> {
        ReplyContinuation::head(self, head)
    }

    fn payload(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), ContinuationError> {
        ReplyContinuation::payload(self, bytes, out)
    }

    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), ContinuationError> {
        ReplyContinuation::end(self, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_replies_close_the_connection_and_say_why() {
        let reply = Http1::default().own_reply(OwnReply::BackendUnreachable {
            detail: "the backend cannot be reached: refused",
        });
        let text = String::from_utf8(reply).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        let body = "the backend cannot be reached: refused\n";
        assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text}");
        assert!(
            text.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{text}"
        );
    }

    #[test]
    fn own_replies_frame_as_one_whole_reply() {
        let http = Http1::default();
        for reply in [
            OwnReply::Malformed { detail: "bad" },
            OwnReply::HeadTimeout { detail: "slow" },
            OwnReply::BackendUnreachable { detail: "gone" },
        ] {
            let bytes = http.own_reply(reply);
            let mut framer = http.replies();
            ReplyStream::expect_reply_to_unframed(&mut framer, b"GET / HTTP/1.1\r\n");
            let mut events = Vec::new();
            ReplyStream::feed(&mut framer, &bytes, &mut events).expect("frames");
            assert!(
                events.iter().any(|event| matches!(
                    event,
                    ReplyEvent::End { range, closes_connection: true, .. }
                        if range.end == bytes.len() as u64
                )),
                "{reply:?}: {events:?}"
            );
        }
    }

    #[test]
    fn a_resume_request_asks_for_the_rest_against_the_validator() {
        let http = Http1::default();
        let mut requests = http.requests_from(0, 0);
        let mut events = Vec::new();
        RequestStream::feed(
            &mut requests,
            b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n",
            &mut events,
        )
        .expect("frames");
        let Some(RequestEvent::Head(head)) = events.first() else {
            panic!("no head: {events:?}");
        };
        let cut = CutPoint {
            validator: super::super::EntityTag {
                weak: false,
                opaque: b"v1".to_vec(),
            },
            payload_sent: 100,
            framing: super::super::CutFraming::Length { remaining: 5 },
        };
        let (bytes, _) = http.resume_request(head, 7, &cut).expect("a GET resumes");
        let text = String::from_utf8(bytes).expect("ascii");
        assert!(text.contains("Range: bytes=100-\r\n"), "{text}");
        assert!(text.contains("If-Range: \"v1\"\r\n"), "{text}");
        assert!(text.contains(&RequestId::new(7, 0).to_string()), "{text}");
    }
}
