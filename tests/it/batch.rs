//! TokenResolver.BatchResolveTokens over real mTLS, on both stores: a
//! per-name result for mixed allowed, denied, disabled, missing and
//! malformed names, accounted exactly as the same single resolves.

use std::collections::BTreeMap;

use aitokens::api::pb::{
    BatchResolveTokensRequest, DisableTokenRequest, ListAuditEventsRequest, ListTokenUsagesRequest,
    token_admin_client::TokenAdminClient, token_resolver_client::TokenResolverClient,
};
use prost::Message;
use tonic::{Code, transport::Channel};

use crate::common::{Setup, assert_status, create_request, resolve};

/// The agent may resolve `ok-*` and `off-*` tokens of every tenant.
const PATTERNS: &str = r#"
    [[admin]]
    identity = "spiffe://aitokens.dev/admin"
    tenants = ["*"]

    [[resolver]]
    identity = "spiffe://aitokens.dev/agent"
    tenants = ["*"]
    tokens = ["ok-*", "off-*"]
"#;

/// Ids of the mixed case: allowed, disabled, denied by policy, missing,
/// allowed again (twice), and a malformed name.
const IDS: [&str; 7] = [
    "ok-a",
    "off-b",
    "secret-c",
    "ok-missing",
    "ok-a",
    "ok-d",
    "BAD ID",
];

async fn seed(admin: &mut TokenAdminClient<Channel>, tenant: &str) {
    for id in ["ok-a", "off-b", "secret-c", "ok-d"] {
        admin
            .create_token(create_request(tenant, id, &format!("sk-{tenant}-{id}")))
            .await
            .expect("create");
    }
    admin
        .disable_token(DisableTokenRequest {
            name: format!("tenants/{tenant}/tokens/off-b"),
            etag: None,
        })
        .await
        .expect("disable");
}

fn names(tenant: &str) -> Vec<String> {
    IDS.iter()
        .map(|id| format!("tenants/{tenant}/tokens/{id}"))
        .collect()
}

/// (code, ErrorInfo reason) of a google.rpc.Status.
fn code_and_reason(status: &tonic_types::Status) -> (Code, String) {
    let reason = status
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.ErrorInfo"))
        .map(|any| {
            tonic_types::pb::ErrorInfo::decode(any.value.as_slice())
                .expect("ErrorInfo")
                .reason
        })
        .unwrap_or_default();
    (Code::from(status.code), reason)
}

/// Audit records of `tenant`, by token id: (outcome, reason, count) summed.
async fn audit_of(
    admin: &mut TokenAdminClient<Channel>,
    tenant: &str,
) -> BTreeMap<(String, String, String), i64> {
    let page = admin
        .list_audit_events(ListAuditEventsRequest {
            parent: format!("tenants/{tenant}"),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner();
    assert!(page.next_page_token.is_empty());
    let prefix = format!("tenants/{tenant}/tokens/");
    let mut out = BTreeMap::new();
    for e in page.events {
        // The admin's own records (create, disable) are not resolves.
        if e.actor.ends_with("/admin") {
            continue;
        }
        let id = e.resource.trim_start_matches(&prefix).to_owned();
        *out.entry((id, e.outcome, e.reason)).or_default() += e.count;
    }
    out
}

/// Usage of each seeded token: (resolve_count, denied_count).
async fn usage_of(admin: &mut TokenAdminClient<Channel>, tenant: &str) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for id in ["ok-a", "off-b", "secret-c", "ok-d"] {
        let usages = admin
            .list_token_usages(ListTokenUsagesRequest {
                name: format!("tenants/{tenant}/tokens/{id}"),
            })
            .await
            .expect("usages")
            .into_inner()
            .usages;
        out.push(usages.iter().fold((0, 0), |(r, d), u| {
            (r + u.resolve_count, d + u.denied_count)
        }));
    }
    out
}

#[tokio::test]
async fn a_mixed_batch_reports_each_name_and_is_accounted_like_single_resolves() {
    let server = Setup::new().policy(PATTERNS).start().await;
    let (mut admin, mut resolver) = (server.admin().await, server.resolver().await);
    seed(&mut admin, "single").await;
    seed(&mut admin, "batch").await;

    // The same names one by one (tenant "single") and in one batch ("batch").
    let singles: Vec<_> = {
        let mut out = Vec::new();
        for name in names("single") {
            out.push(resolve(&mut resolver, &name).await);
        }
        out
    };
    let response = resolver
        .batch_resolve_tokens(BatchResolveTokensRequest {
            names: names("batch"),
        })
        .await
        .expect("one refusal does not fail the batch")
        .into_inner();
    assert_eq!(response.results.len(), IDS.len());
    let expected = [
        (Code::Ok, ""),
        (Code::FailedPrecondition, "TOKEN_DISABLED"),
        (Code::PermissionDenied, "POLICY_DENIED"),
        (Code::NotFound, "TOKEN_NOT_FOUND"),
        (Code::Ok, ""),
        (Code::Ok, ""),
        (Code::InvalidArgument, "INVALID_FIELD"),
    ];
    for (i, ((result, single), (code, why))) in response
        .results
        .iter()
        .zip(&singles)
        .zip(expected)
        .enumerate()
    {
        assert_eq!(result.name, names("batch")[i], "results in request order");
        match &result.status {
            None => {
                assert_eq!(code, Code::Ok, "{}", result.name);
                assert_eq!(result.value, format!("sk-batch-{}", IDS[i]));
                assert_eq!(
                    single.as_deref().ok(),
                    Some(format!("sk-single-{}", IDS[i]).as_str())
                );
            }
            Some(status) => {
                assert_eq!(
                    code_and_reason(status),
                    (code, why.to_owned()),
                    "{}",
                    result.name
                );
                assert!(result.value.is_empty(), "no value with a refusal");
                let single = single.as_ref().expect_err("refused singly too");
                assert_eq!(single.code(), code);
                // The same message (a malformed name names its own field).
                assert_eq!(
                    status.message.replacen("names:", "name:", 1),
                    single.message(),
                    "the same message"
                );
                assert!(!status.message.contains("sk-"), "{}", status.message);
            }
        }
    }
    // The malformed name is reported on the field it came in.
    let bad = response.results[6].status.as_ref().expect("status");
    assert!(bad.message.starts_with("names"), "{}", bad.message);

    // Accounting: flushed by a restart, then compared tenant to tenant.
    let server = server.restart().await;
    let mut admin = server.admin().await;
    let single_audit = audit_of(&mut admin, "single").await;
    let batch_audit = audit_of(&mut admin, "batch").await;
    assert_eq!(
        batch_audit, single_audit,
        "audit records as for single resolves"
    );
    assert_eq!(
        batch_audit.get(&("ok-a".into(), "allowed".into(), "resolved".into())),
        Some(&2),
        "{batch_audit:?}"
    );
    let single_usage = usage_of(&mut admin, "single").await;
    let batch_usage = usage_of(&mut admin, "batch").await;
    assert_eq!(
        batch_usage, single_usage,
        "usage counted as for single resolves"
    );
    assert_eq!(batch_usage, vec![(2, 0), (0, 1), (0, 1), (1, 0)]);
    println!("batch: audit {batch_audit:?}; usage {batch_usage:?}");
}

#[tokio::test]
async fn batch_size_is_bounded_and_named() {
    let server = Setup::new().start().await;
    let mut resolver: TokenResolverClient<Channel> = server.resolver().await;
    let empty = resolver
        .batch_resolve_tokens(BatchResolveTokensRequest { names: Vec::new() })
        .await
        .expect_err("empty");
    assert_status(&empty, Code::InvalidArgument, Some("names"));
    let many = resolver
        .batch_resolve_tokens(BatchResolveTokensRequest {
            names: (0..101)
                .map(|i| format!("tenants/acme/tokens/t{i}"))
                .collect(),
        })
        .await
        .expect_err("101 names");
    assert_status(&many, Code::InvalidArgument, Some("names"));
    assert!(many.message().contains("at most 100"), "{}", many.message());
    // 100 is fine: each missing name is its own NOT_FOUND.
    let hundred = resolver
        .batch_resolve_tokens(BatchResolveTokensRequest {
            names: (0..100)
                .map(|i| format!("tenants/acme/tokens/t{i}"))
                .collect(),
        })
        .await
        .expect("100 names")
        .into_inner();
    assert_eq!(hundred.results.len(), 100);
    assert!(
        hundred
            .results
            .iter()
            .all(|r| r.status.as_ref().map(|s| s.code) == Some(Code::NotFound as i32))
    );
}

/// User plus system CPU time of process `pid` (`/proc/PID/stat`, in the
/// usual 100 ticks per second).
fn cpu_time(pid: u32) -> std::time::Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = text.rsplit_once(')').expect("stat format").1;
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().expect("ticks"))
        .collect();
    std::time::Duration::from_millis((fields[0] + fields[1]) * 10)
}

/// Server CPU per name: 2,000 names resolved one call each, in batches of
/// 10 and in batches of 100, against a real `aitokens serve` (a debug
/// build: the ratios matter, not the absolute figures). Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_cost_less_server_cpu_per_name_than_single_calls() {
    use crate::process::{DataDir, Serve};

    const NAMES: usize = 2000;
    let _heavy = crate::common::HEAVY.lock().await;
    let data = DataDir::new();
    let serve = Serve::start(&data, "info", "serve.log");
    let mut admin = serve.admin(&data).await;
    for i in 0..100 {
        admin
            .create_token(create_request(
                "acme",
                &format!("ok-{i}"),
                &format!("sk-{i}"),
            ))
            .await
            .expect("create");
    }
    let mut resolver = serve.resolver(&data).await;
    let name = |i: usize| format!("tenants/acme/tokens/ok-{}", i % 100);
    let started = std::time::Instant::now();
    let mut figures = Vec::new();
    for batch in [1, 10, 100] {
        let (cpu, wall) = (cpu_time(serve.pid()), std::time::Instant::now());
        for chunk in (0..NAMES).collect::<Vec<_>>().chunks(batch) {
            assert!(started.elapsed() < std::time::Duration::from_secs(300));
            if batch == 1 {
                resolve(&mut resolver, &name(chunk[0]))
                    .await
                    .expect("resolve");
            } else {
                let response = resolver
                    .batch_resolve_tokens(BatchResolveTokensRequest {
                        names: chunk.iter().map(|i| name(*i)).collect(),
                    })
                    .await
                    .expect("batch")
                    .into_inner();
                assert!(response.results.iter().all(|r| r.status.is_none()));
            }
        }
        let per_name = (cpu_time(serve.pid()) - cpu) / NAMES as u32;
        let wall = wall.elapsed() / NAMES as u32;
        println!(
            "batch of {batch:>3}: server CPU {per_name:?} per name, wall {wall:?} per name ({NAMES} names)"
        );
        figures.push(per_name);
    }
    assert!(
        figures[2] < figures[0],
        "a batch of 100 costs less server CPU per name than single calls: {figures:?}"
    );
    serve.kill9();
}
