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

/// How `cert` is refused: the code, message and ErrorInfo reason.
async fn refusal(server: &TestServer, cert: &Issued) -> (Code, String, String) {
    let status = resolve_as(server, cert).await.expect_err("refused");
    let reason = status
        .get_error_details()
        .error_info()
        .expect("ErrorInfo")
        .reason
        .clone();
    (status.code(), status.message().to_owned(), reason)
}

fn expected(code: Code, message: &str, reason: &str) -> (Code, String, String) {
    (code, message.to_owned(), reason.to_owned())
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
    let sans = vec![uri("spiffe://t/nobody"), dns("agent.acme.internal")];
    assert_eq!(
        refusal(&server, &issue(&pki, sans)).await,
        expected(Code::PermissionDenied, "permission denied", "POLICY_DENIED")
    );
    // No URI SAN and two DNS SANs (the granted one first): no identity.
    let sans = vec![dns("agent.acme.internal"), dns("other.acme.internal")];
    assert_eq!(
        refusal(&server, &issue(&pki, sans)).await,
        expected(
            Code::Unauthenticated,
            "client certificate has no URI SAN and more than one DNS SAN; \
             a DNS identity needs exactly one",
            "NO_USABLE_IDENTITY"
        )
    );
    // A URI SAN spelled like a DNS identity does not pass for one.
    let sans = vec![uri("dns:agent.acme.internal")];
    assert_eq!(
        refusal(&server, &issue(&pki, sans)).await,
        expected(
            Code::Unauthenticated,
            "client certificate has a URI SAN in the dns: scheme, which is how DNS \
             identities are spelled; refused",
            "NO_USABLE_IDENTITY"
        )
    );

    // The control again, after the refusals: nothing else was in the way.
    assert_eq!(
        resolve_as(&server, &dns_only).await.expect("resolve"),
        VALUE
    );
}
