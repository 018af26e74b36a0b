//! Several `aitokens serve` replicas over one PostgreSQL database: real
//! processes on ephemeral 127.0.0.1 ports, real mutual TLS, one data
//! folder's PKI, policy and root key. These tests always run on PostgreSQL
//! (a scratch database on the shared server, or a cluster of their own for
//! the outage and failover tests), whatever `AITOKENS_TEST_STORE` says.
//!
//! - [`propagation`]: a change acknowledged by one replica is refused by
//!   the others within 1 s, with and without change notifications;
//! - [`writes`]: 30 s of concurrent admin writes and resolves on every
//!   replica; the audit chain, usage counts and token set add up exactly;
//! - [`kill`]: `kill -9` of a replica under load;
//! - [`outage`]: PostgreSQL stopped and restarted under load, and the
//!   outage grace;
//! - [`failover`]: a synchronous standby promoted under load;
//! - [`rotation`]: the re-wrap job's holder killed mid-job;
//! - [`tls`]: the connection to PostgreSQL over verified TLS, with the
//!   password from a file.
//!
//! Each test holds [`crate::common::HEAVY`] (several debug-build servers
//! at once on a 2-core machine) and prints the figures it measured.

mod failover;
mod kill;
mod outage;
mod propagation;
mod rotation;
mod tls;
mod watch;
mod writes;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use aitokens::{
    api::pb::{
        key_admin_client::KeyAdminClient, token_admin_client::TokenAdminClient,
        token_resolver_client::TokenResolverClient,
    },
    config::Config,
    dev,
    store::postgres::scratch::ScratchDatabase,
};
use tempfile::TempDir;
use tonic::{Status, transport::Channel};
use tonic_types::StatusExt;

use crate::{observability, process::Serve};

/// PostgreSQL connections per replica (plus the LISTEN connection and the
/// re-wrap lease's): small, since several replicas share one server.
const POOL_SIZE: usize = 6;

/// Replicas over one database and one data folder.
pub struct Fleet {
    pub folder: TempDir,
    /// The store URL every replica is configured with.
    pub url: String,
    _scratch: Option<Arc<ScratchDatabase>>,
    base: Config,
    replicas: Vec<Option<Serve>>,
    configs: Vec<PathBuf>,
}

impl Fleet {
    /// A fleet over a new scratch database on the shared server.
    pub async fn scratch() -> Self {
        let db = ScratchDatabase::create()
            .await
            .expect("a scratch PostgreSQL database");
        let url = db.url().to_owned();
        Self::new(url, Some(Arc::new(db)))
    }

    /// A fleet over the (migrated) database at `url`.
    pub fn on(url: String) -> Self {
        Self::new(url, None)
    }

    fn new(url: String, scratch: Option<Arc<ScratchDatabase>>) -> Self {
        let folder = tempfile::tempdir().expect("tempdir");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut base = dev::prepare(folder.path(), any, any, Some(any))
            .expect("prepare the data folder")
            .config;
        base.store.database = PathBuf::new();
        base.store.url = Some(url.clone());
        base.store.pool_size = Some(POOL_SIZE);
        // Counters and the re-wrap job's rounds every second.
        base.usage.flush_interval_secs = 1;
        Self {
            folder,
            url,
            _scratch: scratch,
            base,
            replicas: Vec::new(),
            configs: Vec::new(),
        }
    }

    /// Starts one more replica, its config the fleet's with `tweak`
    /// applied; returns its index.
    pub fn start(&mut self, tweak: impl FnOnce(&mut Config)) -> usize {
        let index = self.replicas.len();
        let mut config = self.base.clone();
        tweak(&mut config);
        let path = self.folder.path().join(format!("serve-{index}.toml"));
        std::fs::write(&path, toml::to_string(&config).expect("toml")).expect("write config");
        self.configs.push(path);
        self.replicas.push(None);
        self.restart(index);
        index
    }

    /// Starts replica `index` (again) with its config.
    pub fn restart(&mut self, index: usize) {
        assert!(self.replicas[index].is_none(), "replica {index} runs");
        let log = self.folder.path().join(format!(
            "serve-{index}-{}.log",
            fastrand::u32(..) // a restart keeps the old log
        ));
        self.replicas[index] = Some(Serve::start_with(&self.configs[index], log, "info"));
    }

    /// Starts `n` replicas with the same tweak.
    pub fn start_n(&mut self, n: usize, tweak: impl Fn(&mut Config)) {
        for _ in 0..n {
            self.start(&tweak);
        }
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn replica(&self, index: usize) -> &Serve {
        self.replicas[index]
            .as_ref()
            .unwrap_or_else(|| panic!("replica {index} is not running"))
    }

    async fn channel(&self, addr: SocketAddr, who: &str) -> Channel {
        crate::process::channel(self.folder.path(), addr, who).await
    }

    pub async fn admin(&self, index: usize) -> TokenAdminClient<Channel> {
        TokenAdminClient::new(self.channel(self.replica(index).admin, "admin").await)
    }

    pub async fn keys(&self, index: usize) -> KeyAdminClient<Channel> {
        KeyAdminClient::new(self.channel(self.replica(index).admin, "admin").await)
    }

    pub async fn resolver(&self, index: usize) -> TokenResolverClient<Channel> {
        TokenResolverClient::new(self.channel(self.replica(index).internal, "agent").await)
    }

    /// `kill -9` of replica `index`.
    pub fn kill9(&mut self, index: usize) {
        self.replicas[index]
            .take()
            .unwrap_or_else(|| panic!("replica {index} is not running"))
            .kill9();
    }

    /// SIGTERM to replica `index`, and its clean exit (after its final
    /// flush); returns its log.
    pub fn terminate(&mut self, index: usize) -> String {
        self.replicas[index]
            .take()
            .unwrap_or_else(|| panic!("replica {index} is not running"))
            .terminate()
    }

    /// Stops every running replica gracefully, all at once.
    pub fn terminate_all(&mut self) {
        let running: Vec<usize> = (0..self.len())
            .filter(|i| self.replicas[*i].is_some())
            .collect();
        // SIGTERM to all first, so that they stop side by side.
        for &i in &running {
            let pid = self.replica(i).pid().to_string();
            let sent = Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill -TERM");
            assert!(sent.success());
        }
        for i in running {
            self.terminate(i);
        }
    }

    /// `GET /readyz` of replica `index`: its HTTP status.
    pub async fn readyz(&self, index: usize) -> u16 {
        let addr = self
            .replica(index)
            .metrics
            .expect("the fleet's replicas have a metrics listener");
        observability::get(addr, "/readyz").await.0
    }

    /// `aitokens audit verify --config` of replica 0's config: asserts
    /// the chain is intact; returns (records, checkpoints) it verified.
    pub fn audit_verify(&self) -> (u64, u64) {
        let out = Command::new(env!("CARGO_BIN_EXE_aitokens"))
            .args(["audit", "verify", "--config"])
            .arg(&self.configs[0])
            .output()
            .expect("run aitokens audit verify");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "audit verify failed:\n{text}");
        assert!(text.contains("audit chain intact"), "{text}");
        let number_before = |word: &str| -> u64 {
            let words: Vec<&str> = text.split_whitespace().collect();
            words
                .windows(2)
                .find(|w| w[1].starts_with(word))
                .and_then(|w| w[0].parse().ok())
                .unwrap_or(0)
        };
        (number_before("records"), number_before("checkpoints"))
    }
}

/// `ErrorInfo.reason` of a status ("" without one).
pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// Nearest-rank percentiles of a set of durations.
pub struct Spread {
    sorted: Vec<Duration>,
}

impl Spread {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self { sorted: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The `p`th percentile (nearest rank).
    pub fn pct(&self, p: f64) -> Duration {
        assert!(!self.sorted.is_empty(), "no samples");
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        *self.sorted.last().expect("no samples")
    }

    /// `n=.. p50=.. p99=.. max=..` in milliseconds.
    pub fn line(&self) -> String {
        format!(
            "n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
            self.len(),
            ms(self.pct(50.0)),
            ms(self.pct(99.0)),
            ms(self.max())
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits up to `limit` for every running replica to answer `/readyz` with
/// `code`; returns how long it took.
pub async fn until_readyz(
    fleet: &Fleet,
    indexes: &[usize],
    code: u16,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    for &i in indexes {
        loop {
            if fleet.readyz(i).await == code {
                break;
            }
            assert!(
                started.elapsed() < limit,
                "replica {i}: /readyz not {code} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    started.elapsed()
}
