//! Per-frame protection of the replication stream: after the handshake every frame carries an
//! AES-256-GCM tag under a key of its own link and direction, and its body is encrypted unless
//! the group turned encryption off (a trusted private link); authentication is never off.
//!
//! The handshake (`Hello` and `Proof` of `replication_wire`) is a challenge-response over the
//! group key and two fresh nonces. Each direction's key comes from that transcript (HKDF-SHA256
//! over the group key, both ends' node ids, nonces and link attempts), so a key belongs to one
//! sender, one receiver and one stream: a frame forged without the group key, reflected back to
//! its sender, or replayed from another stream fails its tag. Within a stream frames are
//! numbered by an implicit counter, the GCM nonce, so a frame replayed, dropped or moved fails
//! too. The epoch in each frame's header is authenticated with it.
//!
//! Written here rather than taken from a TLS or Noise library: rustls offers no pre-shared-key
//! mode for a group secret, and Noise (snow) caps a message at 64 KiB where a reply piece is up
//! to 4 MiB; what they would add over this is a Diffie-Hellman exchange (forward secrecy),
//! which a shared group key does not call for. The cipher itself is ring's.
//!
//! A sealed frame is the plain frame (`len: u32`, `kind: u8`, `epoch: u64`, body) with `len`
//! grown by the 16 bytes of the tag that follows the body; the tag covers the 13 header bytes
//! and the body. Encrypted: the body is the ciphertext. Authenticated only: the body stays in
//! clear and the tag is that of its encryption, made on a copy and recomputed by the receiver
//! from the clear body. Forging it means forging a GCM tag under a nonce not yet used, without
//! the key, as for an encrypted frame. It is computed that way rather than as GCM's tag over
//! additional data alone because ring hashes additional data block by block while it encrypts
//! on its stitched AES-NI/CLMUL path: measured, the tag over the frame as additional data made
//! a 1 MB reply cost 1.7 times the CPU of encrypting it.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, NONCE_LEN as GCM_NONCE};
use ring::hkdf;

use crate::heartbeat_wire::AuthKey;
use crate::replication_wire::{LinkAttempt, HEADER_LEN, NONCE_LEN};
use crate::NodeId;

/// Bytes a sealed frame adds to the plain one.
pub const TAG_LEN: usize = 16;
const KEY_SALT: &[u8] = b"steadfast replication v2 keys";

/// What the replication stream's frames get beyond the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// A tag on every frame; bodies in clear.
    Authenticated,
    /// A tag on every frame and encrypted bodies (the default).
    Encrypted,
}

impl Protection {
    pub fn label(self) -> &'static str {
        match self {
            Protection::Authenticated => "authenticated",
            Protection::Encrypted => "authenticated and encrypted",
        }
    }

    /// Its byte in a `Hello`.
    pub fn wire(self) -> u8 {
        match self {
            Protection::Authenticated => 1,
            Protection::Encrypted => 2,
        }
    }

    pub fn from_wire(byte: u8) -> Option<Protection> {
        match byte {
            1 => Some(Protection::Authenticated),
            2 => Some(Protection::Encrypted),
            _ => None,
        }
    }
}

/// One end of a replication stream as its `Hello` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkEnd {
    pub node: NodeId,
    pub nonce: [u8; NONCE_LEN],
    pub attempt: LinkAttempt,
}

/// A frame that cannot be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "frame number {number} fails its authentication tag: forged, replayed, reordered, \
         corrupted, or sealed with another key"
    )]
    Unauthentic { number: u64 },
    #[error("sealed frame of {len} bytes is shorter than a header and a tag")]
    TooShort { len: usize },
    #[error("this stream has numbered every frame it can; it must be opened anew")]
    Exhausted,
}

/// The two keys of one end of a stream: what it sends and what it receives.
pub fn channel(
    key: &AuthKey,
    protection: Protection,
    own: &LinkEnd,
    peer: &LinkEnd,
) -> (Sealer, Opener) {
    (
        Sealer(Numbered::new(key, protection, own, peer)),
        Opener(Numbered::new(key, protection, peer, own)),
    )
}

/// A direction's key and the number of the next frame.
struct Numbered {
    key: LessSafeKey,
    protection: Protection,
    next: u64,
    /// Authenticated only: where a body is encrypted to get its tag.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Numbered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} frames, next {}", self.protection.label(), self.next)
    }
}

impl Numbered {
    fn new(key: &AuthKey, protection: Protection, sender: &LinkEnd, receiver: &LinkEnd) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, KEY_SALT).extract(key.secret());
        let protection_byte = [protection.wire()];
        let sender_id = sender.node.to_be_bytes();
        let sender_incarnation = sender.attempt.incarnation.to_be_bytes();
        let sender_number = sender.attempt.number.to_be_bytes();
        let receiver_id = receiver.node.to_be_bytes();
        let receiver_incarnation = receiver.attempt.incarnation.to_be_bytes();
        let receiver_number = receiver.attempt.number.to_be_bytes();
        let info: [&[u8]; 9] = [
            &protection_byte,
            &sender_id,
            &sender_incarnation,
            &sender_number,
            &sender.nonce,
            &receiver_id,
            &receiver_incarnation,
            &receiver_number,
            &receiver.nonce,
        ];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .expect("HKDF-SHA256 yields a 32-byte key");
        Numbered {
            key: LessSafeKey::new(UnboundKey::from(okm)),
            protection,
            next: 0,
            scratch: Vec::new(),
        }
    }

    /// The tag of `body` after `header`: the body's own when it is encrypted in place, else
    /// that of its encryption on a copy.
    fn tag(&mut self, header: &[u8], body: &mut [u8]) -> Result<Tag, ring::error::Unspecified> {
        let nonce = self.nonce();
        match self.protection {
            Protection::Encrypted => {
                self.key
                    .seal_in_place_separate_tag(nonce, Aad::from(header), body)
            }
            Protection::Authenticated => {
                self.scratch.clear();
                self.scratch.extend_from_slice(body);
                self.key
                    .seal_in_place_separate_tag(nonce, Aad::from(header), &mut self.scratch)
            }
        }
    }

    /// The nonce of the next frame; the counter moves on only once the frame is done.
    fn nonce(&self) -> Nonce {
        let mut bytes = [0u8; GCM_NONCE];
        bytes[GCM_NONCE - 8..].copy_from_slice(&self.next.to_be_bytes());
        Nonce::assume_unique_for_key(bytes)
    }
}

/// Seals the frames one end sends, in the order they go on the wire.
#[derive(Debug)]
pub struct Sealer(Numbered);

impl Sealer {
    /// Seals the frame that starts at `start` in `out` and runs to its end (the frame was just
    /// encoded there): grows its length field, encrypts its body unless encryption is off, and
    /// appends its tag.
    pub fn seal(&mut self, out: &mut Vec<u8>, start: usize) -> Result<(), SealError> {
        let inner = &mut self.0;
        let after = inner.next.checked_add(1).ok_or(SealError::Exhausted)?;
        let frame = &mut out[start..];
        if frame.len() < HEADER_LEN {
            return Err(SealError::TooShort { len: frame.len() });
        }
        let sealed_len = (frame.len() - 4 + TAG_LEN) as u32;
        frame[..4].copy_from_slice(&sealed_len.to_be_bytes());
        let (header, body) = frame.split_at_mut(HEADER_LEN);
        let tag = inner.tag(header, body).map_err(|_| SealError::Exhausted)?;
        out.extend_from_slice(tag.as_ref());
        inner.next = after;
        Ok(())
    }
}

/// Opens the frames one end receives, in the order they came.
#[derive(Debug)]
pub struct Opener(Numbered);

impl Opener {
    /// Checks the sealed frame `frame` (length field to tag) and decrypts its body in place;
    /// the plain frame is then `frame[..frame.len() - TAG_LEN]`, its length field still the
    /// sealed one. A frame that fails leaves the counter where it was: the stream carrying it
    /// has no trustworthy boundary after it.
    pub fn open(&mut self, frame: &mut [u8]) -> Result<(), SealError> {
        let inner = &mut self.0;
        if frame.len() < HEADER_LEN + TAG_LEN {
            return Err(SealError::TooShort { len: frame.len() });
        }
        let after = inner.next.checked_add(1).ok_or(SealError::Exhausted)?;
        let unauthentic = SealError::Unauthentic { number: inner.next };
        let (header, rest) = frame.split_at_mut(HEADER_LEN);
        match inner.protection {
            Protection::Encrypted => {
                inner
                    .key
                    .open_in_place(inner.nonce(), Aad::from(&*header), rest)
                    .map_err(|_| unauthentic)?;
            }
            Protection::Authenticated => {
                let (body, received) = rest.split_at_mut(rest.len() - TAG_LEN);
                let expected = inner.tag(header, body).map_err(|_| unauthentic.clone())?;
                // Every byte compared whatever the first difference: no timing to learn from.
                let difference = expected
                    .as_ref()
                    .iter()
                    .zip(received.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b));
                if difference != 0 {
                    return Err(unauthentic);
                }
            }
        }
        inner.next = after;
        Ok(())
    }
}

/// Why [`cut_frame`] cannot cut the next frame of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CutError {
    /// The length field says `len`, above the `max` of a frame of this stream.
    TooLong { len: usize, max: usize },
    /// The length field says `len`, shorter than a frame's header.
    TooShort { len: usize },
    /// The frame is whole but fails its tag.
    Unsealed(SealError),
}

/// Cuts the next frame off a stream of length-prefixed frames (`len: u32`, then `len` bytes:
/// a header of `header_len` bytes in all, length included, and a body), as the replication
/// stream and the active link both frame theirs. `Ok(None)` until the frame is whole; once it
/// is, its tag is checked and its body decrypted in place when `opener` is given. `max_plain`
/// is the longest frame before sealing.
pub fn cut_frame(
    buffered: &mut [u8],
    opener: Option<&mut Opener>,
    header_len: usize,
    max_plain: usize,
) -> Result<Option<CutFrame>, CutError> {
    if buffered.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buffered[..4].try_into().expect("4 bytes")) as usize;
    let tag = if opener.is_some() { TAG_LEN } else { 0 };
    if len > max_plain + tag {
        return Err(CutError::TooLong {
            len,
            max: max_plain + tag,
        });
    }
    if len < header_len - 4 + tag {
        return Err(CutError::TooShort { len });
    }
    if buffered.len() < 4 + len {
        return Ok(None);
    }
    if let Some(opener) = opener {
        opener
            .open(&mut buffered[..4 + len])
            .map_err(CutError::Unsealed)?;
    }
    Ok(Some(CutFrame {
        plain_end: 4 + len - tag,
        end: 4 + len,
    }))
}

/// A frame [`cut_frame`] found whole, at the start of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutFrame {
    /// Where the plain frame ends (its tag, if any, follows).
    pub plain_end: usize,
    /// Where the frame ends, tag included: where the next one starts.
    pub end: usize,
}
