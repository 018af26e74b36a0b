//! Observed usage: who resolved which token, kept in memory on the hot path
//! and written in batches by the [`Flusher`] (as usage counters and as the
//! audit trail's aggregate records of allowed resolves); read back, merged
//! with what is stored, by [`UsageReports`].
//!
//! Recording a resolve is a sharded map update: no I/O, no await, no
//! allocation once a (token, caller) pair has been seen. Memory is bounded:
//! past [`MAX_PENDING_PAIRS`] unwritten pairs (the store has been refusing
//! writes), a resolve by a new pair cannot be accounted and is refused;
//! refusals decided before any lookup are counted in a bounded map and what
//! does not fit is counted as dropped.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

pub use flush::{FlushGate, Flusher};
pub use report::UsageReports;

use crate::model::{
    TokenName, TokenRecord, TokenUid, UsageBatch, UsageDelta, UsageStats, from_micros,
};

mod flush;
mod report;

const SHARDS: usize = 16;

/// foldhash rather than SipHash: these maps are updated on every resolve,
/// keyed by token uids the store generated.
type FastHash = foldhash::fast::RandomState;
/// Callers of one token. A list, not a map: a token has few callers, and
/// with many tokens resolved between two flushes (100,000 in the
/// benchmark's catalog phase) a map per token cost four times the memory.
type Callers = Vec<(String, UsageStats)>;
type UidMap = HashMap<TokenUid, (TokenName, Callers), FastHash>;

/// Pending (token, caller) pairs above which the flusher is asked to write
/// early: keeps memory flat when many distinct tokens are resolved between
/// two timed flushes (about 2.5 MB at this size).
pub const FLUSH_EARLY_AT: usize = 10_000;
/// Most unwritten (token, caller) pairs held: about 25 MB. A resolve that
/// would add another is refused, since it could not be accounted for.
pub const MAX_PENDING_PAIRS: usize = 100_000;
/// Most (name, caller) pairs of refusals decided before any lookup held
/// between writes; more are counted as dropped (each refusal is also an
/// audit event of its own).
pub const MAX_DENIED_BY_NAME: usize = 10_000;

/// In-memory usage counters.
#[derive(Debug)]
pub struct UsageTracker {
    shards: Vec<Mutex<UidMap>>,
    by_name: Mutex<HashMap<(TokenName, String), UsageStats>>,
    /// (token, caller) pairs held now.
    pairs: AtomicUsize,
    /// Refusals by name that did not fit, since start.
    dropped: AtomicU64,
    /// Woken when `pairs` reaches [`FLUSH_EARLY_AT`].
    full: tokio::sync::Notify,
}

impl Default for UsageTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            by_name: Mutex::default(),
            pairs: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            full: tokio::sync::Notify::new(),
        }
    }

    fn shard(&self, uid: &TokenUid) -> std::sync::MutexGuard<'_, UidMap> {
        let index = usize::from(uid.as_bytes()[0]) % SHARDS;
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to the counters of (`uid`, `identity`); false when the
    /// pair is new and no room is left (nothing was recorded).
    fn update(
        &self,
        uid: &TokenUid,
        name: &TokenName,
        identity: &str,
        f: impl FnOnce(&mut UsageStats),
    ) -> bool {
        let mut shard = self.shard(uid);
        if let Some((_, callers)) = shard.get_mut(uid)
            && let Some((_, stats)) = callers.iter_mut().find(|(id, _)| id == identity)
        {
            f(stats);
            return true;
        }
        if self.pairs.load(Ordering::Relaxed) >= MAX_PENDING_PAIRS {
            return false;
        }
        let mut stats = UsageStats::default();
        f(&mut stats);
        let (_, callers) = shard
            .entry(*uid)
            .or_insert_with(|| (name.clone(), Vec::new()));
        callers.push((identity.to_owned(), stats));
        if self.pairs.fetch_add(1, Ordering::Relaxed) + 1 == FLUSH_EARLY_AT {
            self.full.notify_one();
        }
        true
    }

    /// An allowed resolve of token `uid` (named `name`) by `identity`;
    /// false when it could not be accounted for (no room: refuse it).
    #[must_use]
    pub fn resolved(
        &self,
        uid: &TokenUid,
        name: &TokenName,
        identity: &str,
        now_us: i64,
        superseded: bool,
    ) -> bool {
        self.update(uid, name, identity, |s| s.resolved(now_us, superseded))
    }

    /// A refused resolve of a token that was found (e.g. disabled).
    pub fn denied(&self, uid: &TokenUid, name: &TokenName, identity: &str, now_us: i64) {
        if !self.update(uid, name, identity, |s| s.denied(now_us)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A refused resolve decided before the token was looked up.
    pub fn denied_by_name(&self, name: &TokenName, identity: &str, now_us: i64) {
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let key = (name.clone(), identity.to_owned());
        if map.len() >= MAX_DENIED_BY_NAME && !map.contains_key(&key) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        map.entry(key).or_default().denied(now_us);
    }

    /// Pending (not yet written) counters of one token, per caller.
    pub fn pending(&self, uid: &TokenUid) -> Vec<(String, UsageStats)> {
        let shard = self.shard(uid);
        shard
            .get(uid)
            .map(|(_, callers)| callers.clone())
            .unwrap_or_default()
    }

    /// Adds the pending (not yet written) resolves of `record`'s token to
    /// its stored summary.
    pub fn add_pending_to(&self, record: &mut TokenRecord) {
        for (_, stats) in self.pending(&record.uid) {
            record.resolve_count += stats.resolve_count;
            if let Some(last) = stats.last_resolve_us.map(from_micros) {
                record.last_resolve = record.last_resolve.max(Some(last));
            }
        }
    }

    /// Unwritten pairs held now.
    pub fn pending_pairs(&self) -> usize {
        self.pairs.load(Ordering::Relaxed)
    }

    /// Counters that did not fit and were dropped, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Completes once `FLUSH_EARLY_AT` pairs are pending (or were, since
    /// the last call).
    pub async fn filled(&self) {
        self.full.notified().await;
    }

    /// Takes every pending counter for a batch write.
    pub fn drain(&self) -> UsageBatch {
        let mut batch = UsageBatch::default();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner()));
            for (uid, (token, callers)) in taken {
                self.pairs.fetch_sub(callers.len(), Ordering::Relaxed);
                batch
                    .by_uid
                    .extend(callers.into_iter().map(|(caller, stats)| UsageDelta {
                        uid,
                        token: token.clone(),
                        caller,
                        stats,
                    }));
            }
        }
        let taken = std::mem::take(&mut *self.by_name.lock().unwrap_or_else(|p| p.into_inner()));
        batch.by_name = taken
            .into_iter()
            .map(|((name, id), s)| (name, id, s))
            .collect();
        batch
    }

    /// Puts a batch back after a failed write, so nothing is lost (it may
    /// take the pairs above the bound: they were counted already).
    pub fn restore(&self, batch: UsageBatch) {
        for delta in batch.by_uid {
            let mut shard = self.shard(&delta.uid);
            let (_, callers) = shard
                .entry(delta.uid)
                .or_insert_with(|| (delta.token, Vec::new()));
            match callers.iter_mut().find(|(id, _)| *id == delta.caller) {
                Some((_, mine)) => mine.merge(&delta.stats),
                None => {
                    callers.push((delta.caller, delta.stats));
                    self.pairs.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        for (name, identity, stats) in batch.by_name {
            map.entry((name, identity)).or_default().merge(&stats);
        }
    }
}

#[cfg(test)]
mod tests;
