//! A real server for tests: certificates generated with rcgen at test time, a
//! real store (a SQLite file in a temp dir, or a scratch PostgreSQL database:
//! see [`crate::backend`]), both listeners on 127.0.0.1 ephemeral ports.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::backend::{BackDoor, DataFolder, TestStore};
use aitokens::{
    api::pb::{
        CreateTokenRequest, ResolveTokenRequest, Token, token_admin_client::TokenAdminClient,
        token_resolver_client::TokenResolverClient,
    },
    config::Config,
    dev,
    pki::{Ca, Issued},
    server::{Server, tls},
    telemetry::Telemetry,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

/// Tests that run the `aitokens` binary under trace logging or sustained
/// load hold this while they run, so that on a 2-core machine they do not
/// starve each other's servers (a TLS handshake of a trace-logging debug
/// build under four such neighbours can outlast the server's handshake
/// timeout, `aitokens::server::tls::HANDSHAKE_TIMEOUT`).
pub static HEAVY: std::sync::LazyLock<tokio::sync::Mutex<()>> =
    std::sync::LazyLock::new(|| tokio::sync::Mutex::new(()));

/// A running server over a data folder that outlives restarts.
pub struct TestServer {
    pub dir: DataFolder,
    pub config: Config,
    pub admin_addr: SocketAddr,
    pub internal_addr: SocketAddr,
    /// The server's metrics and readiness.
    pub telemetry: Telemetry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<aitokens::Result<()>>>,
}

impl TestServer {
    /// A server over a fresh data folder (dev certificates, key and policy).
    pub async fn start() -> Self {
        Setup::new().start().await
    }

    /// Starts a server over an existing data folder.
    pub async fn start_in(dir: DataFolder, config: Config) -> Self {
        let server = Server::open(&config).await.expect("server opens");
        let telemetry = server.telemetry().clone();
        // Bound as the binary binds them (a backlog that absorbs bursts).
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let admin = tls::bind_listener(any).expect("bind admin");
        let internal = tls::bind_listener(any).expect("bind internal");
        let admin_addr = admin.local_addr().expect("addr");
        let internal_addr = internal.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(admin, internal, async {
            let _ = stopped.await;
        }));
        Self {
            dir,
            config,
            admin_addr,
            internal_addr,
            telemetry,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server gracefully and hands back its data folder.
    pub async fn stop(mut self) -> (DataFolder, Config) {
        self.shutdown().await;
        let dir = std::mem::replace(
            &mut self.dir,
            DataFolder {
                dir: tempfile::tempdir().expect("tempdir"),
                store: TestStore::Sqlite(PathBuf::new()),
            },
        );
        (dir, self.config.clone())
    }

    /// Stops, then starts again over the same data folder.
    pub async fn restart(self) -> Self {
        let (dir, config) = self.stop().await;
        Self::start_in(dir, config).await
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops within 30 s")
                .expect("server task")
                .expect("server ran cleanly");
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The server's store.
    pub fn store(&self) -> &TestStore {
        &self.dir.store
    }

    /// The store behind the server's back.
    pub async fn back_door(&self) -> BackDoor {
        self.dir.store.back_door().await
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).expect("read dev file")
    }

    /// The dev client identity `who` ("admin" or "agent").
    pub fn client_identity(&self, who: &str) -> Identity {
        Identity::from_pem(
            self.read(&format!("{who}.pem")),
            self.read(&format!("{who}.key")),
        )
    }

    /// A channel to `addr` trusting the dev CA, presenting `identity`.
    pub async fn channel(
        &self,
        addr: SocketAddr,
        identity: Option<Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        self.channel_within(addr, identity, Duration::from_secs(5))
            .await
    }

    /// [`TestServer::channel`] with its own connect timeout.
    pub async fn channel_within(
        &self,
        addr: SocketAddr,
        identity: Option<Identity>,
        connect_timeout: Duration,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read("ca.pem")))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Channel::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)?
            .connect_timeout(connect_timeout)
            .timeout(Duration::from_secs(30))
            .connect()
            .await
    }

    /// An admin client with the dev admin certificate.
    pub async fn admin(&self) -> TokenAdminClient<Channel> {
        let channel = self
            .channel(self.admin_addr, Some(self.client_identity("admin")))
            .await
            .expect("admin channel");
        TokenAdminClient::new(channel)
    }

    /// A resolver client with the dev agent certificate.
    pub async fn resolver(&self) -> TokenResolverClient<Channel> {
        let channel = self
            .channel(self.internal_addr, Some(self.client_identity("agent")))
            .await
            .expect("resolver channel");
        TokenResolverClient::new(channel)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A data folder prepared by `aitokens dev`'s own code, before the server starts.
pub struct Setup {
    pub dir: DataFolder,
    pub config: Config,
}

impl Setup {
    pub fn new() -> Self {
        let dir = DataFolder::new();
        let any = "127.0.0.1:0".parse().expect("addr");
        let mut config = dev::prepare(dir.path(), any, any, None)
            .expect("prepare data folder")
            .config;
        dir.store.configure(&mut config);
        dev::save_config(dir.path(), &config).expect("save config");
        Self { dir, config }
    }

    /// Replaces the dev policy.
    pub fn policy(self, toml: &str) -> Self {
        std::fs::write(self.dir.path().join("policy.toml"), toml).expect("write policy");
        self
    }

    /// Replaces the folder's PKI with one the test holds the CA key of.
    pub fn pki(&self) -> TestPki {
        TestPki::install(self.dir.path())
    }

    pub async fn start(self) -> TestServer {
        TestServer::start_in(self.dir, self.config).await
    }
}

/// Test-owned PKI written over a data folder, for certificates the dev set
/// does not include (unknown identities, several SANs, tenant-scoped admins).
pub struct TestPki {
    pub ca: Ca,
}

impl TestPki {
    /// Replaces the PKI of `dir` with a new CA (server, admin and agent
    /// certificates re-issued), so that the test can issue more.
    pub fn install(dir: &Path) -> Self {
        let ca = Ca::generate("aitokens test CA").expect("ca");
        let server = ca
            .issue_server(&["localhost", "127.0.0.1"])
            .expect("server cert");
        write_pair(dir, "server", &server);
        write_pair(
            dir,
            "admin",
            &ca.issue_client(dev::ADMIN_IDENTITY).expect("admin"),
        );
        write_pair(
            dir,
            "agent",
            &ca.issue_client(dev::AGENT_IDENTITY).expect("agent"),
        );
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write ca");
        Self { ca }
    }

    pub fn client(&self, uri: &str) -> Identity {
        identity(&self.ca.issue_client(uri).expect("issue"))
    }
}

fn write_pair(dir: &Path, name: &str, issued: &Issued) {
    std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).expect("write cert");
    std::fs::write(dir.join(format!("{name}.key")), issued.key_pem.as_bytes()).expect("write key");
}

pub fn identity(issued: &Issued) -> Identity {
    Identity::from_pem(&issued.cert_pem, issued.key_pem.as_bytes())
}

/// A CreateTokenRequest for `tenants/{tenant}` / `token_id` holding `value`.
pub fn create_request(tenant: &str, token_id: &str, value: &str) -> CreateTokenRequest {
    CreateTokenRequest {
        parent: format!("tenants/{tenant}"),
        token_id: token_id.to_owned(),
        token: Some(Token {
            display_name: format!("Token {token_id}"),
            ..Default::default()
        }),
        value: value.to_owned(),
        replaces: String::new(),
    }
}

/// Asserts `status` is `code` and, for INVALID_ARGUMENT, that a BadRequest
/// field violation names `field`.
pub fn assert_status(status: &Status, code: Code, field: Option<&str>) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    if let Some(field) = field {
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        let bad = details.bad_request().expect("BadRequest details");
        assert!(
            bad.field_violations.iter().any(|v| v.field == field),
            "expected a violation on {field}, got {:?}",
            bad.field_violations
        );
        assert!(
            status.message().starts_with(field),
            "message names the field: {}",
            status.message()
        );
    }
}

/// Drives a program on a pseudo-terminal (Python's `pty`): waits for
/// `$PROMPT`, then until the program has turned echo off (a person types
/// only then; typed-ahead input is echoed, or flushed, by the terminal
/// itself), types `$TYPED` and Enter, waits for `$UNTIL`; if `$STOP_AFTER`
/// is set, sends SIGTERM and waits for it. Prints everything the terminal
/// showed and exits with the program's status.
const PTY_DRIVER: &str = r#"
import os, pty, select, signal, sys, termios, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
seen = b""
deadline = time.time() + 60
def read_until(marker):
    global seen
    while marker not in seen:
        if time.time() > deadline:
            sys.exit("timed out waiting for %r; the terminal showed %r" % (marker, seen))
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return False
            if not chunk:
                return False
            seen += chunk
    return True
read_until(os.environ["PROMPT"].encode())
while termios.tcgetattr(fd)[3] & termios.ECHO:
    if time.time() > deadline:
        sys.exit("echo was never turned off")
    time.sleep(0.01)
os.write(fd, os.environ["TYPED"].encode() + b"\n")
if read_until(os.environ["UNTIL"].encode()) and os.environ.get("STOP_AFTER"):
    os.kill(pid, signal.SIGTERM)
    read_until(os.environ["STOP_AFTER"].encode())
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(seen)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// What a person typing at a terminal does, for [`on_a_terminal`].
pub struct Typing<'a> {
    /// The prompt to wait for.
    pub prompt: &'a str,
    /// What to type (Enter follows).
    pub typed: &'a str,
    /// What to wait for afterwards.
    pub until: &'a str,
    /// If set: send SIGTERM after `until`, then wait for this.
    pub stop_after: Option<&'a str>,
}

/// A `python3` command that runs `program args` on a pseudo-terminal and
/// types as `typing` says; its stdout is the terminal's screen.
pub fn on_a_terminal(
    program: &Path,
    args: &[&std::ffi::OsStr],
    typing: &Typing<'_>,
) -> std::process::Command {
    let mut command = std::process::Command::new("python3");
    command
        .args(["-c", PTY_DRIVER])
        .arg(program)
        .args(args)
        .env("PROMPT", typing.prompt)
        .env("TYPED", typing.typed)
        .env("UNTIL", typing.until);
    if let Some(stop) = typing.stop_after {
        command.env("STOP_AFTER", stop);
    }
    command
}

/// The dev policy in bindings-only mode: the agent resolves only tokens
/// whose bindings name it.
pub const BINDINGS_ONLY_POLICY: &str = r#"
    bindings_only = true

    [[admin]]
    identity = "spiffe://aitokens.dev/admin"
    tenants = ["*"]

    [[resolver]]
    identity = "spiffe://aitokens.dev/agent"
    tenants = ["*"]
    tokens = ["*"]
"#;

/// The value `name` resolves to, or the status.
pub async fn resolve(
    client: &mut TokenResolverClient<Channel>,
    name: &str,
) -> Result<String, Status> {
    client
        .resolve_token(ResolveTokenRequest { name: name.into() })
        .await
        .map(|r| r.get_ref().value.clone())
}
