//! `aitokens dev`: the embedded default. Prepares a data folder with a fresh
//! CA, server and client certificates, a master key, a policy and a config,
//! reusing whatever an earlier run left (a master key is never overwritten).

use std::{
    fs,
    io::Write,
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

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

    if PKI_FILES.iter().any(|f| !dir.join(f).exists()) {
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
        lock_memory: false,
        metrics: metrics.map(|listen| MetricsConfig { listen }),
        bench: BenchConfig::default(),
    };
    let text = toml::to_string(&config).map_err(|e| Error::Internal(format!("config: {e}")))?;
    let config_path = dir.join("config.toml");
    let header = "# Written by `aitokens dev`; `aitokens serve --config` reads the same format.\n";
    replace_file(&config_path, format!("{header}{text}").as_bytes())?;
    config.rebase(dir);
    Ok(DevSetup { config, created })
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
