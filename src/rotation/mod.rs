//! Key lifecycle: rotation with a resumable re-wrap job, destruction of
//! old KEK versions, rekey, and the status of all of it.
//!
//! - **Rotate** adds a KEK version, sealed under the root key, and makes it
//!   current at once; the re-wrap job then moves every data key to it in
//!   small transactions while the server serves. The job keeps no state of
//!   its own: "rows not under the current version" is the job, so it resumes
//!   after a crash (or `kill -9`) exactly where it stopped, in the server or
//!   in `aitokens keys rotate`, and two runners never conflict (each update is
//!   conditional on the version it read).
//! - **Destroy-old** deletes KEK versions no row references, then VACUUMs.
//! - **Rekey** re-seals only the keyring under a new root key, in one
//!   transaction: interrupted anywhere, the database opens with exactly one
//!   of the two root keys.
//! - **Shred** (`aitokens keys shred`) is rotate, the whole re-wrap,
//!   destroy-old and rekey in that order: once the old root key is
//!   destroyed, no key that remains opens a copy made before.
//!
//! A server notices a rotation or rekey made by another process (the CLI)
//! through [`KeyRotation::reload_if_changed`], which it calls on every
//! flush tick.

mod unlock;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
};

use crate::{
    crypto::{KeyringHandle, RootKey},
    error::{Error, Result},
    model::{AuditEvent, KdfParams, KeyringRecords},
    store::KeyringStore,
};

pub use unlock::{Legacy, Missing, chain_key, unlock};

/// Data keys re-wrapped per transaction.
pub const REWRAP_BATCH: usize = 256;

/// Where the keys stand: version numbers and row counts, never key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The version that wraps new data keys.
    pub current_version: u32,
    /// Every stored version and how many data keys it wraps.
    pub versions: Vec<(u32, i64)>,
}

/// Written out rather than derived, so that no field added later can reach
/// a log by accident.
impl std::fmt::Debug for KeyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStatus")
            .field("current_version", &self.current_version)
            .field("versions", &self.versions)
            .finish()
    }
}

impl KeyStatus {
    /// Data keys still to re-wrap.
    pub fn pending(&self) -> i64 {
        self.versions
            .iter()
            .filter(|(v, _)| *v != self.current_version)
            .map(|(_, rows)| rows)
            .sum()
    }

    /// Versions that could be destroyed now.
    pub fn destroyable(&self) -> Vec<u32> {
        self.versions
            .iter()
            .filter(|(v, rows)| *v != self.current_version && *rows == 0)
            .map(|(v, _)| *v)
            .collect()
    }
}

/// Key lifecycle operations over a store.
#[derive(Clone)]
pub struct KeyRotation {
    store: Arc<dyn KeyringStore>,
    handle: Arc<KeyringHandle>,
    /// Where the re-wrap job's current pass stands (row sequence).
    cursor: Arc<AtomicI64>,
    /// Rows already reported as damaged (by sequence).
    damaged: Arc<Mutex<HashSet<i64>>>,
}

impl KeyRotation {
    /// Operations on `store`'s keyring, unsealed in `handle`.
    pub fn new(store: Arc<dyn KeyringStore>, handle: Arc<KeyringHandle>) -> Self {
        Self {
            store,
            handle,
            cursor: Arc::default(),
            damaged: Arc::default(),
        }
    }

    /// The shared keyring handle.
    pub fn handle(&self) -> &Arc<KeyringHandle> {
        &self.handle
    }

    async fn records(&self) -> Result<KeyringRecords> {
        self.store
            .keyring()
            .await?
            .ok_or_else(|| Error::database("the database has no keyring (run aitokens init)"))
    }

    /// Current version and rows per version.
    pub async fn status(&self) -> Result<KeyStatus> {
        Ok(KeyStatus {
            current_version: self.records().await?.current_version,
            versions: self.store.kek_usage().await?,
        })
    }

    /// Adds a KEK version and makes it current; returns it. New data keys
    /// use it at once; [`KeyRotation::rewrap_step`] moves the existing ones.
    pub async fn rotate(&self, events: Vec<AuditEvent>) -> Result<u32> {
        // Refuse if the stored keyring is no longer sealed under the root key
        // held here (rekeyed by another process): a KEK sealed under a stale
        // root key would be unreadable later.
        let records = self.reload().await?;
        let (version, sealed) = self
            .handle
            .current()
            .new_kek(&self.handle.root(), &records.deployment_id)?;
        self.store.add_kek(records, version, sealed, events).await?;
        self.reload().await?;
        tracing::info!(version, "KEK rotated; re-wrapping data keys");
        Ok(version)
    }

    /// Re-wraps up to `batch` data keys in one transaction.
    ///
    /// Returns how many rows it looked at; 0 ends a pass over the table (the
    /// next call starts the next pass). A row whose data key no longer opens
    /// is reported once (by name, never bytes) and left on its version, so
    /// it cannot stall the rows after it; `keys status` keeps counting it,
    /// and destroy-old stays refused while it exists.
    pub async fn rewrap_step(&self, batch: usize) -> Result<usize> {
        let keyring = self.handle.current();
        let current = keyring.current_version();
        let after = self.cursor.load(Ordering::Acquire);
        let done = self
            .store
            .rewrap_batch(
                current,
                after,
                batch.max(1),
                Box::new(move |tenant, uid, from, wrapped| {
                    keyring.rewrap(tenant, uid, from, wrapped)
                }),
            )
            .await?;
        if !done.damaged.is_empty() {
            let mut reported = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
            for (seq, name) in &done.damaged {
                if reported.insert(*seq) {
                    tracing::error!(%name, "its data key does not open (tampered or corrupt): left out of the re-wrap");
                }
            }
        }
        let next = if done.scanned == 0 { 0 } else { done.last_seq };
        self.cursor.store(next, Ordering::Release);
        Ok(done.scanned)
    }

    /// Destroys every KEK version no data key uses; returns them.
    /// Each destroyed version is audited with a copy of `event` naming it.
    pub async fn destroy_old(&self, event: &AuditEvent) -> Result<Vec<u32>> {
        let status = self.status().await?;
        if status.pending() > 0 {
            return Err(Error::FailedPrecondition {
                reason: "REWRAP_PENDING",
                message: "old KEK versions still wrap data keys; wait for the re-wrap job (aitokens keys status)",
                violations: Vec::new(),
            });
        }
        let doomed = status.destroyable();
        for version in &doomed {
            let mut event = event.clone();
            event.resource = format!("keyring/kek/{version}");
            event.reason = format!("KEK version {version} destroyed");
            self.store.destroy_kek(*version, vec![event]).await?;
        }
        self.reload().await?;
        Ok(doomed)
    }

    /// Re-seals the keyring under a new root key (and, for a passphrase, new
    /// Argon2id parameters) in one transaction.
    pub async fn rekey(
        &self,
        new_root: RootKey,
        kdf: Option<KdfParams>,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        // Re-seal what is stored now (not a possibly stale memory copy), and
        // let the store refuse if it changes before the write.
        let records = self.reload().await?;
        let resealed = self.handle.current().resealed(&new_root, &records, kdf)?;
        self.store
            .replace_keyring(records, resealed.clone(), events)
            .await?;
        self.handle.rekeyed(new_root, &resealed)
    }

    /// Reloads the keyring if another process changed it (rotation, KEK
    /// destruction, rekey); returns whether it did.
    pub async fn reload_if_changed(&self) -> Result<bool> {
        let records = self.records().await?;
        if !self.handle.differs_from(&records) {
            return Ok(false);
        }
        self.handle.reload(&records)?;
        tracing::info!(current = records.current_version, "keyring reloaded");
        Ok(true)
    }

    /// Re-reads the stored keyring, puts it in force, and returns it.
    async fn reload(&self) -> Result<KeyringRecords> {
        let records = self.records().await?;
        self.handle.reload(&records)?;
        Ok(records)
    }
}
