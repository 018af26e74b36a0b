//! Usage counters: one row per (token, caller), added to by each flush.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::{
    error::Result,
    model::{TokenUid, UsageBatch, UsageStats},
};

pub(super) fn of(conn: &Connection, uid: &TokenUid) -> Result<Vec<(String, UsageStats)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT identity, first_resolve_us, last_resolve_us, resolve_count, denied_count,
                last_denied_us, superseded_count, last_superseded_us
         FROM token_usage WHERE token_uid = ?1",
    )?;
    let rows = stmt.query_map(params![uid.as_bytes()], |r| {
        Ok((r.get(0)?, stats_from_row(r)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn stats_from_row(r: &Row<'_>) -> rusqlite::Result<UsageStats> {
    Ok(UsageStats {
        first_resolve_us: r.get(1)?,
        last_resolve_us: r.get(2)?,
        resolve_count: r.get(3)?,
        denied_count: r.get(4)?,
        last_denied_us: r.get(5)?,
        superseded_count: r.get(6)?,
        last_superseded_us: r.get(7)?,
    })
}

/// Adds a batch of counters to the stored ones.
pub(super) fn add(tx: &Transaction<'_>, batch: &UsageBatch) -> Result<()> {
    let mut uid_of =
        tx.prepare_cached("SELECT uid FROM tokens WHERE tenant = ?1 AND token_id = ?2")?;
    let mut by_name = Vec::with_capacity(batch.by_name.len());
    for (name, identity, stats) in &batch.by_name {
        let uid: Option<Vec<u8>> = uid_of
            .query_row(params![name.tenant.as_str(), name.token_id.as_str()], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(uid) = uid.as_deref().and_then(TokenUid::from_slice) {
            by_name.push((uid, identity, stats));
        }
    }
    // One statement per (token, caller): insert, or add to the stored
    // counters. A token removed since is skipped (its usage went with it).
    // min/max of SQLite are NULL when either side is; coalesce keeps the
    // side that is set.
    let mut add = tx.prepare_cached(
        "INSERT INTO token_usage (token_uid, identity, first_resolve_us, last_resolve_us,
             resolve_count, denied_count, last_denied_us, superseded_count, last_superseded_us)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9
         WHERE EXISTS (SELECT 1 FROM tokens WHERE uid = ?1)
         ON CONFLICT (token_uid, identity) DO UPDATE SET
             first_resolve_us = coalesce(min(first_resolve_us, excluded.first_resolve_us),
                                         first_resolve_us, excluded.first_resolve_us),
             last_resolve_us = coalesce(max(last_resolve_us, excluded.last_resolve_us),
                                        last_resolve_us, excluded.last_resolve_us),
             resolve_count = resolve_count + excluded.resolve_count,
             denied_count = denied_count + excluded.denied_count,
             last_denied_us = coalesce(max(last_denied_us, excluded.last_denied_us),
                                       last_denied_us, excluded.last_denied_us),
             superseded_count = superseded_count + excluded.superseded_count,
             last_superseded_us = coalesce(max(last_superseded_us, excluded.last_superseded_us),
                                           last_superseded_us, excluded.last_superseded_us)",
    )?;
    let all = batch
        .by_uid
        .iter()
        .map(|d| (d.uid, &d.caller, &d.stats))
        .chain(by_name);
    for (uid, identity, delta) in all {
        add.execute(params![
            uid.as_bytes(),
            identity,
            delta.first_resolve_us,
            delta.last_resolve_us,
            delta.resolve_count,
            delta.denied_count,
            delta.last_denied_us,
            delta.superseded_count,
            delta.last_superseded_us,
        ])?;
    }
    Ok(())
}
