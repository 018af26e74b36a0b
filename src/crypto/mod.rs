//! Envelope encryption: root key -> versioned KEKs -> per-token data keys.
//!
//! - The **root key** (the "master key") comes from a key file and only ever
//!   seals the keyring: the KEKs and a key-check value.
//! - Each **KEK** version wraps data keys; the version is stored beside every
//!   wrapped data key and bound into its associated data, and decryption uses
//!   exactly that version, never "try them all".
//! - Each token has its own random **data key**, which seals the value.
//!
//! Every ciphertext is XChaCha20-Poly1305 with a fresh 192-bit nonce from the
//! OS RNG, laid out by [`envelope`], and bound to immutable facts of its row
//! through associated data built by [`aad`]. A ciphertext that fails to open
//! is [`crate::Error::DataLoss`], which carries no detail.

pub mod aad;
pub mod chain;
pub mod envelope;
mod handle;
mod keyring;
mod root_key;
mod source;

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305,
    aead::{Aead, Payload},
};
use zeroize::Zeroizing;

pub use handle::KeyringHandle;
pub use keyring::{Keyring, new_deployment_id};
pub use root_key::{KeyFile, RootKey, hex_encode};
pub use source::{KeySource, RootMaterial};

use crate::error::{Error, Result};

/// Length of every symmetric key in the scheme, in bytes.
pub const KEY_LEN: usize = 32;

/// A 256-bit symmetric key, zeroized on drop and never printed.
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    /// A fresh key from the OS RNG.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(bytes.as_mut())?;
        Ok(Self(bytes))
    }

    /// A key from exactly [`KEY_LEN`] bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(bytes);
        Some(Self(key))
    }

    /// The raw key bytes, for sealing this key under another one.
    fn expose(&self) -> &[u8] {
        self.0.as_ref()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        // The cipher copies the key and zeroizes its copy on drop
        // (chacha20poly1305 0.10 implements ZeroizeOnDrop).
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }

    /// Seals `plaintext` under this key, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; envelope::NONCE_LEN];
        fill_random(&mut nonce)?;
        let ciphertext = self
            .cipher()
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| Error::Internal("AEAD seal failed".into()))?;
        Ok(envelope::encode(&nonce, &ciphertext))
    }

    /// Opens an envelope made by [`SecretKey::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let parsed = envelope::Envelope::parse(sealed)?;
        self.cipher()
            .decrypt(
                parsed.nonce.into(),
                Payload {
                    msg: parsed.ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| Error::DataLoss)
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([REDACTED])")
    }
}

/// Fills `buf` from the operating system's RNG.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Internal(format!("OS random number generator: {e}")))
}

#[cfg(test)]
mod tests;
