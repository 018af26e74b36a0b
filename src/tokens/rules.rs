//! The rules of the product, as pure functions: what a new token must look
//! like, when an etag holds, what blocks a removal, and when a replaced
//! token is ready to go. No store, no clock of their own (times are
//! passed in), so each rule is tested on its own.

use std::{collections::HashMap, time::Duration};

use crate::{
    error::{Error, Result, Violation},
    model::{
        BindingName, BindingRecord, SecretValue, TokenId, TokenName, TokenRecord, UsageStats,
        from_micros,
    },
};

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The checks CreateToken makes before anything is sealed or stored: the
/// token id, the display name and the value. Public so that fuzzing and
/// property tests drive exactly the code the server runs.
pub fn validate_new_token(
    token_id: &str,
    display_name: &str,
    value: &SecretValue,
) -> Result<TokenId> {
    let token_id = TokenId::new(token_id, "token_id")?;
    validate_display_name(display_name, "token.display_name")?;
    validate_value(value)?;
    Ok(token_id)
}

/// A display name (or binding purpose) is 1 to 256 characters.
pub fn validate_display_name(display_name: &str, field: &'static str) -> Result<()> {
    let chars = display_name.chars().count();
    if chars == 0 || chars > MAX_DISPLAY_NAME_CHARS {
        return Err(Error::invalid(field, "must be 1 to 256 characters"));
    }
    Ok(())
}

fn validate_value(value: &SecretValue) -> Result<()> {
    let len = value.expose().len();
    if len == 0 || len > MAX_VALUE_BYTES {
        return Err(Error::invalid("value", "must be 1 byte to 64 KiB"));
    }
    Ok(())
}

/// A conditional change holds only at the token's current etag.
pub fn check_etag(current: &TokenRecord, expected: Option<&str>) -> Result<()> {
    match expected {
        Some(etag) if etag != current.etag() => Err(Error::Aborted),
        _ => Ok(()),
    }
}

/// Stored and pending counters merged per caller, most recently active first.
pub fn merged_usage(
    stored: &[(String, UsageStats)],
    pending: Vec<(String, UsageStats)>,
) -> Vec<(String, UsageStats)> {
    let mut by_caller: HashMap<String, UsageStats> = stored.iter().cloned().collect();
    for (identity, stats) in pending {
        by_caller.entry(identity).or_default().merge(&stats);
    }
    let mut rows: Vec<_> = by_caller.into_iter().collect();
    rows.sort_by(|a, b| {
        b.1.last_activity_us()
            .cmp(&a.1.last_activity_us())
            .then_with(|| a.0.cmp(&b.0))
    });
    rows
}

/// What still uses a token, as the removal guard sees it.
#[derive(Debug)]
pub struct InUse<'a> {
    /// The token's declared bindings.
    pub bindings: &'a [BindingRecord],
    /// Its usage per caller, stored and pending merged.
    pub callers: &'a [(String, UsageStats)],
}

/// What blocks removing `token`: every binding that names it, and every
/// caller that resolved it at or after `recent_since_us` (now is `now_us`).
pub fn removal_blockers(
    token: &TokenName,
    in_use: &InUse<'_>,
    recent_since_us: i64,
    now_us: i64,
) -> Vec<Violation> {
    let bindings = in_use.bindings.iter().map(|b| Violation {
        kind: "BINDING",
        subject: BindingName {
            token: token.clone(),
            binding_id: b.binding_id.clone(),
        }
        .to_string(),
        description: format!("declared use: {}", b.purpose),
    });
    let callers = in_use.callers.iter().filter_map(|(identity, s)| {
        let last = s.last_resolve_us.filter(|t| *t >= recent_since_us)?;
        Some(Violation {
            kind: "RECENT_CALLER",
            subject: identity.clone(),
            description: format!("resolved the token {} s ago", (now_us - last) / 1_000_000),
        })
    });
    bindings.chain(callers).collect()
}

/// The removal guard: a token in use may go only with `force`. Returns the
/// audit reason of an allowed removal.
pub fn decide_removal(blockers: Vec<Violation>, force: bool) -> Result<String> {
    match (blockers.len(), force) {
        (0, _) => Ok("removed".to_owned()),
        (n, true) => Ok(format!("removed with force despite {n} blocker(s)")),
        (_, false) => Err(Error::FailedPrecondition {
            reason: "TOKEN_IN_USE",
            message: "the token is still in use (see the violations): move its users to another \
                      token and delete its bindings, or remove it with force",
            violations: blockers,
        }),
    }
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
    pub last_superseded: Option<std::time::SystemTime>,
    /// Callers with a superseded resolve within the window.
    pub callers_not_switched: Vec<String>,
}

/// The replacement status of `record` given its usage per caller: ready to
/// remove once it has a replacement and nobody resolved it as a superseded
/// token at or after `recent_since_us`.
pub fn replacement_status(
    record: &TokenRecord,
    callers: Vec<(String, UsageStats)>,
    window: Duration,
    recent_since_us: i64,
) -> ReplacementStatus {
    let last_superseded = callers
        .iter()
        .filter_map(|(_, s)| s.last_superseded_us)
        .max();
    let callers_not_switched: Vec<String> = callers
        .into_iter()
        .filter(|(_, s)| s.last_superseded_us.is_some_and(|t| t >= recent_since_us))
        .map(|(identity, _)| identity)
        .collect();
    let replaced_by = record.replaced_by_name();
    ReplacementStatus {
        ready_to_remove: replaced_by.is_some() && callers_not_switched.is_empty(),
        replaced_by,
        window,
        last_superseded: last_superseded.map(from_micros),
        callers_not_switched,
    }
}

#[cfg(test)]
mod tests;
