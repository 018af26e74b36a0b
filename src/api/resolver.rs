//! `aitokens.v1.TokenResolver`: the internal-only surface that hands out values.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    pb::{ResolveTokenRequest, ResolveTokenResponse, token_resolver_server},
    peer_identity,
};
use crate::{
    auth::PolicyHandle,
    tokens::{TokenName, Tokens},
};

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
    #[tracing::instrument(name = "ResolveToken", skip_all)]
    async fn resolve_token(
        &self,
        request: Request<ResolveTokenRequest>,
    ) -> Result<Response<ResolveTokenResponse>, Status> {
        let peer = peer_identity(&request)?;
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        // Authorization comes before any read or decryption.
        if let Err(denied) = self.policy.current().authorize_resolve(&peer, &name) {
            tracing::warn!(caller = %peer.display(), %name, "resolve denied");
            return Err(denied.into());
        }
        let value = self.tokens.resolve(name.clone()).await?;
        Ok(Response::new(ResolveTokenResponse {
            name: name.to_string(),
            // Moved, not copied; the response zeroizes it when dropped.
            value: value.into_string(),
        }))
    }
}
