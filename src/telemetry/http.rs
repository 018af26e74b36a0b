//! The plain-HTTP observability listener: `/metrics`, `/healthz`, `/readyz`.
//!
//! It serves no token data and needs no TLS; bind it to localhost or a
//! network only the monitoring system reaches. Being anonymous, it bounds
//! what a client can hold: a request's headers must arrive within
//! [`HEADER_READ_TIMEOUT`] (which also ends a kept-alive connection idle
//! that long), no connection lives longer than [`MAX_CONNECTION_AGE`], and
//! at most [`MAX_HTTP_CONNECTIONS`] are open at once: beyond that, new
//! connections are closed as soon as they are accepted (and counted in
//! `aitokens_http_connections_refused_total`).

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::Telemetry;
use crate::error::Result;

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";
/// Liveness: 200 while the process runs.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness: 200 once the store and keys are loaded and the listeners serve.
pub const READY_PATH: &str = "/readyz";
/// Longest a client may take to send a request's line and headers, counted
/// from the connection (or from the previous response, for a kept-alive
/// one): a slowloris client, or an idle one, is closed after this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest any connection lives, whatever it does (a trickled request body
/// or a response read slowly included).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed as soon as accepted.
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// Content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Largest request head (line and headers) read; the probes' are tiny.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long open connections get to finish once shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown`, then lets open connections finish (for a bounded time).
pub async fn serve_http(
    listener: TcpListener,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = Router::new()
        .route(METRICS_PATH, get(metrics))
        .route(HEALTH_PATH, get(|| async { "ok\n" }))
        .route(READY_PATH, get(readyz))
        .with_state(telemetry.clone());
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Usually EMFILE or a reset before accept: back off briefly.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            telemetry.http_connection_refused();
            drop(tcp);
            continue;
        };
        let connection = serve_connection(tcp, app.clone(), &graceful);
        tokio::spawn(async move {
            // The slot is held until the connection ends or reaches its age.
            let _slot = slot;
            let _ = tokio::time::timeout(MAX_CONNECTION_AGE, connection).await;
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("metrics listener: connections still open after the grace period");
    }
    Ok(())
}

/// HTTP/1 on one connection, with the header-read timeout, watched for a
/// graceful shutdown.
fn serve_connection(
    tcp: TcpStream,
    app: Router,
    graceful: &GracefulShutdown,
) -> impl Future<Output = ()> + Send + 'static {
    let _ = tcp.set_nodelay(true);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app));
    let watched = graceful.watch(connection);
    async move {
        if let Err(e) = watched.await {
            tracing::debug!(error = %e, "metrics listener: connection ended");
        }
    }
}

async fn metrics(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        telemetry.render(),
    )
}

async fn readyz(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    if telemetry.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
