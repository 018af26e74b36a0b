//! Client identity from the peer certificate's subject alternative names.

use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::error::{Error, Result};

/// The identities a verified client certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's one URI SAN (a SPIFFE id, say), if it has one.
    pub uri: Option<String>,
    /// The certificate's DNS SANs; they count only where the policy names
    /// DNS identities (`dns:NAME`).
    pub dns: Vec<String>,
}

impl PeerIdentity {
    /// Reads the identities from a DER leaf certificate. A certificate with
    /// more than one URI SAN is refused (X509-SVID: exactly one), as is one
    /// with no URI or DNS SAN at all.
    pub fn from_der(leaf: &[u8]) -> Result<Self> {
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|_| Error::Unauthenticated("client certificate could not be parsed"))?;
        let san = cert.subject_alternative_name().map_err(|_| {
            Error::Unauthenticated("client certificate has a malformed SAN extension")
        })?;
        let mut uris = Vec::new();
        let mut dns = Vec::new();
        for name in san.iter().flat_map(|ext| &ext.value.general_names) {
            match name {
                GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                GeneralName::DNSName(name) => dns.push(name.to_ascii_lowercase()),
                _ => {}
            }
        }
        if uris.len() > 1 {
            return Err(Error::Unauthenticated(
                "client certificate has more than one URI SAN; exactly one identity is allowed",
            ));
        }
        if uris.is_empty() && dns.is_empty() {
            return Err(Error::Unauthenticated(
                "client certificate has no URI or DNS SAN identity (the CN is never used)",
            ));
        }
        Ok(Self {
            uri: uris.pop(),
            dns,
        })
    }

    /// The identity to show in logs when the policy knows none of them.
    pub fn display(&self) -> String {
        match (&self.uri, self.dns.first()) {
            (Some(uri), _) => uri.clone(),
            (None, Some(dns)) => format!("dns:{dns}"),
            (None, None) => "unknown".to_owned(),
        }
    }

    /// The policy keys this peer may match, most specific first.
    pub(crate) fn policy_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.uri
            .iter()
            .cloned()
            .chain(self.dns.iter().map(|d| format!("dns:{d}")))
    }
}
