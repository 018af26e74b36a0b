//! The unsealed keyring in force, shared by everything that seals or opens,
//! and replaced as a whole when the stored keyring changes (rotation, KEK
//! destruction, rekey; by this process or another).

use std::sync::{Arc, RwLock};

use super::{Keyring, RootKey};
use crate::{
    error::{Error, Result},
    model::KeyringRecords,
};

/// The keyring in force, and the root key that seals new KEKs.
pub struct KeyringHandle {
    root: RwLock<Arc<RootKey>>,
    keyring: RwLock<Arc<Keyring>>,
}

impl KeyringHandle {
    /// Holds `keyring`, unsealed with `root`.
    pub fn new(root: RootKey, keyring: Keyring) -> Self {
        Self {
            root: RwLock::new(Arc::new(root)),
            keyring: RwLock::new(Arc::new(keyring)),
        }
    }

    /// Unseals `records` with the root key `root` (refusing a wrong key
    /// before anything else is tried) and holds the result.
    pub fn open(root: RootKey, records: &KeyringRecords) -> Result<Self> {
        let keyring = Keyring::open(&root, records)?;
        Ok(Self::new(root, keyring))
    }

    /// The keyring in force now.
    pub fn current(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The root key held now.
    pub fn root(&self) -> Arc<RootKey> {
        self.root.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `records` (as stored now) differ from the keyring held here
    /// in its current version or its set of versions.
    pub fn differs_from(&self, records: &KeyringRecords) -> bool {
        let keyring = self.current();
        records.current_version != keyring.current_version()
            || records.versions() != keyring.versions()
    }

    /// Unseals `records` (read from the store just now) with the root key
    /// held here and puts them in force.
    pub fn reload(&self, records: &KeyringRecords) -> Result<()> {
        let keyring = Keyring::open(&self.root(), records).map_err(|e| match e {
            // The root key in memory no longer opens the stored keyring: it
            // was rekeyed by another process. Keep serving with what we have.
            Error::Operator(why) => Error::Internal(format!("keyring reload: {why}")),
            other => other,
        })?;
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keyring);
        Ok(())
    }

    /// Puts a new root key in force (after the keyring was re-sealed under
    /// it), then reloads `records` with it.
    pub fn rekeyed(&self, root: RootKey, records: &KeyringRecords) -> Result<()> {
        *self.root.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(root);
        self.reload(records)
    }
}

impl std::fmt::Debug for KeyringHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringHandle")
            .field("current_version", &self.current().current_version())
            .finish_non_exhaustive()
    }
}
