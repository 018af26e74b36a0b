//! Hostile input on the wire: oversized messages, invalid UTF-8 in string
//! fields, deeply wrong resource names, foreign and forged page tokens.
//! Each gets a precise status and changes nothing; the server keeps serving.

use aitokens::api::pb::{
    GetTokenRequest, ListTokensRequest, RemoveTokenRequest, ResolveTokenRequest, Token,
    token_admin_client::TokenAdminClient,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::{Code, Request, Status, codegen::http::uri::PathAndQuery, transport::Channel};

use crate::common::{TestServer, assert_status, create_request};

/// CreateTokenRequest with every string field as raw bytes, so that a test
/// can put invalid UTF-8 on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreate {
    #[prost(bytes = "vec", tag = "1")]
    parent: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    token_id: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    token: Option<Token>,
    #[prost(bytes = "vec", tag = "4")]
    value: Vec<u8>,
}

/// ResolveTokenRequest with its name as raw bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawName {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
}

async fn raw_call<M: prost::Message + Default + Send + Sync + 'static>(
    channel: Channel,
    path: &'static str,
    message: M,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary::<M, RawName, _>(
        Request::new(message),
        PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(drop)
}

async fn snapshot(admin: &mut TokenAdminClient<Channel>) -> Vec<Token> {
    let mut all = Vec::new();
    for tenant in ["acme", "globex"] {
        all.extend(
            admin
                .list_tokens(ListTokensRequest {
                    parent: format!("tenants/{tenant}"),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .expect("list")
                .into_inner()
                .tokens,
        );
    }
    all
}

#[tokio::test]
async fn hostile_input_gets_a_precise_status_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    for (tenant, id) in [("acme", "a"), ("acme", "b"), ("acme", "c"), ("globex", "g")] {
        admin
            .create_token(create_request(tenant, id, &format!("sk-bad-input-{id}")))
            .await
            .expect("create");
    }
    let before = snapshot(&mut admin).await;

    // Oversized: a 200 KiB value is past the 128 KiB request limit; a
    // 100 KiB one passes the transport and fails validation (64 KiB).
    let status = admin
        .create_token(create_request("acme", "big", &"x".repeat(200 * 1024)))
        .await
        .expect_err("oversized message");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let status = admin
        .create_token(create_request("acme", "big", &"x".repeat(100 * 1024)))
        .await
        .expect_err("oversized value");
    assert_status(&status, Code::InvalidArgument, Some("value"));
    let status = resolver
        .resolve_token(ResolveTokenRequest {
            name: "n".repeat(200 * 1024),
        })
        .await
        .expect_err("oversized resolve");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Invalid UTF-8 in string fields: refused while decoding, before any
    // handler runs (tonic reports decode failures as INTERNAL).
    let admin_channel = server
        .channel(server.admin_addr, Some(server.client_identity("admin")))
        .await
        .expect("channel");
    let internal_channel = server
        .channel(server.internal_addr, Some(server.client_identity("agent")))
        .await
        .expect("channel");
    let good = RawCreate {
        parent: b"tenants/acme".to_vec(),
        token_id: b"utf8".to_vec(),
        token: Some(Token {
            display_name: "x".into(),
            ..Default::default()
        }),
        value: b"sk-valid".to_vec(),
    };
    for (field, bad) in [
        (
            "parent",
            RawCreate {
                parent: b"tenants/\xff\xfe".to_vec(),
                ..good.clone()
            },
        ),
        (
            "token_id",
            RawCreate {
                token_id: b"ab\xc3\x28".to_vec(),
                ..good.clone()
            },
        ),
        (
            "value",
            RawCreate {
                value: b"sk-\xed\xa0\x80-surrogate".to_vec(),
                ..good.clone()
            },
        ),
    ] {
        let status = raw_call(
            admin_channel.clone(),
            "/aitokens.v1.TokenAdmin/CreateToken",
            bad,
        )
        .await
        .expect_err(field);
        assert_eq!(status.code(), Code::Internal, "{field}: {status:?}");
        assert!(status.message().contains("UTF-8"), "{field}: {status:?}");
        assert!(!status.message().contains("sk-"), "{field}: value echoed");
    }
    let status = raw_call(
        internal_channel.clone(),
        "/aitokens.v1.TokenResolver/ResolveToken",
        RawName {
            name: b"tenants/acme/tokens/\x80".to_vec(),
        },
    )
    .await
    .expect_err("resolve");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    // Garbage that is not a protobuf message at all.
    let status = raw_call(
        internal_channel.clone(),
        "/aitokens.v1.TokenResolver/ResolveToken",
        RawName {
            name: vec![0xff; 64],
        },
    )
    .await
    .expect_err("bytes");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    // An unknown method.
    let status = raw_call(
        internal_channel.clone(),
        "/aitokens.v1.TokenResolver/DumpAllTokens",
        RawName::default(),
    )
    .await
    .expect_err("unknown method");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // Deeply wrong resource names, on every method that takes one.
    let long = format!("tenants/acme/tokens/{}", "a".repeat(100_000));
    let wrong_names = [
        "",
        "/",
        "tenants",
        "tenants/",
        "tenants/acme/tokens",
        "tenants/acme/tokens/a/b",
        "tenants/acme/tokens/../b",
        "tenants/../acme/tokens/a",
        "tenants/acme/tokens/a%2Fb",
        "tenants/acme/tokens/a\0",
        "tenants/acme/tokens/\u{430}",
        "tenants/ACME/tokens/a",
        "TENANTS/acme/tokens/a",
        " tenants/acme/tokens/a",
        "tenants/acme/tokens/a ",
        "tenants/acme//tokens/a",
        "tenants/acme/tokens//a",
        "//tenants/acme/tokens/a",
        "tenants/acme/tokens/a\n",
        "tenants/a\u{200b}cme/tokens/a",
        long.as_str(),
    ];
    for name in wrong_names {
        let status = resolver
            .resolve_token(ResolveTokenRequest { name: name.into() })
            .await
            .expect_err(name);
        assert_status(&status, Code::InvalidArgument, Some("name"));
        let status = admin
            .get_token(GetTokenRequest { name: name.into() })
            .await
            .expect_err(name);
        assert_status(&status, Code::InvalidArgument, Some("name"));
        let status = admin
            .remove_token(RemoveTokenRequest {
                name: name.into(),
                etag: None,
                force: true,
            })
            .await
            .expect_err(name);
        assert_status(&status, Code::InvalidArgument, Some("name"));
        let mut request = create_request("acme", "x", "sk-wrong-parent");
        request.parent = name.into();
        let status = admin.create_token(request).await.expect_err(name);
        assert_status(&status, Code::InvalidArgument, Some("parent"));
    }

    // Page tokens: one issued for globex used on acme; forged ones.
    let mut globex_pages = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/globex".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    admin
        .create_token(create_request("globex", "g2", "sk-bad-input-g2"))
        .await
        .expect("second globex token");
    globex_pages = if globex_pages.next_page_token.is_empty() {
        admin
            .list_tokens(ListTokensRequest {
                parent: "tenants/globex".into(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
    } else {
        globex_pages
    };
    let foreign = globex_pages.next_page_token.clone();
    assert!(!foreign.is_empty(), "globex has a second page");
    let forged = [
        foreign.clone(),
        URL_SAFE_NO_PAD.encode("v1:acme:-5"),
        URL_SAFE_NO_PAD.encode("v1:acme:99999999999999999999"),
        URL_SAFE_NO_PAD.encode("v1:acme:1:extra"),
        URL_SAFE_NO_PAD.encode("v1:ACME:1"),
        URL_SAFE_NO_PAD.encode("v0:acme:1"),
        URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x00]),
        "%%%".into(),
        "=".repeat(10),
        "A".repeat(10_000),
    ];
    for page_token in forged {
        let status = admin
            .list_tokens(ListTokensRequest {
                parent: "tenants/acme".into(),
                page_size: 1,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect_err(&page_token);
        assert_status(&status, Code::InvalidArgument, Some("page_token"));
    }

    admin
        .remove_token(RemoveTokenRequest {
            name: "tenants/globex/tokens/g2".into(),
            etag: None,
            force: true,
        })
        .await
        .expect("clean up g2");
    assert_eq!(
        snapshot(&mut admin).await,
        before,
        "hostile input changed state"
    );
    // Still serving, values intact.
    let got = resolver
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/b".into(),
        })
        .await
        .expect("resolve after the barrage")
        .into_inner();
    assert_eq!(got.value, "sk-bad-input-b");
}
