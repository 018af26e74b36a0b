//! Whether the audit trail can account for what leaves: ResolveToken asks
//! before it hands out a value, and refuses (UNAVAILABLE,
//! `AUDIT_UNAVAILABLE`) while the trail cannot be written — queued events
//! dropped, or no successful write for longer than the configured bound —
//! and serves again by itself once a write succeeds.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::AuditQueue;

/// The trail's health, as the flusher last saw it.
#[derive(Debug)]
pub struct AuditHealth {
    queue: Arc<AuditQueue>,
    /// Milliseconds since `epoch` of the last write that succeeded (or
    /// found nothing to write).
    last_ok_ms: AtomicU64,
    epoch: Instant,
    bound_ms: u64,
}

impl AuditHealth {
    /// Health of the trail fed by `queue`, refusing once no write has
    /// succeeded for `max_unflushed`.
    pub fn new(queue: Arc<AuditQueue>, max_unflushed: Duration) -> Self {
        Self {
            queue,
            last_ok_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            bound_ms: u64::try_from(max_unflushed.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A write of usage and queued events succeeded.
    pub fn written(&self) {
        self.last_ok_ms.store(self.now_ms(), Ordering::Release);
        self.queue.written();
    }

    /// Whether values may leave now: nothing dropped, and a write
    /// succeeded within the bound.
    pub fn accepting(&self) -> bool {
        let since = self
            .now_ms()
            .saturating_sub(self.last_ok_ms.load(Ordering::Acquire));
        since <= self.bound_ms && !self.queue.overflowed()
    }
}
