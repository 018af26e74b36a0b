//! Associated data: what each ciphertext is bound to.
//!
//! Every AAD starts with a purpose label that includes the envelope format,
//! followed by length-prefixed fields. Only immutable facts go in: the tenant,
//! the token's internal uid (never the renamable token id), the KEK version,
//! the deployment id. A ciphertext moved to another row, tenant, purpose or
//! key version therefore fails to open.

use crate::model::TokenUid;

/// Builds a label-prefixed, length-delimited byte string.
struct Builder(Vec<u8>);

impl Builder {
    fn new(label: &str) -> Self {
        let mut builder = Self(Vec::with_capacity(64));
        builder = builder.field(label.as_bytes());
        builder.0.push(super::envelope::FORMAT_V1);
        builder
    }

    fn field(mut self, bytes: &[u8]) -> Self {
        // Lengths are bounded by validation (ids <= 63 bytes); u32 is ample.
        self.0
            .extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
}

/// AAD of a token value sealed under its data key.
pub fn value(tenant: &str, uid: &TokenUid) -> Vec<u8> {
    Builder::new("aitokens/value")
        .field(tenant.as_bytes())
        .field(uid.as_bytes())
        .0
}

/// AAD of a data key wrapped under KEK `kek_version`.
pub fn data_key(tenant: &str, uid: &TokenUid, kek_version: u32) -> Vec<u8> {
    Builder::new("aitokens/data-key")
        .field(tenant.as_bytes())
        .field(uid.as_bytes())
        .field(&kek_version.to_be_bytes())
        .0
}

/// AAD of KEK `version` sealed under the root key.
pub fn kek(deployment: &[u8], version: u32) -> Vec<u8> {
    Builder::new("aitokens/kek")
        .field(deployment)
        .field(&version.to_be_bytes())
        .0
}

/// AAD of the key-check value sealed under the root key.
pub fn key_check(deployment: &[u8]) -> Vec<u8> {
    Builder::new("aitokens/key-check").field(deployment).0
}

/// AAD of the keyring's audit key (the secret the audit chain key is
/// derived from) sealed under the root key.
pub fn audit_key(deployment: &[u8]) -> Vec<u8> {
    Builder::new("aitokens/audit-key").field(deployment).0
}
