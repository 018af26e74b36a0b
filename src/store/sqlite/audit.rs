//! The audit log table: keyed chained appends, filtered reads, the links
//! for verification, re-linking a legacy chain, pruning with a base.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::{
    crypto::chain::{ChainKey, GENESIS, legacy_link},
    error::{Error, Result},
    model::{AuditEvent, AuditRecord, Outcome, from_micros, micros},
    store::{AuditFilter, ChainLink, Checkpoint},
};

/// Columns of a record, in the order [`record_from_row`] reads them.
const COLUMNS: &str =
    "seq, time_us, actor, peer, method, tenant, resource, outcome, reason, count, first_us";

/// Appends `events` to the chain inside `tx`, linked under `key`.
pub(super) fn append(
    tx: &Transaction<'_>,
    key: Option<&ChainKey>,
    events: &[AuditEvent],
) -> Result<Vec<AuditRecord>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let key = key.ok_or_else(|| {
        Error::Internal("the audit chain key is not loaded; nothing can be audited".into())
    })?;
    let (mut seq, mut prev) = head(tx)?.unwrap_or((0, GENESIS.to_vec()));
    let mut insert = tx.prepare_cached(
        "INSERT INTO audit (seq, time_us, actor, peer, method, tenant, resource, outcome, reason,
                            count, first_us, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        seq += 1;
        let hash = key.link(&prev, seq, event);
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
            event.count,
            micros(event.first_time),
            prev,
            hash.as_slice(),
        ])?;
        prev = hash.to_vec();
        records.push(AuditRecord {
            seq,
            event: event.clone(),
        });
    }
    set_head(tx, seq, &prev)?;
    Ok(records)
}

fn set_head(tx: &Transaction<'_>, seq: i64, hash: &[u8]) -> Result<()> {
    tx.execute(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![seq, hash],
    )?;
    Ok(())
}

/// Records matching `filter` after `after_seq`, in order.
pub(super) fn list(
    conn: &Connection,
    filter: &AuditFilter,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<AuditRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit
         WHERE seq > ?1
           AND (?2 IS NULL OR tenant = ?2)
           AND (?3 IS NULL OR resource = ?3 OR substr(resource, 1, length(?3) + 1) = ?3 || '/')
           AND (?4 IS NULL OR actor = ?4)
           AND (?5 IS NULL OR method = ?5)
           AND (?6 IS NULL OR time_us >= ?6)
           AND (?7 IS NULL OR time_us < ?7)
         ORDER BY seq LIMIT ?8"
    ))?;
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
    let time_us: i64 = r.get(1)?;
    let first_us: Option<i64> = r.get(10)?;
    Ok(AuditRecord {
        seq: r.get(0)?,
        event: AuditEvent {
            time: from_micros(time_us),
            first_time: from_micros(first_us.unwrap_or(time_us)),
            count: r.get(9)?,
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
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, prev_hash, hash FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after_seq, limit as i64], |row| {
        Ok(ChainLink {
            record: record_from_row(row)?,
            stored_outcome: row.get(7)?,
            prev_hash: row.get(11)?,
            hash: row.get(12)?,
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

/// The record the chain starts after, once a prune removed older records.
pub(super) fn base(conn: &Connection) -> Result<Option<Checkpoint>> {
    Ok(conn
        .query_row(
            "SELECT seq, hash, time_us, mac FROM audit_base WHERE id = 1",
            [],
            |r| {
                Ok(Checkpoint {
                    seq: r.get(0)?,
                    head: r.get(1)?,
                    time_us: r.get(2)?,
                    mac: r.get(3)?,
                })
            },
        )
        .optional()?)
}

/// Re-links a chain written before chains were keyed under `key`, after
/// checking every legacy link: a chain that does not verify as it was
/// written is refused, never laundered. Returns the records re-linked (0
/// when the first record already verifies under `key`).
pub(super) fn relink(tx: &Transaction<'_>, key: &ChainKey) -> Result<i64> {
    if base(tx)?.is_some() {
        // Only a keyed trail is ever pruned.
        return Ok(0);
    }
    let Some(first) = links(tx, 0, 1)?.pop() else {
        return Ok(0);
    };
    if first.hash == key.link(&GENESIS, first.record.seq, &first.record.event) {
        return Ok(0);
    }
    // First every legacy link, a page at a time.
    let (mut after, mut prev) = (0, GENESIS.to_vec());
    loop {
        let page = links(tx, after, RELINK_PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.record.seq;
        for link in &page {
            let seq = link.record.seq;
            let expected = legacy_link(&prev, seq, &link.record.event);
            if link.prev_hash != prev || link.hash != expected {
                return Err(Error::database(format!(
                    "the audit trail written before keyed chains does not verify at record \
                     {seq}; inspect it (aitokens audit export) before a server adds to it"
                )));
            }
            prev = link.hash.clone();
        }
    }
    // Then the same records, linked under the key.
    tx.execute_batch("DROP TRIGGER audit_no_update;")?;
    let (mut after, mut prev) = (0, GENESIS.to_vec());
    loop {
        let page = links(tx, after, RELINK_PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.record.seq;
        let mut update =
            tx.prepare_cached("UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE seq = ?1")?;
        for link in &page {
            let hash = key.link(&prev, link.record.seq, &link.record.event);
            update.execute(params![link.record.seq, prev, hash.as_slice()])?;
            prev = hash.to_vec();
        }
    }
    tx.execute_batch(
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
             BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    )?;
    set_head(tx, after, &prev)?;
    Ok(after)
}

/// Records read per page while re-linking.
const RELINK_PAGE: usize = 10_000;

/// Deletes the records up to `base.seq` and keeps `base` (that record's
/// link, MAC'd) as where the remaining chain starts.
pub(super) fn prune(tx: &Transaction<'_>, base: &Checkpoint) -> Result<usize> {
    let link: Option<Vec<u8>> = tx
        .query_row(
            "SELECT hash FROM audit WHERE seq = ?1",
            params![base.seq],
            |r| r.get(0),
        )
        .optional()?;
    if link.as_deref() != Some(base.head.as_slice()) {
        return Err(Error::invalid(
            "through_seq",
            "must name a record in the trail, whose link the checkpoint holds",
        ));
    }
    tx.execute_batch("DROP TRIGGER audit_no_delete;")?;
    let deleted = tx.execute("DELETE FROM audit WHERE seq <= ?1", params![base.seq])?;
    tx.execute_batch(
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
             BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    )?;
    tx.execute(
        "INSERT INTO audit_base (id, seq, hash, time_us, mac) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
             time_us = excluded.time_us, mac = excluded.mac",
        params![base.seq, base.head, base.time_us, base.mac],
    )?;
    Ok(deleted)
}
