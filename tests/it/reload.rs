//! TLS material reloads from its files (and on SIGHUP) without dropping
//! connections; CRLs bite on every new connection, expired CRLs too; a bad
//! file keeps the previous material. Every refusal is asserted for its
//! cause (the reason the server counted, or the client's), beside clients
//! that still get in.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use aitokens::{
    api::pb::{
        ResolveTokenRequest, token_admin_client::TokenAdminClient,
        token_resolver_client::TokenResolverClient,
    },
    dev,
    pki::{Ca, Issued},
};
use rcgen::{
    CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose,
    KeyIdMethod, RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use tonic::transport::Identity;

use crate::{
    binary,
    common::{Setup, TestServer, create_request, identity},
    observability::{get, get_metrics_sample},
    refusal::{assert_handshake_failed, handshake_failures},
};

/// Longest a test waits for a file change to take effect (the servers here
/// check every second).
const RELOAD_WAIT: Duration = Duration::from_secs(20);

/// An agent certificate with a known serial number.
fn agent(ca: &Ca, serial: u64) -> Issued {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "agent");
    params.subject_alt_names = vec![SanType::URI(dev::AGENT_IDENTITY.try_into().expect("uri"))];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from(serial));
    ca.issue(params).expect("issue agent")
}

/// A CRL from `ca` revoking `serials`, valid from `this` to `next` (years).
fn crl(ca: &Ca, serials: &[u64], this: i32, next: i32) -> String {
    let params = CertificateRevocationListParams {
        this_update: date_time_ymd(this, 1, 1),
        next_update: date_time_ymd(next, 1, 1),
        crl_number: SerialNumber::from(
            u64::try_from(this).expect("year") * 1000 + serials.len() as u64,
        ),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from(*serial),
                revocation_time: date_time_ymd(this, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    ca.crl(&params).expect("sign CRL")
}

/// Replaces `path` atomically, as a careful operator (or cert-manager) does.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A fresh connection presenting `who` resolves a token; the error names
/// its whole cause chain.
async fn attempt(server: &TestServer, who: Identity) -> Result<(), String> {
    let chain = |e: &dyn std::error::Error| {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        text
    };
    let channel = server
        .channel(server.internal_addr, Some(who))
        .await
        .map_err(|e| chain(&e))?;
    TokenResolverClient::new(channel)
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/t".into(),
        })
        .await
        .map(|_| ())
        .map_err(|status| chain(&status))
}

/// Whether a fresh connection presenting `who` can resolve a token.
async fn resolves(server: &TestServer, who: Identity) -> bool {
    attempt(server, who).await.is_ok()
}

/// Whether a fresh connection presenting `who` is refused; if it is, asserts
/// that the internal listener counted exactly that handshake as failed, for
/// `reason`.
async fn refused_for(server: &TestServer, who: Identity, reason: &str) -> bool {
    let before = handshake_failures(&server.telemetry, "internal");
    if attempt(server, who).await.is_ok() {
        return false;
    }
    assert_handshake_failed(&server.telemetry, "internal", &before, reason).await;
    true
}

/// Waits (bounded) until `check` returns `want`.
async fn until<F, Fut>(what: &str, want: bool, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + RELOAD_WAIT;
    while check().await != want {
        assert!(
            Instant::now() < deadline,
            "not within {RELOAD_WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// One scenario whose steps build on each other: kept whole to read in order.
#[tokio::test]
async fn crl_updates_bite_on_new_connections_and_keep_existing_ones() {
    let mut setup = Setup::new();
    let pki = setup.pki();
    let (revoked, spare) = (agent(&pki.ca, 1001), agent(&pki.ca, 1002));
    let crl_path = setup.dir.path().join("agents.crl.pem");
    std::fs::write(&crl_path, crl(&pki.ca, &[], 2020, 2100)).expect("write CRL");
    setup.config.internal.crls = vec![crl_path.clone()];
    setup.config.tls_reload_interval_secs = 1;
    let server = setup.start().await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "t", "sk-crl-canary"))
        .await
        .expect("create");

    // A connection made before the revocation.
    let channel = server
        .channel(server.internal_addr, Some(identity(&revoked)))
        .await
        .expect("connect");
    let mut live = TokenResolverClient::new(channel);
    let request = || ResolveTokenRequest {
        name: "tenants/acme/tokens/t".into(),
    };
    live.resolve_token(request())
        .await
        .expect("resolve before revocation");
    assert!(resolves(&server, identity(&revoked)).await);

    replace(&crl_path, &crl(&pki.ca, &[1001], 2020, 2100));
    until("the revoked certificate is refused", true, || {
        refused_for(&server, identity(&revoked), "revoked")
    })
    .await;
    assert!(
        resolves(&server, identity(&spare)).await,
        "others still get in"
    );
    live.resolve_token(request())
        .await
        .expect("the established connection was not dropped by the reload");

    // A malformed CRL: logged and counted, the previous lists stay in force.
    replace(
        &crl_path,
        "-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n",
    );
    until("the failed reload is counted", true, || async {
        get_metrics_sample(
            &server.telemetry,
            r#"aitokens_tls_reloads_total{listener="internal",result="error"}"#,
        )
        .await
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(
        refused_for(&server, identity(&revoked), "revoked").await,
        "still revoked"
    );
    assert!(resolves(&server, identity(&spare)).await, "still serving");

    // An expired CRL is not trusted: every client certificate is refused.
    replace(&crl_path, &crl(&pki.ca, &[], 2020, 2021));
    until("an expired CRL refuses everyone", true, || {
        refused_for(&server, identity(&spare), "revocation_status")
    })
    .await;
    // A current one lets the unrevoked back in.
    replace(&crl_path, &crl(&pki.ca, &[1001], 2020, 2100));
    until("a current CRL is trusted again", true, || {
        resolves(&server, identity(&spare))
    })
    .await;
}

// One scenario whose steps build on each other: kept whole to read in order.
#[tokio::test]
async fn server_certificate_and_client_ca_reload_from_files() {
    let mut setup = Setup::new();
    let pki = setup.pki();
    setup.config.tls_reload_interval_secs = 1;
    let dir = setup.dir.path().to_owned();
    let server = setup.start().await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "t", "sk-reload-canary"))
        .await
        .expect("create");
    let agent = || server.client_identity("agent");
    let mut live = server.resolver().await;

    // A server certificate for another name: clients that dial "localhost"
    // refuse it, which proves the new certificate is the one served.
    let elsewhere = pki.ca.issue_server(&["elsewhere.example"]).expect("issue");
    let good = (
        std::fs::read_to_string(dir.join("server.pem")).expect("read"),
        std::fs::read_to_string(dir.join("server.key")).expect("read"),
    );
    replace(&dir.join("server.key"), &elsewhere.key_pem);
    replace(&dir.join("server.pem"), &elsewhere.cert_pem);
    until("the new server certificate is served", true, || async {
        match attempt(&server, agent()).await {
            Ok(()) => false,
            Err(why) => {
                // The client refuses it for its name, nothing else.
                assert!(why.contains("not valid for name"), "{why}");
                true
            }
        }
    })
    .await;
    live.resolve_token(ResolveTokenRequest {
        name: "tenants/acme/tokens/t".into(),
    })
    .await
    .expect("the established connection survives the reload");
    replace(&dir.join("server.key"), &good.1);
    replace(&dir.join("server.pem"), &good.0);
    until("the good certificate is back", true, || {
        resolves(&server, agent())
    })
    .await;

    // A second client CA: its agents get in once the bundle lists it.
    let other = Ca::generate("second agent CA").expect("ca");
    let other_agent = identity(&other.issue_client(dev::AGENT_IDENTITY).expect("issue"));
    assert!(refused_for(&server, other_agent.clone(), "unknown_issuer").await);
    let bundle = format!("{}{}", pki.ca.cert_pem(), other.cert_pem());
    replace(&dir.join("ca.pem"), &bundle);
    until("the second CA is trusted", true, || {
        resolves(&server, other_agent.clone())
    })
    .await;
    assert!(resolves(&server, agent()).await, "the first CA still is");
    let reloads = get_metrics_sample(
        &server.telemetry,
        r#"aitokens_tls_reloads_total{listener="internal",result="ok"}"#,
    )
    .await;
    assert!(reloads.is_some_and(|n| n >= 3.0), "{reloads:?}");
}

#[tokio::test]
async fn sighup_reloads_both_listeners_of_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = binary::start_dev(dir.path());
    let status = std::process::Command::new("kill")
        .args(["-HUP", &dev.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let metrics = dev.metrics;
    for listener in ["admin", "internal"] {
        let line = format!(r#"aitokens_tls_reloads_total{{listener="{listener}",result="ok"}} 1"#);
        until(&format!("SIGHUP reloaded {listener}"), true, || async {
            get(metrics, "/metrics").await.1.lines().any(|l| l == line)
        })
        .await;
    }
    // Still serving, with the reloaded material.
    let mut admin = TokenAdminClient::new(binary::channel(dir.path(), dev.admin, "admin").await);
    admin
        .create_token(create_request("acme", "after-hup", "sk-hup-canary"))
        .await
        .expect("create after SIGHUP");
    drop(admin);
    let logs = binary::stop(dev).await;
    assert!(
        logs.contains("SIGHUP: reloading TLS material"),
        "the reload was logged"
    );
}
