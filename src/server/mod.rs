//! Two tonic servers in one process over one domain.
//!
//! - **admin** listener: `TokenAdmin`, `KeyAdmin`, health, reflection. TLS
//!   with a required client certificate; the caller must be an admin
//!   identity in the policy.
//! - **internal** listener: `TokenResolver`, health, reflection. mTLS; the
//!   caller must be a resolver identity allowed for the token.
//!
//! Each listener runs our own rustls acceptor ([`tls`]), which reads the
//! peer's identity once per connection; the telemetry layer and the
//! authentication layer wrap every request. Beside them run the background
//! tasks (the flusher, key upkeep, the change watch, reloads).
//!
//! Kept whole at about 540 lines: start-up is one ordered sequence (store,
//! keyring, audit, domain, listeners, tasks), and splitting it would hide
//! that order.
//!
//! [`Server::open`] does every start-up check (policy, TLS material, master
//! key, database integrity, keyring) before anything listens, so a bad
//! deployment fails with one clear message and never half-serves.

mod tasks;
pub mod tls;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tonic::transport::{Server as TonicServer, server::Router};
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};

use tls::{TlsIncoming, TlsMaterial};

use crate::{
    api::{
        AdminApi, KeyAdminApi, MAX_REQUEST_BYTES, ResolverApi,
        echo::{EchoApi, pb::echo_server::EchoServer},
    },
    audit::{AuditHealth, AuditQueue, AuditTrail, Checkpointer, JsonlSink},
    auth::{AuthLayer, Authorizer, Policy, PolicyHandle},
    config::Config,
    crypto::KeySource,
    error::{Error, Result},
    proto::{
        self, key_admin_server::KeyAdminServer, token_admin_server::TokenAdminServer,
        token_resolver_server::TokenResolverServer,
    },
    rotation::{KeyRotation, Legacy, Missing, unlock},
    store::{AuditMirror, SharedStore, StoreLocation},
    telemetry::{Gauges, GrpcLayer, Telemetry},
    tokens::{Accounting, Domain, TokenSettings},
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
/// Largest request message of the services whose requests are empty or a
/// name (KeyAdmin, health, reflection): explicit, rather than tonic's 4 MiB
/// default, so that no service decodes more than it could ever need.
const MAX_SMALL_REQUEST_BYTES: usize = 4 * 1024;

/// The layers around every request: telemetry (request id, metrics), then
/// authentication.
type Layers = Stack<AuthLayer, Stack<GrpcLayer, Identity>>;

/// A server that passed every start-up check and is ready to listen.
pub struct Server {
    telemetry: Telemetry,
    store: SharedStore,
    domain: Domain,
    keys: KeyRotation,
    audit: Arc<AuditQueue>,
    policy: Arc<PolicyHandle>,
    policy_path: PathBuf,
    flush_interval: Duration,
    admin_tls: Arc<TlsMaterial>,
    internal_tls: Arc<TlsMaterial>,
    tls_reload_interval: Duration,
    /// SIGHUP, registered when the server opens: from then on a SIGHUP
    /// reloads TLS material (and the policy) instead of ending the process.
    hangup: Option<tasks::Hangup>,
    /// SIGHUP for the policy reloader, registered at the same time (so a
    /// SIGHUP right after start-up is not missed).
    policy_hangup: Option<tasks::Hangup>,
    /// Serve the benchmark's Echo RPC on the internal listener.
    echo: bool,
    /// Writes the audit chain's checkpoints outside the database.
    checkpoints: Arc<Checkpointer>,
    checkpoint_interval: Duration,
    /// How long resolves may be served from the cache while the store does
    /// not answer.
    outage_grace: Duration,
}

/// What start-up reads from files, off the executor.
struct Loaded {
    policy: Policy,
    admin_tls: Arc<TlsMaterial>,
    internal_tls: Arc<TlsMaterial>,
    material: crate::crypto::RootMaterial,
    location: StoreLocation,
    mirror: Option<Arc<JsonlSink>>,
}

impl Server {
    /// Loads and checks everything `config` names, taking the root key from
    /// its configured source.
    pub async fn open(config: &Config) -> Result<Self> {
        let source = config.store.key_source()?;
        Self::open_with(config, Telemetry::new(), source, Legacy::Refuse).await
    }

    /// Like [`Server::open`], recording metrics and readiness into
    /// `telemetry` (which an already running `/readyz` may be reporting), with
    /// the root key from `source` (the binary reads an environment key early
    /// and removes it from the environment), and `legacy` saying what to do
    /// with an audit trail written before chains were keyed (`aitokens dev`
    /// upgrades its own folder; a production server refuses and names the
    /// command). Blocking work (file reads, key derivation, SQLite's open)
    /// runs on the blocking pool.
    pub async fn open_with(
        config: &Config,
        telemetry: Telemetry,
        source: KeySource,
        legacy: Legacy,
    ) -> Result<Self> {
        let loaded = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || load(&config, &source))
                .await
                .map_err(|e| Error::Internal(format!("start-up task failed: {e}")))??
        };
        let audit = Arc::new(AuditQueue::default());
        let mirror = loaded.mirror.clone().map(|m| m as Arc<dyn AuditMirror>);
        let store = crate::store::open(&loaded.location, mirror).await?;
        let keyring = Arc::new(unlock(&*store, loaded.material, Missing::Create, legacy).await?);
        if config.bench.echo {
            tracing::warn!(
                "serving the benchmark Echo RPC on the internal listener ([bench] echo = true)"
            );
        }
        let chain_key = keyring
            .current()
            .chain_key()
            .ok_or_else(|| Error::Internal("the keyring has no audit key".into()))?;
        let checkpoints = Arc::new(Checkpointer::new(
            store.clone(),
            Arc::new(chain_key),
            config.audit.anchor.clone(),
            loaded.mirror.clone(),
        ));
        let health = Arc::new(AuditHealth::new(
            audit.clone(),
            Duration::from_secs(config.audit.max_unflushed_secs),
        ));
        let accounting = Accounting {
            health: health.clone(),
            per_call: loaded.mirror.filter(|_| config.audit.per_call_resolves),
        };
        let settings = TokenSettings {
            track: config.usage.track,
            recent_window: Duration::from_secs(config.usage.recent_window_secs),
            cache_bytes: config.cache.max_bytes(),
            watch: config.watch.settings(),
            ..TokenSettings::default()
        };
        let domain = Domain::new(
            store.clone(),
            keyring.clone(),
            audit.clone(),
            accounting,
            settings,
        )
        .await?;
        set_gauge_source(&telemetry, &domain, &audit, &health);
        Ok(Self {
            telemetry,
            keys: KeyRotation::new(store.clone(), keyring),
            store,
            domain,
            audit,
            policy: Arc::new(PolicyHandle::new(loaded.policy)),
            policy_path: config.policy.clone(),
            flush_interval: Duration::from_secs(config.usage.flush_interval_secs),
            admin_tls: loaded.admin_tls,
            internal_tls: loaded.internal_tls,
            tls_reload_interval: Duration::from_secs(config.tls_reload_interval_secs.max(1)),
            hangup: register_hangup(),
            policy_hangup: register_hangup(),
            echo: config.bench.echo,
            checkpoints,
            checkpoint_interval: Duration::from_secs(config.audit.checkpoint_interval_secs),
            outage_grace: Duration::from_secs(config.store.outage_grace_secs),
        })
    }

    /// The metrics and readiness of this server.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Serves both listeners until `shutdown` completes, then stops accepting,
    /// lets in-flight requests finish, writes what is pending, and returns.
    pub async fn serve(
        mut self,
        admin: TcpListener,
        internal: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let policy_hangup = self.policy_hangup.take();
        let background = self.spawn_tasks(&stop_rx, policy_hangup);
        let hangup = self.hangup.take();
        let served = self.serve_listeners(admin, internal, stop_rx, hangup).await;
        for task in background {
            task.abort();
            let _ = task.await;
        }
        // Last flush: nothing counted or queued before the stop is lost.
        let flushed = self.domain.flusher.flush().await;
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "final flush of usage counters and audit events failed");
        }
        if let Err(e) = self.checkpoints.checkpoint().await {
            tracing::error!(error = %e, "the final audit checkpoint could not be written");
        }
        // Leave the files at rest complete: fold the WAL into the database.
        if let Err(e) = self.store.checkpoint().await {
            tracing::warn!(error = %e, "final database checkpoint failed");
        }
        // Whoever still holds the telemetry must not keep the store open.
        self.telemetry.clear_gauge_source();
        tracing::info!("server stopped");
        served.and(flushed)
    }

    fn spawn_tasks(
        &self,
        stop: &watch::Receiver<bool>,
        policy_hangup: Option<tasks::Hangup>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let resolver = self.domain.resolver.clone();
        let feed = self.store.subscribe_changes().map(|changes| {
            tokio::spawn(tasks::follow_store_changes(
                resolver.clone(),
                changes,
                stop.clone(),
            ))
        });
        let watch = self.domain.watch.clone();
        let changes = self.store.subscribe_changes();
        let stopping = stop.clone();
        let mut tasks = vec![
            tokio::spawn(async move { watch.run(changes, stopping).await }),
            // Joined like the others: a stop ends a warm-up still running,
            // so that the store (and its database lock) is let go at once.
            tokio::spawn(tasks::warm_resolve_cache(resolver.clone())),
            tokio::spawn(tasks::flush_periodically(
                self.domain.flusher.clone(),
                self.telemetry.clone(),
                self.flush_interval,
                stop.clone(),
            )),
            tokio::spawn(tasks::maintain_keys(
                self.keys.clone(),
                self.store.clone(),
                self.flush_interval,
                stop.clone(),
            )),
            tokio::spawn(tasks::notice_store_changes(
                resolver.clone(),
                self.telemetry.clone(),
                self.outage_grace,
                stop.clone(),
            )),
            tokio::spawn(tasks::recount_tokens(self.domain.clone(), stop.clone())),
            tokio::spawn(tasks::checkpoint_periodically(
                self.checkpoints.clone(),
                self.checkpoint_interval,
                stop.clone(),
            )),
            tokio::spawn(tasks::reload_policy(
                self.policy.clone(),
                self.policy_path.clone(),
                policy_hangup,
                self.telemetry.clone(),
                stop.clone(),
            )),
        ];
        tasks.extend(feed);
        tasks
    }

    async fn serve_listeners(
        &self,
        admin: TcpListener,
        internal: TcpListener,
        mut stop: watch::Receiver<bool>,
        hangup: Option<tasks::Hangup>,
    ) -> Result<()> {
        let auth = Authorizer::new(self.policy.clone(), self.audit.clone());
        let (admin_health, admin_health_service) = tonic_health::server::health_reporter();
        admin_health
            .set_serving::<TokenAdminServer<AdminApi>>()
            .await;
        let (internal_health, internal_health_service) = tonic_health::server::health_reporter();
        internal_health
            .set_serving::<TokenResolverServer<ResolverApi>>()
            .await;
        let admin_server = self
            .admin_router(auth.clone())?
            .add_service(admin_health_service.max_decoding_message_size(MAX_SMALL_REQUEST_BYTES))
            .serve_with_incoming_shutdown(
                self.incoming(admin, &self.admin_tls),
                self.stopped(stop.clone(), admin_health),
            );
        let internal_server = self
            .internal_router(auth, stop.clone())?
            .add_service(internal_health_service.max_decoding_message_size(MAX_SMALL_REQUEST_BYTES))
            .serve_with_incoming_shutdown(
                self.incoming(internal, &self.internal_tls),
                self.stopped(stop.clone(), internal_health),
            );
        let reloads = tokio::spawn(tasks::reload_tls(
            vec![self.admin_tls.clone(), self.internal_tls.clone()],
            hangup,
            self.tls_reload_interval,
            self.telemetry.clone(),
            stop.clone(),
        ));
        // Both listeners are bound and the store and keys are loaded.
        self.telemetry.set_ready(true);
        let servers = async { tokio::join!(admin_server, internal_server) };
        let deadline = async {
            tasks::stopped(&mut stop).await;
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
        reloads.abort();
        served
    }

    /// TokenAdmin, KeyAdmin and their reflection.
    fn admin_router(&self, auth: Authorizer) -> Result<Router<Layers>> {
        let trail = AuditTrail::new(self.store.clone());
        let admin_api = AdminApi::new(self.domain.clone(), trail, auth.clone());
        let key_admin_api = KeyAdminApi::new(self.keys.clone(), auth);
        let services = ["aitokens.v1.TokenAdmin", "aitokens.v1.KeyAdmin"];
        Ok(self
            .builder()
            .add_service(
                reflection(&services)
                    .build_v1()
                    .map_err(reflection_error)?
                    .max_decoding_message_size(MAX_SMALL_REQUEST_BYTES),
            )
            .add_service(
                reflection(&services)
                    .build_v1alpha()
                    .map_err(reflection_error)?
                    .max_decoding_message_size(MAX_SMALL_REQUEST_BYTES),
            )
            .add_service(
                TokenAdminServer::new(admin_api).max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                KeyAdminServer::new(key_admin_api)
                    .max_decoding_message_size(MAX_SMALL_REQUEST_BYTES),
            ))
    }

    /// TokenResolver, its reflection and (when configured) the Echo floor.
    fn internal_router(
        &self,
        auth: Authorizer,
        stop: watch::Receiver<bool>,
    ) -> Result<Router<Layers>> {
        let resolver_api = ResolverApi::new(
            self.domain.resolver.clone(),
            self.domain.watch.clone(),
            auth,
            stop,
        );
        let services = ["aitokens.v1.TokenResolver"];
        Ok(self
            .builder()
            .add_service(
                reflection(&services)
                    .build_v1()
                    .map_err(reflection_error)?
                    .max_decoding_message_size(MAX_SMALL_REQUEST_BYTES),
            )
            .add_service(
                reflection(&services)
                    .build_v1alpha()
                    .map_err(reflection_error)?
                    .max_decoding_message_size(MAX_SMALL_REQUEST_BYTES),
            )
            .add_service(
                TokenResolverServer::new(resolver_api).max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_optional_service(self.echo.then(|| EchoServer::new(EchoApi))))
    }

    fn builder(&self) -> TonicServer<Layers> {
        TonicServer::builder()
            .timeout(REQUEST_TIMEOUT)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .max_connection_age(MAX_CONNECTION_AGE)
            .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(GrpcLayer::new(self.telemetry.clone()))
            .layer(AuthLayer::new(self.audit.clone()))
    }

    fn incoming(&self, listener: TcpListener, material: &Arc<TlsMaterial>) -> TlsIncoming {
        TlsIncoming::new(
            listener,
            material.clone(),
            self.telemetry.clone(),
            self.audit.clone(),
        )
    }

    /// Resolves when shutdown is requested, after marking the listener's
    /// health NOT_SERVING and `/readyz` not ready, so that load balancers
    /// stop sending new work.
    fn stopped(
        &self,
        mut stop: watch::Receiver<bool>,
        health: HealthReporter,
    ) -> impl Future<Output = ()> + use<> {
        let telemetry = self.telemetry.clone();
        async move {
            tasks::stopped(&mut stop).await;
            telemetry.set_ready(false);
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    }
}

/// Lets `/metrics` read the domain's and the audit trail's figures from
/// memory at each scrape.
fn set_gauge_source(
    telemetry: &Telemetry,
    domain: &Domain,
    audit: &Arc<AuditQueue>,
    health: &Arc<AuditHealth>,
) {
    let (domain, audit, health) = (domain.clone(), audit.clone(), health.clone());
    telemetry.set_gauge_source(move || {
        let cache = domain.resolver.cache_stats();
        let (events_dropped, handshakes_folded) = audit.losses();
        Gauges {
            tokens: domain.lifecycle.token_count(),
            cache_rows: cache.rows,
            cache_bytes: cache.bytes,
            cache_misses: cache.misses,
            audit_accepting: health.accepting(),
            audit_events_dropped: events_dropped,
            usage_counters_dropped: domain.flusher.dropped(),
            handshake_refusals_folded: handshakes_folded,
        }
    });
}

/// Reads every file start-up needs and opens the database.
fn load(config: &Config, source: &KeySource) -> Result<Loaded> {
    let policy = Policy::load(&config.policy)?;
    let admin_tls = TlsMaterial::load(&config.admin, "admin")?;
    let internal_tls = TlsMaterial::load(&config.internal, "internal")?;
    let material = source.load()?;
    let location = config.store.location()?;
    let mirror = config
        .audit
        .jsonl
        .as_ref()
        .map(|path| Arc::new(JsonlSink::new(path.clone())));
    Ok(Loaded {
        policy,
        admin_tls,
        internal_tls,
        material,
        location,
        mirror,
    })
}

/// SIGHUP, registered now: from here on a SIGHUP reloads TLS material and
/// the policy instead of ending the process.
fn register_hangup() -> Option<tasks::Hangup> {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "SIGHUP reloads are unavailable"))
            .ok()
    }
    #[cfg(not(unix))]
    None
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
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}

fn reflection_error(e: tonic_reflection::server::Error) -> Error {
    Error::Internal(format!("reflection: {e}"))
}
