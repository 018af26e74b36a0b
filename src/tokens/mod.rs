//! The domain: tokens, their rules, and the operations on them.
//!
//! No gRPC and no SQL in here. The API layer parses names, authorizes the
//! caller, then calls one of the services [`Domain`] holds:
//!
//! - [`Lifecycle`]: create (sealed before it is stored), get, list, rename,
//!   disable/enable, remove;
//! - [`Resolver`]: the resolve path, over the cache of sealed rows;
//! - [`Bindings`]: declared uses of a token;
//! - [`UsageReports`]: usage per caller, replacement status;
//! - [`Flusher`]: writes usage counters and queued audit events in batches;
//! - [`Watch`]: the change feed behind WatchTokens.
//!
//! The rules themselves (validation, etags, what blocks a removal, when a
//! replaced token may go) are pure functions in [`rules`]. Each service
//! holds only the store traits it uses. Every mutation carries its audit
//! event into the store's transaction.

mod bindings;
mod cache;
mod lifecycle;
mod resolve;
pub mod rules;
mod usage;
mod watch;

use std::{future::Future, sync::Arc, time::Duration};

use tracing::Instrument;

pub use bindings::Bindings;
use cache::SealedCache;
pub use lifecycle::{Lifecycle, NewToken, Rename};
pub use resolve::Resolver;
pub use rules::ReplacementStatus;
pub use usage::{FLUSH_EARLY_AT, FlushGate, Flusher, UsageReports, UsageTracker};
pub use watch::{Subscription, Watch, WatchItem, WatchSettings};

use crate::{
    audit::{AuditHealth, AuditQueue, JsonlSink},
    crypto::KeyringHandle,
    error::{Error, Result},
    model::Clock,
    store::SharedStore,
};

/// What the resolve cache holds and how often it missed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Cached rows.
    pub rows: usize,
    /// Approximate bytes they take.
    pub bytes: usize,
    /// Lookups that found no row (each one a store read), since start.
    pub misses: u64,
}

/// What accounts for the values that leave.
#[derive(Clone, Debug)]
pub struct Accounting {
    /// Whether the audit trail takes writes; resolves are refused while it
    /// does not.
    pub health: Arc<AuditHealth>,
    /// Per-call mode: every allowed resolve also goes to this JSON-lines
    /// sink at once (for a SIEM), besides the aggregates in the trail.
    pub per_call: Option<Arc<JsonlSink>>,
}

/// Tunables of the domain.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// Persist per-caller usage counters (resolves are accounted in the
    /// audit trail either way; off only to measure what the counters cost).
    pub track: bool,
    /// How far back a resolve counts as recent: it blocks RemoveToken and
    /// keeps a replaced token from being ready to remove.
    pub recent_window: Duration,
    /// Memory for sealed rows kept for the resolve path, in bytes; 0 reads
    /// every resolve from the store.
    pub cache_bytes: usize,
    /// Where the current time comes from (the system clock; tests move a
    /// manual one).
    pub clock: Clock,
    /// The change feed (WatchTokens).
    pub watch: WatchSettings,
}

/// Default memory for cached sealed rows: room for about 1.6 million
/// tokens of 50-byte values. Memory is taken only as rows are cached:
/// warming 100,000 of them grew the server's RSS by 33 MiB (~340 bytes each).
pub const DEFAULT_CACHE_BYTES: usize = 512 << 20;

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            track: true,
            recent_window: Duration::from_secs(24 * 60 * 60),
            cache_bytes: DEFAULT_CACHE_BYTES,
            clock: Clock::system(),
            watch: WatchSettings::default(),
        }
    }
}

/// The domain services over one store, one keyring and one audit queue,
/// sharing the resolve cache, the usage tracker and the flush gate.
#[derive(Clone)]
pub struct Domain {
    /// Create, read, rename, disable, remove.
    pub lifecycle: Lifecycle,
    /// The resolve path.
    pub resolver: Resolver,
    /// Declared uses.
    pub bindings: Bindings,
    /// Usage and replacement reports.
    pub reports: UsageReports,
    /// Batch writes of usage and queued audit events.
    pub flusher: Flusher,
    /// The change feed.
    pub watch: Watch,
}

impl Domain {
    /// Wires the services over `store`, sealing and opening with `keyring`,
    /// draining `audit` into the store at each flush and accounting for
    /// every resolve through `accounting`.
    pub async fn new(
        store: SharedStore,
        keyring: Arc<KeyringHandle>,
        audit: Arc<AuditQueue>,
        accounting: Accounting,
        settings: TokenSettings,
    ) -> Result<Self> {
        let cache = Arc::new(SealedCache::new(settings.cache_bytes));
        let usage = Arc::new(UsageTracker::new());
        let gate = FlushGate::default();
        let health = accounting.health.clone();
        let resolver = Resolver::new(
            store.clone(),
            store.clone(),
            keyring.clone(),
            cache.clone(),
            usage.clone(),
            accounting,
            settings.clock.clone(),
        )
        .await?;
        let count = store.count().await?;
        let watch = Watch::new(store.clone(), settings.watch).await?;
        Ok(Self {
            lifecycle: Lifecycle::new(
                store.clone(),
                keyring,
                cache.clone(),
                usage.clone(),
                gate.clone(),
                settings.recent_window,
                settings.clock,
                count,
                watch.clone(),
            ),
            resolver,
            bindings: Bindings::new(store.clone(), cache),
            reports: UsageReports::new(
                store.clone(),
                store.clone(),
                usage.clone(),
                gate.clone(),
                settings.recent_window,
            ),
            flusher: Flusher::new(store, usage, audit, health, gate, settings.track),
            watch,
        })
    }
}

/// Runs a change to completion in its own task, even if the request that
/// started it goes away: a committed change must always be followed by its
/// cache invalidation. The caller's span (request id) follows it.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .map_err(|e| Error::Internal(format!("task failed: {e}")))?
}

#[cfg(test)]
mod tests;
