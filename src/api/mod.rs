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
pub mod echo;
mod keys;
pub mod pb;
mod resolver;

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
};

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

/// Parsed identities of recent client certificates, by DER bytes. Parsing
/// is a pure function of the certificate (which TLS verified for this
/// connection), so a cached result is exactly what parsing would give; the
/// cache only saves re-parsing X.509 on every request of a connection.
/// Hashed with foldhash: SipHash over a whole certificate's DER on every
/// request showed in the resolve profile. Keys are CA-signed certificates,
/// and equality still compares every byte.
static IDENTITIES: LazyLock<Mutex<IdentityMap>> = LazyLock::new(Mutex::default);
type IdentityMap = HashMap<Vec<u8>, Arc<PeerIdentity>, foldhash::fast::RandomState>;
/// Distinct certificates remembered before the cache starts over.
const IDENTITY_CACHE_SIZE: usize = 1024;

/// The identity in a verified leaf certificate, parsed once per certificate.
fn cached_identity(leaf: &[u8]) -> Result<Arc<PeerIdentity>> {
    let cache = || IDENTITIES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(identity) = cache().get(leaf) {
        return Ok(identity.clone());
    }
    let identity = Arc::new(PeerIdentity::from_der(leaf)?);
    let mut cache = cache();
    if cache.len() >= IDENTITY_CACHE_SIZE {
        cache.clear();
    }
    cache.insert(leaf.to_vec(), identity.clone());
    Ok(identity)
}

/// Who is calling `method`: the verified certificate identity and the audit
/// actor. A caller without a usable identity is audited as unauthenticated.
fn identify<T>(
    request: &Request<T>,
    method: &'static str,
    resource: &str,
    audit: &AuditQueue,
) -> Result<(Arc<PeerIdentity>, Actor)> {
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
            cached_identity(leaf)
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
