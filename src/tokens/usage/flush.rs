//! The flusher: pending usage counters, queued audit events and the
//! aggregate records that account for every allowed resolve, written in one
//! store transaction every flush interval (and early when many pairs are
//! pending), put back if the write fails so that nothing is lost.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use super::UsageTracker;
use crate::{
    audit::{AuditHealth, AuditQueue},
    error::{Error, Result},
    model::{AuditEvent, Outcome, UsageBatch, from_micros},
    proto::rpcs,
    store::{Pending, Unflushed, UsageStore},
};

/// Held by a flush from the moment it drains the in-memory counters until
/// they are committed (or put back), and by every reader that combines
/// stored with pending usage: otherwise such a reader could see the drained
/// counters in neither place (and, say, remove a token a caller resolved a
/// second ago).
#[derive(Clone, Default)]
pub struct FlushGate(Arc<Mutex<()>>);

impl FlushGate {
    /// Waits for a flush in progress and keeps the next one out while held.
    pub async fn hold(&self) -> OwnedMutexGuard<()> {
        self.0.clone().lock_owned().await
    }
}

/// Writes what the usage tracker and the audit queue hold.
#[derive(Clone)]
pub struct Flusher {
    store: Arc<dyn UsageStore>,
    usage: Arc<UsageTracker>,
    audit: Arc<AuditQueue>,
    health: Arc<AuditHealth>,
    gate: FlushGate,
    /// Persist per-caller usage counters (the audit aggregates are written
    /// either way).
    track: bool,
}

impl Flusher {
    /// A flusher of `usage` and `audit` into `store`, taking `gate`, that
    /// reports each outcome to `health`.
    pub(in crate::tokens) fn new(
        store: Arc<dyn UsageStore>,
        usage: Arc<UsageTracker>,
        audit: Arc<AuditQueue>,
        health: Arc<AuditHealth>,
        gate: FlushGate,
        track: bool,
    ) -> Self {
        Self {
            store,
            usage,
            audit,
            health,
            gate,
            track,
        }
    }

    /// Writes pending usage counters, queued audit events and the resolve
    /// aggregates in one batch. On failure everything stays queued for the
    /// next attempt. Runs to completion in its own task even if the caller
    /// goes away, so a cancelled request can never lose drained counters or
    /// events.
    pub async fn flush(&self) -> Result<()> {
        let this = self.clone();
        tokio::spawn(async move { this.flush_now().await })
            .await
            .map_err(|e| Error::Internal(format!("flush task failed: {e}")))?
    }

    async fn flush_now(&self) -> Result<()> {
        let _gate = self.gate.hold().await;
        let batch = self.usage.drain();
        let mut events = self.audit.drain();
        if batch.is_empty() && events.is_empty() {
            self.health.written();
            return Ok(());
        }
        let queued = events.len();
        events.extend(resolve_aggregates(&batch));
        let (usage, kept) = if self.track {
            (batch, None)
        } else {
            (UsageBatch::default(), Some(batch))
        };
        match self.store.flush(Pending { usage, events }).await {
            Ok(()) => {
                self.health.written();
                Ok(())
            }
            Err(Unflushed { error, pending }) => {
                self.usage.restore(kept.unwrap_or(pending.usage));
                // The aggregates are made again from the restored counters.
                let mut events = pending.events;
                events.truncate(queued);
                self.audit.requeue(events);
                Err(error)
            }
        }
    }

    /// Usage counters that did not fit in memory and were dropped, since
    /// start (refusals counted by name; resolves are refused instead).
    pub fn dropped(&self) -> u64 {
        self.usage.dropped()
    }

    /// Completes when so many usage counters are pending that a flush
    /// should not wait for its timer.
    pub async fn usage_filled(&self) {
        self.usage.filled().await;
    }
}

/// One audit record per (token, caller) with allowed resolves in `batch`:
/// how many, and the first and last of them.
fn resolve_aggregates(batch: &UsageBatch) -> Vec<AuditEvent> {
    let method = rpcs::find("aitokens.v1.TokenResolver", "ResolveToken")
        .map_or("aitokens.v1.TokenResolver/ResolveToken", |rpc| {
            rpc.full_name.as_str()
        });
    batch
        .by_uid
        .iter()
        .filter(|d| d.stats.resolve_count > 0)
        .map(|d| {
            let last = d.stats.last_resolve_us.unwrap_or_default();
            AuditEvent {
                time: from_micros(last),
                first_time: from_micros(d.stats.first_resolve_us.unwrap_or(last)),
                count: d.stats.resolve_count,
                actor: d.caller.clone(),
                peer: "-".to_owned(),
                method: method.to_owned(),
                tenant: Some(d.token.tenant.to_string()),
                resource: d.token.to_string(),
                outcome: Outcome::Allowed,
                reason: "resolved".to_owned(),
            }
        })
        .collect()
}
