//! `aitokens keys`: status, rotation (with its re-wrap job and a progress
//! bar), destruction of old KEK versions, rekey.
//!
//! They can run beside a serving `aitokens serve` on the same database
//! (SQLite arbitrates; the server picks up keyring changes within one flush
//! interval), except `rekey`, which holds the database alone and is refused
//! while a server has it open (see [`crate::store::DbLock`]).

use indicatif::{ProgressBar, ProgressStyle};

use super::{Offline, cli_event};
use crate::{
    config::Config,
    crypto::{KeySource, RootKey},
    error::{Error, Result},
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
    let total = u64::try_from(keys.status().await?.pending()).unwrap_or(0);
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "re-wrapping data keys {bar:40} {pos}/{len} ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        match keys.rewrap_step(batch).await? {
            0 => break,
            n => bar.inc(n as u64),
        }
    }
    bar.finish();
    let status = keys.status().await?;
    println!(
        "re-wrap complete: {} data keys under KEK version {}",
        total, status.current_version
    );
    print_status(&status);
    Ok(())
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
    let new_source = match new_root {
        NewRoot::KeyFile(path) if !path.exists() => {
            RootKey::create_file(&path)?;
            println!("created new root key file {}", path.display());
            KeySource::File(path)
        }
        NewRoot::KeyFile(path) => KeySource::File(path),
        NewRoot::PassphraseFile(path) => KeySource::PassphraseFile(path),
        NewRoot::PassphraseStdin => KeySource::PassphraseStdin,
    };
    let (root, kdf) = tokio::task::spawn_blocking({
        let material = new_source.load()?;
        move || material.fresh()
    })
    .await
    .map_err(|e| Error::Internal(format!("key derivation task failed: {e}")))??;
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
