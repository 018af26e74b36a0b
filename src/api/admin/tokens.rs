//! Token lifecycle handlers: create, get, list, rename, disable/enable,
//! remove.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::AdminApi;
use crate::{
    api::call::Call,
    auth::Scope,
    error::Error,
    model::{SecretValue, TenantId, TokenId},
    proto::{
        CreateTokenRequest, GetTokenRequest, ListTokensRequest, ListTokensResponse,
        RemoveTokenRequest, RemoveTokenResponse, RenameTokenRequest, Token,
    },
    tokens::{NewToken, Rename},
};

impl AdminApi {
    #[tracing::instrument(name = "CreateToken", skip_all)]
    pub(super) async fn create(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let tenant = TenantId::from_parent(&request.get_ref().parent, "parent")?;
        // Validated before it names anything in the audit trail.
        let token_id = TokenId::new(&request.get_ref().token_id, "token_id")?;
        let resource = format!("tenants/{tenant}/tokens/{token_id}");
        let call = Call::authorize(&self.auth, &request, Scope::Admin(&tenant), resource)?;
        let mut request = request.into_inner();
        let new = NewToken {
            tenant,
            token_id: std::mem::take(&mut request.token_id),
            display_name: request
                .token
                .take()
                .map(|t| t.display_name)
                .unwrap_or_default(),
            value: SecretValue::new(std::mem::take(&mut request.value)),
            replaces: std::mem::take(&mut request.replaces),
        };
        let record = call.finish(self.domain.lifecycle.create(&call.actor, new).await)?;
        tracing::info!(caller = %call.actor.identity, name = %record.name, "token created");
        Ok(Response::new(record.into()))
    }

    #[tracing::instrument(name = "GetToken", skip_all)]
    pub(super) async fn get(
        &self,
        request: Request<GetTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let (name, call) = self.on_token(&request, &request.get_ref().name, "name")?;
        let record = call.read(self.domain.lifecycle.get(&name).await)?;
        Ok(Response::new(record.into()))
    }

    #[tracing::instrument(name = "ListTokens", skip_all)]
    pub(super) async fn list(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let tenant = TenantId::from_parent(&request.get_ref().parent, "parent")?;
        let resource = format!("tenants/{tenant}");
        let call = Call::authorize(&self.auth, &request, Scope::Admin(&tenant), resource)?;
        let ListTokensRequest {
            page_size,
            page_token,
            unused_for,
            ..
        } = request.into_inner();
        let unused_for = unused_for
            .map(|d| {
                Duration::try_from(d)
                    .map_err(|_| Error::invalid("unused_for", "must be a non-negative duration"))
            })
            .transpose()?;
        let listed = self
            .domain
            .lifecycle
            .list(tenant, page_size, &page_token, unused_for)
            .await;
        let page = call.read(listed)?;
        Ok(Response::new(ListTokensResponse {
            tokens: page.items.into_iter().map(Token::from).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "RenameToken", skip_all)]
    pub(super) async fn rename(
        &self,
        request: Request<RenameTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let (name, call) = self.on_token(&request, &request.get_ref().name, "name")?;
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
        let renamed = self
            .domain
            .lifecycle
            .rename(&call.actor, name, change)
            .await;
        let record = call.finish(renamed)?;
        tracing::info!(caller = %call.actor.identity, resource = call.resource(), new_name = %record.name, "token renamed");
        Ok(Response::new(record.into()))
    }

    #[tracing::instrument(name = "RemoveToken", skip_all)]
    pub(super) async fn remove(
        &self,
        request: Request<RemoveTokenRequest>,
    ) -> Result<Response<RemoveTokenResponse>, Status> {
        let (name, call) = self.on_token(&request, &request.get_ref().name, "name")?;
        let RemoveTokenRequest { etag, force, .. } = request.into_inner();
        let removed = self
            .domain
            .lifecycle
            .remove(&call.actor, name, etag, force)
            .await;
        call.finish(removed)?;
        tracing::info!(caller = %call.actor.identity, resource = call.resource(), force, "token removed");
        Ok(Response::new(RemoveTokenResponse {}))
    }

    /// DisableToken and EnableToken: the kill switch.
    #[tracing::instrument(name = "SetDisabled", skip_all, fields(disabled))]
    pub(super) async fn set_disabled<T>(
        &self,
        request: &Request<T>,
        name: &str,
        etag: Option<String>,
        disabled: bool,
    ) -> Result<Response<Token>, Status> {
        let (name, call) = self.on_token(request, name, "name")?;
        let changed = self
            .domain
            .lifecycle
            .set_disabled(&call.actor, name, disabled, etag)
            .await;
        let record = call.finish(changed)?;
        tracing::warn!(caller = %call.actor.identity, resource = call.resource(), disabled, "token kill switch changed");
        Ok(Response::new(record.into()))
    }
}
