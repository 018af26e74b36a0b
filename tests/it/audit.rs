//! The audit trail as ListAuditEvents shows it, policy reload,
//! tenant-scoped admins. (The chain itself: `trail.rs`.)

use std::time::{Duration, Instant};

use aitokens::api::pb::{
    AuditEvent, CreateTokenBindingRequest, DisableTokenRequest, GetTokenRequest,
    ListAuditEventsRequest, ListTokenUsagesRequest, RemoveTokenRequest, RenameTokenRequest,
    ResolveTokenRequest, TokenBinding, token_admin_client::TokenAdminClient,
    token_resolver_client::TokenResolverClient,
};
use tonic::{Code, transport::Channel};

use crate::common::{Setup, TestServer, assert_status, create_request};
use crate::refusal::policy_reloads_reach;

/// Every audit event of `parent` (optionally of one method), all pages.
pub async fn events(
    admin: &mut TokenAdminClient<Channel>,
    parent: &str,
    method: &str,
) -> Vec<AuditEvent> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    for _ in 0..1000 {
        let page = admin
            .list_audit_events(ListAuditEventsRequest {
                parent: parent.into(),
                method: method.into(),
                page_size: 100,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list audit events")
            .into_inner();
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
    panic!("audit listing does not end");
}

#[tokio::test]
async fn mutations_and_denials_are_audited_without_values() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let value = "sk-audit-canary-9931";
    admin
        .create_token(create_request("acme", "openai", value))
        .await
        .expect("create");
    admin
        .rename_token(RenameTokenRequest {
            name: "tenants/acme/tokens/openai".into(),
            display_name: Some("renamed".into()),
            ..Default::default()
        })
        .await
        .expect("rename");
    admin
        .disable_token(DisableTokenRequest {
            name: "tenants/acme/tokens/openai".into(),
            etag: None,
        })
        .await
        .expect("disable");

    // The admin identity on the internal listener: a denied resolve.
    let channel = server
        .channel(server.internal_addr, Some(server.client_identity("admin")))
        .await
        .expect("channel");
    let status = TokenResolverClient::new(channel)
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/openai".into(),
        })
        .await
        .expect_err("denied");
    assert_status(&status, Code::PermissionDenied, None);
    // The agent on a disabled token: refused, audited as denied too.
    server
        .resolver()
        .await
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/openai".into(),
        })
        .await
        .expect_err("disabled");

    let all = events(&mut admin, "tenants/acme", "").await;
    let find = |method: &str, outcome: &str| {
        all.iter()
            .find(|e| e.method.ends_with(method) && e.outcome == outcome)
            .unwrap_or_else(|| panic!("no {outcome} {method} event in {all:#?}"))
    };
    let created = find("/CreateToken", "allowed");
    assert_eq!(created.actor, "spiffe://aitokens.dev/admin");
    assert_eq!(created.resource, "tenants/acme/tokens/openai");
    assert!(created.peer.starts_with("127.0.0.1:"));
    find("/RenameToken", "allowed");
    find("/DisableToken", "allowed");
    let denied = all
        .iter()
        .find(|e| e.method.ends_with("/ResolveToken") && e.actor == "spiffe://aitokens.dev/admin")
        .expect("denied resolve audited with the caller identity");
    assert_eq!(denied.outcome, "denied");
    let disabled = all
        .iter()
        .find(|e| e.method.ends_with("/ResolveToken") && e.actor == "spiffe://aitokens.dev/agent")
        .expect("refused resolve audited");
    assert_eq!(
        (disabled.outcome.as_str(), disabled.reason.as_str()),
        ("denied", "TOKEN_DISABLED")
    );
    // Sequence numbers are 1, 2, 3, ... in order.
    for (i, event) in all.iter().enumerate() {
        assert_eq!(event.sequence, i as i64 + 1);
    }
    let text = format!("{all:?}");
    assert!(!text.contains(value), "a value reached the audit trail");

    // Filters: by method and by actor.
    let only_create = events(
        &mut admin,
        "tenants/acme",
        "aitokens.v1.TokenAdmin/CreateToken",
    )
    .await;
    assert!(
        only_create
            .iter()
            .all(|e| e.method == "aitokens.v1.TokenAdmin/CreateToken")
    );
    assert!(!only_create.is_empty());
}

#[tokio::test]
async fn policy_reload_grants_and_revokes_without_restart() {
    let base = r#"
        [[admin]]
        identity = "spiffe://aitokens.dev/admin"
        tenants = ["*"]
    "#;
    let grant = format!(
        "{base}\n[[resolver]]\nidentity = \"spiffe://aitokens.dev/agent\"\ntenants = [\"acme\"]\ntokens = [\"*\"]\n"
    );
    let setup = Setup::new().policy(base);
    let policy_path = setup.config.policy.clone();
    let server = setup.start().await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "t", "v"))
        .await
        .expect("create");
    // One connection for the whole test: reloads do not drop it.
    let mut resolver = server.resolver().await;
    assert_status(
        &attempt(&mut resolver).await.expect_err("not granted yet"),
        Code::PermissionDenied,
        None,
    );

    std::fs::write(&policy_path, &grant).expect("grant");
    wait_for(&mut resolver, true)
        .await
        .expect("granted after reload");

    // An invalid file keeps the policy in force (once it was rejected).
    std::fs::write(&policy_path, "this is [not toml").expect("break");
    policy_reloads_reach(&server.telemetry, "error", 1).await;
    attempt(&mut resolver)
        .await
        .expect("still granted: the broken file was ignored");

    std::fs::write(&policy_path, base).expect("revoke");
    let status = wait_for(&mut resolver, false).await.expect_err("revoked");
    assert_status(&status, Code::PermissionDenied, None);
}

async fn attempt(resolver: &mut TokenResolverClient<Channel>) -> Result<(), tonic::Status> {
    resolver
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/t".into(),
        })
        .await
        .map(|_| ())
}

/// Retries (bounded: 15 s) until the resolve succeeds (`want_ok`) or fails.
async fn wait_for(
    resolver: &mut TokenResolverClient<Channel>,
    want_ok: bool,
) -> Result<(), tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let result = attempt(resolver).await;
        if result.is_ok() == want_ok {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "policy change not applied within 15 s: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_tenant_scoped_admin_cannot_see_or_touch_other_tenants() {
    let setup = Setup::new().policy(
        r#"
        [[admin]]
        identity = "spiffe://aitokens.dev/admin"
        tenants = ["*"]

        [[admin]]
        identity = "spiffe://aitokens.dev/acme-admin"
        tenants = ["acme"]
        "#,
    );
    let pki = setup.pki();
    let server = setup.start().await;
    let mut root = server.admin().await;
    root.create_token(create_request("globex", "secret", "v"))
        .await
        .expect("create");
    let channel = server
        .channel(
            server.admin_addr,
            Some(pki.client("spiffe://aitokens.dev/acme-admin")),
        )
        .await
        .expect("channel");
    let mut acme = TokenAdminClient::new(channel);
    acme.create_token(create_request("acme", "mine", "v"))
        .await
        .expect("own tenant");

    let other = "tenants/globex/tokens/secret";
    let denied = [
        acme.get_token(GetTokenRequest { name: other.into() })
            .await
            .map(|_| ()),
        acme.create_token(create_request("globex", "x", "v"))
            .await
            .map(|_| ()),
        acme.rename_token(RenameTokenRequest {
            name: other.into(),
            display_name: Some("x".into()),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        acme.remove_token(RemoveTokenRequest {
            name: other.into(),
            force: true,
            ..Default::default()
        })
        .await
        .map(|_| ()),
        acme.disable_token(DisableTokenRequest {
            name: other.into(),
            etag: None,
        })
        .await
        .map(|_| ()),
        acme.list_token_usages(ListTokenUsagesRequest { name: other.into() })
            .await
            .map(|_| ()),
        acme.create_token_binding(CreateTokenBindingRequest {
            parent: other.into(),
            binding_id: "b".into(),
            binding: Some(TokenBinding {
                purpose: "p".into(),
                ..Default::default()
            }),
        })
        .await
        .map(|_| ()),
        acme.list_audit_events(ListAuditEventsRequest {
            parent: "tenants/globex".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        acme.list_audit_events(ListAuditEventsRequest {
            parent: "tenants/-".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
    ];
    for (i, result) in denied.into_iter().enumerate() {
        let status = result.expect_err("must be denied");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "call {i}: {status:?}"
        );
    }
    // Nothing changed in globex, and acme's own trail holds no globex event.
    let token = root
        .get_token(GetTokenRequest { name: other.into() })
        .await
        .expect("untouched")
        .into_inner();
    assert_eq!(token.display_name, "Token secret");
    let acme_events = events(&mut acme, "tenants/acme", "").await;
    assert!(
        acme_events.iter().all(|e| !e.resource.contains("globex")),
        "{acme_events:#?}"
    );
    let all = events(&mut root, "tenants/-", "").await;
    assert!(
        all.iter()
            .any(|e| e.resource == other && e.outcome == "denied")
    );
}

#[tokio::test]
async fn garbage_connections_are_audited_as_a_few_counted_summaries() {
    let mut setup = Setup::new();
    setup.config.usage.flush_interval_secs = 1;
    let server = setup.start().await;
    let garbage = 200;
    for _ in 0..garbage {
        use tokio::io::AsyncWriteExt;
        let mut socket = tokio::net::TcpStream::connect(server.internal_addr)
            .await
            .expect("connect");
        socket
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send garbage");
        let mut reply = Vec::new();
        // The server closes the connection after its refusal.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            use tokio::io::AsyncReadExt;
            socket.read_to_end(&mut reply).await
        })
        .await
        .expect("the server closes a garbage connection");
    }
    let mut admin = server.admin().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let summaries = loop {
        let summaries = events(&mut admin, "tenants/-", "tls/handshake").await;
        let counted: i64 = summaries.iter().map(|e| e.count).sum();
        if counted >= garbage {
            break summaries;
        }
        assert!(
            Instant::now() < deadline,
            "only {counted} of {garbage} refusals audited after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let counted: i64 = summaries.iter().map(|e| e.count).sum();
    println!(
        "{garbage} garbage connections: {} audit rows, counts summing to {counted}",
        summaries.len()
    );
    assert_eq!(counted, garbage, "every refusal is counted exactly once");
    assert!(
        summaries.len() <= 40,
        "one row per source and reason per flush, not per connection: {} rows",
        summaries.len()
    );
    for summary in &summaries {
        assert_eq!(summary.resource, "listener/internal");
        assert_eq!(summary.peer, "127.0.0.1");
        assert!(summary.reason.starts_with("TLS_"), "{}", summary.reason);
        assert!(summary.count >= 1);
    }
}
