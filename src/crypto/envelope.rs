//! The stored layout of every ciphertext: `format(1) | nonce(24) | ciphertext+tag`.
//!
//! The format byte is not trusted on its own: it is also part of every
//! associated data (see [`super::aad`]), so changing it fails authentication.

use crate::error::{Error, Result};

/// The only layout so far.
pub const FORMAT_V1: u8 = 1;
/// XChaCha20-Poly1305 nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;

/// A parsed, not yet authenticated, envelope borrowing its input.
#[derive(PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The per-seal random nonce.
    pub nonce: &'a [u8; NONCE_LEN],
    /// Ciphertext followed by the tag.
    pub ciphertext: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Splits stored bytes into their parts. Any malformed input is
    /// [`Error::DataLoss`]: stored bytes we wrote ourselves are never malformed.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let (&format, rest) = bytes.split_first().ok_or(Error::DataLoss)?;
        if format != FORMAT_V1 {
            return Err(Error::DataLoss);
        }
        let (nonce, ciphertext) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(Error::DataLoss)?;
        if ciphertext.len() < TAG_LEN {
            return Err(Error::DataLoss);
        }
        Ok(Self { nonce, ciphertext })
    }
}

/// Written out rather than derived: lengths only, never the nonce or the
/// ciphertext bytes (nothing stored should be copied into a log line).
impl std::fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("nonce_len", &self.nonce.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Lays out a fresh envelope.
pub fn encode(nonce: &[u8; NONCE_LEN], ciphertext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(nonce);
    out.extend_from_slice(ciphertext);
    out
}
