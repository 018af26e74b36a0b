//! Who is calling, and may they?
//!
//! [`PeerIdentity`] comes from the verified client certificate (the TLS layer
//! has already checked its chain against the client CA): its single URI SAN
//! (e.g. a SPIFFE id) and its DNS SANs. The subject CN is never read.
//! [`Policy`] maps identities to roles, default deny.

mod identity;
mod policy;

pub use identity::PeerIdentity;
pub use policy::{Caller, Policy, PolicyHandle};
