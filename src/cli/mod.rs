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
mod output;
mod profile;
mod report;
mod server;
mod token;
mod value;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

pub use connect::ConnectArgs;
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
    /// Log format on stderr: `text` for people, `json` (one object per line)
    /// for log collectors. The level comes from RUST_LOG (default: info for
    /// servers, warn for client commands).
    #[arg(
        long,
        value_enum,
        global = true,
        default_value_t = LogFormat::Text,
        env = "AITOKENS_LOG_FORMAT"
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
    /// Run the server from a config file (addresses, TLS files, policy, key, database).
    Serve(ServeArgs),
    /// Manage and resolve tokens on a running server (a gRPC client over mTLS).
    Token(Box<TokenArgs>),
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
            Self::Dev(_) | Self::Serve(_) => "info",
            Self::Token(_) | Self::Completions { .. } => "warn",
        }
    }
}

/// Runs a parsed command line and returns the process exit code.
///
/// Exit codes: 0 success; 1 the server refused the request (the gRPC status
/// is printed); 2 bad usage or missing settings; 3 no connection, or a local
/// file could not be read.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Dev(args) => server::dev(args).await,
        Command::Serve(args) => server::serve(args).await,
        Command::Token(args) => token::run(*args).await,
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "aitokens", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}
