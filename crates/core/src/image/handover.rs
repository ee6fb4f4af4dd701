//! What a primary hands a backup that joins after a connection opened: the decision, from what
//! the proxy session knows and what its socket says, of whether the connection can be adopted
//! now and where its two streams stand.
//!
//! A connection can be adopted wherever it stands (between requests, in an upload, in a
//! download) as long as the session still holds every byte the backup would need and the
//! client cannot have: the client bytes from the first request no complete reply answers (a
//! takeover sends those requests again), and the reply bytes from the first one the client has
//! not acknowledged (a takeover sends them again). The socket's numbers say where the client
//! is; bytes the kernel received that the session has not read yet must be read first, or the
//! backup's log would lack them.

/// What the proxy session knows of its connection, as stream offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStreams {
    pub client_isn: u32,
    /// Client bytes the session has read.
    pub received: u64,
    /// The first client byte no complete reply answers.
    pub answered: u64,
    /// The session holds the client bytes from here to `received`; `None` when it gave up
    /// holding them (a request longer than it keeps).
    pub request_held_from: Option<u64>,
    /// Reply bytes handed to the kernel (its send sequence counts them).
    pub sent: u64,
    /// Reply bytes the session has committed to send unlogged: `sent` plus the rest of a
    /// piece it is writing. The backup's log continues from here.
    pub reply_end: u64,
    /// The session holds the reply bytes from here to `reply_end`.
    pub reply_held_from: u64,
    /// The client half-closed the connection (a takeover could not carry it on).
    pub client_finished: bool,
}

/// The socket's view: `rcv_nxt` and `write_seq` (TCP_QUEUE_SEQ in repair mode) and the reply
/// bytes it has not seen acknowledged (SIOCOUTQ), read in that order or before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketStreams {
    pub rcv_nxt: u32,
    pub write_seq: u32,
    pub unacknowledged: u64,
}

/// Where the hand-over stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverStep {
    /// The kernel holds this many client bytes the session has not read: read exactly these,
    /// then decide again with fresh numbers.
    ReadFirst {
        bytes: u64,
    },
    Ready(Handover),
}

/// The numbers of a connection handed over now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    /// The server's ISN, from the socket's send sequence and the reply bytes sent.
    pub server_isn: u32,
    /// The first reply byte the client had not acknowledged when the socket was read (it may
    /// have acknowledged more since: the backup's log starts no later than the client).
    pub reply_acked: u64,
}

/// Why a connection cannot be adopted now (the session tries again later, or never).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoverWait {
    #[error("the client half-closed the connection")]
    ClientFinished,
    #[error("the unanswered request is longer than the session keeps")]
    RequestTooLong,
    /// A session keeps every reply byte until its client acknowledges it, so this means the
    /// session's numbers and the socket's disagree; waiting (for the acknowledgement) is safe.
    #[error(
        "the client has not acknowledged reply bytes from {acked} on, and the session keeps \
         only those from {held_from} on"
    )]
    ReplyNotHeld { acked: u64, held_from: u64 },
    #[error("the socket's numbers do not fit the session's: {0}")]
    Inconsistent(&'static str),
    /// The kernel holds client bytes beyond a gap. They may have come straight to this node
    /// before the backup stood in front of it, and once the client fills the gap they are
    /// acknowledged without the backup ever holding them: the hand-over waits until the gap is
    /// filled and they can be read (and handed over).
    #[error("the kernel holds client bytes beyond a gap in the stream")]
    BeyondAGap,
}

impl HandoverWait {
    /// A short label, usable as a counter name.
    pub fn label(&self) -> &'static str {
        match self {
            HandoverWait::ClientFinished => "client-finished",
            HandoverWait::RequestTooLong => "request-too-long",
            HandoverWait::ReplyNotHeld { .. } => "reply-not-held",
            HandoverWait::Inconsistent(_) => "inconsistent",
            HandoverWait::BeyondAGap => "beyond-a-gap",
        }
    }

    /// Whether waiting can help: a half-closed connection never becomes adoptable.
    pub fn may_pass(&self) -> bool {
        !matches!(self, HandoverWait::ClientFinished)
    }
}

/// More unread client bytes than this cannot be in a receive queue: the numbers are wrong.
const MAX_UNREAD: u64 = 1 << 30;

/// Decides whether the connection can be handed over now; see the module documentation.
pub fn handover(
    session: &SessionStreams,
    socket: &SocketStreams,
) -> Result<HandoverStep, HandoverWait> {
    if session.client_finished {
        return Err(HandoverWait::ClientFinished);
    }
    let expected = session
        .client_isn
        .wrapping_add(1)
        .wrapping_add(session.received as u32);
    // Serial arithmetic: the kernel can only be ahead of what the session read.
    let unread = socket.rcv_nxt.wrapping_sub(expected) as i32;
    if unread < 0 {
        return Err(HandoverWait::Inconsistent(
            "the kernel received fewer client bytes than the session read",
        ));
    }
    if unread as u64 > MAX_UNREAD {
        return Err(HandoverWait::Inconsistent("too many unread client bytes"));
    }
    if unread > 0 {
        return Ok(HandoverStep::ReadFirst {
            bytes: unread as u64,
        });
    }
    match session.request_held_from {
        Some(from) if from <= session.answered && session.answered <= session.received => {}
        Some(_) if session.answered > session.received => {
            return Err(HandoverWait::Inconsistent(
                "the answered requests end beyond the bytes received",
            ))
        }
        _ => return Err(HandoverWait::RequestTooLong),
    }
    if socket.unacknowledged > session.sent || session.sent > session.reply_end {
        return Err(HandoverWait::Inconsistent(
            "more reply bytes unacknowledged than sent",
        ));
    }
    let reply_acked = session.sent - socket.unacknowledged;
    if reply_acked < session.reply_held_from {
        return Err(HandoverWait::ReplyNotHeld {
            acked: reply_acked,
            held_from: session.reply_held_from,
        });
    }
    Ok(HandoverStep::Ready(Handover {
        server_isn: socket
            .write_seq
            .wrapping_sub(1)
            .wrapping_sub(session.sent as u32),
        reply_acked,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A download in flight: 300 request bytes answered by nothing yet, 10 000 reply bytes
    /// sent of a 14 000-byte piece, 4 000 of them unacknowledged, all held from 5 000 on.
    fn downloading() -> (SessionStreams, SocketStreams) {
        let client_isn = u32::MAX - 100;
        let server_isn = 7_000u32;
        let session = SessionStreams {
            client_isn,
            received: 300,
            answered: 0,
            request_held_from: Some(0),
            sent: 10_000,
            reply_end: 14_000,
            reply_held_from: 5_000,
            client_finished: false,
        };
        let socket = SocketStreams {
            rcv_nxt: client_isn.wrapping_add(1).wrapping_add(300),
            write_seq: server_isn.wrapping_add(1).wrapping_add(10_000),
            unacknowledged: 4_000,
        };
        (session, socket)
    }

    #[test]
    fn a_download_in_flight_is_handed_over_from_what_the_client_acknowledged() {
        let (session, socket) = downloading();
        assert_eq!(
            handover(&session, &socket),
            Ok(HandoverStep::Ready(Handover {
                server_isn: 7_000,
                reply_acked: 6_000,
            }))
        );
    }

    #[test]
    fn client_bytes_the_session_has_not_read_are_read_first() {
        let (session, mut socket) = downloading();
        socket.rcv_nxt = socket.rcv_nxt.wrapping_add(1_234);
        assert_eq!(
            handover(&session, &socket),
            Ok(HandoverStep::ReadFirst { bytes: 1_234 })
        );
        socket.rcv_nxt = socket.rcv_nxt.wrapping_sub(2_000);
        assert!(matches!(
            handover(&session, &socket),
            Err(HandoverWait::Inconsistent(_))
        ));
    }

    #[test]
    fn reply_bytes_the_session_no_longer_holds_make_it_wait() {
        let (mut session, socket) = downloading();
        session.reply_held_from = 6_001;
        let wait = handover(&session, &socket).unwrap_err();
        assert_eq!(
            wait,
            HandoverWait::ReplyNotHeld {
                acked: 6_000,
                held_from: 6_001
            }
        );
        assert!(wait.may_pass());
    }

    #[test]
    fn an_upload_longer_than_kept_or_a_half_closed_client_is_not_handed_over() {
        let (mut session, socket) = downloading();
        session.request_held_from = None;
        assert_eq!(
            handover(&session, &socket),
            Err(HandoverWait::RequestTooLong)
        );
        session.request_held_from = Some(1);
        assert_eq!(
            handover(&session, &socket),
            Err(HandoverWait::RequestTooLong),
            "bytes of the unanswered request are missing"
        );
        session.request_held_from = Some(0);
        session.client_finished = true;
        let wait = handover(&session, &socket).unwrap_err();
        assert_eq!(wait, HandoverWait::ClientFinished);
        assert!(!wait.may_pass());
    }

    #[test]
    fn between_requests_with_everything_acknowledged_nothing_is_carried() {
        let (mut session, mut socket) = downloading();
        session.answered = 300;
        session.reply_end = 10_000;
        session.reply_held_from = 10_000;
        socket.unacknowledged = 0;
        assert_eq!(
            handover(&session, &socket),
            Ok(HandoverStep::Ready(Handover {
                server_isn: 7_000,
                reply_acked: 10_000,
            }))
        );
    }
}
