//! Operator commands that work on the database directly, without a
//! running server: `init`, `keys`, `backup`, `restore` and `audit verify`.

mod audit;
mod files;
mod keys;
mod open;

use std::{path::PathBuf, process::ExitCode, time::SystemTime};

use clap::{ArgGroup, Args, Subcommand};

pub use open::Offline;

use crate::{
    Result,
    config::Config,
    model::{AuditEvent, Outcome},
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

/// Options of `aitokens restore` (refused while a server holds the database).
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
        #[arg(long, default_value_t = crate::rotation::REWRAP_BATCH)]
        batch_size: usize,
    },
    /// Destroy KEK versions no data key uses any more: the live database
    /// can no longer open what they wrapped. Copies made before still can,
    /// with the unchanged root key; `keys shred` closes that.
    DestroyOld {
        /// The server config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Change the root key: re-seal only the keyring, atomically. Refused
    /// while a server holds the database; point the config at the new key
    /// before starting it again.
    Rekey {
        /// The server config file (its key source opens the keyring now).
        #[arg(long, short)]
        config: PathBuf,
        /// The new root key.
        #[command(flatten)]
        new_root: NewRootArgs,
    },
    /// Crypto-shredding in one command: rotate, re-wrap every data key,
    /// destroy every old KEK version, then rekey to a new root key. Once the
    /// old root key is destroyed (the command names it), copies and backups
    /// made before cannot be opened, and removed tokens cannot be recovered
    /// from them or from old disk blocks. Refused while a server holds the
    /// database.
    Shred {
        /// The server config file (its key source is the old root key).
        #[arg(long, short)]
        config: PathBuf,
        /// The new root key.
        #[command(flatten)]
        new_root: NewRootArgs,
        /// Data keys re-wrapped per transaction.
        #[arg(long, default_value_t = crate::rotation::REWRAP_BATCH)]
        batch_size: usize,
    },
}

/// Where the new root key of `keys rekey` and `keys shred` comes from.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct NewRootArgs {
    /// New key file (created, mode 0600, if absent).
    #[arg(long)]
    new_key_file: Option<PathBuf>,
    /// File whose first line is the new passphrase (mode 0600).
    #[arg(long)]
    new_passphrase_file: Option<PathBuf>,
    /// Read the new passphrase from standard input.
    #[arg(long)]
    new_passphrase_stdin: bool,
}

impl NewRootArgs {
    fn into_new_root(self) -> Result<keys::NewRoot> {
        match (self.new_key_file, self.new_passphrase_file) {
            (Some(path), _) => Ok(keys::NewRoot::KeyFile(path)),
            (_, Some(path)) => Ok(keys::NewRoot::PassphraseFile(path)),
            _ if self.new_passphrase_stdin => Ok(keys::NewRoot::PassphraseStdin),
            _ => Err(crate::Error::config("choose the new root key")),
        }
    }
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
pub async fn run(command: OfflineCommand) -> ExitCode {
    let result = match command {
        OfflineCommand::Init(args) => files::init(args).await,
        OfflineCommand::Keys(command) => run_keys(command).await,
        OfflineCommand::Backup(args) => files::backup(args).await,
        OfflineCommand::Restore(args) => files::restore(args).await,
        OfflineCommand::Audit(command) => audit::run(command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let shown = e.to_string();
            eprintln!("aitokens: error: {}", super::printable::printable(&shown));
            ExitCode::FAILURE
        }
    }
}

/// The offline commands, as the top-level command line hands them over.
#[derive(Debug)]
pub enum OfflineCommand {
    /// `aitokens init`.
    Init(InitArgs),
    /// `aitokens keys ...`.
    Keys(KeysCommand),
    /// `aitokens backup`.
    Backup(BackupArgs),
    /// `aitokens restore`.
    Restore(RestoreArgs),
    /// `aitokens audit ...`.
    Audit(AuditCommand),
}

async fn run_keys(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Status { config } => keys::status(&Config::load(&config)?).await,
        KeysCommand::Rotate {
            config,
            resume,
            batch_size,
        } => keys::rotate(&Config::load(&config)?, resume, batch_size).await,
        KeysCommand::DestroyOld { config } => keys::destroy_old(&Config::load(&config)?).await,
        KeysCommand::Rekey { config, new_root } => {
            keys::rekey(&Config::load(&config)?, new_root.into_new_root()?).await
        }
        KeysCommand::Shred {
            config,
            new_root,
            batch_size,
        } => {
            keys::shred(
                &Config::load(&config)?,
                new_root.into_new_root()?,
                batch_size,
            )
            .await
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
