//! `aitokens dev` stays a one-machine tool: loopback addresses only unless
//! told otherwise, short-lived certificates, renewed on start when near
//! their end without touching the master key or the database.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aitokens::{
    api::pb::{ResolveTokenRequest, token_resolver_client::TokenResolverClient},
    pki::Ca,
};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, SanType};
use tonic::transport::Channel;

use crate::{
    binary::{self, start_dev},
    common::create_request,
};

const DAY: i64 = 24 * 3600;
const CERTS: [&str; 4] = ["ca.pem", "server.pem", "admin.pem", "agent.pem"];

fn aitokens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aitokens"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// (not_before, not_after) of the certificate in a PEM file, Unix seconds.
fn validity(path: &Path) -> (i64, i64) {
    let pem = std::fs::read(path).expect("read certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    let cert = pem.parse_x509().expect("certificate");
    let validity = cert.validity();
    (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    )
}

/// Asserts every dev certificate in `dir` is valid from about now for about
/// 30 days (the CA a day longer); returns the earliest end.
fn assert_about_30_days(dir: &Path) -> i64 {
    let now = now();
    let mut earliest = i64::MAX;
    for name in CERTS {
        let (start, end) = validity(&dir.join(name));
        let days = (end - now) as f64 / DAY as f64;
        assert!(
            (29.9..=31.1).contains(&days),
            "{name} is valid {days:.2} more days"
        );
        assert!(
            start <= now && now - start <= 2 * 3600,
            "{name} valid from {start}, now {now}"
        );
        earliest = earliest.min(end);
    }
    earliest
}

/// Runs `aitokens dev` expecting it to exit by itself; one that is still
/// running after 30 s (it served instead of refusing) is killed. The
/// metrics port is 0 unless `addrs` names one.
fn run_dev(dir: &Path, addrs: &[&str]) -> std::process::Output {
    let metrics: &[&str] = match addrs.contains(&"--metrics-port") {
        true => &[],
        false => &["--metrics-port", "0"],
    };
    let mut child = aitokens()
        .args(["dev", "--dir"])
        .arg(dir)
        .args(addrs)
        .args(metrics)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run aitokens dev");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

#[test]
fn dev_refuses_non_loopback_addresses_and_creates_nothing() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("dev");
    for (addrs, named) in [
        (
            [
                "--admin-addr",
                "0.0.0.0:0",
                "--internal-addr",
                "127.0.0.1:0",
            ],
            "--admin-addr 0.0.0.0:0",
        ),
        (
            ["--admin-addr", "127.0.0.1:0", "--internal-addr", "[::]:0"],
            "--internal-addr [::]:0",
        ),
    ] {
        let out = run_dev(&dir, &addrs);
        assert_eq!(out.status.code(), Some(2), "exit code for {named}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = format!(
            "aitokens: error: {named} is not a loopback address. aitokens dev lets its dev \
             certificates do everything and keeps its keys unencrypted in its folder, so it \
             listens on this machine only (127.0.0.1 or ::1). For a server others reach, run \
             aitokens serve --config with your own PKI and policy; to expose this one anyway, \
             add --insecure-allow-remote.\n"
        );
        assert!(stderr.ends_with(&expected), "{stderr}");
        assert!(out.stdout.is_empty());
        assert!(!dir.exists(), "the refused run created {}", dir.display());
    }
}

#[test]
fn insecure_allow_remote_starts_with_a_loud_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = aitokens()
        .args(["dev", "--insecure-allow-remote", "--dir"])
        .arg(dir.path())
        .args([
            "--admin-addr",
            "0.0.0.0:0",
            "--internal-addr",
            "127.0.0.1:0",
        ])
        .args(["--metrics-port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let started = stdout
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("listener (aitokens.v1.TokenResolver)"));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(started && status.success(), "{status:?}\n{stderr}");
    assert!(
        stderr.contains(
            "aitokens: WARNING: --insecure-allow-remote: aitokens dev listens beyond this \
             machine (--admin-addr 0.0.0.0:0)."
        ),
        "{stderr}"
    );
}

/// A second `aitokens dev` (or anything else on its ports) is refused
/// before the data folder is created, naming the flag that moves the port
/// and the likely culprit.
#[test]
fn a_taken_port_names_its_flag_and_creates_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("dev");
    let dir_shown = dir.display();
    let cases = [
        (
            vec!["--metrics-port".to_owned(), port.to_string()],
            format!(
                "aitokens: error: --metrics-port {port}: 127.0.0.1:{port} is already in use, \
                 probably by another `aitokens dev` or by Prometheus (which also defaults to \
                 9090). Stop that program, or choose another port with --metrics-port \
                 (--metrics-port 0 picks a free one). Nothing was started; {dir_shown} was \
                 not created.\n"
            ),
        ),
        (
            vec!["--admin-addr".to_owned(), format!("127.0.0.1:{port}")],
            format!(
                "aitokens: error: --admin-addr 127.0.0.1:{port}: 127.0.0.1:{port} is already \
                 in use, probably by another `aitokens dev` or `aitokens serve`. Stop that \
                 program, or choose another port with --admin-addr (--admin-addr 127.0.0.1:0 \
                 picks a free one). Nothing was started; {dir_shown} was not created.\n"
            ),
        ),
        (
            vec!["--internal-addr".to_owned(), format!("127.0.0.1:{port}")],
            format!(
                "aitokens: error: --internal-addr 127.0.0.1:{port}: 127.0.0.1:{port} is already \
                 in use, probably by another `aitokens dev` or `aitokens serve`. Stop that \
                 program, or choose another port with --internal-addr (--internal-addr \
                 127.0.0.1:0 picks a free one). Nothing was started; {dir_shown} was not \
                 created.\n"
            ),
        ),
    ];
    for (taken_flag, expected) in cases {
        // Every other port free.
        let mut args: Vec<&str> = taken_flag.iter().map(String::as_str).collect();
        for flag in ["--admin-addr", "--internal-addr"] {
            if !args.contains(&flag) {
                args.extend([flag, "127.0.0.1:0"]);
            }
        }
        let out = run_dev(&dir, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.ends_with(&expected), "{stderr}");
        assert!(out.stdout.is_empty());
        assert!(!dir.exists(), "the refused run created {}", dir.display());
    }
    drop(taken);
}

async fn resolver(dir: &Path, dev: &binary::Dev) -> TokenResolverClient<Channel> {
    TokenResolverClient::new(binary::channel(dir, dev.internal, "agent").await)
}

/// A client certificate for the dev agent that ends `days` from now, from
/// a CA of its own (what an old dev folder near its end looks like).
fn expiring_agent_pem(days: u64) -> String {
    let ca = Ca::generate("an older dev CA").expect("ca");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        aitokens::dev::AGENT_IDENTITY.try_into().expect("uri"),
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = (SystemTime::now() - Duration::from_secs(28 * 86_400)).into();
    params.not_after = (SystemTime::now() + Duration::from_secs(days * 86_400)).into();
    ca.issue(params).expect("issue").cert_pem
}

#[tokio::test]
async fn certificates_last_30_days_and_a_start_renews_them_near_their_end_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = start_dev(dir.path());
    assert_about_30_days(dir.path());
    let mut admin = aitokens::api::pb::token_admin_client::TokenAdminClient::new(
        binary::channel(dir.path(), dev.admin, "admin").await,
    );
    admin
        .create_token(create_request("acme", "kept", "sk-dev-renewal-4e1"))
        .await
        .expect("create");
    drop(admin);
    binary::stop(dev).await;
    let read = |name: &str| std::fs::read(dir.path().join(name)).expect("read");
    let store = binary::dev_test_store(dir.path());
    let (master_key, database, ca) = (
        read("master.key"),
        store.fingerprint().await,
        read("ca.pem"),
    );

    // Control: certificates far from their end are kept as they are.
    binary::stop(start_dev(dir.path())).await;
    assert_eq!(read("ca.pem"), ca, "certificates renewed for no reason");

    // An agent certificate two days from its end: the next start issues a
    // new set.
    let expiring = expiring_agent_pem(2);
    std::fs::write(dir.path().join("agent.pem"), &expiring).expect("write");
    let dev = start_dev(dir.path());
    assert_ne!(read("agent.pem"), expiring.as_bytes(), "not renewed");
    assert_ne!(read("ca.pem"), ca, "the set comes from a new CA");
    assert_about_30_days(dir.path());
    // Renewal touched neither the master key nor the database (read now,
    // before the resolve below counts a use in it).
    assert_eq!(read("master.key"), master_key, "the master key changed");
    assert_eq!(store.fingerprint().await, database, "the database changed");
    // The renewed certificates work, and the token is still there.
    let got = resolver(dir.path(), &dev)
        .await
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/kept".into(),
        })
        .await
        .expect("resolve with the renewed agent certificate");
    assert_eq!(got.get_ref().value, "sk-dev-renewal-4e1");
    drop(got);
    let logs = binary::stop(dev).await;
    assert!(
        logs.contains("agent.pem ends within 7 days"),
        "the renewal was not logged"
    );
    assert_eq!(read("master.key"), master_key, "the master key changed");
}
