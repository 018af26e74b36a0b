//! Who may connect, and who may call what. Every refusal is asserted for
//! its cause (the handshake-failure reason the server counted, or the gRPC
//! code, ErrorInfo reason and audit record), next to a positive control on
//! the same listener, so that a dead listener cannot pass a negative test.

use std::future::Future;

use aitokens::{
    api::pb::{
        GetTokenRequest, ListTenantsRequest, ListTenantsResponse, ListTokensRequest,
        ResolveTokenRequest, token_admin_client::TokenAdminClient,
        token_resolver_client::TokenResolverClient,
    },
    dev::{ADMIN_IDENTITY, AGENT_IDENTITY},
    pki::Ca,
};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, SanType};
use tonic::{
    Code, Status,
    transport::{Channel, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    common::{Setup, TestPki, TestServer, create_request, identity},
    refusal::{assert_handshake_failed, assert_refused_by, audited, handshake_failures},
};

const NAME: &str = "tenants/acme/tokens/openai";
const VALUE: &str = "sk-mtls-canary-55e1";
const RESOLVE: &str = "aitokens.v1.TokenResolver/ResolveToken";
const LIST: &str = "aitokens.v1.TokenAdmin/ListTokens";
const DENIED: (&str, &str) = ("denied", "POLICY_DENIED");
const NO_IDENTITY: (&str, &str) = ("unauthenticated", "NO_USABLE_IDENTITY");

async fn server_with_token() -> TestServer {
    let server = TestServer::start().await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "openai", VALUE))
        .await
        .expect("create");
    server
}

async fn resolve_with(server: &TestServer, identity: Option<Identity>) -> Result<String, Status> {
    let channel = match server.channel(server.internal_addr, identity).await {
        Ok(channel) => channel,
        Err(e) => return Err(Status::unavailable(format!("connect failed: {e}"))),
    };
    TokenResolverClient::new(channel)
        .resolve_token(ResolveTokenRequest { name: NAME.into() })
        .await
        .map(|r| r.into_inner().value.clone())
}

async fn admin_with(server: &TestServer, identity: Option<Identity>) -> Result<usize, Status> {
    let channel: Channel = match server.channel(server.admin_addr, identity).await {
        Ok(channel) => channel,
        Err(e) => return Err(Status::unavailable(format!("connect failed: {e}"))),
    };
    TokenAdminClient::new(channel)
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().tokens.len())
}

/// Positive controls on both listeners: the agent resolves the token, the
/// admin lists it (with the certificates in the server's data folder).
async fn assert_both_listeners_serve(server: &TestServer) {
    let agent = server.client_identity("agent");
    assert_eq!(
        resolve_with(server, Some(agent))
            .await
            .expect("agent resolves"),
        VALUE
    );
    let admin = server.client_identity("admin");
    assert_eq!(
        admin_with(server, Some(admin)).await.expect("admin lists"),
        1
    );
}

/// Asserts that `attempt` (a fresh connection to `listener`) fails, without
/// the value, and that the server counted exactly one handshake failure on
/// that listener, for `reason`.
async fn assert_handshake_refused<T: std::fmt::Debug>(
    server: &TestServer,
    listener: &str,
    reason: &str,
    attempt: impl Future<Output = Result<T, Status>>,
) {
    let before = handshake_failures(&server.telemetry, listener);
    let status = attempt.await.expect_err(reason);
    assert!(
        !status.message().contains(VALUE),
        "{reason}: value in status"
    );
    assert_handshake_failed(&server.telemetry, listener, &before, reason).await;
}

#[tokio::test]
async fn positive_controls() {
    let server = server_with_token().await;
    assert_eq!(
        resolve_with(&server, Some(server.client_identity("agent")))
            .await
            .expect("agent resolves"),
        VALUE
    );
    assert_eq!(
        admin_with(&server, Some(server.client_identity("admin")))
            .await
            .expect("admin lists"),
        1
    );
}

#[tokio::test]
async fn no_client_certificate_is_refused_on_both_listeners() {
    let server = server_with_token().await;
    assert_both_listeners_serve(&server).await;
    let reason = "no_client_certificate";
    assert_handshake_refused(&server, "internal", reason, resolve_with(&server, None)).await;
    assert_handshake_refused(&server, "admin", reason, admin_with(&server, None)).await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let server = server_with_token().await;
    assert_both_listeners_serve(&server).await;
    let rogue = Ca::generate("rogue CA").expect("ca");
    // Same identities as the real ones, but the wrong issuer.
    let agent = identity(&rogue.issue_client(AGENT_IDENTITY).expect("issue"));
    let admin = identity(&rogue.issue_client(ADMIN_IDENTITY).expect("issue"));
    let reason = "unknown_issuer";
    assert_handshake_refused(
        &server,
        "internal",
        reason,
        resolve_with(&server, Some(agent)),
    )
    .await;
    assert_handshake_refused(&server, "admin", reason, admin_with(&server, Some(admin))).await;
}

#[tokio::test]
async fn roles_do_not_cross_listeners() {
    let server = server_with_token().await;
    assert_both_listeners_serve(&server).await;
    let status = resolve_with(&server, Some(server.client_identity("admin")))
        .await
        .expect_err("admin resolves");
    assert_refused_by(&status, Code::PermissionDenied, "POLICY_DENIED");
    assert!(!status.message().contains(VALUE));
    let status = admin_with(&server, Some(server.client_identity("agent")))
        .await
        .expect_err("agent lists");
    assert_refused_by(&status, Code::PermissionDenied, "POLICY_DENIED");

    // The agent is denied every admin method, whether or not the token exists.
    let channel = server
        .channel(server.admin_addr, Some(server.client_identity("agent")))
        .await
        .expect("channel");
    let mut admin = TokenAdminClient::new(channel);
    for name in [NAME, "tenants/acme/tokens/missing"] {
        let status = admin
            .get_token(GetTokenRequest { name: name.into() })
            .await
            .expect_err("denied");
        assert_refused_by(&status, Code::PermissionDenied, "POLICY_DENIED");
    }
    let status = admin
        .create_token(create_request("acme", "x", "v"))
        .await
        .expect_err("denied");
    assert_refused_by(&status, Code::PermissionDenied, "POLICY_DENIED");

    // Each refusal is audited, as denied by the policy, under the caller.
    let denied = |n: usize| vec![(DENIED.0.to_owned(), DENIED.1.to_owned()); n];
    assert_eq!(audited(&server, RESOLVE, ADMIN_IDENTITY).await, denied(1));
    assert_eq!(audited(&server, LIST, AGENT_IDENTITY).await, denied(1));
    let get = "aitokens.v1.TokenAdmin/GetToken";
    assert_eq!(audited(&server, get, AGENT_IDENTITY).await, denied(2));
    let create = "aitokens.v1.TokenAdmin/CreateToken";
    assert_eq!(audited(&server, create, AGENT_IDENTITY).await, denied(1));
}

#[tokio::test]
async fn identities_come_from_exactly_one_uri_san_never_the_cn() {
    let setup = Setup::new();
    let pki = setup.pki();
    let server = setup.start().await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "openai", VALUE))
        .await
        .expect("create");
    // Positive control: the test CA's agent certificate.
    assert_both_listeners_serve(&server).await;

    let stranger = "spiffe://aitokens.dev/stranger";
    let status = resolve_with(&server, Some(pki.client(stranger)))
        .await
        .expect_err("unknown identity");
    assert_refused_by(&status, Code::PermissionDenied, "POLICY_DENIED");
    let denied = (DENIED.0.to_owned(), DENIED.1.to_owned());
    assert_eq!(audited(&server, RESOLVE, stranger).await, vec![denied]);

    // Two URI SANs, or only a CN that spells an allowed identity: no
    // identity at all, audited as such.
    for params in [two_uri_sans(), cn_only()] {
        let who = identity(&pki.ca.issue(params).expect("issue"));
        let status = resolve_with(&server, Some(who))
            .await
            .expect_err("no usable identity");
        assert_refused_by(&status, Code::Unauthenticated, "NO_USABLE_IDENTITY");
    }
    let no_identity = (NO_IDENTITY.0.to_owned(), NO_IDENTITY.1.to_owned());
    assert_eq!(
        audited(&server, RESOLVE, "(none)").await,
        vec![no_identity.clone(), no_identity]
    );

    // A server-auth-only certificate is not a client certificate.
    let mut server_only = CertificateParams::default();
    server_only.subject_alt_names = vec![SanType::URI(AGENT_IDENTITY.try_into().expect("uri"))];
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_only = identity(&pki.ca.issue(server_only).expect("issue"));
    assert_handshake_refused(
        &server,
        "internal",
        "invalid_purpose",
        resolve_with(&server, Some(server_only)),
    )
    .await;
}

#[tokio::test]
async fn both_listeners_serve_health() {
    let server = TestServer::start().await;
    for (addr, who, service) in [
        (server.admin_addr, "admin", "aitokens.v1.TokenAdmin"),
        (server.internal_addr, "agent", "aitokens.v1.TokenResolver"),
    ] {
        let channel = server
            .channel(addr, Some(server.client_identity(who)))
            .await
            .expect("channel");
        let mut health = HealthClient::new(channel);
        for name in ["", service] {
            let response = health
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .expect("health check")
                .into_inner();
            assert_eq!(
                response.status(),
                ServingStatus::Serving,
                "{service} {name:?}"
            );
        }
    }
}

/// A server whose policy scopes an admin to one tenant and the agent to
/// one tenant's `openai-*` tokens, with tokens in and out of those scopes;
/// and the test PKI that can issue the tenant admin's certificate.
async fn scoped_server() -> (TestServer, TestPki) {
    let setup = Setup::new().policy(
        r#"
        [[admin]]
        identity = "spiffe://aitokens.dev/admin"
        tenants = ["*"]

        [[admin]]
        identity = "spiffe://aitokens.dev/acme-admin"
        tenants = ["acme"]

        [[resolver]]
        identity = "spiffe://aitokens.dev/agent"
        tenants = ["acme"]
        tokens = ["openai-*"]
        "#,
    );
    let pki = setup.pki();
    let server = setup.start().await;
    let mut admin = server.admin().await;
    for (tenant, id) in [
        ("acme", "openai-prod"),
        ("acme", "anthropic"),
        ("globex", "openai-prod"),
    ] {
        admin
            .create_token(create_request(tenant, id, VALUE))
            .await
            .expect("create");
    }
    (server, pki)
}

/// How many of `records` are policy denials.
fn policy_denials(records: Vec<(String, String)>) -> usize {
    let denied = (DENIED.0.to_owned(), DENIED.1.to_owned());
    records.into_iter().filter(|r| *r == denied).count()
}

#[tokio::test]
async fn policy_scopes_resolvers_to_tenants_and_token_patterns() {
    let (server, _pki) = scoped_server().await;
    let resolve = |name: &'static str| {
        let server = &server;
        async move {
            let channel = server
                .channel(server.internal_addr, Some(server.client_identity("agent")))
                .await
                .expect("channel");
            TokenResolverClient::new(channel)
                .resolve_token(ResolveTokenRequest { name: name.into() })
                .await
        }
    };
    assert_eq!(
        resolve("tenants/acme/tokens/openai-prod")
            .await
            .expect("allowed")
            .into_inner()
            .value,
        VALUE
    );
    for name in [
        "tenants/acme/tokens/anthropic",
        "tenants/globex/tokens/openai-prod",
        "tenants/acme/tokens/openai-missing",
    ] {
        let status = resolve(name).await.expect_err(name);
        // Permission is decided before existence: a missing token the caller
        // could resolve is NOT_FOUND, one it could not is PERMISSION_DENIED.
        if name.ends_with("missing") {
            assert_refused_by(&status, Code::NotFound, "TOKEN_NOT_FOUND");
        } else {
            assert_refused_by(&status, Code::PermissionDenied, "POLICY_DENIED");
        }
    }
    assert_eq!(
        policy_denials(audited(&server, RESOLVE, AGENT_IDENTITY).await),
        2
    );
}

#[tokio::test]
async fn policy_scopes_admins_to_their_tenants() {
    let (server, pki) = scoped_server().await;
    let channel = server
        .channel(
            server.admin_addr,
            Some(pki.client("spiffe://aitokens.dev/acme-admin")),
        )
        .await
        .expect("channel");
    let mut acme_admin = TokenAdminClient::new(channel);
    let listed = acme_admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        })
        .await
        .expect("own tenant")
        .into_inner();
    assert_eq!(listed.tokens.len(), 2);
    let status = acme_admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/globex".into(),
            ..Default::default()
        })
        .await
        .expect_err("other tenant");
    assert_refused_by(&status, Code::PermissionDenied, "POLICY_DENIED");
    for name in [
        "tenants/globex/tokens/openai-prod",
        "tenants/globex/tokens/missing",
    ] {
        let status = acme_admin
            .get_token(GetTokenRequest { name: name.into() })
            .await
            .expect_err(name);
        assert_refused_by(&status, Code::PermissionDenied, "POLICY_DENIED");
    }
    let acme_admin = "spiffe://aitokens.dev/acme-admin";
    let get = "aitokens.v1.TokenAdmin/GetToken";
    assert_eq!(policy_denials(audited(&server, LIST, acme_admin).await), 1);
    assert_eq!(policy_denials(audited(&server, get, acme_admin).await), 2);
}

#[tokio::test]
async fn list_tenants_names_exactly_the_tenants_an_admin_may_manage() {
    let (server, pki) = scoped_server().await;
    let tenants_of = async |identity: &str| {
        let channel = server
            .channel(server.admin_addr, Some(pki.client(identity)))
            .await
            .expect("channel");
        TokenAdminClient::new(channel)
            .list_tenants(ListTenantsRequest {})
            .await
    };
    // A grant of every tenant: the tenants that hold tokens, in order.
    assert_eq!(
        tenants_of("spiffe://aitokens.dev/admin")
            .await
            .expect("admin of all")
            .into_inner(),
        ListTenantsResponse {
            tenants: vec!["acme".into(), "globex".into()],
            every_tenant: true,
        }
    );
    // A grant of one tenant: that one, not globex (which holds a token).
    assert_eq!(
        tenants_of("spiffe://aitokens.dev/acme-admin")
            .await
            .expect("acme admin")
            .into_inner(),
        ListTenantsResponse {
            tenants: vec!["acme".into()],
            every_tenant: false,
        }
    );
    // A resolver is no admin: refused, and audited as a policy denial.
    let status = tenants_of(AGENT_IDENTITY)
        .await
        .expect_err("a resolver lists no tenants");
    assert_refused_by(&status, Code::PermissionDenied, "POLICY_DENIED");
    let method = "aitokens.v1.TokenAdmin/ListTenants";
    assert_eq!(
        policy_denials(audited(&server, method, AGENT_IDENTITY).await),
        1
    );
}

/// A client certificate naming the agent and another identity in URI SANs.
fn two_uri_sans() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(AGENT_IDENTITY.try_into().expect("uri")),
        SanType::URI("spiffe://aitokens.dev/other".try_into().expect("uri")),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// A client certificate with no SAN, whose CN spells the agent identity.
fn cn_only() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, AGENT_IDENTITY);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// A client certificate for `uri` with the given validity.
fn client_params(
    uri: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// A self-signed certificate for `uri`, valid now.
fn self_signed(uri: &str) -> Identity {
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = client_params(uri, now - day, now + day)
        .self_signed(&key)
        .expect("self-signed");
    Identity::from_pem(cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn self_signed_expired_and_not_yet_valid_certificates_are_refused() {
    let setup = Setup::new();
    let pki = setup.pki();
    let server = setup.start().await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "openai", VALUE))
        .await
        .expect("create");
    assert_both_listeners_serve(&server).await;
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let issue =
        |uri: &str, from, to| identity(&pki.ca.issue(client_params(uri, from, to)).expect("issue"));

    // Positive control: the same CA and identity, valid now.
    let valid = issue(AGENT_IDENTITY, now - day, now + day);
    assert_eq!(
        resolve_with(&server, Some(valid)).await.expect("valid"),
        VALUE
    );

    for (listener, uri) in [("internal", AGENT_IDENTITY), ("admin", ADMIN_IDENTITY)] {
        let attempt = |who: Identity| {
            let server = &server;
            async move {
                if listener == "internal" {
                    resolve_with(server, Some(who)).await.map(|_| ())
                } else {
                    admin_with(server, Some(who)).await.map(|_| ())
                }
            }
        };
        let expired = issue(uri, now - 30 * day, now - day);
        assert_handshake_refused(&server, listener, "validity", attempt(expired)).await;
        let not_yet = issue(uri, now + day, now + 30 * day);
        assert_handshake_refused(&server, listener, "validity", attempt(not_yet)).await;
        // Self-signed, with the allowed identity in its SAN.
        let forged = self_signed(uri);
        assert_handshake_refused(&server, listener, "unknown_issuer", attempt(forged)).await;
    }
}
