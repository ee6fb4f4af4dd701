//! Node-protocol frames, byte by byte: the documented layout of every message kind, bodies that
//! carry a valid MAC but make no sense, and the key's handling.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use steadfast_core::election_messages::Envelope;
use steadfast_core::heartbeat_wire::{
    decode, encode, AuthKey, FrameError, MAX_FRAME_LEN, MIN_KEY_LEN,
};
use steadfast_core::{Message, Role};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn key() -> AuthKey {
    AuthKey::new(KEY).unwrap()
}

/// The sender's incarnation and the echo of the receiver's in the test frames.
const INCARNATION: u64 = 0x0a0b_0c0d_0e0f_1011;
const ECHO: u64 = 0x2122_2324_2526_2728;

/// A frame built by hand from the documented layout, signed with the test key.
fn signed_frame(kind: u8, sender: u16, epoch: u64, counter: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = b"SFHB".to_vec();
    frame.push(2);
    frame.push(kind);
    frame.extend_from_slice(&sender.to_be_bytes());
    frame.extend_from_slice(&epoch.to_be_bytes());
    frame.extend_from_slice(&counter.to_be_bytes());
    frame.extend_from_slice(&INCARNATION.to_be_bytes());
    frame.extend_from_slice(&ECHO.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    frame.extend_from_slice(body);
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(&frame);
    frame.extend_from_slice(&mac.finalize().into_bytes());
    frame
}

fn envelope(message: Message) -> Envelope {
    Envelope {
        sender: 3,
        epoch: 0x0102_0304_0506_0708,
        counter: 1_700_000_000_000_000,
        incarnation: INCARNATION,
        echo: ECHO,
        message,
    }
}

#[test]
fn every_kind_matches_the_documented_layout_and_round_trips() {
    let cases: Vec<(Message, u8, Vec<u8>)> = vec![
        (
            Message::Heartbeat {
                role: Role::Primary,
                healthy: true,
                has_quorum: true,
                seq: 42,
                following: Some(3),
                holds_connections: true,
                starting: true,
            },
            1,
            [vec![3, 0b11111], 42u64.to_be_bytes().to_vec(), vec![0, 3]].concat(),
        ),
        (
            Message::Heartbeat {
                role: Role::Witness,
                healthy: false,
                has_quorum: true,
                seq: 0,
                following: None,
                holds_connections: false,
                starting: false,
            },
            1,
            [vec![4, 0b010], 0u64.to_be_bytes().to_vec(), vec![0, 0]].concat(),
        ),
        (
            Message::Heartbeat {
                role: Role::Backup,
                healthy: true,
                has_quorum: false,
                seq: u64::MAX,
                following: Some(0),
                holds_connections: false,
                starting: false,
            },
            1,
            [vec![1, 0b101], u64::MAX.to_be_bytes().to_vec(), vec![0, 0]].concat(),
        ),
        (
            Message::Heartbeat {
                role: Role::Candidate,
                healthy: false,
                has_quorum: false,
                seq: 7,
                following: None,
                holds_connections: false,
                starting: false,
            },
            1,
            [vec![2, 0], 7u64.to_be_bytes().to_vec(), vec![0, 0]].concat(),
        ),
        (
            Message::Ack {
                primary: 0x0102,
                seq: 9,
            },
            2,
            [vec![1, 2], 9u64.to_be_bytes().to_vec()].concat(),
        ),
        (
            Message::VoteRequest { proposed_epoch: 77 },
            3,
            77u64.to_be_bytes().to_vec(),
        ),
        (
            Message::Vote {
                candidate: 2,
                proposed_epoch: 77,
                granted: true,
            },
            4,
            [vec![0, 2], 77u64.to_be_bytes().to_vec(), vec![1]].concat(),
        ),
        (
            Message::Vote {
                candidate: 2,
                proposed_epoch: 78,
                granted: false,
            },
            4,
            [vec![0, 2], 78u64.to_be_bytes().to_vec(), vec![0]].concat(),
        ),
        (Message::Release, 5, vec![]),
        (Message::Handoff { to: 2 }, 6, vec![0, 2]),
    ];
    for (message, kind, body) in cases {
        let env = envelope(message);
        let bytes = encode(&env, &key());
        let expected = signed_frame(kind, env.sender, env.epoch, env.counter, &body);
        assert_eq!(bytes, expected, "{:?}", env.message);
        assert!(bytes.len() <= MAX_FRAME_LEN);
        assert_eq!(decode(&bytes, &key()), Ok(env));
    }
}

#[test]
fn authentic_but_malformed_bodies_name_the_field() {
    let cases: Vec<(u8, Vec<u8>, &str)> = vec![
        (
            1,
            [vec![9, 0], 1u64.to_be_bytes().to_vec(), vec![0, 0]].concat(),
            "unknown role 9",
        ),
        (
            1,
            [vec![1, 0x80], 1u64.to_be_bytes().to_vec(), vec![0, 0]].concat(),
            "unknown flags",
        ),
        (
            1,
            [vec![1, 0], 1u64.to_be_bytes().to_vec(), vec![0, 5]].concat(),
            "following id set without its flag",
        ),
        (
            4,
            [vec![0, 2], 1u64.to_be_bytes().to_vec(), vec![2]].concat(),
            "granted flag 2",
        ),
        (2, vec![0; 9], "9 bytes, expected 10"),
        (5, vec![0], "1 bytes, expected 0"),
        (6, vec![0], "1 bytes, expected 2"),
    ];
    for (kind, body, what) in cases {
        let bytes = signed_frame(kind, 1, 1, 1, &body);
        match decode(&bytes, &key()) {
            Err(e @ FrameError::MalformedBody { .. }) => {
                assert!(e.to_string().contains(what), "{e} lacks {what:?}");
                assert_eq!(e.label(), "malformed-body");
            }
            other => panic!("kind {kind} body {body:?}: expected malformed, got {other:?}"),
        }
    }
}

#[test]
fn an_authentic_unknown_kind_is_named() {
    let bytes = signed_frame(7, 1, 1, 1, &[]);
    assert_eq!(decode(&bytes, &key()), Err(FrameError::UnknownKind(7)));
}

#[test]
fn a_forged_body_is_refused_before_it_is_read() {
    // A garbage role under a MAC made with the wrong key must be reported as a bad MAC, not as
    // a malformed body: nothing past the length field is interpreted before authentication.
    let mut bytes = signed_frame(1, 1, 1, 1, &[9; 12]);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(decode(&bytes, &key()), Err(FrameError::BadMac));
}

#[test]
fn the_key_file_loses_one_trailing_newline_only() {
    let plain = AuthKey::from_file_contents(KEY).unwrap();
    let lf = AuthKey::from_file_contents(&[KEY, b"\n"].concat()).unwrap();
    let crlf = AuthKey::from_file_contents(&[KEY, b"\r\n"].concat()).unwrap();
    let env = envelope(Message::Release);
    let frame = encode(&env, &plain);
    assert_eq!(decode(&frame, &lf), Ok(env.clone()));
    assert_eq!(decode(&frame, &crlf), Ok(env.clone()));
    let two = AuthKey::from_file_contents(&[KEY, b"\n\n"].concat()).unwrap();
    assert_eq!(two.len(), KEY.len() + 1);
    assert_eq!(decode(&frame, &two), Err(FrameError::BadMac));
}

#[test]
fn short_keys_are_refused_after_trimming() {
    let fifteen = [b'k'; MIN_KEY_LEN - 1];
    assert_eq!(
        AuthKey::from_file_contents(&[&fifteen[..], b"\n"].concat()).err(),
        Some(FrameError::KeyTooShort {
            len: MIN_KEY_LEN - 1
        })
    );
    assert!(AuthKey::new(&[b'k'; MIN_KEY_LEN]).is_ok());
    assert_eq!(
        AuthKey::new(b"").err().map(|e| e.label()),
        Some("key-too-short")
    );
}

#[test]
fn debug_never_shows_the_key() {
    let shown = format!("{:?}", key());
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    assert!(shown.contains("32"), "{shown}");
}

#[test]
fn every_error_has_a_distinct_counter_label() {
    let errors = [
        FrameError::KeyTooShort { len: 1 },
        FrameError::TooShort { len: 1, min: 58 },
        FrameError::TooLong { len: 999 },
        FrameError::BadMagic,
        FrameError::UnsupportedVersion(2),
        FrameError::LengthMismatch {
            declared: 1,
            actual: 2,
        },
        FrameError::BadMac,
        FrameError::UnknownKind(7),
        FrameError::MalformedBody {
            kind: "vote",
            what: "x".into(),
        },
    ];
    let mut labels: Vec<&str> = errors.iter().map(FrameError::label).collect();
    assert!(labels
        .iter()
        .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_lowercase() || c == '-')));
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), errors.len());
}
