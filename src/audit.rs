//! The audit trail: every admin mutation and every authorization decision.
//!
//! Events are appended to the store with a hash chain: each record carries
//! the SHA-256 of the previous record's hash and its own canonical encoding,
//! and the store keeps the head (last sequence and hash) beside the log, so
//! [`crate::store::verify_audit_file`] finds a removed, inserted or edited record and says where.
//! Admin mutations are written in the same transaction as the change (fail
//! closed); decisions that change nothing (reads, denials, resolves) are
//! queued in memory and written in batches, so the hot path stays write-free.
//!
//! An event never carries a value, a ciphertext or a hash of a value.

use std::{
    fs::OpenOptions,
    io::Write,
    path::PathBuf,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};

/// What an authorization decision or mutation came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Authorized (and, for a mutation, done).
    Allowed,
    /// The policy refused the caller.
    Denied,
    /// The caller presented no usable identity.
    Unauthenticated,
    /// Authorized, but the request failed (bad input, not found, ...).
    Failed,
}

impl Outcome {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Unauthenticated => "unauthenticated",
            Self::Failed => "failed",
        }
    }
}

/// Who is acting, from where, through which RPC: the part of an event known
/// before the outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The caller's identity (policy identity, or what the certificate showed).
    pub identity: String,
    /// The caller's network address.
    pub peer: String,
    /// The RPC, `package.Service/Method`.
    pub method: &'static str,
}

impl Actor {
    /// An event by this actor.
    pub fn event(
        &self,
        tenant: Option<&str>,
        resource: impl Into<String>,
        outcome: Outcome,
        reason: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            time: SystemTime::now(),
            actor: self.identity.clone(),
            peer: self.peer.clone(),
            method: self.method.to_owned(),
            tenant: tenant.map(str::to_owned),
            resource: resource.into(),
            outcome,
            reason: reason.into(),
        }
    }
}

/// One audit event, before it is sequenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// When it happened.
    pub time: SystemTime,
    /// Who.
    pub actor: String,
    /// From where.
    pub peer: String,
    /// Which RPC.
    pub method: String,
    /// The tenant concerned, if known (tenant admins see their tenant's events).
    pub tenant: Option<String>,
    /// What it acted on.
    pub resource: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, in words.
    pub reason: String,
}

/// A stored event with its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the log: 1, 2, 3, ... without gaps.
    pub seq: i64,
    /// The event.
    pub event: AuditEvent,
}

/// Length of a chain hash.
pub const HASH_LEN: usize = 32;
/// The hash before the first record.
pub const GENESIS: [u8; HASH_LEN] = [0; HASH_LEN];

/// The chain hash of record `seq` holding `event`, following `prev`.
pub fn chain_hash(prev: &[u8], seq: i64, event: &AuditEvent) -> [u8; HASH_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(b"aitokens-audit-v1");
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(micros(event.time).to_be_bytes());
    for field in [
        event.actor.as_str(),
        event.peer.as_str(),
        event.method.as_str(),
        event.tenant.as_deref().unwrap_or(""),
        event.resource.as_str(),
        event.outcome.as_str(),
        event.reason.as_str(),
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.update([u8::from(event.tenant.is_some())]);
    hasher.finalize().into()
}

/// Microseconds since the epoch: the stored time unit.
pub fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Events waiting for the next batch write.
#[derive(Debug, Default)]
pub struct AuditQueue {
    pending: Mutex<Vec<AuditEvent>>,
    dropped: std::sync::atomic::AtomicU64,
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
            let dropped = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
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

/// The optional JSON-lines mirror of the audit log.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl JsonlSink {
    /// A sink appending to `path` (created mode 0600 on first write).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: Mutex::new(None),
        }
    }

    /// Appends committed records. A failure is logged, never fatal: the
    /// database is the log of record, this file only mirrors it.
    pub fn write(&self, records: &[AuditRecord]) {
        if records.is_empty() {
            return;
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            match OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
            {
                Ok(f) => *file = Some(f),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "audit JSON-lines sink unavailable");
                    return;
                }
            }
        }
        let mut lines = String::new();
        for record in records {
            lines.push_str(&json_line(record));
            lines.push('\n');
        }
        if let Some(f) = file.as_mut()
            && let Err(e) = f.write_all(lines.as_bytes())
        {
            tracing::error!(path = %self.path.display(), error = %e, "audit JSON-lines write failed");
            *file = None;
        }
    }
}

fn json_line(record: &AuditRecord) -> String {
    let event = &record.event;
    serde_json::json!({
        "sequence": record.seq,
        "time_us": micros(event.time),
        "actor": event.actor,
        "peer": event.peer,
        "method": event.method,
        "tenant": event.tenant,
        "resource": event.resource,
        "outcome": event.outcome.as_str(),
        "reason": event.reason,
    })
    .to_string()
}
