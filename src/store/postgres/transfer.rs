//! Row-for-row transfer into (and out of) a PostgreSQL store.

use async_trait::async_trait;

use super::{PgStore, audit, bindings, keyring, pg_error, usage};
use crate::{
    error::{Error, Result},
    model::{KeyringRecords, SealedValue, TokenUid, micros},
    store::transfer::{RawToken, RawTrail, TokenPage, Transfer},
};

fn uid_of(bytes: &[u8]) -> Result<TokenUid> {
    TokenUid::from_slice(bytes).ok_or(Error::DataLoss)
}

#[async_trait]
impl Transfer for PgStore {
    async fn is_empty(&self) -> Result<bool> {
        let count: i64 = self
            .client()
            .await?
            .query_one(
                "SELECT (SELECT count(*) FROM keyring) + (SELECT count(*) FROM tokens)
                        + (SELECT count(*) FROM audit)",
                &[],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        Ok(count == 0)
    }

    async fn export_tokens(&self, after_seq: i64, limit: usize) -> Result<TokenPage> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT seq, uid, tenant, token_id, display_name, create_us, update_us, revision,
                        kek_version, wrapped_data_key, value_ciphertext, disabled, replaces_uid,
                        replaced_by_uid
                 FROM tokens WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after_seq, &limit],
            )
            .await
            .map_err(pg_error)?;
        let mut page = TokenPage::default();
        for r in &rows {
            let uid = uid_of(&r.get::<_, Vec<u8>>(1))?;
            let kek: i32 = r.get(8);
            page.usage.extend(
                usage::of(&**client, &uid)
                    .await?
                    .into_iter()
                    .map(|(identity, stats)| (uid, identity, stats)),
            );
            page.bindings.extend(
                bindings::of_uid(&**client, uid.as_bytes())
                    .await?
                    .into_iter()
                    .map(|b| (uid, b)),
            );
            let link = |i: usize| -> Result<Option<TokenUid>> {
                r.get::<_, Option<Vec<u8>>>(i)
                    .as_deref()
                    .map(uid_of)
                    .transpose()
            };
            page.tokens.push(RawToken {
                seq: r.get(0),
                uid,
                tenant: r.get(2),
                token_id: r.get(3),
                display_name: r.get(4),
                create_us: r.get(5),
                update_us: r.get(6),
                revision: r.get(7),
                sealed: SealedValue {
                    kek_version: u32::try_from(kek).map_err(|_| Error::DataLoss)?,
                    wrapped_data_key: r.get(9),
                    value_ciphertext: r.get(10),
                },
                disabled: r.get(11),
                replaces: link(12)?,
                replaced_by: link(13)?,
            });
        }
        Ok(page)
    }

    async fn export_trail(&self) -> Result<RawTrail> {
        let client = self.client().await?;
        Ok(RawTrail {
            links: audit::links(&**client, 0, usize::MAX >> 1).await?,
            head: audit::head(&**client).await?,
            base: audit::base(&**client).await?,
        })
    }

    async fn import_keyring(&self, records: KeyringRecords) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        keyring::init(&tx, &records).await?;
        tx.commit().await.map_err(pg_error)
    }

    async fn import_tokens(&self, page: TokenPage) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        for t in &page.tokens {
            let kek = i32::try_from(t.sealed.kek_version)
                .map_err(|_| Error::Internal("KEK version out of range".into()))?;
            tx.execute(
                "INSERT INTO tokens (seq, uid, tenant, token_id, display_name, create_us, update_us,
                     revision, kek_version, wrapped_data_key, value_ciphertext, disabled,
                     replaces_uid, replaced_by_uid)
                 OVERRIDING SYSTEM VALUE
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                &[
                    &t.seq,
                    &t.uid.as_bytes().as_slice(),
                    &t.tenant,
                    &t.token_id,
                    &t.display_name,
                    &t.create_us,
                    &t.update_us,
                    &t.revision,
                    &kek,
                    &t.sealed.wrapped_data_key,
                    &t.sealed.value_ciphertext,
                    &t.disabled,
                    &t.replaces.map(|u| u.as_bytes().to_vec()),
                    &t.replaced_by.map(|u| u.as_bytes().to_vec()),
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.execute(
            "SELECT setval(pg_get_serial_sequence('tokens', 'seq'),
                           greatest((SELECT max(seq) FROM tokens), 1))",
            &[],
        )
        .await
        .map_err(pg_error)?;
        for (uid, identity, s) in &page.usage {
            tx.execute(
                "INSERT INTO token_usage (token_uid, identity, first_resolve_us, last_resolve_us,
                     resolve_count, denied_count, last_denied_us, superseded_count,
                     last_superseded_us)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &uid.as_bytes().as_slice(),
                    identity,
                    &s.first_resolve_us,
                    &s.last_resolve_us,
                    &s.resolve_count,
                    &s.denied_count,
                    &s.last_denied_us,
                    &s.superseded_count,
                    &s.last_superseded_us,
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        for (uid, b) in &page.bindings {
            tx.execute(
                "INSERT INTO bindings (token_uid, binding_id, caller_identity, purpose, create_us)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &uid.as_bytes().as_slice(),
                    &b.binding_id.as_str(),
                    &b.caller_identity,
                    &b.purpose,
                    &micros(b.create_time),
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)
    }

    async fn import_trail(&self, trail: RawTrail) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        for link in &trail.links {
            let e = &link.record.event;
            tx.execute(
                "INSERT INTO audit (seq, time_us, actor, peer, method, tenant, resource, outcome,
                                    reason, count, first_us, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                &[
                    &link.record.seq,
                    &micros(e.time),
                    &e.actor,
                    &e.peer,
                    &e.method,
                    &e.tenant,
                    &e.resource,
                    &link.stored_outcome,
                    &e.reason,
                    &e.count,
                    &micros(e.first_time),
                    &link.prev_hash,
                    &link.hash,
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        if let Some((seq, hash)) = &trail.head {
            tx.execute(
                "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
                &[seq, hash],
            )
            .await
            .map_err(pg_error)?;
        }
        if let Some(base) = &trail.base {
            tx.execute(
                "INSERT INTO audit_base (id, seq, hash, time_us, mac) VALUES (1, $1, $2, $3, $4)",
                &[&base.seq, &base.head, &base.time_us, &base.mac],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)
    }
}
