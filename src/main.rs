//! The `aitokens` command: parse, set up logging, harden, run. See
//! [`aitokens::cli`].

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use aitokens::{
    cli::{self, Cli, LogFormat},
    config::Config,
    crypto::KeySource,
    hardening::harden_process,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.command.default_log_level()));
    // Colour only for a person at a terminal who did not ask for none
    // (https://no-color.org): a file or a pipe gets plain text.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!no_color && std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }

    // Everything below runs while the process is still single-threaded.
    let serve_config = match cli.command.serve_config().map(Config::load).transpose() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("aitokens: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !matches!(
        cli.command,
        cli::Command::Token(_) | cli::Command::Completions { .. } | cli::Command::Bench { .. }
    ) {
        // No core dumps, not dumpable: key material must not leave the process.
        harden_process(serve_config.as_ref().is_some_and(|c| c.lock_memory)).log();
    }
    let key_source = match serve_config
        .as_ref()
        .map(|c| c.store.key_source())
        .transpose()
    {
        Ok(source) => source,
        Err(e) => {
            eprintln!("aitokens: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(KeySource::Env { name, .. }) = &key_source {
        forget_environment_key(name);
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(cli::run(cli, key_source)),
        Err(e) => {
            eprintln!("aitokens: error: starting the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Removes the master key's variable from the environment, once its value
/// lives only in zeroizing memory: children and /proc/PID/environ readers
/// (root only: the process is not dumpable) must not find it there. Called
/// while the process is still single-threaded.
fn forget_environment_key(name: &str) {
    // SAFETY: no other thread exists yet (the runtime is built later), so
    // nothing reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::remove_var(name)
    };
    if std::env::var_os(name).is_none() {
        tracing::info!(variable = %name, "master key read and removed from the environment");
    }
}
