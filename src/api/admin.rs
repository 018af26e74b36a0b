//! `aitokens.v1.TokenAdmin`, token lifecycle: create, get, list, rename,
//! disable/enable, remove. Never returns a value.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    audit_failure, identify,
    pb::{
        CreateTokenBindingRequest, CreateTokenRequest, DeleteTokenBindingRequest,
        DeleteTokenBindingResponse, DisableTokenRequest, EnableTokenRequest,
        GetReplacementStatusRequest, GetTokenRequest, ListAuditEventsRequest,
        ListAuditEventsResponse, ListTokenBindingsRequest, ListTokenBindingsResponse,
        ListTokenUsagesRequest, ListTokenUsagesResponse, ListTokensRequest, ListTokensResponse,
        RemoveTokenRequest, RemoveTokenResponse, RenameTokenRequest, ReplacementStatus, Token,
        TokenBinding, token_admin_server,
    },
};
use crate::{
    audit::{Actor, Outcome},
    auth::PolicyHandle,
    error::{Error, Result},
    tokens::{Rename, SecretValue, TenantId, TokenId, TokenName, Tokens},
};

/// Serves TokenAdmin over the domain.
#[derive(Clone)]
pub struct AdminApi {
    pub(super) tokens: Tokens,
    pub(super) policy: Arc<PolicyHandle>,
}

impl AdminApi {
    /// Handlers over `tokens`, authorized by `policy`.
    pub fn new(tokens: Tokens, policy: Arc<PolicyHandle>) -> Self {
        Self { tokens, policy }
    }

    /// Identifies the caller and checks it administers `tenant`; audits a
    /// refusal. Returns the actor to attribute the request to.
    pub(super) fn authorize<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
        tenant: &TenantId,
        resource: &str,
    ) -> Result<Actor> {
        let audit = self.tokens.audit_queue();
        let (peer, mut actor) = identify(request, method, resource, audit)?;
        match self.policy.current().authorize_admin(&peer, tenant) {
            Ok(caller) => {
                actor.identity = caller.identity;
                Ok(actor)
            }
            Err(e) => {
                tracing::warn!(method, caller = %actor.identity, %tenant, "admin request denied");
                audit.push(actor.event(
                    Some(tenant.as_str()),
                    resource,
                    Outcome::Denied,
                    "not an admin of this tenant",
                ));
                Err(e)
            }
        }
    }

    /// Audits an allowed request that changes nothing (through the batch queue).
    pub(super) fn audit_read(&self, actor: &Actor, tenant: &TenantId, resource: &str) {
        self.tokens.audit_queue().push(actor.event(
            Some(tenant.as_str()),
            resource,
            Outcome::Allowed,
            "read",
        ));
    }

    /// Runs an authorized request's domain call, auditing its failure.
    pub(super) fn finish<T>(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        resource: &str,
        result: Result<T>,
    ) -> Result<T> {
        audit_failure(
            self.tokens.audit_queue(),
            actor,
            tenant.as_str(),
            resource,
            result,
        )
    }
}

impl AdminApi {
    /// DisableToken and EnableToken: the kill switch.
    async fn set_disabled<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
        name: &str,
        etag: Option<String>,
        disabled: bool,
    ) -> Result<Response<Token>, Status> {
        let name = TokenName::parse(name, "name")?;
        let resource = name.to_string();
        let actor = self.authorize(request, method, &name.tenant, &resource)?;
        let tenant = name.tenant.clone();
        let changed = self.tokens.set_disabled(&actor, name, disabled, etag).await;
        let record = self.finish(&actor, &tenant, &resource, changed)?;
        tracing::warn!(caller = %actor.identity, %resource, disabled, "token kill switch changed");
        Ok(Response::new(record.into()))
    }
}

const CREATE: &str = "aitokens.v1.TokenAdmin/CreateToken";
const GET: &str = "aitokens.v1.TokenAdmin/GetToken";
const LIST: &str = "aitokens.v1.TokenAdmin/ListTokens";
const RENAME: &str = "aitokens.v1.TokenAdmin/RenameToken";
const REMOVE: &str = "aitokens.v1.TokenAdmin/RemoveToken";
const DISABLE: &str = "aitokens.v1.TokenAdmin/DisableToken";
const ENABLE: &str = "aitokens.v1.TokenAdmin/EnableToken";

#[tonic::async_trait]
impl token_admin_server::TokenAdmin for AdminApi {
    #[tracing::instrument(name = "CreateToken", skip_all)]
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let tenant = TenantId::from_parent(&request.get_ref().parent, "parent")?;
        // Validated before it names anything in the audit trail.
        let token_id = TokenId::new(&request.get_ref().token_id, "token_id")?;
        let resource = format!("tenants/{tenant}/tokens/{token_id}");
        let actor = self.authorize(&request, CREATE, &tenant, &resource)?;
        let mut request = request.into_inner();
        let value = SecretValue::new(std::mem::take(&mut request.value));
        let display_name = request
            .token
            .as_ref()
            .map_or("", |t| t.display_name.as_str());
        let created = self
            .tokens
            .create(
                &actor,
                tenant.clone(),
                &request.token_id,
                display_name,
                value,
                &request.replaces,
            )
            .await;
        let record = self.finish(&actor, &tenant, &resource, created)?;
        tracing::info!(caller = %actor.identity, name = %record.name, "token created");
        Ok(Response::new(record.into()))
    }

    #[tracing::instrument(name = "GetToken", skip_all)]
    async fn get_token(
        &self,
        request: Request<GetTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        let resource = name.to_string();
        let actor = self.authorize(&request, GET, &name.tenant, &resource)?;
        let tenant = name.tenant.clone();
        let record = self.finish(&actor, &tenant, &resource, self.tokens.get(name).await)?;
        self.audit_read(&actor, &tenant, &resource);
        Ok(Response::new(record.into()))
    }

    #[tracing::instrument(name = "ListTokens", skip_all)]
    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let tenant = TenantId::from_parent(&request.get_ref().parent, "parent")?;
        let resource = format!("tenants/{tenant}");
        let actor = self.authorize(&request, LIST, &tenant, &resource)?;
        let ListTokensRequest {
            page_size,
            page_token,
            unused_for,
            ..
        } = request.into_inner();
        let unused_for = unused_for
            .map(|d| {
                std::time::Duration::try_from(d)
                    .map_err(|_| Error::invalid("unused_for", "must be a non-negative duration"))
            })
            .transpose()?;
        let listed = self
            .tokens
            .list(tenant.clone(), page_size, &page_token, unused_for)
            .await;
        let page = self.finish(&actor, &tenant, &resource, listed)?;
        self.audit_read(&actor, &tenant, &resource);
        Ok(Response::new(ListTokensResponse {
            tokens: page.items.into_iter().map(Token::from).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "RenameToken", skip_all)]
    async fn rename_token(
        &self,
        request: Request<RenameTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        let resource = name.to_string();
        let actor = self.authorize(&request, RENAME, &name.tenant, &resource)?;
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
        let tenant = name.tenant.clone();
        let record = self.finish(
            &actor,
            &tenant,
            &resource,
            self.tokens.rename(&actor, name, change).await,
        )?;
        tracing::info!(caller = %actor.identity, %resource, new_name = %record.name, "token renamed");
        Ok(Response::new(record.into()))
    }

    #[tracing::instrument(name = "RemoveToken", skip_all)]
    async fn remove_token(
        &self,
        request: Request<RemoveTokenRequest>,
    ) -> Result<Response<RemoveTokenResponse>, Status> {
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        let resource = name.to_string();
        let actor = self.authorize(&request, REMOVE, &name.tenant, &resource)?;
        let RemoveTokenRequest { etag, force, .. } = request.into_inner();
        let tenant = name.tenant.clone();
        self.finish(
            &actor,
            &tenant,
            &resource,
            self.tokens.remove(&actor, name, etag, force).await,
        )?;
        tracing::info!(caller = %actor.identity, %resource, force, "token removed");
        Ok(Response::new(RemoveTokenResponse {}))
    }

    #[tracing::instrument(name = "DisableToken", skip_all)]
    async fn disable_token(
        &self,
        request: Request<DisableTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let (name, etag) = (
            request.get_ref().name.clone(),
            request.get_ref().etag.clone(),
        );
        self.set_disabled(&request, DISABLE, &name, etag, true)
            .await
    }

    #[tracing::instrument(name = "EnableToken", skip_all)]
    async fn enable_token(
        &self,
        request: Request<EnableTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let (name, etag) = (
            request.get_ref().name.clone(),
            request.get_ref().etag.clone(),
        );
        self.set_disabled(&request, ENABLE, &name, etag, false)
            .await
    }

    async fn list_token_usages(
        &self,
        request: Request<ListTokenUsagesRequest>,
    ) -> Result<Response<ListTokenUsagesResponse>, Status> {
        self.handle_list_token_usages(request).await
    }

    async fn get_replacement_status(
        &self,
        request: Request<GetReplacementStatusRequest>,
    ) -> Result<Response<ReplacementStatus>, Status> {
        self.handle_get_replacement_status(request).await
    }

    async fn create_token_binding(
        &self,
        request: Request<CreateTokenBindingRequest>,
    ) -> Result<Response<TokenBinding>, Status> {
        self.handle_create_token_binding(request).await
    }

    async fn list_token_bindings(
        &self,
        request: Request<ListTokenBindingsRequest>,
    ) -> Result<Response<ListTokenBindingsResponse>, Status> {
        self.handle_list_token_bindings(request).await
    }

    async fn delete_token_binding(
        &self,
        request: Request<DeleteTokenBindingRequest>,
    ) -> Result<Response<DeleteTokenBindingResponse>, Status> {
        self.handle_delete_token_binding(request).await
    }

    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        self.handle_list_audit_events(request).await
    }
}
