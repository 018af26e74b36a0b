//! The resolve cache of sealed rows must never outlive a change: changes made
//! through the server are in force for the very next resolve; changes made
//! behind its back (another process) within the change poll (SQLite) or at
//! once (PostgreSQL's change notifications).

use std::time::{Duration, Instant};

use aitokens::api::pb::{
    CreateTokenBindingRequest, DeleteTokenBindingRequest, DisableTokenRequest, EnableTokenRequest,
    ListTokenUsagesRequest, RemoveTokenRequest, RenameTokenRequest, TokenBinding,
    token_resolver_client::TokenResolverClient,
};
use tonic::{Code, Status, transport::Channel};

use crate::{
    common::{BINDINGS_ONLY_POLICY, Setup, TestServer, assert_status, create_request, resolve},
    observability::get_metrics_sample,
};

const AGENT: &str = "spiffe://aitokens.dev/agent";

/// Resolves `name` twice, so the second answer comes from the cache.
async fn warm(client: &mut TokenResolverClient<Channel>, name: &str, value: &str) {
    for _ in 0..2 {
        assert_eq!(resolve(client, name).await.expect(name), value);
    }
}

#[tokio::test]
async fn every_change_through_the_server_is_in_force_for_the_next_resolve() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    admin
        .create_token(create_request("acme", "a", "value-a"))
        .await
        .expect("create");

    let misses = "aitokens_resolve_cache_misses_total";
    let before = get_metrics_sample(&server.telemetry, misses)
        .await
        .expect("miss counter");
    for _ in 0..3 {
        assert_eq!(
            resolve(&mut resolver, "tenants/acme/tokens/a")
                .await
                .expect("a"),
            "value-a"
        );
    }
    let after = get_metrics_sample(&server.telemetry, misses).await;
    assert_eq!(after, Some(before + 1.0), "3 resolves, 1 store read");
    assert_eq!(
        get_metrics_sample(&server.telemetry, "aitokens_resolve_cache_rows").await,
        Some(1.0)
    );

    // Kill switch: in force at once, and lifted at once.
    admin
        .disable_token(DisableTokenRequest {
            name: "tenants/acme/tokens/a".into(),
            etag: None,
        })
        .await
        .expect("disable");
    let status = resolve(&mut resolver, "tenants/acme/tokens/a")
        .await
        .expect_err("disabled");
    assert_status(&status, Code::FailedPrecondition, None);
    admin
        .enable_token(EnableTokenRequest {
            name: "tenants/acme/tokens/a".into(),
            etag: None,
        })
        .await
        .expect("enable");
    warm(&mut resolver, "tenants/acme/tokens/a", "value-a").await;

    // Rename: the old name is gone at once, the new one resolves.
    admin
        .rename_token(RenameTokenRequest {
            name: "tenants/acme/tokens/a".into(),
            new_token_id: Some("b".into()),
            ..Default::default()
        })
        .await
        .expect("rename");
    let status = resolve(&mut resolver, "tenants/acme/tokens/a")
        .await
        .expect_err("old name");
    assert_status(&status, Code::NotFound, None);
    warm(&mut resolver, "tenants/acme/tokens/b", "value-a").await;

    // Replacement: the cached row of b learns it is replaced, so the next
    // resolve counts as superseded.
    let mut replacement = create_request("acme", "c", "value-c");
    replacement.replaces = "tenants/acme/tokens/b".into();
    admin.create_token(replacement).await.expect("replacement");
    resolve(&mut resolver, "tenants/acme/tokens/b")
        .await
        .expect("b still resolves");
    let usages = admin
        .list_token_usages(ListTokenUsagesRequest {
            name: "tenants/acme/tokens/b".into(),
        })
        .await
        .expect("usages")
        .into_inner()
        .usages;
    assert_eq!(usages.len(), 1, "{usages:?}");
    assert_eq!(usages[0].superseded_resolve_count, 1, "{usages:?}");

    // Remove: gone at once, from the cache too.
    warm(&mut resolver, "tenants/acme/tokens/c", "value-c").await;
    for id in ["b", "c"] {
        let name = format!("tenants/acme/tokens/{id}");
        admin
            .remove_token(RemoveTokenRequest {
                name: name.clone(),
                etag: None,
                force: true,
            })
            .await
            .expect("remove");
        let status = resolve(&mut resolver, &name).await.expect_err("removed");
        assert_status(&status, Code::NotFound, None);
    }
    assert_eq!(
        get_metrics_sample(&server.telemetry, "aitokens_resolve_cache_rows").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn an_unbind_is_in_force_for_the_next_resolve_in_bindings_only_mode() {
    let server = Setup::new().policy(BINDINGS_ONLY_POLICY).start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    admin
        .create_token(create_request("acme", "t", "value-t"))
        .await
        .expect("create");
    admin
        .create_token_binding(CreateTokenBindingRequest {
            parent: "tenants/acme/tokens/t".into(),
            binding_id: "agent".into(),
            binding: Some(TokenBinding {
                caller_identity: AGENT.into(),
                purpose: "tests".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("bind");
    warm(&mut resolver, "tenants/acme/tokens/t", "value-t").await;
    admin
        .delete_token_binding(DeleteTokenBindingRequest {
            name: "tenants/acme/tokens/t/bindings/agent".into(),
        })
        .await
        .expect("unbind");
    let status = resolve(&mut resolver, "tenants/acme/tokens/t")
        .await
        .expect_err("unbound");
    assert_status(&status, Code::PermissionDenied, None);
}

/// Resolves `name` until it fails, for at most `limit`; returns the failure
/// and how long it took. Every value seen meanwhile must be `authentic`.
async fn until_refused(
    client: &mut TokenResolverClient<Channel>,
    name: &str,
    authentic: &str,
    limit: Duration,
) -> (Status, Duration) {
    let started = Instant::now();
    loop {
        match resolve(client, name).await {
            Ok(value) => assert_eq!(value, authentic, "{name}: another row's value"),
            Err(status) => return (status, started.elapsed()),
        }
        assert!(
            started.elapsed() < limit,
            "{name}: the server still serves its cached row after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_change_behind_the_servers_back_reaches_resolves_within_the_poll() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    for id in ["a", "b", "c"] {
        admin
            .create_token(create_request("acme", id, &format!("value-{id}")))
            .await
            .expect("create");
        warm(
            &mut resolver,
            &format!("tenants/acme/tokens/{id}"),
            &format!("value-{id}"),
        )
        .await;
    }
    // Another process moves b's ciphertexts onto a, and deletes c.
    let door = server.back_door().await;
    let row = &door
        .query(
            "SELECT wrapped_data_key, value_ciphertext FROM tokens WHERE token_id = 'b'",
            &[],
        )
        .await[0];
    let changed = door
        .execute(
            "UPDATE tokens SET wrapped_data_key = $1, value_ciphertext = $2 WHERE token_id = 'a'",
            &[row[0].clone(), row[1].clone()],
        )
        .await;
    assert_eq!(changed, 1, "tampered with a");
    let deleted = door
        .execute("DELETE FROM tokens WHERE token_id = 'c'", &[])
        .await;
    assert_eq!(deleted, 1, "deleted c");

    let limit = Duration::from_secs(5);
    let (status, took) =
        until_refused(&mut resolver, "tenants/acme/tokens/a", "value-a", limit).await;
    assert_status(&status, Code::DataLoss, None);
    eprintln!("tampered row refused {took:?} after the change");
    let (status, _) = until_refused(&mut resolver, "tenants/acme/tokens/c", "value-c", limit).await;
    assert_status(&status, Code::NotFound, None);
    assert_eq!(
        resolve(&mut resolver, "tenants/acme/tokens/b")
            .await
            .expect("b is untouched"),
        "value-b"
    );
}
