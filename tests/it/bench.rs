//! The benchmark's transport floor, `aitokens.bench.v1.Echo`: served only
//! when a config asks, only on the internal listener, behind mTLS. (The
//! benchmark program itself is tested in `bench/tests/`.)

use aitokens::api::echo::pb::{EchoRequest, EchoResponse, echo_client::EchoClient};
use tonic::Code;

use crate::common::{Setup, TestServer};

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
