//! Where a token is used: declared bindings, observed usage, replacement
//! status, and the audit trail.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use super::{
    BindingId, BindingName, Page, PageCursor, TenantId, TokenName, Tokens, UsageStats, blocking,
    page_limit, validate_display_name,
};
use crate::{
    audit::{Actor, AuditRecord, Outcome},
    error::{Error, Result},
    store::{AuditFilter, BindingRecord},
};

/// A binding as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Its resource name.
    pub name: BindingName,
    /// What is stored.
    pub record: BindingRecord,
}

/// Whether a replaced token is still used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplacementStatus {
    /// The replacement, if any.
    pub replaced_by: Option<TokenName>,
    /// Replaced, and no superseded resolve within the window.
    pub ready_to_remove: bool,
    /// The window considered.
    pub window: Duration,
    /// Last superseded resolve by anyone.
    pub last_superseded: Option<SystemTime>,
    /// Callers with a superseded resolve within the window.
    pub callers_not_switched: Vec<String>,
}

/// Whether `identity` is spelled as the policy spells identities: a URI
/// SAN (`scheme://...`) or `dns:NAME`, without spaces, at most 2 KiB. Any
/// other spelling could never match a caller.
fn is_identity(identity: &str) -> bool {
    let well_formed = match identity.strip_prefix("dns:") {
        Some(name) => !name.is_empty(),
        None => identity
            .split_once("://")
            .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty()),
    };
    well_formed && identity.len() <= 2048 && !identity.chars().any(char::is_whitespace)
}

/// Stored and pending counters merged per caller, most recently active first.
pub(super) fn merged_usage(
    stored: &[(String, UsageStats)],
    pending: Vec<(String, UsageStats)>,
) -> Vec<(String, UsageStats)> {
    let mut by_caller: HashMap<String, UsageStats> = stored.iter().cloned().collect();
    for (identity, stats) in pending {
        by_caller.entry(identity).or_default().merge(&stats);
    }
    let mut rows: Vec<_> = by_caller.into_iter().collect();
    let activity = |s: &UsageStats| s.last_resolve_us.max(s.last_denied_us);
    rows.sort_by(|a, b| {
        activity(&b.1)
            .cmp(&activity(&a.1))
            .then_with(|| a.0.cmp(&b.0))
    });
    rows
}

impl Tokens {
    /// Declares that consumer `binding_id` uses `token`.
    pub async fn create_binding(
        &self,
        actor: &Actor,
        token: TokenName,
        binding_id: &str,
        caller_identity: &str,
        purpose: &str,
    ) -> Result<Binding> {
        let binding_id = BindingId::new(binding_id, "binding_id")?;
        validate_display_name(purpose, "binding.purpose")?;
        let caller_identity = match caller_identity {
            "" => None,
            identity if is_identity(identity) => Some(identity.to_owned()),
            _ => {
                return Err(Error::invalid(
                    "binding.caller_identity",
                    "must be a certificate identity (a URI such as spiffe://..., or dns:NAME) without spaces",
                ));
            }
        };
        let record = BindingRecord {
            binding_id: binding_id.clone(),
            caller_identity,
            purpose: purpose.to_owned(),
            create_time: super::now(),
        };
        let name = BindingName { token, binding_id };
        let event = actor.event(
            Some(name.token.tenant.as_str()),
            name.to_string(),
            Outcome::Allowed,
            "binding created",
        );
        let (store, cache) = (self.store.clone(), self.cache.clone());
        let (name, record) = blocking(move || {
            let created = store.create_binding(&name.token, &record, &[event]);
            cache.invalidate(&name.token);
            created?;
            Ok((name, record))
        })
        .await?;
        Ok(Binding { name, record })
    }

    /// A token's bindings.
    pub async fn list_bindings(&self, token: TokenName) -> Result<Vec<Binding>> {
        let store = self.store.clone();
        blocking(move || {
            let records = store.list_bindings(&token)?;
            Ok(records
                .into_iter()
                .map(|record| Binding {
                    name: BindingName {
                        token: token.clone(),
                        binding_id: record.binding_id.clone(),
                    },
                    record,
                })
                .collect())
        })
        .await
    }

    /// Withdraws a binding.
    pub async fn delete_binding(&self, actor: &Actor, name: BindingName) -> Result<()> {
        let event = actor.event(
            Some(name.token.tenant.as_str()),
            name.to_string(),
            Outcome::Allowed,
            "binding deleted",
        );
        let (store, cache) = (self.store.clone(), self.cache.clone());
        blocking(move || {
            let deleted = store.delete_binding(&name.token, &name.binding_id, &[event]);
            cache.invalidate(&name.token);
            deleted
        })
        .await
    }

    /// Usage of a token per caller identity, stored and pending, most
    /// recently active first.
    pub async fn usages(&self, name: TokenName) -> Result<Vec<(String, UsageStats)>> {
        let _no_flush = self.hold_flushes().await;
        let store = self.store.clone();
        let (uid, stored) = blocking(move || {
            let record = store.get(&name)?.ok_or(Error::NotFound("token"))?;
            Ok((record.uid, store.usage(&record.uid)?))
        })
        .await?;
        Ok(merged_usage(&stored, self.usage.pending(&uid)))
    }

    /// Whether a replaced token can be removed.
    pub async fn replacement_status(&self, name: TokenName) -> Result<ReplacementStatus> {
        let record = self.get(name.clone()).await?;
        let usages = self.usages(name).await?;
        let cutoff_us = super::micros_ago(self.recent_window);
        let last_superseded = usages
            .iter()
            .filter_map(|(_, s)| s.last_superseded_us)
            .max();
        let callers_not_switched: Vec<String> = usages
            .into_iter()
            .filter(|(_, s)| s.last_superseded_us.is_some_and(|t| t >= cutoff_us))
            .map(|(identity, _)| identity)
            .collect();
        let replaced_by = record.replaced_by_name();
        Ok(ReplacementStatus {
            ready_to_remove: replaced_by.is_some() && callers_not_switched.is_empty(),
            replaced_by,
            window: self.recent_window,
            last_superseded: last_superseded.map(super::from_micros),
            callers_not_switched,
        })
    }

    /// One page of the audit trail of `tenant` (`None`: every event). Writes
    /// queued events first, so a caller reads its own decisions.
    pub async fn audit_events(
        &self,
        tenant: Option<TenantId>,
        mut filter: AuditFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<AuditRecord>> {
        let limit = page_limit(page_size)?;
        let scope = tenant.as_ref().map_or("-".to_owned(), |t| t.to_string());
        let after_seq = PageCursor::decode(page_token, "audit", &scope)?;
        self.flush().await?;
        filter.tenant = tenant;
        let store = self.store.clone();
        let (items, more) = blocking(move || {
            let mut rows = store.list_audit(&filter, after_seq, limit + 1)?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            Ok((rows, more))
        })
        .await?;
        let next_page_token = more
            .then(|| {
                items.last().map(|last| {
                    PageCursor {
                        kind: "audit",
                        scope,
                        after_seq: last.seq,
                    }
                    .encode()
                })
            })
            .flatten();
        Ok(Page {
            items,
            next_page_token,
        })
    }
}
