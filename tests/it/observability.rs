//! Metrics, health, readiness and request ids, through the real binary and
//! its plain-HTTP listener.

use std::{net::SocketAddr, time::Duration};

use aitokens::{
    api::pb::{
        ResolveTokenRequest, token_admin_client::TokenAdminClient,
        token_resolver_client::TokenResolverClient,
    },
    telemetry::{Telemetry, serve_http},
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    admin::contains,
    binary::{self, channel},
    common::create_request,
};

/// `GET path` over HTTP/1.1; returns (status code, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("HTTP answer within 10 s");
    let text = String::from_utf8(response).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// The value of the sample `line` (a metric name with its labels) in `text`.
fn sample(text: &str, line: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

/// The value of sample `line` in what `telemetry` would serve on /metrics.
pub async fn get_metrics_sample(telemetry: &Telemetry, line: &str) -> Option<f64> {
    sample(&telemetry.render(), line)
}

#[tokio::test]
async fn readyz_is_503_until_the_server_is_ready() {
    let telemetry = Telemetry::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(serve_http(listener, telemetry.clone(), async {
        let _ = stopped.await;
    }));
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(get(addr, "/readyz").await.0, 503);
    telemetry.set_ready(true);
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(get(addr, "/nope").await.0, 404);
    let _ = stop.send(());
    http.await
        .expect("task")
        .expect("HTTP server stops cleanly");
}

#[tokio::test]
async fn metrics_count_calls_codes_denials_and_tokens_and_logs_carry_request_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = binary::start_dev_with(dir.path(), &["--log-format", "json"]);
    let value = "sk-metrics-canary-3b7d";
    let mut admin = TokenAdminClient::new(channel(dir.path(), dev.admin, "admin").await);
    let mut resolver = TokenResolverClient::new(channel(dir.path(), dev.internal, "agent").await);
    let mut denied = TokenResolverClient::new(channel(dir.path(), dev.internal, "admin").await);

    let mut create = tonic::Request::new(create_request("acme", "openai-prod", value));
    create
        .metadata_mut()
        .insert("x-request-id", "it-req-0042".parse().expect("metadata"));
    let created = admin.create_token(create).await.expect("create");
    assert_eq!(
        created
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("it-req-0042"),
        "the request id is echoed"
    );
    admin
        .create_token(create_request("acme", "Bad_Id", value))
        .await
        .expect_err("bad id");
    let resolve = || ResolveTokenRequest {
        name: "tenants/acme/tokens/openai-prod".into(),
    };
    for _ in 0..3 {
        resolver.resolve_token(resolve()).await.expect("resolve");
    }
    denied.resolve_token(resolve()).await.expect_err("denied");

    let (status, metrics) = get(dev.metrics, "/metrics").await;
    assert_eq!(status, 200);
    let admin_calls =
        r#"aitokens_grpc_requests_total{service="aitokens.v1.TokenAdmin",method="CreateToken","#;
    let resolves = r#"aitokens_grpc_requests_total{service="aitokens.v1.TokenResolver",method="ResolveToken","#;
    let expected = [
        (format!(r#"{admin_calls}code="OK"}}"#), 1.0),
        (format!(r#"{admin_calls}code="InvalidArgument"}}"#), 1.0),
        (format!(r#"{resolves}code="OK"}}"#), 3.0),
        (format!(r#"{resolves}code="PermissionDenied"}}"#), 1.0),
        (
            r#"aitokens_grpc_request_duration_seconds_count{service="aitokens.v1.TokenResolver",method="ResolveToken"}"#.to_owned(),
            4.0,
        ),
        (r#"aitokens_resolve_denied_total{reason="POLICY_DENIED"}"#.to_owned(), 1.0),
        ("aitokens_tokens".to_owned(), 1.0),
        ("aitokens_audit_failures_total".to_owned(), 0.0),
        ("aitokens_usage_flush_failures_total".to_owned(), 0.0),
        (
            format!(r#"aitokens_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION")),
            1.0,
        ),
    ];
    for (line, want) in &expected {
        assert_eq!(sample(&metrics, line), Some(*want), "{line} in\n{metrics}");
    }
    assert!(
        !metrics.contains("openai-prod") && !metrics.contains("acme"),
        "no ids in labels"
    );
    assert!(!contains(metrics.as_bytes(), value.as_bytes()));
    assert_eq!(get(dev.metrics, "/readyz").await.0, 200);
    assert_eq!(get(dev.metrics, "/healthz").await.0, 200);
    drop((admin, resolver, denied));

    let logs = binary::stop(dev).await;
    assert!(
        !contains(logs.as_bytes(), value.as_bytes()),
        "a value reached the logs"
    );
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let message = |line: &Value| line["message"].as_str().unwrap_or_default().to_owned();
    let request_id = |line: &Value| {
        line["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find_map(|s| s["id"].as_str()))
            .map(str::to_owned)
    };
    let created_line = lines
        .iter()
        .find(|l| message(l) == "token created")
        .expect("a 'token created' line");
    assert_eq!(
        request_id(created_line).as_deref(),
        Some("it-req-0042"),
        "{created_line}"
    );
    let denied_line = lines
        .iter()
        .find(|l| message(l) == "resolve denied")
        .expect("a 'resolve denied' line");
    let generated = request_id(denied_line).expect("a generated request id");
    assert_eq!(generated.len(), 16, "{denied_line}");
}

/// Colour escapes are for a person at a terminal: a server whose stderr is
/// a pipe (or a file, or a log collector) writes plain text.
#[tokio::test]
async fn logs_to_a_pipe_carry_no_colour_escapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = binary::start_dev(dir.path());
    let logs = binary::stop(dev).await;
    assert!(logs.contains(" INFO "), "the server logged: {logs}");
    assert!(
        !logs.contains("\x1b["),
        "escape codes in piped logs:\n{logs:?}"
    );
}

/// On a terminal (a pseudo-terminal from `script`) the text logs are in
/// colour, unless NO_COLOR is set (https://no-color.org).
#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color() {
    let script = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("script"))
        .find(|path| path.is_file())
        .expect("script is not on PATH: apt-get install bsdutils (.ci/run installs it)");
    // A command that logs at INFO (the process hardening) and exits.
    let command = format!(
        "{} audit verify --db /nonexistent/aitokens.db --key-file /nonexistent/root.key",
        env!("CARGO_BIN_EXE_aitokens")
    );
    let on_terminal = |no_color: Option<&str>| {
        let mut run = std::process::Command::new(&script);
        run.args(["-qec", &command, "/dev/null"])
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .env_remove("AITOKENS_LOG_FORMAT")
            .stdin(std::process::Stdio::null());
        if let Some(value) = no_color {
            run.env("NO_COLOR", value);
        }
        let out = run.output().expect("run script");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("process hardened"), "{text}");
        text
    };
    assert!(
        on_terminal(None).contains("\x1b["),
        "no colour on a terminal"
    );
    let plain = on_terminal(Some("1"));
    assert!(
        !plain.contains("\x1b["),
        "colour despite NO_COLOR:\n{plain:?}"
    );
}
