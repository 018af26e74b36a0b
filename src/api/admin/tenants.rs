//! Which tenants the caller may administer: for a tenant picker.

use tonic::{Request, Response, Status};

use super::AdminApi;
use crate::{
    api::call::Call,
    auth::{ManagedTenants, Scope},
    error::Error,
    proto::{ListTenantsRequest, ListTenantsResponse},
};

impl AdminApi {
    #[tracing::instrument(name = "ListTenants", skip_all)]
    pub(super) async fn tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let call = Call::authorize(&self.auth, &request, Scope::AdminOfAny, "tenants")?;
        // A policy reload between the two lookups may have revoked the grant.
        let listed = match self.auth.managed_tenants(request.extensions()) {
            Some(ManagedTenants::All) => self.domain.lifecycle.tenants().await.map(|t| (t, true)),
            Some(ManagedTenants::Only(list)) => Ok((list, false)),
            None => Err(Error::PermissionDenied),
        };
        let (tenants, every_tenant) = call.read(listed)?;
        Ok(Response::new(ListTenantsResponse {
            tenants: tenants.iter().map(ToString::to_string).collect(),
            every_tenant,
        }))
    }
}
