//! The server configuration file (`aitokens serve --config FILE`).
//!
//! ```toml
//! policy = "policy.toml"
//! tls_reload_interval_secs = 10  # how often TLS files are checked for changes
//!
//! [admin]
//! listen = "127.0.0.1:50051"
//! cert = "server.pem"        # server certificate chain (PEM)
//! key = "server.key"         # its private key (PEM)
//! client_ca = "ca.pem"       # CA bundle that client certificates must chain to
//! crls = ["ca.crl.pem"]      # optional: revocation lists (PEM), enforced with expiry
//!
//! [internal]                 # same keys; mTLS listener for ResolveToken
//! listen = "127.0.0.1:50052"
//! cert = "server.pem"
//! key = "server.key"
//! client_ca = "ca.pem"
//!
//! [store]
//! database = "aitokens.db"       # a SQLite file, or:
//! # url = "postgres://aitokens@db1,db2/aitokens?target_session_attrs=read-write&sslmode=verify-full&sslrootcert=db-ca.pem"
//! # password_file = "pg-password"  # the PostgreSQL password (never in the url)
//! # outage_grace_secs = 0         # resolve from cache this long while PostgreSQL is unreachable
//! # pool_size = 16                # PostgreSQL connections per replica (plus one that LISTENs)
//! # notifications = true          # LISTEN for other replicas' changes (false behind PgBouncer)
//! master_key_file = "master.key"
//!
//! [usage]                    # optional; these are the defaults
//! track = true               # record who resolves what (in memory, flushed in batches)
//! flush_interval_secs = 2    # how often counters and queued audit events are written
//! recent_window_secs = 86400 # a resolve this recent blocks RemoveToken
//!
//! [cache]                    # optional; this is the default
//! max_mib = 512              # memory for sealed rows kept for ResolveToken; 0 turns it off
//!
//! [audit]                    # optional; these are the defaults
//! # jsonl = "audit.jsonl"    # mirror every audit record to this JSON-lines file
//! # anchor = "anchor.jsonl"  # MAC'd checkpoints of the chain, outside the database
//! checkpoint_interval_secs = 10
//! max_unflushed_secs = 30    # longer without a written trail: resolves are refused
//! per_call_resolves = false  # also one JSON line per allowed resolve (needs jsonl)
//! [watch]                    # optional; WatchTokens, these are the defaults
//! heartbeat_ms = 5000        # a stream with nothing to say sends a heartbeat this often
//! max_streams = 10000        # watch streams open at once; more: RESOURCE_EXHAUSTED
//! retain_events = 100000     # events kept for resuming streams (the newest this many ...)
//! retain_secs = 86400        # ... and none older); from before them a stream resyncs
//! poll_ms = 1000             # how often the store is checked for events nobody announced
//! [metrics]                  # optional: plain-HTTP /metrics, /healthz, /readyz
//! listen = "127.0.0.1:9090"
//! [bench]                    # optional; only `aitokens bench` sets it
//! echo = false               # serve the Echo transport-floor RPC (internal listener)
//! ```
//!
//! Relative paths are relative to the directory of the config file. The file
//! holds paths only, never secrets themselves.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use zeroize::Zeroizing;

use crate::{
    crypto::KeySource,
    error::{Error, Result},
    store::StoreLocation,
};

/// Everything `serve` needs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The policy file (TOML): who may administer and resolve what.
    pub policy: PathBuf,
    /// Lock all memory (mlockall) so keys never reach swap; a warning, not a
    /// failure, where the system does not permit it.
    #[serde(default)]
    pub lock_memory: bool,
    /// Seconds between checks of the listeners' TLS files (certificate, key,
    /// client CA, CRLs); a changed file is reloaded without dropping
    /// connections. SIGHUP reloads at once.
    #[serde(default = "default_tls_reload_interval_secs")]
    pub tls_reload_interval_secs: u64,
    /// The public admin listener.
    pub admin: ListenerConfig,
    /// The internal-only listener that serves ResolveToken.
    pub internal: ListenerConfig,
    /// Database and root key.
    pub store: StoreConfig,
    /// Usage tracking.
    #[serde(default)]
    pub usage: UsageConfig,
    /// The resolve path's cache of sealed rows.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Audit trail options.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The change feed (WatchTokens).
    #[serde(default, skip_serializing_if = "WatchConfig::is_default")]
    pub watch: WatchConfig,
    /// The observability listener; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// Benchmark support; everything in it is off unless a config turns it on.
    #[serde(default, skip_serializing_if = "BenchConfig::is_off")]
    pub bench: BenchConfig,
}

/// Usage tracking settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Record resolves per (token, caller) in memory.
    pub track: bool,
    /// Seconds between batch writes of counters and queued audit events.
    pub flush_interval_secs: u64,
    /// Seconds within which a resolve counts as recent.
    pub recent_window_secs: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            track: true,
            flush_interval_secs: 2,
            recent_window_secs: 24 * 60 * 60,
        }
    }
}

/// WatchTokens: heartbeats, the stream limit, the retained window.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Milliseconds without a message after which a stream sends a heartbeat.
    pub heartbeat_ms: u64,
    /// Watch streams this server holds at once.
    pub max_streams: usize,
    /// Events retained for resuming streams: at most this many ...
    pub retain_events: u64,
    /// ... and none older than this many seconds.
    pub retain_secs: u64,
    /// Milliseconds between looks at the store for events nobody announced
    /// (changes by the CLI beside a SQLite server, a lost notification).
    pub poll_ms: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        let d = crate::tokens::WatchSettings::default();
        Self {
            heartbeat_ms: d.heartbeat.as_millis() as u64,
            max_streams: d.max_streams,
            retain_events: d.retain_events,
            retain_secs: d.retain_age.as_secs(),
            poll_ms: d.poll.as_millis() as u64,
        }
    }
}

impl WatchConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The settings the domain takes (zero durations raised to 1 ms).
    pub fn settings(&self) -> crate::tokens::WatchSettings {
        use std::time::Duration;
        crate::tokens::WatchSettings {
            heartbeat: Duration::from_millis(self.heartbeat_ms.max(1)),
            max_streams: self.max_streams,
            retain_events: self.retain_events,
            retain_age: Duration::from_secs(self.retain_secs),
            poll: Duration::from_millis(self.poll_ms.max(1)),
        }
    }
}

/// The resolve path's in-memory copy of sealed rows (never plaintext).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Memory it may take, in MiB; 0 reads every resolve from the database.
    pub max_mib: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_mib: crate::tokens::DEFAULT_CACHE_BYTES >> 20,
        }
    }
}

impl CacheConfig {
    /// The budget in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_mib.saturating_mul(1 << 20)
    }
}

/// Audit trail settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Optional JSON-lines file that mirrors every audit record (and the
    /// chain's checkpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jsonl: Option<PathBuf>,
    /// Optional anchor file: MAC'd checkpoints of the chain, kept outside
    /// the database (`aitokens audit verify --anchor FILE` checks them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<PathBuf>,
    /// Seconds between checkpoints (written only when the trail grew).
    pub checkpoint_interval_secs: u64,
    /// Longest the trail may go without a successful write before
    /// ResolveToken refuses (UNAVAILABLE, `AUDIT_UNAVAILABLE`): values do
    /// not leave unaccounted.
    pub max_unflushed_secs: u64,
    /// Also write every allowed resolve to the JSON-lines file at once, one
    /// line each (the trail holds them as exact aggregates either way).
    pub per_call_resolves: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            jsonl: None,
            anchor: None,
            checkpoint_interval_secs: 10,
            max_unflushed_secs: 30,
            per_call_resolves: false,
        }
    }
}

/// The plain-HTTP observability listener (`/metrics`, `/healthz`, `/readyz`).
/// It serves no token data; bind it where only monitoring reaches it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to bind.
    pub listen: SocketAddr,
}

/// Benchmark support (`aitokens bench` writes a config that turns it on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BenchConfig {
    /// Serve `aitokens.bench.v1.Echo` on the internal listener: a trivial RPC
    /// behind the same mutual TLS, the transport floor ResolveToken is
    /// measured against. It carries no secret. Off by default.
    #[serde(default)]
    pub echo: bool,
}

impl BenchConfig {
    fn is_off(&self) -> bool {
        self == &Self::default()
    }
}

/// One TLS listener. Clients must present a certificate that chains to `client_ca`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM) for the client CA. When set, a
    /// client certificate is refused if revoked, if its status is unknown,
    /// or if the CRL has expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<PathBuf>,
}

fn default_tls_reload_interval_secs() -> u64 {
    10
}

/// Where tokens and their keys live.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite database file; created (mode 0600) if absent. Either this
    /// or `url`.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub database: PathBuf,
    /// Or a PostgreSQL database, `postgres://USER@HOST[:PORT][,HOST2...]/DB`
    /// (with `?target_session_attrs=read-write` for several hosts, and
    /// `sslmode=verify-full&sslrootcert=CA.pem` for TLS). Never a password:
    /// see `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The PostgreSQL password, the first line of this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// How long a replica that cannot reach PostgreSQL keeps resolving from
    /// its cache, in seconds. 0 (the default) refuses at once: during a
    /// grace, a removal or disable made on another replica is not seen.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outage_grace_secs: u64,
    /// PostgreSQL connections per replica (default 16); one more LISTENs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
    /// Whether a replica LISTENs for the changes other replicas make, to
    /// drop cached rows within milliseconds (default true). Off (behind a
    /// transaction-mode pooler such as PgBouncer, where LISTEN does not
    /// work), changes are seen by the generation poll, within 250 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<bool>,
    /// Root key source (exactly one of the four): a key file, 32 bytes raw
    /// or base64, mode 0600 or stricter...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
    /// ...or an environment variable holding the key in base64, read once at
    /// start and then removed from the process environment...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_env: Option<String>,
    /// ...or a file whose first line is a passphrase (Argon2id-stretched)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<PathBuf>,
    /// ...or a passphrase read from `"stdin"` or typed at a `"prompt"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<PassphraseInput>,
}

/// Where an interactive passphrase comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PassphraseInput {
    /// The first line of standard input.
    Stdin,
    /// A no-echo prompt on the terminal.
    Prompt,
}

fn path_is_empty(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StoreConfig {
    /// Where the store is: the SQLite `database` or the PostgreSQL `url`
    /// (exactly one).
    pub fn location(&self) -> Result<StoreLocation> {
        match (path_is_empty(&self.database), &self.url) {
            (false, None) => Ok(StoreLocation::Sqlite(self.database.clone())),
            (true, Some(url)) => {
                let mut location = StoreLocation::parse(url, self.password_file.as_deref())?;
                if let StoreLocation::Postgres(target) = &mut location {
                    if let Some(size) = self.pool_size {
                        if size == 0 {
                            return Err(Error::config(
                                "config [store] pool_size must be at least 1",
                            ));
                        }
                        target.set_pool_size(size);
                    }
                    if let Some(listen) = self.notifications {
                        target.set_notifications(listen);
                    }
                }
                Ok(location)
            }
            _ => Err(Error::config(
                "config [store]: set exactly one of database (a SQLite file) and url (postgres://...)",
            )),
        }
    }

    /// The configured root key source; exactly one must be set. An
    /// environment variable is read here (callers that can should then
    /// remove it from the environment).
    pub fn key_source(&self) -> Result<KeySource> {
        let sources = [
            self.master_key_file.is_some(),
            self.master_key_env.is_some(),
            self.passphrase_file.is_some(),
            self.passphrase.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            return Err(Error::config(
                "config [store]: set exactly one of master_key_file, master_key_env, passphrase_file, passphrase",
            ));
        }
        Ok(
            match (
                &self.master_key_file,
                &self.master_key_env,
                &self.passphrase_file,
                self.passphrase,
            ) {
                (Some(path), ..) => KeySource::File(path.clone()),
                (_, Some(name), ..) => KeySource::Env {
                    name: name.clone(),
                    value: std::env::var(name).ok().map(Zeroizing::new),
                },
                (_, _, Some(path), _) => KeySource::PassphraseFile(path.clone()),
                (.., Some(PassphraseInput::Stdin)) => KeySource::PassphraseStdin,
                _ => KeySource::PassphrasePrompt,
            },
        )
    }
}

impl Config {
    /// Reads a config file and resolves its relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("reading config {}: {e}", path.display())))?;
        let mut config: Self = toml::from_str(&text)
            .map_err(|e| Error::config(format!("config {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.rebase(base);
        if config.usage.flush_interval_secs == 0 {
            return Err(Error::config(format!(
                "config {}: usage.flush_interval_secs must be at least 1",
                path.display()
            )));
        }
        if config.audit.per_call_resolves && config.audit.jsonl.is_none() {
            return Err(Error::config(format!(
                "config {}: audit.per_call_resolves needs audit.jsonl (the file they go to)",
                path.display()
            )));
        }
        if config.audit.checkpoint_interval_secs == 0 || config.audit.max_unflushed_secs == 0 {
            return Err(Error::config(format!(
                "config {}: audit.checkpoint_interval_secs and audit.max_unflushed_secs must be at least 1",
                path.display()
            )));
        }
        Ok(config)
    }

    /// Makes every relative path relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        let paths = [
            &mut self.policy,
            &mut self.admin.cert,
            &mut self.admin.key,
            &mut self.admin.client_ca,
            &mut self.internal.cert,
            &mut self.internal.key,
            &mut self.internal.client_ca,
        ];
        let crls = self
            .admin
            .crls
            .iter_mut()
            .chain(self.internal.crls.iter_mut());
        let database = (!path_is_empty(&self.store.database)).then_some(&mut self.store.database);
        let optional = [
            database,
            self.store.password_file.as_mut(),
            self.audit.jsonl.as_mut(),
            self.audit.anchor.as_mut(),
            self.store.master_key_file.as_mut(),
            self.store.passphrase_file.as_mut(),
        ];
        for path in paths
            .into_iter()
            .chain(crls)
            .chain(optional.into_iter().flatten())
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}
