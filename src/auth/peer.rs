//! Who is at the other end of a connection: its address and the identity
//! its verified client certificate carries, read once when the TLS
//! handshake completes and shared by every request on the connection.

use std::{net::SocketAddr, sync::Arc};

use super::PeerIdentity;
use crate::error::Error;

/// A connection's peer, as the TLS acceptor established it.
#[derive(Clone, Debug)]
pub struct ConnectionPeer {
    /// The peer's network address.
    pub addr: SocketAddr,
    /// The identity in its client certificate, or why it has none that
    /// counts (a fixed text, safe to show the caller).
    pub identity: Result<Arc<PeerIdentity>, &'static str>,
}

impl ConnectionPeer {
    /// The peer at `addr` whose verified certificate chain is `certs`
    /// (leaf first), as the handshake left it.
    pub fn from_certs(addr: SocketAddr, certs: Option<&[impl AsRef<[u8]>]>) -> Self {
        let identity =
            match certs.and_then(|certs| certs.first()) {
                None => Err("a client certificate is required"),
                Some(leaf) => PeerIdentity::from_der(leaf.as_ref())
                    .map(Arc::new)
                    .map_err(|e| match e {
                        Error::Unauthenticated(why) => why,
                        _ => "client certificate could not be read",
                    }),
            };
        Self { addr, identity }
    }
}
