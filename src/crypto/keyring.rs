//! The keyring: versioned KEKs sealed under the root key, and the per-token
//! seal/open that uses them.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::{RootKey, SecretKey, aad, chain::ChainKey, fill_random};
use crate::{
    error::{Error, Result},
    model::{KdfParams, KeyringRecords, SealedValue, TokenUid},
};

/// Plaintext of the key-check value sealed under the root key.
const KEY_CHECK: &[u8] = b"aitokens key check";
/// Length of the random id that ties a keyring to one database.
const DEPLOYMENT_ID_LEN: usize = 16;

/// A fresh random deployment id.
pub fn new_deployment_id() -> Result<Vec<u8>> {
    let mut id = vec![0u8; DEPLOYMENT_ID_LEN];
    fill_random(&mut id)?;
    Ok(id)
}

/// The unsealed keyring, held in memory for the life of the server.
pub struct Keyring {
    current_version: u32,
    keks: BTreeMap<u32, SecretKey>,
    /// The secret of the audit chain; `None` until a keyring made before
    /// chains were keyed has been given one.
    audit_key: Option<SecretKey>,
}

impl Keyring {
    /// A new keyring with KEK version 1, for a new database.
    pub fn create(root: &RootKey) -> Result<(Self, KeyringRecords)> {
        Self::create_with(root, None, None)
    }

    /// A new keyring, with the deployment id and KDF parameters to record.
    pub fn create_with(
        root: &RootKey,
        deployment: Option<Vec<u8>>,
        kdf: Option<KdfParams>,
    ) -> Result<(Self, KeyringRecords)> {
        let deployment_id = match deployment {
            Some(id) => id,
            None => new_deployment_id()?,
        };
        let key_check = root
            .key()
            .seal(&aad::key_check(&deployment_id), KEY_CHECK)?;
        let version = 1;
        let kek = SecretKey::generate()?;
        let sealed = root
            .key()
            .seal(&aad::kek(&deployment_id, version), kek.expose())?;
        let audit_key = SecretKey::generate()?;
        let sealed_audit_key = root
            .key()
            .seal(&aad::audit_key(&deployment_id), audit_key.expose())?;
        let records = KeyringRecords {
            deployment_id,
            key_check,
            current_version: version,
            sealed_keks: vec![(version, sealed)],
            kdf,
            sealed_audit_key: Some(sealed_audit_key),
        };
        let keyring = Self {
            current_version: version,
            keks: BTreeMap::from([(version, kek)]),
            audit_key: Some(audit_key),
        };
        Ok((keyring, records))
    }

    /// Unseals a stored keyring. A wrong root key is reported as such, before
    /// anything else is tried.
    pub fn open(root: &RootKey, records: &KeyringRecords) -> Result<Self> {
        let check = root
            .key()
            .open(&aad::key_check(&records.deployment_id), &records.key_check)
            .map_err(|_| {
                Error::master_key(
                    "the master key does not match this database (key check failed); \
                     start with the master key the database was created with",
                )
            })?;
        if check.as_slice() != KEY_CHECK {
            return Err(Error::database("the database key check is corrupt"));
        }
        let mut keks = BTreeMap::new();
        for (version, sealed) in &records.sealed_keks {
            let raw = root
                .key()
                .open(&aad::kek(&records.deployment_id, *version), sealed)
                .map_err(|_| {
                    Error::database(format!(
                        "keyring entry for KEK version {version} failed its integrity check \
                         (the database was tampered with or is corrupt)"
                    ))
                })?;
            let kek = SecretKey::from_slice(&raw).ok_or_else(|| {
                Error::database(format!(
                    "keyring entry for KEK version {version} has a bad length"
                ))
            })?;
            keks.insert(*version, kek);
        }
        if !keks.contains_key(&records.current_version) {
            return Err(Error::database(format!(
                "the keyring has no KEK for its current version {}",
                records.current_version
            )));
        }
        let audit_key =
            match &records.sealed_audit_key {
                None => None,
                Some(sealed) => {
                    let raw = root
                        .key()
                        .open(&aad::audit_key(&records.deployment_id), sealed)
                        .map_err(|_| {
                            Error::database(
                                "the keyring's audit key failed its integrity check \
                             (the database was tampered with or is corrupt)",
                            )
                        })?;
                    Some(SecretKey::from_slice(&raw).ok_or_else(|| {
                        Error::database("the keyring's audit key has a bad length")
                    })?)
                }
            };
        Ok(Self {
            current_version: records.current_version,
            keks,
            audit_key,
        })
    }

    /// The keys of the audit chain, once the keyring has an audit key.
    pub fn chain_key(&self) -> Option<ChainKey> {
        self.audit_key.as_ref().map(ChainKey::derive)
    }

    /// A new audit key for a keyring made before chains were keyed, sealed
    /// under `root` for `deployment`, to store before it is used.
    pub fn new_audit_key(root: &RootKey, deployment: &[u8]) -> Result<Vec<u8>> {
        let key = SecretKey::generate()?;
        root.key().seal(&aad::audit_key(deployment), key.expose())
    }

    /// Seals a new token value under a fresh data key wrapped by the current KEK.
    pub fn seal_value(&self, tenant: &str, uid: &TokenUid, value: &[u8]) -> Result<SealedValue> {
        let kek_version = self.current_version;
        let kek = self.kek(kek_version)?;
        let data_key = SecretKey::generate()?;
        let wrapped_data_key =
            kek.seal(&aad::data_key(tenant, uid, kek_version), data_key.expose())?;
        let value_ciphertext = data_key.seal(&aad::value(tenant, uid), value)?;
        Ok(SealedValue {
            kek_version,
            wrapped_data_key,
            value_ciphertext,
        })
    }

    /// Opens a stored value. Uses exactly the KEK version the row names; any
    /// mismatch of row, tenant, version or bytes is [`Error::DataLoss`].
    pub fn open_value(
        &self,
        tenant: &str,
        uid: &TokenUid,
        sealed: &SealedValue,
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.open_parts(
            tenant,
            uid,
            sealed.kek_version,
            &sealed.wrapped_data_key,
            &sealed.value_ciphertext,
        )
    }

    /// [`Keyring::open_value`] over borrowed fields (the resolve cache keeps
    /// them in one buffer).
    pub fn open_parts(
        &self,
        tenant: &str,
        uid: &TokenUid,
        kek_version: u32,
        wrapped_data_key: &[u8],
        value_ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let kek = self.kek(kek_version).map_err(|_| Error::DataLoss)?;
        let raw_key = kek.open(&aad::data_key(tenant, uid, kek_version), wrapped_data_key)?;
        let data_key = SecretKey::from_slice(&raw_key).ok_or(Error::DataLoss)?;
        data_key.open(&aad::value(tenant, uid), value_ciphertext)
    }

    /// The version that seals new data keys.
    pub fn current_version(&self) -> u32 {
        self.current_version
    }

    /// Whether KEK `version` is held.
    pub fn has_version(&self, version: u32) -> bool {
        self.keks.contains_key(&version)
    }

    /// The versions held.
    pub fn versions(&self) -> Vec<u32> {
        self.keks.keys().copied().collect()
    }

    /// A new KEK version sealed under `root` for `deployment`: the version
    /// number and its sealed form, to store before it is used.
    pub fn new_kek(&self, root: &RootKey, deployment: &[u8]) -> Result<(u32, Vec<u8>)> {
        let version = self.keks.keys().next_back().copied().unwrap_or(0) + 1;
        let kek = SecretKey::generate()?;
        let sealed = root
            .key()
            .seal(&aad::kek(deployment, version), kek.expose())?;
        Ok((version, sealed))
    }

    /// Re-seals every KEK and the key check under `new_root` (rekey): the
    /// keyring records to store, replacing the old ones in one transaction.
    pub fn resealed(
        &self,
        new_root: &RootKey,
        records: &KeyringRecords,
        kdf: Option<KdfParams>,
    ) -> Result<KeyringRecords> {
        let deployment = &records.deployment_id;
        let sealed_keks = self
            .keks
            .iter()
            .map(|(version, kek)| {
                Ok((
                    *version,
                    new_root
                        .key()
                        .seal(&aad::kek(deployment, *version), kek.expose())?,
                ))
            })
            .collect::<Result<_>>()?;
        let sealed_audit_key = self
            .audit_key
            .as_ref()
            .map(|key| {
                new_root
                    .key()
                    .seal(&aad::audit_key(deployment), key.expose())
            })
            .transpose()?;
        Ok(KeyringRecords {
            deployment_id: deployment.clone(),
            key_check: new_root
                .key()
                .seal(&aad::key_check(deployment), KEY_CHECK)?,
            current_version: self.current_version,
            sealed_keks,
            kdf,
            sealed_audit_key,
        })
    }

    /// Moves a data key from the KEK version that wraps it to the current
    /// one. Returns the new wrapped key.
    pub fn rewrap(
        &self,
        tenant: &str,
        uid: &TokenUid,
        from_version: u32,
        wrapped: &[u8],
    ) -> Result<Vec<u8>> {
        let old = self.kek(from_version).map_err(|_| Error::DataLoss)?;
        let raw = old.open(&aad::data_key(tenant, uid, from_version), wrapped)?;
        let current = self.kek(self.current_version)?;
        current.seal(&aad::data_key(tenant, uid, self.current_version), &raw)
    }

    fn kek(&self, version: u32) -> Result<&SecretKey> {
        self.keks
            .get(&version)
            .ok_or_else(|| Error::Internal(format!("no KEK version {version} in the keyring")))
    }
}
