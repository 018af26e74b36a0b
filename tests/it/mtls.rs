//! Who may connect, and who may call what.

use aitokens::{
    api::pb::{
        GetTokenRequest, ListTokensRequest, ResolveTokenRequest,
        token_admin_client::TokenAdminClient, token_resolver_client::TokenResolverClient,
    },
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

use crate::common::{Setup, TestServer, assert_status, create_request, identity};

const NAME: &str = "tenants/acme/tokens/openai";
const VALUE: &str = "sk-mtls-canary-55e1";

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

/// Refused at the handshake (the call fails in transport) or by the handler
/// with UNAUTHENTICATED / PERMISSION_DENIED; never a value.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>, case: &str) {
    let status = result.expect_err(case);
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Unauthenticated | Code::PermissionDenied
        ),
        "{case}: unexpected {status:?}"
    );
    assert!(!status.message().contains(VALUE), "{case}: value in status");
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
    assert_refused(
        resolve_with(&server, None).await,
        "resolve without a client cert",
    );
    assert_refused(
        admin_with(&server, None).await,
        "admin without a client cert",
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let server = server_with_token().await;
    let rogue = Ca::generate("rogue CA").expect("ca");
    // Same identities as the real ones, but the wrong issuer.
    let agent = identity(
        &rogue
            .issue_client(aitokens::dev::AGENT_IDENTITY)
            .expect("issue"),
    );
    let admin = identity(
        &rogue
            .issue_client(aitokens::dev::ADMIN_IDENTITY)
            .expect("issue"),
    );
    assert_refused(
        resolve_with(&server, Some(agent)).await,
        "agent cert from another CA",
    );
    assert_refused(
        admin_with(&server, Some(admin)).await,
        "admin cert from another CA",
    );
}

#[tokio::test]
async fn roles_do_not_cross_listeners() {
    let server = server_with_token().await;
    let status = resolve_with(&server, Some(server.client_identity("admin")))
        .await
        .expect_err("admin resolves");
    assert_status(&status, Code::PermissionDenied, None);
    assert!(!status.message().contains(VALUE));
    let status = admin_with(&server, Some(server.client_identity("agent")))
        .await
        .expect_err("agent lists");
    assert_status(&status, Code::PermissionDenied, None);

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
        assert_status(&status, Code::PermissionDenied, None);
    }
    let status = admin
        .create_token(create_request("acme", "x", "v"))
        .await
        .expect_err("denied");
    assert_status(&status, Code::PermissionDenied, None);
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

    let unknown = pki.client("spiffe://aitokens.dev/stranger");
    let status = resolve_with(&server, Some(unknown))
        .await
        .expect_err("unknown identity");
    assert_status(&status, Code::PermissionDenied, None);

    let mut two = CertificateParams::default();
    two.subject_alt_names = vec![
        SanType::URI(aitokens::dev::AGENT_IDENTITY.try_into().expect("uri")),
        SanType::URI("spiffe://aitokens.dev/other".try_into().expect("uri")),
    ];
    two.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let status = resolve_with(&server, Some(identity(&pki.ca.issue(two).expect("issue"))))
        .await
        .expect_err("two URI SANs");
    assert_status(&status, Code::Unauthenticated, None);

    // A CN that spells an allowed identity grants nothing.
    let mut cn_only = CertificateParams::default();
    cn_only
        .distinguished_name
        .push(DnType::CommonName, aitokens::dev::AGENT_IDENTITY);
    cn_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let status = resolve_with(
        &server,
        Some(identity(&pki.ca.issue(cn_only).expect("issue"))),
    )
    .await
    .expect_err("CN only");
    assert_status(&status, Code::Unauthenticated, None);

    // A server-auth-only certificate is not a client certificate.
    let mut server_only = CertificateParams::default();
    server_only.subject_alt_names = vec![SanType::URI(
        aitokens::dev::AGENT_IDENTITY.try_into().expect("uri"),
    )];
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    assert_refused(
        resolve_with(
            &server,
            Some(identity(&pki.ca.issue(server_only).expect("issue"))),
        )
        .await,
        "serverAuth-only EKU",
    );
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

#[tokio::test]
async fn policy_scopes_admins_to_tenants_and_resolvers_to_patterns() {
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
        let expected = if name.ends_with("missing") {
            Code::NotFound
        } else {
            Code::PermissionDenied
        };
        assert_status(&status, expected, None);
    }

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
    assert_status(&status, Code::PermissionDenied, None);
    for name in [
        "tenants/globex/tokens/openai-prod",
        "tenants/globex/tokens/missing",
    ] {
        let status = acme_admin
            .get_token(GetTokenRequest { name: name.into() })
            .await
            .expect_err(name);
        assert_status(&status, Code::PermissionDenied, None);
    }
}

/// A client certificate for the agent identity with the given validity.
fn agent_params(
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        aitokens::dev::AGENT_IDENTITY.try_into().expect("uri"),
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    params
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
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);

    // Positive control: the same CA and identity, valid now.
    let valid = pki
        .ca
        .issue(agent_params(now - day, now + day))
        .expect("issue");
    assert_eq!(
        resolve_with(&server, Some(identity(&valid)))
            .await
            .expect("valid"),
        VALUE
    );

    let expired = pki
        .ca
        .issue(agent_params(now - 30 * day, now - day))
        .expect("issue");
    assert_refused(
        resolve_with(&server, Some(identity(&expired))).await,
        "expired",
    );
    let not_yet = pki
        .ca
        .issue(agent_params(now + day, now + 30 * day))
        .expect("issue");
    assert_refused(
        resolve_with(&server, Some(identity(&not_yet))).await,
        "not yet valid",
    );

    // Self-signed, with the allowed identity in its SAN.
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = agent_params(now - day, now + day)
        .self_signed(&key)
        .expect("self-signed");
    let self_signed = Identity::from_pem(cert.pem(), key.serialize_pem());
    assert_refused(
        resolve_with(&server, Some(self_signed)).await,
        "self-signed",
    );
    // And on the admin listener, with the admin identity.
    let mut params = agent_params(now - day, now + day);
    params.subject_alt_names = vec![SanType::URI(
        aitokens::dev::ADMIN_IDENTITY.try_into().expect("uri"),
    )];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    assert_refused(
        admin_with(
            &server,
            Some(Identity::from_pem(cert.pem(), key.serialize_pem())),
        )
        .await,
        "self-signed admin",
    );
    let expired_admin = {
        let mut params = agent_params(now - 30 * day, now - day);
        params.subject_alt_names = vec![SanType::URI(
            aitokens::dev::ADMIN_IDENTITY.try_into().expect("uri"),
        )];
        pki.ca.issue(params).expect("issue")
    };
    assert_refused(
        admin_with(&server, Some(identity(&expired_admin))).await,
        "expired admin",
    );
}
