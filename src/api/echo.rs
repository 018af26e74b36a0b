//! `aitokens.bench.v1.Echo`: the transport floor for `aitokens bench`.
//!
//! Served only when the config turns it on (`[bench] echo = true`), on the
//! internal listener, behind the same mutual TLS as `TokenResolver`. It reads
//! no identity, touches no store and no key: it returns the request as it
//! came, so its cost is what HTTP/2, gRPC and TLS alone cost.

use tonic::{Request, Response, Status};

/// Generated types of `proto/aitokens/bench/v1/echo.proto`.
pub use crate::proto::bench as pb;

/// The echo handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoApi;

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoApi {
    async fn echo(
        &self,
        request: Request<pb::EchoRequest>,
    ) -> Result<Response<pb::EchoResponse>, Status> {
        let pb::EchoRequest { name, value } = request.into_inner();
        Ok(Response::new(pb::EchoResponse { name, value }))
    }
}
