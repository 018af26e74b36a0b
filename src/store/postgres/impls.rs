//! The store traits over PostgreSQL: each write one transaction ending in
//! its audit records, each read one pooled connection.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;

use super::{PgStore, audit, bindings, keyring, pg_error, tokens, usage};
use crate::{
    crypto::chain::ChainKey,
    error::{Error, Result},
    model::{
        AuditEvent, AuditRecord, BindingId, BindingRecord, EventWindow, KeyringRecords,
        SealedToken, SealedValue, TenantId, TokenEvent, TokenId, TokenName, TokenRecord, TokenUid,
        UsageStats,
    },
    store::{
        AuditFilter, AuditLog, BindingStore, ChainLink, Checkpoint, KeyringStore, Lease, LeaseHold,
        Maintenance, Pending, RemovalContext, RemoveFn, RewrapBatch, RewrapFn, StoreChange,
        TokenStore, Unflushed, UpdateFn, UsageStore,
    },
};

/// Advisory-lock keys of the jobs one replica at a time runs.
fn job_key(job: &str) -> i64 {
    let hash = job.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[async_trait]
impl TokenStore for PgStore {
    async fn insert(
        &self,
        mut record: TokenRecord,
        sealed: SealedValue,
        replaces: Option<TokenId>,
        events: Vec<AuditEvent>,
    ) -> Result<TokenRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        record.seq = tokens::insert(&tx, &record, &sealed, replaces.as_ref()).await?;
        let stored = tokens::get(&*tx, &record.name)
            .await?
            .ok_or(Error::NotFound("token"))?;
        self.commit(tx, &events).await?;
        Ok(stored)
    }

    async fn get(&self, name: &TokenName) -> Result<Option<TokenRecord>> {
        tokens::get(&**self.client().await?, name).await
    }

    async fn get_sealed(&self, name: &TokenName) -> Result<Option<SealedToken>> {
        tokens::get_sealed(&**self.client().await?, name).await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: usize,
        unused_since_us: Option<i64>,
    ) -> Result<Vec<TokenRecord>> {
        let client = self.client().await?;
        tokens::list(&**client, tenant, after_seq, limit, unused_since_us).await
    }

    async fn update(&self, name: &TokenName, mut change: UpdateFn) -> Result<TokenRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let current = tokens::get_for_update(&tx, name).await?;
        let (updated, events) = change(&current)?;
        tokens::update(&tx, &current, &updated).await?;
        let stored = tokens::get(&*tx, &updated.name)
            .await?
            .ok_or(Error::NotFound("token"))?;
        self.commit(tx, &events).await?;
        Ok(stored)
    }

    async fn delete(&self, name: &TokenName, mut decide: RemoveFn) -> Result<TokenRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let current = tokens::get_for_update(&tx, name).await?;
        let uid = current.uid.as_bytes().to_vec();
        let context = RemovalContext {
            bindings: bindings::of_uid(&*tx, &uid).await?,
            usage: usage::of(&*tx, &current.uid).await?,
        };
        let events = decide(&current, &context)?;
        tokens::delete(&tx, &current).await?;
        self.commit(tx, &events).await?;
        Ok(current)
    }

    async fn change_generation(&self) -> Result<i64> {
        Ok(self
            .client()
            .await?
            .query_one("SELECT generation FROM token_changes WHERE id = 1", &[])
            .await
            .map_err(pg_error)?
            .get(0))
    }

    async fn scan_sealed(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TokenName, SealedToken)>> {
        tokens::scan_sealed(&**self.client().await?, after_seq, limit).await
    }

    fn subscribe_changes(&self) -> Option<tokio::sync::broadcast::Receiver<StoreChange>> {
        self.listens().then(|| self.changes.subscribe())
    }

    async fn count(&self) -> Result<u64> {
        let count: i64 = self
            .client()
            .await?
            .query_one("SELECT count(*) FROM tokens", &[])
            .await
            .map_err(pg_error)?
            .get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn tenants(&self) -> Result<Vec<TenantId>> {
        self.client()
            .await?
            .query("SELECT DISTINCT tenant FROM tokens ORDER BY tenant", &[])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| TenantId::new(row.get::<_, &str>(0), "tenant").map_err(|_| Error::DataLoss))
            .collect()
    }

    async fn events_after(&self, after_seq: i64, limit: usize) -> Result<Vec<TokenEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, time_us, tenant, kind, token_id, other_id FROM token_events
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after_seq, &limit],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|r| {
                crate::store::decode_event(
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                )
            })
            .collect()
    }

    async fn event_window(&self) -> Result<EventWindow> {
        let row = self
            .client()
            .await?
            .query_one("SELECT floor, seq FROM token_events_head WHERE id = 1", &[])
            .await
            .map_err(pg_error)?;
        Ok(EventWindow {
            floor: row.get(0),
            head: row.get(1),
        })
    }

    async fn prune_events(&self, keep: u64, older_than_us: i64) -> Result<EventWindow> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        // The head row's lock holds back event writers for the moment the
        // floor moves and the rows go, in one transaction.
        let row = tx
            .query_one(
                "SELECT seq, floor FROM token_events_head WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(pg_error)?;
        let (head, floor): (i64, i64) = (row.get(0), row.get(1));
        let by_age: i64 = tx
            .query_one(
                "SELECT coalesce(max(seq), 0) FROM token_events WHERE time_us < $1",
                &[&older_than_us],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        let cut = head.saturating_sub(keep).max(by_age);
        if cut <= floor {
            return Ok(EventWindow { floor, head });
        }
        tx.execute(
            "UPDATE token_events_head SET floor = $1 WHERE id = 1",
            &[&cut],
        )
        .await
        .map_err(pg_error)?;
        tx.execute("DELETE FROM token_events WHERE seq <= $1", &[&cut])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(EventWindow { floor: cut, head })
    }
}

#[async_trait]
impl BindingStore for PgStore {
    async fn create_binding(
        &self,
        token: &TokenName,
        binding: BindingRecord,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        bindings::create(&tx, token, &binding).await?;
        self.commit(tx, &events).await
    }

    async fn list_bindings(&self, token: &TokenName) -> Result<Vec<BindingRecord>> {
        bindings::list(&**self.client().await?, token).await
    }

    async fn delete_binding(
        &self,
        token: &TokenName,
        binding_id: &BindingId,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        bindings::delete(&tx, token, binding_id).await?;
        self.commit(tx, &events).await
    }
}

#[async_trait]
impl UsageStore for PgStore {
    async fn usage(&self, uid: &TokenUid) -> Result<Vec<(String, UsageStats)>> {
        usage::of(&**self.client().await?, uid).await
    }

    async fn flush(&self, pending: Pending) -> std::result::Result<(), Unflushed> {
        let written = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            usage::add(&tx, &pending.usage).await?;
            self.commit(tx, &pending.events).await
        }
        .await;
        written.map_err(|error| Unflushed { error, pending })
    }
}

#[async_trait]
impl AuditLog for PgStore {
    fn use_chain_key(&self, key: Arc<ChainKey>) {
        *self.chain.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        audit::list(&**self.client().await?, filter, after_seq, limit).await
    }

    async fn chain_links(&self, after_seq: i64, limit: usize) -> Result<Vec<ChainLink>> {
        audit::links(&**self.client().await?, after_seq, limit).await
    }

    async fn chain_head(&self) -> Result<Option<(i64, Vec<u8>)>> {
        audit::head(&**self.client().await?).await
    }

    async fn chain_base(&self) -> Result<Option<Checkpoint>> {
        audit::base(&**self.client().await?).await
    }

    async fn relink(&self) -> Result<i64> {
        let key = self
            .chain_key()
            .ok_or_else(|| Error::Internal("the audit chain key is not loaded".into()))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let relinked = audit::relink(&tx, &key).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(relinked)
    }

    async fn prune(&self, base: Checkpoint) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute("SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE", &[])
            .await
            .map_err(pg_error)?;
        let deleted = audit::prune(&tx, &base).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(deleted)
    }
}

#[async_trait]
impl KeyringStore for PgStore {
    async fn keyring(&self) -> Result<Option<KeyringRecords>> {
        keyring::read(&**self.client().await?).await
    }

    async fn init_keyring(&self, records: KeyringRecords) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        keyring::init(&tx, &records).await?;
        tx.commit().await.map_err(pg_error)
    }

    async fn kek_usage(&self) -> Result<Vec<(u32, i64)>> {
        keyring::kek_usage(&**self.client().await?).await
    }

    async fn add_kek(
        &self,
        expected: KeyringRecords,
        version: u32,
        sealed: Vec<u8>,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        keyring::add_kek(&tx, &expected, version, &sealed).await?;
        self.commit(tx, &events).await
    }

    async fn rewrap_batch(
        &self,
        current: u32,
        after_seq: i64,
        limit: usize,
        mut rewrap: RewrapFn,
    ) -> Result<RewrapBatch> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let batch = keyring::rewrap_batch(&tx, current, after_seq, limit, &mut rewrap).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(batch)
    }

    async fn add_audit_key(&self, expected: KeyringRecords, sealed: Vec<u8>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        keyring::add_audit_key(&tx, &expected, &sealed).await?;
        tx.commit().await.map_err(pg_error)
    }

    async fn destroy_kek(&self, version: u32, events: Vec<AuditEvent>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        keyring::destroy_kek(&tx, version).await?;
        self.commit(tx, &events).await
    }

    async fn replace_keyring(
        &self,
        expected: KeyringRecords,
        records: KeyringRecords,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        keyring::replace(&tx, &expected, &records).await?;
        self.commit(tx, &events).await
    }
}

#[async_trait]
impl Maintenance for PgStore {
    async fn checkpoint(&self) -> Result<()> {
        // PostgreSQL checkpoints on its own schedule.
        Ok(())
    }

    async fn vacuum(&self) -> Result<()> {
        // Autovacuum reclaims dead rows; erasure from disk and backups is
        // by crypto-shredding (`aitokens keys shred`), as for SQLite.
        Ok(())
    }

    async fn backup(&self, _dest: &Path) -> Result<()> {
        Err(Error::config(
            "backups of a PostgreSQL store are PostgreSQL's: pg_dump (or your operator's \
             base backups); the dump holds only sealed values, and the root key is not in it",
        ))
    }

    async fn lease(&self, job: &'static str) -> Result<Option<Lease>> {
        let client = self.client().await?;
        let held: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&job_key(job)])
            .await
            .map_err(pg_error)?
            .get(0);
        if !held {
            return Ok(None);
        }
        // Out of the pool: the session lock lives exactly as long as this
        // connection, which the lease closes when it is dropped (and the
        // database closes if this replica dies).
        let connection = deadpool_postgres::Object::take(client);
        Ok(Some(Lease::holding(Box::new(SessionLock(connection)))))
    }
}

/// A session that holds an advisory lock.
struct SessionLock(deadpool_postgres::ClientWrapper);

impl LeaseHold for SessionLock {
    fn lost(&self) -> bool {
        self.0.is_closed()
    }
}
