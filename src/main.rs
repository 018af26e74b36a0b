//! The `aitokens` command: `dev` (the embedded default) and `serve` (production).

use std::{io::Write as _, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use aitokens::{
    Error, Result,
    config::Config,
    dev::{self, DevSetup},
    server::Server,
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
    /// Measure ResolveToken against the transport floor (a trivial Echo RPC
    /// over the identical mTLS setup), plus CreateToken, ListTokens depth,
    /// startup time and memory. Runs `aitokens serve` as a child process on
    /// 127.0.0.1 over a temp dir; every phase is bounded in time and count.
    Bench(aitokens::bench::Options),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aitokens: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Dev {
            dir,
            admin_addr,
            internal_addr,
        } => {
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
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let server = Server::open(&config).await?;
            let (admin, internal) = bind(&config).await?;
            tracing::info!(
                admin = %admin.local_addr().map_err(|e| Error::Internal(e.to_string()))?,
                internal = %internal.local_addr().map_err(|e| Error::Internal(e.to_string()))?,
                "serving"
            );
            server.serve(admin, internal, shutdown_signal()).await
        }
        Command::Bench(options) => {
            // On Ctrl-C the run is dropped, which stops its server process
            // and removes its temp dirs.
            tokio::select! {
                result = aitokens::bench::run(options) => result.map(drop),
                _ = tokio::signal::ctrl_c() => Err(Error::Startup("interrupted".into())),
            }
        }
    }
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
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
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
    // A closed stdout (`aitokens dev | head`) must not bring the server down:
    // println! would panic on EPIPE.
    let _ = writeln!(
        std::io::stdout(),
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
}
