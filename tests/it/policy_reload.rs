//! `aitokens serve` reloads its policy on SIGHUP: a reload the file watch
//! could not have caused (the file did not change), a grant that takes
//! effect, and an invalid file that is rejected, counted and logged while
//! the policy in force stays.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use aitokens::{api::pb::ResolveTokenRequest, config::MetricsConfig, dev};
use tonic::Code;

use crate::{
    common::create_request,
    observability::get,
    process::{DataDir, Serve},
    refusal::assert_refused_by,
};

/// Admins only: the agent may resolve nothing.
const ADMINS_ONLY: &str = r#"
    [[admin]]
    identity = "spiffe://aitokens.dev/admin"
    tenants = ["*"]
"#;
/// Longest a reload may take to show.
const RELOAD_WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn sighup_reloads_the_policy_of_the_binary() {
    let (data, serve, metrics) = serve_with_metrics(ADMINS_ONLY);
    let policy = data.config.policy.clone();
    serve
        .admin(&data)
        .await
        .create_token(create_request("acme", "t", "sk-policy-hup-canary"))
        .await
        .expect("create");
    let mut agent = serve.resolver(&data).await;
    let request = || ResolveTokenRequest {
        name: "tenants/acme/tokens/t".into(),
    };
    let status = agent.resolve_token(request()).await.expect_err("no grant");
    assert_refused_by(&status, Code::PermissionDenied, "POLICY_DENIED");

    // The file is unchanged, so only the signal can reload it.
    assert_eq!(reloads(metrics, "ok").await, 0);
    hangup(&serve);
    until("SIGHUP reloads the unchanged policy", || async {
        reloads(metrics, "ok").await == 1
    })
    .await;
    assert!(log(&serve).contains("SIGHUP: reloading the policy"));

    // A grant, then SIGHUP: in force for the same connection.
    let grant = format!(
        "{ADMINS_ONLY}\n[[resolver]]\nidentity = \"{}\"\ntenants = [\"acme\"]\ntokens = [\"*\"]\n",
        dev::AGENT_IDENTITY
    );
    std::fs::write(&policy, grant).expect("grant");
    hangup(&serve);
    until("the grant is in force", || {
        let mut agent = agent.clone();
        async move { agent.resolve_token(request()).await.is_ok() }
    })
    .await;

    // An invalid file, then SIGHUP: rejected, and the grant stays.
    std::fs::write(&policy, "this is [not toml").expect("break");
    hangup(&serve);
    until("the invalid policy is rejected", || async {
        reloads(metrics, "error").await >= 1
    })
    .await;
    agent
        .resolve_token(request())
        .await
        .expect("the previous policy is still in force");
    drop(agent);
    let logs = serve.terminate();
    assert!(
        logs.contains("policy not reloaded; the previous policy stays in force"),
        "the rejection was logged"
    );
}

/// `aitokens serve` over a fresh data folder with `policy`, and the
/// address of its metrics listener.
fn serve_with_metrics(policy: &str) -> (DataDir, Serve, SocketAddr) {
    let mut data = DataDir::new();
    data.config.metrics = Some(MetricsConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
    });
    let config = toml::to_string(&data.config).expect("toml");
    std::fs::write(&data.config_path, config).expect("write config");
    std::fs::write(&data.config.policy, policy).expect("write policy");
    let serve = Serve::start(&data, "info", "serve.log");
    let metrics = metrics_addr(&serve);
    (data, serve, metrics)
}

/// The metrics address `serve` logged in its "serving" line.
fn metrics_addr(serve: &Serve) -> SocketAddr {
    let text = log(serve);
    let line = text
        .lines()
        .find(|l| l.contains(" serving "))
        .expect("serving line");
    line.split("metrics=Some(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {line}"))
}

fn log(serve: &Serve) -> String {
    std::fs::read_to_string(&serve.log).expect("read log")
}

/// `aitokens_policy_reloads_total{result}` as the binary serves it.
async fn reloads(metrics: SocketAddr, result: &str) -> u64 {
    let (status, text) = get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    let line = format!("aitokens_policy_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
        .unwrap_or(0)
}

fn hangup(serve: &Serve) {
    let status = Command::new("kill")
        .args(["-HUP", &serve.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

/// Waits (at most [`RELOAD_WAIT`]) until `check` holds.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + RELOAD_WAIT;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "not within {RELOAD_WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
