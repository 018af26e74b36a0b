//! `aitokens.v1.TokenAdmin`: the public admin surface. Never returns a value.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    pb::{
        CreateTokenRequest, GetTokenRequest, ListTokensRequest, ListTokensResponse,
        RemoveTokenRequest, RemoveTokenResponse, RenameTokenRequest, Token, token_admin_server,
    },
    peer_identity,
};
use crate::{
    auth::{Caller, PolicyHandle},
    error::Result,
    tokens::{Rename, SecretValue, TenantId, TokenName, Tokens},
};

/// Serves TokenAdmin over the domain.
#[derive(Clone)]
pub struct AdminApi {
    tokens: Tokens,
    policy: Arc<PolicyHandle>,
}

impl AdminApi {
    /// Handlers over `tokens`, authorized by `policy`.
    pub fn new(tokens: Tokens, policy: Arc<PolicyHandle>) -> Self {
        Self { tokens, policy }
    }

    fn authorize<T>(
        &self,
        request: &Request<T>,
        tenant: &TenantId,
        method: &'static str,
    ) -> Result<Caller> {
        let peer = peer_identity(request)?;
        self.policy
            .current()
            .authorize_admin(&peer, tenant)
            .inspect_err(|_| {
                tracing::warn!(method, caller = %peer.display(), %tenant, "admin request denied");
            })
    }
}

#[tonic::async_trait]
impl token_admin_server::TokenAdmin for AdminApi {
    #[tracing::instrument(name = "CreateToken", skip_all)]
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let tenant = TenantId::from_parent(&request.get_ref().parent, "parent")?;
        let caller = self.authorize(&request, &tenant, "CreateToken")?;
        let mut request = request.into_inner();
        let value = SecretValue::new(std::mem::take(&mut request.value));
        let display_name = request
            .token
            .as_ref()
            .map_or("", |t| t.display_name.as_str());
        let record = self
            .tokens
            .create(tenant, &request.token_id, display_name, value)
            .await?;
        tracing::info!(caller = %caller.identity, name = %record.name, "token created");
        Ok(Response::new(record.into()))
    }

    #[tracing::instrument(name = "GetToken", skip_all)]
    async fn get_token(
        &self,
        request: Request<GetTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        self.authorize(&request, &name.tenant, "GetToken")?;
        Ok(Response::new(self.tokens.get(name).await?.into()))
    }

    #[tracing::instrument(name = "ListTokens", skip_all)]
    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let tenant = TenantId::from_parent(&request.get_ref().parent, "parent")?;
        self.authorize(&request, &tenant, "ListTokens")?;
        let ListTokensRequest {
            page_size,
            page_token,
            ..
        } = request.into_inner();
        let page = self.tokens.list(tenant, page_size, &page_token).await?;
        Ok(Response::new(ListTokensResponse {
            tokens: page.tokens.into_iter().map(Token::from).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "RenameToken", skip_all)]
    async fn rename_token(
        &self,
        request: Request<RenameTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        let caller = self.authorize(&request, &name.tenant, "RenameToken")?;
        let RenameTokenRequest {
            display_name,
            new_token_id,
            etag,
            ..
        } = request.into_inner();
        let change = Rename {
            display_name,
            new_token_id,
            etag,
        };
        let record = self.tokens.rename(name.clone(), change).await?;
        tracing::info!(caller = %caller.identity, %name, new_name = %record.name, "token renamed");
        Ok(Response::new(record.into()))
    }

    #[tracing::instrument(name = "RemoveToken", skip_all)]
    async fn remove_token(
        &self,
        request: Request<RemoveTokenRequest>,
    ) -> Result<Response<RemoveTokenResponse>, Status> {
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        let caller = self.authorize(&request, &name.tenant, "RemoveToken")?;
        self.tokens
            .remove(name.clone(), request.into_inner().etag)
            .await?;
        tracing::info!(caller = %caller.identity, %name, "token removed");
        Ok(Response::new(RemoveTokenResponse {}))
    }
}
