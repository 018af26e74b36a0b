//! Opening a store's keyring with the root key: the one bootstrap every
//! entry point uses (the server, the offline commands, the benchmark's
//! bulk loader).

use crate::{
    crypto::{Keyring, KeyringHandle, RootMaterial},
    error::{Error, Result},
    store::KeyringStore,
};

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
/// is refused before anything else is tried. Key derivation runs on the
/// blocking pool.
pub async fn unlock(
    store: &dyn KeyringStore,
    material: RootMaterial,
    missing: Missing,
) -> Result<KeyringHandle> {
    match (store.keyring().await?, missing) {
        (Some(records), _) => {
            blocking(move || {
                let root = material.unlock(&records)?;
                KeyringHandle::open(root, &records)
            })
            .await
        }
        (None, Missing::Create) => {
            let (root, keyring, records) = blocking(move || {
                let (root, kdf) = material.fresh()?;
                let (keyring, records) = Keyring::create_with(&root, None, kdf)?;
                Ok((root, keyring, records))
            })
            .await?;
            store.init_keyring(records).await?;
            tracing::info!("initialized a new keyring");
            Ok(KeyringHandle::new(root, keyring))
        }
        (None, Missing::Refuse) => Err(Error::database(
            "the database has no keyring (run aitokens init first)",
        )),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("key derivation task failed: {e}")))?
}
