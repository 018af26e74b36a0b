//! The `aitokens` command line.
//!
//! Two kinds of commands share one binary:
//!
//! - **server** commands ([`Command::Dev`], [`Command::Serve`]) run the
//!   service itself;
//! - **client** commands ([`Command::Token`]) talk to a running server over
//!   gRPC with mutual TLS, with connection settings from flags, environment
//!   variables or a profile file that `aitokens dev` writes.
//!
//! `main.rs` only parses, sets up logging and calls [`run`].

mod connect;
mod console;
mod lifecycle;
mod offline;
mod output;
mod printable;
mod profile;
mod report;
mod server;
mod token;
mod value;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::crypto::KeySource;

pub use connect::ConnectArgs;
pub use console::ConsoleArgs;
pub use offline::{
    AuditCommand, BackupArgs, InitArgs, KeysCommand, MigrateArgs, Offline, OfflineCommand,
    RestoreArgs, StoreCommand,
};
pub use output::OutputFormat;
pub use profile::{ClientIdentity, DEV_PROFILE, Profile};
pub use server::{DevArgs, ServeArgs};
pub use token::TokenArgs;

/// aitokens: a secrets service for AI tokens, over gRPC with mutual TLS.
#[derive(Debug, Parser)]
#[command(
    name = "aitokens",
    version,
    about,
    long_about = "aitokens: a secrets service for AI tokens, over gRPC with mutual TLS.\n\n\
        Administrators store a token once (`aitokens token create`); agent runtimes \
        fetch its value over the internal mTLS listener (`aitokens token resolve`). \
        `aitokens dev` runs a complete local server and writes a profile that the \
        `token` commands find on their own.",
    after_help = "Quick start:\n  \
        aitokens dev                                  # in one shell\n  \
        aitokens token create --tenant acme openai-prod   # in another; type the value\n  \
        aitokens token list --tenant acme\n  \
        aitokens token resolve --tenant acme openai-prod"
)]
pub struct Cli {
    /// Logs on stderr: text (for people) or json (one object per line); level from RUST_LOG.
    #[arg(
        long,
        value_enum,
        global = true,
        hide_possible_values = true,
        default_value_t = LogFormat::Text,
        env = "AITOKENS_LOG_FORMAT",
        help_heading = "Global options"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local server with generated certificates, key, policy and profile.
    ///
    /// The first run creates DIR with a CA, a server certificate, an admin
    /// and an agent client certificate, a master key, a policy, a config and
    /// an empty database; later runs reuse them. Every run writes
    /// DIR/profile.toml with the addresses it listens on, so that `aitokens
    /// token ...` in another shell of the same directory needs no flags.
    Dev(DevArgs),
    /// A local web console for the admin API (token cards, add, rename,
    /// remove, replace, disable), on 127.0.0.1 only.
    ///
    /// It calls the admin listener with the profile's admin identity (the
    /// same settings as `aitokens token`), never resolves a value, and prints
    /// a one-time login URL: open it once to get a session.
    Console(Box<ConsoleArgs>),
    /// Run the server from a config file (addresses, TLS files, policy, key, database).
    Serve(ServeArgs),
    /// Manage and resolve tokens on a running server (a gRPC client over mTLS).
    Token(Box<TokenArgs>),
    /// Create an empty database bound to a root key (a key file, created if
    /// absent, or a passphrase stretched with Argon2id). Passphrases are
    /// never taken from the command line.
    Init(InitArgs),
    /// Key lifecycle: status, rotation, destruction of old versions, rekey,
    /// and shred (all of them, so that old copies stop opening).
    Keys {
        /// What to do with the keys.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Copy the database while the server serves (SQLite online backup).
    /// Values stay encrypted; the root key is not in the copy.
    Backup(BackupArgs),
    /// Replace a database with a backup, after checking that the root key
    /// opens it and every value in it. Refused while a server holds the
    /// database: stop it first.
    Restore(RestoreArgs),
    /// Apply the store's schema migrations (PostgreSQL: a server refuses to
    /// start on a schema older or newer than it knows; SQLite migrates when
    /// opened). Safe to run from several replicas at once.
    Migrate(MigrateArgs),
    /// Copy a store to another without decrypting anything (moving from
    /// SQLite to PostgreSQL), then check that every value opens with the
    /// root key and that the audit chain verifies.
    Store {
        /// What to do.
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Measure ResolveToken against the transport floor (a trivial Echo RPC
    /// over the identical mTLS setup), plus CreateToken, ListTokens depth,
    /// startup time and memory. Runs the `aitokens-bench` program installed
    /// beside this one (`cargo install --locked --path bench`), passing every
    /// argument on; `aitokens bench --help` shows its options.
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments of `aitokens-bench`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Inspect the audit trail.
    Audit {
        /// What to do with the trail.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a shell completion script.
    ///
    /// bash: `source <(aitokens completions bash)`;
    /// zsh: `aitokens completions zsh > "${fpath[1]}/_aitokens"`;
    /// fish: `aitokens completions fish > ~/.config/fish/completions/aitokens.fish`.
    Completions {
        /// The shell to write completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Command {
    /// The log level when RUST_LOG is unset: servers narrate, clients stay quiet.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Self::Dev(_) | Self::Serve(_) | Self::Bench { .. } => "info",
            Self::Token(_)
            | Self::Console(_)
            | Self::Completions { .. }
            | Self::Init(_)
            | Self::Keys { .. }
            | Self::Backup(_)
            | Self::Restore(_)
            | Self::Migrate(_)
            | Self::Store { .. }
            | Self::Audit { .. } => "warn",
        }
    }
}

/// Runs a parsed command line and returns the process exit code.
///
/// Exit codes: 0 success; 1 the server refused the request (the gRPC status
/// is printed); 2 bad usage or missing settings; 3 no connection, or a local
/// file could not be read.
pub async fn run(cli: Cli, key_source: Option<KeySource>) -> ExitCode {
    match cli.command {
        Command::Dev(args) => server::dev(args).await,
        Command::Serve(args) => server::serve(args, key_source).await,
        Command::Token(args) => token::run(*args).await,
        Command::Console(args) => console::run(*args).await,
        Command::Bench { args } => bench(args),
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "aitokens", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Init(args) => offline::run(OfflineCommand::Init(args)).await,
        Command::Keys { command } => offline::run(OfflineCommand::Keys(command)).await,
        Command::Backup(args) => offline::run(OfflineCommand::Backup(args)).await,
        Command::Restore(args) => offline::run(OfflineCommand::Restore(args)).await,
        Command::Migrate(args) => offline::run(OfflineCommand::Migrate(args)).await,
        Command::Store { command } => offline::run(OfflineCommand::Store(command)).await,
        Command::Audit { command } => offline::run(OfflineCommand::Audit(command)).await,
    }
}

/// `aitokens bench`: runs `aitokens-bench` from beside this binary (or from
/// the PATH), which measures a server it starts from this binary.
fn bench(args: Vec<std::ffi::OsString>) -> ExitCode {
    let exe = std::env::current_exe().ok();
    let sibling = exe
        .as_ref()
        .and_then(|exe| exe.parent())
        .map(|dir| dir.join("aitokens-bench"))
        .filter(|path| path.is_file());
    let program = sibling.unwrap_or_else(|| "aitokens-bench".into());
    let mut command = std::process::Command::new(&program);
    command.args(args);
    if let Some(exe) = exe {
        command.env("AITOKENS_BENCH_SERVER_EXE", exe);
    }
    match command.status() {
        Ok(status) => ExitCode::from(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1))),
        Err(e) => {
            eprintln!(
                "aitokens: error: running {}: {e}
  the benchmark is its own program:                  cargo install --locked --path bench (or cargo run --release -p aitokens-bench)",
                program.display()
            );
            ExitCode::from(2)
        }
    }
}

/// Whether a command runs the service (and so should harden the process).
impl Command {
    /// The config of `aitokens serve`, loaded early: the binary takes an
    /// environment key out of the environment before any thread starts.
    pub fn serve_config(&self) -> Option<&std::path::Path> {
        match self {
            Self::Serve(args) => Some(&args.config),
            _ => None,
        }
    }
}
