//! The server under test: a data folder made by `aitokens dev`'s code, and
//! `aitokens serve` as a child process.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use aitokens::{config::Config, dev, store::postgres::scratch::ScratchDatabase};

use crate::{
    Error, Options, READY_TIMEOUT, Result,
    load::cpu_time,
    report::{Machine, SeedFigures},
    say, seed,
};

/// A temp data folder prepared by `aitokens dev`'s code, with a config that
/// binds both listeners to free 127.0.0.1 ports.
pub struct DataDir {
    /// The folder.
    pub dir: tempfile::TempDir,
    /// With `--store`: the phase's PostgreSQL database (dropped after it).
    pub database: Option<ScratchDatabase>,
    /// The config the server runs with.
    pub config_path: PathBuf,
    /// The same, parsed.
    pub config: Config,
}

impl DataDir {
    /// A fresh data folder; `echo` serves the Echo floor.
    pub async fn prepare(echo: bool, options: &Options) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("aitokens-bench-")
            .tempdir()
            .map_err(|e| Error::Setup(format!("temp dir: {e}")))?;
        // Port 0: the server binds free ports and logs them ("serving").
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut config = dev::prepare(dir.path(), any, any, None)?.config;
        config.bench.echo = echo;
        config.usage.track = !options.no_usage_tracking;
        config.cache.max_mib = options.cache_mib;
        let database = match &options.store {
            Some(url) => {
                let database = ScratchDatabase::create_on(url).await?;
                config.store.database = PathBuf::new();
                config.store.url = Some(database.url().to_owned());
                Some(database)
            }
            None => None,
        };
        let config_path = dir.path().join("bench.toml");
        let text = toml::to_string(&config).map_err(|e| Error::Internal(format!("config: {e}")))?;
        std::fs::write(&config_path, text)
            .map_err(|e| Error::Setup(format!("writing {}: {e}", config_path.display())))?;
        Ok(Self {
            dir,
            database,
            config_path,
            config,
        })
    }

    /// Seeds `count` tokens of `tenant`, sealed with the real keyring and
    /// bulk-loaded before the server starts.
    pub async fn seed(&self, tenant: &str, count: u64) -> Result<SeedFigures> {
        seed::seed(&self.config, tenant, count).await
    }

    fn file(&self, name: &str) -> Result<String> {
        let path = self.dir.path().join(name);
        std::fs::read_to_string(&path)
            .map_err(|e| Error::Setup(format!("reading {}: {e}", path.display())))
    }

    /// `count` separate HTTP/2 connections to `addr` as `who` (admin or agent).
    /// `count` separate HTTP/2 connections to `addr` as `who`.
    pub async fn channels(&self, addr: SocketAddr, who: &str, count: u64) -> Result<Vec<Channel>> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.file("ca.pem")?))
            .identity(Identity::from_pem(
                self.file(&format!("{who}.pem"))?,
                self.file(&format!("{who}.key"))?,
            ))
            .domain_name("localhost");
        let mut channels = Vec::new();
        for _ in 0..count {
            let channel = Endpoint::from_shared(format!("https://{addr}"))
                .map_err(|e| Error::Internal(format!("endpoint: {e}")))?
                .tls_config(tls.clone())
                .map_err(|e| Error::Internal(format!("client TLS: {e}")))?
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(30))
                .connect()
                .await
                .map_err(|e| Error::Internal(format!("connecting to {addr}: {e}")))?;
            channels.push(channel);
        }
        Ok(channels)
    }
}

/// The addresses in the server's "serving admin=ADDR internal=ADDR" log line.
fn serving_addresses(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    log.lines()
        .filter(|l| l.contains(" serving "))
        .find_map(|line| {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(key))
                    .and_then(|addr| addr.parse().ok())
            };
            Some((field("admin=")?, field("internal=")?))
        })
}

/// `aitokens serve` as a child process.
pub struct ServerProcess {
    child: Child,
    pid: u32,
    /// Where the admin listener listens.
    pub admin: SocketAddr,
    /// Where the internal listener listens.
    pub internal: SocketAddr,
    /// From spawn to both listeners answering health checks.
    pub ready_after: Duration,
    /// When it was spawned.
    pub started: Instant,
    /// Its log file.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Spawns the server and waits until both listeners answer health checks.
    pub async fn start(exe: &Path, data: &DataDir, log_filter: &str) -> Result<Self> {
        Self::start_logging_to(exe, data, log_filter, "server.log").await
    }

    /// [`ServerProcess::start`] with its log in `log_name` (a second
    /// replica over the same data folder).
    pub async fn start_logging_to(
        exe: &Path,
        data: &DataDir,
        log_filter: &str,
        log_name: &str,
    ) -> Result<Self> {
        let log = data.dir.path().join(log_name);
        let log_file = std::fs::File::create(&log)
            .map_err(|e| Error::Setup(format!("creating {}: {e}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| Error::Setup(format!("server log: {e}")))?;
        let started = Instant::now();
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&data.config_path)
            .env("RUST_LOG", log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| Error::Setup(format!("starting {}: {e}", exe.display())))?;
        let mut server = Self {
            pid: child.id(),
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            internal: SocketAddr::from(([127, 0, 0, 1], 0)),
            ready_after: Duration::ZERO,
            started,
            log,
        };
        let health = |addr: SocketAddr, who: &'static str| async move {
            let channel = data.channels(addr, who, 1).await.ok()?.pop()?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .ok()?;
            Some(reply.get_ref().status() == ServingStatus::Serving)
        };
        loop {
            if let Some(exit) = server
                .child
                .try_wait()
                .map_err(|e| Error::Internal(format!("server process: {e}")))?
            {
                return Err(Error::Setup(format!(
                    "the server exited ({exit}) before it was ready; its log:\n{}",
                    server.log_tail()
                )));
            }
            if server.admin.port() == 0 {
                let text = std::fs::read_to_string(&server.log).unwrap_or_default();
                if let Some((admin, internal)) = serving_addresses(&text) {
                    (server.admin, server.internal) = (admin, internal);
                }
            }
            if server.admin.port() != 0
                && health(server.admin, "admin").await == Some(true)
                && health(server.internal, "agent").await == Some(true)
            {
                server.ready_after = started.elapsed();
                return Ok(server);
            }
            if started.elapsed() > READY_TIMEOUT {
                let tail = server.log_tail();
                let _ = server.child.kill();
                return Err(Error::Setup(format!(
                    "the server was not ready after {READY_TIMEOUT:?}; its log:\n{tail}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The server's CPU time so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time(&self.pid.to_string())
    }

    /// Resets VmHWM to the current RSS (Linux: `echo 5 > /proc/PID/clear_refs`).
    /// Resets the peak RSS.
    pub fn reset_peak_rss(&self) {
        let path = format!("/proc/{}/clear_refs", self.pid);
        if let Err(e) = std::fs::write(&path, "5") {
            say(&format!(
                "could not reset the peak RSS ({path}: {e}); peaks are since start"
            ));
        }
    }

    /// A kB field of the server's /proc status.
    pub fn status_kib(&self, field: &str) -> Result<u64> {
        status_kib(self.pid, field)
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    /// Stops the server.
    pub async fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(exit)) if exit.success() => return Ok(()),
                Ok(Some(exit)) => {
                    return Err(Error::Internal(format!(
                        "the server exited with {exit}; its log:\n{}",
                        self.log_tail()
                    )));
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(Error::Internal(
                        "the server did not stop within 30 s of SIGTERM".into(),
                    ));
                }
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `kB` field of `/proc/PID/status` (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Internal(format!("reading {path}: {e}")))?;
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .ok_or_else(|| Error::Internal(format!("{path}: no {field}")))
}

/// The machine this runs on.
pub fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or_default();
    Machine {
        load_average,
        cpus: seed::threads(),
        cpu_model,
        kernel,
    }
}
