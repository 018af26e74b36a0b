//! Opening a store's keyring with the root key: the one bootstrap every
//! entry point uses (the server, the offline commands, the benchmark's
//! bulk loader). It also loads the audit chain key into the store, giving a
//! keyring made before chains were keyed its audit key and re-linking the
//! trail written before under it (once, after checking every old link).

use std::sync::Arc;

use crate::{
    crypto::{Keyring, KeyringHandle, RootMaterial, chain::ChainKey},
    error::{Error, Result},
    model::KeyringRecords,
    store::{KeyringStore, Store},
};

/// What to do with a trail written before chains were keyed (a keyring
/// without an audit key over existing records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Legacy {
    /// Refuse, naming the command that upgrades it. A server never upgrades
    /// on its own: whoever can write the database could otherwise present a
    /// rebuilt unkeyed trail and have it re-linked under the key.
    Refuse,
    /// Check every old link, then give the keyring its audit key and
    /// re-link the trail under it (`aitokens audit upgrade`, `aitokens dev`).
    Upgrade,
}

/// What to do with a store that has no keyring yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Create one, sealed under the root key (a new database).
    Create,
    /// Refuse: the command works on an initialized database only.
    Refuse,
}

/// Unseals the keyring of `store` with `material` (a key, or a passphrase
/// stretched with the parameters stored beside the keyring); with
/// [`Missing::Create`], creates the keyring of a new database. A wrong key
/// is refused before anything else is tried. Then the store links audit
/// records under the keyring's chain key. Key derivation runs on the
/// blocking pool.
pub async fn unlock(
    store: &dyn Store,
    material: RootMaterial,
    missing: Missing,
    legacy: Legacy,
) -> Result<KeyringHandle> {
    let handle = match (store.keyring().await?, missing) {
        (Some(records), _) => open(records, material).await?,
        (None, Missing::Create) => {
            let (root, keyring, records) = blocking(move || {
                let (root, kdf) = material.fresh()?;
                let (keyring, records) = Keyring::create_with(&root, None, kdf)?;
                Ok((root, keyring, records))
            })
            .await?;
            store.init_keyring(records).await?;
            tracing::info!("initialized a new keyring");
            KeyringHandle::new(root, keyring)
        }
        (None, Missing::Refuse) => {
            return Err(Error::database(
                "the database has no keyring (run aitokens init first)",
            ));
        }
    };
    let unkeyed = handle.current().chain_key().is_none();
    let has_records = store.chain_head().await?.is_some();
    if unkeyed && has_records && legacy == Legacy::Refuse {
        return Err(Error::database(
            "this database's audit trail was written before audit chains were keyed: run \
             `aitokens audit upgrade --config FILE` once (it checks every old link, then \
             re-links the trail under a key only the root key opens)",
        ));
    }
    if unkeyed {
        give_audit_key(store, &handle).await?;
    }
    let key = handle
        .current()
        .chain_key()
        .ok_or_else(|| Error::Internal("the keyring has no audit key".into()))?;
    store.use_chain_key(Arc::new(key));
    if unkeyed && has_records {
        let relinked = store.relink().await?;
        tracing::warn!(
            records = relinked,
            "the audit trail written before keyed chains verified and was re-linked under the key"
        );
    }
    Ok(handle)
}

/// The audit chain key of `store`, for reading and verifying only (nothing
/// is written): the keyring must exist and have an audit key.
pub async fn chain_key(store: &dyn KeyringStore, material: RootMaterial) -> Result<ChainKey> {
    let records = store
        .keyring()
        .await?
        .ok_or_else(|| Error::database("the database has no keyring"))?;
    let handle = open(records, material).await?;
    handle.current().chain_key().ok_or_else(|| {
        Error::database(
            "this database's audit trail is not keyed yet: start the server on it once \
             (or run aitokens keys status), which keys it",
        )
    })
}

async fn open(records: KeyringRecords, material: RootMaterial) -> Result<KeyringHandle> {
    blocking(move || {
        let root = material.unlock(&records)?;
        KeyringHandle::open(root, &records)
    })
    .await
}

/// Gives a keyring made before chains were keyed its audit key (sealed
/// under the root key held in `handle`), and puts it in force.
async fn give_audit_key(store: &dyn Store, handle: &KeyringHandle) -> Result<()> {
    let Some(records) = store.keyring().await? else {
        return Ok(());
    };
    if records.sealed_audit_key.is_some() {
        return Ok(());
    }
    let sealed = Keyring::new_audit_key(&handle.root(), &records.deployment_id)?;
    match store.add_audit_key(records, sealed).await {
        // Another process keyed it first: load theirs.
        Ok(()) | Err(Error::FailedPrecondition { .. }) => {}
        Err(e) => return Err(e),
    }
    let records = store
        .keyring()
        .await?
        .ok_or_else(|| Error::Internal("the keyring vanished from the database".into()))?;
    handle.reload(&records)?;
    tracing::info!("the keyring was given an audit key; the trail is keyed from now on");
    Ok(())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("key derivation task failed: {e}")))?
}
