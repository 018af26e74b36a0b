//! Bindings: declared uses of a token, one row per (token, binding id).

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::tokens::unique_violation;
use crate::{
    error::{Error, Result},
    model::{BindingId, BindingRecord, TokenName, from_micros, micros},
};

fn token_uid(conn: &Connection, token: &TokenName) -> Result<Vec<u8>> {
    conn.query_row(
        "SELECT uid FROM tokens WHERE tenant = ?1 AND token_id = ?2",
        params![token.tenant.as_str(), token.token_id.as_str()],
        |r| r.get(0),
    )
    .optional()?
    .ok_or(Error::NotFound("token"))
}

pub(super) fn create(
    tx: &Transaction<'_>,
    token: &TokenName,
    binding: &BindingRecord,
) -> Result<()> {
    let uid = token_uid(tx, token)?;
    tx.execute(
        "INSERT INTO bindings (token_uid, binding_id, caller_identity, purpose, create_us)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            uid,
            binding.binding_id.as_str(),
            binding.caller_identity,
            binding.purpose,
            micros(binding.create_time)
        ],
    )
    .map_err(|e| unique_violation(e, "binding"))?;
    Ok(())
}

pub(super) fn list(conn: &Connection, token: &TokenName) -> Result<Vec<BindingRecord>> {
    let uid = token_uid(conn, token)?;
    of_uid(conn, &uid)
}

pub(super) fn of_uid(conn: &Connection, uid: &[u8]) -> Result<Vec<BindingRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT binding_id, caller_identity, purpose, create_us FROM bindings
         WHERE token_uid = ?1 ORDER BY create_us, binding_id",
    )?;
    let rows = stmt.query_map(params![uid], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    rows.map(|row| {
        let (id, caller_identity, purpose, create_us) = row?;
        Ok(BindingRecord {
            binding_id: BindingId::new(&id, "binding_id").map_err(|_| Error::DataLoss)?,
            caller_identity,
            purpose,
            create_time: from_micros(create_us),
        })
    })
    .collect()
}

pub(super) fn delete(
    tx: &Transaction<'_>,
    token: &TokenName,
    binding_id: &BindingId,
) -> Result<()> {
    let uid = token_uid(tx, token)?;
    let deleted = tx.execute(
        "DELETE FROM bindings WHERE token_uid = ?1 AND binding_id = ?2",
        params![uid, binding_id.as_str()],
    )?;
    if deleted == 0 {
        return Err(Error::NotFound("binding"));
    }
    Ok(())
}
