//! The store traits over SQLite: reads on the reader threads, writes in one
//! IMMEDIATE transaction each on the writer connection.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;

use super::{SqliteStore, audit, backup, bindings, events, keyring, tokens, truncate_wal, usage};
use crate::{
    crypto::chain::ChainKey,
    error::{Error, Result},
    model::{
        AuditRecord, BindingId, BindingRecord, EventWindow, KeyringRecords, SealedToken,
        SealedValue, TenantId, TokenEvent, TokenId, TokenName, TokenRecord, TokenUid, UsageStats,
    },
    store::{
        AuditFilter, AuditLog, BindingStore, ChainLink, Checkpoint, KeyringStore, Maintenance,
        Pending, RemovalContext, RemoveFn, RewrapBatch, RewrapFn, TokenStore, Unflushed, UpdateFn,
        UsageStore,
    },
};

#[async_trait]
impl TokenStore for SqliteStore {
    async fn insert(
        &self,
        mut record: TokenRecord,
        sealed: SealedValue,
        replaces: Option<TokenId>,
        events: Vec<crate::model::AuditEvent>,
    ) -> Result<TokenRecord> {
        self.write(move |tx| {
            record.seq = tokens::insert(tx, &record, &sealed, replaces.as_ref())?;
            Ok((tokens::get_for_write(tx, &record.name)?, events))
        })
        .await
    }

    async fn get(&self, name: &TokenName) -> Result<Option<TokenRecord>> {
        let name = name.clone();
        self.read(move |conn| tokens::get(conn, &name)).await
    }

    async fn get_sealed(&self, name: &TokenName) -> Result<Option<SealedToken>> {
        let name = name.clone();
        self.read(move |conn| tokens::get_sealed(conn, &name)).await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: usize,
        unused_since_us: Option<i64>,
    ) -> Result<Vec<TokenRecord>> {
        let tenant = tenant.clone();
        self.read(move |conn| tokens::list(conn, &tenant, after_seq, limit, unused_since_us))
            .await
    }

    async fn update(&self, name: &TokenName, mut change: UpdateFn) -> Result<TokenRecord> {
        let name = name.clone();
        self.write(move |tx| {
            let current = tokens::get_for_write(tx, &name)?;
            let (updated, events) = change(&current)?;
            tokens::update(tx, &current, &updated)?;
            Ok((tokens::get_for_write(tx, &updated.name)?, events))
        })
        .await
    }

    async fn delete(&self, name: &TokenName, mut decide: RemoveFn) -> Result<TokenRecord> {
        let name = name.clone();
        let removed = self
            .write(move |tx| {
                let current = tokens::get_for_write(tx, &name)?;
                let context = RemovalContext {
                    bindings: bindings::of_uid(tx, current.uid.as_bytes())?,
                    usage: usage::of(tx, &current.uid)?,
                };
                let events = decide(&current, &context)?;
                tokens::delete(tx, &current)?;
                Ok((current, events))
            })
            .await?;
        // The removal is committed (and audited): a failed erasure step must
        // not report it as failed. The next removal or VACUUM retries it.
        if let Err(e) = self.on_writer(truncate_wal).await {
            tracing::error!(error = %e, "WAL truncation after a removal failed");
        }
        Ok(removed)
    }

    async fn change_generation(&self) -> Result<i64> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT generation FROM token_changes WHERE id = 1")?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    async fn scan_sealed(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TokenName, SealedToken)>> {
        self.read(move |conn| tokens::scan_sealed(conn, after_seq, limit))
            .await
    }

    async fn count(&self) -> Result<u64> {
        self.read(|conn| {
            let count: i64 = conn.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn tenants(&self) -> Result<Vec<TenantId>> {
        self.read(|conn| {
            // The (tenant, seq) index makes this a skip through the index.
            let mut statement =
                conn.prepare_cached("SELECT DISTINCT tenant FROM tokens ORDER BY tenant")?;
            let names = statement
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            names
                .iter()
                .map(|t| TenantId::new(t, "tenant").map_err(|_| Error::DataLoss))
                .collect()
        })
        .await
    }

    async fn events_after(&self, after_seq: i64, limit: usize) -> Result<Vec<TokenEvent>> {
        self.read(move |conn| events::after(conn, after_seq, limit))
            .await
    }

    async fn event_window(&self) -> Result<EventWindow> {
        self.read(events::window).await
    }

    async fn prune_events(&self, keep: u64, older_than_us: i64) -> Result<EventWindow> {
        self.write(move |tx| Ok((events::prune(tx, keep, older_than_us)?, Vec::new())))
            .await
    }
}

#[async_trait]
impl BindingStore for SqliteStore {
    async fn create_binding(
        &self,
        token: &TokenName,
        binding: BindingRecord,
        events: Vec<crate::model::AuditEvent>,
    ) -> Result<()> {
        let token = token.clone();
        self.write(move |tx| {
            bindings::create(tx, &token, &binding)?;
            Ok(((), events))
        })
        .await
    }

    async fn list_bindings(&self, token: &TokenName) -> Result<Vec<BindingRecord>> {
        let token = token.clone();
        self.read(move |conn| bindings::list(conn, &token)).await
    }

    async fn delete_binding(
        &self,
        token: &TokenName,
        binding_id: &BindingId,
        events: Vec<crate::model::AuditEvent>,
    ) -> Result<()> {
        let (token, binding_id) = (token.clone(), binding_id.clone());
        self.write(move |tx| {
            bindings::delete(tx, &token, &binding_id)?;
            Ok(((), events))
        })
        .await
    }
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn usage(&self, uid: &TokenUid) -> Result<Vec<(String, UsageStats)>> {
        let uid = *uid;
        self.read(move |conn| usage::of(conn, &uid)).await
    }

    async fn flush(&self, pending: Pending) -> std::result::Result<(), Unflushed> {
        let pending = Arc::new(pending);
        let batch = pending.clone();
        let written = self
            .write(move |tx| {
                usage::add(tx, &batch.usage)?;
                Ok(((), batch.events.clone()))
            })
            .await;
        written.map_err(|error| Unflushed {
            error,
            // The write task has ended and dropped its reference.
            pending: Arc::try_unwrap(pending).unwrap_or_else(|shared| (*shared).clone()),
        })
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    fn use_chain_key(&self, key: Arc<ChainKey>) {
        *self.inner.chain.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let filter = filter.clone();
        self.read(move |conn| audit::list(conn, &filter, after_seq, limit))
            .await
    }

    async fn chain_links(&self, after_seq: i64, limit: usize) -> Result<Vec<ChainLink>> {
        self.read(move |conn| audit::links(conn, after_seq, limit))
            .await
    }

    async fn chain_head(&self) -> Result<Option<(i64, Vec<u8>)>> {
        self.read(audit::head).await
    }

    async fn chain_base(&self) -> Result<Option<Checkpoint>> {
        self.read(audit::base).await
    }

    async fn relink(&self) -> Result<i64> {
        let key = self
            .inner
            .chain_key()
            .ok_or_else(|| crate::Error::Internal("the audit chain key is not loaded".into()))?;
        self.write(move |tx| Ok((audit::relink(tx, &key)?, Vec::new())))
            .await
    }

    async fn prune(&self, base: Checkpoint) -> Result<usize> {
        self.write(move |tx| Ok((audit::prune(tx, &base)?, Vec::new())))
            .await
    }
}

#[async_trait]
impl KeyringStore for SqliteStore {
    async fn keyring(&self) -> Result<Option<KeyringRecords>> {
        self.read(keyring::read).await
    }

    async fn init_keyring(&self, records: KeyringRecords) -> Result<()> {
        self.write(move |tx| keyring::init(tx, &records).map(|()| ((), Vec::new())))
            .await
    }

    async fn kek_usage(&self) -> Result<Vec<(u32, i64)>> {
        self.read(keyring::kek_usage).await
    }

    async fn add_kek(
        &self,
        expected: KeyringRecords,
        version: u32,
        sealed: Vec<u8>,
        events: Vec<crate::model::AuditEvent>,
    ) -> Result<()> {
        self.write(move |tx| {
            keyring::add_kek(tx, &expected, version, &sealed)?;
            Ok(((), events))
        })
        .await
    }

    async fn rewrap_batch(
        &self,
        current: u32,
        after_seq: i64,
        limit: usize,
        mut rewrap: RewrapFn,
    ) -> Result<RewrapBatch> {
        self.write(move |tx| {
            let batch = keyring::rewrap_batch(tx, current, after_seq, limit, &mut rewrap)?;
            Ok((batch, Vec::new()))
        })
        .await
    }

    async fn add_audit_key(&self, expected: KeyringRecords, sealed: Vec<u8>) -> Result<()> {
        self.write(move |tx| {
            keyring::add_audit_key(tx, &expected, &sealed)?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn destroy_kek(&self, version: u32, events: Vec<crate::model::AuditEvent>) -> Result<()> {
        self.write(move |tx| {
            keyring::destroy_kek(tx, version)?;
            Ok(((), events))
        })
        .await?;
        self.vacuum().await
    }

    async fn replace_keyring(
        &self,
        expected: KeyringRecords,
        records: KeyringRecords,
        events: Vec<crate::model::AuditEvent>,
    ) -> Result<()> {
        self.write(move |tx| {
            keyring::replace(tx, &expected, &records)?;
            Ok(((), events))
        })
        .await?;
        self.on_writer(truncate_wal).await
    }
}

#[async_trait]
impl Maintenance for SqliteStore {
    async fn checkpoint(&self) -> Result<()> {
        self.on_writer(truncate_wal).await
    }

    async fn vacuum(&self) -> Result<()> {
        self.on_writer(|conn| {
            conn.execute_batch("VACUUM")?;
            truncate_wal(conn)
        })
        .await
    }

    async fn lease(&self, _job: &'static str) -> Result<Option<crate::store::Lease>> {
        // Every update of a job is conditional on what it read: several
        // runners cannot conflict, so nobody needs to wait.
        Ok(Some(crate::store::Lease::free()))
    }

    async fn backup(&self, dest: &Path) -> Result<()> {
        let dest = dest.to_owned();
        self.read(move |conn| backup::to_file(conn, &dest)).await
    }
}
