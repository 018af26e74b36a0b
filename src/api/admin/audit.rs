//! The audit trail, read by tenant admins (their tenant) and by admins of
//! every tenant (`tenants/-`, AIP-159).

use tonic::{Request, Response, Status};

use super::AdminApi;
use crate::{
    api::call::Call,
    auth::Scope,
    error::{Error, Result},
    model::{TenantId, micros},
    proto::{AuditEvent, ListAuditEventsRequest, ListAuditEventsResponse},
    store::AuditFilter,
};

impl AdminApi {
    #[tracing::instrument(name = "ListAuditEvents", skip_all)]
    pub(super) async fn audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let parent = request.get_ref().parent.clone();
        let tenant = match parent.as_str() {
            "tenants/-" => None,
            other => Some(TenantId::from_parent(other, "parent")?),
        };
        let scope = tenant.as_ref().map_or(Scope::AdminOfAll, Scope::Admin);
        let call = Call::authorize(&self.auth, &request, scope, parent.as_str())?;
        let request = request.into_inner();
        let filter = audit_filter(&request)?;
        // Queued decisions first, so a caller reads its own.
        call.finish(self.domain.flusher.flush().await)?;
        let listed = self
            .trail
            .page(tenant, filter, request.page_size, &request.page_token)
            .await;
        let page = call.read(listed)?;
        Ok(Response::new(ListAuditEventsResponse {
            events: page.items.into_iter().map(AuditEvent::from).collect(),
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
