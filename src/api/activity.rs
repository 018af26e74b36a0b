//! `aitokens.v1.TokenAdmin`, where tokens are used: usages, replacement
//! status, bindings, and the audit trail.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{
    AdminApi, identify,
    pb::{
        self, CreateTokenBindingRequest, DeleteTokenBindingRequest, DeleteTokenBindingResponse,
        GetReplacementStatusRequest, ListAuditEventsRequest, ListAuditEventsResponse,
        ListTokenBindingsRequest, ListTokenBindingsResponse, ListTokenUsagesRequest,
        ListTokenUsagesResponse, ReplacementStatus, TokenBinding,
    },
};
use crate::{
    audit::{Outcome, micros},
    error::{Error, Result},
    store::AuditFilter,
    tokens::{BindingId, BindingName, TenantId, TokenName},
};

const LIST_USAGES: &str = "aitokens.v1.TokenAdmin/ListTokenUsages";
const REPLACEMENT: &str = "aitokens.v1.TokenAdmin/GetReplacementStatus";
const CREATE_BINDING: &str = "aitokens.v1.TokenAdmin/CreateTokenBinding";
const LIST_BINDINGS: &str = "aitokens.v1.TokenAdmin/ListTokenBindings";
const DELETE_BINDING: &str = "aitokens.v1.TokenAdmin/DeleteTokenBinding";
const LIST_AUDIT: &str = "aitokens.v1.TokenAdmin/ListAuditEvents";

impl AdminApi {
    #[tracing::instrument(name = "ListTokenUsages", skip_all)]
    pub(super) async fn handle_list_token_usages(
        &self,
        request: Request<ListTokenUsagesRequest>,
    ) -> Result<Response<ListTokenUsagesResponse>, Status> {
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        let resource = name.to_string();
        let actor = self.authorize(&request, LIST_USAGES, &name.tenant, &resource)?;
        let tenant = name.tenant.clone();
        let usages = self.finish(&actor, &tenant, &resource, self.tokens.usages(name).await)?;
        self.audit_read(&actor, &tenant, &resource);
        Ok(Response::new(ListTokenUsagesResponse {
            usages: usages.into_iter().map(pb::TokenUsage::from).collect(),
        }))
    }

    #[tracing::instrument(name = "GetReplacementStatus", skip_all)]
    pub(super) async fn handle_get_replacement_status(
        &self,
        request: Request<GetReplacementStatusRequest>,
    ) -> Result<Response<ReplacementStatus>, Status> {
        let name = TokenName::parse(&request.get_ref().name, "name")?;
        let resource = name.to_string();
        let actor = self.authorize(&request, REPLACEMENT, &name.tenant, &resource)?;
        let tenant = name.tenant.clone();
        let status = self.finish(
            &actor,
            &tenant,
            &resource,
            self.tokens.replacement_status(name).await,
        )?;
        self.audit_read(&actor, &tenant, &resource);
        Ok(Response::new(ReplacementStatus {
            name: resource,
            replaced_by: status
                .replaced_by
                .map(|n| n.to_string())
                .unwrap_or_default(),
            ready_to_remove: status.ready_to_remove,
            window: Some(duration(status.window)),
            last_superseded_resolve_time: status.last_superseded.map(Into::into),
            callers_not_switched: status.callers_not_switched,
        }))
    }

    #[tracing::instrument(name = "CreateTokenBinding", skip_all)]
    pub(super) async fn handle_create_token_binding(
        &self,
        request: Request<CreateTokenBindingRequest>,
    ) -> Result<Response<TokenBinding>, Status> {
        let token = TokenName::parse(&request.get_ref().parent, "parent")?;
        // Validated before it names anything in the audit trail.
        let binding_id = BindingId::new(&request.get_ref().binding_id, "binding_id")?;
        let resource = format!("{token}/bindings/{}", binding_id.as_str());
        let actor = self.authorize(&request, CREATE_BINDING, &token.tenant, &resource)?;
        let CreateTokenBindingRequest {
            binding_id,
            binding,
            ..
        } = request.into_inner();
        let binding = binding.unwrap_or_default();
        let tenant = token.tenant.clone();
        let created = self
            .tokens
            .create_binding(
                &actor,
                token,
                &binding_id,
                &binding.caller_identity,
                &binding.purpose,
            )
            .await;
        let created = self.finish(&actor, &tenant, &resource, created)?;
        tracing::info!(caller = %actor.identity, binding = %created.name, "binding created");
        Ok(Response::new(created.into()))
    }

    #[tracing::instrument(name = "ListTokenBindings", skip_all)]
    pub(super) async fn handle_list_token_bindings(
        &self,
        request: Request<ListTokenBindingsRequest>,
    ) -> Result<Response<ListTokenBindingsResponse>, Status> {
        let token = TokenName::parse(&request.get_ref().parent, "parent")?;
        let resource = token.to_string();
        let actor = self.authorize(&request, LIST_BINDINGS, &token.tenant, &resource)?;
        let tenant = token.tenant.clone();
        let bindings = self.finish(
            &actor,
            &tenant,
            &resource,
            self.tokens.list_bindings(token).await,
        )?;
        self.audit_read(&actor, &tenant, &resource);
        Ok(Response::new(ListTokenBindingsResponse {
            bindings: bindings.into_iter().map(TokenBinding::from).collect(),
        }))
    }

    #[tracing::instrument(name = "DeleteTokenBinding", skip_all)]
    pub(super) async fn handle_delete_token_binding(
        &self,
        request: Request<DeleteTokenBindingRequest>,
    ) -> Result<Response<DeleteTokenBindingResponse>, Status> {
        let name = BindingName::parse(&request.get_ref().name, "name")?;
        let resource = name.to_string();
        let actor = self.authorize(&request, DELETE_BINDING, &name.token.tenant, &resource)?;
        let tenant = name.token.tenant.clone();
        self.finish(
            &actor,
            &tenant,
            &resource,
            self.tokens.delete_binding(&actor, name).await,
        )?;
        tracing::info!(caller = %actor.identity, binding = %resource, "binding deleted");
        Ok(Response::new(DeleteTokenBindingResponse {}))
    }

    #[tracing::instrument(name = "ListAuditEvents", skip_all)]
    pub(super) async fn handle_list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let parent = request.get_ref().parent.clone();
        // `tenants/-` is every tenant's trail (AIP-159); it needs an admin of all tenants.
        let tenant = match parent.as_str() {
            "tenants/-" => None,
            other => Some(TenantId::from_parent(other, "parent")?),
        };
        let actor = match &tenant {
            Some(tenant) => self.authorize(&request, LIST_AUDIT, tenant, &parent)?,
            None => {
                let audit = self.tokens.audit_queue();
                let (peer, mut actor) = identify(&request, LIST_AUDIT, &parent, audit)?;
                match self.policy.current().authorize_admin_of_all(&peer) {
                    Ok(caller) => actor.identity = caller.identity,
                    Err(e) => {
                        audit.push(actor.event(
                            None,
                            &parent,
                            Outcome::Denied,
                            "not an admin of all tenants",
                        ));
                        return Err(e.into());
                    }
                }
                actor
            }
        };
        let request = request.into_inner();
        let filter = audit_filter(&request)?;
        let listed = self
            .tokens
            .audit_events(
                tenant.clone(),
                filter,
                request.page_size,
                &request.page_token,
            )
            .await;
        let page = match &tenant {
            Some(t) => self.finish(&actor, t, &parent, listed)?,
            None => listed?,
        };
        self.tokens.audit_queue().push(actor.event(
            tenant.as_ref().map(|t| t.as_str()),
            &parent,
            Outcome::Allowed,
            "read",
        ));
        Ok(Response::new(ListAuditEventsResponse {
            events: page.items.into_iter().map(pb::AuditEvent::from).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}

fn audit_filter(request: &ListAuditEventsRequest) -> Result<AuditFilter> {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let time = |t: &Option<prost_types::Timestamp>, field: &'static str| -> Result<Option<i64>> {
        (*t).map(|t| {
            std::time::SystemTime::try_from(t)
                .map(micros)
                .map_err(|_| Error::invalid(field, "must be a valid timestamp"))
        })
        .transpose()
    };
    Ok(AuditFilter {
        tenant: None,
        resource: non_empty(&request.resource),
        actor: non_empty(&request.actor),
        method: non_empty(&request.method),
        start_us: time(&request.start_time, "start_time")?,
        end_us: time(&request.end_time, "end_time")?,
    })
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
