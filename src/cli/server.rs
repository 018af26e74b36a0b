//! `aitokens dev` and `aitokens serve`: run the service.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Args;
use tokio::{net::TcpListener, sync::oneshot};

use super::profile::{DEV_PROFILE, Profile};
use crate::{
    Error, Result,
    config::Config,
    crypto::KeySource,
    dev,
    rotation::Legacy,
    server::{Server, tls},
    store::{PgStore, StoreLocation},
    telemetry::{Telemetry, serve_http},
};

/// Options of `aitokens dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Data folder (created on first run, reused later).
    #[arg(long, default_value = "aitokens-dev")]
    pub dir: PathBuf,
    /// Address of the admin listener (TokenAdmin). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub admin_addr: SocketAddr,
    /// Address of the internal listener (TokenResolver). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub internal_addr: SocketAddr,
    /// Port of the plain-HTTP metrics listener on 127.0.0.1 (/metrics,
    /// /healthz, /readyz). 0 picks a free port.
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,
    /// Where the data lives: `sqlite:PATH`, or a `postgres://USER@HOST/DB`
    /// URL (the schema is migrated; the folder still holds the
    /// certificates, policy and master key). The password, if any, comes
    /// from `AITOKENS_PG_PASSWORD_FILE`, never from the URL. [default: the
    /// folder's aitokens.db]
    #[arg(long, value_name = "LOCATION")]
    pub store: Option<String>,
    /// Allow --admin-addr and --internal-addr to be non-loopback addresses
    /// (refused otherwise): the dev policy lets its certificates do
    /// everything, and its keys sit unencrypted in DIR.
    #[arg(long)]
    pub insecure_allow_remote: bool,
}

/// Options of `aitokens serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The config file (TOML); relative paths in it are relative to it.
    #[arg(long, short, env = "AITOKENS_CONFIG")]
    pub config: PathBuf,
}

/// Runs `aitokens dev` until SIGINT or SIGTERM. Non-loopback addresses are
/// bad usage (exit 2, nothing created) unless --insecure-allow-remote; a
/// port already taken is an error naming its flag (exit 1, nothing created).
pub async fn dev(args: DevArgs) -> ExitCode {
    let (admin, internal) = (args.admin_addr, args.internal_addr);
    match dev::check_listen_addresses(admin, internal, args.insecure_allow_remote) {
        Ok(None) => {}
        Ok(Some(warning)) => {
            eprintln!("aitokens: {warning}");
            tracing::warn!(%admin, %internal, "aitokens dev listens beyond loopback");
        }
        Err(e) => {
            eprintln!("aitokens: error: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = check_dev_ports(&args) {
        eprintln!("aitokens: error: {e}");
        return ExitCode::FAILURE;
    }
    exit_code(run_dev(args).await)
}

/// Checks that each port `aitokens dev` will listen on is free, before the
/// data folder is created or touched, and names the flag that moves a
/// taken one. (Each is bound and released again; the server binds it for
/// real moments later.)
fn check_dev_ports(args: &DevArgs) -> Result<()> {
    let metrics = SocketAddr::from(([127, 0, 0, 1], args.metrics_port));
    let ports = [
        ("--admin-addr", args.admin_addr, args.admin_addr.to_string()),
        (
            "--internal-addr",
            args.internal_addr,
            args.internal_addr.to_string(),
        ),
        ("--metrics-port", metrics, args.metrics_port.to_string()),
    ];
    for (flag, addr, typed) in ports {
        if addr.port() == 0 {
            continue;
        }
        let Err(e) = std::net::TcpListener::bind(addr) else {
            continue;
        };
        let free = match flag {
            "--metrics-port" => "--metrics-port 0".to_owned(),
            _ => format!("{flag} {}", SocketAddr::new(addr.ip(), 0)),
        };
        let why = match (e.kind(), flag) {
            (std::io::ErrorKind::AddrInUse, "--metrics-port") => format!(
                "{addr} is already in use, probably by another `aitokens dev` or by \
                 Prometheus (which also defaults to 9090)"
            ),
            (std::io::ErrorKind::AddrInUse, _) => format!(
                "{addr} is already in use, probably by another `aitokens dev` or `aitokens serve`"
            ),
            _ => format!("cannot listen on {addr}: {e}"),
        };
        let folder = match args.dir.exists() {
            true => format!("{} was not touched", args.dir.display()),
            false => format!("{} was not created", args.dir.display()),
        };
        return Err(Error::config(format!(
            "{flag} {typed}: {why}. Stop that program, or choose another port with {flag} \
             ({free} picks a free one). Nothing was started; {folder}."
        )));
    }
    Ok(())
}

/// Runs `aitokens serve` until SIGINT or SIGTERM, with the root key from
/// `source` when the binary already took it (an environment key), else from
/// the config.
pub async fn serve(args: ServeArgs, source: Option<KeySource>) -> ExitCode {
    exit_code(run_serve(args, source).await)
}

fn exit_code(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aitokens: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_dev(args: DevArgs) -> Result<()> {
    let DevArgs {
        dir,
        admin_addr,
        internal_addr,
        metrics_port,
        store,
        insecure_allow_remote: _,
    } = args;
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let setup = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            dev::prepare(&dir, admin_addr, internal_addr, Some(metrics_addr))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??
    };
    for path in &setup.created {
        tracing::info!(path = %path.display(), "created");
    }
    let mut config = setup.config;
    if let Some(store) = store {
        use_store(&dir, &mut config, &store).await?;
    }
    let source = config.store.key_source()?;
    run_server(
        &config,
        source,
        Legacy::Upgrade,
        |admin, internal, metrics| {
            Profile::for_dev(admin, internal).write(&dir.join(DEV_PROFILE))?;
            print_dev_banner(&dir, admin, internal, metrics);
            Ok(())
        },
    )
    .await
}

async fn run_serve(args: ServeArgs, source: Option<KeySource>) -> Result<()> {
    let config = Config::load(&args.config)?;
    let source = match source {
        Some(source) => source,
        None => config.store.key_source()?,
    };
    run_server(
        &config,
        source,
        Legacy::Refuse,
        |admin, internal, metrics| {
            tracing::info!(%admin, %internal, metrics = ?metrics, "serving");
            Ok(())
        },
    )
    .await
}

/// Points the dev folder's config at `store` (`sqlite:PATH` or a
/// PostgreSQL URL, whose schema is migrated here).
async fn use_store(dir: &Path, config: &mut Config, store: &str) -> Result<()> {
    let password_file = std::env::var_os("AITOKENS_PG_PASSWORD_FILE").map(PathBuf::from);
    match StoreLocation::parse(store, password_file.as_deref())? {
        StoreLocation::Sqlite(path) => {
            config.store.database = std::path::absolute(&path)
                .map_err(|e| Error::config(format!("--store {}: {e}", path.display())))?;
            config.store.url = None;
        }
        StoreLocation::Postgres(target) => {
            let applied = PgStore::migrate(&target).await?;
            tracing::info!(
                store = target.shown(),
                migrations = applied,
                "using PostgreSQL"
            );
            config.store.database = PathBuf::new();
            config.store.url = Some(store.to_owned());
            config.store.password_file = password_file;
        }
    }
    dev::save_config(dir, config)
}

/// Binds the metrics listener (so `/healthz` answers and `/readyz` says "not
/// ready" while keys load), opens the server, binds both gRPC listeners,
/// calls `announce` with the bound addresses, and serves until SIGINT or
/// SIGTERM.
async fn run_server(
    config: &Config,
    source: KeySource,
    legacy: Legacy,
    announce: impl FnOnce(SocketAddr, SocketAddr, Option<SocketAddr>) -> Result<()>,
) -> Result<()> {
    let telemetry = Telemetry::new();
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let mut metrics_addr = None;
    let mut http = None;
    if let Some(metrics) = &config.metrics {
        let listener = TcpListener::bind(metrics.listen)
            .await
            .map_err(|e| Error::config(format!("metrics listener {}: {e}", metrics.listen)))?;
        metrics_addr = Some(local_addr(&listener)?);
        http = Some(tokio::spawn(serve_http(
            listener,
            telemetry.clone(),
            async {
                let _ = http_stopped.await;
            },
        )));
    }
    let server = Server::open_with(config, telemetry, source, legacy).await?;
    let (admin, internal) = bind(config)?;
    let shutdown = shutdown_signal()?;
    announce(local_addr(&admin)?, local_addr(&internal)?, metrics_addr)?;
    let served = server.serve(admin, internal, shutdown).await;
    let _ = http_stop.send(());
    if let Some(http) = http {
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics listener failed"),
            Err(e) => tracing::warn!(error = %e, "metrics listener task failed"),
        }
    }
    served
}

fn bind(config: &Config) -> Result<(TcpListener, TcpListener)> {
    let bind_one = |what: &'static str, addr: SocketAddr| {
        tls::bind_listener(addr).map_err(|e| Error::config(format!("{what} listener {addr}: {e}")))
    };
    Ok((
        bind_one("admin", config.admin.listen)?,
        bind_one("internal", config.internal.listen)?,
    ))
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
/// Registers SIGINT and SIGTERM handlers now (so a signal that arrives
/// right after the server announces itself stops it gracefully instead of
/// killing it), and returns a future that completes on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let register = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| Error::Internal(format!("installing the {name} handler: {e}")))
    };
    let mut interrupt = register(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = register(SignalKind::terminate(), "SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    })
}

fn print_dev_banner(
    dir: &Path,
    admin: SocketAddr,
    internal: SocketAddr,
    metrics: Option<SocketAddr>,
) {
    let d = dir.display();
    let metrics = metrics.map_or_else(
        || "off".to_owned(),
        |addr| format!("http://{addr}/metrics  (also /healthz, /readyz)"),
    );
    let banner = format!(
        r#"
aitokens dev is running. Data folder: {d}
  admin    listener (aitokens.v1.TokenAdmin)     {admin}     client cert {d}/admin.pem
  internal listener (aitokens.v1.TokenResolver)  {internal}     client cert {d}/agent.pem
  metrics  {metrics}
Stop with Ctrl-C. Same setup in production form: aitokens serve --config {d}/config.toml

Try it with the CLI from another shell in this directory (it reads {d}/{DEV_PROFILE}):

  aitokens token create --tenant acme openai-prod    # type the value; it is not echoed
  aitokens token list --tenant acme
  aitokens token resolve --tenant acme openai-prod

Or with grpcurl:

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
    // One write, and a closed stdout (`aitokens dev | head`) must not stop
    // the server: println! would panic on a broken pipe.
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush())
    {
        tracing::warn!(error = %e, "could not print the banner");
    }
}
