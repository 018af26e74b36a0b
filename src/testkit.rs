//! A bulk loader for benchmarks and tests, compiled only with the `testkit`
//! feature: it writes tokens sealed with the real keyring straight into a
//! database, many per transaction and without audit records. It is not part
//! of the server's write API (which audits every change) and no build of the
//! service contains it.

use std::sync::Arc;

use crate::{
    config::Config,
    crypto::{Keyring, KeyringHandle},
    error::{Error, Result},
    model::{SealedValue, TokenRecord},
    rotation::{Legacy, Missing, unlock},
    store::SqliteStore,
};

/// A database opened for bulk loading.
pub struct BulkLoader {
    store: Arc<SqliteStore>,
    keyring: Arc<KeyringHandle>,
}

impl BulkLoader {
    /// Opens the database `config` names (creating it and its keyring if
    /// needed) with the config's root key.
    pub async fn open(config: &Config) -> Result<Self> {
        let material = config.store.key_source()?.load()?;
        let path = config.store.database.clone();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await
            .map_err(|e| Error::Internal(format!("opening the database: {e}")))??;
        let keyring = unlock(&store, material, Missing::Create, Legacy::Refuse).await?;
        Ok(Self {
            store: Arc::new(store),
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
        self.store.bulk_insert(rows).await
    }
}
