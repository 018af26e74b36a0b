//! The gRPC surfaces: protobuf in, domain call, protobuf out.
//!
//! Handlers follow one shape: parse the resource name, authorize the caller
//! (whom the [`crate::auth`] layer put into the request) for it with one
//! call — before anything is looked up, so a caller without access learns
//! nothing — call the domain, translate. Every decision is audited:
//! mutations inside their own transaction (by the domain), everything else
//! through the batch queue. Errors become statuses only through
//! [`status`], the one mapping, which also gives the audit reason codes.

mod admin;
mod call;
mod convert;
pub mod echo;
mod key_admin;
mod resolver;
pub mod status;
mod watch;

pub use admin::AdminApi;
pub use key_admin::KeyAdminApi;
pub use resolver::ResolverApi;

/// The generated contract (see [`crate::proto`]), under its old name.
pub use crate::proto as pb;

/// Largest request message either service accepts (values are at most 64 KiB).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;
