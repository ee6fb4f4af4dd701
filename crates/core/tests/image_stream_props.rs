//! The connection image against a simple reference reassembler, on random segmentations of
//! random streams with duplicates, reordering, overlaps, conflicting retransmits and consumption,
//! with sequence numbers that wrap around 2^32.

mod image_support;

use std::net::SocketAddrV4;

use image_support::*;
use proptest::prelude::*;
use steadfast_core::image::{
    ClientSegment, ConnectionImage, ConnectionTable, FourTuple, ImageLimits, RefuseReason,
    SegmentReport, TableLimits, Timestamps, Tracking,
};

/// Byte by byte, the obvious way: one slot per stream position, the first value written stays.
#[derive(Default)]
struct ReferenceStream {
    bytes: Vec<Option<u8>>,
    consumed: u64,
    /// The first position not held (kept up to date by `write`).
    contiguous: u64,
}

impl ReferenceStream {
    fn write(&mut self, position: u64, data: &[u8]) -> SegmentReport {
        let mut report = SegmentReport::default();
        let end = position as usize + data.len();
        if self.bytes.len() < end {
            self.bytes.resize(end, None);
        }
        for (i, &byte) in data.iter().enumerate() {
            let at = position as usize + i;
            if (at as u64) < self.consumed {
                report.duplicate_bytes += 1;
                continue;
            }
            match self.bytes[at] {
                Some(held) if held == byte => report.duplicate_bytes += 1,
                Some(_) => report.conflicting_bytes += 1,
                None => {
                    self.bytes[at] = Some(byte);
                    report.new_bytes += 1;
                }
            }
        }
        while self
            .bytes
            .get(self.contiguous as usize)
            .is_some_and(Option::is_some)
        {
            self.contiguous += 1;
        }
        report
    }

    fn contiguous(&self) -> u64 {
        self.contiguous
    }

    fn unconsumed(&self) -> Vec<u8> {
        self.bytes[self.consumed as usize..self.contiguous as usize]
            .iter()
            .map(|byte| byte.expect("contiguous"))
            .collect()
    }

    fn out_of_order_bytes(&self) -> usize {
        self.bytes[self.contiguous as usize..]
            .iter()
            .filter(|byte| byte.is_some())
            .count()
    }
}

/// One client data segment to deliver: where, what, and what it acknowledges.
#[derive(Debug, Clone)]
struct Piece {
    position: u64,
    data: Vec<u8>,
    /// Reply bytes acknowledged when the client sent it.
    acked: u64,
    /// TSecr offset from the base when the client sent it.
    tsecr: u32,
    window: u16,
}

#[derive(Debug, Clone)]
struct Scenario {
    client_isn: u32,
    server_isn: u32,
    tsecr_base: u32,
    stream: Vec<u8>,
    /// In delivery (log) order.
    pieces: Vec<Piece>,
    /// After delivering piece i, consume this share (0..=100 %) of the unconsumed bytes.
    consume_percent: Vec<u8>,
}

fn near_wrap() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        (u32::MAX - 4000)..=u32::MAX,
        0u32..100,
        (i32::MAX as u32 - 2000)..=(i32::MAX as u32 + 2000),
    ]
}

prop_compose! {
    fn scenario(with_consume: bool)(
        client_isn in near_wrap(),
        server_isn in near_wrap(),
        tsecr_base in near_wrap(),
        stream in proptest::collection::vec(any::<u8>(), 0..2500),
        cuts in proptest::collection::vec(1usize..300, 1..40),
        extras in proptest::collection::vec(
            (any::<prop::sample::Index>(), 1usize..400, any::<bool>(), any::<prop::sample::Index>()),
            0..25,
        ),
        swaps in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..60),
        consume in proptest::collection::vec(0u8..=100, 100),
    ) -> Scenario {
        // The stream cut into consecutive pieces, in sending order.
        let mut pieces = Vec::new();
        let mut at = 0usize;
        let mut cut = cuts.iter().cycle();
        while at < stream.len() {
            let len = (*cut.next().unwrap()).min(stream.len() - at);
            pieces.push((at, len, false));
            at += len;
        }
        // Retransmits and overlaps, some with bytes that differ from the original.
        if !stream.is_empty() {
            for (start, len, corrupt, _) in &extras {
                let start = start.index(stream.len());
                let len = (*len).min(stream.len() - start);
                pieces.push((start, len, *corrupt));
            }
        }
        let sent = pieces.len();
        let mut pieces: Vec<Piece> = pieces
            .into_iter()
            .enumerate()
            .map(|(sent_index, (start, len, corrupt))| {
                let mut data = stream[start..start + len].to_vec();
                if corrupt {
                    for byte in data.iter_mut().step_by(3) {
                        *byte ^= 0x5a;
                    }
                }
                Piece {
                    position: start as u64,
                    data,
                    // The client's view of the reply grows as it sends.
                    acked: (sent_index as u64) * 1000,
                    tsecr: sent_index as u32 * 7,
                    window: 100 + sent_index as u16,
                }
            })
            .collect();
        // Reordering in the log.
        for (a, b) in swaps {
            if sent > 1 {
                let (a, b) = (a.index(sent), b.index(sent));
                pieces.swap(a, b);
            }
        }
        Scenario {
            client_isn,
            server_isn,
            tsecr_base,
            stream,
            pieces,
            consume_percent: if with_consume { consume } else { vec![0; 100] },
        }
    }
}

fn data_segment(scenario: &Scenario, piece: &Piece) -> ClientSegment {
    let mut segment = segment(
        scenario
            .client_isn
            .wrapping_add(1)
            .wrapping_add(piece.position as u32),
        scenario
            .server_isn
            .wrapping_add(1)
            .wrapping_add(piece.acked as u32),
        ACK,
        piece.data.len(),
    );
    segment.window = piece.window;
    segment.options.timestamps = Some(Timestamps {
        value: 1,
        echo_reply: scenario.tsecr_base.wrapping_add(piece.tsecr),
    });
    segment
}

fn handshake_ack(scenario: &Scenario) -> ClientSegment {
    segment(
        scenario.client_isn.wrapping_add(1),
        scenario.server_isn.wrapping_add(1),
        ACK,
        0,
    )
}

fn unlimited() -> ImageLimits {
    ImageLimits {
        max_out_of_order_bytes: usize::MAX,
        max_out_of_order_pieces: usize::MAX,
        max_unconsumed_bytes: usize::MAX,
    }
}

fn check_against_reference(scenario: &Scenario) -> Result<(), TestCaseError> {
    let mut image = ConnectionImage::new(&syn(scenario.client_isn), unlimited());
    image
        .ingest(&syn(scenario.client_isn), &[])
        .expect("SYN accepted");
    image
        .ingest(&handshake_ack(scenario), &[])
        .expect("ACK accepted");
    prop_assert_eq!(image.server_isn(), Some(scenario.server_isn));

    let mut reference = ReferenceStream::default();
    let mut highest_acked = 0;
    let mut highest_tsecr = 0;
    let mut window_owner: Option<(u64, u64, u16)> = None;
    for (i, piece) in scenario.pieces.iter().enumerate() {
        let report = image
            .ingest(&data_segment(scenario, piece), &piece.data)
            .expect("no limits");
        let expected = reference.write(piece.position, &piece.data);
        prop_assert_eq!(report, expected, "piece {} {:?}", i, piece.position);

        highest_acked = highest_acked.max(piece.acked);
        highest_tsecr = highest_tsecr.max(piece.tsecr);
        // RFC 9293: the window of the segment with the highest (seq, ack), the later on a tie.
        if window_owner.is_none_or(|(seq, ack, _)| (piece.position, piece.acked) >= (seq, ack)) {
            window_owner = Some((piece.position, piece.acked, piece.window));
        }

        let percent = scenario.consume_percent[i % scenario.consume_percent.len()];
        let consume = image.unconsumed_len() as u64 * u64::from(percent) / 100;
        image.consume(consume).expect("within unconsumed");
        reference.consumed += consume;

        prop_assert_eq!(image.received_bytes(), reference.contiguous());
        prop_assert_eq!(image.consumed_bytes(), reference.consumed);
        prop_assert_eq!(image.unconsumed_to_vec(), reference.unconsumed());
        prop_assert_eq!(image.out_of_order_bytes(), reference.out_of_order_bytes());
        prop_assert_eq!(image.client_acked_reply_bytes(), highest_acked);
        prop_assert_eq!(
            image.last_tsecr(),
            Some(scenario.tsecr_base.wrapping_add(highest_tsecr))
        );
        prop_assert_eq!(
            image.rcv_nxt(),
            scenario
                .client_isn
                .wrapping_add(1)
                .wrapping_add(reference.contiguous() as u32)
        );
        prop_assert_eq!(
            image.snd_una(),
            Some(
                scenario
                    .server_isn
                    .wrapping_add(1)
                    .wrapping_add(highest_acked as u32)
            )
        );
    }
    if let Some((_, _, window)) = window_owner {
        prop_assert_eq!(image.client_window_raw(), window);
    }
    // Every original piece was delivered: the whole stream is held or consumed.
    prop_assert_eq!(image.received_bytes(), scenario.stream.len() as u64);
    prop_assert_eq!(image.out_of_order_bytes(), 0);
    let counters = image.counters();
    let total: SegmentReport = scenario
        .pieces
        .iter()
        .fold(
            (ReferenceStream::default(), SegmentReport::default()),
            |(mut fresh, mut sum), piece| {
                let report = fresh.write(piece.position, &piece.data);
                sum.duplicate_bytes += report.duplicate_bytes;
                sum.conflicting_bytes += report.conflicting_bytes;
                (fresh, sum)
            },
        )
        .1;
    if scenario.consume_percent.iter().all(|&p| p == 0) {
        prop_assert_eq!(counters.duplicate_bytes, total.duplicate_bytes);
        prop_assert_eq!(counters.conflicting_bytes, total.conflicting_bytes);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn image_matches_the_reference_without_consumption(scenario in scenario(false)) {
        check_against_reference(&scenario)?;
    }

    #[test]
    fn image_matches_the_reference_with_consumption(scenario in scenario(true)) {
        check_against_reference(&scenario)?;
    }

    /// Several connections interleaved through the table, each against its own reference.
    #[test]
    fn table_routes_interleaved_connections(
        scenarios in proptest::collection::vec(scenario(false), 1..5),
        interleave in proptest::collection::vec(any::<prop::sample::Index>(), 0..400),
    ) {
        let tuples: Vec<FourTuple> = (0..scenarios.len())
            .map(|i| FourTuple {
                client: SocketAddrV4::new(*CLIENT.ip(), 40000 + i as u16),
                server: SERVICE,
            })
            .collect();
        let mut table = ConnectionTable::new(TableLimits {
            max_connections: 16,
            max_half_open: 16,
            max_half_open_per_source: 16,
            max_bytes_held: usize::MAX,
            half_open_lifetime: std::time::Duration::from_secs(64),
            image: unlimited(),
        });
        let mut references: Vec<ReferenceStream> =
            scenarios.iter().map(|_| ReferenceStream::default()).collect();
        for (i, scenario) in scenarios.iter().enumerate() {
            let mut opening = syn(scenario.client_isn);
            opening.tuple = tuples[i];
            let ingested = table.ingest(&opening, &[]).expect("SYN");
            prop_assert_eq!(ingested.tracking, Tracking::Opened);
            let mut ack = handshake_ack(scenario);
            ack.tuple = tuples[i];
            table.ingest(&ack, &[]).expect("ACK");
        }
        let mut next = vec![0usize; scenarios.len()];
        let mut pick = interleave.iter();
        loop {
            let pending: Vec<usize> =
                (0..scenarios.len()).filter(|&i| next[i] < scenarios[i].pieces.len()).collect();
            if pending.is_empty() {
                break;
            }
            let i = match pick.next() {
                Some(index) => pending[index.index(pending.len())],
                None => pending[0],
            };
            let piece = &scenarios[i].pieces[next[i]];
            next[i] += 1;
            let mut segment = data_segment(&scenarios[i], piece);
            segment.tuple = tuples[i];
            let ingested = table.ingest(&segment, &piece.data).expect("no limits");
            prop_assert_eq!(ingested.tracking, Tracking::Tracked);
            prop_assert_eq!(ingested.report, references[i].write(piece.position, &piece.data));
        }
        let mut held = 0;
        for (i, scenario) in scenarios.iter().enumerate() {
            let image = table.get(&tuples[i]).expect("still open");
            prop_assert_eq!(image.unconsumed_to_vec(), references[i].unconsumed());
            prop_assert_eq!(image.received_bytes(), scenario.stream.len() as u64);
            held += image.bytes_held();
        }
        prop_assert_eq!(table.bytes_held(), held);
        let counters = table.counters();
        prop_assert_eq!(counters.opened, scenarios.len() as u64);
        prop_assert_eq!(counters.refused_segments, 0);
    }
}

/// One step of a random life of a few connections in the table.
#[derive(Debug, Clone)]
enum TableStep {
    /// The caller's clock moves on by this many seconds, and expired half-open images go.
    Advance {
        seconds: u64,
    },
    Syn {
        conn: usize,
        isn: u32,
    },
    /// The handshake ACK, or data at a position of the stream (may be a retransmission or lie
    /// beyond a gap).
    Data {
        conn: usize,
        position: u32,
        len: usize,
    },
    Fin {
        conn: usize,
        position: u32,
    },
    Rst {
        conn: usize,
        position: u32,
    },
    Consume {
        conn: usize,
        n: u64,
    },
    ReportedOpened {
        conn: usize,
    },
    Remove {
        conn: usize,
    },
}

fn table_step() -> impl Strategy<Value = TableStep> {
    let conn = 0usize..4;
    prop_oneof![
        (conn.clone(), 0u32..3).prop_map(|(conn, isn)| TableStep::Syn {
            conn,
            isn: isn * 1000
        }),
        (conn.clone(), 0u32..3000, 0usize..1500).prop_map(|(conn, position, len)| {
            TableStep::Data {
                conn,
                position,
                len,
            }
        }),
        (conn.clone(), 0u32..3000).prop_map(|(conn, position)| TableStep::Fin { conn, position }),
        (conn.clone(), 0u32..3000).prop_map(|(conn, position)| TableStep::Rst { conn, position }),
        (conn.clone(), 0u64..2000).prop_map(|(conn, n)| TableStep::Consume { conn, n }),
        conn.clone()
            .prop_map(|conn| TableStep::ReportedOpened { conn }),
        conn.prop_map(|conn| TableStep::Remove { conn }),
        (0u64..40).prop_map(|seconds| TableStep::Advance { seconds }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The table counts the request bytes its images hold and the half-open ones per client
    /// address as they change (its bounds read them in O(1)): after any step they are what the
    /// images say, and a SYN is refused over a bound only.
    #[test]
    fn the_bounded_figures_are_counted_through_any_life(
        steps in proptest::collection::vec(table_step(), 1..120),
        budget in 0usize..6000,
        per_source in 1usize..5,
    ) {
        let mut table = ConnectionTable::new(TableLimits {
            max_connections: 16,
            max_half_open: 16,
            max_half_open_per_source: per_source,
            max_bytes_held: budget,
            half_open_lifetime: std::time::Duration::from_secs(64),
            image: unlimited(),
        });
        let mut clock = std::time::Duration::ZERO;
        let tuple_of = |conn: usize| FourTuple {
            client: SocketAddrV4::new(*CLIENT.ip(), 41000 + conn as u16),
            server: SERVICE,
        };
        // Each connection's client ISN as the table last opened it.
        let mut isns = [0u32; 4];
        const SERVER_ISN: u32 = 77_000;
        for step in &steps {
            let held_before = table.bytes_held();
            match *step {
                TableStep::Syn { conn, isn } => {
                    let mut opening = syn(isn);
                    opening.tuple = tuple_of(conn);
                    match table.ingest(&opening, &[]) {
                        Ok(ingested) => {
                            if ingested.tracking == Tracking::Opened {
                                isns[conn] = isn;
                                prop_assert!(table.bytes_held() < budget, "opened within budget");
                            }
                        }
                        // (An image the SYN replaced, half open or finished, is gone all the
                        // same: the client has moved on from it.)
                        Err(RefuseReason::MemoryBudget { held, limit, .. }) => {
                            prop_assert!(held >= limit && held <= held_before);
                        }
                        Err(RefuseReason::SourceHalfOpen { limit, .. }) => {
                            prop_assert!(table.half_open_from(CLIENT.ip()) >= limit);
                        }
                        Err(other) => prop_assert!(false, "unexpected refusal {}", other),
                    }
                }
                TableStep::Data { conn, position, len } => {
                    let mut data = segment(
                        isns[conn].wrapping_add(1).wrapping_add(position),
                        SERVER_ISN + 1,
                        ACK,
                        len,
                    );
                    data.tuple = tuple_of(conn);
                    let _ = table.ingest(&data, &vec![b'x'; len]);
                }
                TableStep::Fin { conn, position } => {
                    let mut fin = segment(
                        isns[conn].wrapping_add(1).wrapping_add(position),
                        SERVER_ISN + 1,
                        FIN_ACK,
                        0,
                    );
                    fin.tuple = tuple_of(conn);
                    let _ = table.ingest(&fin, &[]);
                }
                TableStep::Rst { conn, position } => {
                    let mut rst = segment(
                        isns[conn].wrapping_add(1).wrapping_add(position),
                        0,
                        RST,
                        0,
                    );
                    rst.tuple = tuple_of(conn);
                    let _ = table.ingest(&rst, &[]);
                }
                TableStep::Consume { conn, n } => {
                    let _ = table.consume(&tuple_of(conn), n);
                }
                TableStep::ReportedOpened { conn } => {
                    table.reported_opened(&tuple_of(conn));
                }
                TableStep::Remove { conn } => {
                    table.remove(&tuple_of(conn));
                }
                TableStep::Advance { seconds } => {
                    clock += std::time::Duration::from_secs(seconds);
                    table.advance_clock(clock);
                    for tuple in table.expire_half_open() {
                        prop_assert!(table.get(&tuple).is_none(), "an expired image is gone");
                    }
                }
            }
            let counted: usize = table.iter().map(|image| image.bytes_held()).sum();
            prop_assert_eq!(table.bytes_held(), counted, "after {:?}", step);
            let half_open = table.iter().filter(|image| image.server_isn().is_none()).count();
            prop_assert_eq!(table.half_open_from(CLIENT.ip()), half_open, "after {:?}", step);
            prop_assert!(half_open <= per_source);
        }
    }
}
