//! `aitokens dev`: the embedded default. Prepares a data folder with a fresh
//! CA, server and client certificates, a master key, a policy and a config,
//! reusing whatever an earlier run left (a master key is never overwritten).
//!
//! It is for one machine: its policy lets its certificates do everything,
//! and its keys sit unencrypted in the folder. So it listens on loopback
//! only unless told `--insecure-allow-remote`, and its certificates are
//! short-lived ([`crate::pki::LEAF_VALIDITY`]): a start that finds one
//! missing, unreadable, or ending within [`RENEW_BEFORE`] issues the whole
//! set again from a new CA (the dev CA's key is never kept). The master key
//! and the database are never touched by that.

use std::{
    fs,
    io::Write,
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use x509_parser::pem::parse_x509_pem;

use crate::{
    config::{AuditConfig, BenchConfig, Config, ListenerConfig, MetricsConfig, StoreConfig},
    crypto::RootKey,
    error::{Error, Result},
    pki::Ca,
};

/// The admin client identity `aitokens dev` issues (`admin.pem`).
pub const ADMIN_IDENTITY: &str = "spiffe://aitokens.dev/admin";
/// The resolver client identity `aitokens dev` issues (`agent.pem`).
pub const AGENT_IDENTITY: &str = "spiffe://aitokens.dev/agent";

/// A start issues new dev certificates when one ends sooner than this.
pub const RENEW_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);

const CERT_FILES: [&str; 4] = ["ca.pem", "server.pem", "admin.pem", "agent.pem"];

const PKI_FILES: [&str; 7] = [
    "ca.pem",
    "server.pem",
    "server.key",
    "admin.pem",
    "admin.key",
    "agent.pem",
    "agent.key",
];

const POLICY: &str = r#"# aitokens dev policy: who may do what. Anything not granted is denied.
# Identities are certificate SANs: a URI SAN (e.g. a SPIFFE id) or dns:NAME.

[[admin]]
identity = "spiffe://aitokens.dev/admin"
tenants = ["*"]

[[resolver]]
identity = "spiffe://aitokens.dev/agent"
tenants = ["*"]
tokens = ["*"]

[[key_admin]]
identity = "spiffe://aitokens.dev/admin"
"#;

/// What `prepare` found and made.
#[derive(Debug)]
pub struct DevSetup {
    /// The config to serve with (paths absolute or relative to the cwd).
    pub config: Config,
    /// Files created by this run (empty when everything was reused).
    pub created: Vec<PathBuf>,
}

/// Makes sure `dir` holds everything `aitokens dev` needs and returns the
/// config (with an observability listener on `metrics`, if given).
pub fn prepare(
    dir: &Path,
    admin: SocketAddr,
    internal: SocketAddr,
    metrics: Option<SocketAddr>,
) -> Result<DevSetup> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::file(format!("creating {}: {e}", dir.display())))?;
    let mut created = Vec::new();

    if let Some(why) = pki_to_renew(dir, SystemTime::now()) {
        tracing::info!(reason = %why, "issuing dev certificates (valid 30 days)");
        write_pki(dir)?;
        created.extend(PKI_FILES.iter().map(|f| dir.join(f)));
    }
    let master_key = dir.join("master.key");
    if !master_key.exists() {
        RootKey::create_file(&master_key)?;
        created.push(master_key);
    }
    let policy = dir.join("policy.toml");
    if !policy.exists() {
        write_file(&policy, POLICY.as_bytes(), 0o644)?;
        created.push(policy);
    }

    let listener = |listen, client_ca: &str| ListenerConfig {
        listen,
        cert: "server.pem".into(),
        key: "server.key".into(),
        client_ca: client_ca.into(),
        crls: Vec::new(),
    };
    let mut config = Config {
        policy: "policy.toml".into(),
        tls_reload_interval_secs: 10,
        admin: listener(admin, "ca.pem"),
        internal: listener(internal, "ca.pem"),
        store: StoreConfig {
            database: "aitokens.db".into(),
            url: None,
            password_file: None,
            outage_grace_secs: 0,
            pool_size: None,
            notifications: None,
            master_key_file: Some("master.key".into()),
            master_key_env: None,
            passphrase_file: None,
            passphrase: None,
        },
        usage: Default::default(),
        cache: Default::default(),
        audit: AuditConfig {
            anchor: Some("audit-anchor.jsonl".into()),
            ..AuditConfig::default()
        },
        watch: Default::default(),
        lock_memory: false,
        metrics: metrics.map(|listen| MetricsConfig { listen }),
        bench: BenchConfig::default(),
    };
    save_config(dir, &config)?;
    config.rebase(dir);
    Ok(DevSetup { config, created })
}

/// Writes `config` as the folder's `config.toml` (what `aitokens serve
/// --config` reads).
pub fn save_config(dir: &Path, config: &Config) -> Result<()> {
    let text = toml::to_string(config).map_err(|e| Error::Internal(format!("config: {e}")))?;
    let header = "# Written by `aitokens dev`; `aitokens serve --config` reads the same format.\n";
    replace_file(
        &dir.join("config.toml"),
        format!("{header}{text}").as_bytes(),
    )
}

/// Checks that the dev listeners stay on this machine: an address that is
/// not loopback is refused, naming its flag, unless `insecure_allow_remote`;
/// then the warning to show loudly is returned.
pub fn check_listen_addresses(
    admin: SocketAddr,
    internal: SocketAddr,
    insecure_allow_remote: bool,
) -> Result<Option<String>> {
    let remote: Vec<String> = [("--admin-addr", admin), ("--internal-addr", internal)]
        .iter()
        .filter(|(_, addr)| !addr.ip().is_loopback())
        .map(|(flag, addr)| format!("{flag} {addr}"))
        .collect();
    match (remote.is_empty(), insecure_allow_remote) {
        (true, _) => Ok(None),
        (false, false) => Err(Error::config(format!(
            "{} is not a loopback address. aitokens dev lets its dev certificates do \
             everything and keeps its keys unencrypted in its folder, so it listens on this \
             machine only (127.0.0.1 or ::1). For a server others reach, run aitokens serve \
             --config with your own PKI and policy; to expose this one anyway, add \
             --insecure-allow-remote.",
            remote.join(" and ")
        ))),
        (false, true) => Ok(Some(format!(
            "WARNING: --insecure-allow-remote: aitokens dev listens beyond this machine \
             ({}). Anyone who reaches it with a certificate from its folder may administer and \
             resolve every token; its CA-issued client keys and master key sit unencrypted in \
             that folder. Do not use this for anything but throwaway test data.",
            remote.join(", ")
        ))),
    }
}

/// Why the dev certificates must be issued again at `now` (one missing,
/// unreadable, or ending within [`RENEW_BEFORE`]), or `None`.
fn pki_to_renew(dir: &Path, now: SystemTime) -> Option<String> {
    if let Some(missing) = PKI_FILES.iter().find(|f| !dir.join(f).exists()) {
        return Some(format!("{missing} is missing"));
    }
    let horizon = now
        .checked_add(RENEW_BEFORE)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    CERT_FILES.iter().find_map(|name| {
        let Ok(pem) = fs::read(dir.join(name)) else {
            return Some(format!("{name} cannot be read"));
        };
        let not_after = parse_x509_pem(&pem)
            .ok()
            .and_then(|(_, pem)| Some(pem.parse_x509().ok()?.validity().not_after.timestamp()));
        match not_after {
            None => Some(format!("{name} is not a readable certificate")),
            Some(end) if end < horizon => Some(format!("{name} ends within 7 days")),
            Some(_) => None,
        }
    })
}

fn write_pki(dir: &Path) -> Result<()> {
    let ca = Ca::generate("aitokens dev CA")?;
    let server = ca.issue_server(&["localhost", "127.0.0.1", "::1"])?;
    let admin = ca.issue_client(ADMIN_IDENTITY)?;
    let agent = ca.issue_client(AGENT_IDENTITY)?;
    // Leaf certificates first, CA last: a crash midway leaves ca.pem absent,
    // so the next run regenerates the whole set.
    let _ = fs::remove_file(dir.join("ca.pem"));
    for (name, issued) in [("server", &server), ("admin", &admin), ("agent", &agent)] {
        replace_file(&dir.join(format!("{name}.pem")), issued.cert_pem.as_bytes())?;
        replace_file(&dir.join(format!("{name}.key")), issued.key_pem.as_bytes())?;
    }
    replace_file(&dir.join("ca.pem"), ca.cert_pem().as_bytes())
}

/// Writes a new file with `mode`; fails if it exists.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::file(format!("creating {}: {e}", path.display())))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::file(format!("writing {}: {e}", path.display())))
}

/// Replaces a file atomically (write a 0600 temp file, rename over).
fn replace_file(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_file(&tmp, contents, 0o600)?;
    fs::rename(&tmp, path).map_err(|e| Error::file(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn certificates_are_renewed_within_seven_days_of_their_end_or_when_broken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let any = "127.0.0.1:0".parse().expect("addr");
        prepare(dir.path(), any, any, None).expect("prepare");
        let now = SystemTime::now();
        assert_eq!(pki_to_renew(dir.path(), now), None);
        // Leaves end after 30 days: 22 days on, 8 are left.
        assert_eq!(pki_to_renew(dir.path(), now + 22 * DAY), None);
        // 25 days on, even the CA (31 days) has only 6 left.
        assert_eq!(
            pki_to_renew(dir.path(), now + 25 * DAY).as_deref(),
            Some("ca.pem ends within 7 days")
        );
        fs::write(dir.path().join("admin.pem"), "not a certificate").expect("write");
        assert_eq!(
            pki_to_renew(dir.path(), now).as_deref(),
            Some("admin.pem is not a readable certificate")
        );
        fs::remove_file(dir.path().join("agent.key")).expect("remove");
        assert_eq!(
            pki_to_renew(dir.path(), now).as_deref(),
            Some("agent.key is missing")
        );
    }

    #[test]
    fn only_loopback_listeners_unless_insecure_allow_remote() {
        let local = "127.0.0.1:1".parse().expect("addr");
        let v6 = "[::1]:2".parse().expect("addr");
        let any = "0.0.0.0:3".parse().expect("addr");
        assert_eq!(check_listen_addresses(local, v6, false).expect("ok"), None);
        let err = check_listen_addresses(local, any, false).expect_err("refused");
        assert!(
            err.to_string()
                .starts_with("--internal-addr 0.0.0.0:3 is not a loopback address."),
            "{err}"
        );
        let warning = check_listen_addresses(any, any, true)
            .expect("allowed")
            .expect("a warning");
        assert!(
            warning.contains("(--admin-addr 0.0.0.0:3, --internal-addr 0.0.0.0:3)"),
            "{warning}"
        );
    }
}
