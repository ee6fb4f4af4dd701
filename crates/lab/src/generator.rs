//! The deterministic byte generator behind `GET /bytes/N?seed=S`, `GET /slow` and the static files
//! the lab writes for nginx and apache2.
//!
//! # Definition
//!
//! The body for length `N` and seed `S` is the first `N` bytes of the stream
//! `w(S, 0) ‖ w(S, 1) ‖ w(S, 2) ‖ …`, where each word `w(S, k)` is written as 8 little-endian
//! bytes and is the `(k + 1)`-th output of SplitMix64 seeded with `S`:
//!
//! ```text
//! state = S + (k + 1) · 0x9E3779B97F4A7C15            (wrapping, mod 2^64)
//! z = (state ⊕ (state >> 30)) · 0xBF58476D1CE4E5B9     (wrapping)
//! z = (z ⊕ (z >> 27)) · 0x94D049BB133111EB             (wrapping)
//! w(S, k) = z ⊕ (z >> 31)
//! ```
//!
//! So byte `i` of any body with seed `S` is byte `i mod 8` of `w(S, i div 8)`: a body of length `N`
//! is a prefix of every longer body with the same seed, and any range can be produced or checked
//! without generating what comes before it (random access is what lets a verifier check a 64 MiB
//! reply chunk by chunk without holding it).
//!
//! Example: seed 0 starts with `w(0, 0) = 0xE220A8397B1DCDAF`, i.e. bytes
//! `af cd 1d 7b 39 a8 20 e2`.

use std::io::Write;
use std::path::Path;

/// SplitMix64's increment (the odd integer closest to 2^64 / φ).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Size of the stack buffer used when producing or comparing bytes in pieces.
const PIECE: usize = 4096;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `index` of the stream for `seed` (see the module documentation).
pub fn word(seed: u64, index: u64) -> u64 {
    mix(seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// Writes bytes `offset .. offset + out.len()` of the stream for `seed` into `out`.
pub fn fill_at(seed: u64, offset: u64, out: &mut [u8]) {
    let mut position = offset;
    let mut written = 0;
    while written < out.len() {
        let word_bytes = word(seed, position / 8).to_le_bytes();
        let within = (position % 8) as usize;
        let take = (8 - within).min(out.len() - written);
        out[written..written + take].copy_from_slice(&word_bytes[within..within + take]);
        written += take;
        position += take as u64;
    }
}

/// The whole body for length `len` and `seed`. For large bodies prefer [`fill_at`] or
/// [`BodyVerifier`], which work in pieces.
pub fn expected_bytes(len: u64, seed: u64) -> Vec<u8> {
    let len = usize::try_from(len).expect("a body that fits in memory was asked for");
    let mut out = vec![0; len];
    fill_at(seed, 0, &mut out);
    out
}

/// Writes the body for `len` and `seed` to a file (the lab's docroot files for nginx and
/// apache2), so the load client can verify what those servers return.
pub fn write_expected_file(path: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut piece = [0u8; PIECE];
    let mut offset = 0u64;
    while offset < len {
        let take = (len - offset).min(PIECE as u64) as usize;
        fill_at(seed, offset, &mut piece[..take]);
        file.write_all(&piece[..take])?;
        offset += take as u64;
    }
    file.flush()
}

/// Why a received body is not the expected one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("body byte {offset} differs from the generator's output (seed {seed})")]
    Mismatch { offset: u64, seed: u64 },
    #[error("body is longer than the expected {expected} bytes (seed {seed})")]
    TooLong { expected: u64, seed: u64 },
    #[error("body ended after {received} of the expected {expected} bytes (seed {seed})")]
    TooShort {
        received: u64,
        expected: u64,
        seed: u64,
    },
}

/// Checks a body against the generator as it arrives, piece by piece, without holding it.
#[derive(Debug, Clone)]
pub struct BodyVerifier {
    seed: u64,
    expected_len: u64,
    received: u64,
}

impl BodyVerifier {
    pub fn new(expected_len: u64, seed: u64) -> Self {
        Self {
            seed,
            expected_len,
            received: 0,
        }
    }

    /// Bytes accepted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Checks the next piece of the body.
    pub fn update(&mut self, mut piece: &[u8]) -> Result<(), VerifyError> {
        if piece.len() as u64 > self.expected_len - self.received {
            return Err(VerifyError::TooLong {
                expected: self.expected_len,
                seed: self.seed,
            });
        }
        let mut expected = [0u8; PIECE];
        while !piece.is_empty() {
            let take = piece.len().min(PIECE);
            fill_at(self.seed, self.received, &mut expected[..take]);
            if let Some(differs) = (0..take).find(|&i| piece[i] != expected[i]) {
                return Err(VerifyError::Mismatch {
                    offset: self.received + differs as u64,
                    seed: self.seed,
                });
            }
            self.received += take as u64;
            piece = &piece[take..];
        }
        Ok(())
    }

    /// Call at the end of the body: fails when bytes are missing.
    pub fn finish(&self) -> Result<(), VerifyError> {
        if self.received == self.expected_len {
            Ok(())
        } else {
            Err(VerifyError::TooShort {
                received: self.received,
                expected: self.expected_len,
                seed: self.seed,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_zero_starts_with_the_documented_word() {
        assert_eq!(word(0, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(
            expected_bytes(8, 0),
            [0xaf, 0xcd, 0x1d, 0x7b, 0x39, 0xa8, 0x20, 0xe2]
        );
    }

    #[test]
    fn verifier_reports_the_first_differing_offset() {
        let mut body = expected_bytes(10_000, 7);
        body[5000] ^= 1;
        let mut verifier = BodyVerifier::new(10_000, 7);
        assert_eq!(
            verifier.update(&body),
            Err(VerifyError::Mismatch {
                offset: 5000,
                seed: 7
            })
        );
    }
}
