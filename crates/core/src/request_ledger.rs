//! The client stream of a proxied connection, as its session holds it: the bytes received and
//! not yet forwarded to the backend, the bytes forwarded whose requests no complete reply has
//! answered yet, and where the first unanswered request begins.
//!
//! A backup that adopts the connection needs the unanswered bytes (a takeover sends those
//! requests to its own backend again), and a request sent again on a fresh backend connection
//! needs the part of it already forwarded. Both are kept only up to a bound: an upload larger
//! than that makes the connection one no backup can adopt until its request is answered, when
//! keeping starts again from the next request.

use std::ops::Range;

/// See the module documentation. Offsets are absolute client stream offsets.
#[derive(Debug, Clone)]
pub struct RequestLedger {
    /// Received, not yet forwarded, from `held_base`.
    held: Vec<u8>,
    held_base: u64,
    /// Forwarded, from `kept_base` to `held_base`, while their requests are unanswered; `None`
    /// once they outgrew `max_kept`.
    kept: Option<Vec<u8>>,
    kept_base: u64,
    answered_index: u64,
    answered_offset: u64,
    max_kept: usize,
}

/// What forwarding did to the unanswered bytes kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Keeping {
    /// They are all kept (or keeping had already stopped).
    Unchanged,
    /// They outgrew the bound just now: no longer kept until their request is answered.
    Outgrown,
}

impl RequestLedger {
    /// A stream whose byte `offset` begins request `index`, keeping at most `max_kept`
    /// unanswered bytes.
    pub fn starting_at(offset: u64, index: u64, max_kept: usize) -> RequestLedger {
        RequestLedger {
            held: Vec::new(),
            held_base: offset,
            kept: Some(Vec::new()),
            kept_base: offset,
            answered_index: index,
            answered_offset: offset,
            max_kept,
        }
    }

    /// Client bytes just received.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
    }

    /// The bytes received and not yet forwarded.
    pub fn held(&self) -> &[u8] {
        &self.held
    }

    /// Where the bytes not yet forwarded begin.
    pub fn forwarded_end(&self) -> u64 {
        self.held_base
    }

    /// Where the bytes received end.
    pub fn received_end(&self) -> u64 {
        self.held_base + self.held.len() as u64
    }

    /// The held bytes of `range`, which must lie within them.
    pub fn held_range(&self, range: Range<u64>) -> &[u8] {
        let from = (range.start - self.held_base) as usize;
        let to = (range.end - self.held_base) as usize;
        &self.held[from..to]
    }

    /// The held bytes before `end` went to the backend: they are kept while their request is
    /// unanswered.
    pub fn forward_to(&mut self, end: u64) -> Keeping {
        let n = (end.clamp(self.held_base, self.received_end()) - self.held_base) as usize;
        let keeping = match self.kept.as_mut() {
            Some(kept) if kept.len() + n > self.max_kept => {
                self.kept = None;
                Keeping::Outgrown
            }
            Some(kept) => {
                kept.extend_from_slice(&self.held[..n]);
                Keeping::Unchanged
            }
            None => Keeping::Unchanged,
        };
        self.held.drain(..n);
        self.held_base += n as u64;
        keeping
    }

    /// The reply to request `index` is complete: the client bytes before `request_end` are
    /// answered and no longer kept.
    pub fn answered(&mut self, index: u64, request_end: u64) {
        self.answered_index = index + 1;
        self.answered_offset = self.answered_offset.max(request_end);
        match self.kept.as_mut() {
            Some(kept) => {
                let answered = ((self.answered_offset.saturating_sub(self.kept_base)) as usize)
                    .min(kept.len());
                kept.drain(..answered);
                self.kept_base += answered as u64;
                // An upload must not pin its peak buffer for the connection's lifetime.
                if kept.capacity() > 1 << 20 && kept.capacity() > 4 * kept.len() {
                    kept.shrink_to(2 * kept.len());
                }
            }
            // Everything forwarded is answered: keeping starts again with what comes next.
            None if self.answered_offset >= self.held_base => {
                self.kept = Some(Vec::new());
                self.kept_base = self.held_base;
            }
            None => {}
        }
    }

    /// The first request no complete reply answers.
    pub fn answered_index(&self) -> u64 {
        self.answered_index
    }

    /// Where the first unanswered request begins.
    pub fn answered_offset(&self) -> u64 {
        self.answered_offset
    }

    /// From where the forwarded bytes of unanswered requests are kept; `None` while they are
    /// not (an upload outgrew the bound).
    pub fn kept_from(&self) -> Option<u64> {
        self.kept.as_ref().map(|_| self.kept_base)
    }

    /// The client bytes from the first unanswered request on; `None` while the forwarded ones
    /// are not kept.
    pub fn unanswered(&self) -> Option<Vec<u8>> {
        let kept = self.kept.as_deref()?;
        let skip = self.answered_offset.saturating_sub(self.kept_base) as usize;
        let mut bytes = Vec::with_capacity(kept.len() + self.held.len());
        if skip <= kept.len() {
            bytes.extend_from_slice(&kept[skip..]);
            bytes.extend_from_slice(&self.held);
        } else {
            bytes.extend_from_slice(&self.held[(skip - kept.len()).min(self.held.len())..]);
        }
        Some(bytes)
    }

    /// The forwarded bytes of `range`, if they are all kept.
    pub fn forwarded(&self, range: Range<u64>) -> Option<&[u8]> {
        let kept = self.kept.as_deref()?;
        if range.start < self.kept_base || range.end < range.start {
            return None;
        }
        kept.get((range.start - self.kept_base) as usize..(range.end - self.kept_base) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Receive(usize),
        Forward(usize),
        /// Answers the next request, ending this many bytes past the answered offset (within
        /// what was forwarded).
        Answer(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..40).prop_map(Step::Receive),
            (0usize..40).prop_map(Step::Forward),
            (0usize..40).prop_map(Step::Answer),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// Whatever the order of receiving, forwarding and answering, the ledger's unanswered
        /// bytes are exactly the client stream from the first unanswered request to what was
        /// received, while they are kept; keeping stops only when they outgrow the bound, and
        /// starts again once everything forwarded is answered.
        #[test]
        fn unanswered_bytes_are_the_stream_from_the_first_unanswered_request(
            start in 0u64..1_000,
            max_kept in 0usize..80,
            steps in proptest::collection::vec(step(), 0..60),
        ) {
            let mut ledger = RequestLedger::starting_at(start, 3, max_kept);
            let mut stream = Vec::new();
            let mut next_byte = 0u8;
            let mut index = 3;
            let mut kept_lost = false;
            for step in steps {
                match step {
                    Step::Receive(n) => {
                        let bytes: Vec<u8> = (0..n)
                            .map(|_| { next_byte = next_byte.wrapping_add(1); next_byte })
                            .collect();
                        stream.extend_from_slice(&bytes);
                        ledger.receive(&bytes);
                    }
                    Step::Forward(n) => {
                        let end = ledger.forwarded_end() + n as u64;
                        let unanswered_forwarded =
                            end.min(ledger.received_end()) - ledger.answered_offset();
                        // Keeping stops exactly when the forwarded unanswered bytes exceed
                        // the bound.
                        let outgrows = ledger.kept_from().is_some()
                            && unanswered_forwarded > max_kept as u64;
                        let keeping = ledger.forward_to(end);
                        prop_assert_eq!(keeping == Keeping::Outgrown, outgrows);
                        kept_lost |= outgrows;
                        prop_assert_eq!(ledger.kept_from().is_none(), kept_lost);
                    }
                    Step::Answer(n) => {
                        let end = (ledger.answered_offset() + n as u64)
                            .min(ledger.forwarded_end());
                        ledger.answered(index, end);
                        index += 1;
                        if kept_lost && ledger.answered_offset() >= ledger.forwarded_end() {
                            kept_lost = false;
                        }
                        prop_assert_eq!(ledger.answered_index(), index);
                    }
                }
                prop_assert_eq!(ledger.received_end(), start + stream.len() as u64);
                let from = (ledger.answered_offset() - start) as usize;
                match ledger.unanswered() {
                    Some(bytes) => {
                        prop_assert!(!kept_lost);
                        prop_assert_eq!(&bytes[..], &stream[from..]);
                    }
                    None => prop_assert!(kept_lost),
                }
                let held_from = (ledger.forwarded_end() - start) as usize;
                prop_assert_eq!(ledger.held(), &stream[held_from..]);
            }
        }
    }

    #[test]
    fn forwarded_bytes_are_given_back_only_while_kept() {
        let mut ledger = RequestLedger::starting_at(100, 0, 10);
        ledger.receive(b"abcdefgh");
        assert_eq!(ledger.forward_to(105), Keeping::Unchanged);
        assert_eq!(ledger.forwarded(101..104), Some(&b"bcd"[..]));
        assert_eq!(ledger.forwarded(99..104), None);
        assert_eq!(ledger.forwarded(103..106), None, "not forwarded yet");
        assert_eq!(ledger.held_range(105..107), b"fg");
        ledger.receive(b"ijklmnop");
        assert_eq!(ledger.forward_to(116), Keeping::Outgrown);
        assert_eq!(ledger.forwarded(101..104), None);
        assert_eq!(ledger.unanswered(), None);
        ledger.answered(0, 116);
        assert_eq!(ledger.kept_from(), Some(116));
        assert_eq!(ledger.unanswered().as_deref(), Some(&b""[..]));
    }
}
