//! Events of decisions that change nothing (reads, refusals), held in
//! memory until the next batch write, so the hot path stays write-free.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use crate::model::AuditEvent;

/// Events waiting for the next batch write.
#[derive(Debug, Default)]
pub struct AuditQueue {
    pending: Mutex<Vec<AuditEvent>>,
    dropped: AtomicU64,
}

/// Most events held in memory between batch writes.
pub const MAX_QUEUED_EVENTS: usize = 100_000;

impl AuditQueue {
    /// Queues an event for the next flush. While the store cannot be
    /// written the queue is capped at [`MAX_QUEUED_EVENTS`], so a flood of
    /// refused calls cannot exhaust memory; events past the cap are counted
    /// in the log instead.
    pub fn push(&self, event: AuditEvent) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_QUEUED_EVENTS {
            drop(pending);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::error!(
                    dropped,
                    "audit queue full (the store is not taking writes): events dropped"
                );
            }
            return;
        }
        pending.push(event);
    }

    /// Takes everything queued.
    pub fn drain(&self) -> Vec<AuditEvent> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts events back at the front after a failed write, so none is lost.
    pub fn requeue(&self, mut events: Vec<AuditEvent>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        events.append(&mut pending);
        *pending = events;
    }
}
