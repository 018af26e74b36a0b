//! The domain: tokens, their rules, and the operations on them.
//!
//! No gRPC and no SQL in here. Handlers parse names with [`TokenName`] and
//! [`TenantId`], authorize the caller, then call [`Tokens`]; [`Tokens`]
//! enforces the rules (validation, uniqueness, etags, immutable values,
//! what blocks a removal), seals and opens values through the [`crate::crypto::Keyring`],
//! records usage in memory, and persists through a [`TokenStore`], always
//! off the async executor. Every mutation carries its audit event into the
//! store's transaction.

mod activity;
mod cache;
mod names;
mod page;
mod readers;
mod usage;

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub use activity::{Binding, ReplacementStatus};
pub use names::{BindingId, BindingName, ID_RULE, TenantId, TokenId, TokenName};
pub use page::PageCursor;
pub use usage::{UsageBatch, UsageStats, UsageTracker};

use crate::{
    audit::{Actor, AuditQueue, Outcome, micros},
    crypto::{Keyring, TokenUid},
    error::{Error, Result, Violation},
    keys::KeyringHandle,
    store::TokenStore,
};

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size; larger requests are clamped to it.
pub const MAX_PAGE_SIZE: usize = 1000;

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
    /// The opaque etag clients use for conditional changes (AIP-154).
    /// Derived from the immutable uid and the revision, so a removed and
    /// re-created token never shares an etag with its predecessor.
    pub fn etag(&self) -> String {
        let uid = self.uid.as_bytes();
        let prefix = u32::from_be_bytes([uid[0], uid[1], uid[2], uid[3]]);
        format!("{prefix:08x}-{}", self.revision)
    }

    /// Name of a sibling token of the same tenant.
    fn sibling(&self, id: &TokenId) -> TokenName {
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

/// One page of a listing.
#[derive(Debug)]
pub struct Page<T> {
    /// The items, in order.
    pub items: Vec<T>,
    /// The next page's token, if there is one.
    pub next_page_token: Option<String>,
}

/// A change requested by RenameToken.
#[derive(Debug, Default)]
pub struct Rename {
    /// New display name, if any.
    pub display_name: Option<String>,
    /// New token id, if any.
    pub new_token_id: Option<String>,
    /// Required current etag, if any.
    pub etag: Option<String>,
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

/// Tunables of the domain.
#[derive(Clone, Copy, Debug)]
pub struct TokenSettings {
    /// Record resolves in memory (off only to measure what tracking costs).
    pub track: bool,
    /// How far back a resolve counts as recent: it blocks RemoveToken and
    /// keeps a replaced token from being ready to remove.
    pub recent_window: Duration,
    /// Memory for sealed rows kept for the resolve path, in bytes; 0 reads
    /// every resolve from the store.
    pub cache_bytes: usize,
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
        }
    }
}

/// The token operations, over a store and an unsealed keyring.
#[derive(Clone)]
pub struct Tokens {
    store: Arc<dyn TokenStore>,
    keyring: Arc<KeyringHandle>,
    usage: Arc<UsageTracker>,
    audit: Arc<AuditQueue>,
    recent_window: Duration,
    /// Held by a flush from the moment it drains the in-memory counters until
    /// they are committed (or put back), and by every reader that combines
    /// stored with pending usage: otherwise such a reader could see the
    /// drained counters in neither place (and, say, remove a token a caller
    /// resolved a second ago).
    flushing: Arc<tokio::sync::Mutex<()>>,
    /// Runs the resolve path's reads off the executor without a thread
    /// wake-up per request; other store work uses the blocking pool.
    readers: Arc<readers::ReadPool>,
    /// Sealed rows the resolve path read before (see [`cache`]).
    cache: Arc<cache::SealedCache>,
    /// The store's change generation when last looked at.
    seen_generation: Arc<std::sync::atomic::AtomicI64>,
}

/// Rows per store read while warming the resolve cache.
const WARM_BATCH: usize = 1000;

/// Values larger than this are opened on a reader thread even when cached,
/// so no request holds an executor thread for long.
const OPEN_ON_EXECUTOR_MAX: usize = 4096;

/// Reader threads: one per core (more only park and wake more often; the
/// benchmark showed futex traffic growing with idle readers), at most the
/// SQLite store's four reader connections.
fn reader_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

impl Tokens {
    /// Operations over `store`, sealing with `keyring`.
    pub fn new(
        store: Arc<dyn TokenStore>,
        keyring: Arc<KeyringHandle>,
        settings: TokenSettings,
    ) -> Result<Self> {
        let generation = store.change_generation()?;
        Ok(Self {
            store,
            keyring,
            usage: Arc::new(UsageTracker::new(settings.track)),
            audit: Arc::new(AuditQueue::default()),
            recent_window: settings.recent_window,
            flushing: Arc::default(),
            readers: Arc::new(readers::ReadPool::new(reader_threads())?),
            cache: Arc::new(cache::SealedCache::new(settings.cache_bytes)),
            seen_generation: Arc::new(generation.into()),
        })
    }

    /// The queue for audit events that change nothing (decisions, reads);
    /// written by [`Tokens::flush`].
    pub fn audit_queue(&self) -> &Arc<AuditQueue> {
        &self.audit
    }

    /// The recent-use window.
    pub fn recent_window(&self) -> Duration {
        self.recent_window
    }

    /// Validates, seals and stores a new token, optionally as the
    /// replacement of `replaces` (a token name of the same tenant).
    pub async fn create(
        &self,
        actor: &Actor,
        tenant: TenantId,
        token_id: &str,
        display_name: &str,
        value: SecretValue,
        replaces: &str,
    ) -> Result<TokenRecord> {
        let token_id = validate_new_token(token_id, display_name, &value)?;
        let replaces = match replaces {
            "" => None,
            name => {
                let old = TokenName::parse(name, "replaces")?;
                if old.tenant != tenant {
                    return Err(Error::invalid(
                        "replaces",
                        "must name a token of the same tenant",
                    ));
                }
                Some(old.token_id)
            }
        };
        let now = now();
        let record = TokenRecord {
            uid: TokenUid::generate()?,
            seq: 0,
            name: TokenName { tenant, token_id },
            display_name: display_name.to_owned(),
            create_time: now,
            update_time: now,
            revision: 1,
            disabled: false,
            replaces: None,
            replaced_by: None,
            last_resolve: None,
            resolve_count: 0,
        };
        let reason = match &replaces {
            Some(old) => format!("created, replacing {}", record.sibling(old)),
            None => "created".to_owned(),
        };
        let event = actor.event(
            Some(record.name.tenant.as_str()),
            record.name.to_string(),
            Outcome::Allowed,
            reason,
        );
        // The replaced token's row changes (it gains `replaced_by`).
        let replaced = replaces.as_ref().map(|old| record.sibling(old));
        let (store, keyring, cache) =
            (self.store.clone(), self.keyring.clone(), self.cache.clone());
        blocking(move || {
            let sealed = keyring.current().seal_value(
                record.name.tenant.as_str(),
                &record.uid,
                value.expose().as_bytes(),
            )?;
            drop(value);
            let created = store.insert(record, &sealed, replaces.as_ref(), &[event]);
            if let Some(replaced) = &replaced {
                cache.invalidate(replaced);
            }
            created
        })
        .await
    }

    /// Checkpoints the store (see [`TokenStore::checkpoint`]).
    pub async fn checkpoint(&self) -> Result<()> {
        let store = self.store.clone();
        blocking(move || store.checkpoint()).await
    }

    /// How many tokens exist, across tenants.
    pub async fn count(&self) -> Result<u64> {
        let store = self.store.clone();
        blocking(move || store.count()).await
    }

    /// A token's metadata, usage included (pending counters too).
    pub async fn get(&self, name: TokenName) -> Result<TokenRecord> {
        let store = self.store.clone();
        let record = blocking(move || store.get(&name)?.ok_or(Error::NotFound("token"))).await?;
        Ok(self.with_pending_usage(record))
    }

    /// One page of a tenant's tokens, in creation order; with `unused_for`,
    /// only those not resolved within that long (or never).
    pub async fn list(
        &self,
        tenant: TenantId,
        page_size: i32,
        page_token: &str,
        unused_for: Option<Duration>,
    ) -> Result<Page<TokenRecord>> {
        let limit = page_limit(page_size)?;
        let after_seq = PageCursor::decode(page_token, "tokens", tenant.as_str())?;
        let cutoff_us = unused_for.map(micros_ago);
        let store = self.store.clone();
        let scope = tenant.to_string();
        let (rows, more) = blocking(move || {
            let mut rows = store.list(&tenant, after_seq, limit + 1, cutoff_us)?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            Ok((rows, more))
        })
        .await?;
        let next_page_token = more
            .then(|| {
                rows.last().map(|last| {
                    PageCursor {
                        kind: "tokens",
                        scope,
                        after_seq: last.seq,
                    }
                    .encode()
                })
            })
            .flatten();
        let items = rows
            .into_iter()
            .map(|record| self.with_pending_usage(record))
            .filter(|record| match cutoff_us {
                Some(cutoff) => record.last_resolve.is_none_or(|t| micros(t) < cutoff),
                None => true,
            })
            .collect();
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Changes a token's display name and/or id, optionally only at `etag`.
    pub async fn rename(
        &self,
        actor: &Actor,
        name: TokenName,
        change: Rename,
    ) -> Result<TokenRecord> {
        if change.display_name.is_none() && change.new_token_id.is_none() {
            return Err(Error::invalid(
                "display_name",
                "set display_name or new_token_id (or both)",
            ));
        }
        if let Some(display_name) = &change.display_name {
            validate_display_name(display_name, "display_name")?;
        }
        let new_token_id = change
            .new_token_id
            .as_deref()
            .map(|id| TokenId::new(id, "new_token_id"))
            .transpose()?;
        let actor = actor.clone();
        let (store, cache) = (self.store.clone(), self.cache.clone());
        let renamed = new_token_id.as_ref().map(|id| TokenName {
            tenant: name.tenant.clone(),
            token_id: id.clone(),
        });
        let record = blocking(move || {
            let updated = store.update(&name, &mut |current| {
                check_etag(current, change.etag.as_deref())?;
                let mut updated = current.clone();
                let mut reasons = Vec::new();
                if let Some(display_name) = &change.display_name {
                    updated.display_name.clone_from(display_name);
                    reasons.push("display name changed".to_owned());
                }
                if let Some(token_id) = &new_token_id {
                    updated.name.token_id = token_id.clone();
                    reasons.push(format!("renamed to {}", updated.name));
                }
                updated.update_time = now();
                updated.revision += 1;
                let event = actor.event(
                    Some(current.name.tenant.as_str()),
                    current.name.to_string(),
                    Outcome::Allowed,
                    reasons.join("; "),
                );
                Ok((updated, vec![event]))
            });
            // Invalidated here, not after the await: a cancelled request
            // must not leave a stale row behind.
            cache.invalidate(&name);
            if let Some(renamed) = &renamed {
                cache.invalidate(renamed);
            }
            updated
        })
        .await?;
        Ok(self.with_pending_usage(record))
    }

    /// Turns the kill switch on (`disabled`) or off.
    pub async fn set_disabled(
        &self,
        actor: &Actor,
        name: TokenName,
        disabled: bool,
        etag: Option<String>,
    ) -> Result<TokenRecord> {
        let actor = actor.clone();
        let (store, cache) = (self.store.clone(), self.cache.clone());
        let record = blocking(move || {
            let updated = store.update(&name, &mut |current| {
                check_etag(current, etag.as_deref())?;
                let mut updated = current.clone();
                if updated.disabled != disabled {
                    updated.disabled = disabled;
                    updated.update_time = now();
                    updated.revision += 1;
                }
                let reason = if disabled { "disabled" } else { "enabled" };
                let event = actor.event(
                    Some(current.name.tenant.as_str()),
                    current.name.to_string(),
                    Outcome::Allowed,
                    reason,
                );
                Ok((updated, vec![event]))
            });
            cache.invalidate(&name);
            updated
        })
        .await?;
        Ok(self.with_pending_usage(record))
    }

    /// Removes a token and its sealed value, optionally only at `etag`.
    /// Refused while bindings name it or callers resolved it within the
    /// recent window, unless `force`; forced, its bindings go too, each one
    /// audited.
    pub async fn remove(
        &self,
        actor: &Actor,
        name: TokenName,
        etag: Option<String>,
        force: bool,
    ) -> Result<()> {
        let actor = actor.clone();
        let (store, usage, cache) = (self.store.clone(), self.usage.clone(), self.cache.clone());
        let cutoff_us = micros_ago(self.recent_window);
        let _no_flush = self.hold_flushes().await;
        blocking(move || {
            // The token this one replaced loses its `replaced_by`.
            let mut replaced = None;
            let removed = store.delete(&name, &mut |current, context| {
                check_etag(current, etag.as_deref())?;
                replaced = current.replaces_name();
                let callers = activity::merged_usage(&context.usage, usage.pending(&current.uid));
                let mut blockers: Vec<Violation> = context
                    .bindings
                    .iter()
                    .map(|b| Violation {
                        kind: "BINDING",
                        subject: BindingName { token: current.name.clone(), binding_id: b.binding_id.clone() }.to_string(),
                        description: format!("declared use: {}", b.purpose),
                    })
                    .collect();
                blockers.extend(callers.iter().filter(|(_, s)| s.last_resolve_us.is_some_and(|t| t >= cutoff_us)).map(
                    |(identity, s)| Violation {
                        kind: "RECENT_CALLER",
                        subject: identity.clone(),
                        description: format!(
                            "resolved the token {} s ago",
                            (micros(SystemTime::now()) - s.last_resolve_us.unwrap_or_default()) / 1_000_000
                        ),
                    },
                ));
                if !blockers.is_empty() && !force {
                    return Err(Error::FailedPrecondition {
                        reason: "TOKEN_IN_USE",
                        message: "the token is still in use (see the violations): move its users to another \
                                  token and delete its bindings, or remove it with force",
                        violations: blockers,
                    });
                }
                let tenant = Some(current.name.tenant.as_str());
                let reason = if blockers.is_empty() {
                    "removed".to_owned()
                } else {
                    format!("removed with force despite {} blocker(s)", blockers.len())
                };
                let mut events = vec![actor.event(tenant, current.name.to_string(), Outcome::Allowed, reason)];
                events.extend(context.bindings.iter().map(|b| {
                    let binding = BindingName { token: current.name.clone(), binding_id: b.binding_id.clone() };
                    actor.event(tenant, binding.to_string(), Outcome::Allowed, "binding deleted by forced removal")
                }));
                Ok(events)
            });
            // Committed (or not): either way no cached copy may outlive it.
            cache.invalidate(&name);
            if let Some(replaced) = &replaced {
                cache.invalidate(replaced);
            }
            removed
        })
        .await
    }

    /// Opens a token's value for `caller`, whom the policy has allowed; with
    /// `require_binding` (bindings-only mode) a binding must also name the
    /// caller, and a missing token is refused like an unbound one.
    ///
    /// A row cached from an earlier resolve is opened on the executor (two
    /// AEAD opens of a small value: a few microseconds); anything else runs
    /// on a reader thread.
    pub async fn resolve(
        &self,
        name: TokenName,
        caller: &str,
        require_binding: bool,
    ) -> Result<SecretValue> {
        if let Some(row) = self.cache.get(&name) {
            let keyring = self.keyring.current();
            if keyring.has_version(row.kek_version()) {
                let opened = if row.value_ciphertext().len() <= OPEN_ON_EXECUTOR_MAX {
                    open_for(&row, &name, caller, require_binding, &keyring, &self.usage)
                } else {
                    let (row, name, usage) = (row.clone(), name.clone(), self.usage.clone());
                    let caller = caller.to_owned();
                    self.readers
                        .run(move || {
                            open_for(&row, &name, &caller, require_binding, &keyring, &usage)
                        })
                        .await
                };
                match opened {
                    // Read it again below: its KEK went away meanwhile, or it
                    // was loaded ahead of demand and never opened before.
                    Err(Error::DataLoss) => {}
                    decided => return decided,
                }
            }
            self.cache.evict(&name, &row);
        }
        let (store, keyring, usage, cache) = (
            self.store.clone(),
            self.keyring.clone(),
            self.usage.clone(),
            self.cache.clone(),
        );
        let caller = caller.to_owned();
        self.readers
            .run(move || {
                let epoch = cache.epoch();
                let row = match store.get_sealed(&name)? {
                    Some(row) => cache::CachedRow::new(&name, &row),
                    None if require_binding => return Err(Error::PermissionDenied),
                    None => return Err(Error::NotFound("token")),
                };
                let mut current = keyring.current();
                if !current.has_version(row.kek_version()) {
                    // Another process (`aitokens keys rotate`) re-wrapped this
                    // row under a KEK we have not loaded yet: load it, once.
                    keyring.reload(&*store)?;
                    current = keyring.current();
                }
                let value = open_for(&row, &name, &caller, require_binding, &current, &usage)?;
                cache.insert(epoch, row);
                Ok(value)
            })
            .await
    }

    /// Fills the resolve cache from the store ahead of demand, in batches,
    /// until every token was offered or the cache is off. Rows that do not
    /// fit are left to be read on demand. Returns the rows it cached.
    pub async fn warm_cache(&self) -> Result<usize> {
        if self.cache.is_off() {
            return Ok(0);
        }
        let (store, cache) = (self.store.clone(), self.cache.clone());
        blocking(move || {
            let (mut after_seq, mut cached) = (0, 0);
            loop {
                // A change committed while this batch is in flight makes its
                // inserts stale; the epoch check drops them.
                let epoch = cache.epoch();
                let batch = store.scan_sealed(after_seq, WARM_BATCH)?;
                let Some((last, _, _)) = batch.last() else {
                    return Ok(cached);
                };
                after_seq = *last;
                for (_, name, token) in batch {
                    let row = cache::CachedRow::new(&name, &token);
                    cached += usize::from(cache.insert_if_room(epoch, row));
                }
            }
        })
        .await
    }

    /// Looks at the store's change generation and drops every cached row if
    /// it moved: another process (or this one) changed tokens or bindings.
    /// The server calls this a few times a second.
    pub async fn notice_store_changes(&self) -> Result<bool> {
        let store = self.store.clone();
        let generation = match blocking(move || store.change_generation()).await {
            Ok(generation) => generation,
            Err(e) => {
                // Freshness unknown: serve from the store until it answers.
                self.cache.clear();
                return Err(e);
            }
        };
        let seen = self.seen_generation.swap(generation, Ordering::AcqRel);
        if seen == generation {
            return Ok(false);
        }
        self.cache.clear();
        Ok(true)
    }

    /// The resolve cache: rows and approximate bytes held, and lookups that
    /// missed since start.
    pub fn cache_stats(&self) -> CacheStats {
        let (rows, bytes) = self.cache.size();
        CacheStats {
            rows,
            bytes,
            misses: self.cache.misses(),
        }
    }

    /// Completes when so many usage counters are pending that a flush
    /// should not wait for its timer.
    pub async fn usage_filled(&self) {
        self.usage.filled().await;
    }

    /// Records a resolve refused before any lookup (policy said no).
    pub fn record_denied_resolve(&self, name: &TokenName, caller: &str) {
        self.usage
            .denied_by_name(name, caller, micros(SystemTime::now()));
    }

    /// Writes pending usage counters and queued audit events in one batch.
    /// On failure everything stays queued for the next attempt.
    /// Runs to completion in its own task even if the caller goes away, so
    /// a cancelled request can never lose drained counters or events.
    pub async fn flush(&self) -> Result<()> {
        let (store, usage, audit) = (self.store.clone(), self.usage.clone(), self.audit.clone());
        let flushing = self.flushing.clone();
        tokio::spawn(async move {
            let _guard = flushing.lock_owned().await;
            let batch = usage.drain();
            let events = audit.drain();
            if batch.is_empty() && events.is_empty() {
                return Ok(());
            }
            let written = tokio::task::spawn_blocking(move || {
                let result = store.flush(&batch, &events);
                (result, batch, events)
            })
            .await;
            match written {
                Ok((Ok(()), _, _)) => Ok(()),
                Ok((Err(e), batch, events)) => {
                    usage.restore(batch);
                    audit.requeue(events);
                    Err(e)
                }
                // The write panicked; what it held is lost with it.
                Err(e) => Err(Error::Internal(format!("flush task failed: {e}"))),
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("flush task failed: {e}")))?
    }

    /// Waits for a flush in progress and keeps the next one out while held.
    pub(super) async fn hold_flushes(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.flushing.clone().lock_owned().await
    }

    fn with_pending_usage(&self, mut record: TokenRecord) -> TokenRecord {
        for (_, stats) in self.usage.pending(&record.uid) {
            record.resolve_count += stats.resolve_count;
            if let Some(last) = stats.last_resolve_us.map(from_micros) {
                record.last_resolve = record.last_resolve.max(Some(last));
            }
        }
        record
    }
}

/// Microseconds since the epoch, `ago` before now (saturating: any client
/// duration is safe).
fn micros_ago(ago: Duration) -> i64 {
    let ago = i64::try_from(ago.as_micros()).unwrap_or(i64::MAX);
    micros(SystemTime::now()).saturating_sub(ago)
}

fn page_limit(page_size: i32) -> Result<usize> {
    match usize::try_from(page_size) {
        Err(_) => Err(Error::invalid("page_size", "must not be negative")),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

/// Decides whether `caller` gets the value of token `name` (stored as `row`)
/// and opens it; records the outcome in `usage`.
fn open_for(
    row: &cache::CachedRow,
    name: &TokenName,
    caller: &str,
    require_binding: bool,
    keyring: &Keyring,
    usage: &UsageTracker,
) -> Result<SecretValue> {
    let now_us = micros(SystemTime::now());
    if require_binding && !row.binds(caller) {
        usage.denied(row.uid(), caller, now_us);
        return Err(Error::PermissionDenied);
    }
    if row.disabled() {
        usage.denied(row.uid(), caller, now_us);
        return Err(Error::FailedPrecondition {
            reason: "TOKEN_DISABLED",
            message: "the token is disabled; an admin can enable it again",
            violations: Vec::new(),
        });
    }
    let mut plain = keyring.open_parts(
        name.tenant.as_str(),
        row.uid(),
        row.kek_version(),
        row.wrapped_data_key(),
        row.value_ciphertext(),
    )?;
    // Values are stored as UTF-8 text; `from_utf8` takes the buffer without
    // copying it, and SecretValue zeroizes it from here on.
    let text = String::from_utf8(std::mem::take(&mut *plain)).map_err(|e| {
        zeroize::Zeroize::zeroize(&mut e.into_bytes());
        Error::DataLoss
    })?;
    usage.resolved(row.uid(), caller, now_us, row.replaced());
    Ok(SecretValue::new(text))
}

/// The checks CreateToken makes before anything is sealed or stored: the
/// token id, the display name and the value. Public so that fuzzing and
/// property tests drive exactly the code the server runs.
pub fn validate_new_token(
    token_id: &str,
    display_name: &str,
    value: &SecretValue,
) -> Result<TokenId> {
    let token_id = TokenId::new(token_id, "token_id")?;
    validate_display_name(display_name, "token.display_name")?;
    validate_value(value)?;
    Ok(token_id)
}

fn check_etag(current: &TokenRecord, expected: Option<&str>) -> Result<()> {
    match expected {
        Some(etag) if etag != current.etag() => Err(Error::Aborted),
        _ => Ok(()),
    }
}

fn validate_display_name(display_name: &str, field: &'static str) -> Result<()> {
    let chars = display_name.chars().count();
    if chars == 0 || chars > MAX_DISPLAY_NAME_CHARS {
        return Err(Error::invalid(field, "must be 1 to 256 characters"));
    }
    Ok(())
}

fn validate_value(value: &SecretValue) -> Result<()> {
    let len = value.expose().len();
    if len == 0 || len > MAX_VALUE_BYTES {
        return Err(Error::invalid("value", "must be 1 byte to 64 KiB"));
    }
    Ok(())
}

/// The current time, truncated to whole microseconds so that it survives the
/// store's round trip unchanged.
fn now() -> SystemTime {
    from_micros(micros(SystemTime::now()))
}

fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

/// Runs store and crypto work on the blocking pool, never on the executor.
/// The caller's span (with its request id) follows the work.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}
