//! Client identity from the peer certificate's subject alternative names.
//!
//! A certificate carries exactly one identity, never a union of its SANs:
//!
//! - a URI SAN (a SPIFFE id, say), when it has one, is the identity, and any
//!   DNS SANs beside it count for nothing (X509-SVID: exactly one URI SAN);
//! - with no URI SAN, its DNS SAN is the identity (`dns:NAME`, which counts
//!   only where the policy names it), if it has exactly one;
//! - anything else (several URI SANs; several DNS SANs and no URI SAN; no
//!   URI or DNS SAN at all) is no usable identity, refused with a fixed
//!   reason. The subject CN is never read.

use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::error::{Error, Result};

/// The one identity a verified client certificate carries, spelled as the
/// policy, bindings and the audit trail spell identities: the URI SAN
/// itself, or `dns:NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity(String);

impl PeerIdentity {
    /// The identity of a certificate whose URI SAN is `uri`.
    pub fn uri(uri: &str) -> Self {
        Self(uri.to_owned())
    }

    /// The identity of a certificate with no URI SAN and the one DNS SAN
    /// `name` (compared in lowercase).
    pub fn dns(name: &str) -> Self {
        Self(format!("dns:{}", name.to_ascii_lowercase()))
    }

    /// Reads the identity from a DER leaf certificate, by the rule in the
    /// module documentation.
    pub fn from_der(leaf: &[u8]) -> Result<Self> {
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|_| Error::Unauthenticated("client certificate could not be parsed"))?;
        let san = cert.subject_alternative_name().map_err(|_| {
            Error::Unauthenticated("client certificate has a malformed SAN extension")
        })?;
        let names = san.iter().flat_map(|ext| &ext.value.general_names);
        let (mut uris, mut dns) = (Vec::new(), Vec::new());
        for name in names {
            match name {
                GeneralName::URI(uri) => uris.push(*uri),
                GeneralName::DNSName(name) => dns.push(*name),
                _ => {}
            }
        }
        match (uris.as_slice(), dns.as_slice()) {
            ([uri], _) if uri.get(..4).is_some_and(|s| s.eq_ignore_ascii_case("dns:")) => {
                Err(Error::Unauthenticated(
                    "client certificate has a URI SAN in the dns: scheme, which is how DNS \
                     identities are spelled; refused",
                ))
            }
            ([uri], _) => Ok(Self::uri(uri)),
            ([], [name]) => Ok(Self::dns(name)),
            ([], []) => Err(Error::Unauthenticated(
                "client certificate has no URI or DNS SAN identity (the CN is never used)",
            )),
            ([], _) => Err(Error::Unauthenticated(
                "client certificate has no URI SAN and more than one DNS SAN; \
                 a DNS identity needs exactly one",
            )),
            _ => Err(Error::Unauthenticated(
                "client certificate has more than one URI SAN; exactly one identity is allowed",
            )),
        }
    }

    /// The identity as the policy, bindings and logs spell it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn cert(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(text.try_into().expect("uri"))
    }

    fn dns(text: &str) -> SanType {
        SanType::DnsName(text.try_into().expect("dns"))
    }

    fn refusal(sans: Vec<SanType>) -> &'static str {
        match PeerIdentity::from_der(&cert(sans)) {
            Err(Error::Unauthenticated(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_uri_san_is_the_only_identity_even_beside_a_dns_san() {
        let id = PeerIdentity::from_der(&cert(vec![
            uri("spiffe://t/nobody"),
            dns("agent.acme.internal"),
        ]))
        .expect("identity");
        assert_eq!(id.as_str(), "spiffe://t/nobody");
        assert_eq!(id, PeerIdentity::uri("spiffe://t/nobody"));
    }

    #[test]
    fn one_dns_san_without_a_uri_san_is_a_dns_identity() {
        let id = PeerIdentity::from_der(&cert(vec![dns("Agent.ACME.internal")])).expect("id");
        assert_eq!(id.as_str(), "dns:agent.acme.internal");
        assert_eq!(id.to_string(), "dns:agent.acme.internal");
    }

    #[test]
    fn several_dns_sans_without_a_uri_san_are_no_identity() {
        assert_eq!(
            refusal(vec![dns("agent.acme.internal"), dns("other.acme.internal")]),
            "client certificate has no URI SAN and more than one DNS SAN; \
             a DNS identity needs exactly one"
        );
    }

    #[test]
    fn two_uri_sans_no_san_and_a_dns_scheme_uri_are_refused() {
        assert_eq!(
            refusal(vec![uri("spiffe://t/a"), uri("spiffe://t/b")]),
            "client certificate has more than one URI SAN; exactly one identity is allowed"
        );
        assert_eq!(
            refusal(vec![]),
            "client certificate has no URI or DNS SAN identity (the CN is never used)"
        );
        // A URI SAN `dns:NAME` would read as the DNS identity NAME.
        assert_eq!(
            refusal(vec![uri("dns:agent.acme.internal")]),
            "client certificate has a URI SAN in the dns: scheme, which is how DNS \
             identities are spelled; refused"
        );
    }
}
