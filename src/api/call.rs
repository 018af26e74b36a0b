//! One authorized request, and the audit records of how it ended.

use tonic::{Request, Status};

use super::status::audit_reason;
use crate::{
    audit::AuditQueue,
    auth::{Authorizer, Granted, Scope},
    error::Result,
    model::{Actor, Outcome},
};

/// An authorized request on `resource`.
pub(super) struct Call<'a> {
    /// Who, through which RPC, from where.
    pub(super) actor: Actor,
    /// For resolvers: a binding must also name the caller.
    pub(super) require_binding: bool,
    tenant: Option<String>,
    resource: String,
    audit: &'a AuditQueue,
}

impl<'a> Call<'a> {
    /// Authorizes the caller of `request` for `scope` on `resource`.
    pub(super) fn authorize<T>(
        auth: &'a Authorizer,
        request: &Request<T>,
        scope: Scope<'_>,
        resource: impl Into<String>,
    ) -> Result<Self, Status> {
        let resource = resource.into();
        let tenant = match scope {
            Scope::Admin(tenant) | Scope::WatchTenant(tenant) => Some(tenant.to_string()),
            Scope::Resolve(name) => Some(name.tenant.to_string()),
            Scope::AdminOfAll | Scope::AdminOfAny | Scope::KeyAdmin => None,
        };
        let Granted {
            actor,
            require_binding,
        } = auth.authorize(request.extensions(), scope, &resource)?;
        Ok(Self {
            actor,
            require_binding,
            tenant,
            resource,
            audit: auth.audit(),
        })
    }

    /// The resource the request acts on.
    pub(super) fn resource(&self) -> &str {
        &self.resource
    }

    /// Queues an event for this request.
    pub(super) fn record(&self, outcome: Outcome, reason: &str) {
        self.audit.push(self.actor.event(
            self.tenant.as_deref(),
            self.resource.as_str(),
            outcome,
            reason,
        ));
    }

    /// The end of a request that changes something (the change audits
    /// itself in its transaction): a failure is audited with its code.
    pub(super) fn finish<T>(&self, result: Result<T>) -> Result<T, Status> {
        result.map_err(|e| {
            self.record(Outcome::Failed, audit_reason(&e));
            e.into()
        })
    }

    /// The end of a request that only reads: audited either way.
    pub(super) fn read<T>(&self, result: Result<T>) -> Result<T, Status> {
        let value = self.finish(result)?;
        self.record(Outcome::Allowed, "read");
        Ok(value)
    }
}
