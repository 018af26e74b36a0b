//! `aitokens.v1.TokenAdmin`: token lifecycle, where tokens are used, and the
//! audit trail. Never returns a value.

mod audit;
mod bindings;
mod tenants;
mod tokens;
mod usage;

use tonic::{Request, Response, Status};

use super::call::Call;
use crate::{
    audit::AuditTrail,
    auth::{Authorizer, Scope},
    model::TokenName,
    proto::{
        CreateTokenBindingRequest, CreateTokenRequest, DeleteTokenBindingRequest,
        DeleteTokenBindingResponse, DisableTokenRequest, EnableTokenRequest,
        GetReplacementStatusRequest, GetTokenRequest, ListAuditEventsRequest,
        ListAuditEventsResponse, ListTenantsRequest, ListTenantsResponse, ListTokenBindingsRequest,
        ListTokenBindingsResponse, ListTokenUsagesRequest, ListTokenUsagesResponse,
        ListTokensRequest, ListTokensResponse, RemoveTokenRequest, RemoveTokenResponse,
        RenameTokenRequest, ReplacementStatus, Token, TokenBinding, token_admin_server,
    },
    tokens::Domain,
};

/// Serves TokenAdmin over the domain.
#[derive(Clone)]
pub struct AdminApi {
    domain: Domain,
    trail: AuditTrail,
    auth: Authorizer,
}

impl AdminApi {
    /// Handlers over `domain` and the audit `trail`, authorized by `auth`.
    pub fn new(domain: Domain, trail: AuditTrail, auth: Authorizer) -> Self {
        Self {
            domain,
            trail,
            auth,
        }
    }

    /// Parses the token name `name` (request field `field`) and authorizes
    /// the caller as an admin of its tenant, for a request on that token.
    fn on_token<T>(
        &self,
        request: &Request<T>,
        name: &str,
        field: &'static str,
    ) -> Result<(TokenName, Call<'_>), Status> {
        let name = TokenName::parse(name, field)?;
        let resource = name.to_string();
        let call = Call::authorize(&self.auth, request, Scope::Admin(&name.tenant), resource)?;
        Ok((name, call))
    }
}

#[tonic::async_trait]
impl token_admin_server::TokenAdmin for AdminApi {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        self.create(request).await
    }

    async fn get_token(
        &self,
        request: Request<GetTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        self.get(request).await
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.list(request).await
    }

    async fn rename_token(
        &self,
        request: Request<RenameTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        self.rename(request).await
    }

    async fn remove_token(
        &self,
        request: Request<RemoveTokenRequest>,
    ) -> Result<Response<RemoveTokenResponse>, Status> {
        self.remove(request).await
    }

    async fn disable_token(
        &self,
        request: Request<DisableTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let (name, etag) = (
            request.get_ref().name.clone(),
            request.get_ref().etag.clone(),
        );
        self.set_disabled(&request, &name, etag, true).await
    }

    async fn enable_token(
        &self,
        request: Request<EnableTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let (name, etag) = (
            request.get_ref().name.clone(),
            request.get_ref().etag.clone(),
        );
        self.set_disabled(&request, &name, etag, false).await
    }

    async fn list_token_usages(
        &self,
        request: Request<ListTokenUsagesRequest>,
    ) -> Result<Response<ListTokenUsagesResponse>, Status> {
        self.usages(request).await
    }

    async fn get_replacement_status(
        &self,
        request: Request<GetReplacementStatusRequest>,
    ) -> Result<Response<ReplacementStatus>, Status> {
        self.replacement_status(request).await
    }

    async fn create_token_binding(
        &self,
        request: Request<CreateTokenBindingRequest>,
    ) -> Result<Response<TokenBinding>, Status> {
        self.create_binding(request).await
    }

    async fn list_token_bindings(
        &self,
        request: Request<ListTokenBindingsRequest>,
    ) -> Result<Response<ListTokenBindingsResponse>, Status> {
        self.list_bindings(request).await
    }

    async fn delete_token_binding(
        &self,
        request: Request<DeleteTokenBindingRequest>,
    ) -> Result<Response<DeleteTokenBindingResponse>, Status> {
        self.delete_binding(request).await
    }

    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        self.audit_events(request).await
    }

    async fn list_tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        self.tenants(request).await
    }
}
