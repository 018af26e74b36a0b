//! `aitokens store copy`: a whole store into an empty one, row for row and
//! without decrypting anything, then checked with the root key: every value
//! opens, and the audit chain verifies.

use std::{path::Path, sync::Arc};

use crate::{
    audit::{AuditVerdict, verify_chain},
    config::Config,
    error::{Error, Result},
    rotation::{Legacy, Missing, unlock},
    store::{Hold, PgStore, SqliteStore, Store, StoreLocation, transfer::Transfer},
};

use super::Offline;

/// Token rows copied per transaction.
const PAGE: usize = 1000;

/// A store opened for a copy: the traits, and the row-for-row transfer.
trait Copyable: Store + Transfer {}
impl<T: Store + Transfer> Copyable for T {}

/// Opens a side of the copy alone: nothing may write to either meanwhile
/// (a SQLite file is locked; a PostgreSQL database is refused while a
/// replica is connected).
async fn open(location: &StoreLocation) -> Result<Arc<dyn Copyable>> {
    Ok(match location {
        StoreLocation::Sqlite(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open_exclusive(&path))
                .await
                .map_err(|e| Error::Internal(format!("opening the database: {e}")))??;
            Arc::new(store)
        }
        StoreLocation::Postgres(target) => {
            PgStore::refuse_if_served(target).await?;
            Arc::new(PgStore::open(*target.clone()).await?)
        }
    })
}

/// Copies `from` into `to` (which must be empty), then checks the copy with
/// the root key of `config`.
pub async fn run(from: &str, to: &str, password_file: Option<&Path>, config: &Path) -> Result<()> {
    let config = Config::load(config)?;
    let (from, to) = (
        super::location(from, password_file)?,
        super::location(to, password_file)?,
    );
    let (source, target) = (open(&from).await?, open(&to).await?);
    if !target.is_empty().await? {
        return Err(Error::config(format!(
            "{} is not empty: a copy goes only into an empty store",
            to.shown()
        )));
    }
    let records = source.keyring().await?.ok_or_else(|| {
        Error::database(format!("{} has no keyring: nothing to copy", from.shown()))
    })?;
    if records.sealed_audit_key.is_none() {
        return Err(Error::database(format!(
            "the audit trail of {} is not keyed yet: run aitokens audit upgrade first",
            from.shown()
        )));
    }
    target.import_keyring(records).await?;
    let (mut after, mut tokens) = (0, 0);
    loop {
        let page = source.export_tokens(after, PAGE).await?;
        let Some(last) = page.tokens.last() else {
            break;
        };
        after = last.seq;
        tokens += page.tokens.len();
        target.import_tokens(page).await?;
    }
    let trail = source.export_trail().await?;
    let records = trail.links.len();
    target.import_trail(trail).await?;
    drop((source, target));
    println!(
        "copied {tokens} tokens and {records} audit records from {} to {} (nothing decrypted)",
        from.shown(),
        to.shown()
    );
    check(&to, &config).await
}

/// Opens every value of the copy and walks its chain, with the root key.
async fn check(location: &StoreLocation, config: &Config) -> Result<()> {
    let offline = Offline::open_at(
        location,
        &config.store.key_source()?,
        Legacy::Refuse,
        Hold::Shared,
    )
    .await?;
    let opened = offline.verify_every_value().await?;
    let material = config.store.key_source()?.load()?;
    let store = crate::store::open(location, None).await?;
    let handle = unlock(&*store, material, Missing::Refuse, Legacy::Refuse).await?;
    let key = handle
        .current()
        .chain_key()
        .ok_or_else(|| Error::Internal("the copied keyring has no audit key".into()))?;
    match verify_chain(&*store, &key, &[]).await? {
        AuditVerdict::Intact { records, .. } => {
            println!(
                "checked {}: all {opened} values open with the root key; the audit chain of {records} records verifies",
                location.shown()
            );
            Ok(())
        }
        AuditVerdict::Broken { seq, reason } => Err(Error::database(format!(
            "the copied audit chain breaks at record {seq}: {reason}"
        ))),
    }
}
