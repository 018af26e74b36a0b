//! A tower layer around each tonic server: request ids and call metrics.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tonic::{
    Code, Status,
    codegen::http::{HeaderMap, HeaderValue, Request, Response},
};
use tonic_types::StatusExt;
use tower::{Layer, Service};
use tracing::Instrument;

use super::Telemetry;
use crate::proto::rpcs;

/// The header that carries a request id in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id accepted from a caller.
const MAX_REQUEST_ID_CHARS: usize = 64;

/// Adds [`GrpcService`] around a tonic server.
#[derive(Clone)]
pub struct GrpcLayer {
    telemetry: Telemetry,
}

impl GrpcLayer {
    /// A layer recording into `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self { telemetry }
    }
}

impl<S> Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// Runs each call inside a `request` span with its id, echoes the id in the
/// response, and records the call's code and latency.
#[derive(Clone)]
pub struct GrpcService<S> {
    inner: S,
    telemetry: Telemetry,
}

/// The service and method a request path names.
pub(super) struct Call {
    pub(super) service: &'static str,
    pub(super) method: &'static str,
}

impl Call {
    /// Known RPCs (see [`rpcs`]) are counted under their own names; any
    /// other path as `other`, which keeps label cardinality bounded.
    fn of(path: &str) -> Self {
        match rpcs::by_path(path) {
            Some(rpc) => Self {
                service: &rpc.service,
                method: &rpc.method,
            },
            None => Self {
                service: "other",
                method: "other",
            },
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, ResBody> Service<Request<B>> for GrpcService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let telemetry = self.telemetry.clone();
        let call = Call::of(request.uri().path());
        let id = request_id(request.headers());
        let span = tracing::info_span!("request", id = %id, rpc = %request.uri().path());
        let start = Instant::now();
        Box::pin(
            async move {
                let result = inner.call(request).await;
                let code = match &result {
                    Ok(response) => {
                        let code = code_of(response.headers());
                        if code != Code::Ok {
                            tracing::debug!(code = ?code, "request refused");
                        }
                        if call.method == "ResolveToken"
                            && matches!(
                                code,
                                Code::PermissionDenied
                                    | Code::Unauthenticated
                                    | Code::FailedPrecondition
                            )
                        {
                            telemetry.record_resolve_denied(denial_reason(response.headers()));
                        }
                        code_name(code)
                    }
                    Err(_) => "TransportError",
                };
                telemetry.record_call(&call, code, start.elapsed());
                result.map(|mut response| {
                    if let Ok(value) = HeaderValue::from_str(&id) {
                        response.headers_mut().insert(REQUEST_ID_HEADER, value);
                    }
                    response
                })
            }
            .instrument(span),
        )
    }
}

/// The caller's request id if it is short and plain, else a fresh random one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_CHARS
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    match given {
        Some(id) => id.to_owned(),
        // A label, not a secret: a per-thread generator (seeded from the OS
        // once) spares every request a getrandom system call.
        None => format!("{:016x}", fastrand::u64(..)),
    }
}

/// The status code of a response. tonic sends an error as a trailers-only
/// response (`grpc-status` in the headers); a unary success carries its
/// `grpc-status: 0` in the trailers, so no header means OK here.
fn code_of(headers: &HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes()))
}

/// The `google.rpc.ErrorInfo` reason of an error response, if one is there
/// and is one of ours.
fn denial_reason(headers: &HeaderMap) -> &'static str {
    const REASONS: [&str; 3] = ["POLICY_DENIED", "NO_USABLE_IDENTITY", "TOKEN_DISABLED"];
    let reason = Status::from_header_map(headers).and_then(|status| {
        let details = status.get_error_details();
        let reason = details.error_info()?.reason.clone();
        REASONS.into_iter().find(|known| *known == reason)
    });
    reason.unwrap_or("unknown")
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_bounded_labels() {
        let call = Call::of("/aitokens.v1.TokenAdmin/CreateToken");
        assert_eq!(
            (call.service, call.method),
            ("aitokens.v1.TokenAdmin", "CreateToken")
        );
        let call = Call::of("/evil.Service/x-random-12345");
        assert_eq!((call.service, call.method), ("other", "other"));
    }

    #[test]
    fn request_ids_from_callers_are_kept_only_when_plain() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("req-42.a_b"));
        assert_eq!(request_id(&headers), "req-42.a_b");
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        let generated = request_id(&headers);
        assert_eq!(generated.len(), 16);
        assert!(generated.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
