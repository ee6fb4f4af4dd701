//! The backup's reply log counts the reply bytes it holds as pieces come and go (its status
//! gauge reads the count in O(1)): after any sequence of opens, hand-overs, pieces, trims and
//! closes the count is what the connections hold.

use std::net::SocketAddrV4;

use proptest::prelude::*;
use steadfast_core::image::FourTuple;
use steadfast_core::replication_wire::ConnectionOptions;
use steadfast_core::reply_log::{AdoptedConnection, ReplicaLog};

const OPTIONS: ConnectionOptions = ConnectionOptions {
    window_scales: None,
    sack: true,
    timestamps: false,
    mss: 1460,
};

fn tuple(conn: u8) -> FourTuple {
    FourTuple {
        client: SocketAddrV4::new([10, 9, 0, 2].into(), 40000 + u16::from(conn)),
        server: SocketAddrV4::new([10, 9, 0, 100].into(), 80),
    }
}

#[derive(Debug, Clone)]
enum Step {
    Opened(u8),
    Adopted {
        conn: u8,
        acked: u64,
        unacked: usize,
    },
    Piece {
        conn: u8,
        len: usize,
        ends_reply: bool,
    },
    Trim {
        conn: u8,
        acked: u64,
    },
    Closed(u8),
}

fn step() -> impl Strategy<Value = Step> {
    let conn = 0u8..3;
    prop_oneof![
        conn.clone().prop_map(Step::Opened),
        (conn.clone(), 0u64..500, 0usize..300).prop_map(|(conn, acked, unacked)| Step::Adopted {
            conn,
            acked,
            unacked
        }),
        (conn.clone(), 0usize..400, any::<bool>()).prop_map(|(conn, len, ends_reply)| {
            Step::Piece {
                conn,
                len,
                ends_reply,
            }
        }),
        (conn.clone(), 0u64..3000).prop_map(|(conn, acked)| Step::Trim { conn, acked }),
        conn.prop_map(Step::Closed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_reply_bytes_held_are_counted_through_any_life(
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut log = ReplicaLog::new();
        for step in &steps {
            match *step {
                Step::Opened(conn) => log.opened(tuple(conn), 1, OPTIONS),
                Step::Adopted { conn, acked, unacked } => log.adopt(AdoptedConnection {
                    tuple: tuple(conn),
                    client_isn: 1,
                    options: OPTIONS,
                    next_request: 0,
                    request_offset: 0,
                    reply_acked: acked,
                    unacked_reply: vec![b'r'; unacked],
                    reply_in_progress: None,
                }),
                Step::Piece { conn, len, ends_reply } => {
                    // Logged where the connection's log ends, as the primary sends it.
                    if let Some(logged) = log.get(&tuple(conn)) {
                        let (index, offset, request_end) = (
                            logged.next_request(),
                            logged.reply_end(),
                            ends_reply.then(|| logged.request_offset() + 10),
                        );
                        let piece = if ends_reply {
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n{}", "b".repeat(len))
                        } else {
                            "c".repeat(len)
                        };
                        let _ = log.log_reply(&tuple(conn), index, offset, request_end, piece.into_bytes());
                    }
                }
                Step::Trim { conn, acked } => log.trim(&tuple(conn), acked),
                Step::Closed(conn) => log.closed(&tuple(conn)),
            }
            let counted: usize = (0..3)
                .filter_map(|conn| log.get(&tuple(conn)))
                .map(|conn| conn.bytes_held())
                .sum();
            prop_assert_eq!(log.bytes_held(), counted, "after {:?}", step);
        }
    }
}
