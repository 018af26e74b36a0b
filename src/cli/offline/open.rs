//! A database opened with its root key, for the offline commands.

use std::{path::Path, sync::Arc};

use crate::{
    config::Config,
    crypto::KeySource,
    error::{Error, Result},
    rotation::{KeyRotation, Legacy, Missing, unlock},
    store::{Hold, SharedStore, SqliteStore},
};

/// A database opened with its root key.
pub struct Offline {
    /// The store.
    pub store: SharedStore,
    /// Key operations on it.
    pub keys: KeyRotation,
}

impl Offline {
    /// Opens `database` and unseals its keyring with `source`, beside any
    /// server that has it open.
    pub async fn open(database: &Path, source: &KeySource) -> Result<Self> {
        Self::open_held(database, source, Hold::Shared, Legacy::Refuse).await
    }

    /// Like [`Offline::open`], doing what `legacy` says with an audit trail
    /// written before chains were keyed.
    pub async fn open_with(database: &Path, source: &KeySource, legacy: Legacy) -> Result<Self> {
        Self::open_held(database, source, Hold::Shared, legacy).await
    }

    /// Like [`Offline::open`], but alone: refused while a server (or another
    /// command) holds the database. For commands that must not run beside
    /// one (rekey, shred).
    pub async fn open_exclusive(database: &Path, source: &KeySource) -> Result<Self> {
        Self::open_held(database, source, Hold::Exclusive, Legacy::Refuse).await
    }

    async fn open_held(
        database: &Path,
        source: &KeySource,
        hold: Hold,
        legacy: Legacy,
    ) -> Result<Self> {
        let material = source.load()?;
        let path = database.to_owned();
        let store = tokio::task::spawn_blocking(move || match hold {
            Hold::Shared => SqliteStore::open(&path),
            Hold::Exclusive => SqliteStore::open_exclusive(&path),
        })
        .await
        .map_err(|e| Error::Internal(format!("opening the database: {e}")))??;
        let store: SharedStore = Arc::new(store);
        let handle = unlock(&*store, material, Missing::Refuse, legacy).await?;
        let keys = KeyRotation::new(store.clone(), Arc::new(handle));
        Ok(Self { store, keys })
    }

    /// Opens the database a config names, with its key source.
    pub async fn from_config(config: &Config) -> Result<Self> {
        Self::open(&config.store.database, &config.store.key_source()?).await
    }

    /// [`Offline::open_exclusive`] on the database a config names.
    pub async fn from_config_exclusive(config: &Config) -> Result<Self> {
        Self::open_exclusive(&config.store.database, &config.store.key_source()?).await
    }

    /// Opens every sealed value; returns how many opened. Any that fails is
    /// an error naming the token (never its value).
    pub async fn verify_every_value(&self) -> Result<usize> {
        let keyring = self.keys.handle().current();
        let mut after = 0;
        let mut count = 0;
        loop {
            let rows = self.store.scan_sealed(after, 500).await?;
            let Some((last, ..)) = rows.last() else {
                return Ok(count);
            };
            after = *last;
            for (_, name, token) in &rows {
                keyring
                    .open_value(name.tenant.as_str(), &token.uid, &token.sealed)
                    .map_err(|_| {
                        Error::database(format!(
                            "{name} does not open: the backup is damaged or the key is wrong"
                        ))
                    })?;
                count += 1;
            }
        }
    }
}
