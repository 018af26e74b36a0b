//! Two tonic servers in one process over one domain handle.
//!
//! - **admin** listener: `TokenAdmin`, health, reflection. TLS with a required
//!   client certificate; the caller must be an admin identity in the policy.
//! - **internal** listener: `TokenResolver`, health, reflection. mTLS; the
//!   caller must be a resolver identity allowed for the token.
//!
//! [`Server::open`] does every start-up check (policy, TLS material, master
//! key, database integrity, keyring) before anything listens, so a bad
//! deployment fails with one clear message and never half-serves.

use std::{future::Future, sync::Arc, time::Duration};

use rustls::ServerConfig;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Server as TonicServer;
use tonic_health::server::HealthReporter;

use crate::{
    api::{
        AdminApi, MAX_REQUEST_BYTES, ResolverApi,
        echo::{EchoApi, pb::echo_server::EchoServer},
        pb::{
            self, token_admin_server::TokenAdminServer, token_resolver_server::TokenResolverServer,
        },
    },
    auth::{Policy, PolicyHandle},
    config::Config,
    crypto::{Keyring, RootKey},
    error::{Error, Result},
    store::{SqliteStore, TokenStore},
    tls::{self, TlsIncoming},
    tokens::Tokens,
};

/// Longest a connection lives before the server asks the client to reconnect
/// (so a certificate that stopped being trusted stops working).
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(10 * 60);
/// Longest a single request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests get to finish once shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Concurrent requests (HTTP/2 streams) per connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// A server that passed every start-up check and is ready to listen.
pub struct Server {
    tokens: Tokens,
    policy: Arc<PolicyHandle>,
    admin_tls: Arc<ServerConfig>,
    internal_tls: Arc<ServerConfig>,
    /// Serve the benchmark's Echo RPC on the internal listener.
    echo: bool,
}

impl Server {
    /// Loads and checks everything `config` names. Blocking work (key
    /// derivation, SQLite) runs on the blocking pool.
    pub async fn open(config: &Config) -> Result<Self> {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(&config))
            .await
            .map_err(|e| Error::Internal(format!("start-up task failed: {e}")))?
    }

    fn open_blocking(config: &Config) -> Result<Self> {
        let policy = Policy::load(&config.policy)?;
        let admin_tls = tls::server_config(&config.admin)?;
        let internal_tls = tls::server_config(&config.internal)?;
        let root = RootKey::from_file(&config.store.master_key_file)?;
        let store = SqliteStore::open(&config.store.database)?;
        let keyring = match store.keyring()? {
            Some(records) => Keyring::open(&root, &records)?,
            None => {
                let (keyring, records) = Keyring::create(&root)?;
                store.init_keyring(&records)?;
                tracing::info!(database = %store.path().display(), "initialized a new keyring");
                keyring
            }
        };
        drop(root);
        if config.bench.echo {
            tracing::warn!(
                "serving the benchmark Echo RPC on the internal listener ([bench] echo = true)"
            );
        }
        let tokens = Tokens::new(Arc::new(store), Arc::new(keyring))?;
        Ok(Self {
            tokens,
            policy: Arc::new(PolicyHandle::new(policy)),
            admin_tls,
            internal_tls,
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

        let admin_api =
            TokenAdminServer::new(AdminApi::new(self.tokens.clone(), self.policy.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES);
        let resolver_api = TokenResolverServer::new(ResolverApi::new(self.tokens, self.policy))
            .max_decoding_message_size(MAX_REQUEST_BYTES);

        let admin_server = builder()
            .add_service(admin_health_service)
            .add_service(
                reflection("aitokens.v1.TokenAdmin")
                    .build_v1()
                    .map_err(reflection_error)?,
            )
            .add_service(
                reflection("aitokens.v1.TokenAdmin")
                    .build_v1alpha()
                    .map_err(reflection_error)?,
            )
            .add_service(admin_api)
            .serve_with_incoming_shutdown(
                TlsIncoming::new(admin, self.admin_tls, "admin"),
                stopped(stop_rx.clone(), admin_health.clone()),
            );
        let internal_server = builder()
            .add_service(internal_health_service)
            .add_service(
                reflection("aitokens.v1.TokenResolver")
                    .build_v1()
                    .map_err(reflection_error)?,
            )
            .add_service(
                reflection("aitokens.v1.TokenResolver")
                    .build_v1alpha()
                    .map_err(reflection_error)?,
            )
            .add_service(resolver_api)
            .add_optional_service(self.echo.then(|| EchoServer::new(EchoApi)))
            .serve_with_incoming_shutdown(
                TlsIncoming::new(internal, self.internal_tls, "internal"),
                stopped(stop_rx.clone(), internal_health.clone()),
            );

        let servers = async { tokio::join!(admin_server, internal_server) };
        let deadline = async {
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            (admin_result, internal_result) = servers => {
                admin_result
                    .and(internal_result)
                    .map_err(|e| Error::Internal(format!("gRPC server: {e}")))?;
            }
            () = deadline => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; closing them");
            }
        }
        tracing::info!("server stopped");
        Ok(())
    }
}

fn builder() -> TonicServer {
    TonicServer::builder()
        .timeout(REQUEST_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_connection_age(MAX_CONNECTION_AGE)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// Reflection for one aitokens service plus health and reflection itself.
fn reflection(service: &str) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}

fn reflection_error(e: tonic_reflection::server::Error) -> Error {
    Error::Internal(format!("reflection: {e}"))
}

/// Resolves when shutdown is requested, after marking the listener's health
/// NOT_SERVING so that load balancers stop sending new work.
async fn stopped(mut stop: watch::Receiver<bool>, health: HealthReporter) {
    let _ = stop.wait_for(|stopped| *stopped).await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}
