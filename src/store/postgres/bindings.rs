//! Bindings: declared uses of a token, one row per (token, binding id).

use tokio_postgres::{GenericClient, Transaction};

use super::{pg_error, tokens::unique_or};
use crate::{
    error::{Error, Result},
    model::{BindingId, BindingRecord, TokenName, from_micros, micros},
};

async fn token_uid(c: &impl GenericClient, token: &TokenName) -> Result<Vec<u8>> {
    c.query_opt(
        "SELECT uid FROM tokens WHERE tenant = $1 AND token_id = $2",
        &[&token.tenant.as_str(), &token.token_id.as_str()],
    )
    .await
    .map_err(pg_error)?
    .map(|row| row.get(0))
    .ok_or(Error::NotFound("token"))
}

pub(super) async fn create(
    tx: &Transaction<'_>,
    token: &TokenName,
    binding: &BindingRecord,
) -> Result<()> {
    let uid = token_uid(tx, token).await?;
    tx.execute(
        "INSERT INTO bindings (token_uid, binding_id, caller_identity, purpose, create_us)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &uid,
            &binding.binding_id.as_str(),
            &binding.caller_identity,
            &binding.purpose,
            &micros(binding.create_time),
        ],
    )
    .await
    .map_err(|e| unique_or(e, "binding"))?;
    Ok(())
}

pub(super) async fn list(c: &impl GenericClient, token: &TokenName) -> Result<Vec<BindingRecord>> {
    let uid = token_uid(c, token).await?;
    of_uid(c, &uid).await
}

pub(super) async fn of_uid(c: &impl GenericClient, uid: &[u8]) -> Result<Vec<BindingRecord>> {
    let rows = c
        .query(
            "SELECT binding_id, caller_identity, purpose, create_us FROM bindings
             WHERE token_uid = $1 ORDER BY create_us, binding_id",
            &[&uid],
        )
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            let id: String = row.get(0);
            Ok(BindingRecord {
                binding_id: BindingId::new(&id, "binding_id").map_err(|_| Error::DataLoss)?,
                caller_identity: row.get(1),
                purpose: row.get(2),
                create_time: from_micros(row.get(3)),
            })
        })
        .collect()
}

pub(super) async fn delete(
    tx: &Transaction<'_>,
    token: &TokenName,
    binding_id: &BindingId,
) -> Result<()> {
    let uid = token_uid(tx, token).await?;
    let deleted = tx
        .execute(
            "DELETE FROM bindings WHERE token_uid = $1 AND binding_id = $2",
            &[&uid, &binding_id.as_str()],
        )
        .await
        .map_err(pg_error)?;
    if deleted == 0 {
        return Err(Error::NotFound("binding"));
    }
    Ok(())
}
