//! Request-size limits of the services whose requests are empty or a name:
//! KeyAdmin, health and reflection decode at most 4 KiB, on both listeners,
//! rather than tonic's 4 MiB default (KeyAdmin's was the 128 KiB of the
//! token services).

use std::net::SocketAddr;

use aitokens::api::pb::KeyStatus;
use tonic::{Code, Status, codegen::http::uri::PathAndQuery, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};

use crate::common::TestServer;

/// Well over the 4 KiB limit, well under every other limit on the way.
const BIG: usize = 64 * 1024;

fn assert_too_large(status: &Status, what: &str) {
    assert_eq!(status.code(), Code::OutOfRange, "{what}: {status:?}");
    assert!(
        status
            .message()
            .starts_with("Error, decoded message length too large: found ")
            && status.message().ends_with("the limit is: 4096 bytes"),
        "{what}: {}",
        status.message()
    );
}

async fn channel(server: &TestServer, addr: SocketAddr) -> Channel {
    server
        .channel(addr, Some(server.client_identity("admin")))
        .await
        .expect("channel")
}

async fn health(channel: Channel, service: String) -> Result<i32, Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await
        .map(|r| r.into_inner().status)
}

async fn reflect(channel: Channel, symbol: String) -> Result<usize, Status> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol)),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let mut count = 0;
    while answers.message().await?.is_some() {
        count += 1;
    }
    Ok(count)
}

/// A message with one string field (tag 1): a KeyAdmin request type (all
/// empty) with unknown-field padding, as a raw client can send it.
#[derive(Clone, PartialEq, prost::Message)]
struct Padded {
    #[prost(string, tag = "1")]
    pad: String,
}

async fn key_status(channel: Channel, pad: usize) -> Result<KeyStatus, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(Padded {
            pad: "k".repeat(pad),
        }),
        PathAndQuery::from_static("/aitokens.v1.KeyAdmin/GetKeyStatus"),
        tonic_prost::ProstCodec::<Padded, KeyStatus>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn health_reflection_and_key_admin_refuse_requests_over_4_kib() {
    let server = TestServer::start().await;
    for (listener, addr) in [
        ("admin", server.admin_addr),
        ("internal", server.internal_addr),
    ] {
        let ch = channel(&server, addr).await;
        // Controls: small requests are answered.
        assert_eq!(
            health(ch.clone(), String::new()).await.expect("health"),
            ServingStatus::Serving as i32,
            "{listener}"
        );
        let service = if listener == "admin" {
            "aitokens.v1.TokenAdmin"
        } else {
            "aitokens.v1.TokenResolver"
        };
        assert_eq!(
            reflect(ch.clone(), service.into()).await.expect("reflect"),
            1,
            "{listener}"
        );
        // Over the limit: refused before anything is looked up.
        let status = health(ch.clone(), "h".repeat(BIG))
            .await
            .expect_err("big health check");
        assert_too_large(&status, &format!("{listener} health"));
        // Reflection is a stream: a request that fails to decode ends it
        // with no answer (tonic-reflection stops reading), whereas one that
        // decodes is looked up and, being unknown, answered NOT_FOUND.
        let status = reflect(ch.clone(), "r".repeat(1000))
            .await
            .expect_err("unknown symbol");
        assert_eq!(status.code(), Code::NotFound, "{listener}: {status:?}");
        assert_eq!(
            reflect(ch, "r".repeat(BIG)).await.expect("stream ends"),
            0,
            "{listener}: a 64 KiB reflection request was decoded and looked up"
        );
    }
    let ch = channel(&server, server.admin_addr).await;
    let status = key_status(ch.clone(), 100).await.expect("small key status");
    assert_eq!(status.current_version, 1);
    let status = key_status(ch, BIG)
        .await
        .expect_err("big key admin request");
    assert_too_large(&status, "KeyAdmin");
}
