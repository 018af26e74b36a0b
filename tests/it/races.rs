//! Concurrency: racing creates of one id, rename against remove with etags,
//! and resolves racing removes. Every loop is bounded in count.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use aitokens::api::pb::{
    GetTokenRequest, RemoveTokenRequest, RenameTokenRequest, ResolveTokenRequest,
};
use tonic::Code;

use crate::{
    common::{TestServer, create_request},
    process::long_tests,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_of_one_id_have_exactly_one_winner() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let mut resolver = server.resolver().await;
    let rounds = if long_tests() { 200 } else { 20 };
    for round in 0..rounds {
        let id = format!("race-{round}");
        let tasks: Vec<_> = (0..32)
            .map(|caller| {
                let (mut admin, id) = (admin.clone(), id.clone());
                tokio::spawn(async move {
                    let value = format!("sk-race-{round}-{caller}");
                    (
                        value.clone(),
                        admin
                            .create_token(create_request("acme", &id, &value))
                            .await,
                    )
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (value, result) = task.await.expect("task");
            match result {
                Ok(_) => winners.push(value),
                Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let got = resolver
            .resolve_token(ResolveTokenRequest {
                name: format!("tenants/acme/tokens/{id}"),
            })
            .await
            .expect("resolve")
            .into_inner();
        assert!(
            got.value == winners[0],
            "round {round}: not the winner's value"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_against_remove_with_the_same_etag_has_one_winner() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let rounds = if long_tests() { 300 } else { 30 };
    let (mut renamed_wins, mut removed_wins) = (0, 0);
    for round in 0..rounds {
        let id = format!("rr-{round}");
        let name = format!("tenants/acme/tokens/{id}");
        let etag = admin
            .clone()
            .create_token(create_request("acme", &id, "sk-rr"))
            .await
            .expect("create")
            .into_inner()
            .etag;
        let new_id = (round % 2 == 0).then(|| format!("{id}-new"));
        let rename = {
            let (mut admin, name, etag, new_id) =
                (admin.clone(), name.clone(), etag.clone(), new_id.clone());
            tokio::spawn(async move {
                admin
                    .rename_token(RenameTokenRequest {
                        name,
                        display_name: Some("renamed".into()),
                        new_token_id: new_id,
                        etag: Some(etag),
                    })
                    .await
            })
        };
        let remove = {
            let (mut admin, name) = (admin.clone(), name.clone());
            tokio::spawn(async move {
                admin
                    .remove_token(RemoveTokenRequest {
                        name,
                        etag: Some(etag),
                        force: true,
                    })
                    .await
            })
        };
        let (rename, remove) = (rename.await.expect("task"), remove.await.expect("task"));
        let current = |name: String| {
            let mut admin = admin.clone();
            async move { admin.get_token(GetTokenRequest { name }).await }
        };
        match (rename, remove) {
            (Ok(token), Err(status)) => {
                renamed_wins += 1;
                // The remove saw the new etag (ABORTED) or, renamed away, no token.
                assert!(
                    matches!(status.code(), Code::Aborted | Code::NotFound),
                    "{status:?}"
                );
                let got = current(token.get_ref().name.clone())
                    .await
                    .expect("renamed token exists");
                assert_eq!(got.get_ref().display_name, "renamed");
                assert_eq!(got.get_ref().etag, token.get_ref().etag);
            }
            (Err(status), Ok(_)) => {
                removed_wins += 1;
                assert!(
                    matches!(status.code(), Code::Aborted | Code::NotFound),
                    "{status:?}"
                );
                let status = current(name.clone()).await.expect_err("removed");
                assert_eq!(status.code(), Code::NotFound);
                if let Some(new_id) = &new_id {
                    let status = current(format!("tenants/acme/tokens/{new_id}"))
                        .await
                        .expect_err("never renamed");
                    assert_eq!(status.code(), Code::NotFound);
                }
            }
            (rename, remove) => panic!("round {round}: rename {rename:?}, remove {remove:?}"),
        }
    }
    eprintln!("rename won {renamed_wins}, remove won {removed_wins} of {rounds}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_during_remove_never_returns_another_value_or_one_after_the_remove() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let tokens = if long_tests() { 2_000 } else { 200 };
    let values: Arc<Vec<String>> = Arc::new(
        (0..tokens)
            .map(|i| format!("sk-remove-race-{i:05}-{:08x}", fastrand::u32(..)))
            .collect(),
    );
    for (i, value) in values.iter().enumerate() {
        admin
            .create_token(create_request("acme", &format!("t{i}"), value))
            .await
            .expect("create");
    }
    // Indices whose removal the server has acknowledged.
    let removed: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let resolver = server.resolver().await;
    let readers: Vec<_> = (0..8)
        .map(|r| {
            let (mut resolver, values, removed) =
                (resolver.clone(), values.clone(), removed.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(r);
                let (mut found, mut gone) = (0u64, 0u64);
                for _ in 0..(tokens * 4) {
                    let i = rng.usize(0..values.len());
                    let removed_before = removed.lock().expect("set").contains(&i);
                    let result = resolver
                        .resolve_token(ResolveTokenRequest {
                            name: format!("tenants/acme/tokens/t{i}"),
                        })
                        .await;
                    match result {
                        Ok(reply) => {
                            assert!(
                                !removed_before,
                                "t{i} resolved after its removal was acknowledged"
                            );
                            assert!(reply.get_ref().value == values[i], "t{i}: another value");
                            found += 1;
                        }
                        Err(status) => {
                            assert_eq!(status.code(), Code::NotFound, "t{i}: {status:?}");
                            gone += 1;
                        }
                    }
                }
                (found, gone)
            })
        })
        .collect();
    for i in 0..tokens {
        admin
            .remove_token(RemoveTokenRequest {
                name: format!("tenants/acme/tokens/t{i}"),
                etag: None,
                // Readers resolve these tokens right now: force past the
                // recent-caller guard (the property tested is elsewhere).
                force: true,
            })
            .await
            .expect("remove");
        removed.lock().expect("set").insert(i);
    }
    let (mut found, mut gone) = (0, 0);
    for reader in readers {
        let (f, g) = reader.await.expect("reader");
        found += f;
        gone += g;
    }
    eprintln!("resolves during removal: {found} found, {gone} not found");
    assert!(found > 0, "the race never overlapped a live token");
}
