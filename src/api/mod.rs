//! The gRPC surfaces: protobuf in, domain call, protobuf out.
//!
//! Handlers follow one shape: read the caller's identity from the verified
//! client certificate, parse the resource name, authorize against the policy
//! (before anything is looked up, so a caller without access learns nothing
//! about existence), call the domain, translate. Errors become statuses only
//! through `impl From<Error> for Status` in [`crate::error`].

mod admin;
pub mod echo;
pub mod pb;
mod resolver;

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
};

use tonic::Request;

pub use admin::AdminApi;
pub use resolver::ResolverApi;

use crate::{
    auth::PeerIdentity,
    error::{Error, Result},
};

/// Largest request message either service accepts (values are at most 64 KiB).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// Parsed identities of recent client certificates, by DER bytes. Parsing
/// is a pure function of the certificate (which TLS verified for this
/// connection), so a cached result is exactly what parsing would give; the
/// cache only saves re-parsing X.509 on every request of a connection.
static IDENTITIES: LazyLock<Mutex<HashMap<Vec<u8>, Arc<PeerIdentity>>>> =
    LazyLock::new(Mutex::default);
/// Distinct certificates remembered before the cache starts over.
const IDENTITY_CACHE_SIZE: usize = 1024;

/// The identity in the verified client certificate of `request`'s connection.
fn peer_identity<T>(request: &Request<T>) -> Result<Arc<PeerIdentity>> {
    let certs = request
        .peer_certs()
        .ok_or(Error::Unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or(Error::Unauthenticated("a client certificate is required"))?;
    let cache = || IDENTITIES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(identity) = cache().get(leaf.as_ref()) {
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
