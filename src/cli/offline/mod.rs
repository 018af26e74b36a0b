//! Operator commands that work on the database directly, without a
//! running server: `init`, `keys`, `backup`, `restore` and `audit verify`.

mod audit;
mod copy;
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
    /// The store to initialize: a SQLite file (created), `sqlite:PATH`, or
    /// a postgres:// URL (migrated first; its password from
    /// AITOKENS_PG_PASSWORD_FILE).
    #[arg(long, value_name = "STORE")]
    db: String,
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

/// Options of `aitokens migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The server config file (names the store).
    #[arg(long, short)]
    config: PathBuf,
}

/// `aitokens store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every row (sealed values, keyring, usage, bindings, the audit
    /// trail with its links) into an empty store, then check that every
    /// value opens and the chain verifies. Stop the servers of the source
    /// first; the target must be empty (and migrated, for PostgreSQL).
    Copy {
        /// The store to copy: `sqlite:PATH` (or a postgres:// URL).
        #[arg(long, value_name = "LOCATION")]
        from: String,
        /// The empty store to fill: a postgres:// URL (or `sqlite:PATH`). The
        /// password comes from --password-file, never from the URL.
        #[arg(long, value_name = "LOCATION")]
        to: String,
        /// The PostgreSQL password file (either side) [default:
        /// AITOKENS_PG_PASSWORD_FILE].
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// The server config file: the root key that opens the copied
        /// keyring, for the checks.
        #[arg(long, short)]
        config: PathBuf,
    },
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
    /// Check the audit chain under its key: exits 0 if every record is in
    /// place and unaltered and every checkpoint of the anchor matches; 1
    /// naming the first record where it breaks.
    Verify {
        /// Where the trail is and how to open its key.
        #[command(flatten)]
        source: TrailArgs,
        /// An anchor file of checkpoints to hold the trail against [default:
        /// the config's `[audit] anchor`, if any].
        #[arg(long, value_name = "FILE")]
        anchor: Option<PathBuf>,
    },
    /// Write every record of the trail, with its links, as JSON lines (for
    /// retention elsewhere, before a prune). Reads only.
    Export {
        /// Where the trail is and how to open its key.
        #[command(flatten)]
        source: TrailArgs,
        /// The file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Key a trail written before audit chains were keyed: check every old
    /// link, give the keyring its audit key (sealed under the root key) and
    /// re-link the trail under it. Refuses a trail that does not verify.
    Upgrade {
        /// The server config file (its database and root key).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Delete the records up to and including a sequence, keeping a MAC'd
    /// base so that what remains still verifies. Verifies the whole trail
    /// first and refuses a broken one. Export first: what is pruned is gone.
    Prune {
        /// Where the trail is and how to open its key.
        #[command(flatten)]
        source: TrailArgs,
        /// The last record to delete.
        #[arg(long, value_name = "SEQUENCE")]
        through_seq: i64,
    },
}

/// Which trail an `audit` command reads, and the root key that opens its
/// chain key: a server config, or a database file and a key source.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("trail").required(true).args(["config", "db"])))]
pub struct TrailArgs {
    /// The server config file (its database, root key and anchor).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Or a store (a SQLite file, `sqlite:PATH`, or a postgres:// URL whose
    /// password comes from AITOKENS_PG_PASSWORD_FILE)...
    #[arg(long, value_name = "STORE", requires = "trail_key")]
    db: Option<String>,
    /// ...with its root key file...
    #[arg(long, value_name = "FILE", group = "trail_key")]
    key_file: Option<PathBuf>,
    /// ...or a file whose first line is its passphrase...
    #[arg(long, value_name = "FILE", group = "trail_key")]
    passphrase_file: Option<PathBuf>,
    /// ...or its passphrase on the first line of standard input.
    #[arg(long, group = "trail_key")]
    passphrase_stdin: bool,
}

/// The store a command-line argument names; a PostgreSQL password comes
/// from `password_file`, else from `AITOKENS_PG_PASSWORD_FILE`.
fn location(
    spec: &str,
    password_file: Option<&std::path::Path>,
) -> Result<crate::store::StoreLocation> {
    let from_env = std::env::var_os("AITOKENS_PG_PASSWORD_FILE").map(PathBuf::from);
    crate::store::StoreLocation::parse(spec, password_file.or(from_env.as_deref()))
}

/// Runs an offline command; prints errors and maps them to exit code 1.
pub async fn run(command: OfflineCommand) -> ExitCode {
    let result = match command {
        OfflineCommand::Init(args) => files::init(args).await,
        OfflineCommand::Keys(command) => run_keys(command).await,
        OfflineCommand::Backup(args) => files::backup(args).await,
        OfflineCommand::Restore(args) => files::restore(args).await,
        OfflineCommand::Audit(command) => audit::run(command).await,
        OfflineCommand::Migrate(args) => files::migrate(&args.config).await,
        OfflineCommand::Store(StoreCommand::Copy {
            from,
            to,
            password_file,
            config,
        }) => copy::run(&from, &to, password_file.as_deref(), &config).await,
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
    /// `aitokens migrate`.
    Migrate(MigrateArgs),
    /// `aitokens store ...`.
    Store(StoreCommand),
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
    let now = SystemTime::now();
    AuditEvent {
        time: now,
        first_time: now,
        count: 1,
        actor: format!("cli:{user}"),
        peer: "local".into(),
        method: command.into(),
        tenant: None,
        resource: resource.into(),
        outcome: Outcome::Allowed,
        reason,
    }
}
