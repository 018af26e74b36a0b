//! `aitokens.v1.TokenResolver`: the internal-only surface that hands out values.
//!
//! The hot path: the caller from the request (authenticated once per
//! connection), policy check in memory, the sealed row from the resolve
//! cache (an indexed read on a reader thread when it is not there), two
//! AEAD opens, usage counted in memory. An allowed resolve writes nothing to
//! disk; refusals and failures are queued as audit events and written in
//! the next batch.

use tonic::{Request, Response, Status};

use super::{call::Call, status::audit_reason};
use crate::{
    auth::{Authenticated, Authorizer, Scope},
    error::Error,
    model::{Outcome, TokenName},
    proto::{ResolveTokenRequest, ResolveTokenResponse, token_resolver_server},
    tokens::Resolver,
};

/// Serves TokenResolver over the domain.
#[derive(Clone)]
pub struct ResolverApi {
    resolver: Resolver,
    auth: Authorizer,
}

impl ResolverApi {
    /// Handlers over `resolver`, authorized by `auth`.
    pub fn new(resolver: Resolver, auth: Authorizer) -> Self {
        Self { resolver, auth }
    }
}

#[tonic::async_trait]
impl token_resolver_server::TokenResolver for ResolverApi {
    // No span of its own: the telemetry layer's `request` span already names
    // the RPC and carries the request id (one span per request on the hot path).
    async fn resolve_token(
        &self,
        request: Request<ResolveTokenRequest>,
    ) -> Result<Response<ResolveTokenResponse>, Status> {
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        // Authorization comes before any read or decryption.
        let call = match Call::authorize(
            &self.auth,
            &request,
            Scope::Resolve(&name),
            name.to_string(),
        ) {
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
            Ok(value) => Ok(Response::new(ResolveTokenResponse {
                name: call.resource().to_owned(),
                // Moved, not copied; the response zeroizes it when dropped.
                value: value.into_string(),
            })),
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
