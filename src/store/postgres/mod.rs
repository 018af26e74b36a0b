//! The PostgreSQL store, for several replicas over one database: every
//! write is one transaction with its audit records; audit appends are
//! serialized by a row lock on the chain head, so replicas never fork the
//! chain; usage counters merge additively; a generation counter and
//! `NOTIFY aitokens_changes` tell every replica which cached rows to drop
//! (see the `listen` module); the re-wrap job is leased through an advisory lock.

mod audit;
mod bindings;
mod impls;
mod keyring;
mod listen;
pub mod schema;
#[cfg(any(test, feature = "testkit"))]
pub mod scratch;
mod target;
mod tokens;
mod transfer;
mod usage;

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::sync::broadcast;
use tokio_postgres::{NoTls, error::SqlState};

pub use target::PgTarget;

use super::{AuditMirror, StoreChange};
use crate::{
    crypto::chain::ChainKey,
    error::{Error, Result},
    model::AuditEvent,
};

/// How long [`PgStore::refuse_if_served`] waits for the backends of a
/// server that just stopped to go away.
const SERVED_SETTLE: Duration = Duration::from_secs(3);

/// PostgreSQL-backed implementation of every store trait.
pub struct PgStore {
    pool: Pool,
    target: PgTarget,
    chain: RwLock<Option<Arc<ChainKey>>>,
    mirror: Option<Arc<dyn AuditMirror>>,
    changes: broadcast::Sender<StoreChange>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Connects to `target`, checks that its schema is the one this build
    /// knows (run `aitokens migrate` first), and starts listening for
    /// changes made by every replica.
    pub async fn open(target: PgTarget) -> Result<Self> {
        let client = target.connect_one().await?;
        let version = schema::version(&client).await?;
        schema::check_known(version)?;
        if version < schema::MIGRATIONS.len() {
            return Err(Error::database(format!(
                "the PostgreSQL schema at {} is version {version}, this build needs {}: run \
                 `aitokens migrate --config FILE` (or aitokens dev, which migrates)",
                target.shown(),
                schema::MIGRATIONS.len()
            )));
        }
        drop(client);
        let pool = pool(&target)?;
        let (changes, _) = broadcast::channel(4096);
        // Without notifications, the generation poll alone sees changes.
        let listener = if target.notifications() {
            listen::spawn(target.clone(), changes.clone())
        } else {
            tokio::spawn(std::future::pending())
        };
        Ok(Self {
            pool,
            target,
            chain: RwLock::new(None),
            mirror: None,
            changes,
            listener,
        })
    }

    /// Refuses (naming how many) while any aitokens server is connected to
    /// `target`: for the commands that must run alone (rekey, shred). A
    /// replica that starts meanwhile is not seen: stop them all first.
    ///
    /// A server stopped a moment ago leaves backends that are still exiting,
    /// so a count above zero is looked at again for up to
    /// `SERVED_SETTLE` (3 s) before it refuses.
    pub async fn refuse_if_served(target: &PgTarget) -> Result<()> {
        let client = target.connect_one().await?;
        let settle_until = Instant::now() + SERVED_SETTLE;
        let served = loop {
            let served: i64 = client
                .query_one(
                    "SELECT count(DISTINCT client_addr::text || ':' || client_port::text)
                     FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'aitokens'
                       AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if served == 0 || Instant::now() >= settle_until {
                break served;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if served > 0 {
            return Err(Error::database(format!(
                "{} is in use: {served} connection(s) of aitokens servers; stop every \
                 replica first",
                target.shown()
            )));
        }
        Ok(())
    }

    /// Applies the migrations `target` lacks; returns how many.
    pub async fn migrate(target: &PgTarget) -> Result<usize> {
        let mut client = target.connect_one().await?;
        schema::migrate(&mut client).await
    }

    /// Hands every committed audit record to `mirror` as well.
    pub fn with_audit_mirror(mut self, mirror: Arc<dyn AuditMirror>) -> Self {
        self.mirror = Some(mirror);
        self
    }

    /// Whether this store LISTENs for changes.
    fn listens(&self) -> bool {
        self.target.notifications()
    }

    /// Where the store is, for messages.
    pub fn shown(&self) -> &str {
        self.target.shown()
    }

    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(|e| {
            let why = match &e {
                deadpool_postgres::PoolError::Backend(e) => describe(e),
                other => other.to_string(),
            };
            Error::Storage(format!("PostgreSQL at {}: {why}", self.target.shown()))
        })
    }

    fn chain_key(&self) -> Option<Arc<ChainKey>> {
        self.chain.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Appends `events` in `tx`, commits, and mirrors the records.
    async fn commit(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        events: &[AuditEvent],
    ) -> Result<()> {
        let records = audit::append(&tx, self.chain_key().as_deref(), events).await?;
        tx.commit().await.map_err(pg_error)?;
        if let Some(mirror) = &self.mirror
            && !records.is_empty()
        {
            mirror.committed(&records);
        }
        Ok(())
    }
}

#[cfg(feature = "testkit")]
impl PgStore {
    /// Inserts sealed tokens in one transaction, without audit records (the
    /// testkit bulk loader). A taken id fails the batch with `AlreadyExists`.
    pub(crate) async fn bulk_insert(
        &self,
        rows: Vec<(crate::model::TokenRecord, crate::model::SealedValue)>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tokens::insert_many(&tx, &rows).await?;
        tx.commit().await.map_err(pg_error)
    }
}

fn pool(target: &PgTarget) -> Result<Pool> {
    let config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match target.tls() {
        Some(tls) => Manager::from_config(target.config().clone(), tls.clone(), config),
        None => Manager::from_config(target.config().clone(), NoTls, config),
    };
    Pool::builder(manager)
        .max_size(target.pool_size())
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Internal(format!("PostgreSQL pool: {e}")))
}

/// A driver error: a unique violation is the caller's to name; everything
/// else means the store could not do it now (UNAVAILABLE), detail for the
/// log only.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> Error {
    Error::Storage(describe(&e))
}

/// The driver's error with what it wraps: the server's message and SQL
/// state, or the I/O error (tokio-postgres shows only "db error" alone).
/// Messages name tables and constraints, never a parameter's value.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Whether `e` is a unique violation.
fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

#[cfg(test)]
mod tests;
