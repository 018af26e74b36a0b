//! Domain types to protobuf messages.

use std::time::Duration;

use crate::{
    model::{AuditRecord, Binding, TokenRecord, UsageStats},
    proto::{AuditEvent, Token, TokenBinding, TokenUsage, token},
    tokens::ReplacementStatus,
};

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
pub(super) fn timestamp(us: i64) -> prost_types::Timestamp {
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
            first_time: Some(event.first_time.into()),
            count: event.count,
            outcome: event.outcome.as_str().to_owned(),
            actor: event.actor,
            peer: event.peer,
            method: event.method,
            resource: event.resource,
            reason: event.reason,
        }
    }
}

/// The replacement status of token `name`.
pub(super) fn replacement_status(
    name: String,
    status: ReplacementStatus,
) -> crate::proto::ReplacementStatus {
    crate::proto::ReplacementStatus {
        name,
        replaced_by: status
            .replaced_by
            .map(|n| n.to_string())
            .unwrap_or_default(),
        ready_to_remove: status.ready_to_remove,
        window: Some(duration(status.window)),
        last_superseded_resolve_time: status.last_superseded.map(Into::into),
        callers_not_switched: status.callers_not_switched,
    }
}

/// A protobuf duration.
fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
