//! `aitokens.v1.TokenResolver`: the internal-only surface that hands out values.
//!
//! The hot path: the caller from the request (authenticated once per
//! connection), policy check in memory, the sealed row from the resolve
//! cache (an indexed read on a reader thread when it is not there), two
//! AEAD opens, usage counted in memory. An allowed resolve writes nothing to
//! disk; refusals and failures are queued as audit events and written in
//! the next batch. BatchResolveTokens is that, once per name. WatchTokens
//! streams the change feed, filtered per event by the same policy.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use prost::Message;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    call::Call,
    status::audit_reason,
    watch::{Audience, Selection, bindings_only},
};
use crate::{
    auth::{Authenticated, Authorizer, Scope},
    error::Error,
    model::{Outcome, SecretValue, TokenName},
    proto::{
        BatchResolveTokensRequest, BatchResolveTokensResponse, BatchResolveTokensResult,
        ResolveTokenRequest, ResolveTokenResponse, WatchTokensRequest, WatchTokensResponse,
        token_resolver_server,
    },
    tokens::{Resolver, Watch},
};

/// Names one BatchResolveTokens call may carry.
pub const MAX_BATCH_NAMES: usize = 100;

/// Serves TokenResolver over the domain.
#[derive(Clone)]
pub struct ResolverApi {
    resolver: Resolver,
    watch: Watch,
    auth: Authorizer,
    /// Turns true when the server stops: open watch streams end.
    stop: watch::Receiver<bool>,
}

impl ResolverApi {
    /// Handlers over `resolver` and the change feed `watch`, authorized by
    /// `auth`; watch streams end when `stop` turns true.
    pub fn new(
        resolver: Resolver,
        watch: Watch,
        auth: Authorizer,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            resolver,
            watch,
            auth,
            stop,
        }
    }

    /// One resolve, exactly as ResolveToken does it: parse, authorize
    /// (refusals audited and counted), open, account. Returns the resource
    /// name and the value.
    async fn resolve_one<T>(
        &self,
        request: &Request<T>,
        raw_name: &str,
        field: &'static str,
    ) -> Result<(String, SecretValue), Status> {
        let name = TokenName::parse(raw_name, field)?;
        // Authorization comes before any read or decryption.
        let call =
            match Call::authorize(&self.auth, request, Scope::Resolve(&name), name.to_string()) {
                Ok(call) => call,
                Err(denied) => {
                    if let Some(caller) = request.extensions().get::<Authenticated>() {
                        self.resolver.record_denied(&name, &caller.actor().identity);
                    }
                    return Err(denied);
                }
            };
        match self
            .resolver
            .resolve(&name, &call.actor.identity, call.require_binding)
            .await
        {
            Ok(value) => Ok((call.resource().to_owned(), value)),
            Err(e) => {
                let outcome = match &e {
                    Error::PermissionDenied | Error::FailedPrecondition { .. } => Outcome::Denied,
                    _ => Outcome::Failed,
                };
                let reason = audit_reason(&e);
                tracing::warn!(caller = %call.actor.identity, %name, reason, "resolve refused");
                call.record(outcome, reason);
                Err(e.into())
            }
        }
    }
}

/// A status as a `google.rpc.Status` message (code, message and the
/// details it carries: ErrorInfo, BadRequest).
fn rpc_status(status: &Status) -> tonic_types::Status {
    tonic_types::Status::decode(status.details())
        .ok()
        .filter(|decoded| decoded.code == status.code() as i32)
        .unwrap_or_else(|| tonic_types::Status {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: Vec::new(),
        })
}

#[tonic::async_trait]
impl token_resolver_server::TokenResolver for ResolverApi {
    type WatchTokensStream =
        Pin<Box<dyn Stream<Item = Result<WatchTokensResponse, Status>> + Send + 'static>>;

    // No span of its own: the telemetry layer's `request` span already names
    // the RPC and carries the request id (one span per request on the hot path).
    async fn resolve_token(
        &self,
        request: Request<ResolveTokenRequest>,
    ) -> Result<Response<ResolveTokenResponse>, Status> {
        let (name, value) = self
            .resolve_one(&request, &request.get_ref().name, "name")
            .await?;
        Ok(Response::new(ResolveTokenResponse {
            name,
            // Moved, not copied; the response zeroizes it when dropped.
            value: value.into_string(),
        }))
    }

    async fn watch_tokens(
        &self,
        request: Request<WatchTokensRequest>,
    ) -> Result<Response<Self::WatchTokensStream>, Status> {
        let selection = Selection::parse(request.get_ref())?;
        let resume_after = request.get_ref().resume_after_sequence;
        if resume_after < 0 {
            return Err(Error::invalid("resume_after_sequence", "must not be negative").into());
        }
        // Authorized as resolving each named token (or the tenant) would be;
        // refusals audited by the authorizer.
        let calls = match &selection {
            Selection::Names(names) => {
                let mut names: Vec<_> = names.iter().collect();
                names.sort_by_key(|name| name.to_string());
                names
                    .into_iter()
                    .map(|name| {
                        Call::authorize(
                            &self.auth,
                            &request,
                            Scope::Resolve(name),
                            name.to_string(),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            Selection::Tenant(tenant) => vec![Call::authorize(
                &self.auth,
                &request,
                Scope::WatchTenant(tenant),
                format!("tenants/{tenant}"),
            )?],
        };
        if calls.iter().any(|call| call.require_binding) {
            let e = bindings_only();
            for call in &calls {
                call.record(Outcome::Denied, audit_reason(&e));
            }
            return Err(e.into());
        }
        let subscription = match self.watch.subscribe(resume_after) {
            Ok(subscription) => subscription,
            Err(e) => {
                tracing::warn!(reason = audit_reason(&e), "watch stream refused");
                for call in &calls {
                    call.record(Outcome::Failed, audit_reason(&e));
                }
                return Err(e.into());
            }
        };
        for call in &calls {
            call.record(Outcome::Allowed, "watch opened");
        }
        let identity = request
            .extensions()
            .get::<Authenticated>()
            .map(|caller| caller.identity.clone())
            .ok_or(Error::Unauthenticated("a client certificate is required"))?;
        let audience = Audience {
            selection,
            identity,
            auth: self.auth.clone(),
        };
        let heartbeat = self.watch.settings().heartbeat;
        let messages = super::watch::spawn(subscription, audience, heartbeat, self.stop.clone());
        Ok(Response::new(Box::pin(
            ReceiverStream::new(messages).map(|message| *message),
        )))
    }

    async fn batch_resolve_tokens(
        &self,
        request: Request<BatchResolveTokensRequest>,
    ) -> Result<Response<BatchResolveTokensResponse>, Status> {
        let count = request.get_ref().names.len();
        if count == 0 {
            return Err(Error::invalid("names", "name 1 to 100 tokens").into());
        }
        if count > MAX_BATCH_NAMES {
            return Err(Error::invalid("names", "at most 100 names per call").into());
        }
        let mut results = Vec::with_capacity(count);
        for raw_name in &request.get_ref().names {
            let result = match self.resolve_one(&request, raw_name, "names").await {
                Ok((_, value)) => BatchResolveTokensResult {
                    name: raw_name.clone(),
                    // Moved, not copied; the result zeroizes it when dropped.
                    value: value.into_string(),
                    status: None,
                },
                Err(status) => BatchResolveTokensResult {
                    name: raw_name.clone(),
                    value: String::new(),
                    status: Some(rpc_status(&status)),
                },
            };
            results.push(result);
        }
        Ok(Response::new(BatchResolveTokensResponse { results }))
    }
}
