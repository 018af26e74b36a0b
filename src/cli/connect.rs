//! Where the client commands connect, and with which certificate.
//!
//! Each setting comes from the first of: a flag, its environment variable, the
//! profile (`--profile`, `AITOKENS_PROFILE`, or `./aitokens-dev/profile.toml`
//! when that exists).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{
    profile::{DEV_PROFILE, Profile},
    report::CliError,
};

/// The profile used when none is named and it exists.
const DEFAULT_PROFILE_DIR: &str = "aitokens-dev";

/// Connection flags shared by every `token` subcommand (listed under their
/// own heading in `--help`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection options")]
pub struct ConnectArgs {
    /// Profile file with addresses and certificate paths [default:
    /// ./aitokens-dev/profile.toml if it exists, as written by `aitokens dev`].
    #[arg(long, env = "AITOKENS_PROFILE", global = true, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Admin listener, host:port (used by create, get, list, rename, remove).
    #[arg(
        long,
        env = "AITOKENS_ADMIN_ADDR",
        global = true,
        value_name = "HOST:PORT"
    )]
    pub admin_addr: Option<String>,
    /// Internal listener, host:port (used by resolve).
    #[arg(
        long,
        env = "AITOKENS_INTERNAL_ADDR",
        global = true,
        value_name = "HOST:PORT"
    )]
    pub internal_addr: Option<String>,
    /// CA certificate (PEM) the server certificate must chain to.
    #[arg(long, env = "AITOKENS_CA", global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) to present [default: the profile's admin
    /// identity, or its resolver identity for `resolve`].
    #[arg(long, env = "AITOKENS_CERT", global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, env = "AITOKENS_KEY", global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// DNS name to verify in the server certificate [default: the host of the address].
    #[arg(long, env = "AITOKENS_SERVER_NAME", global = true, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Seconds to wait for the connection and for each call.
    #[arg(
        long,
        env = "AITOKENS_TIMEOUT",
        global = true,
        default_value_t = 10,
        value_name = "SECONDS"
    )]
    pub timeout: u64,
}

/// Which listener a command talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// TokenAdmin, with the admin identity.
    Admin,
    /// TokenResolver, with the resolver identity.
    Internal,
}

/// Fully resolved settings for one connection.
#[derive(Debug)]
pub struct Target {
    /// `host:port` to dial.
    pub addr: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    server_name: Option<String>,
    timeout: Duration,
}

impl ConnectArgs {
    /// Combines flags, environment and profile into the settings for `surface`.
    pub fn target(&self, surface: Surface) -> Result<Target, CliError> {
        let profile = self.load_profile()?;
        let (addr, addr_flag, identity) = match surface {
            Surface::Admin => (
                self.admin_addr.clone().or(profile.admin_addr),
                "--admin-addr or AITOKENS_ADMIN_ADDR",
                profile.admin,
            ),
            Surface::Internal => (
                self.internal_addr.clone().or(profile.internal_addr),
                "--internal-addr or AITOKENS_INTERNAL_ADDR",
                profile.resolver,
            ),
        };
        let (profile_cert, profile_key) = identity.map(|i| (i.cert, i.key)).unzip();
        let missing = |what: &str, how: &str| {
            CliError::Usage(format!(
                "no {what} configured: set {how}, or run `aitokens dev` in this directory \
                 (it writes ./{DEFAULT_PROFILE_DIR}/{DEV_PROFILE}), or pass --profile FILE"
            ))
        };
        Ok(Target {
            addr: addr.ok_or_else(|| missing("address", addr_flag))?,
            ca: self
                .ca
                .clone()
                .or(profile.ca)
                .ok_or_else(|| missing("CA certificate", "--ca or AITOKENS_CA"))?,
            cert: self
                .cert
                .clone()
                .or(profile_cert)
                .ok_or_else(|| missing("client certificate", "--cert or AITOKENS_CERT"))?,
            key: self
                .key
                .clone()
                .or(profile_key)
                .ok_or_else(|| missing("client key", "--key or AITOKENS_KEY"))?,
            server_name: self.server_name.clone().or(profile.server_name),
            timeout: Duration::from_secs(self.timeout.max(1)),
        })
    }

    fn load_profile(&self) -> Result<Profile, CliError> {
        let path = match &self.profile {
            Some(path) => path.clone(),
            None => {
                let default = Path::new(DEFAULT_PROFILE_DIR).join(DEV_PROFILE);
                if !default.exists() {
                    return Ok(Profile::default());
                }
                Profile::check_implicit(&default).map_err(|e| CliError::Usage(e.to_string()))?;
                eprintln!("aitokens: using profile {}", default.display());
                default
            }
        };
        Profile::load(&path).map_err(|e| CliError::Usage(e.to_string()))
    }
}

impl Target {
    /// Opens a TLS connection presenting the client certificate.
    pub async fn connect(&self) -> Result<Channel, CliError> {
        let read = |path: &Path, what: &'static str| {
            std::fs::read(path)
                .map_err(|e| CliError::Local(format!("{what} {}: {e}", path.display())))
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca, "CA certificate")?))
            .identity(Identity::from_pem(
                read(&self.cert, "client certificate")?,
                read(&self.key, "client key")?,
            ));
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        let connect_error = |e: tonic::transport::Error| CliError::Connect {
            addr: self.addr.clone(),
            detail: error_chain(&e),
        };
        Endpoint::from_shared(format!("https://{}", self.addr))
            .map_err(|_| CliError::Usage(format!("not a host:port address: {}", self.addr)))?
            .tls_config(tls)
            .map_err(connect_error)?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(connect_error)
    }
}

/// An error and its sources on one line (tonic's transport errors say little
/// at the top level).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
