//! The audit table: appends serialized across replicas by a row lock on the
//! chain head (so the chain never forks), filtered reads, the links for
//! verification, re-linking a legacy chain, pruning with a base.

use tokio_postgres::{GenericClient, Row, Transaction};

use super::pg_error;
use crate::{
    crypto::chain::{ChainKey, GENESIS, legacy_link},
    error::{Error, Result},
    model::{AuditEvent, AuditRecord, Outcome, from_micros, micros},
    store::{AuditFilter, ChainLink, Checkpoint},
};

const COLUMNS: &str =
    "seq, time_us, actor, peer, method, tenant, resource, outcome, reason, count, first_us";

/// Appends `events` to the chain inside `tx`, linked under `key`, holding
/// the head row's lock until the transaction ends.
pub(super) async fn append(
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
    let head = tx
        .query_one(
            "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(pg_error)?;
    let (mut seq, mut prev): (i64, Vec<u8>) = (head.get(0), head.get(1));
    let mut records = Vec::with_capacity(events.len());
    let mut links = (Vec::new(), Vec::new(), Vec::new());
    for event in events {
        seq += 1;
        let hash = key.link(&prev, seq, event).to_vec();
        links.0.push(seq);
        links.1.push(prev);
        links.2.push(hash.clone());
        prev = hash;
        records.push(AuditRecord {
            seq,
            event: event.clone(),
        });
    }
    let field = |f: fn(&AuditEvent) -> String| events.iter().map(f).collect::<Vec<_>>();
    tx.execute(
        "INSERT INTO audit (seq, time_us, actor, peer, method, tenant, resource, outcome, reason,
                            count, first_us, prev_hash, hash)
         SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                              $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[],
                              $11::BIGINT[], $12::BYTEA[], $13::BYTEA[])",
        &[
            &links.0,
            &events.iter().map(|e| micros(e.time)).collect::<Vec<_>>(),
            &field(|e| e.actor.clone()),
            &field(|e| e.peer.clone()),
            &field(|e| e.method.clone()),
            &events.iter().map(|e| e.tenant.clone()).collect::<Vec<_>>(),
            &field(|e| e.resource.clone()),
            &field(|e| e.outcome.as_str().to_owned()),
            &field(|e| e.reason.clone()),
            &events.iter().map(|e| e.count).collect::<Vec<_>>(),
            &events
                .iter()
                .map(|e| micros(e.first_time))
                .collect::<Vec<_>>(),
            &links.1,
            &links.2,
        ],
    )
    .await
    .map_err(pg_error)?;
    tx.execute(
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
        &[&seq, &prev],
    )
    .await
    .map_err(pg_error)?;
    Ok(records)
}

pub(super) async fn list(
    c: &impl GenericClient,
    filter: &AuditFilter,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<AuditRecord>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit
         WHERE seq > $1
           AND ($2::TEXT IS NULL OR tenant = $2)
           AND ($3::TEXT IS NULL OR resource = $3 OR starts_with(resource, $3 || '/'))
           AND ($4::TEXT IS NULL OR actor = $4)
           AND ($5::TEXT IS NULL OR method = $5)
           AND ($6::BIGINT IS NULL OR time_us >= $6)
           AND ($7::BIGINT IS NULL OR time_us < $7)
         ORDER BY seq LIMIT $8"
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let tenant = filter.tenant.as_ref().map(|t| t.as_str());
    let rows = c
        .query(
            &sql,
            &[
                &after_seq,
                &tenant,
                &filter.resource,
                &filter.actor,
                &filter.method,
                &filter.start_us,
                &filter.end_us,
                &limit,
            ],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows.iter().map(record_from_row).collect())
}

fn record_from_row(r: &Row) -> AuditRecord {
    let time_us: i64 = r.get(1);
    let first_us: Option<i64> = r.get(10);
    let outcome: String = r.get(7);
    AuditRecord {
        seq: r.get(0),
        event: AuditEvent {
            time: from_micros(time_us),
            first_time: from_micros(first_us.unwrap_or(time_us)),
            count: r.get(9),
            actor: r.get(2),
            peer: r.get(3),
            method: r.get(4),
            tenant: r.get(5),
            resource: r.get(6),
            outcome: Outcome::parse(&outcome),
            reason: r.get(8),
        },
    }
}

pub(super) async fn links(
    c: &impl GenericClient,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<ChainLink>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            &format!(
                "SELECT {COLUMNS}, prev_hash, hash FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"
            ),
            &[&after_seq, &limit],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows
        .iter()
        .map(|row| ChainLink {
            record: record_from_row(row),
            stored_outcome: row.get(7),
            prev_hash: row.get(11),
            hash: row.get(12),
        })
        .collect())
}

pub(super) async fn head(c: &impl GenericClient) -> Result<Option<(i64, Vec<u8>)>> {
    let row = c
        .query_one("SELECT seq, hash FROM audit_head WHERE id = 1", &[])
        .await
        .map_err(pg_error)?;
    let seq: i64 = row.get(0);
    Ok((seq > 0 || base(c).await?.is_some()).then(|| (seq, row.get(1))))
}

pub(super) async fn base(c: &impl GenericClient) -> Result<Option<Checkpoint>> {
    Ok(c.query_opt(
        "SELECT seq, hash, time_us, mac FROM audit_base WHERE id = 1",
        &[],
    )
    .await
    .map_err(pg_error)?
    .map(|r| Checkpoint {
        seq: r.get(0),
        head: r.get(1),
        time_us: r.get(2),
        mac: r.get(3),
    }))
}

/// Re-links a legacy chain under `key` after checking every old link (see
/// the SQLite store's `relink`).
pub(super) async fn relink(tx: &Transaction<'_>, key: &ChainKey) -> Result<i64> {
    tx.execute("SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE", &[])
        .await
        .map_err(pg_error)?;
    if base(tx).await?.is_some() {
        return Ok(0);
    }
    let all = links(tx, 0, usize::MAX >> 1).await?;
    let Some(first) = all.first() else {
        return Ok(0);
    };
    if first.hash == key.link(&GENESIS, first.record.seq, &first.record.event) {
        return Ok(0);
    }
    let mut prev = GENESIS.to_vec();
    for link in &all {
        let seq = link.record.seq;
        if link.prev_hash != prev || link.hash != legacy_link(&prev, seq, &link.record.event) {
            return Err(Error::database(format!(
                "the audit trail written before keyed chains does not verify at record {seq}; \
                 inspect it (aitokens audit export) before a server adds to it"
            )));
        }
        prev = link.hash.clone();
    }
    tx.batch_execute("SET LOCAL aitokens.audit_maintenance = 'on'")
        .await
        .map_err(pg_error)?;
    let mut prev = GENESIS.to_vec();
    for link in &all {
        let hash = key
            .link(&prev, link.record.seq, &link.record.event)
            .to_vec();
        tx.execute(
            "UPDATE audit SET prev_hash = $2, hash = $3 WHERE seq = $1",
            &[&link.record.seq, &prev, &hash],
        )
        .await
        .map_err(pg_error)?;
        prev = hash;
    }
    let last = all.last().map_or(0, |l| l.record.seq);
    tx.execute(
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
        &[&last, &prev],
    )
    .await
    .map_err(pg_error)?;
    Ok(last)
}

/// Deletes the records up to `base.seq` and keeps `base` as where the
/// remaining chain starts.
pub(super) async fn prune(tx: &Transaction<'_>, base: &Checkpoint) -> Result<usize> {
    let link: Option<Vec<u8>> = tx
        .query_opt("SELECT hash FROM audit WHERE seq = $1", &[&base.seq])
        .await
        .map_err(pg_error)?
        .map(|r| r.get(0));
    if link.as_deref() != Some(base.head.as_slice()) {
        return Err(Error::invalid(
            "through_seq",
            "must name a record in the trail, whose link the checkpoint holds",
        ));
    }
    tx.batch_execute("SET LOCAL aitokens.audit_maintenance = 'on'")
        .await
        .map_err(pg_error)?;
    let deleted = tx
        .execute("DELETE FROM audit WHERE seq <= $1", &[&base.seq])
        .await
        .map_err(pg_error)?;
    tx.execute(
        "INSERT INTO audit_base (id, seq, hash, time_us, mac) VALUES (1, $1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
             time_us = excluded.time_us, mac = excluded.mac",
        &[&base.seq, &base.head, &base.time_us, &base.mac],
    )
    .await
    .map_err(pg_error)?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}
