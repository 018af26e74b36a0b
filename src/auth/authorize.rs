//! Authorization: one call per request, after authentication put the
//! caller into the request's extensions and before anything is looked up
//! (so a caller without access learns nothing, not even whether a token
//! exists). Every refusal is audited here.

use std::sync::Arc;

use tonic::Extensions;

use super::{Authenticated, ManagedTenants, PeerIdentity, PolicyHandle};
use crate::{
    audit::AuditQueue,
    error::{Error, Result},
    model::{Actor, Outcome, TenantId, TokenName},
};

/// What a request wants to do.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Administer the tokens of one tenant.
    Admin(&'a TenantId),
    /// Administer every tenant (the whole audit trail).
    AdminOfAll,
    /// Administer at least one tenant (to list those it may).
    AdminOfAny,
    /// Rotate and retire keys.
    KeyAdmin,
    /// Resolve one token.
    Resolve(&'a TokenName),
    /// Watch the tokens of a tenant that the caller may resolve (each
    /// event is then decided with [`Authorizer::may_resolve`]).
    WatchTenant(&'a TenantId),
}

impl Scope<'_> {
    fn tenant(&self) -> Option<&str> {
        match self {
            Self::Admin(tenant) | Self::WatchTenant(tenant) => Some(tenant.as_str()),
            Self::Resolve(name) => Some(name.tenant.as_str()),
            Self::AdminOfAll | Self::AdminOfAny | Self::KeyAdmin => None,
        }
    }
}

/// An authorized request: who, for audit records, and what the grant says.
#[derive(Clone, Debug)]
pub struct Granted {
    /// The caller, named as the policy names it, with the RPC and address.
    pub actor: Actor,
    /// For resolvers: a binding must also name the caller.
    pub require_binding: bool,
}

/// The audit reason of every policy refusal (the same code clients see in
/// `ErrorInfo.reason`).
pub const POLICY_DENIED: &str = "POLICY_DENIED";

/// Decides requests against the live policy.
#[derive(Clone)]
pub struct Authorizer {
    policy: Arc<PolicyHandle>,
    audit: Arc<AuditQueue>,
}

impl Authorizer {
    /// Authorizes against `policy`, auditing refusals into `audit`.
    pub fn new(policy: Arc<PolicyHandle>, audit: Arc<AuditQueue>) -> Self {
        Self { policy, audit }
    }

    /// The audit queue refusals go to.
    pub fn audit(&self) -> &Arc<AuditQueue> {
        &self.audit
    }

    /// Whether `identity` may resolve `name` under the live policy, and
    /// whether only with a binding (`Some(true)`); `None` if it may not.
    /// Records nothing: it decides which events of a watch stream the
    /// caller sees, and an event not sent is no request.
    pub fn may_resolve(&self, identity: &PeerIdentity, name: &TokenName) -> Option<bool> {
        self.policy
            .current()
            .authorize_resolve(identity, name)
            .ok()
            .map(|granted| granted.require_binding)
    }

    /// The tenants the authenticated caller of a request may administer
    /// under the live policy; `None` without a caller or a grant. Records
    /// nothing: ask [`Authorizer::authorize`] first.
    pub fn managed_tenants(&self, extensions: &Extensions) -> Option<ManagedTenants> {
        let caller = extensions.get::<Authenticated>()?;
        self.policy.current().managed_tenants(&caller.identity)
    }

    /// Allows the authenticated caller of this request `scope` on
    /// `resource`, or refuses (PERMISSION_DENIED, audited).
    pub fn authorize(
        &self,
        extensions: &Extensions,
        scope: Scope<'_>,
        resource: &str,
    ) -> Result<Granted> {
        let caller = extensions
            .get::<Authenticated>()
            .ok_or(Error::Unauthenticated("a client certificate is required"))?;
        let policy = self.policy.current();
        let decision = match scope {
            Scope::Admin(tenant) => policy.authorize_admin(&caller.identity, tenant),
            Scope::AdminOfAll => policy.authorize_admin_of_all(&caller.identity),
            Scope::AdminOfAny => policy.authorize_admin_of_any(&caller.identity),
            Scope::KeyAdmin => policy.authorize_key_admin(&caller.identity),
            Scope::Resolve(name) => policy.authorize_resolve(&caller.identity, name),
            Scope::WatchTenant(tenant) => policy.authorize_resolve_in(&caller.identity, tenant),
        };
        let mut actor = caller.actor();
        match decision {
            Ok(granted) => {
                actor.identity = granted.identity;
                Ok(Granted {
                    actor,
                    require_binding: granted.require_binding,
                })
            }
            Err(e) => {
                match scope {
                    Scope::Resolve(_) | Scope::WatchTenant(_) => {
                        tracing::warn!(method = actor.method, caller = %actor.identity, resource, "resolve denied")
                    }
                    Scope::KeyAdmin => {
                        tracing::warn!(method = actor.method, caller = %actor.identity, "key admin request denied")
                    }
                    Scope::Admin(_) | Scope::AdminOfAll | Scope::AdminOfAny => {
                        tracing::warn!(method = actor.method, caller = %actor.identity, resource, "admin request denied")
                    }
                }
                self.audit.push(actor.event(
                    scope.tenant(),
                    resource,
                    Outcome::Denied,
                    POLICY_DENIED,
                ));
                Err(e)
            }
        }
    }
}
