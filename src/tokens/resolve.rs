//! The resolve path: the sealed row from the cache (an indexed store read on
//! a miss), the bindings-only and kill-switch checks, both AEAD opens, the
//! resolve counted in memory. No disk write, no lock held across an await.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use super::{
    Accounting, CacheStats,
    cache::{CachedRow, SealedCache},
    usage::UsageTracker,
};
use crate::{
    crypto::{Keyring, KeyringHandle},
    error::{Error, Result},
    model::{Clock, SecretValue, TokenName},
    store::{KeyringStore, StoreChange, TokenStore},
};

/// Rows per store read while warming the resolve cache.
const WARM_BATCH: usize = 1000;

/// Values larger than this are opened on the blocking pool, so no request
/// holds an executor thread for long.
const OPEN_ON_EXECUTOR_MAX: usize = 4096;

/// Hands out values to callers the policy has allowed.
#[derive(Clone)]
pub struct Resolver {
    tokens: Arc<dyn TokenStore>,
    keyrings: Arc<dyn KeyringStore>,
    keyring: Arc<KeyringHandle>,
    cache: Arc<SealedCache>,
    usage: Arc<UsageTracker>,
    accounting: Accounting,
    /// When resolves happen (usage times).
    clock: Clock,
    /// The store's change generation when last looked at.
    seen_generation: Arc<AtomicI64>,
}

impl Resolver {
    /// A resolver over `tokens`, opening with `keyring` (reloaded from
    /// `keyrings` when a row names a KEK version it does not hold yet).
    pub(super) async fn new(
        tokens: Arc<dyn TokenStore>,
        keyrings: Arc<dyn KeyringStore>,
        keyring: Arc<KeyringHandle>,
        cache: Arc<SealedCache>,
        usage: Arc<UsageTracker>,
        accounting: Accounting,
        clock: Clock,
    ) -> Result<Self> {
        let generation = tokens.change_generation().await?;
        Ok(Self {
            tokens,
            keyrings,
            keyring,
            cache,
            usage,
            accounting,
            clock,
            seen_generation: Arc::new(generation.into()),
        })
    }

    /// Opens a token's value for `caller`, whom the policy has allowed; with
    /// `require_binding` (bindings-only mode) a binding must also name the
    /// caller, and a missing token is refused like an unbound one.
    pub async fn resolve(
        &self,
        name: &TokenName,
        caller: &str,
        require_binding: bool,
    ) -> Result<SecretValue> {
        // Nothing leaves that the audit trail could not account for.
        if !self.accounting.health.accepting() {
            return Err(Error::audit_unavailable());
        }
        let value = self.open_row(name, caller, require_binding).await?;
        if let Some(sink) = &self.accounting.per_call {
            sink.write_resolve(name, caller, self.clock.now_micros());
        }
        Ok(value)
    }

    /// The resolve itself: the cached row, else the store's.
    async fn open_row(
        &self,
        name: &TokenName,
        caller: &str,
        require_binding: bool,
    ) -> Result<SecretValue> {
        if let Some(row) = self.cache.get(name) {
            let keyring = self.keyring.current();
            if keyring.has_version(row.kek_version()) {
                match self
                    .open(row.clone(), name, caller, require_binding, keyring)
                    .await
                {
                    // Read it again below: its KEK went away meanwhile, or it
                    // was loaded ahead of demand and never opened before.
                    Err(Error::DataLoss) => {}
                    decided => return decided,
                }
            }
            self.cache.evict(name, &row);
        }
        let epoch = self.cache.epoch();
        let row = match self.tokens.get_sealed(name).await? {
            Some(row) => CachedRow::new(name, &row),
            None if require_binding => return Err(Error::PermissionDenied),
            None => return Err(Error::NotFound("token")),
        };
        let mut keyring = self.keyring.current();
        if !keyring.has_version(row.kek_version()) {
            // Another process (`aitokens keys rotate`) re-wrapped this row
            // under a KEK we have not loaded yet: load it, once.
            let records =
                self.keyrings.keyring().await?.ok_or_else(|| {
                    Error::Internal("the keyring vanished from the database".into())
                })?;
            self.keyring.reload(&records)?;
            keyring = self.keyring.current();
        }
        let value = self
            .open(row.clone(), name, caller, require_binding, keyring)
            .await?;
        self.cache.insert(epoch, row);
        Ok(value)
    }

    /// [`open_for`], on the executor for a small value (two AEAD opens: a
    /// few microseconds), else on the blocking pool.
    async fn open(
        &self,
        row: CachedRow,
        name: &TokenName,
        caller: &str,
        require_binding: bool,
        keyring: Arc<Keyring>,
    ) -> Result<SecretValue> {
        let now_us = self.clock.now_micros();
        if row.value_ciphertext().len() <= OPEN_ON_EXECUTOR_MAX {
            return open_for(
                &row,
                name,
                caller,
                require_binding,
                &keyring,
                &self.usage,
                now_us,
            );
        }
        let (name, caller, usage) = (name.clone(), caller.to_owned(), self.usage.clone());
        tokio::task::spawn_blocking(move || {
            open_for(
                &row,
                &name,
                &caller,
                require_binding,
                &keyring,
                &usage,
                now_us,
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("open task failed: {e}")))?
    }

    /// Records a resolve refused before any lookup (policy said no).
    pub fn record_denied(&self, name: &TokenName, caller: &str) {
        self.usage
            .denied_by_name(name, caller, self.clock.now_micros());
    }

    /// Fills the resolve cache from the store ahead of demand, in batches,
    /// until every token was offered or the cache is off. Rows that do not
    /// fit are left to be read on demand. Returns the rows it cached.
    pub async fn warm_cache(&self) -> Result<usize> {
        if self.cache.is_off() {
            return Ok(0);
        }
        let (mut after_seq, mut cached) = (0, 0);
        loop {
            // A change committed while this batch is in flight makes its
            // inserts stale; the epoch check drops them.
            let epoch = self.cache.epoch();
            let batch = self.tokens.scan_sealed(after_seq, WARM_BATCH).await?;
            let Some((last, _, _)) = batch.last() else {
                return Ok(cached);
            };
            after_seq = *last;
            for (_, name, token) in batch {
                let row = CachedRow::new(&name, &token);
                cached += usize::from(self.cache.insert_if_room(epoch, row));
            }
        }
    }

    /// Looks at the store's change generation and drops every cached row if
    /// it moved past what the change feed (if any) already accounted for:
    /// another process (or this one) changed tokens or bindings and nobody
    /// said which. The server calls this a few times a second. A store that
    /// does not answer leaves the cache alone: the caller decides, after its
    /// outage grace, to [`Resolver::drop_cache`].
    pub async fn notice_store_changes(&self) -> Result<bool> {
        let generation = self.tokens.change_generation().await?;
        let seen = self.seen_generation.fetch_max(generation, Ordering::AcqRel);
        if seen >= generation {
            return Ok(false);
        }
        self.cache.clear();
        Ok(true)
    }

    /// Applies a change the store reported: drops the cached row of the
    /// name it touched (every row, for a resync), and notes its generation
    /// as accounted for.
    pub fn apply(&self, change: &StoreChange) {
        match change {
            StoreChange::Changed { generation, token } => {
                match token {
                    Some(name) => self.cache.invalidate(name),
                    None => self.cache.clear(),
                }
                self.seen_generation
                    .fetch_max(*generation, Ordering::AcqRel);
            }
            StoreChange::Resync => self.cache.clear(),
        }
    }

    /// Drops every cached row: resolves go to the store (which refuses
    /// while it cannot be reached).
    pub fn drop_cache(&self) {
        self.cache.clear();
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
}

/// Decides whether `caller` gets the value of token `name` (stored as `row`)
/// and opens it; records the outcome in `usage`, at `now_us`.
fn open_for(
    row: &CachedRow,
    name: &TokenName,
    caller: &str,
    require_binding: bool,
    keyring: &Keyring,
    usage: &UsageTracker,
    now_us: i64,
) -> Result<SecretValue> {
    if require_binding && !row.binds(caller) {
        usage.denied(row.uid(), name, caller, now_us);
        return Err(Error::PermissionDenied);
    }
    if row.disabled() {
        usage.denied(row.uid(), name, caller, now_us);
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
    let value = SecretValue::new(text);
    if !usage.resolved(row.uid(), name, caller, now_us, row.replaced()) {
        // It could not be counted, so it does not leave (zeroized on drop).
        return Err(Error::audit_unavailable());
    }
    Ok(value)
}
