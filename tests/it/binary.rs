//! The `aitokens` binary itself: `aitokens dev` end to end, with trace-level
//! logs captured and searched for every value it handled.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aitokens::api::pb::{
    ResolveTokenRequest, token_admin_client::TokenAdminClient,
    token_resolver_client::TokenResolverClient,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::{admin::contains, common::create_request};

struct Dev {
    child: Child,
    /// Drains stderr while the server runs (a full pipe would block it).
    stderr: std::thread::JoinHandle<String>,
    admin: SocketAddr,
    internal: SocketAddr,
}

/// Starts `aitokens dev` on ephemeral ports and reads the addresses it prints.
fn start_dev(dir: &std::path::Path) -> Dev {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aitokens"))
        .args(["dev", "--dir"])
        .arg(dir)
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--internal-addr",
            "127.0.0.1:0",
        ])
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
    let mut lines = stdout.lines();
    for line in lines.by_ref() {
        let line = line.expect("stdout line");
        if line.contains("listener (aitokens.v1.") {
            addrs.extend(
                line.split_whitespace()
                    .filter_map(|w| w.parse::<SocketAddr>().ok()),
            );
        }
        if addrs.len() == 2 {
            break;
        }
    }
    assert_eq!(addrs.len(), 2, "aitokens dev did not print both addresses");
    // Keep draining stdout: the banner goes on after the addresses, and a
    // closed pipe must not be what the server runs into.
    std::thread::spawn(move || for _ in lines {});
    Dev {
        child,
        stderr,
        admin: addrs[0],
        internal: addrs[1],
    }
}

async fn channel(dir: &std::path::Path, addr: SocketAddr, who: &str) -> Channel {
    try_channel(dir, addr, who)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn try_channel(
    dir: &std::path::Path,
    addr: SocketAddr,
    who: &str,
) -> Result<Channel, String> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read(&format!("{who}.pem")),
            read(&format!("{who}.key")),
        ))
        .domain_name("localhost");
    let started = std::time::Instant::now();
    Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .map_err(|e| {
            format!(
                "connect to {addr} failed after {:?}: {e:?}",
                started.elapsed()
            )
        })
}

/// Sends SIGTERM and waits (bounded) for a clean exit; returns stderr.
async fn stop(mut dev: Dev) -> String {
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
    let _heavy = crate::common::HEAVY.lock().await;

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
        "aitokens.db",
    ] {
        assert!(dir.path().join(file).exists(), "{file} missing");
    }

    let canaries: Vec<String> = (0..50)
        .map(|i| format!("sk-logcanary-{i:03}-c0ffee"))
        .collect();
    let first = try_channel(dir.path(), dev.admin, "admin").await;
    let first = match first {
        Ok(channel) => channel,
        Err(e) => {
            let logs = stop(dev).await;
            let related: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("INFO") || l.contains("rror"))
                .take(60)
                .collect();
            panic!("{e}\n{}", related.join("\n"));
        }
    };
    let mut admin = TokenAdminClient::new(first);
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
