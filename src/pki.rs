//! A small certificate authority for `aitokens dev` and for tests: a CA, a
//! server certificate, and client certificates whose identity is a URI SAN.
//! Production deployments bring their own PKI.
//!
//! What it issues is short-lived: leaf certificates are valid for
//! [`LEAF_VALIDITY`] (30 days), the CA a day longer, from an hour ago (for
//! clocks a little behind); `aitokens dev` issues a new set on start when
//! one nears its end.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// How long a server or client certificate issued here is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the CA is valid: a day beyond its leaves.
const CA_VALIDITY: Duration = Duration::from_secs(31 * 24 * 3600);
/// Validity starts this long before now, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Sets `params` to be valid from a little before now for `validity`.
fn valid_for(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
}

/// A certificate authority that can issue server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// An issued certificate and its private key, both PEM.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM; zeroized on drop.
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("key_pem", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        valid_for(&mut params, CA_VALIDITY);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(pki_error)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(pki_error)?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM: what clients and servers trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `hosts` (DNS names or IP addresses).
    pub fn issue_server(&self, hosts: &[&str]) -> Result<Issued> {
        let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(pki_error)?;
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        valid_for(&mut params, LEAF_VALIDITY);
        self.issue(params)
    }

    /// A client certificate whose identity is the URI SAN `uri`.
    pub fn issue_client(&self, uri: &str) -> Result<Issued> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, uri);
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(pki_error)?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        valid_for(&mut params, LEAF_VALIDITY);
        self.issue(params)
    }

    /// A certificate revocation list signed by this CA, PEM.
    pub fn crl(&self, params: &CertificateRevocationListParams) -> Result<String> {
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(pki_error)
    }

    /// Issues a certificate with arbitrary `params`, validity included (tests
    /// use this for odd cases).
    pub fn issue(&self, mut params: CertificateParams) -> Result<Issued> {
        params.use_authority_key_identifier_extension = true;
        if params.key_usages.is_empty() {
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        let key = KeyPair::generate().map_err(pki_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(pki_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

fn pki_error(e: rcgen::Error) -> Error {
    Error::tls(format!("generating certificates: {e}"))
}
