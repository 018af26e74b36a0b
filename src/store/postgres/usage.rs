//! Usage counters: one row per (token, caller), added to by each replica's
//! flushes (additively: counts add, first times take the minimum and last
//! times the maximum), in one statement per flush.

use std::collections::HashMap;

use tokio_postgres::{GenericClient, Transaction};

use super::pg_error;
use crate::{
    error::Result,
    model::{TokenUid, UsageBatch, UsageStats},
};

pub(super) async fn of(
    c: &impl GenericClient,
    uid: &TokenUid,
) -> Result<Vec<(String, UsageStats)>> {
    let rows = c
        .query(
            "SELECT identity, first_resolve_us, last_resolve_us, resolve_count, denied_count,
                    last_denied_us, superseded_count, last_superseded_us
             FROM token_usage WHERE token_uid = $1",
            &[&uid.as_bytes().as_slice()],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                UsageStats {
                    first_resolve_us: r.get(1),
                    last_resolve_us: r.get(2),
                    resolve_count: r.get(3),
                    denied_count: r.get(4),
                    last_denied_us: r.get(5),
                    superseded_count: r.get(6),
                    last_superseded_us: r.get(7),
                },
            )
        })
        .collect())
}

/// Adds a batch of counters to the stored ones. Counters of tokens removed
/// meanwhile are dropped (the join finds no token).
pub(super) async fn add(tx: &Transaction<'_>, batch: &UsageBatch) -> Result<()> {
    // One entry per (token, caller): the statement may touch a row once.
    let mut merged: HashMap<(Vec<u8>, String), UsageStats> = HashMap::new();
    for d in &batch.by_uid {
        merged
            .entry((d.uid.as_bytes().to_vec(), d.caller.clone()))
            .or_default()
            .merge(&d.stats);
    }
    for (name, caller, stats) in &batch.by_name {
        let uid: Option<Vec<u8>> = tx
            .query_opt(
                "SELECT uid FROM tokens WHERE tenant = $1 AND token_id = $2",
                &[&name.tenant.as_str(), &name.token_id.as_str()],
            )
            .await
            .map_err(pg_error)?
            .map(|row| row.get(0));
        if let Some(uid) = uid {
            merged
                .entry((uid, caller.clone()))
                .or_default()
                .merge(stats);
        }
    }
    if merged.is_empty() {
        return Ok(());
    }
    let mut columns: (Vec<Vec<u8>>, Vec<String>) = (Vec::new(), Vec::new());
    let mut stats: Vec<UsageStats> = Vec::new();
    for ((uid, caller), s) in merged {
        columns.0.push(uid);
        columns.1.push(caller);
        stats.push(s);
    }
    let col = |f: fn(&UsageStats) -> Option<i64>| stats.iter().map(f).collect::<Vec<_>>();
    let count = |f: fn(&UsageStats) -> i64| stats.iter().map(f).collect::<Vec<_>>();
    tx.execute(
        "INSERT INTO token_usage (token_uid, identity, first_resolve_us, last_resolve_us,
             resolve_count, denied_count, last_denied_us, superseded_count, last_superseded_us)
         SELECT u.* FROM unnest($1::BYTEA[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[],
                                $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[])
              AS u(token_uid, identity, f, l, rc, dc, ld, sc, ls)
         JOIN tokens t ON t.uid = u.token_uid
         ON CONFLICT (token_uid, identity) DO UPDATE SET
             first_resolve_us = LEAST(token_usage.first_resolve_us, excluded.first_resolve_us),
             last_resolve_us = GREATEST(token_usage.last_resolve_us, excluded.last_resolve_us),
             resolve_count = token_usage.resolve_count + excluded.resolve_count,
             denied_count = token_usage.denied_count + excluded.denied_count,
             last_denied_us = GREATEST(token_usage.last_denied_us, excluded.last_denied_us),
             superseded_count = token_usage.superseded_count + excluded.superseded_count,
             last_superseded_us = GREATEST(token_usage.last_superseded_us, excluded.last_superseded_us)",
        &[
            &columns.0,
            &columns.1,
            &col(|s| s.first_resolve_us),
            &col(|s| s.last_resolve_us),
            &count(|s| s.resolve_count),
            &count(|s| s.denied_count),
            &col(|s| s.last_denied_us),
            &count(|s| s.superseded_count),
            &col(|s| s.last_superseded_us),
        ],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}
