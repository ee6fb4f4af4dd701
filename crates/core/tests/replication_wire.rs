//! Replication-channel frames: every kind round-trips through the stream reader however the
//! stream is cut; truncated, overlong and garbled frames are refused with an error that names
//! where, and no input makes the reader panic.

use std::net::SocketAddrV4;

use proptest::prelude::*;
use steadfast_core::heartbeat_wire::AuthKey;
use steadfast_core::image::FourTuple;
use steadfast_core::replication_seal::{self, LinkEnd, Protection, Sealer};
use steadfast_core::replication_wire::{
    encode, encode_reply, encode_sealed, handshake_proof, verify_proof, AdoptedStream,
    ConnectionOptions, FrameReader, LinkAttempt, ReplicationError, ReplicationFrame, ReplyHeader,
    MAX_FRAME_BYTES,
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

/// Where a reply adopted in its middle stands, as the service's framer wrote it: bytes the
/// replication stream carries without reading them (their own tests: `http_framer.rs`).
fn reply_in_progress() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200))
}

fn frame() -> impl Strategy<Value = ReplicationFrame> {
    prop_oneof![
        (
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(node, nonce, incarnation, number, encrypted)| {
                ReplicationFrame::Hello {
                    node,
                    nonce,
                    attempt: LinkAttempt {
                        incarnation,
                        number,
                    },
                    protection: if encrypted {
                        Protection::Encrypted
                    } else {
                        Protection::Authenticated
                    },
                }
            }),
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
    read_all_with(FrameReader::new(), stream, cut)
}

fn read_all_with(
    mut reader: FrameReader,
    stream: &[u8],
    cut: usize,
) -> (Vec<(u64, ReplicationFrame)>, Option<ReplicationError>) {
    let mut frames = Vec::new();
    for piece in stream.chunks(cut.max(1)) {
        reader.push(piece);
        if let Err(e) = take_whole_frames(&mut reader, &mut frames) {
            return (frames, Some(e));
        }
    }
    (frames, None)
}

/// Every frame the reader holds whole, into `frames`, up to the first error.
fn take_whole_frames(
    reader: &mut FrameReader,
    frames: &mut Vec<(u64, ReplicationFrame)>,
) -> Result<(), ReplicationError> {
    while let Some(frame) = reader.next_frame()? {
        frames.push(frame);
    }
    Ok(())
}

/// As [`read_all_with`], the bytes appended where the reader's receive buffer asks for them:
/// at most `cut` bytes a read, as a socket read fills at most the room it is given.
fn read_all_received(
    mut reader: FrameReader,
    stream: &[u8],
    cut: usize,
    room: usize,
) -> (Vec<(u64, ReplicationFrame)>, Option<ReplicationError>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let buffer = reader.receive_buffer(room);
        assert!(
            buffer.capacity() - buffer.len() >= room,
            "room for a read of {room}"
        );
        let n = cut.max(1).min(rest.len());
        buffer.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if let Err(e) = take_whole_frames(&mut reader, &mut frames) {
            return (frames, Some(e));
        }
    }
    (frames, None)
}

proptest! {
    /// Reading into the receive buffer (as the backup does) yields what pushing the same
    /// bytes does, plain or sealed, however the reads fall.
    #[test]
    fn frames_read_into_the_receive_buffer_are_those_pushed(
        frames in proptest::collection::vec((any::<u64>(), frame()), 1..10),
        cut in 1usize..300,
        room in 1usize..64,
        protection in proptest::option::of(protection()),
    ) {
        let (stream, pushed, received) = match protection {
            None => {
                let mut stream = Vec::new();
                for (epoch, frame) in &frames {
                    encode(frame, *epoch, &mut stream);
                }
                let pushed = read_all(&stream, cut);
                let received = read_all_received(FrameReader::new(), &stream, cut, room);
                (stream, pushed, received)
            }
            Some(protection) => {
                let (mut sealer, reader) = stream_ends(protection);
                let (stream, _) = sealed(&mut sealer, &frames);
                let pushed = read_all_with(stream_ends(protection).1, &stream, cut);
                let received = read_all_received(reader, &stream, cut, room);
                (stream, pushed, received)
            }
        };
        prop_assert!(!stream.is_empty());
        prop_assert_eq!(&pushed.1, &None);
        prop_assert_eq!(&received, &pushed);
        prop_assert_eq!(received.0, frames);
    }

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

// Sealed frames (`replication_seal`): what one end seals, only its peer's reader of the same
// stream opens, frame by frame in order; anything else is refused as unsealed.

fn protection() -> impl Strategy<Value = Protection> {
    prop_oneof![Just(Protection::Encrypted), Just(Protection::Authenticated)]
}

fn end(node: u16, nonce: u8, incarnation: u64) -> LinkEnd {
    LinkEnd {
        node,
        nonce: [nonce; 16],
        attempt: LinkAttempt {
            incarnation,
            number: 1,
        },
    }
}

fn group_key() -> AuthKey {
    AuthKey::from_file_contents(b"a group key of thirty-two bytes!").unwrap()
}

/// The primary's sealer and the backup's reader of one stream.
fn stream_ends(protection: Protection) -> (Sealer, FrameReader) {
    let (primary, backup) = (end(1, 0xa1, 7), end(2, 0xb2, 0));
    let (sealer, _) = replication_seal::channel(&group_key(), protection, &primary, &backup);
    let (_, opener) = replication_seal::channel(&group_key(), protection, &backup, &primary);
    let mut reader = FrameReader::new();
    reader.open_with(opener);
    (sealer, reader)
}

/// The frames sealed one after the other, and where each starts.
fn sealed(sealer: &mut Sealer, frames: &[(u64, ReplicationFrame)]) -> (Vec<u8>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut starts = Vec::new();
    for (epoch, frame) in frames {
        starts.push(stream.len());
        encode_sealed(frame, *epoch, sealer, &mut stream).unwrap();
    }
    (stream, starts)
}

fn is_unsealed(error: &Option<ReplicationError>) -> bool {
    matches!(error, Some(ReplicationError::Unsealed { .. }))
}

proptest! {
    #[test]
    fn sealed_frames_survive_the_stream_however_it_is_cut(
        frames in proptest::collection::vec((any::<u64>(), frame()), 1..10),
        cut in 1usize..300,
        protection in protection(),
    ) {
        let (mut sealer, reader) = stream_ends(protection);
        let (stream, _) = sealed(&mut sealer, &frames);
        let (read, error) = read_all_with(reader, &stream, cut);
        prop_assert_eq!(error, None);
        prop_assert_eq!(read, frames);
    }

    /// A bit flipped anywhere (length, kind, epoch, body or tag) never yields a frame that was
    /// not sent: the frames before it are read, then the reader fails.
    #[test]
    fn a_flipped_bit_anywhere_is_refused(
        frames in proptest::collection::vec((any::<u64>(), frame()), 1..6),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        protection in protection(),
    ) {
        let (mut sealer, reader) = stream_ends(protection);
        let (mut stream, starts) = sealed(&mut sealer, &frames);
        let at = at.index(stream.len());
        stream[at] ^= 1 << bit;
        let hit = starts.iter().rposition(|&start| start <= at).unwrap();
        let (read, error) = read_all_with(reader, &stream, 4096);
        prop_assert_eq!(&read[..], &frames[..hit]);
        // A flipped length can leave the reader waiting for bytes that never come, or be
        // refused as too long; anything else fails the tag.
        if at - starts[hit] >= 4 {
            prop_assert!(is_unsealed(&error), "{:?}", error);
        }
    }

    #[test]
    fn a_replayed_frame_is_refused(
        frames in proptest::collection::vec((any::<u64>(), frame()), 1..6),
        which in any::<prop::sample::Index>(),
        protection in protection(),
    ) {
        let (mut sealer, reader) = stream_ends(protection);
        let (stream, starts) = sealed(&mut sealer, &frames);
        let which = which.index(frames.len());
        let end = starts.get(which + 1).copied().unwrap_or(stream.len());
        let mut replayed = stream.clone();
        replayed.extend_from_slice(&stream[starts[which]..end]);
        let (read, error) = read_all_with(reader, &replayed, 4096);
        prop_assert_eq!(read, frames);
        prop_assert!(is_unsealed(&error), "{:?}", error);
    }

    #[test]
    fn frames_out_of_order_are_refused(
        frames in proptest::collection::vec((any::<u64>(), frame()), 2..6),
        protection in protection(),
    ) {
        let (mut sealer, reader) = stream_ends(protection);
        let (stream, starts) = sealed(&mut sealer, &frames);
        let mut swapped = stream[starts[1]..starts.get(2).copied().unwrap_or(stream.len())].to_vec();
        swapped.extend_from_slice(&stream[..starts[1]]);
        let (read, error) = read_all_with(reader, &swapped, 4096);
        prop_assert!(read.is_empty());
        prop_assert!(is_unsealed(&error), "{:?}", error);
    }
}

#[test]
fn frames_sealed_for_another_stream_direction_or_key_are_refused() {
    let frame = (9, ReplicationFrame::Ack { seq: 42 });
    let (primary, backup) = (end(1, 0xa1, 7), end(2, 0xb2, 0));
    let refused = |sealer: &mut Sealer, reader: FrameReader, what: &str| {
        let (stream, _) = sealed(sealer, std::slice::from_ref(&frame));
        let (read, error) = read_all_with(reader, &stream, 4096);
        assert!(
            read.is_empty() && is_unsealed(&error),
            "{what}: {read:?} {error:?}"
        );
    };
    let key = group_key();
    let other_key = AuthKey::from_file_contents(b"another group key, also 32 bytes").unwrap();
    let backup_reader = |key: &AuthKey, protection, own: &LinkEnd, peer: &LinkEnd| {
        let (_, opener) = replication_seal::channel(key, protection, own, peer);
        let mut reader = FrameReader::new();
        reader.open_with(opener);
        reader
    };
    for protection in [Protection::Encrypted, Protection::Authenticated] {
        let reader = || backup_reader(&key, protection, &backup, &primary);
        let (mut sealer, _) = replication_seal::channel(&other_key, protection, &primary, &backup);
        refused(&mut sealer, reader(), "another key");
        // A stream of another handshake: another nonce, or another attempt of the primary.
        let (mut sealer, _) =
            replication_seal::channel(&key, protection, &end(1, 0xa2, 7), &backup);
        refused(&mut sealer, reader(), "another nonce");
        let (mut sealer, _) =
            replication_seal::channel(&key, protection, &end(1, 0xa1, 8), &backup);
        refused(&mut sealer, reader(), "another attempt");
        // The backup's own frames reflected back at it.
        let (mut sealer, _) = replication_seal::channel(&key, protection, &backup, &primary);
        refused(&mut sealer, reader(), "reflected");
        // The other protection.
        let other = match protection {
            Protection::Encrypted => Protection::Authenticated,
            Protection::Authenticated => Protection::Encrypted,
        };
        let (mut sealer, _) = replication_seal::channel(&key, other, &primary, &backup);
        refused(&mut sealer, reader(), "another protection");
    }
    // A plain frame where a sealed one is due.
    let mut plain = Vec::new();
    encode(&frame.1, frame.0, &mut plain);
    plain.extend_from_slice(&[0; 16]);
    let len = (plain.len() - 4) as u32;
    plain[..4].copy_from_slice(&len.to_be_bytes());
    let (read, error) = read_all_with(
        backup_reader(&key, Protection::Encrypted, &backup, &primary),
        &plain,
        4096,
    );
    assert!(read.is_empty() && is_unsealed(&error), "{read:?} {error:?}");
}

#[test]
fn encrypted_bodies_do_not_show_and_authenticated_ones_do() {
    let body = b"a reply body that must not show on the wire".to_vec();
    let frame = ReplicationFrame::AdoptBytes {
        tuple: FourTuple {
            client: SocketAddrV4::new([10, 0, 0, 1].into(), 40000),
            server: SocketAddrV4::new([10, 0, 0, 2].into(), 80),
        },
        stream: AdoptedStream::Request,
        bytes: body.clone(),
    };
    let shows = |protection| {
        let (mut sealer, reader) = stream_ends(protection);
        let (stream, _) = sealed(&mut sealer, &[(3, frame.clone())]);
        let (read, error) = read_all_with(reader, &stream, 4096);
        assert_eq!((read, error), (vec![(3, frame.clone())], None));
        stream.windows(body.len()).any(|w| w == &body[..])
    };
    assert!(!shows(Protection::Encrypted));
    assert!(shows(Protection::Authenticated));
}
