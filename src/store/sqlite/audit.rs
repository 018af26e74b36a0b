//! The audit log table: hash-chained appends, filtered reads, verification.

use std::{path::Path, time::Duration};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, params};

use crate::{
    audit::{self, AuditEvent, AuditRecord, GENESIS, Outcome},
    error::{Error, Result},
    store::AuditFilter,
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
        let hash = audit::chain_hash(&prev, seq, event);
        insert.execute(params![
            seq,
            audit::micros(event.time),
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
            time: std::time::UNIX_EPOCH + Duration::from_micros(r.get::<_, i64>(1)?.max(0) as u64),
            actor: r.get(2)?,
            peer: r.get(3)?,
            method: r.get(4)?,
            tenant: r.get(5)?,
            resource: r.get(6)?,
            outcome: match outcome.as_str() {
                "allowed" => Outcome::Allowed,
                "denied" => Outcome::Denied,
                "unauthenticated" => Outcome::Unauthenticated,
                _ => Outcome::Failed,
            },
            reason: r.get(8)?,
        },
    })
}

/// The result of walking the chain.
#[derive(Debug, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Every record is in place and unaltered.
    Intact {
        /// Records checked.
        records: i64,
    },
    /// The chain breaks at `seq`.
    Broken {
        /// The first record (sequence number) that does not fit.
        seq: i64,
        /// What is wrong there.
        reason: String,
    },
}

/// Walks the whole chain of the database at `path` (opened read-only; no key
/// needed) and reports the first break.
pub fn verify_audit_file(path: &Path) -> Result<AuditVerdict> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::Startup(format!("opening database {}: {e}", path.display())))?;
    verify(&conn)
}

fn verify(conn: &Connection) -> Result<AuditVerdict> {
    // One read transaction: the rows and the head come from one snapshot,
    // so an append by a live server is not mistaken for a truncation.
    let tx = conn.unchecked_transaction()?;
    let verdict = walk(&tx);
    tx.finish()?;
    verdict
}

fn walk(conn: &Connection) -> Result<AuditVerdict> {
    let mut stmt = conn.prepare(
        "SELECT seq, time_us, actor, peer, method, tenant, resource, outcome, reason, prev_hash, hash
         FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 0;
    let mut prev = GENESIS.to_vec();
    while let Some(row) = rows.next()? {
        let record = record_from_row(row)?;
        let stored_prev: Vec<u8> = row.get(9)?;
        let stored_hash: Vec<u8> = row.get(10)?;
        let outcome: String = row.get(7)?;
        expected_seq += 1;
        let broken = |reason: &str| AuditVerdict::Broken {
            seq: record.seq,
            reason: reason.to_owned(),
        };
        if record.seq != expected_seq {
            return Ok(AuditVerdict::Broken {
                seq: expected_seq,
                reason: format!(
                    "record {expected_seq} is missing (next present is {})",
                    record.seq
                ),
            });
        }
        if stored_prev != prev {
            return Ok(broken("its link to the previous record does not match"));
        }
        if outcome != record.event.outcome.as_str()
            || audit::chain_hash(&prev, record.seq, &record.event).as_slice() != stored_hash
        {
            return Ok(broken("its contents were altered (hash mismatch)"));
        }
        prev = stored_hash;
    }
    let head: Option<(i64, Vec<u8>)> = conn
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (head_seq, head_hash) = head.unwrap_or((0, GENESIS.to_vec()));
    if head_seq != expected_seq {
        return Ok(AuditVerdict::Broken {
            seq: expected_seq + 1,
            reason: format!(
                "the log ends at record {expected_seq} but its head says {head_seq}: records were removed from the end"
            ),
        });
    }
    if head_hash != prev {
        return Ok(AuditVerdict::Broken {
            seq: expected_seq,
            reason: "the last record does not match the recorded head".to_owned(),
        });
    }
    Ok(AuditVerdict::Intact {
        records: expected_seq,
    })
}
