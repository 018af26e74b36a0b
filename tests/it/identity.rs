//! A certificate has one identity, never the union of its SANs: a URI SAN
//! when present, else its one DNS SAN. Real mTLS against a real server, with
//! certificates issued by a test-owned CA.

use aitokens::{
    api::pb::{ResolveTokenRequest, token_resolver_client::TokenResolverClient},
    pki::Issued,
};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, SanType};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::common::{Setup, TestPki, TestServer, create_request, identity};

const NAME: &str = "tenants/acme/tokens/openai";
const VALUE: &str = "sk-identity-canary-91d0";

/// The dev admin, and one resolver that is a DNS identity.
const POLICY: &str = r#"
    [[admin]]
    identity = "spiffe://aitokens.dev/admin"
    tenants = ["*"]

    [[resolver]]
    identity = "dns:agent.acme.internal"
    tenants = ["acme"]
    tokens = ["*"]
"#;

fn issue(pki: &TestPki, sans: Vec<SanType>) -> Issued {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    pki.ca.issue(params).expect("issue")
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().expect("uri"))
}

fn dns(text: &str) -> SanType {
    SanType::DnsName(text.try_into().expect("dns name"))
}

async fn resolve_as(server: &TestServer, cert: &Issued) -> Result<String, Status> {
    let channel = server
        .channel(server.internal_addr, Some(identity(cert)))
        .await
        .expect("the handshake succeeds: the chain is valid");
    TokenResolverClient::new(channel)
        .resolve_token(ResolveTokenRequest { name: NAME.into() })
        .await
        .map(|r| r.get_ref().value.clone())
}

/// The refusal's code, message and ErrorInfo reason.
fn refusal(status: &Status) -> (Code, &str, String) {
    let reason = status
        .get_error_details()
        .error_info()
        .expect("ErrorInfo")
        .reason
        .clone();
    (status.code(), status.message(), reason)
}

#[tokio::test]
async fn one_identity_per_certificate_uri_first_then_a_single_dns_san() {
    let setup = Setup::new().policy(POLICY);
    let pki = setup.pki();
    let server = setup.start().await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "openai", VALUE))
        .await
        .expect("create");

    // Positive control: the one DNS SAN is the identity the policy grants.
    let dns_only = issue(&pki, vec![dns("agent.acme.internal")]);
    assert_eq!(
        resolve_as(&server, &dns_only).await.expect("resolve"),
        VALUE
    );

    // A URI SAN is the only identity: the granted DNS SAN beside it counts
    // for nothing, and spiffe://t/nobody is granted nothing.
    let uri_and_dns = issue(
        &pki,
        vec![uri("spiffe://t/nobody"), dns("agent.acme.internal")],
    );
    let status = resolve_as(&server, &uri_and_dns)
        .await
        .expect_err("the URI SAN is the identity");
    assert_eq!(
        refusal(&status),
        (
            Code::PermissionDenied,
            "permission denied",
            "POLICY_DENIED".to_owned()
        )
    );

    // No URI SAN and two DNS SANs (the granted one first): no identity.
    let two_dns = issue(
        &pki,
        vec![dns("agent.acme.internal"), dns("other.acme.internal")],
    );
    let status = resolve_as(&server, &two_dns)
        .await
        .expect_err("two DNS SANs");
    assert_eq!(
        refusal(&status),
        (
            Code::Unauthenticated,
            "client certificate has no URI SAN and more than one DNS SAN; \
             a DNS identity needs exactly one",
            "NO_USABLE_IDENTITY".to_owned()
        )
    );

    // A URI SAN spelled like a DNS identity does not pass for one.
    let dns_scheme = issue(&pki, vec![uri("dns:agent.acme.internal")]);
    let status = resolve_as(&server, &dns_scheme)
        .await
        .expect_err("dns: URI SAN");
    assert_eq!(
        refusal(&status),
        (
            Code::Unauthenticated,
            "client certificate has a URI SAN in the dns: scheme, which is how DNS \
             identities are spelled; refused",
            "NO_USABLE_IDENTITY".to_owned()
        )
    );

    // The control again, after the refusals: nothing else was in the way.
    assert_eq!(
        resolve_as(&server, &dns_only).await.expect("resolve"),
        VALUE
    );
}
