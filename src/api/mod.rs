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

use tonic::Request;

pub use admin::AdminApi;
pub use resolver::ResolverApi;

use crate::{
    auth::PeerIdentity,
    error::{Error, Result},
};

/// Largest request message either service accepts (values are at most 64 KiB).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// The identity in the verified client certificate of `request`'s connection.
fn peer_identity<T>(request: &Request<T>) -> Result<PeerIdentity> {
    let certs = request
        .peer_certs()
        .ok_or(Error::Unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or(Error::Unauthenticated("a client certificate is required"))?;
    PeerIdentity::from_der(leaf)
}
