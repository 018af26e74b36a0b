//! The `aitokens` binary itself: `aitokens dev` end to end, with trace-level
//! logs captured and searched for every value it handled.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use aitokens::api::pb::{
    ResolveTokenRequest, token_admin_client::TokenAdminClient,
    token_resolver_client::TokenResolverClient,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::{
    admin::contains,
    backend::{self, TestStore},
    common::create_request,
};

pub struct Dev {
    pub child: Child,
    /// Drains stderr while the server runs (a full pipe would block it).
    stderr: std::thread::JoinHandle<String>,
    pub admin: SocketAddr,
    pub internal: SocketAddr,
    /// The plain-HTTP metrics listener.
    pub metrics: SocketAddr,
}

/// Starts `aitokens dev` on ephemeral ports and reads the addresses it prints.
pub fn start_dev(dir: &std::path::Path) -> Dev {
    start_dev_with(dir, &[])
}

/// [`start_dev`] with more command-line arguments.
pub fn start_dev_with(dir: &std::path::Path, extra: &[&str]) -> Dev {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aitokens"));
    command.arg("dev");
    if let Some(store) = dev_store(dir) {
        command.args(["--store", &store]);
    }
    let mut child = command
        .arg("--dir")
        .arg(dir)
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--internal-addr",
            "127.0.0.1:0",
            "--metrics-port",
            "0",
        ])
        .args(extra)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aitokens dev");
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        stderr_pipe.read_to_string(&mut text).expect("read stderr");
        text
    });
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut addrs = Vec::new();
    let mut metrics = None;
    for line in stdout.lines() {
        let line = line.expect("stdout line");
        if line.contains("listener (aitokens.v1.") {
            addrs.extend(
                line.split_whitespace()
                    .filter_map(|w| w.parse::<SocketAddr>().ok()),
            );
        }
        if let Some(url) = line.trim().strip_prefix("metrics  http://") {
            metrics = url.split('/').next().and_then(|a| a.parse().ok());
        }
        if addrs.len() == 2 && metrics.is_some() {
            break;
        }
    }
    assert_eq!(addrs.len(), 2, "aitokens dev did not print both addresses");
    Dev {
        child,
        stderr,
        admin: addrs[0],
        internal: addrs[1],
        metrics: metrics.expect("aitokens dev printed its metrics address"),
    }
}

/// The store `aitokens dev --dir DIR` uses in this run: the folder's
/// SQLite file, or under PostgreSQL one scratch database per folder, kept
/// for the rest of the run (a second start over the same folder finds its
/// data).
pub fn dev_test_store(dir: &std::path::Path) -> TestStore {
    static STORES: LazyLock<Mutex<HashMap<PathBuf, TestStore>>> = LazyLock::new(Default::default);
    let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    stores
        .entry(dir.to_owned())
        .or_insert_with(|| TestStore::new_for(dir))
        .clone()
}

/// The `--store` to give `aitokens dev --dir DIR`, if not its default.
fn dev_store(dir: &std::path::Path) -> Option<String> {
    backend::postgres().then(|| dev_test_store(dir).spec())
}

pub async fn channel(dir: &std::path::Path, addr: SocketAddr, who: &str) -> Channel {
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
        .connect()
        .await
        .expect("connect")
}

/// Sends SIGTERM and waits (bounded) for a clean exit; returns stderr.
pub async fn stop(mut dev: Dev) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &dev.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = dev.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "aitokens dev did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = dev.stderr.join().expect("stderr reader");
    assert!(exit.success(), "exit {exit:?}\n{stderr}");
    stderr
}

#[tokio::test]
async fn dev_serves_reuses_its_folder_and_never_logs_a_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = start_dev(dir.path());
    let master_key = std::fs::read(dir.path().join("master.key")).expect("master key written");
    for file in [
        "ca.pem",
        "server.pem",
        "server.key",
        "admin.pem",
        "admin.key",
        "agent.pem",
        "agent.key",
        "policy.toml",
        "config.toml",
    ] {
        assert!(dir.path().join(file).exists(), "{file} missing");
    }
    assert_eq!(
        dir.path().join("aitokens.db").exists(),
        !backend::postgres(),
        "the data lives in the folder's SQLite file, or in PostgreSQL only"
    );

    let canaries: Vec<String> = (0..50)
        .map(|i| format!("sk-logcanary-{i:03}-c0ffee"))
        .collect();
    let mut admin = TokenAdminClient::new(channel(dir.path(), dev.admin, "admin").await);
    let mut resolver = TokenResolverClient::new(channel(dir.path(), dev.internal, "agent").await);
    for (i, value) in canaries.iter().enumerate() {
        admin
            .create_token(create_request("acme", &format!("t{i}"), value))
            .await
            .expect("create");
        let got = resolver
            .resolve_token(ResolveTokenRequest {
                name: format!("tenants/acme/tokens/t{i}"),
            })
            .await
            .expect("resolve");
        assert_eq!(&got.get_ref().value, value);
    }
    // Error paths that see a value: duplicate id, bad id, bad display name.
    admin
        .create_token(create_request("acme", "t0", &canaries[0]))
        .await
        .expect_err("duplicate");
    admin
        .create_token(create_request("acme", "Bad Id", &canaries[1]))
        .await
        .expect_err("bad id");
    let mut no_name = create_request("acme", "t-x", &canaries[2]);
    no_name.token = None;
    admin
        .create_token(no_name)
        .await
        .expect_err("no display name");
    // A denied resolve (admin identity on the internal listener).
    let mut denied = TokenResolverClient::new(channel(dir.path(), dev.internal, "admin").await);
    denied
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/t3".into(),
        })
        .await
        .expect_err("denied");
    drop((admin, resolver, denied));

    let logs = stop(dev).await;
    assert!(logs.contains("TRACE"), "trace logging was not on");
    assert!(logs.contains("resolve denied"), "the denial was not logged");
    for value in &canaries {
        for form in [
            value.clone(),
            STANDARD.encode(value),
            value.bytes().map(|b| format!("{b:02x}")).collect(),
        ] {
            assert!(
                !contains(logs.as_bytes(), form.as_bytes()),
                "a value reached the logs"
            );
        }
    }

    // A second run reuses the folder: same master key, tokens still there.
    let dev = start_dev(dir.path());
    assert_eq!(
        std::fs::read(dir.path().join("master.key")).expect("key"),
        master_key
    );
    let mut resolver = TokenResolverClient::new(channel(dir.path(), dev.internal, "agent").await);
    let got = resolver
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/t7".into(),
        })
        .await
        .expect("resolve after restart");
    assert_eq!(got.get_ref().value, canaries[7]);
    drop(resolver);
    stop(dev).await;
}
