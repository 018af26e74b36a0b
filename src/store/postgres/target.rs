//! Where a PostgreSQL store is and how to reach it: a `postgres://` URL
//! (several hosts and `target_session_attrs=read-write` allowed), TLS with
//! `sslmode=verify-full` (rustls, verifying the server's name) or
//! `sslmode=disable`, and the password from a file, never from the URL
//! (which ends up in argv, configs and logs).

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use rustls::{RootCertStore, pki_types::CertificateDer, pki_types::pem::PemObject};
use tokio_postgres::{
    Client, Config, NoTls,
    config::{Host, SslMode},
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// Connections in each replica's pool unless configured.
const DEFAULT_POOL_SIZE: usize = 16;

/// The system's CA bundle, used for `verify-full` without `sslrootcert`.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A parsed, checked connection target.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    shown: String,
    pool_size: usize,
    notifications: bool,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgTarget {
    /// Parses `url` (a `postgres://` URL without a password) and reads the
    /// password from `password_file` (its first line), if given.
    pub fn parse(url: &str, password_file: Option<&Path>) -> Result<Self> {
        let bad = |why: &str| Error::config(format!("store url: {why}"));
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("must start with postgres://"));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (mut sslmode, mut rootcert, mut kept) = (None, None, Vec::new());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", mode)) => sslmode = Some(mode.to_owned()),
                Some(("sslrootcert", path)) => rootcert = Some(path.to_owned()),
                Some(("password", _)) => {
                    return Err(bad(
                        "has a password: put it in a file and name it with password_file \
                         (a URL ends up in argv, configs and logs)",
                    ));
                }
                _ => kept.push(pair),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config =
            Config::from_str(&rebuilt).map_err(|e| bad(&format!("cannot be parsed ({e})")))?;
        if config.get_password().is_some() {
            return Err(bad(
                "has a password: put it in a file and name it with password_file \
                 (a URL ends up in argv, configs and logs)",
            ));
        }
        if let Some(path) = password_file {
            config.password(read_password(path)?);
        }
        config
            .application_name("aitokens")
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let tls = match sslmode.as_deref() {
            Some("verify-full") => {
                config.ssl_mode(SslMode::Require);
                Some(tls_connector(rootcert.as_deref())?)
            }
            Some("disable") => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            None if all_local(&config) => None,
            None => {
                return Err(bad(
                    "set sslmode=verify-full (or sslmode=disable, knowingly) for a database \
                     that is not on this host",
                ));
            }
            Some(other) => {
                return Err(bad(&format!(
                    "sslmode={other} is not supported: use verify-full (TLS, server name \
                     checked) or disable"
                )));
            }
        };
        let shown = shown(&config, tls.is_some());
        Ok(Self {
            config,
            tls,
            shown,
            pool_size: DEFAULT_POOL_SIZE,
            notifications: true,
        })
    }

    /// Connections in a replica's pool (default 16).
    pub fn set_pool_size(&mut self, size: usize) {
        self.pool_size = size.max(1);
    }

    /// Whether a replica LISTENs for changes (default true).
    pub fn set_notifications(&mut self, listen: bool) {
        self.notifications = listen;
    }

    pub(super) fn pool_size(&self) -> usize {
        self.pool_size
    }

    pub(super) fn notifications(&self) -> bool {
        self.notifications
    }

    /// The target for messages: hosts, database and user, no secret.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The driver's config.
    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    /// The TLS connector, or `None` for `sslmode=disable`.
    pub(super) fn tls(&self) -> Option<&MakeRustlsConnect> {
        self.tls.as_ref()
    }

    /// One connection outside any pool (migrations, LISTEN), its driver
    /// task spawned.
    pub async fn connect_one(&self) -> Result<Client> {
        let (client, task) = self.connect_raw().await?;
        tokio::spawn(task);
        Ok(client)
    }

    /// One connection and the future that drives it (the caller spawns it,
    /// or polls it for notifications).
    pub(super) async fn connect_raw(
        &self,
    ) -> Result<(
        Client,
        std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    )> {
        let unreachable = |e: tokio_postgres::Error| {
            Error::Storage(format!(
                "connecting to PostgreSQL at {}: {}",
                self.shown,
                super::describe(&e)
            ))
        };
        match &self.tls {
            Some(tls) => {
                let (client, conn) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(unreachable)?;
                Ok((client, Box::pin(async move { drop(conn.await) })))
            }
            None => {
                let (client, conn) = self.config.connect(NoTls).await.map_err(unreachable)?;
                Ok((client, Box::pin(async move { drop(conn.await) })))
            }
        }
    }
}

fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("PostgreSQL password file {}: {e}", path.display())))?;
    let password = text.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() {
        return Err(Error::config(format!(
            "PostgreSQL password file {} is empty",
            path.display()
        )));
    }
    Ok(password)
}

fn tls_connector(rootcert: Option<&str>) -> Result<MakeRustlsConnect> {
    let path = rootcert.unwrap_or(SYSTEM_ROOTS);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|e| Error::config(format!("store url: sslrootcert {path}: {e}")))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::config(format!(
            "store url: sslrootcert {path} holds no usable CA certificate"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("store TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Whether every host is this machine (loopback or a Unix socket).
fn all_local(config: &Config) -> bool {
    config.get_hosts().iter().all(|host| match host {
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Host::Unix(_) => true,
    })
}

fn shown(config: &Config, tls: bool) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            Host::Tcp(name) => format!("{name}:{port}"),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}{}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        config.get_dbname().unwrap_or(""),
        if tls { " (TLS)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_urls_and_remote_hosts_need_tls() {
        for (url, expect) in [
            ("postgres://u:secret@127.0.0.1/db", "has a password"),
            (
                "postgres://u@127.0.0.1/db?password=secret",
                "has a password",
            ),
            ("mysql://u@h/db", "must start with postgres://"),
            ("postgres://u@db.example.com/db", "set sslmode=verify-full"),
            (
                "postgres://u@db.example.com/db?sslmode=require",
                "sslmode=require is not supported",
            ),
        ] {
            let err = PgTarget::parse(url, None).expect_err(url).to_string();
            assert!(err.contains(expect), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: {err}");
        }
        let local = PgTarget::parse(
            "postgres://postgres@127.0.0.1:5432,127.0.0.1:5433/aitokens?target_session_attrs=read-write",
            None,
        )
        .expect("two local hosts");
        assert_eq!(
            local.shown(),
            "postgres://postgres@127.0.0.1:5432,127.0.0.1:5433/aitokens"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        let with = PgTarget::parse("postgres://u@127.0.0.1/db", Some(&file)).expect("parse");
        assert_eq!(with.config().get_password(), Some(&b"s3cret"[..]));
        assert!(!format!("{with:?}").contains("s3cret"));
    }
}
