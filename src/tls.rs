//! TLS for both listeners: our own rustls acceptor (rather than tonic's) so
//! that session resumption is off and client certificates are always required,
//! and so that revocation lists and reloads can be added here.

use std::{
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{NoServerSessionStorage, WebPkiClientVerifier},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, wrappers::ReceiverStream};

use crate::{
    config::ListenerConfig,
    error::{Error, Result},
};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight per listener before new connections wait.
const HANDSHAKE_QUEUE: usize = 128;

/// The process-wide crypto provider (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a server config that requires a client certificate chaining to the
/// listener's client CA, speaks only HTTP/2, and never resumes sessions (a
/// resumed session would skip the client-certificate check).
pub fn server_config(listener: &ListenerConfig) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let chain = read_certs(&listener.cert, "server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&listener.key)
        .map_err(|e| Error::Startup(format!("server key {}: {e}", listener.key.display())))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&listener.client_ca, "client CA")? {
        roots.add(ca).map_err(|e| {
            Error::Startup(format!("client CA {}: {e}", listener.client_ca.display()))
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Startup(format!("client CA {}: {e}", listener.client_ca.display())))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Startup(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            Error::Startup(format!(
                "server certificate/key {}: {e}",
                listener.cert.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Startup(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Startup(format!(
            "{what} {}: no certificate in file",
            path.display()
        )));
    }
    Ok(certs)
}

/// A stream of established TLS connections for `serve_with_incoming`.
/// Handshakes run concurrently, each bounded by a timeout, so a slow or
/// hostile client cannot hold up others. Dropping it stops accepting.
pub struct TlsIncoming {
    connections: ReceiverStream<io::Result<TlsStream<TcpStream>>>,
    accept_loop: JoinHandle<()>,
}

impl TlsIncoming {
    /// Starts accepting on `listener` with `config`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>, name: &'static str) -> Self {
        let (tx, rx) = mpsc::channel(HANDSHAKE_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let accept_loop = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE or a reset before accept: back off briefly.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(listener = name, %peer, error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            tracing::info!(listener = name, %peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Self {
            connections: ReceiverStream::new(rx),
            accept_loop,
        }
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.connections).poll_next(cx)
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}
