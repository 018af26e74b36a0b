//! A token's life: create (sealed before it is stored), read, list, rename,
//! disable and enable, remove (guarded by what still uses it).
//!
//! Every change runs to completion in its own task and invalidates the
//! resolve cache for the names it touched once its transaction has ended,
//! before it is acknowledged: a cancelled request cannot leave a stale row
//! behind, and a removed or disabled token is refused by the very next
//! resolve.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{SealedCache, Watch, detached, rules};
use crate::{
    crypto::KeyringHandle,
    error::{Error, Result},
    model::{
        Actor, BindingName, Clock, Outcome, Page, PageCursor, SecretValue, TenantId, TokenId,
        TokenName, TokenRecord, TokenUid, micros, now, page_limit,
    },
    store::TokenStore,
    tokens::usage::{FlushGate, UsageTracker},
};

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

/// What CreateToken asks for, once the caller is authorized.
#[derive(Debug)]
pub struct NewToken {
    /// The tenant it belongs to.
    pub tenant: TenantId,
    /// Its id, as requested (validated here).
    pub token_id: String,
    /// Its display name.
    pub display_name: String,
    /// Its value.
    pub value: SecretValue,
    /// The name of the token (same tenant) it replaces, or empty.
    pub replaces: String,
}

/// Token lifecycle operations.
#[derive(Clone)]
pub struct Lifecycle {
    store: Arc<dyn TokenStore>,
    keyring: Arc<KeyringHandle>,
    cache: Arc<SealedCache>,
    usage: Arc<UsageTracker>,
    gate: FlushGate,
    recent_window: Duration,
    /// When tokens are created, and how long ago is "unused for".
    clock: Clock,
    /// Tokens in the store, kept in memory (see [`Lifecycle::token_count`]).
    count: Arc<AtomicU64>,
    /// Told of every committed change, so watchers hear of it at once.
    watch: Watch,
}

impl Lifecycle {
    /// Operations over `store`, sealing with `keyring`; a resolve within
    /// `recent_window` blocks a removal; times come from `clock`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor, called once by Domain::new, wiring shared parts"
    )]
    pub(super) fn new(
        store: Arc<dyn TokenStore>,
        keyring: Arc<KeyringHandle>,
        cache: Arc<SealedCache>,
        usage: Arc<UsageTracker>,
        gate: FlushGate,
        recent_window: Duration,
        clock: Clock,
        count: u64,
        watch: Watch,
    ) -> Self {
        Self {
            store,
            keyring,
            cache,
            usage,
            gate,
            recent_window,
            clock,
            count: Arc::new(count.into()),
            watch,
        }
    }

    /// Validates, seals and stores a new token, optionally as the
    /// replacement of another token of the same tenant.
    pub async fn create(&self, actor: &Actor, new: NewToken) -> Result<TokenRecord> {
        let token_id = rules::validate_new_token(&new.token_id, &new.display_name, &new.value)?;
        let replaces = match new.replaces.as_str() {
            "" => None,
            name => {
                let old = TokenName::parse(name, "replaces")?;
                if old.tenant != new.tenant {
                    return Err(Error::invalid(
                        "replaces",
                        "must name a token of the same tenant",
                    ));
                }
                Some(old.token_id)
            }
        };
        let name = TokenName {
            tenant: new.tenant,
            token_id,
        };
        let record = TokenRecord::new(
            TokenUid::generate()?,
            name,
            new.display_name,
            self.clock.now(),
        );
        let replaced = replaces.as_ref().map(|old| record.sibling(old));
        let reason = match &replaced {
            Some(old) => format!("created, replacing {old}"),
            None => "created".to_owned(),
        };
        let tenant = Some(record.name.tenant.as_str());
        let event = actor.event(tenant, record.name.to_string(), Outcome::Allowed, reason);
        let sealed = self.keyring.current().seal_value(
            record.name.tenant.as_str(),
            &record.uid,
            new.value.expose().as_bytes(),
        )?;
        drop(new.value);
        let (store, cache, count) = (self.store.clone(), self.cache.clone(), self.count.clone());
        let watch = self.watch.clone();
        detached(async move {
            let created = store.insert(record, sealed, replaces, vec![event]).await;
            // The replaced token's row changed (it gained `replaced_by`).
            if let Some(replaced) = &replaced {
                cache.invalidate(replaced);
                watch.poke();
            }
            if created.is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
            created
        })
        .await
    }

    /// How many tokens exist, across tenants, as counted in memory: counted
    /// at start, moved by every create and remove of this process, and
    /// recounted by [`Lifecycle::recount`] (changes of other processes).
    pub fn token_count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Counts the tokens in the store again; returns the count.
    pub async fn recount(&self) -> Result<u64> {
        let counted = self.store.count().await?;
        self.count.store(counted, Ordering::Relaxed);
        Ok(counted)
    }

    /// A token's metadata, usage included (pending counters too).
    pub async fn get(&self, name: &TokenName) -> Result<TokenRecord> {
        // Stored and pending usage with no flush between them (FlushGate).
        let _no_flush = self.gate.hold().await;
        let mut record = self
            .store
            .get(name)
            .await?
            .ok_or(Error::NotFound("token"))?;
        self.usage.add_pending_to(&mut record);
        Ok(record)
    }

    /// The tenants that hold at least one token, in order.
    pub async fn tenants(&self) -> Result<Vec<TenantId>> {
        self.store.tenants().await
    }

    /// One page of a tenant's tokens, in creation order; with `unused_for`,
    /// only those unused for that long: created more than `unused_for` ago,
    /// and not resolved within it (or never).
    pub async fn list(
        &self,
        tenant: TenantId,
        page_size: i32,
        page_token: &str,
        unused_for: Option<Duration>,
    ) -> Result<Page<TokenRecord>> {
        let limit = page_limit(page_size)?;
        let after_seq = PageCursor::decode(page_token, "tokens", tenant.as_str())?;
        let cutoff_us = unused_for.map(|ago| self.clock.micros_ago(ago));
        // Stored and pending usage with no flush between them (FlushGate).
        let no_flush = self.gate.hold().await;
        let rows = self
            .store
            .list(&tenant, after_seq, limit + 1, cutoff_us)
            .await?;
        let mut page = Page::of(rows, limit, "tokens", tenant.to_string(), |r| r.seq);
        for record in &mut page.items {
            self.usage.add_pending_to(record);
        }
        drop(no_flush);
        // Resolves not yet flushed count too.
        if let Some(cutoff) = cutoff_us {
            page.items.retain(|r| {
                micros(r.create_time) < cutoff && r.last_resolve.is_none_or(|t| micros(t) < cutoff)
            });
        }
        Ok(page)
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
            rules::validate_display_name(display_name, "display_name")?;
        }
        let new_token_id = change
            .new_token_id
            .as_deref()
            .map(|id| TokenId::new(id, "new_token_id"))
            .transpose()?;
        let renamed = new_token_id.as_ref().map(|id| TokenName {
            tenant: name.tenant.clone(),
            token_id: id.clone(),
        });
        let actor = actor.clone();
        let (etag, display_name) = (change.etag, change.display_name);
        let (store, cache, watch) = (self.store.clone(), self.cache.clone(), self.watch.clone());
        let mut record = detached(async move {
            let change = move |current: &TokenRecord| {
                rules::check_etag(current, etag.as_deref())?;
                Ok(renamed_record(
                    current,
                    &actor,
                    display_name.as_deref(),
                    new_token_id.as_ref(),
                ))
            };
            let updated = store.update(&name, Box::new(change)).await;
            cache.invalidate(&name);
            if let Some(renamed) = &renamed {
                cache.invalidate(renamed);
            }
            watch.poke();
            updated
        })
        .await?;
        self.usage.add_pending_to(&mut record);
        Ok(record)
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
        let (store, cache, watch) = (self.store.clone(), self.cache.clone(), self.watch.clone());
        let mut record = detached(async move {
            let updated = store
                .update(
                    &name,
                    Box::new(move |current| {
                        rules::check_etag(current, etag.as_deref())?;
                        let mut updated = current.clone();
                        if updated.disabled != disabled {
                            updated.disabled = disabled;
                            updated.update_time = now();
                            updated.revision += 1;
                        }
                        let reason = if disabled { "disabled" } else { "enabled" };
                        let tenant = Some(current.name.tenant.as_str());
                        let resource = current.name.to_string();
                        Ok((
                            updated,
                            vec![actor.event(tenant, resource, Outcome::Allowed, reason)],
                        ))
                    }),
                )
                .await;
            cache.invalidate(&name);
            watch.poke();
            updated
        })
        .await?;
        self.usage.add_pending_to(&mut record);
        Ok(record)
    }

    /// Removes a token and its sealed value, optionally only at `etag`.
    /// Refused while bindings name it or callers resolved it within the
    /// recent window, unless `force` (see [`rules::removal_blockers`]);
    /// forced, its bindings go too, each one audited.
    pub async fn remove(
        &self,
        actor: &Actor,
        name: TokenName,
        etag: Option<String>,
        force: bool,
    ) -> Result<()> {
        let actor = actor.clone();
        let (store, cache, usage) = (self.store.clone(), self.cache.clone(), self.usage.clone());
        let count = self.count.clone();
        let recent_since_us = self.clock.micros_ago(self.recent_window);
        let clock = self.clock.clone();
        let gate = self.gate.clone();
        let watch = self.watch.clone();
        detached(async move {
            // Pending counters must be in memory or in the store, not in a
            // flush in between, while the guard looks at them.
            let _no_flush = gate.hold().await;
            let removed = store
                .delete(
                    &name,
                    Box::new(move |current, context| {
                        rules::check_etag(current, etag.as_deref())?;
                        let pending = usage.pending(&current.uid);
                        let callers = rules::merged_usage(&context.usage, pending);
                        let in_use = rules::InUse {
                            bindings: &context.bindings,
                            callers: &callers,
                        };
                        let now_us = clock.now_micros();
                        let blockers = rules::removal_blockers(
                            &current.name,
                            &in_use,
                            recent_since_us,
                            now_us,
                        );
                        let reason = rules::decide_removal(blockers, force)?;
                        Ok(removal_events(&actor, current, &context.bindings, reason))
                    }),
                )
                .await;
            // Committed (or not): either way no cached copy may outlive it.
            cache.invalidate(&name);
            watch.poke();
            let removed = removed?;
            let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if let Some(replaced) = removed.replaces_name() {
                cache.invalidate(&replaced);
            }
            Ok(())
        })
        .await
    }
}

/// What `current` becomes when renamed, and the event that records it.
fn renamed_record(
    current: &TokenRecord,
    actor: &Actor,
    display_name: Option<&str>,
    new_token_id: Option<&TokenId>,
) -> (TokenRecord, Vec<crate::model::AuditEvent>) {
    let mut updated = current.clone();
    let mut reasons = Vec::new();
    if let Some(display_name) = display_name {
        display_name.clone_into(&mut updated.display_name);
        reasons.push("display name changed".to_owned());
    }
    if let Some(token_id) = new_token_id {
        updated.name.token_id = token_id.clone();
        reasons.push(format!("renamed to {}", updated.name));
    }
    updated.update_time = now();
    updated.revision += 1;
    let tenant = Some(current.name.tenant.as_str());
    let event = actor.event(
        tenant,
        current.name.to_string(),
        Outcome::Allowed,
        reasons.join("; "),
    );
    (updated, vec![event])
}

/// The audit events of a removal: the token, and each binding that went
/// with it (a forced removal).
fn removal_events(
    actor: &Actor,
    token: &TokenRecord,
    bindings: &[crate::model::BindingRecord],
    reason: String,
) -> Vec<crate::model::AuditEvent> {
    let tenant = Some(token.name.tenant.as_str());
    let mut events = vec![actor.event(tenant, token.name.to_string(), Outcome::Allowed, reason)];
    events.extend(bindings.iter().map(|b| {
        let binding = BindingName {
            token: token.name.clone(),
            binding_id: b.binding_id.clone(),
        };
        actor.event(
            tenant,
            binding.to_string(),
            Outcome::Allowed,
            "binding deleted by forced removal",
        )
    }));
    events
}
