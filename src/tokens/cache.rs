//! An in-memory copy of the rows the resolve path reads: sealed, never opened.
//!
//! Why: the benchmark's profile put a third of a resolve's server CPU in the
//! SQLite point read and the hand-off to a reader thread. A hit here costs a
//! hash lookup; the value is still opened (both AEAD opens) on every resolve,
//! so plaintext never lives longer than one request, and what sits in memory
//! is exactly what sits in the file.
//!
//! Coherence, the part that matters for a secrets service:
//! - Every change this process makes invalidates the affected names once its
//!   transaction has committed, before the change is acknowledged; a remove,
//!   disable or unbind is in force for the very next resolve.
//! - A read that raced with a change must not put the old row back. Every
//!   invalidation bumps an epoch; a reader notes the epoch before its store
//!   read and inserts only if it is unchanged (checked under the shard lock).
//! - Changes by other processes (or by hand with `sqlite3`) bump a generation
//!   counter that triggers maintain in the database (schema migration 4); the
//!   server polls it and clears the cache when it moves.
//! - Only rows that opened are cached. A cached row that no longer opens
//!   (its KEK was destroyed meanwhile) is dropped and read again.
//!
//! Bounded in bytes: a shard over its share of the budget starts over.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use super::TokenName;
use crate::{crypto::TokenUid, store::SealedToken};

const SHARDS: usize = 64;
/// Bookkeeping per entry beyond the bytes it holds (map slot, `Arc`, vectors).
const ENTRY_OVERHEAD: usize = 160;

/// A cached row: what [`crate::store::TokenStore::get_sealed`] returned.
pub(super) type Cached = Arc<SealedToken>;

/// foldhash, seeded per process: names reach the cache only after the
/// policy allowed the caller, and SipHash showed in the resolve profile.
type Hasher = foldhash::fast::RandomState;

#[derive(Default)]
struct Shard {
    rows: HashMap<TokenName, Cached, Hasher>,
    bytes: usize,
}

/// Sealed rows by token name.
pub(super) struct SealedCache {
    shards: Vec<RwLock<Shard>>,
    hasher: Hasher,
    /// Byte budget of each shard; 0 turns the cache off.
    shard_budget: usize,
    /// Bumped by every invalidation (see the module docs).
    epoch: AtomicU64,
    /// Lookups that found nothing.
    misses: AtomicU64,
}

/// The epoch a store read started in; an insert carries it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Epoch(u64);

impl SealedCache {
    /// A cache of at most about `max_bytes`; 0 caches nothing.
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: Hasher::default(),
            shard_budget: max_bytes / SHARDS,
            epoch: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, name: &TokenName) -> &RwLock<Shard> {
        // Truncation is fine: only the low bits pick the shard.
        let index = self.hasher.hash_one(name) as usize % SHARDS;
        &self.shards[index]
    }

    /// The cached row of `name`, if any.
    pub(super) fn get(&self, name: &TokenName) -> Option<Cached> {
        if self.shard_budget == 0 {
            return None;
        }
        let shard = self.shard(name).read().unwrap_or_else(|p| p.into_inner());
        let row = shard.rows.get(name).cloned();
        if row.is_none() {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        row
    }

    /// Call before the store read whose result may be inserted.
    pub(super) fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    /// Caches `row` as read in `epoch`, unless an invalidation came since.
    pub(super) fn insert(&self, epoch: Epoch, name: &TokenName, row: Cached) {
        let size = entry_size(name, &row);
        if size > self.shard_budget {
            return;
        }
        let mut shard = self.shard(name).write().unwrap_or_else(|p| p.into_inner());
        // Under the shard lock: an invalidation either bumped the epoch
        // before this check (and we skip) or removes this entry after it.
        if self.epoch.load(Ordering::Acquire) != epoch.0 {
            return;
        }
        if shard.bytes + size > self.shard_budget {
            shard.rows.clear();
            shard.bytes = 0;
        }
        if let Some(old) = shard.rows.insert(name.clone(), row) {
            shard.bytes -= entry_size(name, &old);
        }
        shard.bytes += size;
    }

    /// Drops the row of `name` (after a committed change to it).
    pub(super) fn invalidate(&self, name: &TokenName) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut shard = self.shard(name).write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = shard.rows.remove(name) {
            shard.bytes -= entry_size(name, &old);
        }
    }

    /// Drops the cached row of `name` only if it is still `row` (a row that
    /// stopped opening; a newer one stays).
    pub(super) fn evict(&self, name: &TokenName, row: &Cached) {
        let mut shard = self.shard(name).write().unwrap_or_else(|p| p.into_inner());
        if shard.rows.get(name).is_some_and(|r| Arc::ptr_eq(r, row)) {
            shard.rows.remove(name);
            shard.bytes -= entry_size(name, row);
        }
    }

    /// Drops everything (the database changed behind this process's back).
    pub(super) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
            shard.rows.clear();
            shard.bytes = 0;
        }
    }

    /// Lookups that found nothing, since start (0 while the cache is off).
    pub(super) fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Rows and approximate bytes held.
    pub(super) fn size(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(rows, bytes), shard| {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            (rows + shard.rows.len(), bytes + shard.bytes)
        })
    }
}

fn entry_size(name: &TokenName, row: &SealedToken) -> usize {
    ENTRY_OVERHEAD
        + name.tenant.as_str().len()
        + name.token_id.as_str().len()
        + std::mem::size_of::<TokenUid>()
        + row.sealed.wrapped_data_key.len()
        + row.sealed.value_ciphertext.len()
        + row.bound_identities.iter().map(String::len).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SealedValue;

    fn name(id: &str) -> TokenName {
        TokenName::parse(&format!("tenants/acme/tokens/{id}"), "name").expect("name")
    }

    fn row(byte: u8, len: usize) -> Cached {
        Arc::new(SealedToken {
            uid: TokenUid::from_slice(&[byte; 16]).expect("uid"),
            disabled: false,
            replaced: false,
            sealed: SealedValue {
                kek_version: 1,
                wrapped_data_key: vec![byte; 72],
                value_ciphertext: vec![byte; len],
            },
            bound_identities: Vec::new(),
        })
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_cached() {
        let cache = SealedCache::new(1 << 20);
        let before = cache.epoch();
        // A change commits and invalidates while the read is in flight...
        cache.invalidate(&name("a"));
        // ... so the row that read saw must not land.
        cache.insert(before, &name("a"), row(1, 40));
        assert!(cache.get(&name("a")).is_none());
        // A read that starts after the change is cached.
        cache.insert(cache.epoch(), &name("a"), row(2, 40));
        assert_eq!(cache.get(&name("a")).expect("cached").uid.as_bytes()[0], 2);
        cache.invalidate(&name("a"));
        assert!(cache.get(&name("a")).is_none());
        assert_eq!(cache.size(), (0, 0));
    }

    #[test]
    fn clear_and_evict_drop_rows_and_stale_reads() {
        let cache = SealedCache::new(1 << 20);
        let stale = cache.epoch();
        cache.insert(stale, &name("a"), row(1, 40));
        cache.insert(stale, &name("b"), row(2, 40));
        cache.clear();
        assert!(cache.get(&name("a")).is_none() && cache.get(&name("b")).is_none());
        cache.insert(stale, &name("a"), row(1, 40));
        assert!(cache.get(&name("a")).is_none(), "a pre-clear read landed");

        let now = cache.epoch();
        let first = row(1, 40);
        cache.insert(now, &name("a"), first.clone());
        cache.insert(now, &name("a"), row(3, 40));
        // Evicting the row that failed leaves a newer one alone.
        cache.evict(&name("a"), &first);
        assert_eq!(cache.get(&name("a")).expect("newer").uid.as_bytes()[0], 3);
        let newer = cache.get(&name("a")).expect("newer");
        cache.evict(&name("a"), &newer);
        assert!(cache.get(&name("a")).is_none());
        assert_eq!(cache.size(), (0, 0));
    }

    #[test]
    fn stays_within_its_byte_budget_and_can_be_off() {
        let budget = 256 * 1024;
        let cache = SealedCache::new(budget);
        for i in 0..10_000 {
            cache.insert(cache.epoch(), &name(&format!("t{i}")), row(1, 100));
        }
        let (rows, bytes) = cache.size();
        assert!(bytes <= budget, "{bytes} bytes over a budget of {budget}");
        assert!(rows > 100, "only {rows} rows cached");
        // A row larger than a shard's share is never cached.
        cache.insert(cache.epoch(), &name("big"), row(1, budget));
        assert!(cache.get(&name("big")).is_none());

        let off = SealedCache::new(0);
        off.insert(off.epoch(), &name("a"), row(1, 40));
        assert!(off.get(&name("a")).is_none());
        assert_eq!(off.size(), (0, 0));
    }
}
