//! The gRPC surfaces: protobuf in, domain call, protobuf out.
//!
//! Handlers follow one shape: read the caller's identity from the verified
//! client certificate, parse the resource name, authorize against the policy
//! (before anything is looked up, so a caller without access learns nothing
//! about existence), call the domain, translate. Every decision is audited:
//! mutations inside their own transaction (by the domain), everything else
//! through the batch queue. Errors become statuses only through
//! `impl From<Error> for Status` in [`crate::error`].

mod activity;
mod admin;
mod keys;
pub mod pb;
mod resolver;

use tonic::Request;

pub use admin::AdminApi;
pub use keys::KeyAdminApi;
pub use resolver::ResolverApi;

use crate::{
    audit::{Actor, AuditQueue, Outcome},
    auth::PeerIdentity,
    error::{Error, Result},
};

/// Largest request message either service accepts (values are at most 64 KiB).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// Who is calling `method`: the verified certificate identity and the audit
/// actor. A caller without a usable identity is audited as unauthenticated.
fn identify<T>(
    request: &Request<T>,
    method: &'static str,
    resource: &str,
    audit: &AuditQueue,
) -> Result<(PeerIdentity, Actor)> {
    let peer = request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let identity = request
        .peer_certs()
        .ok_or(Error::Unauthenticated("a client certificate is required"))
        .and_then(|certs| {
            let leaf = certs
                .first()
                .ok_or(Error::Unauthenticated("a client certificate is required"))?;
            PeerIdentity::from_der(leaf)
        });
    match identity {
        Ok(identity) => {
            let actor = Actor {
                identity: identity.display(),
                peer,
                method,
            };
            Ok((identity, actor))
        }
        Err(e) => {
            let actor = Actor {
                identity: "(none)".to_owned(),
                peer,
                method,
            };
            audit.push(actor.event(None, resource, Outcome::Unauthenticated, e.to_string()));
            Err(e)
        }
    }
}

/// Queues a `failed` event when an authorized request fails; passes the
/// result through.
fn audit_failure<T>(
    audit: &AuditQueue,
    actor: &Actor,
    tenant: &str,
    resource: &str,
    result: Result<T>,
) -> Result<T> {
    if let Err(e) = &result {
        audit.push(actor.event(Some(tenant), resource, Outcome::Failed, e.to_string()));
    }
    result
}
