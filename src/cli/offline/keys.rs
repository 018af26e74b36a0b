//! `aitokens keys`: status, rotation (with its re-wrap job and a progress
//! bar), destruction of old KEK versions, rekey, and shred (all of them in
//! the order that makes removed tokens unrecoverable from old copies).
//!
//! They can run beside a serving `aitokens serve` on the same database
//! (SQLite arbitrates; the server picks up keyring changes within one flush
//! interval), except `rekey` and `shred`, which hold the database alone and
//! are refused while a server has it open (see [`crate::store::DbLock`]).

use indicatif::{ProgressBar, ProgressStyle};

use super::{Offline, cli_event};
use crate::{
    config::Config,
    crypto::{KeySource, RootKey},
    error::{Error, Result},
    model::{KdfParams, KeyringRecords},
    rotation::KeyStatus,
};

/// `aitokens keys status`.
pub async fn status(config: &Config) -> Result<()> {
    let offline = Offline::from_config(config).await?;
    print_status(&offline.keys.status().await?);
    Ok(())
}

/// `aitokens keys rotate`: rotates, then runs the re-wrap job to the end
/// with a progress bar. If a rotation is already pending (an interrupted
/// run), only resumes the job.
pub async fn rotate(config: &Config, resume_only: bool, batch: usize) -> Result<()> {
    let offline = Offline::from_config(config).await?;
    let keys = &offline.keys;
    let before = keys.status().await?;
    if !resume_only && before.pending() == 0 {
        let event = cli_event("aitokens keys rotate", "keyring", "KEK rotated".into());
        let version = keys.rotate(vec![event]).await?;
        println!("added KEK version {version}; new tokens use it now");
    } else if before.pending() > 0 {
        println!(
            "resuming the re-wrap job to KEK version {}",
            before.current_version
        );
    }
    let total = rewrap_to_end(&offline, batch).await?;
    let status = keys.status().await?;
    println!(
        "re-wrap complete: {} data keys under KEK version {}",
        total, status.current_version
    );
    print_status(&status);
    Ok(())
}

/// Runs the re-wrap job over every data key to the end, with a progress
/// bar; returns how many were pending when it started. The job runs in one
/// process at a time: while a server replica holds it (PostgreSQL), this
/// follows its progress, and takes the job over if that replica lets go.
async fn rewrap_to_end(offline: &Offline, batch: usize) -> Result<u64> {
    let keys = &offline.keys;
    let total = u64::try_from(keys.status().await?.pending()).unwrap_or(0);
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "re-wrapping data keys {bar:40} {pos}/{len} ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut following = false;
    loop {
        let Some(_lease) = offline.store.lease("rewrap").await? else {
            if !following {
                bar.println("a server holds the re-wrap job; following its progress");
                following = true;
            }
            let pending = u64::try_from(keys.status().await?.pending()).unwrap_or(0);
            if pending == 0 {
                break;
            }
            bar.set_position(total.saturating_sub(pending));
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        };
        loop {
            match keys.rewrap_step(batch).await? {
                0 => break,
                n => bar.inc(n as u64),
            }
        }
        break;
    }
    bar.finish();
    Ok(total)
}

/// `aitokens keys destroy-old`.
pub async fn destroy_old(config: &Config) -> Result<()> {
    let offline = Offline::from_config(config).await?;
    let event = cli_event(
        "aitokens keys destroy-old",
        "keyring",
        "old KEK versions destroyed".into(),
    );
    let destroyed = offline.keys.destroy_old(&event).await?;
    println!("destroyed KEK versions {destroyed:?}");
    print_status(&offline.keys.status().await?);
    Ok(())
}

/// Where the new root key of `aitokens keys rekey` comes from.
#[derive(Debug)]
pub enum NewRoot {
    /// A key file (created, mode 0600, if absent).
    KeyFile(std::path::PathBuf),
    /// A file whose first line is the new passphrase.
    PassphraseFile(std::path::PathBuf),
    /// The first line of standard input.
    PassphraseStdin,
}

/// `aitokens keys rekey`: re-seals the keyring under a new root key,
/// holding the database alone (refused while a server has it open).
pub async fn rekey(config: &Config, new_root: NewRoot) -> Result<()> {
    let offline = Offline::from_config_exclusive(config).await?;
    let current = stored_keyring(&offline).await?;
    let (new_source, root, kdf) = new_root_key(new_root, &current, false).await?;
    let event = cli_event(
        "aitokens keys rekey",
        "keyring",
        format!("root key changed to {new_source:?}"),
    );
    offline.keys.rekey(root, kdf, vec![event]).await?;
    println!(
        "keyring re-sealed under the new root key ({new_source:?}); update the config to use it"
    );
    Ok(())
}

/// `aitokens keys shred`: crypto-shredding in one command, holding the
/// database alone. Rotate, re-wrap every data key, destroy every old KEK
/// version, then rekey to a new root key, so that nothing in the live
/// database is sealed under the old root key any more, and nothing the old
/// root key opens (an old copy's keyring) opens anything still live. Says
/// which old key to destroy: until it is destroyed, old copies still open.
pub async fn shred(config: &Config, new_root: NewRoot, batch: usize) -> Result<()> {
    let old_source = config.store.key_source()?;
    let offline = Offline::from_config_exclusive(config).await?;
    let keys = &offline.keys;
    let current = stored_keyring(&offline).await?;
    // Before anything changes: a "new" key the old copies open is refused.
    let (new_source, root, kdf) = new_root_key(new_root, &current, true).await?;
    let event = |what: String| cli_event("aitokens keys shred", "keyring", what);

    let old_versions = current.versions();
    let version = keys.rotate(vec![event("KEK rotated".into())]).await?;
    println!("added KEK version {version}; re-wrapping every data key to it");
    rewrap_to_end(&offline, batch).await?;
    let destroyed = keys
        .destroy_old(&event("old KEK versions destroyed".into()))
        .await?;
    let left = keys.status().await?;
    if left.versions.iter().any(|(v, _)| *v != version) {
        return Err(Error::database(format!(
            "KEK versions other than {version} remain ({:?}); the root key was not changed",
            left.versions
        )));
    }
    println!("destroyed KEK versions {destroyed:?} (held before: {old_versions:?})");
    keys.rekey(
        root,
        kdf,
        vec![event(format!("root key changed to {new_source:?}"))],
    )
    .await?;
    print_shredded(&old_source, &new_source, version);
    Ok(())
}

/// What `keys shred` achieved, and the one step left to the operator.
fn print_shredded(old: &KeySource, new: &KeySource, version: u32) {
    let destroy = match old {
        KeySource::File(path) => format!(
            "the old root key file {0}: delete it (e.g. shred -u {0}) and every copy of it",
            path.display()
        ),
        KeySource::Env { name, .. } => {
            format!("the old root key in environment variable {name}, wherever it is stored")
        }
        KeySource::PassphraseFile(path) => format!(
            "the old passphrase: delete {} and every copy of it, and forget the passphrase",
            path.display()
        ),
        KeySource::PassphraseStdin | KeySource::PassphrasePrompt => {
            "the old passphrase: forget it and destroy every written copy".to_owned()
        }
    };
    println!(
        "shred complete: every data key is under KEK version {version}, the only one left, \
         sealed under the new root key ({new:?}); point the config's [store] at it before starting the server.\n\
         Now destroy {destroy}.\n\
         Until it is destroyed, copies and backups of this database made before now still \
         open with it, with every token they hold (removed ones too); once it is destroyed, \
         they can no longer be opened, and tokens removed before now cannot be recovered \
         from them or from old disk blocks."
    );
}

/// The keyring as stored now.
async fn stored_keyring(offline: &Offline) -> Result<KeyringRecords> {
    offline
        .store
        .keyring()
        .await?
        .ok_or_else(|| Error::database("the database has no keyring (run aitokens init)"))
}

/// The new root key of `rekey` and `shred`, from where the operator said;
/// a key file that does not exist is created (mode 0600, naming this
/// deployment). With `must_be_new`, refused if it opens the keyring as
/// stored now (the same key, or the same passphrase): then whatever the old
/// one opens, it opens too.
async fn new_root_key(
    new_root: NewRoot,
    current: &KeyringRecords,
    must_be_new: bool,
) -> Result<(KeySource, RootKey, Option<KdfParams>)> {
    let new_source = match new_root {
        NewRoot::KeyFile(path) if !path.exists() => {
            RootKey::create_file_for(&path, Some(&current.deployment_id))?;
            println!("created new root key file {}", path.display());
            KeySource::File(path)
        }
        NewRoot::KeyFile(path) => KeySource::File(path),
        NewRoot::PassphraseFile(path) => KeySource::PassphraseFile(path),
        NewRoot::PassphraseStdin => KeySource::PassphraseStdin,
    };
    let material = new_source.load()?;
    let current = current.clone();
    let (root, kdf) = tokio::task::spawn_blocking(move || {
        if must_be_new && material.opens(&current)? {
            return Err(Error::master_key(
                "the new root key opens this database already (it is the current key or \
                 passphrase); choose a new one",
            ));
        }
        material.fresh()
    })
    .await
    .map_err(|e| Error::Internal(format!("key derivation task failed: {e}")))??;
    Ok((new_source, root, kdf))
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
