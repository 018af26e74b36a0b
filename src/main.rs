//! The `aitokens` command: parse, set up logging, run. See [`aitokens::cli`].

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use aitokens::cli::{self, Cli, LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.command.default_log_level()));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    cli::run(cli).await
}
