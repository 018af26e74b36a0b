//! TLS for the listeners: our own rustls acceptor (rather than tonic's) so
//! that session resumption is off, client certificates are always required,
//! revocation lists are enforced (expiry included), certificates, client
//! CAs and CRLs reload from their files without dropping connections, and
//! no number of idle or slow unauthenticated connections can stop the
//! listener from accepting and completing new handshakes ([`TlsIncoming`]).

mod pending;
mod stream;

use std::{
    io,
    net::SocketAddr,
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
    server::{Acceptor, NoServerSessionStorage, WebPkiClientVerifier},
};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_rustls::{LazyConfigAcceptor, server::TlsStream};
use tokio_stream::{Stream, wrappers::ReceiverStream};

pub use self::stream::PeerStream;

use self::pending::{Evicted, Pending, Ticket};
use crate::{
    audit::AuditQueue,
    auth::ConnectionPeer,
    config::ListenerConfig,
    error::{Error, Result},
    telemetry::Telemetry,
};

/// How long a new connection has to deliver its TLS ClientHello. Idle and
/// trickling connections are dropped after this long.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to finish the whole TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending handshakes per listener; at this cap a new connection makes the
/// oldest pending one give way. It also bounds the file descriptors that
/// unauthenticated connections hold.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Pending handshakes per source (an IPv4 address or an IPv6 /64); at this
/// cap the source's own oldest pending handshake gives way.
pub const MAX_PENDING_PER_SOURCE: usize = 64;
/// Established connections waiting for tonic to take them.
const ESTABLISHED_QUEUE: usize = 128;
/// The kernel's queue of connections not yet accepted. The accept loop
/// drains it at once, but a burst larger than the usual 128 would have new
/// clients' connections dropped (and retried a second or more later).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a gRPC listener on `addr` (with address reuse, and a backlog that
/// absorbs bursts of connections).
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

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
///
/// The accept loop never waits for a handshake: each runs in its own task,
/// with [`CLIENT_HELLO_TIMEOUT`] to receive the ClientHello and
/// [`HANDSHAKE_TIMEOUT`] for all of it. At most [`MAX_PENDING_HANDSHAKES`]
/// are pending, [`MAX_PENDING_PER_SOURCE`] of them from one source; at a
/// cap the oldest pending one is dropped, so idle and slow connections age
/// out rather than lock new clients out. Dropping it stops accepting.
pub struct TlsIncoming {
    connections: ReceiverStream<io::Result<PeerStream>>,
    accept_loop: JoinHandle<()>,
}

impl TlsIncoming {
    /// Starts accepting on `listener`, each connection with the material
    /// current when its ClientHello arrives.
    /// Refused, timed-out and dropped handshakes are logged and counted in
    /// `telemetry`, and audited (outcome `unauthenticated`) through `audit`.
    pub fn new(
        listener: TcpListener,
        material: Arc<TlsMaterial>,
        telemetry: Telemetry,
        audit: Arc<AuditQueue>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(ESTABLISHED_QUEUE);
        let pending = Pending::new(MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_SOURCE);
        let handshaker = Handshaker {
            material,
            telemetry,
            audit,
            connections: tx,
        };
        let accept_loop = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE or a reset before accept: back off briefly.
                        tracing::warn!(listener = handshaker.name(), error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if handshaker.connections.is_closed() {
                    break;
                }
                let _ = tcp.set_nodelay(true);
                let (ticket, evicted) = pending.admit(peer.ip());
                tokio::spawn(handshaker.clone().run(tcp, peer, ticket, evicted));
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
    material: Arc<TlsMaterial>,
    telemetry: Telemetry,
    audit: Arc<AuditQueue>,
    /// Where established connections go.
    connections: mpsc::Sender<io::Result<PeerStream>>,
}

impl Handshaker {
    fn name(&self) -> &'static str {
        self.material.name()
    }

    /// Runs one handshake until it is established, fails, times out or is
    /// told to make room (holding its place among the pending ones until
    /// then); hands an established connection on, or reports the failure.
    async fn run(
        self,
        tcp: TcpStream,
        peer: SocketAddr,
        ticket: Ticket,
        mut evicted: oneshot::Receiver<Evicted>,
    ) {
        let outcome = tokio::select! {
            biased;
            Ok(cap) = &mut evicted => {
                tracing::debug!(listener = self.name(), %peer, ?cap, "pending TLS handshake dropped to make room");
                Err("evicted")
            }
            outcome = self.handshake(tcp, peer) => outcome,
        };
        drop(ticket);
        match outcome {
            Ok(stream) => {
                let identity =
                    ConnectionPeer::from_certs(peer, stream.get_ref().1.peer_certificates());
                let _ = self
                    .connections
                    .send(Ok(PeerStream::new(stream, identity)))
                    .await;
            }
            Err(reason) => self.failed(peer, reason),
        }
    }

    /// The handshake: the ClientHello within [`CLIENT_HELLO_TIMEOUT`], the
    /// rest within [`HANDSHAKE_TIMEOUT`] of the start, with the material
    /// current when the ClientHello arrived. Fails with the metric reason.
    async fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> std::result::Result<TlsStream<TcpStream>, &'static str> {
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let hello = LazyConfigAcceptor::new(Acceptor::default(), tcp);
        let start = match tokio::time::timeout(CLIENT_HELLO_TIMEOUT, hello).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => return Err(self.refused(peer, &e)),
            Err(_) => {
                tracing::debug!(listener = self.name(), %peer, "no TLS ClientHello in time");
                return Err("client_hello_timeout");
            }
        };
        let rest = start.into_stream(self.material.current());
        match tokio::time::timeout_at(deadline, rest).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(self.refused(peer, &e)),
            Err(_) => {
                tracing::info!(listener = self.name(), %peer, "TLS handshake timed out");
                Err("handshake_timeout")
            }
        }
    }

    /// Logs a handshake the client or rustls broke off; returns its reason.
    fn refused(&self, peer: SocketAddr, error: &io::Error) -> &'static str {
        tracing::info!(listener = self.name(), %peer, error = %error, "TLS handshake refused");
        refusal_reason(error)
    }

    /// Counts and audits a handshake that did not complete, for `reason`:
    /// the one place where handshake failures are audited.
    fn failed(&self, peer: SocketAddr, reason: &'static str) {
        let name = self.name();
        self.telemetry.handshake_failed(name, reason);
        // Anonymous input: audited as one summary per listener, source and
        // reason per write (with a count), never one row per connection.
        self.audit.handshake_refused(name, peer.ip(), reason);
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
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "invalid_purpose"
            }
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
