//! `aitokens init`, `backup` and `restore`: whole databases.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{BackupArgs, InitArgs, Offline, RestoreArgs};
use crate::{
    config::Config,
    crypto::{KeySource, Keyring, RootKey, RootMaterial, new_deployment_id},
    error::{Error, Result},
    store::{DbLock, Hold, Maintenance, SqliteStore, StoreLocation},
};

/// `aitokens init`: a new database whose keyring is sealed under the chosen
/// root key. A key file created here records the new deployment's id.
pub async fn init(args: InitArgs) -> Result<()> {
    let InitArgs {
        db,
        key_file,
        passphrase_file,
        passphrase_stdin,
    } = args;
    let source = match (key_file, passphrase_file) {
        (Some(path), _) => KeySource::File(path),
        (_, Some(path)) => KeySource::PassphraseFile(path),
        _ if passphrase_stdin => KeySource::PassphraseStdin,
        _ => {
            return Err(Error::config(
                "choose --key-file, --passphrase-file or --passphrase-stdin",
            ));
        }
    };
    let location = super::location(&db, None)?;
    if let StoreLocation::Postgres(target) = &location {
        crate::store::PgStore::migrate(target.as_ref()).await?;
    }
    let store = crate::store::open(&location, None).await?;
    let db = location.shown();
    if store.keyring().await?.is_some() {
        return Err(Error::database(format!("{db} is already initialized")));
    }
    let shown = format!("{source:?}");
    let records = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut deployment = new_deployment_id()?;
        let (root, kdf) = match &source {
            KeySource::File(path) if !path.exists() => {
                let key = RootKey::create_file_for(path, Some(&deployment))?;
                println!(
                    "created root key file {} (keep it secret; back it up apart from the database)",
                    path.display()
                );
                (key, None)
            }
            _ => match source.load()? {
                // An existing key file that names its deployment keeps it, so
                // that serving with it later is not mistaken for a mismatch.
                RootMaterial::Key(key, Some(named)) => {
                    deployment = named;
                    (key, None)
                }
                material => material.fresh()?,
            },
        };
        let (_, records) = Keyring::create_with(&root, Some(deployment), kdf)?;
        Ok(records)
    })
    .await
    .map_err(|e| Error::Internal(format!("key derivation task failed: {e}")))??;
    store.init_keyring(records).await?;
    println!("initialized {db} with KEK version 1 ({shown})");
    Ok(())
}

/// `aitokens backup`: copies the database (online: the server may be
/// serving) to a new file.
pub async fn backup(args: BackupArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let database = match config.store.location()? {
        StoreLocation::Sqlite(path) => path,
        StoreLocation::Postgres(target) => {
            return Err(Error::config(format!(
                "{} is PostgreSQL: back it up with pg_dump (or your operator's base backups); \
                 the dump holds only sealed values, and the root key is not in it",
                target.shown()
            )));
        }
    };
    let store = {
        let path = database.clone();
        tokio::task::spawn_blocking(move || SqliteStore::open_read_only(&path))
            .await
            .map_err(|e| Error::Internal(format!("opening the database: {e}")))??
    };
    store.backup(&args.out).await?;
    println!(
        "backed up {} to {} (values stay encrypted; the root key is not in it: keep it apart)",
        database.display(),
        args.out.display()
    );
    Ok(())
}

/// `aitokens restore`: holding the database alone (refused while a server
/// has it open), checks that the root key opens the backup's keyring and
/// every value in it, then replaces the database atomically.
pub async fn restore(args: RestoreArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let db = match (args.db, config.store.location()?) {
        (Some(db), _) | (None, StoreLocation::Sqlite(db)) => db,
        (None, StoreLocation::Postgres(target)) => {
            return Err(Error::config(format!(
                "{} is PostgreSQL: restore it with pg_restore (or your operator's tools)",
                target.shown()
            )));
        }
    };
    let source = config.store.key_source()?;
    let _alone = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || DbLock::acquire(&db, Hold::Exclusive))
            .await
            .map_err(|e| Error::Internal(format!("locking the database: {e}")))??
    };
    let staging = PathBuf::from(format!("{}.restore", db.display()));
    let _ = std::fs::remove_file(&staging);
    std::fs::copy(&args.from, &staging)
        .map_err(|e| Error::file(format!("reading backup {}: {e}", args.from.display())))?;
    let checked = async {
        let offline = Offline::open(&staging, &source).await?;
        offline.verify_every_value().await
    }
    .await;
    let _ = std::fs::remove_file(DbLock::path_for(&staging));
    let count = match checked {
        Ok(count) => count,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
    };
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", staging.display()));
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::rename(&staging, &db)
        .map_err(|e| Error::file(format!("replacing {}: {e}", db.display())))?;
    println!(
        "restored {} from {}: {count} tokens, every value opens",
        db.display(),
        args.from.display()
    );
    Ok(())
}

async fn open(path: &Path) -> Result<Arc<SqliteStore>> {
    let path = path.to_owned();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
        .await
        .map_err(|e| Error::Internal(format!("opening the database: {e}")))??;
    Ok(Arc::new(store))
}

/// `aitokens migrate`: applies the migrations the store lacks.
pub async fn migrate(config: &Path) -> Result<()> {
    match Config::load(config)?.store.location()? {
        StoreLocation::Sqlite(path) => {
            open(&path).await?;
            println!("{} is at the current schema", path.display());
        }
        StoreLocation::Postgres(target) => {
            let applied = crate::store::PgStore::migrate(&target).await?;
            println!(
                "{}: {applied} migration(s) applied; the schema is current",
                target.shown()
            );
        }
    }
    Ok(())
}
