//! The audit trail's chain: each record's link is an HMAC-SHA-256, under
//! the chain key, of the previous link, its sequence number and its
//! canonical encoding, so a removed, inserted or edited record breaks every
//! link after it, and nobody without the key (database access alone is not
//! enough) can compute a chain that verifies. Checkpoints (sequence, head,
//! time) carry a MAC under a second key derived from the same secret, so a
//! copy kept outside the database proves what the trail held.
//!
//! The chain key is derived from the keyring's audit key, a random key
//! sealed under the root key beside the KEKs (see [`super::Keyring`]): it
//! survives a rekey, so the trail verifies across root-key changes.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::SecretKey;
use crate::model::{AuditEvent, micros};

/// Length of a chain link.
pub const HASH_LEN: usize = 32;
/// The link before the first record.
pub const GENESIS: [u8; HASH_LEN] = [0; HASH_LEN];

type HmacSha256 = Hmac<Sha256>;

/// The keys of the audit chain. Zeroized on drop, never printed.
pub struct ChainKey {
    link: Zeroizing<[u8; HASH_LEN]>,
    checkpoint: Zeroizing<[u8; HASH_LEN]>,
}

impl ChainKey {
    /// The chain keys derived from the keyring's audit key.
    pub(super) fn derive(audit_key: &SecretKey) -> Self {
        let derive = |label: &[u8]| {
            let mut mac = mac(audit_key.expose());
            mac.update(label);
            Zeroizing::new(<[u8; HASH_LEN]>::from(mac.finalize().into_bytes()))
        };
        Self {
            link: derive(b"aitokens/audit/link/v2"),
            checkpoint: derive(b"aitokens/audit/checkpoint/v1"),
        }
    }

    /// A chain key from raw bytes, for tests that need a chain without a
    /// keyring.
    #[cfg(any(test, feature = "testkit"))]
    pub fn from_secret_for_tests(secret: [u8; HASH_LEN]) -> Self {
        Self::derive(&SecretKey(Zeroizing::new(secret)))
    }

    /// The link of record `seq` holding `event`, following `prev`.
    pub fn link(&self, prev: &[u8], seq: i64, event: &AuditEvent) -> [u8; HASH_LEN] {
        let mut mac = mac(self.link.as_ref());
        mac.update(b"aitokens-audit-v2");
        mac.update(prev);
        mac.update(&seq.to_be_bytes());
        mac.update(&micros(event.time).to_be_bytes());
        mac.update(&micros(event.first_time).to_be_bytes());
        mac.update(&event.count.to_be_bytes());
        for field in fields(event) {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac.update(&[u8::from(event.tenant.is_some())]);
        mac.finalize().into_bytes().into()
    }

    /// The MAC of a checkpoint: the trail held record `seq` with link `head`
    /// at `time_us`.
    pub fn checkpoint_mac(&self, seq: i64, head: &[u8], time_us: i64) -> [u8; HASH_LEN] {
        let mut mac = mac(self.checkpoint.as_ref());
        mac.update(b"aitokens-audit-checkpoint-v1");
        mac.update(&seq.to_be_bytes());
        mac.update(head);
        mac.update(&time_us.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of that checkpoint (compared in constant time).
    pub fn checkpoint_holds(&self, seq: i64, head: &[u8], time_us: i64, tag: &[u8]) -> bool {
        let mut mac = mac(self.checkpoint.as_ref());
        mac.update(b"aitokens-audit-checkpoint-v1");
        mac.update(&seq.to_be_bytes());
        mac.update(head);
        mac.update(&time_us.to_be_bytes());
        mac.verify_slice(tag).is_ok()
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey([REDACTED])")
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // Invariant: HMAC takes a key of any length.
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

fn fields(event: &AuditEvent) -> [&str; 7] {
    [
        event.actor.as_str(),
        event.peer.as_str(),
        event.method.as_str(),
        event.tenant.as_deref().unwrap_or(""),
        event.resource.as_str(),
        event.outcome.as_str(),
        event.reason.as_str(),
    ]
}

/// The unkeyed SHA-256 link of the first chain format: only for checking a
/// trail written before chains were keyed, once, before it is re-linked
/// under the chain key. Never accepted when verifying.
pub fn legacy_link(prev: &[u8], seq: i64, event: &AuditEvent) -> [u8; HASH_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(b"aitokens-audit-v1");
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(micros(event.time).to_be_bytes());
    for field in fields(event) {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.update([u8::from(event.tenant.is_some())]);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Outcome};

    fn event() -> AuditEvent {
        Actor {
            identity: "spiffe://t/admin".into(),
            peer: "127.0.0.1:1".into(),
            method: "m",
        }
        .event(
            Some("acme"),
            "tenants/acme/tokens/t",
            Outcome::Allowed,
            "created",
        )
    }

    #[test]
    fn links_depend_on_the_key_and_on_every_field() {
        let (a, b) = (
            ChainKey::from_secret_for_tests([1; 32]),
            ChainKey::from_secret_for_tests([2; 32]),
        );
        let e = event();
        let link = a.link(&GENESIS, 1, &e);
        assert_eq!(link, a.link(&GENESIS, 1, &e));
        assert_ne!(link, b.link(&GENESIS, 1, &e), "another key, another chain");
        assert_ne!(link, a.link(&GENESIS, 2, &e));
        assert_ne!(link, legacy_link(&GENESIS, 1, &e));
        let mut counted = e.clone();
        counted.count = 2;
        assert_ne!(link, a.link(&GENESIS, 1, &counted));
        let tag = a.checkpoint_mac(7, &link, 99);
        assert!(a.checkpoint_holds(7, &link, 99, &tag));
        assert!(!a.checkpoint_holds(8, &link, 99, &tag));
        assert!(!b.checkpoint_holds(7, &link, 99, &tag));
        assert_eq!(format!("{a:?}"), "ChainKey([REDACTED])");
    }
}
