//! The audit log table: hash-chained appends, filtered reads, the links
//! for verification.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::{
    crypto::chain::{GENESIS, chain_hash},
    error::Result,
    model::{AuditEvent, AuditRecord, Outcome, from_micros, micros},
    store::{AuditFilter, ChainLink},
};

/// Appends `events` to the chain inside `tx`.
pub(super) fn append(tx: &Transaction<'_>, events: &[AuditEvent]) -> Result<Vec<AuditRecord>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let (mut seq, mut prev): (i64, Vec<u8>) = tx
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .unwrap_or((0, GENESIS.to_vec()));
    let mut insert = tx.prepare_cached(
        "INSERT INTO audit (seq, time_us, actor, peer, method, tenant, resource, outcome, reason, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        seq += 1;
        let hash = chain_hash(&prev, seq, event);
        insert.execute(params![
            seq,
            micros(event.time),
            event.actor,
            event.peer,
            event.method,
            event.tenant,
            event.resource,
            event.outcome.as_str(),
            event.reason,
            prev,
            hash.as_slice(),
        ])?;
        prev = hash.to_vec();
        records.push(AuditRecord {
            seq,
            event: event.clone(),
        });
    }
    tx.execute(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![seq, prev],
    )?;
    Ok(records)
}

/// Records matching `filter` after `after_seq`, in order.
pub(super) fn list(
    conn: &Connection,
    filter: &AuditFilter,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<AuditRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, time_us, actor, peer, method, tenant, resource, outcome, reason FROM audit
         WHERE seq > ?1
           AND (?2 IS NULL OR tenant = ?2)
           AND (?3 IS NULL OR resource = ?3 OR substr(resource, 1, length(?3) + 1) = ?3 || '/')
           AND (?4 IS NULL OR actor = ?4)
           AND (?5 IS NULL OR method = ?5)
           AND (?6 IS NULL OR time_us >= ?6)
           AND (?7 IS NULL OR time_us < ?7)
         ORDER BY seq LIMIT ?8",
    )?;
    let rows = stmt.query_map(
        params![
            after_seq,
            filter.tenant.as_ref().map(|t| t.as_str()),
            filter.resource,
            filter.actor,
            filter.method,
            filter.start_us,
            filter.end_us,
            limit as i64,
        ],
        record_from_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn record_from_row(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let outcome: String = r.get(7)?;
    Ok(AuditRecord {
        seq: r.get(0)?,
        event: AuditEvent {
            time: from_micros(r.get(1)?),
            actor: r.get(2)?,
            peer: r.get(3)?,
            method: r.get(4)?,
            tenant: r.get(5)?,
            resource: r.get(6)?,
            outcome: Outcome::parse(&outcome),
            reason: r.get(8)?,
        },
    })
}

/// Up to `limit` records after `after_seq`, with their stored links.
pub(super) fn links(conn: &Connection, after_seq: i64, limit: usize) -> Result<Vec<ChainLink>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, time_us, actor, peer, method, tenant, resource, outcome, reason, prev_hash, hash
         FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_seq, limit as i64], |row| {
        Ok(ChainLink {
            record: record_from_row(row)?,
            stored_outcome: row.get(7)?,
            prev_hash: row.get(9)?,
            hash: row.get(10)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The recorded chain head.
pub(super) fn head(conn: &Connection) -> Result<Option<(i64, Vec<u8>)>> {
    Ok(conn
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}
