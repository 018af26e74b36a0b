//! The flusher: pending usage counters and queued audit events, written in
//! one store transaction every flush interval (and early when many pairs
//! are pending), put back if the write fails so that nothing is lost.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use super::UsageTracker;
use crate::{
    audit::AuditQueue,
    error::{Error, Result},
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
    gate: FlushGate,
}

impl Flusher {
    /// A flusher of `usage` and `audit` into `store`, taking `gate`.
    pub fn new(
        store: Arc<dyn UsageStore>,
        usage: Arc<UsageTracker>,
        audit: Arc<AuditQueue>,
        gate: FlushGate,
    ) -> Self {
        Self {
            store,
            usage,
            audit,
            gate,
        }
    }

    /// Writes pending usage counters and queued audit events in one batch.
    /// On failure everything stays queued for the next attempt. Runs to
    /// completion in its own task even if the caller goes away, so a
    /// cancelled request can never lose drained counters or events.
    pub async fn flush(&self) -> Result<()> {
        let this = self.clone();
        tokio::spawn(async move { this.flush_now().await })
            .await
            .map_err(|e| Error::Internal(format!("flush task failed: {e}")))?
    }

    async fn flush_now(&self) -> Result<()> {
        let _gate = self.gate.hold().await;
        let pending = Pending {
            usage: self.usage.drain(),
            events: self.audit.drain(),
        };
        if pending.is_empty() {
            return Ok(());
        }
        match self.store.flush(pending).await {
            Ok(()) => Ok(()),
            Err(Unflushed { error, pending }) => {
                self.usage.restore(pending.usage);
                self.audit.requeue(pending.events);
                Err(error)
            }
        }
    }

    /// Completes when so many usage counters are pending that a flush
    /// should not wait for its timer.
    pub async fn usage_filled(&self) {
        self.usage.filled().await;
    }
}
