//! What the backup knows of a connection it does not protect: one the primary opened before
//! this backup joined and has not handed over yet.
//!
//! Such a connection cannot be carried on at a takeover (its bytes before the join were never
//! logged), but its client must not be left waiting in silence for a reply that will never come:
//! the new primary counts it lost and makes its client reset it at once, as it does for any
//! connection it cannot rebuild. Finding the client's current sequence numbers for that needs
//! only the latest of its segments, which is all this keeps.

use super::connection::{note_tsecr, serial_delta};
use super::segment::{ClientSegment, FourTuple};

/// The latest client-side sequence numbers of a connection the backup does not protect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnadoptedConnection {
    pub tuple: FourTuple,
    /// The highest reply byte the client acknowledged (the server's sequence space).
    pub acked: u32,
    /// One past the highest client byte seen (the client's sequence space).
    pub next_seq: u32,
    /// The highest server timestamp the client echoed, when the connection uses timestamps.
    pub last_tsecr: Option<u32>,
}

impl UnadoptedConnection {
    /// The record of a connection from its first segment seen here; `None` for a segment
    /// without ACK (no connection is established without one).
    pub fn from_segment(segment: &ClientSegment, payload_len: usize) -> Option<Self> {
        if !segment.flags.ack {
            return None;
        }
        Some(UnadoptedConnection {
            tuple: segment.tuple,
            acked: segment.ack,
            next_seq: segment_end(segment, payload_len),
            last_tsecr: segment.options.timestamps.map(|ts| ts.echo_reply),
        })
    }

    /// Moves the record forward with a later segment; reordered (older) values never move it
    /// back.
    pub fn note(&mut self, segment: &ClientSegment, payload_len: usize) {
        if !segment.flags.ack {
            return;
        }
        if serial_delta(segment.ack, self.acked) > 0 {
            self.acked = segment.ack;
        }
        let end = segment_end(segment, payload_len);
        if serial_delta(end, self.next_seq) > 0 {
            self.next_seq = end;
        }
        note_tsecr(&mut self.last_tsecr, segment);
    }
}

fn segment_end(segment: &ClientSegment, payload_len: usize) -> u32 {
    segment.seq.wrapping_add(payload_len as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{TcpFlags, TcpOptions, Timestamps};
    use std::net::SocketAddrV4;

    fn segment(seq: u32, ack: u32, tsecr: Option<u32>) -> ClientSegment {
        ClientSegment {
            tuple: FourTuple {
                client: "10.0.0.2:40000".parse::<SocketAddrV4>().unwrap(),
                server: "10.0.0.100:80".parse::<SocketAddrV4>().unwrap(),
            },
            seq,
            ack,
            flags: TcpFlags {
                ack: true,
                ..TcpFlags::default()
            },
            window: 500,
            options: TcpOptions {
                timestamps: tsecr.map(|echo_reply| Timestamps {
                    value: 1,
                    echo_reply,
                }),
                ..TcpOptions::default()
            },
            payload: 0..0,
        }
    }

    #[test]
    fn follows_the_newest_numbers_across_wraparound_and_ignores_older_ones() {
        let mut record = UnadoptedConnection::from_segment(&segment(u32::MAX - 9, 100, Some(7)), 5)
            .expect("an ACK segment makes a record");
        assert_eq!(record.next_seq, u32::MAX - 4);
        record.note(&segment(u32::MAX - 4, 400, Some(9)), 10);
        assert_eq!(
            (record.acked, record.next_seq, record.last_tsecr),
            (400, 5, Some(9)),
            "the end wraps past zero and still counts as newer"
        );
        record.note(&segment(u32::MAX - 9, 100, Some(7)), 5);
        assert_eq!(
            (record.acked, record.next_seq, record.last_tsecr),
            (400, 5, Some(9)),
            "a reordered older segment changes nothing"
        );
    }

    #[test]
    fn a_segment_without_ack_makes_no_record() {
        let mut syn = segment(1, 0, None);
        syn.flags = TcpFlags {
            syn: true,
            ..TcpFlags::default()
        };
        assert_eq!(UnadoptedConnection::from_segment(&syn, 0), None);
    }
}
