//! The audit trail, its hash chain, policy reload, tenant-scoped admins.

use std::{
    process::Command,
    time::{Duration, Instant},
};

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

fn sqlite3(db: &std::path::Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 command-line tool is required (apt-get install sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn verify(db: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aitokens"))
        .args(["audit", "verify", "--db"])
        .arg(db)
        .output()
        .expect("run aitokens audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn audit_verify_detects_removed_and_altered_records() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    for i in 0..6 {
        admin
            .create_token(create_request("acme", &format!("t{i}"), "v"))
            .await
            .expect("create");
    }
    drop(admin);
    let (dir, config) = server.stop().await;
    let db = config.store.database.clone();
    let (ok, text) = verify(&db);
    assert!(ok, "untouched log must verify: {text}");
    assert!(text.contains("intact: 6 records"), "{text}");

    // A copy of the database (and its WAL, if the last close left one).
    let copy = |name: &str| {
        let path = dir.path().join(name);
        std::fs::copy(&db, &path).expect("copy db");
        let wal = format!("{}-wal", db.display());
        if std::path::Path::new(&wal).exists() {
            std::fs::copy(&wal, format!("{}-wal", path.display())).expect("copy wal");
        }
        path
    };
    let deleted = copy("deleted.db");
    sqlite3(
        &deleted,
        "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 3;",
    );
    let (ok, text) = verify(&deleted);
    assert!(!ok && text.contains("broken at record 3"), "{text}");

    let altered = copy("altered.db");
    sqlite3(
        &altered,
        "DROP TRIGGER audit_no_update; UPDATE audit SET actor = 'someone-else' WHERE seq = 2;",
    );
    let (ok, text) = verify(&altered);
    assert!(!ok && text.contains("broken at record 2"), "{text}");

    let truncated = copy("truncated.db");
    sqlite3(
        &truncated,
        "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 6;",
    );
    let (ok, text) = verify(&truncated);
    assert!(!ok && text.contains("removed from the end"), "{text}");

    // Without dropping the triggers, the log refuses edits outright.
    let guarded = copy("guarded.db");
    let out = Command::new("sqlite3")
        .arg(&guarded)
        .arg("DELETE FROM audit WHERE seq = 1;")
        .output()
        .expect("sqlite3");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("append-only"));
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
