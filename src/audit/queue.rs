//! Events of decisions that change nothing (reads, refusals), held in
//! memory until the next batch write, so the hot path stays write-free;
//! and refused TLS handshakes, summarized per source and reason.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::SystemTime,
};

use crate::model::{AuditEvent, Outcome};

/// Most events held in memory between batch writes.
pub const MAX_QUEUED_EVENTS: usize = 100_000;
/// Most (listener, source, reason) summaries of refused handshakes held
/// between writes; refusals from further sources are summed under the
/// source `*` of their listener and reason, so counts stay exact.
pub const MAX_HANDSHAKE_SOURCES: usize = 4096;

/// Events waiting for the next batch write.
#[derive(Debug, Default)]
pub struct AuditQueue {
    pending: Mutex<Vec<AuditEvent>>,
    handshakes: Mutex<HashMap<HandshakeKey, Summary>>,
    /// Set when an event could not be queued; cleared by the next write
    /// that empties the queue.
    overflowed: AtomicBool,
    dropped: AtomicU64,
    folded: AtomicU64,
}

/// Which refusals one summary counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct HandshakeKey {
    listener: &'static str,
    /// `None`: the sources beyond [`MAX_HANDSHAKE_SOURCES`].
    source: Option<IpAddr>,
    reason: &'static str,
}

#[derive(Clone, Copy, Debug)]
struct Summary {
    count: i64,
    first: SystemTime,
    last: SystemTime,
}

impl AuditQueue {
    /// Queues an event for the next flush. While the store cannot be
    /// written the queue is capped at [`MAX_QUEUED_EVENTS`], so a flood of
    /// refused calls cannot exhaust memory; events past the cap are counted
    /// as dropped, and values stop leaving until the queue is written (see
    /// [`super::AuditHealth`]).
    pub fn push(&self, event: AuditEvent) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_QUEUED_EVENTS {
            drop(pending);
            self.overflowed.store(true, Ordering::Release);
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

    /// Counts a refused TLS handshake on `listener` from `source` for
    /// `reason` (a fixed label); the next write records one event per
    /// listener, source and reason, with the count and the time range.
    pub fn handshake_refused(&self, listener: &'static str, source: IpAddr, reason: &'static str) {
        let now = SystemTime::now();
        let mut map = self.handshakes.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = HandshakeKey {
            listener,
            source: Some(source),
            reason,
        };
        if map.len() >= MAX_HANDSHAKE_SOURCES && !map.contains_key(&key) {
            key.source = None;
            self.folded.fetch_add(1, Ordering::Relaxed);
        }
        let summary = map.entry(key).or_insert(Summary {
            count: 0,
            first: now,
            last: now,
        });
        summary.count += 1;
        summary.last = now;
    }

    /// Takes everything queued, handshake summaries included (as events).
    pub fn drain(&self) -> Vec<AuditEvent> {
        let mut events =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let summaries =
            std::mem::take(&mut *self.handshakes.lock().unwrap_or_else(|p| p.into_inner()));
        events.extend(summaries.into_iter().map(|(key, s)| {
            AuditEvent {
                time: s.last,
                first_time: s.first,
                count: s.count,
                actor: "(no verified certificate)".to_owned(),
                peer: key
                    .source
                    .map_or_else(|| "*".to_owned(), |ip| ip.to_string()),
                method: "tls/handshake".to_owned(),
                tenant: None,
                resource: format!("listener/{}", key.listener),
                outcome: Outcome::Unauthenticated,
                reason: format!("TLS_{}", key.reason.to_ascii_uppercase()),
            }
        }));
        events
    }

    /// Puts events back at the front after a failed write, so none is lost.
    pub fn requeue(&self, mut events: Vec<AuditEvent>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        events.append(&mut pending);
        *pending = events;
    }

    /// Records that everything drained before was written: an overflow is
    /// over once the queue has room again.
    pub fn written(&self) {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < MAX_QUEUED_EVENTS {
            self.overflowed.store(false, Ordering::Release);
        }
    }

    /// Whether an event was dropped since the last successful write.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Events dropped (queue full), and handshake refusals summed under
    /// source `*` (too many sources), since start.
    pub fn losses(&self) -> (u64, u64) {
        (
            self.dropped.load(Ordering::Relaxed),
            self.folded.load(Ordering::Relaxed),
        )
    }
}
