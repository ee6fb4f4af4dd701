//! What the group's signed UDP datagrams share (the heartbeats of [`crate::heartbeat_wire`],
//! the relay requests of [`crate::relay_wire`]): the envelope checked before any field is
//! believed, and the guard against datagrams recorded and sent again.
//!
//! Every such datagram is `magic (4) | version (1) | … | body length (2) | body | HMAC-SHA256
//! (32)`, the body length the last two bytes of a fixed-length header and the MAC over all that
//! precedes it, under the group key. Only the magic, the version and the length are read before
//! the MAC is verified (they say where the MAC is).

use std::collections::HashMap;

use hmac::Mac;

use crate::election_messages::NodeId;
use crate::heartbeat_wire::AuthKey;

/// Bytes of the HMAC-SHA256 that ends every datagram.
pub const MAC_LEN: usize = 32;

/// The fixed parts of one kind of datagram.
#[derive(Debug, Clone, Copy)]
pub struct DatagramShape {
    pub magic: &'static [u8; 4],
    pub version: u8,
    /// Bytes before the body, the body length field included (its last two).
    pub header_len: usize,
    /// The longest valid datagram, MAC included.
    pub max_len: usize,
}

/// Why bytes are not a datagram of a shape, before any field is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeError {
    TooShort { len: usize, min: usize },
    TooLong { len: usize },
    BadMagic,
    UnsupportedVersion(u8),
    LengthMismatch { declared: usize, actual: usize },
    BadMac,
}

impl DatagramShape {
    /// The signed part of `bytes` (header and body), once its shape and its MAC under `key`
    /// are right. Never panics, whatever the bytes.
    pub fn verify<'a>(&self, bytes: &'a [u8], key: &AuthKey) -> Result<&'a [u8], ShapeError> {
        let min = self.header_len + MAC_LEN;
        if bytes.len() < min {
            return Err(ShapeError::TooShort {
                len: bytes.len(),
                min,
            });
        }
        if bytes.len() > self.max_len {
            return Err(ShapeError::TooLong { len: bytes.len() });
        }
        if &bytes[..4] != self.magic {
            return Err(ShapeError::BadMagic);
        }
        if bytes[4] != self.version {
            return Err(ShapeError::UnsupportedVersion(bytes[4]));
        }
        let declared = usize::from(u16::from_be_bytes([
            bytes[self.header_len - 2],
            bytes[self.header_len - 1],
        ]));
        let actual = bytes.len() - min;
        if declared != actual {
            return Err(ShapeError::LengthMismatch { declared, actual });
        }
        let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut mac = key.mac();
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| ShapeError::BadMac)?;
        Ok(signed)
    }

    /// A datagram of this shape: the magic, the version, `kind`, the wire's own header
    /// `fields` (the header then ends with the body length), `body`, and the MAC under `key`.
    pub fn encode(&self, kind: u8, fields: &[u8], body: &[u8], key: &AuthKey) -> Vec<u8> {
        debug_assert_eq!(
            6 + fields.len() + 2,
            self.header_len,
            "a header of the shape"
        );
        let mut out = Vec::with_capacity(self.header_len + body.len() + MAC_LEN);
        out.extend_from_slice(self.magic);
        out.push(self.version);
        out.push(kind);
        out.extend_from_slice(fields);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        let mut mac = key.mac();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }
}

/// What the replay guard reads of a datagram: who sent it, its counter, the sender's
/// incarnation, and the receiver's incarnation it echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sender: NodeId,
    pub counter: u64,
    pub incarnation: u64,
    pub echo: u64,
}

/// Why the replay guard refuses a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayRefusal {
    #[error("replayed datagram from node {sender}: counter {counter} is not above {highest}")]
    Replayed {
        sender: NodeId,
        counter: u64,
        highest: u64,
    },
    #[error(
        "datagram from node {sender} names incarnation {echo} of this node, not the current \
         one: sent before this node started, or before the sender heard it"
    )]
    Unfresh { sender: NodeId, echo: u64 },
}

/// A datagram the replay guard can judge.
pub trait Stamped {
    fn stamp(&self) -> Stamp;
}

/// Refuses datagrams recorded earlier and sent again: within a receiver's life by the counter
/// (strictly increasing per sender), and across its restarts by the echo (a datagram must name
/// the receiver's current incarnation, which none sent before the receiver started can).
///
/// Call [`ReplayGuard::admit`] only after the datagram's MAC was verified and its sender is a
/// member of the group: recording a forged counter would let a forger lock a real peer out,
/// and unknown senders would grow the map.
///
/// Senders seed their counter from the wall clock in microseconds at start, so a restarted
/// sender continues above the values a receiver remembers from its previous life. A restarted
/// receiver remembers nothing, and needs nothing: it takes a peer's datagrams once they echo
/// its new incarnation, which the peer learns from its first datagrams. Until then it learns
/// each peer's incarnation from datagrams whose counter is new, so that it can echo them.
#[derive(Debug, Clone)]
pub struct ReplayGuard<D> {
    incarnation: u64,
    peers: HashMap<NodeId, PeerMarks>,
    kind: std::marker::PhantomData<fn(&D)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PeerMarks {
    highest: u64,
    incarnation: u64,
}

impl<D: Stamped> ReplayGuard<D> {
    /// The guard of a receiver whose incarnation is `incarnation` (random, drawn at start; 0 is
    /// replaced by 1, since 0 is what a sender echoes before it heard anything).
    pub fn new(incarnation: u64) -> ReplayGuard<D> {
        ReplayGuard {
            incarnation: incarnation.max(1),
            peers: HashMap::new(),
            kind: std::marker::PhantomData,
        }
    }

    /// This receiver's incarnation, which its own datagrams carry.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// What a datagram to `peer` echoes: the peer's incarnation as last learned, or 0.
    pub fn echo_for(&self, peer: NodeId) -> u64 {
        self.peers.get(&peer).map_or(0, |p| p.incarnation)
    }

    /// Teaches the guard `peer`'s incarnation learned elsewhere (from another kind of
    /// datagram), so that the first datagram to it already echoes it.
    pub fn learn_incarnation(&mut self, peer: NodeId, incarnation: u64) {
        self.peers.entry(peer).or_default().incarnation = incarnation;
    }

    /// Admits `datagram` if its counter is above every counter accepted from its sender and
    /// it echoes this receiver's incarnation. A new counter with another echo is refused
    /// ([`ReplayRefusal::Unfresh`]) yet teaches the sender's incarnation: it is a peer that has
    /// not heard this receiver since it started (or a datagram from before that).
    pub fn admit(&mut self, datagram: &D) -> Result<(), ReplayRefusal> {
        let Stamp {
            sender,
            counter,
            incarnation,
            echo,
        } = datagram.stamp();
        let peer = self.peers.entry(sender).or_default();
        if counter <= peer.highest {
            return Err(ReplayRefusal::Replayed {
                sender,
                counter,
                highest: peer.highest,
            });
        }
        peer.highest = counter;
        peer.incarnation = incarnation;
        if echo != self.incarnation {
            return Err(ReplayRefusal::Unfresh { sender, echo });
        }
        Ok(())
    }
}
