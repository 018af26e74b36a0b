//! Operator commands that work on the database directly: key status,
//! rotation (with its re-wrap job and a progress bar), destruction of old KEK
//! versions, rekey, backup and restore.
//!
//! They can run beside a serving `aitokens serve` on the same database
//! (SQLite arbitrates; the server picks up keyring changes within one flush
//! interval), except `rekey` and `restore`, which want the server stopped.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    audit::{AuditEvent, Outcome},
    config::Config,
    crypto::{KeySource, Keyring},
    error::{Error, Result},
    keys::{KeyStatus, KeyringHandle, Keys},
    store::{SqliteStore, TokenStore},
};

/// A database opened with its root key, for offline operations.
pub struct Offline {
    /// The store.
    pub store: Arc<dyn TokenStore>,
    /// Key operations on it.
    pub keys: Keys,
}

impl Offline {
    /// Opens `database` and unseals its keyring with `source`.
    pub fn open(database: &Path, source: &KeySource) -> Result<Self> {
        let material = source.load()?;
        let store = SqliteStore::open(database)?;
        let records = store.keyring()?.ok_or_else(|| {
            Error::Startup(format!(
                "{} has no keyring (run aitokens init)",
                database.display()
            ))
        })?;
        let root = material.unlock(&records)?;
        let keyring = Keyring::open(&root, &records)?;
        let store: Arc<dyn TokenStore> = Arc::new(store);
        let keys = Keys::new(store.clone(), Arc::new(KeyringHandle::new(root, keyring)));
        Ok(Self { store, keys })
    }

    /// Opens the database a config names, with its key source.
    pub fn from_config(config: &Config) -> Result<Self> {
        Self::open(&config.store.database, &config.store.key_source()?)
    }

    /// Opens every sealed value; returns how many opened. Any that fails is
    /// an error naming the token (never its value).
    pub fn verify_every_value(&self) -> Result<usize> {
        let keyring = self.keys.handle().current();
        let mut after = 0;
        let mut count = 0;
        loop {
            let rows = self.store.scan_sealed(after, 500)?;
            let Some((last, ..)) = rows.last() else {
                return Ok(count);
            };
            after = *last;
            for (_, name, token) in &rows {
                keyring
                    .open_value(name.tenant.as_str(), &token.uid, &token.sealed)
                    .map_err(|_| {
                        Error::Startup(format!(
                            "{name} does not open: the backup is damaged or the key is wrong"
                        ))
                    })?;
                count += 1;
            }
        }
    }
}

/// An audit event for a command run on this machine.
pub fn cli_event(command: &'static str, resource: &str, reason: String) -> AuditEvent {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    AuditEvent {
        time: SystemTime::now(),
        actor: format!("cli:{user}"),
        peer: "local".into(),
        method: command.into(),
        tenant: None,
        resource: resource.into(),
        outcome: Outcome::Allowed,
        reason,
    }
}

/// Prints key status in a form people read.
pub fn print_status(status: &KeyStatus) {
    println!("current KEK version: {}", status.current_version);
    for (version, rows) in &status.versions {
        let mark = if *version == status.current_version {
            " (current)"
        } else {
            ""
        };
        println!("  version {version}{mark}: {rows} data keys");
    }
    match status.pending() {
        0 => println!("re-wrap job: idle (every data key is under the current version)"),
        n => println!("re-wrap job: {n} data keys still to re-wrap"),
    }
    let destroyable = status.destroyable();
    if !destroyable.is_empty() {
        println!("destroyable now (aitokens keys destroy-old): {destroyable:?}");
    }
}

/// Rotates, then runs the re-wrap job to the end with a progress bar. If a
/// rotation is already pending (an interrupted run), only resumes the job.
pub fn rotate(offline: &Offline, resume_only: bool, batch: usize) -> Result<KeyStatus> {
    let before = offline.keys.status()?;
    if !resume_only && before.pending() == 0 {
        let version = offline.keys.rotate(&[cli_event(
            "aitokens keys rotate",
            "keyring",
            "KEK rotated".into(),
        )])?;
        println!("added KEK version {version}; new tokens use it now");
    } else if before.pending() > 0 {
        println!(
            "resuming the re-wrap job to KEK version {}",
            before.current_version
        );
    }
    let total = offline.keys.status()?.pending().max(0) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "re-wrapping data keys {bar:40} {pos}/{len} ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        match offline.keys.rewrap_step(batch)? {
            0 => break,
            n => bar.inc(n as u64),
        }
    }
    bar.finish();
    let status = offline.keys.status()?;
    println!(
        "re-wrap complete: {} data keys under KEK version {}",
        total, status.current_version
    );
    Ok(status)
}

/// Backs up the database (online: the server may be serving) to `out`.
pub fn backup(config: &Config, out: &Path) -> Result<()> {
    if out.exists() {
        return Err(Error::Startup(format!(
            "{} exists; choose a new file",
            out.display()
        )));
    }
    crate::store::backup_file(&config.store.database, out)?;
    println!(
        "backed up {} to {} (values stay encrypted; the root key is not in it: keep it apart)",
        config.store.database.display(),
        out.display()
    );
    Ok(())
}

/// Restores `from` over `db` after checking that the root key opens its
/// keyring and every value in it; replaces `db` atomically.
pub fn restore(from: &Path, db: &Path, source: &KeySource) -> Result<usize> {
    let staging = PathBuf::from(format!("{}.restore", db.display()));
    let _ = std::fs::remove_file(&staging);
    std::fs::copy(from, &staging)
        .map_err(|e| Error::Startup(format!("reading backup {}: {e}", from.display())))?;
    let checked = (|| {
        let offline = Offline::open(&staging, source)?;
        offline.verify_every_value()
    })();
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
    std::fs::rename(&staging, db)
        .map_err(|e| Error::Startup(format!("replacing {}: {e}", db.display())))?;
    Ok(count)
}
