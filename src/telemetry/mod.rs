//! Observability: Prometheus metrics, health and readiness over plain HTTP,
//! and a request id on every log line of a gRPC request.
//!
//! - [`Telemetry`] owns the metric registry and the readiness flag. One is
//!   shared by both gRPC listeners and the HTTP listener.
//! - [`GrpcLayer`] wraps each tonic server: it opens a `request` span with a
//!   request id (the caller's `x-request-id` if well-formed, else a random
//!   one, echoed in the response) and records the call's service, method,
//!   status code and latency.
//! - [`serve_http`] answers `/metrics`, `/healthz` (the process is up) and
//!   `/readyz` (the store and keys are loaded and the listeners serve).
//!
//! Metrics carry names, codes and reasons only: never a token id, a tenant,
//! an identity or a value (cardinality stays bounded and nothing leaks).

mod http;
mod layer;

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};

pub use self::http::{
    HEADER_READ_TIMEOUT, HEALTH_PATH, MAX_CONNECTION_AGE, MAX_HTTP_CONNECTIONS, METRICS_PATH,
    READY_PATH, serve_http,
};
pub use layer::{GrpcLayer, GrpcService, REQUEST_ID_HEADER};

/// Labels of a gRPC call counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: &'static str,
    method: &'static str,
}

/// Labels of a denied resolve.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Labels of a TLS reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    listener: &'static str,
    result: &'static str,
}

/// Labels of a policy reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Labels of a failed TLS handshake.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: &'static str,
    reason: &'static str,
}

/// Metrics and readiness. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    resolves_denied: Family<ReasonLabels, Counter>,
    tokens: Gauge,
    cache_rows: Gauge,
    cache_bytes: Gauge,
    cache_misses: Counter,
    audit_failures: Counter,
    audit_events_dropped: Counter,
    audit_accepting: Gauge,
    usage_dropped: Counter,
    handshakes_folded: Counter,
    usage_flush_failures: Counter,
    tls_reloads: Family<ReloadLabels, Counter>,
    policy_reloads: Family<ResultLabels, Counter>,
    handshake_failures: Family<HandshakeLabels, Counter>,
    http_refused: Counter,
    ready: AtomicBool,
    store_reachable: AtomicBool,
    gauge_source: RwLock<Option<GaugeSource>>,
}

type GaugeSource = Box<dyn Fn() -> Gauges + Send + Sync>;

fn latency_histogram() -> Histogram {
    // 250 µs .. ~8 s, doubling.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Telemetry {
    /// A registry with every aitokens metric registered (at zero) and
    /// readiness off.
    // Long on purpose: the one list of every metric, its name and its help.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aitokens");
        let requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls handled, by service, method and status code",
            requests.clone(),
        );
        let latency = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time from request to response headers, by service and method",
            latency.clone(),
        );
        let resolves_denied = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "resolve_denied",
            "ResolveToken calls refused before any lookup, by ErrorInfo reason",
            resolves_denied.clone(),
        );
        let tokens = Gauge::default();
        registry.register(
            "tokens",
            "Tokens in the store (all tenants): counted at start, kept in memory, recounted every 10 s",
            tokens.clone(),
        );
        let cache_rows = Gauge::default();
        registry.register(
            "resolve_cache_rows",
            "Sealed rows held in memory for ResolveToken",
            cache_rows.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "resolve_cache_bytes",
            "Approximate memory of the ResolveToken cache ([cache] max_mib bounds it)",
            cache_bytes.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "resolve_cache_misses",
            "ResolveToken lookups the cache could not answer (each one a store read)",
            cache_misses.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit records that could not be written",
            audit_failures.clone(),
        );
        let audit_events_dropped = Counter::default();
        registry.register(
            "audit_events_dropped",
            "Audit events dropped because the queue was full (the store refused writes); \
             while any is, resolves are refused",
            audit_events_dropped.clone(),
        );
        let audit_accepting = Gauge::default();
        registry.register(
            "audit_accepting",
            "1 while the audit trail takes writes and values may leave; 0 while ResolveToken \
             refuses with AUDIT_UNAVAILABLE",
            audit_accepting.clone(),
        );
        let usage_dropped = Counter::default();
        registry.register(
            "usage_counters_dropped",
            "Usage counters of refused resolves dropped because their map was full",
            usage_dropped.clone(),
        );
        let handshakes_folded = Counter::default();
        registry.register(
            "tls_handshake_refusals_folded",
            "Refused TLS handshakes audited under source * because too many sources failed \
             in one flush interval (the counts stay exact)",
            handshakes_folded.clone(),
        );
        let usage_flush_failures = Counter::default();
        registry.register(
            "usage_flush_failures",
            "Usage-counter flushes to the store that failed",
            usage_flush_failures.clone(),
        );
        let tls_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "TLS material reloads by listener and result (ok, or error: the old material stays)",
            tls_reloads.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads (file changed, or SIGHUP) by result (ok, or error: the old policy stays)",
            policy_reloads.clone(),
        );
        let handshake_failures = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes refused, timed out or dropped, by listener and reason \
             (revoked, revocation_status, unknown_issuer, no_client_certificate, validity, \
             invalid_purpose, client_hello_timeout, handshake_timeout, evicted, ...)",
            handshake_failures.clone(),
        );
        let http_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "Connections to this metrics listener closed unserved because it had \
             the most open connections it serves at once",
            http_refused.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                latency,
                resolves_denied,
                tokens,
                cache_rows,
                cache_bytes,
                cache_misses,
                audit_failures,
                audit_events_dropped,
                audit_accepting,
                usage_dropped,
                handshakes_folded,
                usage_flush_failures,
                tls_reloads,
                policy_reloads,
                handshake_failures,
                http_refused,
                ready: AtomicBool::new(false),
                store_reachable: AtomicBool::new(true),
                gauge_source: RwLock::new(None),
            }),
        }
    }

    /// Marks the service ready (store and keys loaded, listeners serving) or not.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200: serving, and the store answers.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst) && self.inner.store_reachable.load(Ordering::SeqCst)
    }

    /// Records whether the store answers (a replica that cannot reach its
    /// database is not ready: load balancers send its callers elsewhere).
    pub fn set_store_reachable(&self, reachable: bool) {
        self.inner
            .store_reachable
            .store(reachable, Ordering::SeqCst);
    }

    /// Where the gauges that describe the store and the resolve cache come
    /// from at each scrape. The source must answer from memory: a scrape is
    /// anonymous and must never cost the store anything.
    pub fn set_gauge_source(&self, source: impl Fn() -> Gauges + Send + Sync + 'static) {
        *self
            .inner
            .gauge_source
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(source));
    }

    /// Forgets the gauge source (and what it holds: a stopped server's
    /// store and its connections); the gauges keep their last values.
    pub fn clear_gauge_source(&self) {
        if let Some(source) = self
            .inner
            .gauge_source
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            self.set_gauges(&source());
        }
    }

    fn set_gauges(&self, gauges: &Gauges) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.inner
            .tokens
            .set(i64::try_from(gauges.tokens).unwrap_or(i64::MAX));
        self.inner.cache_rows.set(gauge(gauges.cache_rows));
        self.inner.cache_bytes.set(gauge(gauges.cache_bytes));
        let catch_up = |counter: &Counter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        catch_up(&self.inner.cache_misses, gauges.cache_misses);
        catch_up(
            &self.inner.audit_events_dropped,
            gauges.audit_events_dropped,
        );
        catch_up(&self.inner.usage_dropped, gauges.usage_counters_dropped);
        catch_up(
            &self.inner.handshakes_folded,
            gauges.handshake_refusals_folded,
        );
        self.inner
            .audit_accepting
            .set(i64::from(gauges.audit_accepting));
    }

    /// Counts an audit record that could not be written.
    pub fn audit_failed(&self) {
        self.inner.audit_failures.inc();
    }

    /// Counts a failed flush of usage counters.
    pub fn usage_flush_failed(&self) {
        self.inner.usage_flush_failures.inc();
    }

    /// Counts a TLS reload of `listener` that succeeded (`ok`) or kept the
    /// old material.
    pub fn tls_reloaded(&self, listener: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.inner
            .tls_reloads
            .get_or_create(&ReloadLabels { listener, result })
            .inc();
    }

    /// Counts a policy reload that succeeded (`ok`) or kept the old policy.
    pub fn policy_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.inner
            .policy_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a TLS handshake on `listener` that failed for `reason`.
    pub fn handshake_failed(&self, listener: &'static str, reason: &'static str) {
        self.inner
            .handshake_failures
            .get_or_create(&HandshakeLabels { listener, reason })
            .inc();
    }

    /// Counts a metrics-listener connection closed unserved (at the cap).
    fn http_connection_refused(&self) {
        self.inner.http_refused.inc();
    }

    /// Records one finished gRPC call.
    fn record_call(&self, call: &layer::Call, code: &'static str, elapsed: Duration) {
        let method = MethodLabels {
            service: call.service,
            method: call.method,
        };
        self.inner
            .latency
            .get_or_create(&method)
            .observe(elapsed.as_secs_f64());
        self.inner
            .requests
            .get_or_create(&CallLabels {
                service: call.service,
                method: call.method,
                code,
            })
            .inc();
    }

    /// Records a refused ResolveToken.
    fn record_resolve_denied(&self, reason: &'static str) {
        self.inner
            .resolves_denied
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(source) = &*self
            .inner
            .gauge_source
            .read()
            .unwrap_or_else(|p| p.into_inner())
        {
            self.set_gauges(&source());
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        text
    }
}

/// What the store and the resolve cache hold, for the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Tokens in the store.
    pub tokens: u64,
    /// Rows in the resolve cache.
    pub cache_rows: usize,
    /// Approximate bytes of the resolve cache.
    pub cache_bytes: usize,
    /// Resolve-cache lookups that missed, since start.
    pub cache_misses: u64,
    /// Whether the audit trail takes writes (values leave only then).
    pub audit_accepting: bool,
    /// Audit events dropped because the queue was full, since start.
    pub audit_events_dropped: u64,
    /// Usage counters dropped because their map was full, since start.
    pub usage_counters_dropped: u64,
    /// Refused handshakes summed under source `*` (too many sources).
    pub handshake_refusals_folded: u64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}
