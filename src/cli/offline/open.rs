//! A database opened with its root key, for the offline commands.

use std::{path::Path, sync::Arc};

use crate::{
    config::Config,
    crypto::KeySource,
    error::{Error, Result},
    rotation::{KeyRotation, Legacy, Missing, unlock},
    store::{self, Hold, PgStore, SharedStore, SqliteStore, StoreLocation},
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
        let location = StoreLocation::Sqlite(database.to_owned());
        Self::open_at(&location, source, Legacy::Refuse, Hold::Shared).await
    }

    /// Like [`Offline::open`], doing what `legacy` says with an audit trail
    /// written before chains were keyed.
    pub async fn open_with(database: &Path, source: &KeySource, legacy: Legacy) -> Result<Self> {
        let location = StoreLocation::Sqlite(database.to_owned());
        Self::open_at(&location, source, legacy, Hold::Shared).await
    }

    /// Like [`Offline::open`], but alone: refused while a server (or another
    /// command) holds the database. For commands that must not run beside
    /// one (rekey, shred).
    pub async fn open_exclusive(database: &Path, source: &KeySource) -> Result<Self> {
        let location = StoreLocation::Sqlite(database.to_owned());
        Self::open_at(&location, source, Legacy::Refuse, Hold::Exclusive).await
    }

    /// Opens the store at `location`, held as `hold` says, and unseals its
    /// keyring with `source`, doing what `legacy` says with an audit trail
    /// written before chains were keyed. Held alone, a SQLite file is
    /// locked; a PostgreSQL database is refused while any replica is
    /// connected to it.
    pub async fn open_at(
        location: &StoreLocation,
        source: &KeySource,
        legacy: Legacy,
        hold: Hold,
    ) -> Result<Self> {
        let material = source.load()?;
        let store: SharedStore = match location {
            StoreLocation::Sqlite(path) => {
                let path = path.clone();
                let store = tokio::task::spawn_blocking(move || match hold {
                    Hold::Shared => SqliteStore::open(&path),
                    Hold::Exclusive => SqliteStore::open_exclusive(&path),
                })
                .await
                .map_err(|e| Error::Internal(format!("opening the database: {e}")))??;
                Arc::new(store)
            }
            StoreLocation::Postgres(target) => {
                if hold == Hold::Exclusive {
                    PgStore::refuse_if_served(target).await?;
                }
                store::open(location, None).await?
            }
        };
        let handle = unlock(&*store, material, Missing::Refuse, legacy).await?;
        let keys = KeyRotation::new(store.clone(), Arc::new(handle));
        Ok(Self { store, keys })
    }

    /// Opens the store a config names, with its key source.
    pub async fn from_config(config: &Config) -> Result<Self> {
        let location = config.store.location()?;
        Self::open_at(
            &location,
            &config.store.key_source()?,
            Legacy::Refuse,
            Hold::Shared,
        )
        .await
    }

    /// [`Offline::open_exclusive`] on the database a config names.
    pub async fn from_config_exclusive(config: &Config) -> Result<Self> {
        let location = config.store.location()?;
        Self::open_at(
            &location,
            &config.store.key_source()?,
            Legacy::Refuse,
            Hold::Exclusive,
        )
        .await
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
