//! The keyring rows and the re-wrap job's reads and writes. Every keyring
//! change is a compare-and-swap under the keyring row's lock, so two
//! replicas (or a replica and the CLI) never rotate over each other.

use tokio_postgres::{GenericClient, Transaction};

use super::pg_error;
use crate::{
    error::{Error, Result},
    model::{KdfParams, KeyringRecords, TokenUid},
    store::{RewrapBatch, RewrapFn},
};

fn u32_of(value: i32) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::database("a keyring number is negative (tampered?)"))
}

fn i32_of(value: u32) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::Internal("a keyring number is out of range".into()))
}

pub(super) async fn read(c: &impl GenericClient) -> Result<Option<KeyringRecords>> {
    let Some(row) = c
        .query_opt(
            "SELECT deployment_id, key_check, current_version, kdf_salt, kdf_m_kib, kdf_t, kdf_p,
                    audit_key
             FROM keyring WHERE id = 1",
            &[],
        )
        .await
        .map_err(pg_error)?
    else {
        return Ok(None);
    };
    let kdf = match (
        row.get::<_, Option<Vec<u8>>>(3),
        row.get::<_, Option<i32>>(4),
        row.get::<_, Option<i32>>(5),
        row.get::<_, Option<i32>>(6),
    ) {
        (Some(salt), Some(m_kib), Some(t), Some(p)) => Some(KdfParams {
            salt,
            m_kib: u32_of(m_kib)?,
            t: u32_of(t)?,
            p: u32_of(p)?,
        }),
        (None, None, None, None) => None,
        _ => {
            return Err(Error::database(
                "the keyring's passphrase parameters are incomplete",
            ));
        }
    };
    let sealed_keks = c
        .query("SELECT version, sealed FROM keks ORDER BY version", &[])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| Ok((u32_of(r.get(0))?, r.get(1))))
        .collect::<Result<_>>()?;
    Ok(Some(KeyringRecords {
        deployment_id: row.get(0),
        key_check: row.get(1),
        current_version: u32_of(row.get(2))?,
        sealed_keks,
        kdf,
        sealed_audit_key: row.get(7),
    }))
}

pub(super) async fn init(tx: &Transaction<'_>, records: &KeyringRecords) -> Result<()> {
    let kdf = records.kdf.as_ref();
    let int = |v: Option<u32>| v.map(i32_of).transpose();
    let inserted = tx
        .execute(
            "INSERT INTO keyring (id, deployment_id, key_check, current_version,
                                  kdf_salt, kdf_m_kib, kdf_t, kdf_p, audit_key)
             VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            &[
                &records.deployment_id,
                &records.key_check,
                &i32_of(records.current_version)?,
                &kdf.map(|k| k.salt.clone()),
                &int(kdf.map(|k| k.m_kib))?,
                &int(kdf.map(|k| k.t))?,
                &int(kdf.map(|k| k.p))?,
                &records.sealed_audit_key,
            ],
        )
        .await
        .map_err(pg_error)?;
    if inserted == 0 {
        return Err(Error::database(
            "the database already has a keyring (it is initialized)",
        ));
    }
    for (version, sealed) in &records.sealed_keks {
        tx.execute(
            "INSERT INTO keks (version, sealed) VALUES ($1, $2)",
            &[&i32_of(*version)?, sealed],
        )
        .await
        .map_err(pg_error)?;
    }
    Ok(())
}

pub(super) async fn kek_usage(c: &impl GenericClient) -> Result<Vec<(u32, i64)>> {
    c.query(
        "SELECT k.version, (SELECT count(*) FROM tokens t WHERE t.kek_version = k.version)
         FROM keks k ORDER BY k.version",
        &[],
    )
    .await
    .map_err(pg_error)?
    .iter()
    .map(|r| Ok((u32_of(r.get(0))?, r.get(1))))
    .collect()
}

pub(super) async fn add_kek(
    tx: &Transaction<'_>,
    expected: &KeyringRecords,
    version: u32,
    sealed: &[u8],
) -> Result<()> {
    ensure_unchanged(tx, expected).await?;
    tx.execute(
        "INSERT INTO keks (version, sealed) VALUES ($1, $2)",
        &[&i32_of(version)?, &sealed],
    )
    .await
    .map_err(pg_error)?;
    tx.execute(
        "UPDATE keyring SET current_version = $1 WHERE id = 1",
        &[&i32_of(version)?],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

pub(super) async fn add_audit_key(
    tx: &Transaction<'_>,
    expected: &KeyringRecords,
    sealed: &[u8],
) -> Result<()> {
    ensure_unchanged(tx, expected).await?;
    let changed = tx
        .execute(
            "UPDATE keyring SET audit_key = $1 WHERE id = 1 AND audit_key IS NULL",
            &[&sealed],
        )
        .await
        .map_err(pg_error)?;
    if changed != 1 {
        return Err(keyring_changed());
    }
    Ok(())
}

pub(super) async fn rewrap_batch(
    tx: &Transaction<'_>,
    current: u32,
    after_seq: i64,
    limit: usize,
    rewrap: &mut RewrapFn,
) -> Result<RewrapBatch> {
    let current = i32_of(current)?;
    let limit_rows = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = tx
        .query(
            "SELECT seq, tenant, token_id, uid, kek_version, wrapped_data_key FROM tokens
             WHERE kek_version < $1 AND seq > $2 ORDER BY seq LIMIT $3 FOR UPDATE",
            &[&current, &after_seq, &limit_rows],
        )
        .await
        .map_err(pg_error)?;
    let mut batch = RewrapBatch {
        scanned: rows.len(),
        last_seq: rows.last().map_or(after_seq, |r| r.get(0)),
        ..RewrapBatch::default()
    };
    for row in &rows {
        let (seq, tenant, token_id): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let uid: Vec<u8> = row.get(3);
        let from: i32 = row.get(4);
        let wrapped: Vec<u8> = row.get(5);
        let rewrapped = TokenUid::from_slice(&uid)
            .ok_or(Error::DataLoss)
            .and_then(|uid| rewrap(&tenant, &uid, u32_of(from)?, &wrapped));
        match rewrapped {
            Ok(rewrapped) => {
                tx.execute(
                    "UPDATE tokens SET kek_version = $2, wrapped_data_key = $3
                     WHERE seq = $1 AND kek_version = $4",
                    &[&seq, &current, &rewrapped, &from],
                )
                .await
                .map_err(pg_error)?;
                batch.moved += 1;
            }
            Err(Error::DataLoss) => batch
                .damaged
                .push((seq, format!("tenants/{tenant}/tokens/{token_id}"))),
            Err(other) => return Err(other),
        }
    }
    Ok(batch)
}

pub(super) async fn destroy_kek(tx: &Transaction<'_>, version: u32) -> Result<()> {
    let version = i32_of(version)?;
    let current: i32 = tx
        .query_one(
            "SELECT current_version FROM keyring WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    let used: i64 = tx
        .query_one(
            "SELECT count(*) FROM tokens WHERE kek_version = $1",
            &[&version],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    if version == current || used > 0 {
        return Err(Error::FailedPrecondition {
            reason: "KEK_IN_USE",
            message: "this KEK version is current or still wraps data keys; \
                      rotate and wait for the re-wrap job",
            violations: Vec::new(),
        });
    }
    tx.execute("DELETE FROM keks WHERE version = $1", &[&version])
        .await
        .map_err(pg_error)?;
    Ok(())
}

pub(super) async fn replace(
    tx: &Transaction<'_>,
    expected: &KeyringRecords,
    records: &KeyringRecords,
) -> Result<()> {
    ensure_unchanged(tx, expected).await?;
    let kdf = records.kdf.as_ref();
    let int = |v: Option<u32>| v.map(i32_of).transpose();
    tx.execute(
        "UPDATE keyring SET key_check = $1, current_version = $2, kdf_salt = $3, kdf_m_kib = $4,
                            kdf_t = $5, kdf_p = $6, audit_key = $7
         WHERE id = 1",
        &[
            &records.key_check,
            &i32_of(records.current_version)?,
            &kdf.map(|k| k.salt.clone()),
            &int(kdf.map(|k| k.m_kib))?,
            &int(kdf.map(|k| k.t))?,
            &int(kdf.map(|k| k.p))?,
            &records.sealed_audit_key,
        ],
    )
    .await
    .map_err(pg_error)?;
    for (version, sealed) in &records.sealed_keks {
        let changed = tx
            .execute(
                "UPDATE keks SET sealed = $2 WHERE version = $1",
                &[&i32_of(*version)?, sealed],
            )
            .await
            .map_err(pg_error)?;
        if changed != 1 {
            return Err(Error::Internal(format!(
                "KEK version {version} vanished during rekey"
            )));
        }
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

/// Compare-and-swap guard, under the keyring row's lock.
async fn ensure_unchanged(tx: &Transaction<'_>, expected: &KeyringRecords) -> Result<()> {
    let row = tx
        .query_one(
            "SELECT key_check, current_version FROM keyring WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(pg_error)?;
    let (check, current): (Vec<u8>, i32) = (row.get(0), row.get(1));
    let versions: Vec<u32> = tx
        .query("SELECT version FROM keks ORDER BY version", &[])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| u32_of(r.get(0)))
        .collect::<Result<_>>()?;
    if check != expected.key_check
        || u32_of(current)? != expected.current_version
        || versions != expected.versions()
    {
        return Err(keyring_changed());
    }
    Ok(())
}
