//! Generated protobuf types, plus the hand-written parts that keep values safe:
//! a redacting `Debug` and a zeroizing `Drop` for every message that carries a
//! token value (build.rs turns their generated `Debug` off).

#![allow(missing_docs)]

use std::fmt;

use zeroize::Zeroize;

use crate::{
    audit::AuditRecord,
    tokens::{Binding, TokenRecord, UsageStats},
};

tonic::include_proto!("aitokens.v1");

/// Descriptors of the aitokens services and their imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aitokens_descriptor");

impl fmt::Debug for CreateTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateTokenRequest")
            .field("parent", &self.parent)
            .field("token_id", &self.token_id)
            .field("token", &self.token)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

impl Drop for CreateTokenRequest {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl fmt::Debug for ResolveTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolveTokenResponse")
            .field("name", &self.name)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

impl Drop for ResolveTokenResponse {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl From<TokenRecord> for Token {
    fn from(record: TokenRecord) -> Self {
        let state = if record.disabled {
            token::State::Disabled
        } else {
            token::State::Enabled
        };
        Self {
            etag: record.etag(),
            name: record.name.to_string(),
            token_id: record.name.token_id.to_string(),
            replaces: record
                .replaces_name()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            replaced_by: record
                .replaced_by_name()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            display_name: record.display_name,
            create_time: Some(record.create_time.into()),
            update_time: Some(record.update_time.into()),
            last_resolve_time: record.last_resolve.map(Into::into),
            resolve_count: record.resolve_count,
            state: state.into(),
        }
    }
}

/// A timestamp from microseconds since the epoch.
pub fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

impl From<(String, UsageStats)> for TokenUsage {
    fn from((caller_identity, s): (String, UsageStats)) -> Self {
        Self {
            caller_identity,
            first_resolve_time: s.first_resolve_us.map(timestamp),
            last_resolve_time: s.last_resolve_us.map(timestamp),
            resolve_count: s.resolve_count,
            last_denied_time: s.last_denied_us.map(timestamp),
            denied_count: s.denied_count,
            superseded_resolve_count: s.superseded_count,
            last_superseded_resolve_time: s.last_superseded_us.map(timestamp),
        }
    }
}

impl From<Binding> for TokenBinding {
    fn from(binding: Binding) -> Self {
        Self {
            name: binding.name.to_string(),
            binding_id: binding.record.binding_id.as_str().to_owned(),
            caller_identity: binding.record.caller_identity.unwrap_or_default(),
            purpose: binding.record.purpose,
            create_time: Some(binding.record.create_time.into()),
        }
    }
}

impl From<AuditRecord> for AuditEvent {
    fn from(record: AuditRecord) -> Self {
        let event = record.event;
        Self {
            sequence: record.seq,
            time: Some(event.time.into()),
            outcome: event.outcome.as_str().to_owned(),
            actor: event.actor,
            peer: event.peer,
            method: event.method,
            resource: event.resource,
            reason: event.reason,
        }
    }
}
