//! The server configuration file (`aitokens serve --config FILE`).
//!
//! ```toml
//! policy = "policy.toml"
//!
//! [admin]
//! listen = "127.0.0.1:50051"
//! cert = "server.pem"        # server certificate chain (PEM)
//! key = "server.key"         # its private key (PEM)
//! client_ca = "ca.pem"       # CA bundle that client certificates must chain to
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

use crate::error::{Error, Result};

/// Everything `serve` needs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The policy file (TOML): who may administer and resolve what.
    pub policy: PathBuf,
    /// The public admin listener.
    pub admin: ListenerConfig,
    /// The internal-only listener that serves ResolveToken.
    pub internal: ListenerConfig,
    /// Database and root key.
    pub store: StoreConfig,
    /// Benchmark support; everything in it is off unless a config turns it on.
    #[serde(default, skip_serializing_if = "BenchConfig::is_off")]
    pub bench: BenchConfig,
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
        for path in paths {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}
