//! Bindings: declared uses of a token.

use tonic::{Request, Response, Status};

use super::AdminApi;
use crate::{
    api::call::Call,
    auth::Scope,
    model::{BindingId, BindingName, TokenName},
    proto::{
        CreateTokenBindingRequest, DeleteTokenBindingRequest, DeleteTokenBindingResponse,
        ListTokenBindingsRequest, ListTokenBindingsResponse, TokenBinding,
    },
};

impl AdminApi {
    #[tracing::instrument(name = "CreateTokenBinding", skip_all)]
    pub(super) async fn create_binding(
        &self,
        request: Request<CreateTokenBindingRequest>,
    ) -> Result<Response<TokenBinding>, Status> {
        let token = TokenName::parse(&request.get_ref().parent, "parent")?;
        // Validated before it names anything in the audit trail.
        let binding_id = BindingId::new(&request.get_ref().binding_id, "binding_id")?;
        let resource = format!("{token}/bindings/{binding_id}");
        let call = Call::authorize(&self.auth, &request, Scope::Admin(&token.tenant), resource)?;
        let CreateTokenBindingRequest {
            binding_id,
            binding,
            ..
        } = request.into_inner();
        let binding = binding.unwrap_or_default();
        let created = self
            .domain
            .bindings
            .create(
                &call.actor,
                token,
                &binding_id,
                &binding.caller_identity,
                &binding.purpose,
            )
            .await;
        let created = call.finish(created)?;
        tracing::info!(caller = %call.actor.identity, binding = %created.name, "binding created");
        Ok(Response::new(created.into()))
    }

    #[tracing::instrument(name = "ListTokenBindings", skip_all)]
    pub(super) async fn list_bindings(
        &self,
        request: Request<ListTokenBindingsRequest>,
    ) -> Result<Response<ListTokenBindingsResponse>, Status> {
        let (token, call) = self.on_token(&request, &request.get_ref().parent, "parent")?;
        let bindings = call.read(self.domain.bindings.list(&token).await)?;
        Ok(Response::new(ListTokenBindingsResponse {
            bindings: bindings.into_iter().map(TokenBinding::from).collect(),
        }))
    }

    #[tracing::instrument(name = "DeleteTokenBinding", skip_all)]
    pub(super) async fn delete_binding(
        &self,
        request: Request<DeleteTokenBindingRequest>,
    ) -> Result<Response<DeleteTokenBindingResponse>, Status> {
        let name = BindingName::parse(&request.get_ref().name, "name")?;
        let scope = Scope::Admin(&name.token.tenant);
        let call = Call::authorize(&self.auth, &request, scope, name.to_string())?;
        call.finish(self.domain.bindings.delete(&call.actor, name).await)?;
        tracing::info!(caller = %call.actor.identity, binding = call.resource(), "binding deleted");
        Ok(Response::new(DeleteTokenBindingResponse {}))
    }
}
