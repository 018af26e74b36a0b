//! `aitokens bench` runs end to end (tiny and short: this checks that the
//! program works and measures every phase, not how fast anything is; the
//! figures come from running it, see the README's Performance section).

use std::process::Command;

use aitokens::api::echo::pb::{EchoRequest, EchoResponse, echo_client::EchoClient};
use tonic::Code;

use crate::common::{Setup, TestServer};

#[test]
fn bench_runs_every_phase_and_writes_json() {
    let _heavy = crate::common::HEAVY.blocking_lock();

    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_aitokens"))
        .args([
            "bench",
            "--tokens",
            "300",
            "--concurrency",
            "8",
            "--connections",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--creates",
            "40",
            "--catalog-tokens",
            "500",
            "--list-calls",
            "5",
            "--json",
        ])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run aitokens bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("resolve / floor: throughput"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    for phase in [
        "/resolve",
        "/floor",
        "/create_sequential",
        "/create_concurrent",
        "/catalog/resolve",
    ] {
        let figures = report.pointer(phase).expect(phase);
        assert_eq!(figures["errors"], 0, "{phase}: {figures}");
        assert!(figures["requests"].as_u64().expect("count") > 0, "{phase}");
        for field in ["p50_us", "p99_us", "server_cpu_us_per_req"] {
            assert!(figures[field].as_f64().is_some(), "{phase}.{field}");
        }
        assert!(
            figures["server_peak_rss_kib"].as_u64().expect("rss") > 0,
            "{phase}"
        );
    }
    // Bounded in count: the create phases stop at --creates.
    assert!(report["create_sequential"]["requests"].as_u64() <= Some(40));
    assert_eq!(report["seed"]["tokens"], 300);
    assert_eq!(report["catalog"]["list_deep_page"]["depth"], 450);
    assert_eq!(report["catalog"]["list_first_page"]["calls"], 5);
    assert!(report["ratios"]["throughput"].as_f64().expect("ratio") > 0.0);
}

async fn echo(
    server: &TestServer,
    internal: bool,
    message: &EchoRequest,
) -> Result<tonic::Response<EchoResponse>, tonic::Status> {
    let (addr, who) = if internal {
        (server.internal_addr, "agent")
    } else {
        (server.admin_addr, "admin")
    };
    let channel = server
        .channel(addr, Some(server.client_identity(who)))
        .await
        .expect("channel");
    EchoClient::new(channel).echo(message.clone()).await
}

#[tokio::test]
async fn echo_is_served_only_when_the_config_asks_and_only_internally() {
    let message = EchoRequest {
        name: "tenants/acme/tokens/x".into(),
        value: "filler".into(),
    };
    // Default (dev and serve configs): no Echo anywhere.
    let server = TestServer::start().await;
    for internal in [true, false] {
        let status = echo(&server, internal, &message)
            .await
            .expect_err("echo off");
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    }
    drop(server);

    let mut setup = Setup::new();
    setup.config.bench.echo = true;
    let server = setup.start().await;
    let reply = echo(&server, true, &message)
        .await
        .expect("echo on")
        .into_inner();
    assert_eq!(
        (reply.name.as_str(), reply.value.as_str()),
        (message.name.as_str(), message.value.as_str())
    );
    let status = echo(&server, false, &message)
        .await
        .expect_err("not on admin");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // Still behind mTLS: no client certificate, no echo.
    let refused = match server.channel(server.internal_addr, None).await {
        Err(_) => true,
        Ok(channel) => EchoClient::new(channel)
            .echo(message.clone())
            .await
            .is_err(),
    };
    assert!(refused, "echo answered a client without a certificate");
}
