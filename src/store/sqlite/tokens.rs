//! Token rows.

use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, Transaction, params};

use crate::{
    error::{Error, Result},
    model::{
        SealedToken, SealedValue, TenantId, TokenId, TokenName, TokenRecord, TokenUid, from_micros,
        micros,
    },
};

/// Metadata of a token, the ids of the tokens it replaces / is replaced by,
/// and its stored usage summary.
const SELECT: &str = "SELECT t.seq, t.uid, t.tenant, t.token_id, t.display_name, t.create_us,
        t.update_us, t.revision, t.disabled, r.token_id, b.token_id,
        (SELECT max(u.last_resolve_us) FROM token_usage u WHERE u.token_uid = t.uid),
        (SELECT coalesce(sum(u.resolve_count), 0) FROM token_usage u WHERE u.token_uid = t.uid)
     FROM tokens t
     LEFT JOIN tokens r ON r.uid = t.replaces_uid
     LEFT JOIN tokens b ON b.uid = t.replaced_by_uid";

pub(super) fn get(conn: &Connection, name: &TokenName) -> Result<Option<TokenRecord>> {
    let sql = format!("{SELECT} WHERE t.tenant = ?1 AND t.token_id = ?2");
    let mut stmt = conn.prepare_cached(&sql)?;
    stmt.query_row(
        params![name.tenant.as_str(), name.token_id.as_str()],
        from_row,
    )
    .optional()?
    .transpose()
}

pub(super) fn get_for_write(tx: &Transaction<'_>, name: &TokenName) -> Result<TokenRecord> {
    get(tx, name)?.ok_or(Error::NotFound("token"))
}

/// The resolve path's view of a token and the identities bound to it, from
/// one snapshot.
pub(super) fn get_sealed(conn: &Connection, name: &TokenName) -> Result<Option<SealedToken>> {
    let snapshot = conn.unchecked_transaction()?;
    let Some(mut token) = sealed_row(&snapshot, name)? else {
        return Ok(None);
    };
    token.bound_identities = bound_identities(&snapshot, &token.uid)?;
    Ok(Some(token))
}

/// The certificate identities the bindings of token `uid` name.
fn bound_identities(conn: &Connection, uid: &TokenUid) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT caller_identity FROM bindings
         WHERE token_uid = ?1 AND caller_identity IS NOT NULL ORDER BY caller_identity",
    )?;
    let identities = stmt
        .query_map(params![uid.as_bytes()], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(identities)
}

fn sealed_row(conn: &Connection, name: &TokenName) -> Result<Option<SealedToken>> {
    let mut stmt = conn.prepare_cached(
        "SELECT uid, disabled, replaced_by_uid IS NOT NULL, kek_version, wrapped_data_key, value_ciphertext
         FROM tokens WHERE tenant = ?1 AND token_id = ?2",
    )?;
    let row = stmt
        .query_row(params![name.tenant.as_str(), name.token_id.as_str()], |r| {
            let uid: Vec<u8> = r.get(0)?;
            // A key version no KEK could have (negative, or beyond u32) was
            // written behind our back: data loss, like any other tampered
            // encrypted field, not a store failure.
            let kek_version: i64 = r.get(3)?;
            let uid = TokenUid::from_slice(&uid).filter(|_| u32::try_from(kek_version).is_ok());
            Ok(uid.map(|uid| {
                Ok::<_, rusqlite::Error>(SealedToken {
                    uid,
                    disabled: r.get(1)?,
                    replaced: r.get(2)?,
                    sealed: SealedValue {
                        kek_version: u32::try_from(kek_version).unwrap_or_default(),
                        wrapped_data_key: r.get(4)?,
                        value_ciphertext: r.get(5)?,
                    },
                    bound_identities: Vec::new(),
                })
            }))
        })
        .optional()?;
    match row {
        None => Ok(None),
        Some(None) => Err(Error::DataLoss),
        Some(Some(token)) => Ok(Some(token?)),
    }
}

pub(super) fn list(
    conn: &Connection,
    tenant: &TenantId,
    after_seq: i64,
    limit: usize,
    unused_since_us: Option<i64>,
) -> Result<Vec<TokenRecord>> {
    let sql = format!(
        "{SELECT} WHERE t.tenant = ?1 AND t.seq > ?2
           AND (?4 IS NULL OR (t.create_us < ?4 AND NOT EXISTS (
                SELECT 1 FROM token_usage u WHERE u.token_uid = t.uid AND u.last_resolve_us >= ?4)))
         ORDER BY t.seq LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![tenant.as_str(), after_seq, limit as i64, unused_since_us],
        from_row,
    )?;
    rows.map(|row| row?).collect()
}

pub(super) fn insert(
    tx: &Transaction<'_>,
    record: &TokenRecord,
    sealed: &SealedValue,
    replaces: Option<&TokenId>,
) -> Result<i64> {
    let replaces_uid = match replaces {
        None => None,
        Some(old_id) => {
            let old: Option<(Vec<u8>, bool)> = tx
                .query_row(
                    "SELECT uid, replaced_by_uid IS NOT NULL FROM tokens WHERE tenant = ?1 AND token_id = ?2",
                    params![record.name.tenant.as_str(), old_id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match old {
                None => {
                    return Err(Error::invalid(
                        "replaces",
                        "must name an existing token of the same tenant",
                    ));
                }
                Some((_, true)) => return Err(Error::already_replaced()),
                Some((uid, false)) => Some(uid),
            }
        }
    };
    tx.prepare_cached(
        "INSERT INTO tokens (uid, tenant, token_id, display_name, create_us, update_us, revision,
                             kek_version, wrapped_data_key, value_ciphertext, disabled, replaces_uid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)",
    )?
    .execute(params![
        record.uid.as_bytes(),
        record.name.tenant.as_str(),
        record.name.token_id.as_str(),
        record.display_name,
        micros(record.create_time),
        micros(record.update_time),
        record.revision,
        sealed.kek_version,
        sealed.wrapped_data_key,
        sealed.value_ciphertext,
        replaces_uid,
    ])
    .map_err(|e| unique_violation(e, "token"))?;
    let seq = tx.last_insert_rowid();
    if let Some(old_uid) = replaces_uid {
        tx.execute(
            "UPDATE tokens SET replaced_by_uid = ?2 WHERE uid = ?1",
            params![old_uid, record.uid.as_bytes()],
        )?;
    }
    Ok(seq)
}

pub(super) fn update(
    tx: &Transaction<'_>,
    current: &TokenRecord,
    updated: &TokenRecord,
) -> Result<()> {
    tx.execute(
        "UPDATE tokens SET token_id = ?2, display_name = ?3, update_us = ?4, revision = ?5, disabled = ?6
         WHERE seq = ?1",
        params![
            current.seq,
            updated.name.token_id.as_str(),
            updated.display_name,
            micros(updated.update_time),
            updated.revision,
            updated.disabled,
        ],
    )
    .map_err(|e| unique_violation(e, "token"))?;
    Ok(())
}

pub(super) fn delete(tx: &Transaction<'_>, current: &TokenRecord) -> Result<()> {
    tx.execute(
        "UPDATE tokens SET replaced_by_uid = NULL WHERE replaced_by_uid = ?1",
        params![current.uid.as_bytes()],
    )?;
    tx.execute("DELETE FROM tokens WHERE seq = ?1", params![current.seq])?;
    Ok(())
}

/// Reads a token row; a row that breaks the domain's rules (edited behind
/// our back) is data loss, not a panic.
fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<TokenRecord>> {
    let uid: Vec<u8> = r.get(1)?;
    let tenant: String = r.get(2)?;
    let token_id: String = r.get(3)?;
    let replaces: Option<String> = r.get(9)?;
    let replaced_by: Option<String> = r.get(10)?;
    let last_resolve_us: Option<i64> = r.get(11)?;
    let id = |text: &str| TokenId::new(text, "token_id").map_err(|_| Error::DataLoss);
    let record = (|| {
        Ok(TokenRecord {
            seq: r.get(0)?,
            uid: TokenUid::from_slice(&uid).ok_or(Error::DataLoss)?,
            name: TokenName {
                tenant: TenantId::new(&tenant, "tenant").map_err(|_| Error::DataLoss)?,
                token_id: id(&token_id)?,
            },
            display_name: r.get(4)?,
            create_time: from_micros(r.get(5)?),
            update_time: from_micros(r.get(6)?),
            revision: r.get(7)?,
            disabled: r.get(8)?,
            replaces: replaces.as_deref().map(id).transpose()?,
            replaced_by: replaced_by.as_deref().map(id).transpose()?,
            last_resolve: last_resolve_us.map(from_micros),
            resolve_count: r.get(12)?,
        })
    })();
    Ok(record)
}

pub(super) fn unique_violation(e: rusqlite::Error, what: &'static str) -> Error {
    // Only uniqueness means "exists already"; a foreign-key or check
    // violation is a real failure and must not be reported as a duplicate.
    const UNIQUE: i32 = 2067; // SQLITE_CONSTRAINT_UNIQUE
    const PRIMARY_KEY: i32 = 1555; // SQLITE_CONSTRAINT_PRIMARYKEY
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::ConstraintViolation
                && matches!(f.extended_code, UNIQUE | PRIMARY_KEY) =>
        {
            Error::AlreadyExists(what)
        }
        _ => e.into(),
    }
}

pub(super) fn scan_sealed(
    conn: &Connection,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<(i64, TokenName, SealedToken)>> {
    // One snapshot for the rows and their bindings.
    let snapshot = conn.unchecked_transaction()?;
    let mut stmt = snapshot.prepare_cached(
        "SELECT seq, tenant, token_id, uid, disabled, replaced_by_uid IS NOT NULL, kek_version,
                wrapped_data_key, value_ciphertext
         FROM tokens WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_seq, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Vec<u8>>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, bool>(5)?,
            SealedValue {
                kek_version: r.get(6)?,
                wrapped_data_key: r.get(7)?,
                value_ciphertext: r.get(8)?,
            },
        ))
    })?;
    rows.map(|row| {
        let (seq, tenant, token_id, uid, disabled, replaced, sealed) = row?;
        let name = TokenName {
            tenant: TenantId::new(&tenant, "tenant").map_err(|_| Error::DataLoss)?,
            token_id: TokenId::new(&token_id, "token_id").map_err(|_| Error::DataLoss)?,
        };
        let uid = TokenUid::from_slice(&uid).ok_or(Error::DataLoss)?;
        Ok((
            seq,
            name,
            SealedToken {
                bound_identities: bound_identities(&snapshot, &uid)?,
                uid,
                disabled,
                replaced,
                sealed,
            },
        ))
    })
    .collect()
}
