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
    /// Destroy KEK versions no data key uses any more (crypto-shredding of
    /// what was removed while they were current).
    DestroyOld {
        /// The server config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Change the root key: re-seal only the keyring, atomically. Refused
    /// while a server holds the database; point the config at the new key
    /// before starting it again.
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
            eprintln!("aitokens: error: {e}");
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
        KeysCommand::Rekey {
            config,
            new_key_file,
            new_passphrase_file,
            new_passphrase_stdin,
        } => {
            let new_root = match (new_key_file, new_passphrase_file) {
                (Some(path), _) => keys::NewRoot::KeyFile(path),
                (_, Some(path)) => keys::NewRoot::PassphraseFile(path),
                _ if new_passphrase_stdin => keys::NewRoot::PassphraseStdin,
                _ => return Err(crate::Error::config("choose the new root key")),
            };
            keys::rekey(&Config::load(&config)?, new_root).await
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
