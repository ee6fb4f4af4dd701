//! The authenticated wire encoding of node-protocol messages (UDP heartbeats between voters).
//!
//! Layout, big-endian:
//! ```text
//! 0   magic "SFHB"          4
//! 4   version (2)           1
//! 5   kind                  1   1 heartbeat, 2 ack, 3 vote-request, 4 vote, 5 release
//! 6   sender                2
//! 8   epoch                 8
//! 16  counter               8   anti-replay: strictly increasing per sender
//! 24  incarnation           8   the sender's: drawn at random when its process starts
//! 32  echo                  8   the receiver's incarnation as the sender last heard it
//! 40  body length           2
//! 42  body                  n   exact length per kind, below
//! 42+n HMAC-SHA256          32  over bytes 0 .. 42+n
//! ```
//! Bodies: heartbeat = role u8, flags u8 (bit 0 healthy, 1 has quorum, 2 following present,
//! 3 holds connections, 4 starting),
//! seq u64, following u16 (0 when absent); ack = primary u16, seq u64; vote-request = proposed
//! epoch u64; vote = candidate u16, proposed epoch u64, granted u8 (0 or 1); release = empty.
//!
//! The MAC is checked before any field is interpreted, so a forged or corrupted frame is refused
//! as such; anything that fails to parse after a valid MAC is reported as malformed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::election_messages::{Envelope, Message, Role};
use crate::signed_datagram::{self, DatagramShape, ShapeError, Stamp, Stamped, MAC_LEN};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 2;
const HEADER_LEN: usize = 42;
const MAX_BODY_LEN: usize = 12;
const SHAPE: DatagramShape = DatagramShape {
    magic: b"SFHB",
    version: VERSION,
    header_len: HEADER_LEN,
    max_len: MAX_FRAME_LEN,
};
/// No valid frame is longer than this.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_BODY_LEN + MAC_LEN;
/// Keys shorter than this are refused: a guessable key makes the MAC worthless.
pub const MIN_KEY_LEN: usize = 16;

const FLAG_HEALTHY: u8 = 1;
const FLAG_QUORUM: u8 = 2;
const FLAG_FOLLOWING: u8 = 4;
const FLAG_HOLDS_CONNECTIONS: u8 = 8;
const FLAG_STARTING: u8 = 16;

/// The group's shared secret.
///
/// `Debug` is written by hand and shows only the length: the key must never reach a log, and
/// settings structs holding it should still be printable.
#[derive(Clone)]
pub struct AuthKey(Vec<u8>);

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthKey(<{} secret bytes>)", self.0.len())
    }
}

impl AuthKey {
    /// A key made of exactly these bytes; refused when shorter than [`MIN_KEY_LEN`].
    pub fn new(bytes: &[u8]) -> Result<AuthKey, FrameError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(FrameError::KeyTooShort { len: bytes.len() });
        }
        Ok(AuthKey(bytes.to_vec()))
    }

    /// The key as stored in the key file: its bytes, less one trailing newline (`\n` or
    /// `\r\n`), because editors and `echo` add one and the peers' files must give the same key.
    pub fn from_file_contents(contents: &[u8]) -> Result<AuthKey, FrameError> {
        let mut key = contents;
        if let Some(rest) = key.strip_suffix(b"\n") {
            key = rest;
            if let Some(rest) = key.strip_suffix(b"\r") {
                key = rest;
            }
        }
        AuthKey::new(key)
    }

    /// How many bytes the key has (never the bytes themselves).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an `AuthKey` holds at least [`MIN_KEY_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `other` is the same key (a reload that changed the key file needs a restart).
    pub fn same_as(&self, other: &AuthKey) -> bool {
        self.0 == other.0
    }

    /// The secret bytes, for the other authenticated channels of this crate.
    pub(crate) fn secret(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "the auth key has {len} bytes (after removing a trailing newline); at least \
         {MIN_KEY_LEN} are required"
    )]
    KeyTooShort { len: usize },
    #[error("frame of {len} bytes is shorter than the {min} of an empty frame")]
    TooShort { len: usize, min: usize },
    #[error("frame of {len} bytes is longer than the longest valid frame ({MAX_FRAME_LEN})")]
    TooLong { len: usize },
    #[error("bad magic: not a Steadfast heartbeat frame")]
    BadMagic,
    #[error("unsupported frame version {0} (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("body length field says {declared} bytes but {actual} follow the header")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("bad MAC: forged, corrupted, or signed with another key")]
    BadMac,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed {kind} body: {what}")]
    MalformedBody { kind: &'static str, what: String },
}

impl From<ShapeError> for FrameError {
    fn from(error: ShapeError) -> FrameError {
        match error {
            ShapeError::TooShort { len, min } => FrameError::TooShort { len, min },
            ShapeError::TooLong { len } => FrameError::TooLong { len },
            ShapeError::BadMagic => FrameError::BadMagic,
            ShapeError::UnsupportedVersion(version) => FrameError::UnsupportedVersion(version),
            ShapeError::LengthMismatch { declared, actual } => {
                FrameError::LengthMismatch { declared, actual }
            }
            ShapeError::BadMac => FrameError::BadMac,
        }
    }
}

impl FrameError {
    /// A short label, usable as a counter name.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::KeyTooShort { .. } => "key-too-short",
            FrameError::TooShort { .. } => "too-short",
            FrameError::TooLong { .. } => "too-long",
            FrameError::BadMagic => "bad-magic",
            FrameError::UnsupportedVersion(_) => "bad-version",
            FrameError::LengthMismatch { .. } => "length-mismatch",
            FrameError::BadMac => "bad-mac",
            FrameError::UnknownKind(_) => "unknown-kind",
            FrameError::MalformedBody { .. } => "malformed-body",
        }
    }
}

fn kind_code(message: &Message) -> u8 {
    match message {
        Message::Heartbeat { .. } => 1,
        Message::Ack { .. } => 2,
        Message::VoteRequest { .. } => 3,
        Message::Vote { .. } => 4,
        Message::Release => 5,
        Message::Handoff { .. } => 6,
    }
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::Backup => 1,
        Role::Candidate => 2,
        Role::Primary => 3,
        Role::Witness => 4,
    }
}

fn role_from(code: u8) -> Option<Role> {
    Some(match code {
        1 => Role::Backup,
        2 => Role::Candidate,
        3 => Role::Primary,
        4 => Role::Witness,
        _ => return None,
    })
}

fn encode_body(message: &Message, out: &mut Vec<u8>) {
    match message {
        Message::Heartbeat {
            role,
            healthy,
            has_quorum,
            seq,
            following,
            holds_connections,
            starting,
        } => {
            let mut flags = 0;
            if *healthy {
                flags |= FLAG_HEALTHY;
            }
            if *has_quorum {
                flags |= FLAG_QUORUM;
            }
            if following.is_some() {
                flags |= FLAG_FOLLOWING;
            }
            if *holds_connections {
                flags |= FLAG_HOLDS_CONNECTIONS;
            }
            if *starting {
                flags |= FLAG_STARTING;
            }
            out.push(role_code(*role));
            out.push(flags);
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&following.unwrap_or(0).to_be_bytes());
        }
        Message::Ack { primary, seq } => {
            out.extend_from_slice(&primary.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
        }
        Message::VoteRequest { proposed_epoch } => {
            out.extend_from_slice(&proposed_epoch.to_be_bytes());
        }
        Message::Vote {
            candidate,
            proposed_epoch,
            granted,
        } => {
            out.extend_from_slice(&candidate.to_be_bytes());
            out.extend_from_slice(&proposed_epoch.to_be_bytes());
            out.push(u8::from(*granted));
        }
        Message::Release => {}
        Message::Handoff { to } => out.extend_from_slice(&to.to_be_bytes()),
    }
}

/// Encodes and signs one frame; the result is at most [`MAX_FRAME_LEN`] bytes.
pub fn encode(envelope: &Envelope, key: &AuthKey) -> Vec<u8> {
    let mut fields = Vec::with_capacity(HEADER_LEN);
    fields.extend_from_slice(&envelope.sender.to_be_bytes());
    for n in [
        envelope.epoch,
        envelope.counter,
        envelope.incarnation,
        envelope.echo,
    ] {
        fields.extend_from_slice(&n.to_be_bytes());
    }
    let mut body = Vec::with_capacity(MAX_BODY_LEN);
    encode_body(&envelope.message, &mut body);
    SHAPE.encode(kind_code(&envelope.message), &fields, &body, key)
}

/// Reads big-endian fields off a byte slice whose length was checked by the caller.
struct Reader<'a>(&'a [u8]);
impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        let v = self.0[0];
        self.0 = &self.0[1..];
        v
    }
    fn u16(&mut self) -> u16 {
        let v = u16::from_be_bytes([self.0[0], self.0[1]]);
        self.0 = &self.0[2..];
        v
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        self.0 = &self.0[8..];
        u64::from_be_bytes(b)
    }
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Message, FrameError> {
    let (name, expected) = match kind {
        1 => ("heartbeat", 12),
        2 => ("ack", 10),
        3 => ("vote-request", 8),
        4 => ("vote", 11),
        5 => ("release", 0),
        6 => ("handoff", 2),
        other => return Err(FrameError::UnknownKind(other)),
    };
    let malformed = |what: String| FrameError::MalformedBody { kind: name, what };
    if body.len() != expected {
        return Err(malformed(format!(
            "{} bytes, expected {expected}",
            body.len()
        )));
    }
    let mut r = Reader(body);
    Ok(match kind {
        1 => {
            let role_byte = r.u8();
            let role = role_from(role_byte)
                .ok_or_else(|| malformed(format!("unknown role {role_byte}")))?;
            let flags = r.u8();
            if flags
                & !(FLAG_HEALTHY
                    | FLAG_QUORUM
                    | FLAG_FOLLOWING
                    | FLAG_HOLDS_CONNECTIONS
                    | FLAG_STARTING)
                != 0
            {
                return Err(malformed(format!("unknown flags {flags:#04x}")));
            }
            let seq = r.u64();
            let following = r.u16();
            let following = if flags & FLAG_FOLLOWING != 0 {
                Some(following)
            } else if following != 0 {
                return Err(malformed("following id set without its flag".into()));
            } else {
                None
            };
            Message::Heartbeat {
                role,
                healthy: flags & FLAG_HEALTHY != 0,
                has_quorum: flags & FLAG_QUORUM != 0,
                seq,
                following,
                holds_connections: flags & FLAG_HOLDS_CONNECTIONS != 0,
                starting: flags & FLAG_STARTING != 0,
            }
        }
        2 => Message::Ack {
            primary: r.u16(),
            seq: r.u64(),
        },
        3 => Message::VoteRequest {
            proposed_epoch: r.u64(),
        },
        4 => {
            let candidate = r.u16();
            let proposed_epoch = r.u64();
            let granted = match r.u8() {
                0 => false,
                1 => true,
                other => return Err(malformed(format!("granted flag {other}"))),
            };
            Message::Vote {
                candidate,
                proposed_epoch,
                granted,
            }
        }
        6 => Message::Handoff { to: r.u16() },
        _ => Message::Release,
    })
}

/// Checks the frame's shape and MAC, then parses the fields. Never panics, whatever the bytes.
///
/// Only the magic, the version and the length field are read before the MAC is verified (they
/// decide where the MAC is); every other field is interpreted only once the MAC is good.
pub fn decode(bytes: &[u8], key: &AuthKey) -> Result<Envelope, FrameError> {
    let signed = SHAPE.verify(bytes, key)?;
    let mut header = Reader(&bytes[5..HEADER_LEN]);
    let kind = header.u8();
    let sender = header.u16();
    let epoch = header.u64();
    let counter = header.u64();
    let incarnation = header.u64();
    let echo = header.u64();
    let message = decode_body(kind, &signed[HEADER_LEN..])?;
    Ok(Envelope {
        sender,
        epoch,
        counter,
        incarnation,
        echo,
        message,
    })
}

/// Refuses heartbeats recorded earlier and sent again (see [`signed_datagram::ReplayGuard`]).
/// Call [`ReplayGuard::admit`] only after [`decode`] succeeded and the sender is known to be a
/// voter.
pub type ReplayGuard = signed_datagram::ReplayGuard<Envelope>;

impl Stamped for Envelope {
    fn stamp(&self) -> Stamp {
        Stamp {
            sender: self.sender,
            counter: self.counter,
            incarnation: self.incarnation,
            echo: self.echo,
        }
    }
}
