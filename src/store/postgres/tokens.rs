//! Token rows.

use tokio_postgres::{GenericClient, Row, Transaction};

use super::{is_unique_violation, pg_error};
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
        (SELECT coalesce(sum(u.resolve_count), 0)::BIGINT FROM token_usage u WHERE u.token_uid = t.uid)
     FROM tokens t
     LEFT JOIN tokens r ON r.uid = t.replaces_uid
     LEFT JOIN tokens b ON b.uid = t.replaced_by_uid";

pub(super) async fn get(c: &impl GenericClient, name: &TokenName) -> Result<Option<TokenRecord>> {
    let sql = format!("{SELECT} WHERE t.tenant = $1 AND t.token_id = $2");
    c.query_opt(&sql, &[&name.tenant.as_str(), &name.token_id.as_str()])
        .await
        .map_err(pg_error)?
        .map(|row| from_row(&row))
        .transpose()
}

/// The row of `name`, locked for this transaction.
pub(super) async fn get_for_update(tx: &Transaction<'_>, name: &TokenName) -> Result<TokenRecord> {
    tx.execute(
        "SELECT 1 FROM tokens WHERE tenant = $1 AND token_id = $2 FOR UPDATE",
        &[&name.tenant.as_str(), &name.token_id.as_str()],
    )
    .await
    .map_err(pg_error)?;
    get(tx, name).await?.ok_or(Error::NotFound("token"))
}

/// The resolve path's view of a token and the identities bound to it.
pub(super) async fn get_sealed(
    c: &impl GenericClient,
    name: &TokenName,
) -> Result<Option<SealedToken>> {
    let row = c
        .query_opt(
            "SELECT t.uid, t.disabled, t.replaced_by_uid IS NOT NULL, t.kek_version,
                    t.wrapped_data_key, t.value_ciphertext,
                    ARRAY(SELECT b.caller_identity FROM bindings b
                          WHERE b.token_uid = t.uid AND b.caller_identity IS NOT NULL
                          ORDER BY b.caller_identity)
             FROM tokens t WHERE t.tenant = $1 AND t.token_id = $2",
            &[&name.tenant.as_str(), &name.token_id.as_str()],
        )
        .await
        .map_err(pg_error)?;
    row.map(|row| sealed_from(&row, 0)).transpose()
}

/// A sealed token from columns `at..at + 7` of `row`: uid, disabled,
/// replaced, KEK version, wrapped key, ciphertext, bound identities.
fn sealed_from(row: &Row, at: usize) -> Result<SealedToken> {
    let uid: Vec<u8> = row.get(at);
    // A key version no KEK could have was written behind our back: data
    // loss, like any other tampered encrypted field.
    let kek_version: i32 = row.get(at + 3);
    Ok(SealedToken {
        uid: TokenUid::from_slice(&uid).ok_or(Error::DataLoss)?,
        disabled: row.get(at + 1),
        replaced: row.get(at + 2),
        sealed: SealedValue {
            kek_version: u32::try_from(kek_version).map_err(|_| Error::DataLoss)?,
            wrapped_data_key: row.get(at + 4),
            value_ciphertext: row.get(at + 5),
        },
        bound_identities: row.get(at + 6),
    })
}

pub(super) async fn list(
    c: &impl GenericClient,
    tenant: &TenantId,
    after_seq: i64,
    limit: usize,
    unused_since_us: Option<i64>,
) -> Result<Vec<TokenRecord>> {
    let sql = format!(
        "{SELECT} WHERE t.tenant = $1 AND t.seq > $2
           AND ($4::BIGINT IS NULL OR (t.create_us < $4 AND NOT EXISTS (
                SELECT 1 FROM token_usage u WHERE u.token_uid = t.uid AND u.last_resolve_us >= $4)))
         ORDER BY t.seq LIMIT $3"
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            &sql,
            &[&tenant.as_str(), &after_seq, &limit, &unused_since_us],
        )
        .await
        .map_err(pg_error)?;
    rows.iter().map(from_row).collect()
}

/// Inserts many new tokens in one statement (the testkit bulk loader).
#[cfg(feature = "testkit")]
pub(super) async fn insert_many(
    tx: &Transaction<'_>,
    rows: &[(TokenRecord, SealedValue)],
) -> Result<()> {
    let column = |f: &dyn Fn(&(TokenRecord, SealedValue)) -> String| -> Vec<String> {
        rows.iter().map(f).collect()
    };
    let versions = rows
        .iter()
        .map(|(_, s)| i32::try_from(s.kek_version))
        .collect::<std::result::Result<Vec<i32>, _>>()
        .map_err(|_| Error::Internal("KEK version out of range".into()))?;
    tx.execute(
        "INSERT INTO tokens (uid, tenant, token_id, display_name, create_us, update_us, revision,
                             kek_version, wrapped_data_key, value_ciphertext, disabled)
         SELECT u, t, i, d, c, c, r, k, w, v, FALSE
         FROM unnest($1::BYTEA[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[],
                     $6::BIGINT[], $7::INT[], $8::BYTEA[], $9::BYTEA[])
              AS x(u, t, i, d, c, r, k, w, v)",
        &[
            &rows
                .iter()
                .map(|(r, _)| r.uid.as_bytes().to_vec())
                .collect::<Vec<_>>(),
            &column(&|(r, _)| r.name.tenant.as_str().to_owned()),
            &column(&|(r, _)| r.name.token_id.as_str().to_owned()),
            &column(&|(r, _)| r.display_name.clone()),
            &rows
                .iter()
                .map(|(r, _)| micros(r.create_time))
                .collect::<Vec<_>>(),
            &rows.iter().map(|(r, _)| r.revision).collect::<Vec<_>>(),
            &versions,
            &rows
                .iter()
                .map(|(_, s)| s.wrapped_data_key.clone())
                .collect::<Vec<_>>(),
            &rows
                .iter()
                .map(|(_, s)| s.value_ciphertext.clone())
                .collect::<Vec<_>>(),
        ],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            Error::AlreadyExists("token")
        } else {
            pg_error(e)
        }
    })?;
    Ok(())
}

pub(super) async fn insert(
    tx: &Transaction<'_>,
    record: &TokenRecord,
    sealed: &SealedValue,
    replaces: Option<&TokenId>,
) -> Result<i64> {
    let replaces_uid: Option<Vec<u8>> = match replaces {
        None => None,
        Some(old_id) => {
            let old = tx
                .query_opt(
                    "SELECT uid, replaced_by_uid IS NOT NULL FROM tokens
                     WHERE tenant = $1 AND token_id = $2 FOR UPDATE",
                    &[&record.name.tenant.as_str(), &old_id.as_str()],
                )
                .await
                .map_err(pg_error)?;
            match old {
                None => {
                    return Err(Error::invalid(
                        "replaces",
                        "must name an existing token of the same tenant",
                    ));
                }
                Some(row) if row.get::<_, bool>(1) => return Err(Error::already_replaced()),
                Some(row) => Some(row.get(0)),
            }
        }
    };
    let kek_version = i32::try_from(sealed.kek_version)
        .map_err(|_| Error::Internal("KEK version out of range".into()))?;
    let seq: i64 = tx
        .query_one(
            "INSERT INTO tokens (uid, tenant, token_id, display_name, create_us, update_us, revision,
                                 kek_version, wrapped_data_key, value_ciphertext, disabled, replaces_uid)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, FALSE, $11) RETURNING seq",
            &[
                &record.uid.as_bytes().as_slice(),
                &record.name.tenant.as_str(),
                &record.name.token_id.as_str(),
                &record.display_name,
                &micros(record.create_time),
                &micros(record.update_time),
                &record.revision,
                &kek_version,
                &sealed.wrapped_data_key,
                &sealed.value_ciphertext,
                &replaces_uid,
            ],
        )
        .await
        .map_err(|e| unique_or(e, "token"))?
        .get(0);
    if let Some(old_uid) = replaces_uid {
        tx.execute(
            "UPDATE tokens SET replaced_by_uid = $2 WHERE uid = $1",
            &[&old_uid, &record.uid.as_bytes().as_slice()],
        )
        .await
        .map_err(pg_error)?;
    }
    Ok(seq)
}

pub(super) async fn update(
    tx: &Transaction<'_>,
    current: &TokenRecord,
    updated: &TokenRecord,
) -> Result<()> {
    tx.execute(
        "UPDATE tokens SET token_id = $2, display_name = $3, update_us = $4, revision = $5,
                           disabled = $6
         WHERE seq = $1",
        &[
            &current.seq,
            &updated.name.token_id.as_str(),
            &updated.display_name,
            &micros(updated.update_time),
            &updated.revision,
            &updated.disabled,
        ],
    )
    .await
    .map_err(|e| unique_or(e, "token"))?;
    Ok(())
}

pub(super) async fn delete(tx: &Transaction<'_>, current: &TokenRecord) -> Result<()> {
    let uid = current.uid.as_bytes().as_slice();
    tx.execute(
        "UPDATE tokens SET replaced_by_uid = NULL WHERE replaced_by_uid = $1",
        &[&uid],
    )
    .await
    .map_err(pg_error)?;
    tx.execute("DELETE FROM tokens WHERE seq = $1", &[&current.seq])
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// Reads a token row; a row that breaks the domain's rules (edited behind
/// our back) is data loss, not a panic.
fn from_row(r: &Row) -> Result<TokenRecord> {
    let uid: Vec<u8> = r.get(1);
    let tenant: String = r.get(2);
    let token_id: String = r.get(3);
    let replaces: Option<String> = r.get(9);
    let replaced_by: Option<String> = r.get(10);
    let last_resolve_us: Option<i64> = r.get(11);
    let id = |text: &str| TokenId::new(text, "token_id").map_err(|_| Error::DataLoss);
    Ok(TokenRecord {
        seq: r.get(0),
        uid: TokenUid::from_slice(&uid).ok_or(Error::DataLoss)?,
        name: TokenName {
            tenant: TenantId::new(&tenant, "tenant").map_err(|_| Error::DataLoss)?,
            token_id: id(&token_id)?,
        },
        display_name: r.get(4),
        create_time: from_micros(r.get(5)),
        update_time: from_micros(r.get(6)),
        revision: r.get(7),
        disabled: r.get(8),
        replaces: replaces.as_deref().map(id).transpose()?,
        replaced_by: replaced_by.as_deref().map(id).transpose()?,
        last_resolve: last_resolve_us.map(from_micros),
        resolve_count: r.get(12),
    })
}

/// A unique violation is "exists already"; anything else a store failure.
pub(super) fn unique_or(e: tokio_postgres::Error, what: &'static str) -> Error {
    if is_unique_violation(&e) {
        Error::AlreadyExists(what)
    } else {
        pg_error(e)
    }
}

pub(super) async fn scan_sealed(
    c: &impl GenericClient,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<(i64, TokenName, SealedToken)>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "SELECT t.seq, t.tenant, t.token_id,
                    t.uid, t.disabled, t.replaced_by_uid IS NOT NULL, t.kek_version,
                    t.wrapped_data_key, t.value_ciphertext,
                    ARRAY(SELECT b.caller_identity FROM bindings b
                          WHERE b.token_uid = t.uid AND b.caller_identity IS NOT NULL
                          ORDER BY b.caller_identity)
             FROM tokens t WHERE t.seq > $1 ORDER BY t.seq LIMIT $2",
            &[&after_seq, &limit],
        )
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            let tenant: String = row.get(1);
            let token_id: String = row.get(2);
            let name = TokenName {
                tenant: TenantId::new(&tenant, "tenant").map_err(|_| Error::DataLoss)?,
                token_id: TokenId::new(&token_id, "token_id").map_err(|_| Error::DataLoss)?,
            };
            Ok((row.get(0), name, sealed_from(row, 3)?))
        })
        .collect()
}
