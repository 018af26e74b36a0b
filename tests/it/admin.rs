//! The admin and resolve round trip, pagination, tenant isolation.

use std::collections::HashSet;

use aitokens::api::pb::{
    GetTokenRequest, ListTokensRequest, RemoveTokenRequest, RenameTokenRequest,
    ResolveTokenRequest, Token,
};
use prost::Message;
use tonic::Code;

use crate::common::{TestServer, assert_status, create_request};

#[tokio::test]
async fn create_get_list_rename_remove_resolve_round_trip() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    let value = "sk-roundtrip-7f3a9c2e";

    let created = admin
        .create_token(create_request("acme", "openai-prod", value))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.name, "tenants/acme/tokens/openai-prod");
    assert_eq!(created.token_id, "openai-prod");
    assert_eq!(created.display_name, "Token openai-prod");
    assert!(created.create_time.is_some() && created.update_time == created.create_time);
    assert!(!created.etag.is_empty());

    let got = admin
        .get_token(GetTokenRequest {
            name: created.name.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got, created);

    let listed = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.tokens, vec![created.clone()]);
    assert!(listed.next_page_token.is_empty());

    let resolved = resolver
        .resolve_token(ResolveTokenRequest {
            name: created.name.clone(),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(resolved.value, value);
    assert_eq!(resolved.name, created.name);

    let renamed = admin
        .rename_token(RenameTokenRequest {
            name: created.name.clone(),
            display_name: Some("OpenAI (prod)".into()),
            new_token_id: Some("openai-main".into()),
            etag: Some(created.etag.clone()),
        })
        .await
        .expect("rename")
        .into_inner();
    assert_eq!(renamed.name, "tenants/acme/tokens/openai-main");
    assert_eq!(renamed.display_name, "OpenAI (prod)");
    assert_eq!(renamed.create_time, created.create_time);
    assert_ne!(renamed.etag, created.etag);
    let seconds = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map(|t| (t.seconds, t.nanos)).expect("time")
    };
    assert!(seconds(&renamed.update_time) >= seconds(&created.update_time));

    // The value survives the rename (ciphertexts are bound to the immutable uid).
    let resolved = resolver
        .resolve_token(ResolveTokenRequest {
            name: renamed.name.clone(),
        })
        .await
        .expect("resolve renamed")
        .into_inner();
    assert_eq!(resolved.value, value);
    let old = resolver
        .resolve_token(ResolveTokenRequest {
            name: created.name.clone(),
        })
        .await
        .expect_err("old name is gone");
    assert_status(&old, Code::NotFound, None);

    // A stale etag is ABORTED and changes nothing.
    let stale = admin
        .remove_token(RemoveTokenRequest {
            name: renamed.name.clone(),
            etag: Some(created.etag.clone()),
            ..Default::default()
        })
        .await
        .expect_err("stale etag");
    assert_status(&stale, Code::Aborted, None);
    admin
        .get_token(GetTokenRequest {
            name: renamed.name.clone(),
        })
        .await
        .expect("still there");

    let blocked = admin
        .remove_token(RemoveTokenRequest {
            name: renamed.name.clone(),
            etag: Some(renamed.etag.clone()),
            ..Default::default()
        })
        .await
        .expect_err("just resolved: still in use");
    assert_status(&blocked, Code::FailedPrecondition, None);
    admin
        .remove_token(RemoveTokenRequest {
            name: renamed.name.clone(),
            etag: Some(renamed.etag.clone()),
            force: true,
        })
        .await
        .expect("forced remove");
    for status in [
        admin
            .get_token(GetTokenRequest {
                name: renamed.name.clone(),
            })
            .await
            .expect_err("gone"),
        resolver
            .resolve_token(ResolveTokenRequest {
                name: renamed.name.clone(),
            })
            .await
            .expect_err("gone"),
        admin
            .remove_token(RemoveTokenRequest {
                name: renamed.name.clone(),
                etag: None,
                ..Default::default()
            })
            .await
            .expect_err("gone"),
    ] {
        assert_status(&status, Code::NotFound, None);
    }
    let listed = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.tokens.is_empty());
}

#[tokio::test]
async fn no_admin_response_carries_the_value() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let value = "sk-never-in-admin-responses-4d1b";
    let created = admin
        .create_token(create_request("acme", "t1", value))
        .await
        .expect("create");
    let got = admin
        .get_token(GetTokenRequest {
            name: "tenants/acme/tokens/t1".into(),
        })
        .await
        .expect("get");
    let listed = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    let renamed = admin
        .rename_token(RenameTokenRequest {
            name: "tenants/acme/tokens/t1".into(),
            display_name: Some("renamed".into()),
            ..Default::default()
        })
        .await
        .expect("rename");
    let duplicate = admin
        .create_token(create_request("acme", "t1", value))
        .await
        .expect_err("dup");
    assert_status(&duplicate, Code::AlreadyExists, None);

    let mut wire = Vec::new();
    wire.extend(created.into_inner().encode_to_vec());
    wire.extend(got.into_inner().encode_to_vec());
    wire.extend(listed.into_inner().encode_to_vec());
    wire.extend(renamed.into_inner().encode_to_vec());
    wire.extend(duplicate.message().as_bytes());
    wire.extend(duplicate.details());
    assert!(
        !contains(&wire, value.as_bytes()),
        "an admin response carried the value"
    );
}

#[tokio::test]
async fn pagination_over_2500_tokens_returns_each_exactly_once() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let total = 2500;
    // Eight concurrent writers; the store serializes them.
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..total).step_by(8) {
                admin
                    .create_token(create_request("acme", &format!("tok-{i:05}"), "v"))
                    .await
                    .expect("create");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let mut admin = admin;
    admin
        .create_token(create_request("globex", "other", "v"))
        .await
        .expect("create other tenant");

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_tokens(ListTokensRequest {
                parent: "tenants/acme".into(),
                page_size: 100,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list page")
            .into_inner();
        pages += 1;
        if pages == 3 {
            // A rename mid-listing must not make a token appear twice or vanish.
            admin
                .rename_token(RenameTokenRequest {
                    name: "tenants/acme/tokens/tok-02400".into(),
                    new_token_id: Some("zz-renamed".into()),
                    ..Default::default()
                })
                .await
                .expect("rename");
        }
        assert!(page.tokens.len() <= 100);
        seen.extend(page.tokens.into_iter().map(|t: Token| t.token_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        assert!(pages <= 30, "pagination does not end");
    }
    assert_eq!(pages, 25);
    assert_eq!(seen.len(), total);
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), total, "a token was listed twice");
    assert!(seen.contains(&"zz-renamed".to_owned()));
    assert!(!seen.contains(&"other".to_owned()));

    // Default and maximum page sizes.
    let default = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(default.tokens.len(), 50);
    let capped = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            page_size: 5000,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(capped.tokens.len(), 1000);
    assert!(!capped.next_page_token.is_empty());
}

#[tokio::test]
async fn tokens_of_one_tenant_are_invisible_under_another() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    admin
        .create_token(create_request("acme", "shared-name", "acme-value"))
        .await
        .expect("create");
    admin
        .create_token(create_request("acme", "second", "v"))
        .await
        .expect("create");
    let acme_page = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list");

    let globex = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/globex".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(globex.tokens.is_empty());
    let status = admin
        .get_token(GetTokenRequest {
            name: "tenants/globex/tokens/shared-name".into(),
        })
        .await
        .expect_err("other tenant");
    assert_status(&status, Code::NotFound, None);
    let status = resolver
        .resolve_token(ResolveTokenRequest {
            name: "tenants/globex/tokens/shared-name".into(),
        })
        .await
        .expect_err("other tenant");
    assert_status(&status, Code::NotFound, None);

    // A page token issued for acme is refused for globex.
    let status = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/globex".into(),
            page_token: acme_page.into_inner().next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("foreign page token");
    assert_status(&status, Code::InvalidArgument, Some("page_token"));

    // The same id in another tenant is a different token.
    admin
        .create_token(create_request("globex", "shared-name", "globex-value"))
        .await
        .expect("create");
    let acme = resolver
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/shared-name".into(),
        })
        .await
        .expect("resolve");
    assert_eq!(acme.into_inner().value, "acme-value");
    let globex = resolver
        .resolve_token(ResolveTokenRequest {
            name: "tenants/globex/tokens/shared-name".into(),
        })
        .await
        .expect("resolve");
    assert_eq!(globex.into_inner().value, "globex-value");
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}
