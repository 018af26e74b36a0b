//! Tokens as the layers exchange them: metadata records, sealed values, and
//! the one type that holds a plaintext value.

use std::time::SystemTime;

use super::{TokenId, TokenName};
use crate::error::{Error, Result};

/// A token's internal id: random, never shown, never changed by a rename.
/// Ciphertexts are bound to it, so they cannot be moved between rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenUid([u8; 16]);

impl TokenUid {
    /// A fresh random uid.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::Internal(format!("OS random number generator: {e}")))?;
        Ok(Self(bytes))
    }

    /// A uid read back from the store; `None` unless exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

/// A token's metadata, as stored. Never holds the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// Internal immutable id; binds the ciphertexts to this row.
    pub uid: TokenUid,
    /// Creation sequence within the store: the stable listing order.
    pub seq: i64,
    /// Tenant and token id.
    pub name: TokenName,
    /// Human-readable label.
    pub display_name: String,
    /// When the token was created.
    pub create_time: SystemTime,
    /// When the id, display name or state last changed.
    pub update_time: SystemTime,
    /// Bumped on every metadata change; the etag is derived from it.
    pub revision: i64,
    /// Kill switch: a disabled token does not resolve.
    pub disabled: bool,
    /// The token (same tenant) this one replaces, while it exists.
    pub replaces: Option<TokenId>,
    /// The token (same tenant) that replaces this one, while it exists.
    pub replaced_by: Option<TokenId>,
    /// Last allowed resolve by any caller.
    pub last_resolve: Option<SystemTime>,
    /// Allowed resolves by all callers.
    pub resolve_count: i64,
}

impl TokenRecord {
    /// A new token's record: revision 1, enabled, not linked to another
    /// token, never resolved; created and updated at `time`.
    pub fn new(uid: TokenUid, name: TokenName, display_name: String, time: SystemTime) -> Self {
        Self {
            uid,
            seq: 0,
            name,
            display_name,
            create_time: time,
            update_time: time,
            revision: 1,
            disabled: false,
            replaces: None,
            replaced_by: None,
            last_resolve: None,
            resolve_count: 0,
        }
    }

    /// The opaque etag clients use for conditional changes (AIP-154).
    /// Derived from the immutable uid and the revision, so a removed and
    /// re-created token never shares an etag with its predecessor.
    pub fn etag(&self) -> String {
        let uid = self.uid.as_bytes();
        let prefix = u32::from_be_bytes([uid[0], uid[1], uid[2], uid[3]]);
        format!("{prefix:08x}-{}", self.revision)
    }

    /// Name of a sibling token of the same tenant.
    pub fn sibling(&self, id: &TokenId) -> TokenName {
        TokenName {
            tenant: self.name.tenant.clone(),
            token_id: id.clone(),
        }
    }

    /// Name of the token this one replaces.
    pub fn replaces_name(&self) -> Option<TokenName> {
        self.replaces.as_ref().map(|id| self.sibling(id))
    }

    /// Name of the token that replaces this one.
    pub fn replaced_by_name(&self) -> Option<TokenName> {
        self.replaced_by.as_ref().map(|id| self.sibling(id))
    }
}

/// A token value as stored: its data key wrapped under one KEK version, and
/// the value sealed under that data key. Its `Debug` shows no bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue {
    /// The KEK version that wraps `wrapped_data_key`.
    pub kek_version: u32,
    /// The token's data key, sealed under KEK `kek_version`.
    pub wrapped_data_key: Vec<u8>,
    /// The token value, sealed under the data key.
    pub value_ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedValue")
            .field("kek_version", &self.kek_version)
            .finish_non_exhaustive()
    }
}

/// What the resolve path needs of a token: no more than one indexed read.
#[derive(Clone, Debug)]
pub struct SealedToken {
    /// The token's internal id.
    pub uid: TokenUid,
    /// Kill switch.
    pub disabled: bool,
    /// Whether another token replaces this one.
    pub replaced: bool,
    /// The sealed value.
    pub sealed: SealedValue,
    /// The certificate identities its bindings name (bindings-only mode
    /// resolves only for these).
    pub bound_identities: Vec<String>,
}

/// A token value in memory: zeroized on drop, never printed.
pub struct SecretValue(zeroize::Zeroizing<String>);

impl SecretValue {
    /// Takes ownership of `value` without copying it.
    pub fn new(value: String) -> Self {
        Self(zeroize::Zeroizing::new(value))
    }

    /// The value, for sealing or for the one response that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Moves the value out (for the ResolveToken response, which zeroizes
    /// its own copy on drop).
    pub fn into_string(mut self) -> String {
        std::mem::take(&mut *self.0)
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue([REDACTED])")
    }
}
