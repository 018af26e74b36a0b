//! A bulk loader for benchmarks and tests, compiled only with the `testkit`
//! feature: it writes tokens sealed with the real keyring straight into a
//! database (SQLite or PostgreSQL), many per transaction and without audit
//! records. It is not part
//! of the server's write API (which audits every change) and no build of the
//! service contains it.

use std::sync::Arc;

use crate::{
    config::Config,
    crypto::{Keyring, KeyringHandle},
    error::{Error, Result},
    model::{SealedValue, TokenRecord},
    rotation::{Legacy, Missing, unlock},
    store::{PgStore, SqliteStore, StoreLocation},
};

/// A store opened for bulk loading.
pub struct BulkLoader {
    store: Bulk,
    keyring: Arc<KeyringHandle>,
}

enum Bulk {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl BulkLoader {
    /// Opens the store `config` names (creating a SQLite file, and the
    /// keyring, if needed; a PostgreSQL database must be migrated) with the
    /// config's root key.
    pub async fn open(config: &Config) -> Result<Self> {
        let material = config.store.key_source()?.load()?;
        let (store, keyring) = match config.store.location()? {
            StoreLocation::Sqlite(path) => {
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                    .await
                    .map_err(|e| Error::Internal(format!("opening the database: {e}")))??;
                let keyring = unlock(&store, material, Missing::Create, Legacy::Refuse).await?;
                (Bulk::Sqlite(Arc::new(store)), keyring)
            }
            StoreLocation::Postgres(target) => {
                let store = PgStore::open(*target).await?;
                let keyring = unlock(&store, material, Missing::Create, Legacy::Refuse).await?;
                (Bulk::Postgres(Arc::new(store)), keyring)
            }
        };
        Ok(Self {
            store,
            keyring: Arc::new(keyring),
        })
    }

    /// The keyring to seal values with.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring.current()
    }

    /// Inserts sealed tokens in one transaction: all or none (a taken id
    /// fails the batch with `AlreadyExists`). The records' `seq` is ignored.
    pub async fn insert(&self, rows: Vec<(TokenRecord, SealedValue)>) -> Result<()> {
        match &self.store {
            Bulk::Sqlite(store) => store.bulk_insert(rows).await,
            Bulk::Postgres(store) => store.bulk_insert(rows).await,
        }
    }
}
