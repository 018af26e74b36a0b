//! `aitokens.v1.TokenResolver`: the internal-only surface that hands out values.
//!
//! The hot path: identity from the client certificate, policy check in
//! memory, the sealed row from the resolve cache (an indexed read on a
//! reader thread when it is not there), two AEAD opens, usage counted in
//! memory. An allowed resolve writes nothing to disk; refusals and
//! failures are queued as audit events and written in the next batch.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    identify,
    pb::{ResolveTokenRequest, ResolveTokenResponse, token_resolver_server},
};
use crate::{
    audit::Outcome,
    auth::PolicyHandle,
    error::Error,
    tokens::{TokenName, Tokens},
};

const RESOLVE: &str = "aitokens.v1.TokenResolver/ResolveToken";

/// Serves TokenResolver over the domain.
#[derive(Clone)]
pub struct ResolverApi {
    tokens: Tokens,
    policy: Arc<PolicyHandle>,
}

impl ResolverApi {
    /// Handlers over `tokens`, authorized by `policy`.
    pub fn new(tokens: Tokens, policy: Arc<PolicyHandle>) -> Self {
        Self { tokens, policy }
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
        let audit = self.tokens.audit_queue();
        let (peer, mut actor) = identify(&request, RESOLVE, &request.get_ref().name, audit)?;
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        let resource = name.to_string();
        let tenant = name.tenant.as_str();
        // Authorization comes before any read or decryption.
        let caller = match self.policy.current().authorize_resolve(&peer, &name) {
            Ok(caller) => caller,
            Err(denied) => {
                tracing::warn!(caller = %actor.identity, %name, "resolve denied");
                self.tokens.record_denied_resolve(&name, &actor.identity);
                audit.push(actor.event(
                    Some(tenant),
                    resource,
                    Outcome::Denied,
                    "the policy does not allow this caller",
                ));
                return Err(denied.into());
            }
        };
        actor.identity = caller.identity;
        match self
            .tokens
            .resolve(name.clone(), &actor.identity, caller.require_binding)
            .await
        {
            Ok(value) => Ok(Response::new(ResolveTokenResponse {
                name: resource,
                // Moved, not copied; the response zeroizes it when dropped.
                value: value.into_string(),
            })),
            Err(e) => {
                let (outcome, reason) = match &e {
                    Error::PermissionDenied => (
                        Outcome::Denied,
                        "no binding names this caller (bindings-only mode)".to_owned(),
                    ),
                    Error::FailedPrecondition { reason, .. } => {
                        (Outcome::Denied, format!("refused: {reason}"))
                    }
                    other => (Outcome::Failed, other.to_string()),
                };
                tracing::warn!(caller = %actor.identity, %name, %reason, "resolve refused");
                audit.push(actor.event(Some(tenant), resource, outcome, reason));
                Err(e.into())
            }
        }
    }
}
