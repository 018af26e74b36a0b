//! Authentication as a tower layer: every request on a connection gets the
//! identity its peer certificate carries (read once, when the handshake
//! completed) in its extensions, as [`Authenticated`], together with the
//! RPC it calls. A request that needs an identity and has none is refused
//! here (UNAUTHENTICATED, audited); health checks and reflection need none.
//! Handlers then authorize with one call (see [`super::Authorizer`]).

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    Status,
    codegen::http::{Request, Response},
};
use tower::{Layer, Service};

use super::{ConnectionPeer, PeerIdentity};
use crate::{
    audit::AuditQueue,
    error::Error,
    model::{Actor, Outcome},
    proto::rpcs::{self, Rpc},
};

/// Services that answer without a caller identity.
const OPEN_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// The identity its verified client certificate carries.
    pub identity: Arc<PeerIdentity>,
    /// Its network address.
    pub peer: SocketAddr,
    /// The RPC it calls.
    pub rpc: &'static Rpc,
}

impl Authenticated {
    /// The audit actor of this request, named by its certificate (the
    /// policy may name it more precisely once it grants the request).
    pub fn actor(&self) -> Actor {
        Actor {
            identity: self.identity.to_string(),
            peer: self.peer.to_string(),
            method: &self.rpc.full_name,
        }
    }
}

/// Adds [`AuthService`] around a tonic server.
#[derive(Clone)]
pub struct AuthLayer {
    audit: Arc<AuditQueue>,
}

impl AuthLayer {
    /// A layer auditing refusals into `audit`.
    pub fn new(audit: Arc<AuditQueue>) -> Self {
        Self { audit }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            audit: self.audit.clone(),
        }
    }
}

/// Puts [`Authenticated`] into each request, or refuses it.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    audit: Arc<AuditQueue>,
}

pin_project_lite::pin_project! {
    /// Either the inner service's answer or an immediate refusal.
    #[project = AuthFutureProj]
    pub enum AuthFuture<F, B> {
        /// The request went on.
        Inner { #[pin] future: F },
        /// The request was refused here.
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for AuthFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Inner { future } => future.poll(cx),
            AuthFutureProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let rpc = rpcs::by_path(request.uri().path());
        let peer = request.extensions().get::<Arc<ConnectionPeer>>().cloned();
        let open = rpc.is_none_or(|rpc| OPEN_SERVICES.contains(&rpc.service.as_str()));
        let refusal = match (&peer, rpc) {
            (Some(peer), Some(rpc)) => match &peer.identity {
                Ok(identity) => {
                    request.extensions_mut().insert(Authenticated {
                        identity: identity.clone(),
                        peer: peer.addr,
                        rpc,
                    });
                    None
                }
                Err(why) if !open => Some((*why, peer.addr.to_string(), rpc)),
                Err(_) => None,
            },
            (None, Some(rpc)) if !open => {
                Some(("a client certificate is required", "unknown".into(), rpc))
            }
            _ => None,
        };
        let Some((why, peer, rpc)) = refusal else {
            return AuthFuture::Inner {
                future: self.inner.call(request),
            };
        };
        let actor = Actor {
            identity: "(none)".to_owned(),
            peer,
            method: &rpc.full_name,
        };
        tracing::warn!(method = actor.method, peer = %actor.peer, reason = why, "request without a usable identity refused");
        let status = Status::from(Error::Unauthenticated(why));
        self.audit.push(actor.event(
            None,
            rpc.full_name.as_str(),
            Outcome::Unauthenticated,
            "NO_USABLE_IDENTITY",
        ));
        AuthFuture::Refused {
            response: Some(status.into_http()),
        }
    }
}
