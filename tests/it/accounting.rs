//! Every value that leaves is accounted for: allowed resolves are exact
//! aggregates in the audit trail, optionally one JSON line each, and values
//! stop leaving while the trail cannot be written.

use std::time::{Duration, Instant};

use aitokens::api::pb::{
    ListAuditEventsRequest, ResolveTokenRequest, token_admin_client::TokenAdminClient,
    token_resolver_client::TokenResolverClient,
};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

use crate::{
    backend,
    common::{Setup, create_request},
};

const SECOND_AGENT: &str = "spiffe://aitokens.dev/agent-two";

/// Every allowed-resolve record of tenant acme: (resource, actor, count).
async fn resolve_records(admin: &mut TokenAdminClient<Channel>) -> Vec<(String, String, i64)> {
    let (mut out, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = admin
            .list_audit_events(ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                method: "aitokens.v1.TokenResolver/ResolveToken".into(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list audit events")
            .into_inner();
        out.extend(
            page.events
                .into_iter()
                .filter(|e| e.outcome == "allowed")
                .map(|e| (e.resource, e.actor, e.count)),
        );
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

async fn resolve(client: &mut TokenResolverClient<Channel>, id: &str) -> Result<(), tonic::Status> {
    client
        .resolve_token(ResolveTokenRequest {
            name: format!("tenants/acme/tokens/{id}"),
        })
        .await
        .map(drop)
}

#[tokio::test]
async fn allowed_resolves_are_accounted_exactly_per_token_and_caller() {
    let mut setup = Setup::new();
    let pki = setup.pki();
    let jsonl = setup.dir.path().join("audit.jsonl");
    setup.config.audit.jsonl = Some(jsonl.clone());
    setup.config.audit.per_call_resolves = true;
    let setup = setup.policy(&format!(
        r#"
        [[admin]]
        identity = "spiffe://aitokens.dev/admin"
        tenants = ["*"]
        [[resolver]]
        identity = "spiffe://aitokens.dev/agent"
        tenants = ["acme"]
        tokens = ["*"]
        [[resolver]]
        identity = "{SECOND_AGENT}"
        tenants = ["acme"]
        tokens = ["*"]
        "#
    ));
    let server = setup.start().await;
    let mut admin = server.admin().await;
    for id in ["a", "b"] {
        admin
            .create_token(create_request("acme", id, "value"))
            .await
            .expect("create");
    }
    let mut first = server.resolver().await;
    let channel = server
        .channel(server.internal_addr, Some(pki.client(SECOND_AGENT)))
        .await
        .expect("channel");
    let mut second = TokenResolverClient::new(channel);
    // 37 resolves by the agent and 24 by the second one, over two tokens,
    // spread over more than one flush.
    let mut made = 0;
    for i in 0..61 {
        let client = if i % 5 < 3 { &mut first } else { &mut second };
        resolve(client, if i % 2 == 0 { "a" } else { "b" })
            .await
            .expect("resolve");
        made += 1;
        if i == 30 {
            resolve_records(&mut admin).await;
        }
    }
    let records = resolve_records(&mut admin).await;
    let total: i64 = records.iter().map(|r| r.2).sum();
    assert_eq!(
        total, made,
        "the trail accounts for exactly {made} resolves: {records:?}"
    );
    let by = |actor: &str| -> i64 { records.iter().filter(|r| r.1 == actor).map(|r| r.2).sum() };
    assert_eq!(by("spiffe://aitokens.dev/agent"), 37);
    assert_eq!(by(SECOND_AGENT), 24);
    assert!(
        records.len() < made as usize,
        "aggregates, not one record per resolve: {} records",
        records.len()
    );
    // Per-call mode: one JSON line per allowed resolve as well.
    let lines = std::fs::read_to_string(&jsonl).expect("jsonl");
    let per_call = lines
        .lines()
        .filter(|l| l.starts_with("{\"resolve\""))
        .count();
    assert_eq!(per_call, made as usize);
    assert!(
        !lines.contains("value"),
        "a value reached the JSON-lines file"
    );
}

#[tokio::test]
async fn values_stop_leaving_while_the_store_refuses_writes_and_resume_after() {
    let mut setup = Setup::new();
    setup.config.usage.flush_interval_secs = 1;
    setup.config.audit.max_unflushed_secs = 2;
    let server = setup.start().await;
    let mut admin = server.admin().await;
    admin
        .create_token(create_request("acme", "t", "value"))
        .await
        .expect("create");
    let mut client = server.resolver().await;
    resolve(&mut client, "t").await.expect("healthy");
    let mut succeeded = 1;

    // Another process takes the database's write lock (SQLite) or the
    // audit chain's head (PostgreSQL) and keeps it for 12 s: every flush of
    // the server now fails after its busy timeout, or waits.
    let door = server.back_door().await;
    door.batch(if backend::postgres() {
        "BEGIN; LOCK TABLE audit_head IN ACCESS EXCLUSIVE MODE"
    } else {
        "BEGIN EXCLUSIVE"
    })
    .await;
    let locked = Instant::now();
    let (mut refused_at, mut served_while_locked) = (None, 0);
    while locked.elapsed() < Duration::from_secs(12) {
        match resolve(&mut client, "t").await {
            Ok(()) => {
                succeeded += 1;
                served_while_locked += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                let reason = status
                    .get_error_details()
                    .error_info()
                    .map(|i| i.reason.clone());
                assert_eq!(reason.as_deref(), Some("AUDIT_UNAVAILABLE"), "{status:?}");
                refused_at.get_or_insert(locked.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused_at =
        refused_at.expect("resolves were never refused while nothing could be written");
    println!(
        "fail closed: first refusal {:.1} s after writes stopped (bound 2 s); {served_while_locked} resolves served before it",
        refused_at.as_secs_f64()
    );
    assert!(
        served_while_locked > 0,
        "the window before the bound was never seen"
    );
    assert!(
        refused_at >= Duration::from_secs(1),
        "refused before the bound"
    );
    door.batch("COMMIT").await;

    let unlocked = Instant::now();
    loop {
        match resolve(&mut client, "t").await {
            Ok(()) => {
                succeeded += 1;
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        assert!(
            unlocked.elapsed() < Duration::from_secs(30),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "recovered {:.1} s after writes resumed",
        unlocked.elapsed().as_secs_f64()
    );
    let accounted: i64 = resolve_records(&mut admin).await.iter().map(|r| r.2).sum();
    assert_eq!(
        accounted, succeeded,
        "every value that left is accounted for"
    );
    drop(server);
}

#[tokio::test]
async fn a_server_refuses_per_call_mode_without_a_file_for_it() {
    let mut setup = Setup::new();
    setup.config.audit.per_call_resolves = true;
    let config_path = setup.dir.path().join("per-call.toml");
    std::fs::write(&config_path, toml::to_string(&setup.config).expect("toml")).expect("write");
    let err = aitokens::config::Config::load(&config_path).expect_err("refused");
    assert!(
        err.to_string()
            .contains("per_call_resolves needs audit.jsonl"),
        "{err}"
    );
}
