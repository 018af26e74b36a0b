//! The audit trail's hash chain: each record's hash covers the previous
//! record's hash, its sequence number and its canonical encoding, so a
//! removed, inserted or edited record breaks every link after it.

use sha2::{Digest, Sha256};

use crate::model::{AuditEvent, micros};

/// Length of a chain hash.
pub const HASH_LEN: usize = 32;
/// The hash before the first record.
pub const GENESIS: [u8; HASH_LEN] = [0; HASH_LEN];

/// The chain hash of record `seq` holding `event`, following `prev`.
pub fn chain_hash(prev: &[u8], seq: i64, event: &AuditEvent) -> [u8; HASH_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(b"aitokens-audit-v1");
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(micros(event.time).to_be_bytes());
    for field in [
        event.actor.as_str(),
        event.peer.as_str(),
        event.method.as_str(),
        event.tenant.as_deref().unwrap_or(""),
        event.resource.as_str(),
        event.outcome.as_str(),
        event.reason.as_str(),
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.update([u8::from(event.tenant.is_some())]);
    hasher.finalize().into()
}
