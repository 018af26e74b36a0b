//! Commands that work on the database directly, without a running server:
//! `init`, `keys`, `backup`, `restore` and `audit verify`. They run before
//! the async runtime starts (SQLite and Argon2id block).

use std::{path::PathBuf, process::ExitCode};

use clap::{ArgGroup, Args, Subcommand};

use crate::{
    Error, Result,
    config::Config,
    crypto::{KeySource, Keyring, RootKey, RootMaterial, new_deployment_id},
    ops,
    store::{AuditVerdict, SqliteStore, TokenStore, verify_audit_file},
};

/// Options of `aitokens init`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("root").required(true).args(["key_file", "passphrase_file", "passphrase_stdin"])))]
pub struct InitArgs {
    /// The database file to create.
    #[arg(long)]
    db: PathBuf,
    /// Root key file: used if it exists, else created (mode 0600).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// File whose first line is the passphrase.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Read the passphrase from the first line of standard input.
    #[arg(long)]
    passphrase_stdin: bool,
}

/// Options of `aitokens backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The server config file (names the database).
    #[arg(long, short)]
    config: PathBuf,
    /// Where to write the backup (must not exist).
    #[arg(long)]
    out: PathBuf,
}

/// Options of `aitokens restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The server config file (root key source; database unless --db).
    #[arg(long, short)]
    config: PathBuf,
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// The database to replace (default: the config's).
    #[arg(long)]
    db: Option<PathBuf>,
}

/// `aitokens keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// KEK versions, data keys per version, re-wrap job state.
    Status {
        /// The server config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Add a KEK version (new tokens use it at once) and re-wrap every data
    /// key to it, with progress. Safe beside a running server; if
    /// interrupted, run it again (or let the server finish) to resume.
    Rotate {
        /// The server config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only finish an interrupted re-wrap; do not add a version.
        #[arg(long)]
        resume: bool,
        /// Data keys re-wrapped per transaction (smaller: shorter write locks).
        #[arg(long, default_value_t = crate::keys::REWRAP_BATCH)]
        batch_size: usize,
    },
    /// Destroy KEK versions no data key uses any more (crypto-shredding of
    /// what was removed while they were current).
    DestroyOld {
        /// The server config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Change the root key: re-seal only the keyring, atomically. Stop the
    /// server first, then point the config at the new key.
    #[command(group(ArgGroup::new("new_root").required(true).args(["new_key_file", "new_passphrase_file", "new_passphrase_stdin"])))]
    Rekey {
        /// The server config file (its key source opens the keyring now).
        #[arg(long, short)]
        config: PathBuf,
        /// New key file (created, mode 0600, if absent).
        #[arg(long)]
        new_key_file: Option<PathBuf>,
        /// File whose first line is the new passphrase.
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
        /// Read the new passphrase from standard input.
        #[arg(long)]
        new_passphrase_stdin: bool,
    },
}

/// `aitokens audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain: exits 0 if every record is in place
    /// and unaltered, 1 naming the first record where the chain breaks.
    Verify {
        /// The database file (no key is needed).
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        db: Option<PathBuf>,
        /// Or the server config file, to use its database.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Runs an offline command; prints errors and maps them to exit code 1.
pub fn exit_code(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aitokens: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `aitokens init`.
pub fn init_command(args: InitArgs) -> Result<()> {
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
            return Err(Error::Startup(
                "choose --key-file, --passphrase-file or --passphrase-stdin".into(),
            ));
        }
    };
    init(&db, source)
}

/// `aitokens backup`.
pub fn backup_command(args: BackupArgs) -> Result<()> {
    ops::backup(&Config::load(&args.config)?, &args.out)
}

/// `aitokens restore`.
pub fn restore_command(args: RestoreArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let db = args.db.unwrap_or_else(|| config.store.database.clone());
    let count = ops::restore(&args.from, &db, &config.store.key_source()?)?;
    println!(
        "restored {} from {}: {count} tokens, every value opens",
        db.display(),
        args.from.display()
    );
    Ok(())
}

/// `aitokens audit ...`.
pub fn audit_command(command: AuditCommand) -> Result<()> {
    let AuditCommand::Verify { db, config } = command;
    let db = match (db, config) {
        (Some(db), _) => db,
        (None, Some(config)) => Config::load(&config)?.store.database,
        (None, None) => return Err(Error::Startup("pass --db or --config".into())),
    };
    match verify_audit_file(&db)? {
        AuditVerdict::Intact { records } => {
            println!(
                "audit chain intact: {records} records verified in {}",
                db.display()
            );
            Ok(())
        }
        AuditVerdict::Broken { seq, reason } => Err(Error::Startup(format!(
            "audit chain broken at record {seq}: {reason} ({})",
            db.display()
        ))),
    }
}

/// `aitokens keys ...`.
pub fn keys(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Status { config } => {
            let offline = ops::Offline::from_config(&Config::load(&config)?)?;
            ops::print_status(&offline.keys.status()?);
            Ok(())
        }
        KeysCommand::Rotate {
            config,
            resume,
            batch_size,
        } => {
            let offline = ops::Offline::from_config(&Config::load(&config)?)?;
            ops::print_status(&ops::rotate(&offline, resume, batch_size)?);
            Ok(())
        }
        KeysCommand::DestroyOld { config } => {
            let offline = ops::Offline::from_config(&Config::load(&config)?)?;
            let event = ops::cli_event(
                "aitokens keys destroy-old",
                "keyring",
                "old KEK versions destroyed".into(),
            );
            let destroyed = offline.keys.destroy_old(&event)?;
            println!("destroyed KEK versions {destroyed:?}");
            ops::print_status(&offline.keys.status()?);
            Ok(())
        }
        KeysCommand::Rekey {
            config,
            new_key_file,
            new_passphrase_file,
            new_passphrase_stdin,
        } => {
            let offline = ops::Offline::from_config(&Config::load(&config)?)?;
            let new_source = match (new_key_file, new_passphrase_file) {
                (Some(path), _) if !path.exists() => {
                    RootKey::create_file(&path)?;
                    println!("created new root key file {}", path.display());
                    KeySource::File(path)
                }
                (Some(path), _) => KeySource::File(path),
                (_, Some(path)) => KeySource::PassphraseFile(path),
                _ if new_passphrase_stdin => KeySource::PassphraseStdin,
                _ => return Err(Error::Startup("choose the new root key".into())),
            };
            let (root, kdf) = new_source.load()?.fresh()?;
            let event = ops::cli_event(
                "aitokens keys rekey",
                "keyring",
                format!("root key changed to {new_source:?}"),
            );
            offline.keys.rekey(root, kdf, &[event])?;
            println!(
                "keyring re-sealed under the new root key ({new_source:?}); update the config to use it"
            );
            Ok(())
        }
    }
}

/// `aitokens init`: a new database whose keyring is sealed under the chosen
/// root key. A key file created here records the new deployment's id.
fn init(db: &std::path::Path, source: KeySource) -> Result<()> {
    if db.exists() && std::fs::metadata(db).map(|m| m.len() > 0).unwrap_or(false) {
        let store = SqliteStore::open(db)?;
        if store.keyring()?.is_some() {
            return Err(Error::Startup(format!(
                "{} is already initialized",
                db.display()
            )));
        }
    }
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
    let store = SqliteStore::open(db)?;
    store.init_keyring(&records)?;
    println!(
        "initialized {} with KEK version 1 ({:?})",
        db.display(),
        source
    );
    Ok(())
}
