//! Row-for-row transfer out of (and into) a SQLite store.

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::{SqliteStore, audit, bindings, keyring, usage};
use crate::{
    error::{Error, Result},
    model::{KeyringRecords, SealedValue, TokenUid},
    store::transfer::{RawToken, RawTrail, TokenPage, Transfer},
};

fn uid_of(bytes: &[u8]) -> Result<TokenUid> {
    TokenUid::from_slice(bytes).ok_or(Error::DataLoss)
}

fn export_tokens(conn: &Connection, after_seq: i64, limit: usize) -> Result<TokenPage> {
    let mut stmt = conn.prepare(
        "SELECT seq, uid, tenant, token_id, display_name, create_us, update_us, revision,
                kek_version, wrapped_data_key, value_ciphertext, disabled, replaces_uid,
                replaced_by_uid
         FROM tokens WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_seq, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            (r.get(2)?, r.get(3)?, r.get(4)?),
            (r.get(5)?, r.get(6)?, r.get(7)?),
            SealedValue {
                kek_version: r.get(8)?,
                wrapped_data_key: r.get(9)?,
                value_ciphertext: r.get(10)?,
            },
            r.get::<_, bool>(11)?,
            (
                r.get::<_, Option<Vec<u8>>>(12)?,
                r.get::<_, Option<Vec<u8>>>(13)?,
            ),
        ))
    })?;
    let mut page = TokenPage::default();
    for row in rows {
        let (
            seq,
            uid,
            (tenant, token_id, display_name),
            (create_us, update_us, revision),
            sealed,
            disabled,
            (replaces, replaced_by),
        ) = row?;
        let uid = uid_of(&uid)?;
        page.usage.extend(
            usage::of(conn, &uid)?
                .into_iter()
                .map(|(identity, stats)| (uid, identity, stats)),
        );
        page.bindings.extend(
            bindings::of_uid(conn, uid.as_bytes())?
                .into_iter()
                .map(|b| (uid, b)),
        );
        page.tokens.push(RawToken {
            seq,
            uid,
            tenant,
            token_id,
            display_name,
            create_us,
            update_us,
            revision,
            sealed,
            disabled,
            replaces: replaces.as_deref().map(uid_of).transpose()?,
            replaced_by: replaced_by.as_deref().map(uid_of).transpose()?,
        });
    }
    Ok(page)
}

#[async_trait]
impl Transfer for SqliteStore {
    async fn is_empty(&self) -> Result<bool> {
        self.read(|conn| {
            let count: i64 = conn.query_row(
                "SELECT (SELECT count(*) FROM keyring) + (SELECT count(*) FROM tokens)
                        + (SELECT count(*) FROM audit)",
                [],
                |r| r.get(0),
            )?;
            Ok(count == 0)
        })
        .await
    }

    async fn export_tokens(&self, after_seq: i64, limit: usize) -> Result<TokenPage> {
        self.read(move |conn| {
            let snapshot = conn.unchecked_transaction()?;
            export_tokens(&snapshot, after_seq, limit)
        })
        .await
    }

    async fn export_trail(&self) -> Result<RawTrail> {
        self.read(|conn| {
            let snapshot = conn.unchecked_transaction()?;
            Ok(RawTrail {
                links: audit::links(&snapshot, 0, usize::MAX)?,
                head: audit::head(&snapshot)?,
                base: audit::base(&snapshot)?,
            })
        })
        .await
    }

    async fn import_keyring(&self, records: KeyringRecords) -> Result<()> {
        self.write(move |tx| keyring::init(tx, &records).map(|()| ((), Vec::new())))
            .await
    }

    async fn import_tokens(&self, page: TokenPage) -> Result<()> {
        self.write(move |tx| {
            let mut insert = tx.prepare(
                "INSERT INTO tokens (seq, uid, tenant, token_id, display_name, create_us, update_us,
                     revision, kek_version, wrapped_data_key, value_ciphertext, disabled,
                     replaces_uid, replaced_by_uid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            for t in &page.tokens {
                insert.execute(params![
                    t.seq,
                    t.uid.as_bytes(),
                    t.tenant,
                    t.token_id,
                    t.display_name,
                    t.create_us,
                    t.update_us,
                    t.revision,
                    t.sealed.kek_version,
                    t.sealed.wrapped_data_key,
                    t.sealed.value_ciphertext,
                    t.disabled,
                    t.replaces.map(|u| u.as_bytes().to_vec()),
                    t.replaced_by.map(|u| u.as_bytes().to_vec()),
                ])?;
            }
            for (uid, identity, s) in &page.usage {
                tx.execute(
                    "INSERT INTO token_usage (token_uid, identity, first_resolve_us, last_resolve_us,
                         resolve_count, denied_count, last_denied_us, superseded_count,
                         last_superseded_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        uid.as_bytes(),
                        identity,
                        s.first_resolve_us,
                        s.last_resolve_us,
                        s.resolve_count,
                        s.denied_count,
                        s.last_denied_us,
                        s.superseded_count,
                        s.last_superseded_us
                    ],
                )?;
            }
            for (uid, b) in &page.bindings {
                tx.execute(
                    "INSERT INTO bindings (token_uid, binding_id, caller_identity, purpose, create_us)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        uid.as_bytes(),
                        b.binding_id.as_str(),
                        b.caller_identity,
                        b.purpose,
                        crate::model::micros(b.create_time)
                    ],
                )?;
            }
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn import_trail(&self, trail: RawTrail) -> Result<()> {
        self.write(move |tx| {
            let mut insert = tx.prepare(
                "INSERT INTO audit (seq, time_us, actor, peer, method, tenant, resource, outcome,
                                    reason, count, first_us, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for link in &trail.links {
                let e = &link.record.event;
                insert.execute(params![
                    link.record.seq,
                    crate::model::micros(e.time),
                    e.actor,
                    e.peer,
                    e.method,
                    e.tenant,
                    e.resource,
                    link.stored_outcome,
                    e.reason,
                    e.count,
                    crate::model::micros(e.first_time),
                    link.prev_hash,
                    link.hash
                ])?;
            }
            if let Some((seq, hash)) = &trail.head {
                tx.execute(
                    "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)",
                    params![seq, hash],
                )?;
            }
            if let Some(base) = &trail.base {
                tx.execute(
                    "INSERT INTO audit_base (id, seq, hash, time_us, mac) VALUES (1, ?1, ?2, ?3, ?4)",
                    params![base.seq, base.head, base.time_us, base.mac],
                )?;
            }
            Ok(((), Vec::new()))
        })
        .await
    }
}
