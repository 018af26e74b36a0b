//! Usage tracking, bindings, replacement and the kill switch, over real mTLS.

use std::time::{Duration, SystemTime};

use aitokens::api::pb::{
    CreateTokenBindingRequest, CreateTokenRequest, DeleteTokenBindingRequest, DisableTokenRequest,
    EnableTokenRequest, GetReplacementStatusRequest, GetTokenRequest, ListTokenBindingsRequest,
    ListTokenUsagesRequest, ListTokensRequest, RemoveTokenRequest, TokenBinding, token::State,
    token_resolver_client::TokenResolverClient,
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::common::{
    BINDINGS_ONLY_POLICY, Setup, TestPki, TestServer, assert_status, create_request, resolve,
};

const AGENT: &str = "spiffe://aitokens.dev/agent";
const AGENT_2: &str = "spiffe://aitokens.dev/agent-2";

/// Dev policy plus a second resolver identity.
const TWO_AGENTS: &str = r#"
    [[admin]]
    identity = "spiffe://aitokens.dev/admin"
    tenants = ["*"]

    [[resolver]]
    identity = "spiffe://aitokens.dev/agent"
    tenants = ["*"]
    tokens = ["*"]

    [[resolver]]
    identity = "spiffe://aitokens.dev/agent-2"
    tenants = ["acme"]
    tokens = ["*"]
"#;

async fn resolver_for(
    server: &TestServer,
    pki: &TestPki,
    uri: &str,
) -> TokenResolverClient<Channel> {
    let channel = server
        .channel(server.internal_addr, Some(pki.client(uri)))
        .await
        .expect("channel");
    TokenResolverClient::new(channel)
}

fn seconds(t: &Option<prost_types::Timestamp>) -> f64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[tokio::test]
async fn usage_per_caller_is_exact_and_survives_a_restart() {
    let setup = Setup::new().policy(TWO_AGENTS);
    let pki = setup.pki();
    let server = setup.start().await;
    let mut admin = server.admin().await;
    admin
        .create_token(create_request("acme", "openai", "v"))
        .await
        .expect("create");
    let name = "tenants/acme/tokens/openai";

    let before = now_seconds();
    let mut one = resolver_for(&server, &pki, AGENT).await;
    let mut two = resolver_for(&server, &pki, AGENT_2).await;
    for _ in 0..5 {
        resolve(&mut one, name).await.expect("agent resolves");
    }
    for _ in 0..3 {
        resolve(&mut two, name).await.expect("agent-2 resolves");
    }
    // A denied call is counted too (agent-2 may not resolve globex tokens).
    admin
        .create_token(create_request("globex", "openai", "v"))
        .await
        .expect("create");
    resolve(&mut two, "tenants/globex/tokens/openai")
        .await
        .expect_err("denied");
    let after = now_seconds();

    let check = |usages: &[aitokens::api::pb::TokenUsage]| {
        assert_eq!(usages.len(), 2, "{usages:?}");
        for (identity, count) in [(AGENT, 5), (AGENT_2, 3)] {
            let row = usages
                .iter()
                .find(|u| u.caller_identity == identity)
                .expect("row per caller");
            assert_eq!(row.resolve_count, count, "{identity}");
            let (first, last) = (
                seconds(&row.first_resolve_time),
                seconds(&row.last_resolve_time),
            );
            assert!(
                before - 0.001 <= first && first <= last && last <= after + 0.001,
                "{identity}: {first} {last}"
            );
            assert_eq!(row.denied_count, 0);
        }
    };
    let usages = admin
        .list_token_usages(ListTokenUsagesRequest { name: name.into() })
        .await
        .expect("usages")
        .into_inner()
        .usages;
    check(&usages);
    let token = admin
        .get_token(GetTokenRequest { name: name.into() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(token.resolve_count, 8);
    let last = seconds(&token.last_resolve_time);
    assert!(before <= last && last <= after + 0.001);
    // Times are exact: not rounded to a second, let alone a day.
    assert!(
        usages
            .iter()
            .any(|u| u.last_resolve_time.as_ref().is_some_and(|t| t.nanos != 0))
    );

    drop((one, two, admin));
    let server = server.restart().await;
    let mut admin = server.admin().await;
    let usages = admin
        .list_token_usages(ListTokenUsagesRequest { name: name.into() })
        .await
        .expect("usages after restart")
        .into_inner()
        .usages;
    check(&usages);
    let globex = admin
        .list_token_usages(ListTokenUsagesRequest {
            name: "tenants/globex/tokens/openai".into(),
        })
        .await
        .expect("usages")
        .into_inner()
        .usages;
    assert_eq!(globex.len(), 1);
    assert_eq!(
        (globex[0].caller_identity.as_str(), globex[0].denied_count),
        (AGENT_2, 1)
    );
    assert!(globex[0].last_denied_time.is_some());
}

/// Unused for a duration: created more than that long ago, and not
/// resolved within it. A real server keeps real time, so the window is
/// seconds: `idle` is older than it and never resolved; `used` is as old
/// but resolved just now; `fresh` was created just now.
#[tokio::test]
async fn unused_for_lists_tokens_created_before_it_and_not_resolved_within_it() {
    const WINDOW_SECS: i64 = 3;
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    for id in ["used", "idle"] {
        admin
            .create_token(create_request("acme", id, "v"))
            .await
            .expect("create");
    }
    tokio::time::sleep(Duration::from_secs(WINDOW_SECS as u64 + 2)).await;
    admin
        .create_token(create_request("acme", "fresh", "v"))
        .await
        .expect("create");
    resolve(&mut resolver, "tenants/acme/tokens/used")
        .await
        .expect("resolve");
    let unused = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            unused_for: Some(prost_types::Duration {
                seconds: WINDOW_SECS,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<_> = unused.tokens.iter().map(|t| t.token_id.as_str()).collect();
    assert_eq!(ids, ["idle"]);
}

fn violations(status: &Status) -> Vec<(String, String)> {
    let details = status.get_error_details();
    let failure = details
        .precondition_failure()
        .expect("PreconditionFailure details");
    failure
        .violations
        .iter()
        .map(|v| (v.r#type.clone(), v.subject.clone()))
        .collect()
}

#[tokio::test]
async fn remove_is_blocked_by_bindings_and_recent_callers_unless_forced() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    admin
        .create_token(create_request("acme", "bound", "v"))
        .await
        .expect("create");
    admin
        .create_token(create_request("acme", "used", "v"))
        .await
        .expect("create");
    let binding = admin
        .create_token_binding(CreateTokenBindingRequest {
            parent: "tenants/acme/tokens/bound".into(),
            binding_id: "support-bot".into(),
            binding: Some(TokenBinding {
                caller_identity: AGENT.into(),
                purpose: "answers support tickets".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("bind")
        .into_inner();
    assert_eq!(
        binding.name,
        "tenants/acme/tokens/bound/bindings/support-bot"
    );
    let listed = admin
        .list_token_bindings(ListTokenBindingsRequest {
            parent: "tenants/acme/tokens/bound".into(),
        })
        .await
        .expect("list bindings")
        .into_inner()
        .bindings;
    assert_eq!(listed, vec![binding.clone()]);
    resolve(&mut resolver, "tenants/acme/tokens/used")
        .await
        .expect("resolve");

    let remove = |name: &str, force| RemoveTokenRequest {
        name: name.into(),
        force,
        ..Default::default()
    };
    let blocked = admin
        .remove_token(remove("tenants/acme/tokens/bound", false))
        .await
        .expect_err("bound");
    assert_status(&blocked, Code::FailedPrecondition, None);
    assert_eq!(
        violations(&blocked),
        [("BINDING".to_owned(), binding.name.clone())]
    );
    assert_eq!(
        blocked
            .get_error_details()
            .error_info()
            .expect("ErrorInfo")
            .reason,
        "TOKEN_IN_USE"
    );

    let blocked = admin
        .remove_token(remove("tenants/acme/tokens/used", false))
        .await
        .expect_err("used");
    assert_eq!(
        violations(&blocked),
        [("RECENT_CALLER".to_owned(), AGENT.to_owned())]
    );
    // Refused removals changed nothing.
    for name in ["tenants/acme/tokens/bound", "tenants/acme/tokens/used"] {
        admin
            .get_token(GetTokenRequest { name: name.into() })
            .await
            .expect("still there");
    }

    // Deleting the binding unblocks; forcing overrides the recent caller.
    admin
        .delete_token_binding(DeleteTokenBindingRequest {
            name: binding.name.clone(),
        })
        .await
        .expect("unbind");
    admin
        .remove_token(remove("tenants/acme/tokens/bound", false))
        .await
        .expect("unbound remove");
    admin
        .remove_token(remove("tenants/acme/tokens/used", true))
        .await
        .expect("forced remove");

    // A forced removal takes the bindings with it, each audited.
    admin
        .create_token(create_request("acme", "forced", "v"))
        .await
        .expect("create");
    for id in ["a", "b"] {
        admin
            .create_token_binding(CreateTokenBindingRequest {
                parent: "tenants/acme/tokens/forced".into(),
                binding_id: id.into(),
                binding: Some(TokenBinding {
                    purpose: "p".into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("bind");
    }
    admin
        .remove_token(remove("tenants/acme/tokens/forced", true))
        .await
        .expect("forced");
    let events = crate::audit::events(&mut admin, "tenants/acme", "").await;
    for id in ["a", "b"] {
        let resource = format!("tenants/acme/tokens/forced/bindings/{id}");
        assert!(
            events
                .iter()
                .any(|e| e.resource == resource && e.reason == "binding deleted by forced removal"),
            "{resource} deletion not audited"
        );
    }
}

#[tokio::test]
async fn a_replaced_token_reports_who_has_not_switched() {
    let mut setup = Setup::new();
    setup.config.usage.recent_window_secs = 2;
    let server = setup.start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    admin
        .create_token(create_request("acme", "openai-v1", "old"))
        .await
        .expect("create");
    resolve(&mut resolver, "tenants/acme/tokens/openai-v1")
        .await
        .expect("resolve before replacement");

    let mut request: CreateTokenRequest = create_request("acme", "openai-v2", "new");
    request.replaces = "tenants/acme/tokens/openai-v1".into();
    let new = admin
        .create_token(request)
        .await
        .expect("replacement")
        .into_inner();
    assert_eq!(new.replaces, "tenants/acme/tokens/openai-v1");
    let old = admin
        .get_token(GetTokenRequest {
            name: "tenants/acme/tokens/openai-v1".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(old.replaced_by, "tenants/acme/tokens/openai-v2");

    // A token can be replaced only once, and only by a token of its tenant.
    let mut again = create_request("acme", "openai-v3", "x");
    again.replaces = "tenants/acme/tokens/openai-v1".into();
    let status = admin.create_token(again).await.expect_err("replaced twice");
    assert_status(&status, Code::FailedPrecondition, None);
    let mut foreign = create_request("globex", "x", "x");
    foreign.replaces = "tenants/acme/tokens/openai-v2".into();
    let status = admin.create_token(foreign).await.expect_err("other tenant");
    assert_status(&status, Code::InvalidArgument, Some("replaces"));

    // The old token still resolves, and that resolve is a superseded one.
    assert_eq!(
        resolve(&mut resolver, "tenants/acme/tokens/openai-v1")
            .await
            .expect("resolve"),
        "old"
    );
    let usages = admin
        .list_token_usages(ListTokenUsagesRequest {
            name: "tenants/acme/tokens/openai-v1".into(),
        })
        .await
        .expect("usages")
        .into_inner()
        .usages;
    assert_eq!(usages.len(), 1);
    assert_eq!(
        (usages[0].resolve_count, usages[0].superseded_resolve_count),
        (2, 1)
    );
    let status = admin
        .get_replacement_status(GetReplacementStatusRequest {
            name: "tenants/acme/tokens/openai-v1".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert!(!status.ready_to_remove);
    assert_eq!(status.callers_not_switched, [AGENT]);
    assert_eq!(status.replaced_by, "tenants/acme/tokens/openai-v2");

    // Resolving the new token is not superseded; once the window passes with
    // no superseded resolve, the old token is ready to remove.
    resolve(&mut resolver, "tenants/acme/tokens/openai-v2")
        .await
        .expect("resolve new");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = admin
            .get_replacement_status(GetReplacementStatusRequest {
                name: "tenants/acme/tokens/openai-v1".into(),
            })
            .await
            .expect("status")
            .into_inner();
        if status.ready_to_remove {
            assert!(status.callers_not_switched.is_empty());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never became ready to remove"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let unreplaced = admin
        .get_replacement_status(GetReplacementStatusRequest {
            name: "tenants/acme/tokens/openai-v2".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert!(!unreplaced.ready_to_remove && unreplaced.replaced_by.is_empty());
}

#[tokio::test]
async fn the_kill_switch_refuses_resolves_until_enabled() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    let name = "tenants/acme/tokens/openai";
    admin
        .create_token(create_request("acme", "openai", "sk-kill-switch"))
        .await
        .expect("create");

    let disabled = admin
        .disable_token(DisableTokenRequest {
            name: name.into(),
            etag: None,
        })
        .await
        .expect("disable")
        .into_inner();
    assert_eq!(disabled.state(), State::Disabled);
    let status = resolve(&mut resolver, name).await.expect_err("disabled");
    assert_status(&status, Code::FailedPrecondition, None);
    assert_eq!(
        status
            .get_error_details()
            .error_info()
            .expect("ErrorInfo")
            .reason,
        "TOKEN_DISABLED"
    );
    assert!(!status.message().contains("sk-kill-switch"));
    let listed = admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.tokens.len(), 1, "a disabled token stays listed");
    assert_eq!(listed.tokens[0].state(), State::Disabled);

    let stale = admin
        .enable_token(EnableTokenRequest {
            name: name.into(),
            etag: Some("00000000-1".into()),
        })
        .await
        .expect_err("stale etag");
    assert_status(&stale, Code::Aborted, None);
    let enabled = admin
        .enable_token(EnableTokenRequest {
            name: name.into(),
            etag: Some(disabled.etag),
        })
        .await
        .expect("enable")
        .into_inner();
    assert_eq!(enabled.state(), State::Enabled);
    assert_eq!(
        resolve(&mut resolver, name).await.expect("resolves again"),
        "sk-kill-switch"
    );
}

#[tokio::test]
async fn bindings_only_mode_makes_a_token_id_worthless_without_a_binding() {
    let setup = Setup::new().policy(BINDINGS_ONLY_POLICY);
    let server = setup.start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    admin
        .create_token(create_request("acme", "openai", "v"))
        .await
        .expect("create");

    for name in [
        "tenants/acme/tokens/openai",
        "tenants/acme/tokens/does-not-exist",
    ] {
        let status = resolve(&mut resolver, name).await.expect_err(name);
        assert_status(&status, Code::PermissionDenied, None);
    }
    // A binding for someone else does not help.
    let bind = |id: &str, identity: &str| CreateTokenBindingRequest {
        parent: "tenants/acme/tokens/openai".into(),
        binding_id: id.into(),
        binding: Some(TokenBinding {
            caller_identity: identity.into(),
            purpose: "p".into(),
            ..Default::default()
        }),
    };
    admin
        .create_token_binding(bind("other", AGENT_2))
        .await
        .expect("bind other");
    assert_status(
        &resolve(&mut resolver, "tenants/acme/tokens/openai")
            .await
            .expect_err("still denied"),
        Code::PermissionDenied,
        None,
    );
    admin
        .create_token_binding(bind("mine", AGENT))
        .await
        .expect("bind me");
    assert_eq!(
        resolve(&mut resolver, "tenants/acme/tokens/openai")
            .await
            .expect("bound"),
        "v"
    );
    let status = admin
        .create_token_binding(bind("mine", AGENT))
        .await
        .expect_err("duplicate");
    assert_status(&status, Code::AlreadyExists, None);
}

#[tokio::test]
async fn binding_requests_are_validated() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    admin
        .create_token(create_request("acme", "t", "v"))
        .await
        .expect("create");
    let bind = |parent: &str, id: &str, identity: &str, purpose: &str| CreateTokenBindingRequest {
        parent: parent.into(),
        binding_id: id.into(),
        binding: Some(TokenBinding {
            caller_identity: identity.into(),
            purpose: purpose.into(),
            ..Default::default()
        }),
    };
    for (request, field) in [
        (bind("tenants/acme", "b", "", "p"), "parent"),
        (bind("tenants/acme/tokens/t", "B!", "", "p"), "binding_id"),
        (
            bind("tenants/acme/tokens/t", "b", "", ""),
            "binding.purpose",
        ),
        (
            bind("tenants/acme/tokens/t", "b", "has space", "p"),
            "binding.caller_identity",
        ),
    ] {
        let status = admin.create_token_binding(request).await.expect_err(field);
        assert_status(&status, Code::InvalidArgument, Some(field));
    }
    let status = admin
        .create_token_binding(bind("tenants/acme/tokens/missing", "b", "", "p"))
        .await
        .expect_err("missing token");
    assert_status(&status, Code::NotFound, None);
    let status = admin
        .delete_token_binding(DeleteTokenBindingRequest {
            name: "tenants/acme/tokens/t/bindings/nope".into(),
        })
        .await
        .expect_err("missing binding");
    assert_status(&status, Code::NotFound, None);
}
