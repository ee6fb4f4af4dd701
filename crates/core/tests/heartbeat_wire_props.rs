//! Node-protocol frames: round trips, authentication, replay, and decoding of arbitrary bytes.

use hmac::{Hmac, Mac};
use proptest::prelude::*;
use sha2::Sha256;
use steadfast_core::election_messages::Envelope;
use steadfast_core::heartbeat_wire::{
    decode, encode, AuthKey, FrameError, ReplayGuard, MAX_FRAME_LEN,
};
use steadfast_core::signed_datagram::ReplayRefusal;
use steadfast_core::{Message, Role};

fn key() -> AuthKey {
    AuthKey::from_file_contents(b"0123456789abcdef0123456789abcdef\n").unwrap()
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Backup),
        Just(Role::Candidate),
        Just(Role::Primary),
        Just(Role::Witness)
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            role(),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            any::<Option<u16>>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(role, healthy, has_quorum, seq, following, holds_connections, starting)| {
                    Message::Heartbeat {
                        role,
                        healthy,
                        has_quorum,
                        seq,
                        following,
                        holds_connections,
                        starting,
                    }
                }
            ),
        (any::<u16>(), any::<u64>()).prop_map(|(primary, seq)| Message::Ack { primary, seq }),
        any::<u64>().prop_map(|proposed_epoch| Message::VoteRequest { proposed_epoch }),
        (any::<u16>(), any::<u64>(), any::<bool>()).prop_map(
            |(candidate, proposed_epoch, granted)| Message::Vote {
                candidate,
                proposed_epoch,
                granted,
            }
        ),
        Just(Message::Release),
        any::<u16>().prop_map(|to| Message::Handoff { to }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        message(),
    )
        .prop_map(
            |(sender, epoch, counter, incarnation, echo, message)| Envelope {
                sender,
                epoch,
                counter,
                incarnation,
                echo,
                message,
            },
        )
}

/// A frame with the right magic, version and MAC around an arbitrary kind and body, so that the
/// body parser itself meets arbitrary input.
fn authentic(kind: u8, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut frame = b"SFHB".to_vec();
    frame.push(2);
    frame.push(kind);
    frame.extend_from_slice(header);
    frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    frame.extend_from_slice(body);
    let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
    mac.update(&frame);
    frame.extend_from_slice(&mac.finalize().into_bytes());
    frame
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_envelope_round_trips(env in envelope()) {
        let bytes = encode(&env, &key());
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        prop_assert_eq!(decode(&bytes, &key()).unwrap(), env);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = decode(&bytes, &key());
    }

    #[test]
    fn mutated_frames_are_refused(env in envelope(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut bytes = encode(&env, &key());
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(decode(&bytes, &key()).is_err());
    }

    #[test]
    fn truncated_and_extended_frames_are_refused(env in envelope(), cut in 1usize..40, extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let bytes = encode(&env, &key());
        let cut = cut.min(bytes.len());
        prop_assert!(decode(&bytes[..bytes.len() - cut], &key()).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(decode(&longer, &key()).is_err());
    }

    #[test]
    fn authentic_arbitrary_bodies_never_panic_and_accepted_ones_are_canonical(
        kind in 0u8..8,
        header in proptest::collection::vec(any::<u8>(), 34),
        body in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let bytes = authentic(kind, &header, &body);
        if let Ok(env) = decode(&bytes, &key()) {
            // One envelope, one encoding: a frame is accepted only in the form encode writes.
            prop_assert_eq!(encode(&env, &key()), bytes);
        }
    }

    #[test]
    fn another_key_is_refused(env in envelope()) {
        let other = AuthKey::from_file_contents(b"fedcba9876543210fedcba9876543210").unwrap();
        prop_assert_eq!(decode(&encode(&env, &other), &key()), Err(FrameError::BadMac));
    }
}

#[test]
fn forged_sender_is_refused_by_the_mac() {
    let env = Envelope {
        sender: 2,
        epoch: 7,
        counter: 99,
        incarnation: 5,
        echo: 6,
        message: Message::Release,
    };
    let mut bytes = encode(&env, &key());
    bytes[7] = 1; // claim to be node 1
    assert_eq!(decode(&bytes, &key()), Err(FrameError::BadMac));
}

/// A frame from `sender` with `counter`, of incarnation `incarnation`, echoing `echo`.
fn from(sender: u16, counter: u64, incarnation: u64, echo: u64) -> Envelope {
    Envelope {
        sender,
        epoch: 1,
        counter,
        incarnation,
        echo,
        message: Message::Release,
    }
}

#[test]
fn replays_are_refused_per_sender() {
    let mut guard = ReplayGuard::new(77);
    assert!(guard.admit(&from(1, 10, 5, 77)).is_ok());
    assert!(guard.admit(&from(2, 5, 6, 77)).is_ok());
    assert!(matches!(
        guard.admit(&from(1, 10, 5, 77)),
        Err(ReplayRefusal::Replayed {
            sender: 1,
            counter: 10,
            highest: 10
        })
    ));
    assert!(guard.admit(&from(1, 9, 5, 77)).is_err());
    assert!(guard.admit(&from(1, 11, 5, 77)).is_ok());
}

/// A receiver that restarted remembers no counter; what was sent to it before names its old
/// incarnation and is refused, while a peer that hears the new one is taken at once.
#[test]
fn frames_from_before_a_restart_are_refused_and_peers_relearn_at_once() {
    let mut before = ReplayGuard::new(100);
    let recorded = from(1, 50, 5, 100);
    assert!(before.admit(&recorded).is_ok());
    let mut after = ReplayGuard::new(200);
    assert_eq!(after.incarnation(), 200);
    assert!(matches!(
        after.admit(&recorded),
        Err(ReplayRefusal::Unfresh {
            sender: 1,
            echo: 100
        })
    ));
    // The refused frame still taught the sender's incarnation, which the receiver echoes.
    assert_eq!(after.echo_for(1), 5);
    assert_eq!(after.echo_for(2), 0, "a peer not heard yet");
    // The sender's next frame (a higher counter) names the new incarnation once it heard it.
    assert!(matches!(
        after.admit(&from(1, 51, 5, 100)),
        Err(ReplayRefusal::Unfresh { .. })
    ));
    assert!(after.admit(&from(1, 52, 5, 200)).is_ok());
    // A replay of the refused frame is still a replay.
    assert!(matches!(
        after.admit(&recorded),
        Err(ReplayRefusal::Replayed { .. })
    ));
    // A restarted sender (new incarnation, counter from its clock) is learned from its frame.
    assert!(after.admit(&from(1, 9_000, 6, 200)).is_ok());
    assert_eq!(after.echo_for(1), 6);
    assert_eq!(
        ReplayGuard::new(0).incarnation(),
        1,
        "0 is what no echo means"
    );
}

#[test]
fn short_keys_are_refused_with_their_length() {
    let err = AuthKey::from_file_contents(b"short\n").err().unwrap();
    assert_eq!(err, FrameError::KeyTooShort { len: 5 });
    assert!(err.to_string().contains("at least 16"));
}

#[test]
fn each_header_error_is_named() {
    let env = Envelope {
        sender: 1,
        epoch: 1,
        counter: 1,
        incarnation: 1,
        echo: 1,
        message: Message::VoteRequest { proposed_epoch: 3 },
    };
    let good = encode(&env, &key());
    assert!(matches!(
        decode(&good[..10], &key()),
        Err(FrameError::TooShort { .. })
    ));
    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(decode(&bad, &key()), Err(FrameError::BadMagic));
    let mut bad = good.clone();
    bad[4] = 9;
    assert_eq!(decode(&bad, &key()), Err(FrameError::UnsupportedVersion(9)));
    let mut bad = good.clone();
    bad[41] = 7;
    assert!(matches!(
        decode(&bad, &key()),
        Err(FrameError::LengthMismatch {
            declared: 7,
            actual: 8
        })
    ));
    assert!(matches!(
        decode(&[0u8; 200], &key()),
        Err(FrameError::TooLong { len: 200 })
    ));
}
