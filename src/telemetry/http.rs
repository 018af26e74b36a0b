//! The plain-HTTP observability listener: `/metrics`, `/healthz`, `/readyz`.
//!
//! It serves no token data and needs no TLS; bind it to localhost or a
//! network only the monitoring system reaches.

use std::future::Future;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use super::Telemetry;
use crate::error::{Error, Result};

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";
/// Liveness: 200 while the process runs.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness: 200 once the store and keys are loaded and the listeners serve.
pub const READY_PATH: &str = "/readyz";

/// Content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve_http(
    listener: TcpListener,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = Router::new()
        .route(METRICS_PATH, get(metrics))
        .route(HEALTH_PATH, get(|| async { "ok\n" }))
        .route(READY_PATH, get(readyz))
        .with_state(telemetry);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(format!("metrics listener: {e}")))
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
