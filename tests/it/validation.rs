//! Every validation rule: precise status, the field named, nothing changed.

use aitokens::api::pb::{
    CreateTokenRequest, GetTokenRequest, ListTokensRequest, RemoveTokenRequest, RenameTokenRequest,
    ResolveTokenRequest, Token, token_admin_client::TokenAdminClient,
};
use tonic::{Code, transport::Channel};

use crate::common::{TestServer, assert_status, create_request};

/// Everything the admin API shows about tenant acme, for "nothing changed".
async fn snapshot(admin: &mut TokenAdminClient<Channel>) -> Vec<Token> {
    admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .tokens
}

#[tokio::test]
async fn create_rejects_each_bad_field_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    admin
        .create_token(create_request("acme", "existing", "v"))
        .await
        .expect("create");
    let before = snapshot(&mut admin).await;

    let with = |edit: fn(&mut CreateTokenRequest)| {
        let mut request = create_request("acme", "new-token", "value");
        edit(&mut request);
        request
    };
    let cases: Vec<(&str, CreateTokenRequest, &str)> = vec![
        ("empty parent", with(|r| r.parent = String::new()), "parent"),
        (
            "parent without prefix",
            with(|r| r.parent = "acme".into()),
            "parent",
        ),
        (
            "parent with bad tenant",
            with(|r| r.parent = "tenants/Acme".into()),
            "parent",
        ),
        (
            "parent too deep",
            with(|r| r.parent = "tenants/acme/tokens/x".into()),
            "parent",
        ),
        ("empty id", with(|r| r.token_id = String::new()), "token_id"),
        (
            "uppercase id",
            with(|r| r.token_id = "OpenAI".into()),
            "token_id",
        ),
        (
            "id starts with a digit",
            with(|r| r.token_id = "1abc".into()),
            "token_id",
        ),
        (
            "id starts with a dash",
            with(|r| r.token_id = "-abc".into()),
            "token_id",
        ),
        (
            "id with underscore",
            with(|r| r.token_id = "a_b".into()),
            "token_id",
        ),
        (
            "id with slash",
            with(|r| r.token_id = "a/b".into()),
            "token_id",
        ),
        (
            "id of 64 chars",
            with(|r| r.token_id = format!("a{}", "b".repeat(63))),
            "token_id",
        ),
        (
            "no token message",
            with(|r| r.token = None),
            "token.display_name",
        ),
        (
            "empty display name",
            with(|r| r.token = Some(Token::default())),
            "token.display_name",
        ),
        (
            "display name of 257 chars",
            with(|r| {
                r.token = Some(Token {
                    display_name: "é".repeat(257),
                    ..Default::default()
                })
            }),
            "token.display_name",
        ),
        ("empty value", with(|r| r.value = String::new()), "value"),
        (
            "value of 64 KiB + 1",
            with(|r| r.value = "x".repeat(64 * 1024 + 1)),
            "value",
        ),
    ];
    for (case, request, field) in cases {
        let status = admin.create_token(request).await.expect_err(case);
        assert_status(&status, Code::InvalidArgument, Some(field));
    }
    let status = admin
        .create_token(create_request("acme", "existing", "other"))
        .await
        .expect_err("dup");
    assert_status(&status, Code::AlreadyExists, None);
    assert_eq!(
        snapshot(&mut admin).await,
        before,
        "a rejected create changed something"
    );

    // The boundaries themselves are accepted.
    let mut edge = create_request(
        "acme",
        &format!("a{}", "9".repeat(62)),
        &"x".repeat(64 * 1024),
    );
    edge.token = Some(Token {
        display_name: "é".repeat(256),
        ..Default::default()
    });
    admin
        .create_token(edge)
        .await
        .expect("63-char id, 256-char name, 64 KiB value");
    admin
        .create_token(create_request("acme", "a", "1"))
        .await
        .expect("1-char id, 1-byte value");
}

#[tokio::test]
async fn rename_remove_get_list_resolve_reject_bad_input() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    let token = admin
        .create_token(create_request("acme", "one", "v1"))
        .await
        .expect("create")
        .into_inner();
    admin
        .create_token(create_request("acme", "two", "v2"))
        .await
        .expect("create");
    let before = snapshot(&mut admin).await;

    let rename = |edit: fn(&mut RenameTokenRequest)| {
        let mut request = RenameTokenRequest {
            name: "tenants/acme/tokens/one".into(),
            ..Default::default()
        };
        edit(&mut request);
        request
    };
    let cases: Vec<(&str, RenameTokenRequest, Code, Option<&str>)> = vec![
        (
            "nothing to change",
            rename(|_| {}),
            Code::InvalidArgument,
            Some("display_name"),
        ),
        (
            "bad name",
            rename(|r| {
                r.name = "tokens/one".into();
                r.display_name = Some("x".into())
            }),
            Code::InvalidArgument,
            Some("name"),
        ),
        (
            "empty display name",
            rename(|r| r.display_name = Some(String::new())),
            Code::InvalidArgument,
            Some("display_name"),
        ),
        (
            "long display name",
            rename(|r| r.display_name = Some("n".repeat(257))),
            Code::InvalidArgument,
            Some("display_name"),
        ),
        (
            "bad new id",
            rename(|r| r.new_token_id = Some("Two".into())),
            Code::InvalidArgument,
            Some("new_token_id"),
        ),
        (
            "taken new id",
            rename(|r| r.new_token_id = Some("two".into())),
            Code::AlreadyExists,
            None,
        ),
        (
            "stale etag",
            rename(|r| {
                r.display_name = Some("x".into());
                r.etag = Some("00000000-9".into())
            }),
            Code::Aborted,
            None,
        ),
        (
            "missing token",
            rename(|r| {
                r.name = "tenants/acme/tokens/nope".into();
                r.display_name = Some("x".into())
            }),
            Code::NotFound,
            None,
        ),
    ];
    for (case, request, code, field) in cases {
        let status = admin.rename_token(request).await.expect_err(case);
        assert_status(&status, code, field);
    }

    let status = admin
        .remove_token(RemoveTokenRequest {
            name: "tenants/acme/one".into(),
            etag: None,
            ..Default::default()
        })
        .await
        .expect_err("bad name");
    assert_status(&status, Code::InvalidArgument, Some("name"));
    let status = admin
        .remove_token(RemoveTokenRequest {
            name: token.name.clone(),
            etag: Some("bogus".into()),
            ..Default::default()
        })
        .await
        .expect_err("bad etag");
    assert_status(&status, Code::Aborted, None);
    let status = admin
        .get_token(GetTokenRequest {
            name: "tenants/acme/tokens/".into(),
        })
        .await
        .expect_err("bad");
    assert_status(&status, Code::InvalidArgument, Some("name"));
    let status = resolver
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/ONE".into(),
        })
        .await
        .expect_err("bad");
    assert_status(&status, Code::InvalidArgument, Some("name"));

    for (case, request, field) in [
        (
            "bad parent",
            ListTokensRequest {
                parent: "tenant/acme".into(),
                ..Default::default()
            },
            "parent",
        ),
        (
            "negative page size",
            ListTokensRequest {
                parent: "tenants/acme".into(),
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            "forged page token",
            ListTokensRequest {
                parent: "tenants/acme".into(),
                page_token: "bm90LWEtdG9rZW4".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let status = admin.list_tokens(request).await.expect_err(case);
        assert_status(&status, Code::InvalidArgument, Some(field));
    }
    assert_eq!(
        snapshot(&mut admin).await,
        before,
        "a rejected request changed something"
    );
}
