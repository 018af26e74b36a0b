//! The keyring rows and the re-wrap job's reads and writes.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::{
    error::{Error, Result},
    model::{KdfParams, KeyringRecords, TokenUid},
    store::{RewrapBatch, RewrapFn},
};

pub(super) fn read(conn: &Connection) -> Result<Option<KeyringRecords>> {
    type Row = (
        (Vec<u8>, Vec<u8>, u32),
        (Option<Vec<u8>>, Option<u32>, Option<u32>, Option<u32>),
        Option<Vec<u8>>,
    );
    let row: Option<Row> = conn
        .query_row(
            "SELECT deployment_id, key_check, current_version, kdf_salt, kdf_m_kib, kdf_t, kdf_p,
                    audit_key
             FROM keyring WHERE id = 1",
            [],
            |r| {
                Ok((
                    (r.get(0)?, r.get(1)?, r.get(2)?),
                    (r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?),
                    r.get(7)?,
                ))
            },
        )
        .optional()?;
    let Some(((deployment_id, key_check, current_version), (salt, m_kib, t, p), sealed_audit_key)) =
        row
    else {
        return Ok(None);
    };
    let kdf = match (salt, m_kib, t, p) {
        (Some(salt), Some(m_kib), Some(t), Some(p)) => Some(KdfParams { salt, m_kib, t, p }),
        (None, None, None, None) => None,
        _ => {
            return Err(Error::database(
                "the keyring's passphrase parameters are incomplete",
            ));
        }
    };
    let mut stmt = conn.prepare("SELECT version, sealed FROM keks ORDER BY version")?;
    let sealed_keks = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(KeyringRecords {
        deployment_id,
        key_check,
        current_version,
        sealed_keks,
        kdf,
        sealed_audit_key,
    }))
}

pub(super) fn init(tx: &Transaction<'_>, records: &KeyringRecords) -> Result<()> {
    let kdf = records.kdf.as_ref();
    tx.execute(
        "INSERT INTO keyring (id, deployment_id, key_check, current_version,
                              kdf_salt, kdf_m_kib, kdf_t, kdf_p, audit_key)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            records.deployment_id,
            records.key_check,
            records.current_version,
            kdf.map(|k| &k.salt),
            kdf.map(|k| k.m_kib),
            kdf.map(|k| k.t),
            kdf.map(|k| k.p),
            records.sealed_audit_key,
        ],
    )
    .map_err(|e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => {
            Error::database("the database already has a keyring (it is initialized)")
        }
        _ => e.into(),
    })?;
    for (version, sealed) in &records.sealed_keks {
        tx.execute(
            "INSERT INTO keks (version, sealed) VALUES (?1, ?2)",
            params![version, sealed],
        )?;
    }
    Ok(())
}

pub(super) fn kek_usage(conn: &Connection) -> Result<Vec<(u32, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT k.version, (SELECT count(*) FROM tokens t WHERE t.kek_version = k.version)
         FROM keks k ORDER BY k.version",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn add_kek(
    tx: &Transaction<'_>,
    expected: &KeyringRecords,
    version: u32,
    sealed: &[u8],
) -> Result<()> {
    ensure_unchanged(tx, expected)?;
    tx.execute(
        "INSERT INTO keks (version, sealed) VALUES (?1, ?2)",
        params![version, sealed],
    )?;
    tx.execute(
        "UPDATE keyring SET current_version = ?1 WHERE id = 1",
        params![version],
    )?;
    Ok(())
}

pub(super) fn rewrap_batch(
    tx: &Transaction<'_>,
    current: u32,
    after_seq: i64,
    limit: usize,
    rewrap: &mut RewrapFn,
) -> Result<RewrapBatch> {
    // (seq, tenant, token id, uid, KEK version, wrapped data key)
    type Row = (i64, String, String, Vec<u8>, u32, Vec<u8>);
    let rows: Vec<Row> = {
        let mut stmt = tx.prepare_cached(
            "SELECT seq, tenant, token_id, uid, kek_version, wrapped_data_key FROM tokens
             WHERE kek_version != ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![current, after_seq, limit as i64], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut update = tx.prepare_cached(
        "UPDATE tokens SET kek_version = ?2, wrapped_data_key = ?3
         WHERE seq = ?1 AND kek_version = ?4",
    )?;
    let mut batch = RewrapBatch {
        scanned: rows.len(),
        last_seq: rows.last().map_or(after_seq, |r| r.0),
        ..RewrapBatch::default()
    };
    for (seq, tenant, token_id, uid, from, wrapped) in &rows {
        let rewrapped = TokenUid::from_slice(uid)
            .ok_or(Error::DataLoss)
            .and_then(|uid| rewrap(tenant, &uid, *from, wrapped));
        match rewrapped {
            Ok(rewrapped) => {
                update.execute(params![seq, current, rewrapped, from])?;
                batch.moved += 1;
            }
            Err(Error::DataLoss) => batch
                .damaged
                .push((*seq, format!("tenants/{tenant}/tokens/{token_id}"))),
            Err(other) => return Err(other),
        }
    }
    Ok(batch)
}

pub(super) fn destroy_kek(tx: &Transaction<'_>, version: u32) -> Result<()> {
    let current: u32 = tx.query_row(
        "SELECT current_version FROM keyring WHERE id = 1",
        [],
        |r| r.get(0),
    )?;
    let used: i64 = tx.query_row(
        "SELECT count(*) FROM tokens WHERE kek_version = ?1",
        params![version],
        |r| r.get(0),
    )?;
    if version == current || used > 0 {
        return Err(Error::FailedPrecondition {
            reason: "KEK_IN_USE",
            message: "this KEK version is current or still wraps data keys; \
                      rotate and wait for the re-wrap job",
            violations: Vec::new(),
        });
    }
    tx.execute("DELETE FROM keks WHERE version = ?1", params![version])?;
    Ok(())
}

pub(super) fn replace(
    tx: &Transaction<'_>,
    expected: &KeyringRecords,
    records: &KeyringRecords,
) -> Result<()> {
    ensure_unchanged(tx, expected)?;
    let kdf = records.kdf.as_ref();
    tx.execute(
        "UPDATE keyring SET key_check = ?1, current_version = ?2,
                kdf_salt = ?3, kdf_m_kib = ?4, kdf_t = ?5, kdf_p = ?6, audit_key = ?7
         WHERE id = 1",
        params![
            records.key_check,
            records.current_version,
            kdf.map(|k| &k.salt),
            kdf.map(|k| k.m_kib),
            kdf.map(|k| k.t),
            kdf.map(|k| k.p),
            records.sealed_audit_key,
        ],
    )?;
    for (version, sealed) in &records.sealed_keks {
        let changed = tx.execute(
            "UPDATE keks SET sealed = ?2 WHERE version = ?1",
            params![version, sealed],
        )?;
        if changed != 1 {
            return Err(Error::Internal(format!(
                "KEK version {version} vanished during rekey"
            )));
        }
    }
    Ok(())
}

/// Stores the audit key of a keyring that has none.
pub(super) fn add_audit_key(
    tx: &Transaction<'_>,
    expected: &KeyringRecords,
    sealed: &[u8],
) -> Result<()> {
    ensure_unchanged(tx, expected)?;
    let changed = tx.execute(
        "UPDATE keyring SET audit_key = ?1 WHERE id = 1 AND audit_key IS NULL",
        params![sealed],
    )?;
    if changed != 1 {
        return Err(keyring_changed());
    }
    Ok(())
}

fn keyring_changed() -> Error {
    Error::FailedPrecondition {
        reason: "KEYRING_CHANGED",
        message: "the keyring changed meanwhile (another rotation or rekey); check `aitokens keys status` and retry",
        violations: Vec::new(),
    }
}

/// Compare-and-swap guard for keyring changes: the stored key check,
/// current version and set of KEK versions must be what the caller read.
fn ensure_unchanged(tx: &Transaction<'_>, expected: &KeyringRecords) -> Result<()> {
    let (check, current): (Vec<u8>, u32) = tx.query_row(
        "SELECT key_check, current_version FROM keyring WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let versions: Vec<u32> = {
        let mut stmt = tx.prepare("SELECT version FROM keks ORDER BY version")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    if check != expected.key_check
        || current != expected.current_version
        || versions != expected.versions()
    {
        return Err(keyring_changed());
    }
    Ok(())
}
