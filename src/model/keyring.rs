//! The keyring as the store keeps it: everything sealed under the root key.

use crate::error::{Error, Result};

/// The sealed keyring of one deployment.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyringRecords {
    /// Random id of the database this keyring belongs to.
    pub deployment_id: Vec<u8>,
    /// A fixed check value sealed under the root key: tells a wrong key from
    /// a corrupt keyring.
    pub key_check: Vec<u8>,
    /// The version that seals new data keys.
    pub current_version: u32,
    /// Every KEK version, sealed under the root key.
    pub sealed_keks: Vec<(u32, Vec<u8>)>,
    /// Argon2id parameters when the root key comes from a passphrase.
    pub kdf: Option<KdfParams>,
    /// The audit key (the secret the audit chain key comes from), sealed
    /// under the root key; `None` in a keyring made before chains were keyed.
    pub sealed_audit_key: Option<Vec<u8>>,
}

impl KeyringRecords {
    /// The stored KEK versions, in order.
    pub fn versions(&self) -> Vec<u32> {
        self.sealed_keks.iter().map(|(v, _)| *v).collect()
    }
}

/// Shows versions only: sealed bytes are nothing a log needs.
impl std::fmt::Debug for KeyringRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringRecords")
            .field("current_version", &self.current_version)
            .field("versions", &self.versions())
            .field("passphrase", &self.kdf.is_some())
            .field("audit_key", &self.sealed_audit_key.is_some())
            .finish_non_exhaustive()
    }
}

/// Argon2id parameters and salt, stored with the keyring of a
/// passphrase-protected database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Random salt.
    pub salt: Vec<u8>,
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, t=3, p=4, with a fresh
    /// 16-byte salt.
    pub fn generate() -> Result<Self> {
        let mut salt = vec![0u8; 16];
        getrandom::fill(&mut salt)
            .map_err(|e| Error::Internal(format!("OS random number generator: {e}")))?;
        Ok(Self {
            salt,
            m_kib: 64 * 1024,
            t: 3,
            p: 4,
        })
    }

    /// Refuses parameters weaker than RFC 9106's second option, or so large
    /// that a tampered database could exhaust memory or hang the start.
    pub fn check(&self) -> Result<()> {
        if self.m_kib < 64 * 1024 || self.t < 3 || self.p < 4 || self.salt.len() < 16 {
            return Err(Error::master_key(
                "stored Argon2id parameters are weaker than 64 MiB, t=3, p=4 (tampered?)",
            ));
        }
        // 4 GiB, 64 passes, 64 lanes.
        if self.m_kib > 4 * 1024 * 1024 || self.t > 64 || self.p > 64 || self.salt.len() > 64 {
            return Err(Error::master_key(
                "stored Argon2id parameters are implausibly large (tampered?)",
            ));
        }
        Ok(())
    }
}
