//! Two tonic servers in one process over one domain handle.
//!
//! - **admin** listener: `TokenAdmin`, health, reflection. TLS with a required
//!   client certificate; the caller must be an admin identity in the policy.
//! - **internal** listener: `TokenResolver`, health, reflection. mTLS; the
//!   caller must be a resolver identity allowed for the token.
//!
//! Beside them run background tasks: the flusher, which writes usage
//! counters and queued audit events in batches (and once more at shutdown);
//! key upkeep (keyring reloads, the re-wrap job, VACUUM); the change watch,
//! which drops the resolve cache when another process changed the database;
//! and the policy reloader, which swaps in a changed policy file on SIGHUP or
//! when the file changes, keeping the old policy if the new one is invalid.
//!
//! [`Server::open`] does every start-up check (policy, TLS material, master
//! key, database integrity, keyring) before anything listens, so a bad
//! deployment fails with one clear message and never half-serves.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Server as TonicServer;
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};

use crate::{
    api::{
        AdminApi, KeyAdminApi, MAX_REQUEST_BYTES, ResolverApi,
        echo::{EchoApi, pb::echo_server::EchoServer},
        pb::{
            self, key_admin_server::KeyAdminServer, token_admin_server::TokenAdminServer,
            token_resolver_server::TokenResolverServer,
        },
    },
    audit::JsonlSink,
    auth::{Policy, PolicyHandle},
    config::Config,
    crypto::{KeySource, Keyring},
    error::{Error, Result},
    keys::{KeyringHandle, Keys, REWRAP_BATCH},
    store::{SqliteStore, TokenStore},
    telemetry::{GrpcLayer, Telemetry},
    tls::{Reload, TlsIncoming, TlsMaterial},
    tokens::{TokenSettings, Tokens},
};

/// Longest a connection lives before the server asks the client to reconnect
/// (so a certificate that stopped being trusted stops working).
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(10 * 60);
/// How long an aged connection may finish its calls before it is closed.
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
/// Longest a single request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests get to finish once shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Concurrent requests (HTTP/2 streams) per connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// A server that passed every start-up check and is ready to listen.
pub struct Server {
    telemetry: Telemetry,
    tokens: Tokens,
    keys: Keys,
    policy: Arc<PolicyHandle>,
    policy_path: PathBuf,
    flush_interval: Duration,
    admin_tls: Arc<TlsMaterial>,
    internal_tls: Arc<TlsMaterial>,
    tls_reload_interval: Duration,
    /// SIGHUP, registered when the server opens: from then on a SIGHUP
    /// reloads TLS material (and the policy) instead of ending the process.
    hangup: Option<Hangup>,
    /// Serve the benchmark's Echo RPC on the internal listener.
    echo: bool,
}

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = ();

impl Server {
    /// Loads and checks everything `config` names, taking the root key from
    /// its configured source.
    pub async fn open(config: &Config) -> Result<Self> {
        Self::open_with(config, Telemetry::new(), config.store.key_source()?).await
    }

    /// Like [`Server::open`], recording metrics and readiness into
    /// `telemetry` (which an already running `/readyz` may be reporting), with
    /// the root key from `source` (the binary reads an environment key early
    /// and removes it from the environment). Blocking work (key derivation,
    /// SQLite) runs on the blocking pool.
    pub async fn open_with(
        config: &Config,
        telemetry: Telemetry,
        source: KeySource,
    ) -> Result<Self> {
        let config = config.clone();
        let mut server =
            tokio::task::spawn_blocking(move || Self::open_blocking(&config, telemetry, &source))
                .await
                .map_err(|e| Error::Internal(format!("start-up task failed: {e}")))??;
        #[cfg(unix)]
        {
            server.hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .inspect_err(|e| tracing::warn!(error = %e, "SIGHUP reloads are unavailable"))
                .ok();
        }
        Ok(server)
    }

    /// The metrics and readiness of this server.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    fn open_blocking(config: &Config, telemetry: Telemetry, source: &KeySource) -> Result<Self> {
        let policy = Policy::load(&config.policy)?;
        let admin_tls = TlsMaterial::load(&config.admin, "admin")?;
        let internal_tls = TlsMaterial::load(&config.internal, "internal")?;
        let material = source.load()?;
        let mut store = SqliteStore::open(&config.store.database)?;
        if let Some(path) = &config.audit.jsonl {
            store = store.with_audit_mirror(JsonlSink::new(path.clone()));
        }
        let (root, keyring) = match store.keyring()? {
            Some(records) => {
                let root = material.unlock(&records)?;
                let keyring = Keyring::open(&root, &records)?;
                (root, keyring)
            }
            None => {
                let (root, kdf) = material.fresh()?;
                let (keyring, records) = Keyring::create_with(&root, None, kdf)?;
                store.init_keyring(&records)?;
                tracing::info!(database = %store.path().display(), "initialized a new keyring");
                (root, keyring)
            }
        };
        if config.bench.echo {
            tracing::warn!(
                "serving the benchmark Echo RPC on the internal listener ([bench] echo = true)"
            );
        }
        let settings = TokenSettings {
            track: config.usage.track,
            recent_window: Duration::from_secs(config.usage.recent_window_secs),
            cache_bytes: config.cache.max_bytes(),
        };
        let store: Arc<dyn TokenStore> = Arc::new(store);
        let handle = Arc::new(KeyringHandle::new(root, keyring));
        let tokens = Tokens::new(store.clone(), handle.clone(), settings)?;
        telemetry.set_token_source(tokens.clone());
        Ok(Self {
            telemetry,
            keys: Keys::new(store, handle),
            tokens,
            policy: Arc::new(PolicyHandle::new(policy)),
            policy_path: config.policy.clone(),
            flush_interval: Duration::from_secs(config.usage.flush_interval_secs),
            admin_tls,
            internal_tls,
            tls_reload_interval: Duration::from_secs(config.tls_reload_interval_secs.max(1)),
            hangup: None,
            echo: config.bench.echo,
        })
    }

    /// Serves both listeners until `shutdown` completes, then stops accepting,
    /// lets in-flight requests finish, and returns.
    pub async fn serve(
        self,
        admin: TcpListener,
        internal: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });

        let (admin_health, admin_health_service) = tonic_health::server::health_reporter();
        admin_health
            .set_serving::<TokenAdminServer<AdminApi>>()
            .await;
        let (internal_health, internal_health_service) = tonic_health::server::health_reporter();
        internal_health
            .set_serving::<TokenResolverServer<ResolverApi>>()
            .await;

        let flusher = tokio::spawn(flush_periodically(
            self.tokens.clone(),
            self.telemetry.clone(),
            self.flush_interval,
            stop_rx.clone(),
        ));
        let key_upkeep = tokio::spawn(maintain_keys(
            self.keys.clone(),
            self.flush_interval,
            stop_rx.clone(),
        ));
        let change_watch = tokio::spawn(notice_store_changes(self.tokens.clone(), stop_rx.clone()));
        tokio::spawn(warm_resolve_cache(self.tokens.clone()));
        let reloader = tokio::spawn(reload_policy(
            self.policy.clone(),
            self.policy_path.clone(),
            stop_rx.clone(),
        ));

        let admin_api =
            TokenAdminServer::new(AdminApi::new(self.tokens.clone(), self.policy.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES);
        let key_admin_api = KeyAdminServer::new(KeyAdminApi::new(
            self.keys.clone(),
            self.policy.clone(),
            self.tokens.audit_queue().clone(),
        ));
        let resolver_api =
            TokenResolverServer::new(ResolverApi::new(self.tokens.clone(), self.policy))
                .max_decoding_message_size(MAX_REQUEST_BYTES);

        let layer = GrpcLayer::new(self.telemetry.clone());
        let admin_server = builder(layer.clone())
            .add_service(admin_health_service)
            .add_service(
                reflection(&["aitokens.v1.TokenAdmin", "aitokens.v1.KeyAdmin"])
                    .build_v1()
                    .map_err(reflection_error)?,
            )
            .add_service(
                reflection(&["aitokens.v1.TokenAdmin", "aitokens.v1.KeyAdmin"])
                    .build_v1alpha()
                    .map_err(reflection_error)?,
            )
            .add_service(admin_api)
            .add_service(key_admin_api)
            .serve_with_incoming_shutdown(
                TlsIncoming::new(
                    admin,
                    self.admin_tls.clone(),
                    self.telemetry.clone(),
                    self.tokens.audit_queue().clone(),
                ),
                stopped(
                    stop_rx.clone(),
                    admin_health.clone(),
                    self.telemetry.clone(),
                ),
            );
        let internal_server = builder(layer)
            .add_service(internal_health_service)
            .add_service(
                reflection(&["aitokens.v1.TokenResolver"])
                    .build_v1()
                    .map_err(reflection_error)?,
            )
            .add_service(
                reflection(&["aitokens.v1.TokenResolver"])
                    .build_v1alpha()
                    .map_err(reflection_error)?,
            )
            .add_service(resolver_api)
            .add_optional_service(self.echo.then(|| EchoServer::new(EchoApi)))
            .serve_with_incoming_shutdown(
                TlsIncoming::new(
                    internal,
                    self.internal_tls.clone(),
                    self.telemetry.clone(),
                    self.tokens.audit_queue().clone(),
                ),
                stopped(
                    stop_rx.clone(),
                    internal_health.clone(),
                    self.telemetry.clone(),
                ),
            );

        let reloads = tokio::spawn(reload_tls(
            [self.admin_tls, self.internal_tls],
            self.hangup,
            self.tls_reload_interval,
            self.telemetry.clone(),
            stop_rx.clone(),
        ));
        // Both listeners are bound and the store and keys are loaded.
        self.telemetry.set_ready(true);
        let servers = async { tokio::join!(admin_server, internal_server) };
        let deadline = async {
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let served = tokio::select! {
            (admin_result, internal_result) = servers => admin_result
                .and(internal_result)
                .map_err(|e| Error::Internal(format!("gRPC server: {e}"))),
            () = deadline => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; closing them");
                Ok(())
            }
        };
        reloader.abort();
        let _ = change_watch.await;
        let _ = flusher.await;
        let _ = key_upkeep.await;
        // Last flush: nothing counted or queued before the stop is lost.
        let flushed = self.tokens.flush().await;
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "final flush of usage counters and audit events failed");
        }
        reloads.abort();
        // Leave the files at rest complete: fold the WAL into the database.
        if let Err(e) = self.tokens.checkpoint().await {
            tracing::warn!(error = %e, "final database checkpoint failed");
        }
        tracing::info!("server stopped");
        served.and(flushed)
    }
}

/// Reloads the listeners' TLS material when its files change (checked every
/// `interval`) or on SIGHUP, until shutdown. A failed reload keeps the
/// previous material and says why in the log and in
/// `aitokens_tls_reloads_total{result="error"}`.
async fn reload_tls(
    materials: [Arc<TlsMaterial>; 2],
    mut hangup: Option<Hangup>,
    interval: Duration,
    telemetry: Telemetry,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<()>();
        let force = tokio::select! {
            () = sighup => true,
            () = tokio::time::sleep(interval) => false,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        if force {
            tracing::info!("SIGHUP: reloading TLS material");
        }
        for material in &materials {
            let outcome = {
                let material = material.clone();
                tokio::task::spawn_blocking(move || material.reload(force)).await
            };
            let listener = material.name();
            match outcome {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Reloaded) => {
                    tracing::info!(listener, "TLS material reloaded; new connections use it");
                    telemetry.tls_reloaded(listener, true);
                }
                Ok(Reload::Failed(e)) => {
                    tracing::warn!(listener, error = %e, "TLS reload failed; keeping the previous certificate, client CA and CRLs");
                    telemetry.tls_reloaded(listener, false);
                }
                Err(e) => tracing::warn!(listener, error = %e, "TLS reload task failed"),
            }
        }
    }
}

fn builder(layer: GrpcLayer) -> TonicServer<Stack<GrpcLayer, Identity>> {
    TonicServer::builder()
        .timeout(REQUEST_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(layer)
}

/// Reflection for aitokens `services` plus health and reflection itself.
///
/// The `google.rpc` descriptors (from tonic-types, the crate that builds our
/// error details) let grpcurl and other reflection clients decode ErrorInfo,
/// BadRequest and PreconditionFailure details instead of showing raw bytes.
fn reflection(services: &[&str]) -> tonic_reflection::server::Builder<'static> {
    services
        .iter()
        .fold(
            tonic_reflection::server::Builder::configure(),
            |builder, service| builder.with_service_name(*service),
        )
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}

fn reflection_error(e: tonic_reflection::server::Error) -> Error {
    Error::Internal(format!("reflection: {e}"))
}

/// Writes usage counters and queued audit events every `interval`, and
/// early when many counters are pending, until stop.
///
/// A failed write keeps everything queued for the next tick and counts in
/// `aitokens_usage_flush_failures_total` and `aitokens_audit_failures_total`
/// (the batch carries the queued audit events).
async fn flush_periodically(
    tokens: Tokens,
    telemetry: Telemetry,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = tokens.usage_filled() => ticker.reset(),
            () = stopped_signal(&mut stop) => return,
        }
        if let Err(e) = tokens.flush().await {
            telemetry.usage_flush_failed();
            telemetry.audit_failed();
            tracing::error!(error = %e, "flushing usage counters and audit events failed; will retry");
        }
    }
}

/// Loads sealed rows into the resolve cache in the background, so that
/// resolves soon after start do not each pay a store read.
async fn warm_resolve_cache(tokens: Tokens) {
    let started = std::time::Instant::now();
    match tokens.warm_cache().await {
        Ok(rows) => {
            let stats = tokens.cache_stats();
            tracing::info!(
                rows,
                mib = stats.bytes >> 20,
                ms = started.elapsed().as_millis() as u64,
                "resolve cache warmed"
            );
        }
        // Not fatal: rows are read on demand instead.
        Err(e) => {
            tracing::warn!(error = %e, "warming the resolve cache stopped; rows will be read on demand")
        }
    }
}

/// How often the store's change generation is looked at. A change made by
/// another process reaches resolves within about this long; changes made
/// through this server are in force at once.
const STORE_CHANGE_POLL: Duration = Duration::from_millis(250);

/// Drops the resolve cache whenever the database changed (see
/// [`Tokens::notice_store_changes`]) until stop.
async fn notice_store_changes(tokens: Tokens, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(STORE_CHANGE_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => match tokens.notice_store_changes().await {
                Ok(true) => tracing::debug!("the database changed; resolve cache dropped"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not check the database for changes; will retry"),
            },
            () = stopped_signal(&mut stop) => return,
        }
    }
}

/// How long the re-wrap job works before yielding to a stop request.
const REWRAP_SLICE: Duration = Duration::from_millis(200);

/// Every `interval`: picks up keyring changes made by another process, runs
/// the re-wrap job while data keys sit under an old KEK version, and now and
/// then VACUUMs so deleted pages do not linger in the file.
async fn maintain_keys(keys: Keys, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_vacuum = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stopped_signal(&mut stop) => return,
        }
        let keys = keys.clone();
        let vacuum_due = last_vacuum.elapsed() >= VACUUM_INTERVAL;
        let work = tokio::task::spawn_blocking(move || -> Result<usize> {
            keys.reload_if_changed()?;
            let started = std::time::Instant::now();
            let mut scanned = 0;
            while started.elapsed() < REWRAP_SLICE {
                match keys.rewrap_step(REWRAP_BATCH)? {
                    0 => break,
                    n => scanned += n,
                }
            }
            if vacuum_due {
                keys.vacuum()?;
            }
            Ok(scanned)
        })
        .await;
        if vacuum_due {
            last_vacuum = tokio::time::Instant::now();
        }
        match work {
            Ok(Ok(0)) => {}
            Ok(Ok(scanned)) => tracing::debug!(scanned, "re-wrap job progressed"),
            Ok(Err(e)) => tracing::error!(error = %e, "key maintenance failed; will retry"),
            Err(e) => tracing::error!(error = %e, "key maintenance task failed"),
        }
    }
}

/// How often the database is VACUUMed (erasing deleted content from free pages).
const VACUUM_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Completes once a stop is requested (holding no watch guard across awaits).
async fn stopped_signal(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// How often the policy file is checked for changes.
const POLICY_POLL: Duration = Duration::from_secs(1);

/// Reloads the policy on SIGHUP or when its file changes. An invalid new
/// file keeps the old policy in force and says why in the log. Requests in
/// flight keep the policy they started with; connections are not touched.
async fn reload_policy(policy: Arc<PolicyHandle>, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let fingerprint = |path: &Path| std::fs::read(path).ok();
    let mut seen = fingerprint(&path);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut ticker = tokio::time::interval(POLICY_POLL);
    loop {
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            () = stopped_signal(&mut stop) => return,
        };
        let current = fingerprint(&path);
        if !forced && current == seen {
            continue;
        }
        seen = current;
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Policy::load(&path)).await
        };
        match loaded {
            Ok(Ok(new_policy)) => {
                policy.replace(new_policy);
                tracing::info!(path = %path.display(), "policy reloaded");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "policy not reloaded; the previous policy stays in force")
            }
            Err(e) => tracing::error!(error = %e, "policy reload task failed"),
        }
    }
}

/// Resolves when shutdown is requested, after marking the listener's health
/// NOT_SERVING and `/readyz` not ready, so that load balancers stop sending
/// new work.
async fn stopped(mut stop: watch::Receiver<bool>, health: HealthReporter, telemetry: Telemetry) {
    let _ = stop.wait_for(|stopped| *stopped).await;
    telemetry.set_ready(false);
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}
