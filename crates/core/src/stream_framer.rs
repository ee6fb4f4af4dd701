//! What the protocol-neutral parts of the duplex data plane need to know of the protocol a
//! service speaks: the reply log ([`crate::reply_log`]), the replication wire's hand-over of a
//! connection ([`crate::replication_wire`]) and the takeover plan work on byte streams, reply
//! pieces and request offsets, and ask the service's framer only about a reply logged in parts.
//!
//! A reply too long to be logged whole goes to the backup in parts, each before the client
//! gets it (I2). When the primary dies in the middle of one, the client already holds its first
//! part: the new primary can finish it only where the protocol lets it ask the server for the
//! rest alone (HTTP: a range request against a strong validator). The framer follows such a
//! reply as its parts are logged, says where a takeover would resume it ([`resume_point`]) or
//! why it cannot, and whether the request being answered allows that at all.
//!
//! HTTP/1.x ([`crate::http::Http1`]) is the first framer. A protocol whose replies cannot be
//! finished that way (RESP: a server has no "rest of this reply") says so for every cut reply;
//! its connections are then lost only when a takeover falls inside a reply logged in parts.
//!
//! [`resume_point`]: StreamFramer::resume_point

use std::fmt::Debug;

/// The protocol knowledge the reply log and the takeover plan need. `Clone + Default`: a log
/// is built with its framer, and copied whole by the crash harness.
pub trait StreamFramer: Clone + Debug + Default + Send + Sync + 'static {
    /// Where a reply cut by a takeover resumes, and what the client still needs after it.
    type ResumePoint: Clone + Debug + PartialEq + Eq + Send + Sync;
    /// Why a reply cut by a takeover cannot be finished.
    type NotResumable: std::error::Error + Clone + Debug + PartialEq + Eq + Send + Sync;
    /// A reply logged in parts, followed from its first byte.
    type PartialReply: Clone + Debug + Send + Sync;

    /// A reply whose first part is about to be logged.
    fn begin_partial_reply(&self) -> Self::PartialReply;

    /// The rest of a reply another node followed up to `progress` (a connection handed to a
    /// backup in the middle of a reply): fed what follows, it says what a reply followed from
    /// its first byte would say.
    fn partial_reply_from(
        &self,
        progress: Result<Self::ResumePoint, Self::NotResumable>,
    ) -> Self::PartialReply;

    /// The next logged part of `reply`.
    fn feed_partial_reply(&self, reply: &mut Self::PartialReply, bytes: &[u8]);

    /// Where a takeover would resume `reply` after the parts fed so far, or why it could not.
    fn resume_point(
        &self,
        reply: &Self::PartialReply,
    ) -> Result<Self::ResumePoint, Self::NotResumable>;

    /// Whether the request being answered, the first of `pending` (the client bytes from
    /// `request_offset` on, starting request `request_index`), lets a takeover ask for the rest
    /// of its reply.
    fn check_resumable_request(
        &self,
        pending: &[u8],
        request_offset: u64,
        request_index: u64,
    ) -> Result<(), Self::NotResumable>;

    /// The bytes that carry `progress` in a hand-over to a backup (see
    /// [`crate::replication_wire::ReplicationFrame::Adopt`]).
    fn encode_progress(progress: &Result<Self::ResumePoint, Self::NotResumable>, out: &mut Vec<u8>);

    /// What [`encode_progress`](Self::encode_progress) wrote, or what is wrong with `bytes`.
    fn decode_progress(
        bytes: &[u8],
    ) -> Result<Result<Self::ResumePoint, Self::NotResumable>, ProgressError>;
}

/// A hand-over's reply progress that its framer cannot read: the stream that carried it has
/// no trustworthy content, as for any malformed frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reply progress of a hand-over, byte {at}: {what}")]
pub struct ProgressError {
    pub at: usize,
    pub what: &'static str,
}
