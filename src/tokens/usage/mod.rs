//! Observed usage: who resolved which token, kept in memory on the hot path
//! and written in batches by the [`Flusher`]; read back, merged with what is
//! stored, by [`UsageReports`].
//!
//! Recording an allowed resolve is a sharded map update: no I/O, no await, no
//! allocation once a (token, caller) pair has been seen.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

pub use flush::{FlushGate, Flusher};
pub use report::UsageReports;

use crate::model::{TokenName, TokenRecord, TokenUid, UsageBatch, UsageStats, from_micros};

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
type UidMap = HashMap<TokenUid, Callers, FastHash>;

/// Pending (token, caller) pairs above which the flusher is asked to write
/// early: keeps memory flat when many distinct tokens are resolved between
/// two timed flushes (about 2.5 MB at this size).
pub const FLUSH_EARLY_AT: usize = 10_000;

/// In-memory usage counters.
#[derive(Debug)]
pub struct UsageTracker {
    enabled: bool,
    shards: Vec<Mutex<UidMap>>,
    by_name: Mutex<HashMap<(TokenName, String), UsageStats>>,
    /// (token, caller) pairs added since the last drain.
    pairs: AtomicUsize,
    /// Woken when `pairs` reaches [`FLUSH_EARLY_AT`].
    full: tokio::sync::Notify,
}

impl UsageTracker {
    /// A tracker; a disabled one records nothing (for measuring its cost).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            by_name: Mutex::default(),
            pairs: AtomicUsize::new(0),
            full: tokio::sync::Notify::new(),
        }
    }

    fn shard(&self, uid: &TokenUid) -> std::sync::MutexGuard<'_, UidMap> {
        let index = usize::from(uid.as_bytes()[0]) % SHARDS;
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, uid: &TokenUid, identity: &str, f: impl FnOnce(&mut UsageStats)) {
        if !self.enabled {
            return;
        }
        let mut shard = self.shard(uid);
        let callers = shard.entry(*uid).or_default();
        match callers.iter_mut().find(|(id, _)| id == identity) {
            Some((_, stats)) => f(stats),
            None => {
                let mut stats = UsageStats::default();
                f(&mut stats);
                callers.push((identity.to_owned(), stats));
                if self.pairs.fetch_add(1, Ordering::Relaxed) + 1 == FLUSH_EARLY_AT {
                    self.full.notify_one();
                }
            }
        }
    }

    /// An allowed resolve of token `uid` by `identity`.
    pub fn resolved(&self, uid: &TokenUid, identity: &str, now_us: i64, superseded: bool) {
        self.update(uid, identity, |s| s.resolved(now_us, superseded));
    }

    /// A refused resolve of a token that was found (e.g. disabled).
    pub fn denied(&self, uid: &TokenUid, identity: &str, now_us: i64) {
        self.update(uid, identity, |s| s.denied(now_us));
    }

    /// A refused resolve decided before the token was looked up.
    pub fn denied_by_name(&self, name: &TokenName, identity: &str, now_us: i64) {
        if !self.enabled {
            return;
        }
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((name.clone(), identity.to_owned()))
            .or_default()
            .denied(now_us);
    }

    /// Pending (not yet written) counters of one token, per caller.
    pub fn pending(&self, uid: &TokenUid) -> Vec<(String, UsageStats)> {
        let shard = self.shard(uid);
        shard.get(uid).cloned().unwrap_or_default()
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

    /// Completes once `FLUSH_EARLY_AT` pairs are pending (or were, since
    /// the last call).
    pub async fn filled(&self) {
        self.full.notified().await;
    }

    /// Takes every pending counter for a batch write.
    pub fn drain(&self) -> UsageBatch {
        self.pairs.store(0, Ordering::Relaxed);
        let mut batch = UsageBatch::default();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner()));
            for (uid, callers) in taken {
                batch
                    .by_uid
                    .extend(callers.into_iter().map(|(id, s)| (uid, id, s)));
            }
        }
        let taken = std::mem::take(&mut *self.by_name.lock().unwrap_or_else(|p| p.into_inner()));
        batch.by_name = taken
            .into_iter()
            .map(|((name, id), s)| (name, id, s))
            .collect();
        batch
    }

    /// Puts a batch back after a failed write, so nothing is lost.
    pub fn restore(&self, batch: UsageBatch) {
        for (uid, identity, stats) in batch.by_uid {
            let mut shard = self.shard(&uid);
            let callers = shard.entry(uid).or_default();
            match callers.iter_mut().find(|(id, _)| *id == identity) {
                Some((_, mine)) => mine.merge(&stats),
                None => callers.push((identity, stats)),
            }
        }
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        for (name, identity, stats) in batch.by_name {
            map.entry((name, identity)).or_default().merge(&stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_and_survive_a_failed_flush() {
        let tracker = UsageTracker::new(true);
        let uid = TokenUid::generate().expect("uid");
        tracker.resolved(&uid, "spiffe://a", 10, false);
        tracker.resolved(&uid, "spiffe://a", 30, true);
        tracker.resolved(&uid, "spiffe://b", 20, false);
        tracker.denied(&uid, "spiffe://c", 25);
        let batch = tracker.drain();
        assert_eq!(batch.by_uid.len(), 3);
        assert!(tracker.drain().is_empty());
        tracker.restore(batch);
        tracker.resolved(&uid, "spiffe://a", 5, false);
        let mut pending = tracker.pending(&uid);
        pending.sort_by(|x, y| x.0.cmp(&y.0));
        let a = pending[0].1;
        assert_eq!(
            (a.first_resolve_us, a.last_resolve_us, a.resolve_count),
            (Some(5), Some(30), 3)
        );
        assert_eq!((a.superseded_count, a.last_superseded_us), (1, Some(30)));
        assert_eq!(pending[2].1.denied_count, 1);
    }

    #[test]
    fn a_disabled_tracker_records_nothing() {
        let tracker = UsageTracker::new(false);
        let uid = TokenUid::generate().expect("uid");
        tracker.resolved(&uid, "x", 1, false);
        assert!(tracker.drain().is_empty());
    }
}
