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
//! database = "aitokens.db"
//! master_key_file = "master.key"
//!
//! [metrics]                  # optional: plain-HTTP /metrics, /healthz, /readyz
//! listen = "127.0.0.1:9090"
//! ```
//!
//! Relative paths are relative to the directory of the config file. The file
//! holds paths only, never secrets themselves.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Everything `serve` needs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The policy file (TOML): who may administer and resolve what.
    pub policy: PathBuf,
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
    /// The observability listener; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// The plain-HTTP observability listener (`/metrics`, `/healthz`, `/readyz`).
/// It serves no token data; bind it where only monitoring reaches it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to bind.
    pub listen: SocketAddr,
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
    /// The SQLite database file; created (mode 0600) if absent.
    pub database: PathBuf,
    /// The root key file: 32 bytes, raw or base64, mode 0600 or stricter.
    pub master_key_file: PathBuf,
}

impl Config {
    /// Reads a config file and resolves its relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Startup(format!("reading config {}: {e}", path.display())))?;
        let mut config: Self = toml::from_str(&text)
            .map_err(|e| Error::Startup(format!("config {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.rebase(base);
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
            &mut self.store.database,
            &mut self.store.master_key_file,
        ];
        let crls = self
            .admin
            .crls
            .iter_mut()
            .chain(self.internal.crls.iter_mut());
        for path in paths.into_iter().chain(crls) {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}
