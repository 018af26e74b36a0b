//! TLS for the listeners: our own rustls acceptor (rather than tonic's) so
//! that session resumption is off, client certificates are always required,
//! revocation lists are enforced (expiry included), and certificates, client
//! CAs and CRLs reload from their files without dropping connections.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::{
    CertificateError, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    server::{NoServerSessionStorage, WebPkiClientVerifier},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::transport::server::Connected;

use crate::{
    audit::AuditQueue,
    auth::ConnectionPeer,
    config::ListenerConfig,
    error::{Error, Result},
    model::{Actor, Outcome},
    telemetry::Telemetry,
};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight per listener before new connections wait.
const HANDSHAKE_QUEUE: usize = 128;
/// Handshakes running at once per listener; further connections wait in the
/// kernel's backlog instead of each costing a task for up to the timeout.
const MAX_HANDSHAKES: usize = 256;

/// The process-wide crypto provider (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a server config that requires a client certificate chaining to the
/// listener's client CA (and not revoked by its CRLs, if any), speaks only
/// HTTP/2, and never resumes sessions (a resumed session would skip the
/// client-certificate and revocation checks).
pub fn server_config(listener: &ListenerConfig) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let chain = read_certs(&listener.cert, "server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&listener.key)
        .map_err(|e| Error::tls(format!("server key {}: {e}", listener.key.display())))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&listener.client_ca, "client CA")? {
        roots
            .add(ca)
            .map_err(|e| Error::tls(format!("client CA {}: {e}", listener.client_ca.display())))?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !listener.crls.is_empty() {
        let mut crls = Vec::new();
        for path in &listener.crls {
            crls.extend(read_crls(path)?);
        }
        // An expired CRL is refused rather than trusted (rustls' default is
        // to ignore expiry); unknown status is refused (the default).
        verifier = verifier.with_crls(crls).enforce_revocation_expiration();
    }
    let verifier = verifier.build().map_err(|e| {
        Error::tls(format!(
            "client CA {} / CRLs: {e}",
            listener.client_ca.display()
        ))
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::tls(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            Error::tls(format!(
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
        .map_err(|e| Error::tls(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::tls(format!(
            "{what} {}: no certificate in file",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::tls(format!("CRL {}: {e}", path.display())))?;
    if crls.is_empty() {
        return Err(Error::tls(format!(
            "CRL {}: no revocation list in file",
            path.display()
        )));
    }
    Ok(crls)
}

/// The TLS material of one listener, rebuilt from its files when they change.
///
/// Each new connection takes the current [`ServerConfig`]; established
/// connections keep theirs (and end within the server's maximum connection
/// age). A reload that fails leaves the previous material in place.
pub struct TlsMaterial {
    listener: ListenerConfig,
    name: &'static str,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files looked like when last loaded (or last tried).
    stamp: Mutex<FileStamp>,
}

/// Size, modification time and inode of each file: a cheap change detector
/// that never reads key material.
#[derive(Debug, PartialEq, Eq)]
struct FileStamp(Vec<Option<(u64, Option<SystemTime>, u64)>>);

impl FileStamp {
    fn of(listener: &ListenerConfig) -> Self {
        let files = [&listener.cert, &listener.key, &listener.client_ca]
            .into_iter()
            .chain(&listener.crls);
        Self(
            files
                .map(|path| {
                    std::fs::metadata(path)
                        .ok()
                        .map(|m| (m.len(), m.modified().ok(), m.ino()))
                })
                .collect(),
        )
    }
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// No file changed (and none was forced).
    Unchanged,
    /// New material is in use for new connections.
    Reloaded,
    /// The files are bad; the previous material stays in use.
    Failed(Error),
}

impl TlsMaterial {
    /// Loads the listener's material; fails if it is unusable (at start-up).
    pub fn load(listener: &ListenerConfig, name: &'static str) -> Result<Arc<Self>> {
        let stamp = FileStamp::of(listener);
        let config = server_config(listener)?;
        Ok(Arc::new(Self {
            listener: listener.clone(),
            name,
            current: RwLock::new(config),
            stamp: Mutex::new(stamp),
        }))
    }

    /// The listener's name (`admin` or `internal`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The config for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Rebuilds the config if a file changed since the last attempt, or
    /// always when `force` (SIGHUP). Blocking: reads files.
    pub fn reload(&self, force: bool) -> Reload {
        let stamp = FileStamp::of(&self.listener);
        {
            let mut last = self
                .stamp
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !force && *last == stamp {
                return Reload::Unchanged;
            }
            // Remember this attempt even if it fails: a bad file is reported
            // once, and retried when it changes again (or on SIGHUP).
            *last = stamp;
        }
        match server_config(&self.listener) {
            Ok(config) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }
}

/// A stream of established TLS connections for `serve_with_incoming`.
/// Handshakes run concurrently, each bounded by a timeout, so a slow or
/// hostile client cannot hold up others. Dropping it stops accepting.
pub struct TlsIncoming {
    connections: ReceiverStream<io::Result<PeerStream>>,
    accept_loop: JoinHandle<()>,
}

impl TlsIncoming {
    /// Starts accepting on `listener`, each connection with the material
    /// current when it arrives.
    /// Refused and timed-out handshakes are logged and counted in `telemetry`.
    /// Refusals are also audited (outcome `unauthenticated`) through `audit`.
    pub fn new(
        listener: TcpListener,
        material: Arc<TlsMaterial>,
        telemetry: Telemetry,
        audit: Arc<AuditQueue>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(HANDSHAKE_QUEUE);
        let name = material.name();
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let handshaker = Handshaker {
            name,
            telemetry,
            audit,
            connections: tx,
        };
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE or a reset before accept: back off briefly.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if handshaker.connections.is_closed() {
                    break;
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(material.current());
                tokio::spawn(handshaker.clone().run(acceptor, tcp, peer, permit));
            }
        });
        Self {
            connections: ReceiverStream::new(rx),
            accept_loop,
        }
    }
}

/// What every handshake of one listener shares.
#[derive(Clone)]
struct Handshaker {
    name: &'static str,
    telemetry: Telemetry,
    audit: Arc<AuditQueue>,
    /// Where established connections go.
    connections: mpsc::Sender<io::Result<PeerStream>>,
}

impl Handshaker {
    /// Runs one handshake within the timeout, holding `permit` meanwhile;
    /// hands an established connection on, or counts and audits a failure.
    async fn run(
        self,
        acceptor: TlsAcceptor,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let name = self.name;
        let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
        drop(permit);
        let reason = match outcome {
            Ok(Ok(stream)) => {
                let identity =
                    ConnectionPeer::from_certs(peer, stream.get_ref().1.peer_certificates());
                let _ = self
                    .connections
                    .send(Ok(PeerStream::new(stream, identity)))
                    .await;
                return;
            }
            Ok(Err(e)) => {
                tracing::info!(listener = name, %peer, error = %e, "TLS handshake refused");
                refusal_reason(&e)
            }
            Err(_) => {
                tracing::info!(listener = name, %peer, "TLS handshake timed out");
                "timeout"
            }
        };
        self.telemetry.handshake_failed(name, reason);
        let actor = Actor {
            identity: "(no verified certificate)".to_owned(),
            peer: peer.to_string(),
            method: "tls/handshake",
        };
        self.audit.push(actor.event(
            None,
            format!("listener/{name}"),
            Outcome::Unauthenticated,
            format!("TLS handshake refused: {reason}"),
        ));
    }
}

/// A short, fixed label for why a handshake failed (for metrics).
fn refusal_reason(error: &io::Error) -> &'static str {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::Revoked => "revoked",
            CertificateError::UnknownRevocationStatus
            | CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "revocation_status",
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "validity",
            CertificateError::UnknownIssuer => "unknown_issuer",
            _ => "invalid_certificate",
        },
        Some(_) => "tls_error",
        None => "io_error",
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<PeerStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.connections).poll_next(cx)
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// An established TLS connection and the peer it was established with,
/// handed to tonic, which puts the peer into every request's extensions.
pub struct PeerStream {
    inner: TlsStream<TcpStream>,
    peer: Arc<ConnectionPeer>,
}

impl PeerStream {
    fn new(inner: TlsStream<TcpStream>, peer: ConnectionPeer) -> Self {
        Self {
            inner,
            peer: Arc::new(peer),
        }
    }
}

impl Connected for PeerStream {
    type ConnectInfo = Arc<ConnectionPeer>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
