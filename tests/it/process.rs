//! `aitokens serve` as a real child process, for tests that must kill it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aitokens::{
    api::pb::{token_admin_client::TokenAdminClient, token_resolver_client::TokenResolverClient},
    config::Config,
    dev,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::backend::DataFolder;

/// Whether the long variants of the reliability tests should run
/// (`AITOKENS_LONG_TESTS=1`).
pub fn long_tests() -> bool {
    std::env::var_os("AITOKENS_LONG_TESTS").is_some_and(|v| v == "1")
}

/// A data folder prepared by `aitokens dev`'s code, with a config file whose
/// listeners bind free 127.0.0.1 ports.
pub struct DataDir {
    pub dir: DataFolder,
    pub config_path: PathBuf,
    pub config: Config,
}

impl DataDir {
    pub fn new() -> Self {
        let dir = DataFolder::new();
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut config = dev::prepare(dir.path(), any, any, None)
            .expect("prepare")
            .config;
        dir.store.configure(&mut config);
        let config_path = dir.path().join("serve.toml");
        std::fs::write(&config_path, toml::to_string(&config).expect("toml")).expect("write");
        Self {
            dir,
            config_path,
            config,
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// A running `aitokens serve --config FILE`.
pub struct Serve {
    pub child: Child,
    pub admin: SocketAddr,
    pub internal: SocketAddr,
    /// The metrics listener (`/readyz`), when the config has one.
    pub metrics: Option<SocketAddr>,
    pub log: PathBuf,
    /// From spawn to both addresses logged.
    pub ready_after: Duration,
}

impl Serve {
    /// Spawns the server with `RUST_LOG=rust_log` (which must keep
    /// `aitokens` at info or finer) and waits for its "serving" line.
    pub fn start(data: &DataDir, rust_log: &str, log_name: &str) -> Self {
        Self::start_with(&data.config_path, data.path(log_name), rust_log)
    }

    /// Spawns `aitokens serve --config config`, logging to `log`, and waits
    /// for its "serving" line.
    pub fn start_with(config: &Path, log: PathBuf, rust_log: &str) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_aitokens"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone"))
            .stderr(file)
            .spawn()
            .expect("spawn aitokens serve");
        let deadline = started + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some((admin, internal, metrics)) = serving_addresses(&text) {
                return Self {
                    child,
                    admin,
                    internal,
                    metrics,
                    log,
                    ready_after: started.elapsed(),
                };
            }
            if let Some(exit) = child.try_wait().expect("wait") {
                panic!("aitokens serve exited ({exit}) before serving:\n{text}");
            }
            assert!(Instant::now() < deadline, "not serving after 60 s:\n{text}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL: no shutdown, no flush, no goodbye.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM and a bounded wait for a clean exit; returns the log.
    pub fn terminate(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                break exit;
            }
            assert!(Instant::now() < deadline, "did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(&self.log).expect("log");
        assert!(exit.success(), "exit {exit:?}\n{log}");
        log
    }
}

impl Serve {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn serving_addresses(log: &str) -> Option<(SocketAddr, SocketAddr, Option<SocketAddr>)> {
    log.lines()
        .filter(|l| l.contains(" serving "))
        .find_map(|line| {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(key))
                    .and_then(|addr| addr.parse().ok())
            };
            // `metrics=Some(ADDR)` or `metrics=None`.
            let metrics = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("metrics=Some("))
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|addr| addr.parse().ok());
            Some((field("admin=")?, field("internal=")?, metrics))
        })
}

/// A channel to `addr` as the dev identity `who` (admin or agent).
pub async fn channel(dir: &Path, addr: SocketAddr, who: &str) -> Channel {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read(&format!("{who}.pem")),
            read(&format!("{who}.key")),
        ))
        .domain_name("localhost");
    Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect")
}

impl Serve {
    pub async fn admin(&self, data: &DataDir) -> TokenAdminClient<Channel> {
        TokenAdminClient::new(channel(data.dir.path(), self.admin, "admin").await)
    }

    pub async fn resolver(&self, data: &DataDir) -> TokenResolverClient<Channel> {
        TokenResolverClient::new(channel(data.dir.path(), self.internal, "agent").await)
    }
}
