//! Replication-channel frames: every kind round-trips through the stream reader however the
//! stream is cut; truncated, overlong and garbled frames are refused with an error that names
//! where, and no input makes the reader panic.

use std::net::SocketAddrV4;

use proptest::prelude::*;
use steadfast_core::heartbeat_wire::AuthKey;
use steadfast_core::http::{CutFraming, CutPoint, EntityTag, NotResumable};
use steadfast_core::image::FourTuple;
use steadfast_core::replication_wire::{
    encode, encode_reply, handshake_proof, verify_proof, AdoptedStream, ConnectionOptions,
    FrameReader, LinkAttempt, ReplicationError, ReplicationFrame, ReplyHeader, MAX_FRAME_BYTES,
};

fn tuple() -> impl Strategy<Value = FourTuple> {
    (
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<[u8; 4]>(),
        any::<u16>(),
    )
        .prop_map(
            |(client_ip, client_port, server_ip, server_port)| FourTuple {
                client: SocketAddrV4::new(client_ip.into(), client_port),
                server: SocketAddrV4::new(server_ip.into(), server_port),
            },
        )
}

fn options() -> impl Strategy<Value = ConnectionOptions> {
    (
        proptest::option::of((0u8..=14, 0u8..=14)),
        any::<bool>(),
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(|(window_scales, sack, timestamps, mss)| ConnectionOptions {
            window_scales,
            sack,
            timestamps,
            mss,
        })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..300)
}

/// Where a reply adopted in its middle stands: a cut point, or why it cannot be resumed (the
/// reasons a primary finds in a reply it is sending).
fn reply_in_progress() -> impl Strategy<Value = Option<Result<CutPoint, NotResumable>>> {
    let cut = (
        0..u64::MAX / 2,
        0..u64::MAX / 2,
        prop_oneof![Just(None), any::<bool>().prop_map(Some)],
        any::<bool>(),
        proptest::collection::vec(0x23u8..0x7f, 0..40),
    )
        .prop_map(
            |(payload_sent, remaining, chunked, weak, opaque)| CutPoint {
                validator: EntityTag { weak, opaque },
                payload_sent,
                framing: match chunked {
                    None => CutFraming::Length { remaining },
                    Some(crlf_owed) => CutFraming::Chunked {
                        remaining,
                        crlf_owed,
                    },
                },
            },
        );
    let why = prop_oneof![
        "[ -~]{0,80}".prop_map(NotResumable::Framing),
        Just(NotResumable::HeadIncomplete),
        any::<u16>().prop_map(NotResumable::Status),
        Just(NotResumable::NoValidator),
        Just(NotResumable::UntilClose),
        Just(NotResumable::InsideFraming),
        Just(NotResumable::Ended),
    ];
    prop_oneof![
        Just(None),
        cut.prop_map(|cut| Some(Ok(cut))),
        why.prop_map(|why| Some(Err(why))),
    ]
}

fn frame() -> impl Strategy<Value = ReplicationFrame> {
    prop_oneof![
        (any::<u16>(), any::<[u8; 16]>(), any::<u64>(), any::<u64>()).prop_map(
            |(node, nonce, incarnation, number)| ReplicationFrame::Hello {
                node,
                nonce,
                attempt: LinkAttempt {
                    incarnation,
                    number
                },
            }
        ),
        any::<[u8; 32]>().prop_map(|mac| ReplicationFrame::Proof { mac }),
        any::<[u8; 6]>().prop_map(|mac| ReplicationFrame::BackupReady { mac }),
        Just(ReplicationFrame::Announce),
        (tuple(), any::<u32>(), options()).prop_map(|(tuple, client_isn, options)| {
            ReplicationFrame::Opened {
                tuple,
                client_isn,
                options,
            }
        }),
        (
            any::<u64>(),
            tuple(),
            any::<u64>(),
            any::<u64>(),
            any::<Option<(u64, bool)>>(),
            bytes()
        )
            .prop_map(|(seq, tuple, request_index, reply_offset, end, bytes)| {
                ReplicationFrame::Reply {
                    seq,
                    tuple,
                    request_index,
                    reply_offset,
                    request_end: end.map(|(request_end, _)| request_end),
                    closes_after: end.is_some_and(|(_, closes)| closes),
                    bytes,
                }
            }),
        tuple().prop_map(|tuple| ReplicationFrame::Closed { tuple }),
        (
            (
                any::<u64>(),
                tuple(),
                any::<u32>(),
                any::<u32>(),
                options(),
                any::<u16>()
            ),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            ),
            (any::<Option<u32>>(), reply_in_progress()),
        )
            .prop_map(
                |(
                    (seq, tuple, client_isn, server_isn, options, client_mss),
                    (next_request, request_offset, request_len, reply_acked, reply_offset),
                    (timestamp, reply_in_progress),
                )| ReplicationFrame::Adopt {
                    seq,
                    tuple,
                    client_isn,
                    server_isn,
                    options,
                    client_mss,
                    next_request,
                    request_offset,
                    request_len,
                    reply_acked,
                    reply_offset,
                    timestamp,
                    reply_in_progress,
                }
            ),
        (tuple(), any::<bool>(), bytes()).prop_map(|(tuple, reply, bytes)| {
            ReplicationFrame::AdoptBytes {
                tuple,
                stream: if reply {
                    AdoptedStream::Reply
                } else {
                    AdoptedStream::Request
                },
                bytes,
            }
        }),
        proptest::collection::vec(tuple(), 0..40)
            .prop_map(|tuples| ReplicationFrame::Unadopted { tuples }),
        proptest::collection::vec(tuple(), 0..40)
            .prop_map(|tuples| ReplicationFrame::Unlogged { tuples }),
        (any::<u64>(), tuple(), any::<u64>(), any::<u64>(), bytes()).prop_map(
            |(seq, tuple, request_index, reply_offset, bytes)| ReplicationFrame::Interim {
                seq,
                tuple,
                request_index,
                reply_offset,
                bytes,
            }
        ),
        any::<u64>().prop_map(|seq| ReplicationFrame::Ack { seq }),
    ]
}

/// Everything the reader yields from `stream` fed in pieces of `cut` bytes, up to the first
/// error.
fn read_all(stream: &[u8], cut: usize) -> (Vec<(u64, ReplicationFrame)>, Option<ReplicationError>) {
    let mut reader = FrameReader::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(cut.max(1)) {
        reader.push(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

proptest! {
    #[test]
    fn every_frame_survives_the_stream_however_it_is_cut(
        frames in proptest::collection::vec((any::<u64>(), frame()), 1..12),
        cut in 1usize..200,
    ) {
        let mut stream = Vec::new();
        for (epoch, frame) in &frames {
            encode(frame, *epoch, &mut stream);
        }
        let (read, error) = read_all(&stream, cut);
        prop_assert_eq!(error, None);
        prop_assert_eq!(read, frames);
    }

    /// A frame whose length field claims fewer bytes than its fields need is refused, naming
    /// its kind and where it starts; the frames before it still come out whole.
    #[test]
    fn a_frame_cut_short_is_refused_at_its_offset(
        before in frame(),
        cut_frame in frame(),
        shorten in 1usize..64,
    ) {
        let mut stream = Vec::new();
        encode(&before, 1, &mut stream);
        let offset = stream.len() as u64;
        let mut cut = Vec::new();
        encode(&cut_frame, 1, &mut cut);
        let body_len = cut.len() - 4;
        // Frames that end in free-length bytes stay valid when shortened; only check those whose
        // every field is fixed, or cut into the fixed part.
        let fixed = match &cut_frame {
            ReplicationFrame::Reply { bytes, .. } | ReplicationFrame::Interim { bytes, .. } => {
                body_len - bytes.len()
            }
            ReplicationFrame::AdoptBytes { bytes, .. } => body_len - bytes.len(),
            _ => body_len,
        };
        let header = 1 + 8;
        prop_assume!(fixed > header);
        let keep = fixed - shorten.min(fixed - header);
        prop_assume!(keep < fixed);
        // A tuple list cut between two tuples is a shorter list.
        let list_whole = matches!(
            cut_frame,
            ReplicationFrame::Unadopted { .. } | ReplicationFrame::Unlogged { .. }
        ) && (keep - header) % 12 == 0;
        prop_assume!(!list_whole);
        cut.truncate(4 + keep);
        cut[..4].copy_from_slice(&(keep as u32).to_be_bytes());
        stream.extend_from_slice(&cut);
        let (read, error) = read_all(&stream, 7);
        prop_assert_eq!(read.len(), 1);
        match error {
            Some(ReplicationError::Malformed { offset: at, .. }) => prop_assert_eq!(at, offset),
            other => prop_assert!(false, "expected a malformed frame, got {:?}", other),
        }
    }

    #[test]
    fn a_reply_encoded_from_borrowed_bytes_is_the_reply_frame(
        seq in any::<u64>(),
        tuple in tuple(),
        request_index in any::<u64>(),
        reply_offset in any::<u64>(),
        request_end in proptest::option::of(any::<u64>()),
        closes_after in any::<bool>(),
        bytes in bytes(),
        epoch in any::<u64>(),
        before in bytes(),
    ) {
        let header = ReplyHeader { seq, tuple, request_index, reply_offset, request_end, closes_after };
        let frame = ReplicationFrame::Reply {
            seq, tuple, request_index, reply_offset, request_end, closes_after, bytes: bytes.clone(),
        };
        let (mut borrowed, mut owned) = (before.clone(), before);
        encode_reply(&header, &bytes, epoch, &mut borrowed);
        encode(&frame, epoch, &mut owned);
        prop_assert_eq!(borrowed, owned);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_reader(
        stream in proptest::collection::vec(any::<u8>(), 0..2000),
        cut in 1usize..64,
    ) {
        let _ = read_all(&stream, cut);
    }
}

#[test]
fn lengths_beyond_the_maximum_and_unknown_kinds_are_refused() {
    let mut stream = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
    stream.push(6);
    let (_, error) = read_all(&stream, 100);
    assert!(matches!(
        error,
        Some(ReplicationError::TooLong { offset: 0, .. })
    ));

    let mut stream = Vec::new();
    encode(&ReplicationFrame::Announce, 3, &mut stream);
    let first = stream.len() as u64;
    encode(&ReplicationFrame::Announce, 3, &mut stream);
    stream[first as usize + 4] = 200;
    let (read, error) = read_all(&stream, 100);
    assert_eq!(read, vec![(3, ReplicationFrame::Announce)]);
    assert_eq!(
        error,
        Some(ReplicationError::UnknownKind {
            offset: first,
            kind: 200
        })
    );
    assert_eq!(
        error.unwrap().to_string(),
        format!("frame at stream offset {first}: unknown kind 200")
    );
}

#[test]
fn a_tuple_list_with_a_partial_tuple_is_malformed() {
    let tuples = vec![FourTuple {
        client: "10.0.0.2:40000".parse().unwrap(),
        server: "10.0.0.100:80".parse().unwrap(),
    }];
    let lists = [
        ReplicationFrame::Unadopted {
            tuples: tuples.clone(),
        },
        ReplicationFrame::Unlogged { tuples },
    ];
    for list in lists {
        let mut stream = Vec::new();
        encode(&list, 1, &mut stream);
        stream.push(0);
        let len = (stream.len() - 4) as u32;
        stream[..4].copy_from_slice(&len.to_be_bytes());
        let (read, error) = read_all(&stream, 5);
        assert!(read.is_empty());
        let expected = list.label();
        assert!(
            matches!(
                error,
                Some(ReplicationError::Malformed { offset: 0, kind, .. }) if kind == expected
            ),
            "{expected}: {error:?}"
        );
    }
}

#[test]
fn a_proof_holds_only_for_the_attempt_and_nonces_it_was_made_over() {
    let key = AuthKey::new(b"a group key of enough bytes").expect("a key");
    let attempt = LinkAttempt {
        incarnation: 0x5eed,
        number: 4,
    };
    let (own, peer) = ([1u8; 16], [2u8; 16]);
    let proof = handshake_proof(&key, 2, attempt, &own, &peer);
    assert!(verify_proof(&key, 2, attempt, &own, &peer, &proof));
    let later = LinkAttempt {
        number: 5,
        ..attempt
    };
    assert!(
        !verify_proof(&key, 2, later, &own, &peer, &proof),
        "a stream passed off as a newer attempt"
    );
    assert!(
        !verify_proof(&key, 1, attempt, &own, &peer, &proof),
        "another sender"
    );
    assert!(
        !verify_proof(&key, 2, attempt, &peer, &own, &proof),
        "nonces swapped"
    );
    let other_key = AuthKey::new(b"another group key of enough").expect("a key");
    assert!(!verify_proof(&other_key, 2, attempt, &own, &peer, &proof));
}

#[test]
fn only_an_earlier_attempt_of_the_same_process_precedes() {
    let first = LinkAttempt {
        incarnation: 7,
        number: 1,
    };
    let second = LinkAttempt { number: 2, ..first };
    let restarted = LinkAttempt {
        incarnation: 8,
        number: 1,
    };
    assert!(first.precedes(&second));
    assert!(!second.precedes(&first));
    assert!(
        !first.precedes(&first),
        "an attempt does not precede itself"
    );
    assert!(!restarted.precedes(&second) && !second.precedes(&restarted));
}
