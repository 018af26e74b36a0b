//! Who is calling, and may they?
//!
//! - [`ConnectionPeer`]: the identity in a connection's verified client
//!   certificate (the TLS acceptor has checked its chain against the client
//!   CA), read once per connection: its URI SAN (e.g. a SPIFFE id) when it
//!   has one, else its one DNS SAN; never a union of SANs, never the CN.
//! - [`AuthLayer`]: a tower layer that puts the caller ([`Authenticated`])
//!   into every request's extensions, or refuses a request that has none.
//! - [`Policy`]: maps identities to roles, default deny; [`Authorizer`]
//!   decides one request against it with one call, and audits refusals.

mod authorize;
mod identity;
mod layer;
mod peer;
mod policy;

pub use authorize::{Authorizer, Granted, POLICY_DENIED, Scope};
pub use identity::PeerIdentity;
pub use layer::{AuthLayer, AuthService, Authenticated};
pub use peer::ConnectionPeer;
pub use policy::{Caller, ManagedTenants, Policy, PolicyHandle};
