//! Audit events: who did what to which resource, and how it ended.
//!
//! An event never carries a value, a ciphertext or a hash of a value.

use std::time::SystemTime;

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

    /// The outcome a stored spelling names; anything unknown reads as
    /// `failed` (the chain check catches an edited spelling).
    pub fn parse(text: &str) -> Self {
        match text {
            "allowed" => Self::Allowed,
            "denied" => Self::Denied,
            "unauthenticated" => Self::Unauthenticated,
            _ => Self::Failed,
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
        let now = SystemTime::now();
        AuditEvent {
            time: now,
            first_time: now,
            count: 1,
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

/// One audit event (or an aggregate of identical ones), before it is
/// sequenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// When it happened (for an aggregate: the last time it covers).
    pub time: SystemTime,
    /// The first time an aggregate covers (`time` for a single event).
    pub first_time: SystemTime,
    /// How many events this record accounts for (1 for a single one).
    pub count: i64,
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
