//! The `aitokens` command: `dev` (the embedded default), `serve`
//! (production), `init` (a new database bound to a root key) and `audit verify`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{ArgGroup, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use aitokens::{
    Error, Result,
    config::Config,
    crypto::{KeySource, Keyring, RootKey, new_deployment_id},
    dev::{self, DevSetup},
    hardening::harden_process,
    ops,
    server::Server,
    store::{AuditVerdict, SqliteStore, TokenStore, verify_audit_file},
};

/// aitokens: a secrets service for AI tokens, over gRPC with mutual TLS.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local server with generated certificates, key and policy.
    ///
    /// The first run creates DIR with a CA, a server certificate, an admin
    /// and an agent client certificate, a master key, a policy, a config and
    /// an empty database; later runs reuse them. Prints grpcurl commands to
    /// try it.
    Dev {
        /// Data folder.
        #[arg(long, default_value = "aitokens-dev")]
        dir: PathBuf,
        /// Address of the admin listener (TokenAdmin).
        #[arg(long, default_value = "127.0.0.1:50051")]
        admin_addr: SocketAddr,
        /// Address of the internal listener (TokenResolver).
        #[arg(long, default_value = "127.0.0.1:50052")]
        internal_addr: SocketAddr,
    },
    /// Run the server from a config file (addresses, TLS files, policy, key, database).
    Serve {
        /// The config file (TOML); relative paths in it are relative to it.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create an empty database bound to a root key (a key file, created if
    /// absent, or a passphrase stretched with Argon2id). Passphrases are
    /// never taken from the command line.
    #[command(group(ArgGroup::new("root").required(true).args(["key_file", "passphrase_file", "passphrase_stdin"])))]
    Init {
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
    },
    /// Key lifecycle: status, rotation, destruction of old versions, rekey.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Copy the database while the server serves (SQLite online backup).
    /// Values stay encrypted; the root key is not in the copy.
    Backup {
        /// The server config file (names the database).
        #[arg(long, short)]
        config: PathBuf,
        /// Where to write the backup (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Replace a database with a backup, after checking that the root key
    /// opens it and every value in it. Stop the server first.
    Restore {
        /// The server config file (root key source; database unless --db).
        #[arg(long, short)]
        config: PathBuf,
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The database to replace (default: the config's).
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Inspect the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
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
        #[arg(long, default_value_t = aitokens::keys::REWRAP_BATCH)]
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

#[derive(Debug, Subcommand)]
enum AuditCommand {
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match start(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aitokens: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command. Everything that must happen while the process is still
/// single-threaded (hardening, taking a key out of the environment) happens
/// here, before the async runtime starts its threads.
fn start(cli: Cli) -> Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Startup(format!("starting the async runtime: {e}")))
    };
    match cli.command {
        Command::Dev {
            dir,
            admin_addr,
            internal_addr,
        } => {
            harden_process(false).log();
            runtime()?.block_on(dev(dir, admin_addr, internal_addr))
        }
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            harden_process(config.lock_memory).log();
            let source = config.store.key_source()?;
            if let KeySource::Env { name, .. } = &source {
                // The key now lives only in zeroizing memory; children and
                // /proc/PID/environ readers must not find it.
                // SAFETY: no other thread exists yet (the runtime is built
                // below), so nothing can read the environment concurrently.
                #[allow(unsafe_code)]
                unsafe {
                    std::env::remove_var(name)
                };
                if std::env::var_os(name).is_none() {
                    tracing::info!(variable = %name, "master key read and removed from the environment");
                }
            }
            runtime()?.block_on(serve(config, source))
        }
        Command::Init {
            db,
            key_file,
            passphrase_file,
            passphrase_stdin,
        } => {
            harden_process(false).log();
            let source = match (key_file, passphrase_file, passphrase_stdin) {
                (Some(path), ..) => KeySource::File(path),
                (_, Some(path), _) => KeySource::PassphraseFile(path),
                _ if passphrase_stdin => KeySource::PassphraseStdin,
                _ => {
                    return Err(Error::Startup(
                        "choose --key-file, --passphrase-file or --passphrase-stdin".into(),
                    ));
                }
            };
            init(&db, source)
        }
        Command::Keys { command } => {
            harden_process(false).log();
            keys(command)
        }
        Command::Backup { config, out } => ops::backup(&Config::load(&config)?, &out),
        Command::Restore { config, from, db } => {
            harden_process(false).log();
            let config = Config::load(&config)?;
            let db = db.unwrap_or_else(|| config.store.database.clone());
            let count = ops::restore(&from, &db, &config.store.key_source()?)?;
            println!(
                "restored {} from {}: {count} tokens, every value opens",
                db.display(),
                from.display()
            );
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { db, config },
        } => {
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
    }
}

fn keys(command: KeysCommand) -> Result<()> {
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
            let destroyed = offline.keys.destroy_old(&[event])?;
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
    let deployment = new_deployment_id()?;
    let (root, kdf) = match &source {
        KeySource::File(path) if !path.exists() => {
            let key = RootKey::create_file_for(path, Some(&deployment))?;
            println!(
                "created root key file {} (keep it secret; back it up apart from the database)",
                path.display()
            );
            (key, None)
        }
        _ => source.load()?.fresh()?,
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

async fn dev(dir: PathBuf, admin_addr: SocketAddr, internal_addr: SocketAddr) -> Result<()> {
    let setup = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || dev::prepare(&dir, admin_addr, internal_addr))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??
    };
    for path in &setup.created {
        tracing::info!(path = %path.display(), "created");
    }
    let server = Server::open(&setup.config).await?;
    let (admin, internal) = bind(&setup.config).await?;
    print_dev_banner(&dir, &setup, &admin, &internal);
    server.serve(admin, internal, shutdown_signal()).await
}

async fn serve(config: Config, source: KeySource) -> Result<()> {
    let server = Server::open_with(&config, source).await?;
    let (admin, internal) = bind(&config).await?;
    tracing::info!(
        admin = %admin.local_addr().map_err(|e| Error::Internal(e.to_string()))?,
        internal = %internal.local_addr().map_err(|e| Error::Internal(e.to_string()))?,
        "serving"
    );
    server.serve(admin, internal, shutdown_signal()).await
}

async fn bind(config: &Config) -> Result<(TcpListener, TcpListener)> {
    let bind_one = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Startup(format!("{what} listener {addr}: {e}")))
    };
    Ok((
        bind_one("admin", config.admin.listen).await?,
        bind_one("internal", config.internal.listen).await?,
    ))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
fn print_dev_banner(
    dir: &std::path::Path,
    setup: &DevSetup,
    admin: &TcpListener,
    internal: &TcpListener,
) {
    let admin = admin.local_addr().unwrap_or(setup.config.admin.listen);
    let internal = internal
        .local_addr()
        .unwrap_or(setup.config.internal.listen);
    let d = dir.display();
    let banner = format!(
        r#"
aitokens dev is running. Data folder: {d}
  admin    listener (aitokens.v1.TokenAdmin)     {admin}     client cert {d}/admin.pem
  internal listener (aitokens.v1.TokenResolver)  {internal}     client cert {d}/agent.pem
Stop with Ctrl-C. Same setup in production form: aitokens serve --config {d}/config.toml

Try it with grpcurl from another shell in this directory:

  grpcurl -cacert {d}/ca.pem -cert {d}/admin.pem -key {d}/admin.key -d @ \
    {admin} aitokens.v1.TokenAdmin/CreateToken <<'EOF'
  {{"parent": "tenants/acme", "token_id": "openai-prod",
   "token": {{"display_name": "OpenAI production"}}, "value": "sk-example-not-a-real-key"}}
  EOF

  grpcurl -cacert {d}/ca.pem -cert {d}/admin.pem -key {d}/admin.key \
    -d '{{"parent": "tenants/acme"}}' {admin} aitokens.v1.TokenAdmin/ListTokens

  grpcurl -cacert {d}/ca.pem -cert {d}/agent.pem -key {d}/agent.key \
    -d '{{"name": "tenants/acme/tokens/openai-prod"}}' {internal} aitokens.v1.TokenResolver/ResolveToken
"#
    );
    // One write, and no panic if whoever started us stopped reading.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), banner.as_bytes());
}
