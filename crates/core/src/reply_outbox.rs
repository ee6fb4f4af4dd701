//! The reply stream of one client connection at the primary, from the server's bytes to the
//! client's acknowledgement: pieces waiting to be written (each once the backup holds it), the
//! piece being written, and the bytes written that the client has not acknowledged yet.
//!
//! A backup that joins after the connection opened adopts it wherever its reply stands
//! ([`crate::image::handover`]): it is given the bytes the client lacks, from what the client
//! acknowledged to the end of what was released for writing ([`ReplyOutbox::bytes_from`]), and
//! then the pieces still waiting are logged to it at the offsets that follow
//! ([`ReplyOutbox::waiting_mut`]), as if read after the hand-over. This module keeps the
//! offsets that make the two meet without a gap or an overlap; it holds no socket and no clock
//! (the shell passes in what the socket says the client acknowledged).
//!
//! Offsets count reply-stream bytes from the connection's start (or from where a takeover
//! resumed it):
//!
//! ```text
//!   kept_from ≤ acked ≤ sent ≤ released_end ≤ next_piece_offset
//!   |-- kept (written) --|-- being written --|-- waiting pieces --|
//! ```

use std::collections::VecDeque;

/// A piece read from the server that waits to be written; `meta` is the shell's (the request
/// it answers, its kind, the backup's acknowledgement to wait for).
#[derive(Debug, Clone)]
pub struct WaitingPiece<M> {
    pub bytes: Vec<u8>,
    pub meta: M,
}

#[derive(Debug, Clone)]
pub struct ReplyOutbox<M> {
    waiting: VecDeque<WaitingPiece<M>>,
    waiting_bytes: u64,
    /// The end of the bytes released for writing: the written ones and the piece being written.
    released_end: u64,
    /// Bytes handed to the kernel.
    sent: u64,
    /// Written bytes the client may not have acknowledged, in the pieces they were written in,
    /// from `kept_from` on; the piece being written is not among them until it is written.
    kept: VecDeque<Vec<u8>>,
    /// The bytes in `kept`.
    kept_bytes: u64,
    kept_from: u64,
    /// Whether written bytes are kept at all (only where a backup may adopt the connection).
    keeps: bool,
}

impl<M> ReplyOutbox<M> {
    /// A reply stream at its start.
    pub fn new(keeps: bool) -> ReplyOutbox<M> {
        ReplyOutbox::resumed(keeps, 0, 0)
    }

    /// A reply stream that a takeover resumes: the logged bytes before `released_end` are the
    /// client's, but for the last `unacknowledged`, which are written again first (with
    /// [`ReplyOutbox::sent_bytes`] and [`ReplyOutbox::written`], as a released piece is).
    pub fn resumed(keeps: bool, released_end: u64, unacknowledged: u64) -> ReplyOutbox<M> {
        let from = released_end
            .checked_sub(unacknowledged)
            .expect("the unacknowledged bytes lie inside the stream");
        ReplyOutbox {
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            released_end,
            sent: from,
            kept: VecDeque::new(),
            kept_bytes: 0,
            kept_from: from,
            keeps,
        }
    }

    /// Where the next piece read from the server starts: the offset it is logged at.
    pub fn next_piece_offset(&self) -> u64 {
        self.released_end + self.waiting_bytes
    }

    /// The end of the bytes released for writing (those written and the piece being written).
    pub fn released_end(&self) -> u64 {
        self.released_end
    }

    /// The bytes handed to the kernel so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Where the written bytes kept for a hand-over start.
    pub fn kept_from(&self) -> u64 {
        self.kept_from
    }

    /// Whether written bytes wait for the client's acknowledgement.
    pub fn keeps_any(&self) -> bool {
        !self.kept.is_empty()
    }

    /// How many written bytes wait for the client's acknowledgement.
    pub fn kept_bytes(&self) -> u64 {
        self.kept_bytes
    }

    pub fn push(&mut self, piece: WaitingPiece<M>) {
        self.waiting_bytes += piece.bytes.len() as u64;
        self.waiting.push_back(piece);
    }

    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    pub fn waiting_bytes(&self) -> u64 {
        self.waiting_bytes
    }

    pub fn front_mut(&mut self) -> Option<&mut WaitingPiece<M>> {
        self.waiting.front_mut()
    }

    /// The waiting pieces, oldest first, each with the reply offset it starts at.
    pub fn waiting(&self) -> impl Iterator<Item = (u64, &WaitingPiece<M>)> {
        let mut offset = self.released_end;
        self.waiting.iter().map(move |piece| {
            let at = offset;
            offset += piece.bytes.len() as u64;
            (at, piece)
        })
    }

    /// [`waiting`](Self::waiting), to change what the shell keeps of each.
    pub fn waiting_mut(&mut self) -> impl Iterator<Item = (u64, &mut WaitingPiece<M>)> {
        let mut offset = self.released_end;
        self.waiting.iter_mut().map(move |piece| {
            let at = offset;
            offset += piece.bytes.len() as u64;
            (at, piece)
        })
    }

    /// Takes the oldest waiting piece to be written: its bytes count as released from now on.
    /// The previous one must have been written whole.
    pub fn release_front(&mut self) -> Option<WaitingPiece<M>> {
        assert_eq!(
            self.sent, self.released_end,
            "a piece is released only once the one before it is written"
        );
        let piece = self.waiting.pop_front()?;
        let len = piece.bytes.len() as u64;
        self.waiting_bytes -= len;
        self.released_end += len;
        Some(piece)
    }

    /// `n` more bytes of the piece being written went to the kernel.
    pub fn sent_bytes(&mut self, n: usize) {
        self.sent += n as u64;
        assert!(
            self.sent <= self.released_end,
            "more bytes sent than released"
        );
    }

    /// The piece being written (`bytes`, those released last) is written whole: kept until the
    /// client acknowledges it, or forgotten where nothing is ever handed over.
    pub fn written(&mut self, bytes: Vec<u8>) {
        assert_eq!(self.sent, self.released_end, "the piece is written whole");
        if self.keeps {
            debug_assert_eq!(
                self.kept_from + self.kept_len() + bytes.len() as u64,
                self.released_end,
                "the kept bytes end where the written ones do"
            );
            self.kept_bytes += bytes.len() as u64;
            self.kept.push_back(bytes);
        } else {
            self.kept_from = self.released_end;
        }
    }

    /// The socket says the client lacks its last `unacknowledged` sent bytes: the kept pieces
    /// it acknowledged whole are dropped. Returns what the client acknowledged.
    pub fn acknowledged(&mut self, unacknowledged: u64) -> u64 {
        let acked = self.sent.saturating_sub(unacknowledged);
        while let Some(front) = self.kept.front() {
            let end = self.kept_from + front.len() as u64;
            if end > acked {
                break;
            }
            self.kept_from = end;
            self.kept_bytes -= front.len() as u64;
            self.kept.pop_front();
        }
        acked
    }

    /// The reply bytes from `from` to [`released_end`](Self::released_end): the kept ones, then
    /// `writing`, the piece being written (`None` between two writes). What a backup that adopts
    /// the connection needs of them when the client acknowledged `from`.
    pub fn bytes_from(&self, from: u64, writing: Option<&[u8]>) -> Vec<u8> {
        let kept_end = self.kept_from + self.kept_len();
        assert_eq!(
            kept_end + writing.map_or(0, |w| w.len() as u64),
            self.released_end,
            "the kept bytes and the piece being written end where the released ones do"
        );
        assert!(
            from >= self.kept_from && from <= self.released_end,
            "bytes from {from} asked, {}..{} kept",
            self.kept_from,
            self.released_end
        );
        let mut skip = (from - self.kept_from) as usize;
        let mut bytes = Vec::with_capacity((self.released_end - from) as usize);
        for piece in self.kept.iter().map(Vec::as_slice).chain(writing) {
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            bytes.extend_from_slice(&piece[skip..]);
            skip = 0;
        }
        bytes
    }

    fn kept_len(&self) -> u64 {
        debug_assert_eq!(
            self.kept_bytes,
            self.kept
                .iter()
                .map(|piece| piece.len() as u64)
                .sum::<u64>()
        );
        self.kept_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reply stream's byte at `offset`: every byte tells where it belongs.
    fn byte_at(offset: u64) -> u8 {
        (offset % 251) as u8
    }

    fn stream(from: u64, to: u64) -> Vec<u8> {
        (from..to).map(byte_at).collect()
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// The server's next piece, of this many bytes, waits.
        Read(usize),
        /// The oldest waiting piece is written, this many bytes per write.
        Write(usize),
        /// The client acknowledges up to this fraction (in 1/8) of what was sent.
        Ack(u8),
        /// A backup adopts the connection between two writes.
        HandOver,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..3000).prop_map(Step::Read),
            (1usize..1500).prop_map(Step::Write),
            (0u8..=8).prop_map(Step::Ack),
            Just(Step::HandOver),
        ]
    }

    /// What a backup adopting the connection gets (from the client's acknowledgement on), then
    /// the waiting pieces logged after it: exactly the stream from there to the next piece's
    /// offset, the waiting pieces each at the offset where its bytes belong.
    fn check_handover(
        outbox: &ReplyOutbox<u64>,
        acked: u64,
        writing: Option<&[u8]>,
    ) -> Result<(), TestCaseError> {
        let mut adopted = outbox.bytes_from(acked, writing);
        prop_assert_eq!(acked + adopted.len() as u64, outbox.released_end());
        for (offset, piece) in outbox.waiting() {
            prop_assert_eq!(
                offset,
                piece.meta,
                "a waiting piece logged at its own offset"
            );
            adopted.extend_from_slice(&piece.bytes);
        }
        prop_assert_eq!(adopted, stream(acked, outbox.next_piece_offset()));
        Ok(())
    }

    fn run(keeps: bool, start: u64, resent: u64, steps: Vec<Step>) -> Result<(), TestCaseError> {
        let mut outbox = ReplyOutbox::<u64>::resumed(keeps, start, resent);
        let mut acked = start - resent;
        if resent > 0 {
            outbox.sent_bytes(resent as usize);
            outbox.written(stream(start - resent, start));
        }
        let mut client = stream(0, start - resent);
        client.extend(stream(start - resent, start));
        for step in steps {
            match step {
                Step::Read(len) => {
                    let at = outbox.next_piece_offset();
                    outbox.push(WaitingPiece {
                        bytes: stream(at, at + len as u64),
                        meta: at,
                    });
                }
                Step::Write(chunk) => {
                    let Some(piece) = outbox.release_front() else {
                        continue;
                    };
                    prop_assert_eq!(piece.meta + piece.bytes.len() as u64, outbox.released_end());
                    for part in piece.bytes.chunks(chunk) {
                        if keeps {
                            // A hand-over may come between two writes of one piece.
                            check_handover(&outbox, acked, Some(&piece.bytes))?;
                        }
                        outbox.sent_bytes(part.len());
                        client.extend_from_slice(part);
                    }
                    outbox.written(piece.bytes);
                }
                Step::Ack(eighths) => {
                    let sent = outbox.sent();
                    let target = acked + (sent - acked) * u64::from(eighths) / 8;
                    acked = outbox.acknowledged(sent - target);
                    prop_assert_eq!(acked, target);
                    prop_assert!(
                        outbox.kept_from() <= acked,
                        "a byte the client lacks was dropped"
                    );
                }
                Step::HandOver => {
                    if keeps {
                        check_handover(&outbox, acked, None)?;
                    }
                }
            }
            prop_assert!(outbox.sent() <= outbox.released_end());
            prop_assert_eq!(outbox.sent(), client.len() as u64);
        }
        prop_assert_eq!(
            client,
            stream(0, outbox.sent()),
            "the client got the stream in order"
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn a_handover_anywhere_gives_the_backup_the_stream_the_client_lacks(
            start in 0u64..5000,
            resent in 0u64..3000,
            steps in proptest::collection::vec(step(), 0..60),
        ) {
            let resent = resent.min(start);
            run(true, start, resent, steps)?;
        }

        #[test]
        fn without_hand_overs_nothing_written_is_kept(
            steps in proptest::collection::vec(step(), 0..60),
        ) {
            let mut outbox = ReplyOutbox::<u64>::new(false);
            for step in steps {
                match step {
                    Step::Read(len) => {
                        let at = outbox.next_piece_offset();
                        outbox.push(WaitingPiece { bytes: stream(at, at + len as u64), meta: at });
                    }
                    Step::Write(_) => {
                        if let Some(piece) = outbox.release_front() {
                            outbox.sent_bytes(piece.bytes.len());
                            outbox.written(piece.bytes);
                        }
                    }
                    Step::Ack(_) | Step::HandOver => {}
                }
                prop_assert!(!outbox.keeps_any());
                prop_assert_eq!(outbox.kept_from(), outbox.sent());
            }
        }
    }

    #[test]
    #[should_panic(expected = "the one before it is written")]
    fn a_piece_cannot_be_released_before_the_last_is_written() {
        let mut outbox = ReplyOutbox::new(true);
        outbox.push(WaitingPiece {
            bytes: vec![1; 10],
            meta: (),
        });
        outbox.push(WaitingPiece {
            bytes: vec![2; 10],
            meta: (),
        });
        let first = outbox.release_front().expect("a piece waits");
        outbox.sent_bytes(4);
        drop(first);
        outbox.release_front();
    }
}
