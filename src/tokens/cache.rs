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
//! - A cached row that does not open (its KEK was destroyed meanwhile, or
//!   it was tampered with before it was loaded) is dropped and read again
//!   from the store, whose answer stands.
//!
//! Bounded in bytes: a shard over its share of the budget drops a sixteenth
//! of its rows. The server fills the cache once at start
//! ([`SealedCache::insert_if_room`]), so the first resolve of each token does
//! not pay a store read.
//!
//! Compact: a row is a uid and one shared allocation holding its key and
//! sealed bytes. Warming 100,000 rows of 50-byte values took the server's
//! RSS from 18 to 51 MiB (the benchmark's catalog phase).

use std::{
    hash::BuildHasher,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use hashbrown::hash_table::{Entry, HashTable};

use crate::model::{MAX_ID_LEN, SealedToken, TokenName, TokenUid};

const SHARDS: usize = 64;
/// Memory per entry beyond its bytes: the table slot (with the table's
/// spare capacity), the `Arc` counts and the allocator's header.
const ENTRY_OVERHEAD: usize = 96;

/// What the resolve path needs of a token, as the store had it: its uid,
/// and one shared allocation holding the rest.
///
/// Layout of `bytes`: KEK version (u32 LE), flags (bit 0 disabled, bit 1
/// replaced), key length (u16 LE), wrapped key length (u32 LE), value
/// ciphertext length (u32 LE); then the key (`tenant/token_id`), the
/// wrapped data key, the value ciphertext, and each bound identity as a
/// u32 LE length and its bytes. One allocation per row instead of five
/// keeps 100,000 cached rows at about 25 MB.
#[derive(Clone)]
pub(super) struct CachedRow {
    uid: TokenUid,
    bytes: Arc<[u8]>,
}

const HEADER: usize = 15;
const DISABLED: u8 = 1;
const REPLACED: u8 = 2;

impl CachedRow {
    /// The row of token `name` as `token` holds it.
    pub(super) fn new(name: &TokenName, token: &SealedToken) -> Self {
        let key = Key::of(name);
        let key = key.as_str().as_bytes();
        let sealed = &token.sealed;
        let identities: usize = token.bound_identities.iter().map(|i| 4 + i.len()).sum();
        let mut bytes = Vec::with_capacity(
            HEADER
                + key.len()
                + sealed.wrapped_data_key.len()
                + sealed.value_ciphertext.len()
                + identities,
        );
        bytes.extend_from_slice(&sealed.kek_version.to_le_bytes());
        bytes.push(
            if token.disabled { DISABLED } else { 0 } | if token.replaced { REPLACED } else { 0 },
        );
        bytes.extend_from_slice(&len_u16(key.len()).to_le_bytes());
        bytes.extend_from_slice(&len_u32(sealed.wrapped_data_key.len()).to_le_bytes());
        bytes.extend_from_slice(&len_u32(sealed.value_ciphertext.len()).to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(&sealed.wrapped_data_key);
        bytes.extend_from_slice(&sealed.value_ciphertext);
        for identity in &token.bound_identities {
            bytes.extend_from_slice(&len_u32(identity.len()).to_le_bytes());
            bytes.extend_from_slice(identity.as_bytes());
        }
        Self {
            uid: token.uid,
            bytes: bytes.into(),
        }
    }

    fn u32_at(&self, at: usize) -> usize {
        let mut word = [0; 4];
        word.copy_from_slice(&self.bytes[at..at + 4]);
        u32::from_le_bytes(word) as usize
    }

    fn key_len(&self) -> usize {
        usize::from(u16::from_le_bytes([self.bytes[5], self.bytes[6]]))
    }

    /// The cache key, `tenant/token_id`.
    fn key(&self) -> &[u8] {
        &self.bytes[HEADER..HEADER + self.key_len()]
    }

    /// The token's internal id (bound into both AADs).
    pub(super) fn uid(&self) -> &TokenUid {
        &self.uid
    }

    /// The KEK version its data key is wrapped under.
    pub(super) fn kek_version(&self) -> u32 {
        self.u32_at(0) as u32
    }

    /// Kill switch.
    pub(super) fn disabled(&self) -> bool {
        self.bytes[4] & DISABLED != 0
    }

    /// Whether another token replaces it.
    pub(super) fn replaced(&self) -> bool {
        self.bytes[4] & REPLACED != 0
    }

    /// The wrapped data key.
    pub(super) fn wrapped_data_key(&self) -> &[u8] {
        let at = HEADER + self.key_len();
        &self.bytes[at..at + self.u32_at(7)]
    }

    /// The sealed value.
    pub(super) fn value_ciphertext(&self) -> &[u8] {
        let at = HEADER + self.key_len() + self.u32_at(7);
        &self.bytes[at..at + self.u32_at(11)]
    }

    /// Whether a binding names `identity`.
    pub(super) fn binds(&self, identity: &str) -> bool {
        let mut at = HEADER + self.key_len() + self.u32_at(7) + self.u32_at(11);
        while at < self.bytes.len() {
            let len = self.u32_at(at);
            if &self.bytes[at + 4..at + 4 + len] == identity.as_bytes() {
                return true;
            }
            at += 4 + len;
        }
        false
    }

    fn size(&self) -> usize {
        ENTRY_OVERHEAD + self.bytes.len()
    }

    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.bytes, &other.bytes)
    }
}

/// Lengths here are of ids (at most 127 bytes), keys, ciphertexts (at most
/// about 64 KiB) and identities; saturating keeps a corrupt length from
/// wrapping (the row then fails to open or to match, never misreads).
fn len_u16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl std::fmt::Debug for CachedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedRow")
            .field("kek_version", &self.kek_version())
            .field("disabled", &self.disabled())
            .finish_non_exhaustive()
    }
}

/// The cache key of a token name, `tenant/token_id`, built on the stack
/// (ids are at most 63 bytes each) so a lookup allocates nothing.
struct Key {
    buf: [u8; 2 * MAX_ID_LEN + 1],
    len: usize,
}

impl Key {
    fn of(name: &TokenName) -> Self {
        let (tenant, id) = (
            name.tenant.as_str().as_bytes(),
            name.token_id.as_str().as_bytes(),
        );
        let mut buf = [0; 2 * MAX_ID_LEN + 1];
        let len = tenant.len() + 1 + id.len();
        buf[..tenant.len()].copy_from_slice(tenant);
        buf[tenant.len()] = b'/';
        buf[tenant.len() + 1..len].copy_from_slice(id);
        Self { buf, len }
    }

    fn as_str(&self) -> &str {
        // Invariant: built from two `&str`s and an ASCII byte.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// foldhash, seeded per process: names reach the cache only after the
/// policy allowed the caller, and SipHash showed in the resolve profile.
type Hasher = foldhash::fast::RandomState;

#[derive(Default)]
struct Shard {
    rows: HashTable<CachedRow>,
    bytes: usize,
}

/// A full shard drops about this share of its rows to admit a new one:
/// enough that eviction is rare, few enough that a cache a little smaller
/// than the working set keeps most of it (clearing the whole shard made
/// such a cache thrash).
const EVICT_SHARE: usize = 16;

impl Shard {
    /// Drops rows (in table order, which follows their hashes: effectively
    /// random) until `size` more bytes fit with room to spare.
    fn make_room(&mut self, size: usize, budget: usize) {
        let target = budget
            .saturating_sub(budget / EVICT_SHARE)
            .saturating_sub(size);
        let mut bytes = self.bytes;
        self.rows.retain(|row| {
            if bytes <= target {
                return true;
            }
            bytes -= row.size();
            false
        });
        self.bytes = bytes;
    }
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

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // The high bits pick the shard; the table uses the low ones.
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    /// Whether the budget is 0 (nothing is ever cached).
    pub(super) fn is_off(&self) -> bool {
        self.shard_budget == 0
    }

    /// The cached row of `name`, if any.
    pub(super) fn get(&self, name: &TokenName) -> Option<CachedRow> {
        if self.shard_budget == 0 {
            return None;
        }
        let key = Key::of(name);
        let key = key.as_str().as_bytes();
        let hash = self.hash(key);
        let shard = self.shard(hash).read().unwrap_or_else(|p| p.into_inner());
        let row = shard.rows.find(hash, |row| row.key() == key).cloned();
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
    /// A full shard starts over.
    pub(super) fn insert(&self, epoch: Epoch, row: CachedRow) {
        self.put(epoch, row, true);
    }

    /// Like [`SealedCache::insert`], but a full shard keeps what it has
    /// (for filling the cache ahead of demand). Returns whether it fit.
    pub(super) fn insert_if_room(&self, epoch: Epoch, row: CachedRow) -> bool {
        self.put(epoch, row, false)
    }

    fn put(&self, epoch: Epoch, row: CachedRow, evict: bool) -> bool {
        let size = row.size();
        if size > self.shard_budget {
            return false;
        }
        let hash = self.hash(row.key());
        let mut shard = self.shard(hash).write().unwrap_or_else(|p| p.into_inner());
        // Under the shard lock: an invalidation either bumped the epoch
        // before this check (and we skip) or removes this entry after it.
        if self.epoch.load(Ordering::Acquire) != epoch.0 {
            return false;
        }
        if shard.bytes + size > self.shard_budget {
            if !evict {
                return false;
            }
            shard.make_room(size, self.shard_budget);
        }
        let hasher = |r: &CachedRow| self.hash(r.key());
        match shard.rows.entry(hash, |r| r.key() == row.key(), hasher) {
            Entry::Occupied(mut old) => {
                let old_size = old.get().size();
                *old.get_mut() = row;
                shard.bytes = shard.bytes - old_size + size;
            }
            Entry::Vacant(slot) => {
                slot.insert(row);
                shard.bytes += size;
            }
        }
        true
    }

    /// Drops the row of `name` (after a committed change to it).
    pub(super) fn invalidate(&self, name: &TokenName) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.remove_if(name, |_| true);
    }

    /// Drops the cached row of `name` only if it is still `row` (a row that
    /// did not open; a newer one stays).
    pub(super) fn evict(&self, name: &TokenName, row: &CachedRow) {
        self.remove_if(name, |cached| cached.same(row));
    }

    fn remove_if(&self, name: &TokenName, pick: impl Fn(&CachedRow) -> bool) {
        let key = Key::of(name);
        let key = key.as_str().as_bytes();
        let hash = self.hash(key);
        let mut shard = self.shard(hash).write().unwrap_or_else(|p| p.into_inner());
        if let Ok(found) = shard.rows.find_entry(hash, |r| r.key() == key && pick(r)) {
            let (old, _) = found.remove();
            shard.bytes -= old.size();
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

#[cfg(test)]
mod tests;
