//! The connection to PostgreSQL: TLS verified against the configured CA and
//! the server's name (`sslmode=verify-full`), the password read from a file,
//! and each way it can go wrong refused with its reason, never the password.
//! A cluster of the test's own: TLS on, plain connections of the service's
//! role rejected, its password required.

use aitokens::{pki::Ca, server::Server};

use crate::{
    common::{Setup, TestServer, create_request, resolve},
    pgcluster::PgCluster,
};

const PASSWORD: &str = "pg-pass-6b1f09c3e2";
const DB: &str = "aitokens_tls";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_connection_is_verified_tls_with_the_password_from_a_file() {
    let _heavy = crate::common::HEAVY.lock().await;
    let ca = Ca::generate("test PostgreSQL CA").expect("ca");
    let server_cert = ca.issue_server(&["localhost"]).expect("server certificate");
    let cluster = PgCluster::init();
    cluster.install("server.crt", server_cert.cert_pem.as_bytes());
    cluster.install("server.key", server_cert.key_pem.as_bytes());
    // The service's role: TLS and its password only. The test's own admin
    // connections (postgres) stay plain and trusted.
    cluster.install(
        "pg_hba.conf",
        b"local   all all                      trust\n\
          hostssl all aitokens 127.0.0.1/32     scram-sha-256\n\
          host    all aitokens 127.0.0.1/32     reject\n\
          host    all postgres 127.0.0.1/32     trust\n",
    );
    cluster.start_with("-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
    let admin = cluster.connect("postgres").await;
    for sql in [
        format!("CREATE ROLE aitokens LOGIN PASSWORD '{PASSWORD}'"),
        format!("CREATE DATABASE {DB} OWNER aitokens"),
    ] {
        admin.batch_execute(&sql).await.expect("role and database");
    }

    let setup = Setup::new();
    let dir = setup.dir.path().to_owned();
    let ca_file = dir.join("db-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write CA");
    let password_file = dir.join("db-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write password");
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(
        &other_ca,
        Ca::generate("another CA").expect("ca").cert_pem(),
    )
    .expect("write other CA");
    let wrong_password = dir.join("wrong-password");
    std::fs::write(&wrong_password, "not-the-password\n").expect("write");
    let url = |host: &str, ca: &std::path::Path, mode: &str| {
        format!(
            "postgres://aitokens@{host}:{}/{DB}?sslmode={mode}&sslrootcert={}",
            cluster.port,
            ca.display()
        )
    };
    let with = |url: String, password: &std::path::Path| {
        let mut config = setup.config.clone();
        config.store.database = Default::default();
        config.store.url = Some(url);
        config.store.password_file = Some(password.to_owned());
        config
    };

    // The schema, over TLS as the service's role.
    let good = with(url("localhost", &ca_file, "verify-full"), &password_file);
    let target = good.store.location().expect("location");
    let aitokens::store::StoreLocation::Postgres(target) = target else {
        panic!("a PostgreSQL location")
    };
    aitokens::store::PgStore::migrate(&target)
        .await
        .expect("migrate over TLS");

    // Each way it can go wrong, refused with its reason.
    for (config, reason) in [
        (
            with(url("localhost", &other_ca, "verify-full"), &password_file),
            "UnknownIssuer",
        ),
        (
            with(url("127.0.0.1", &ca_file, "verify-full"), &password_file),
            "certificate not valid for name \"127.0.0.1\"",
        ),
        (
            with(url("localhost", &ca_file, "disable"), &password_file),
            "pg_hba.conf rejects connection",
        ),
        (
            with(url("localhost", &ca_file, "verify-full"), &wrong_password),
            "password authentication failed",
        ),
    ] {
        let refused = match Server::open(&config).await {
            Ok(_) => panic!("served with {:?}", config.store.url),
            Err(e) => e.to_string(),
        };
        assert!(
            refused.contains(reason),
            "{:?}: expected {reason:?} in {refused}",
            config.store.url
        );
        assert!(!refused.contains(PASSWORD), "the password in: {refused}");
        assert!(!refused.contains("not-the-password"), "{refused}");
    }

    // The right CA, name and password: served, over TLS.
    let server = TestServer::start_in(setup.dir, good).await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "over-tls", "sk-over-tls-11"))
        .await
        .expect("create");
    assert_eq!(
        resolve(&mut server.resolver().await, "tenants/acme/tokens/over-tls")
            .await
            .expect("resolve"),
        "sk-over-tls-11"
    );
    let encrypted = admin
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE a.usename = 'aitokens' AND a.datname = $1",
            &[&DB],
        )
        .await
        .expect("pg_stat_ssl");
    assert!(!encrypted.is_empty(), "the server holds sessions");
    assert!(
        encrypted.iter().all(|row| row.get::<_, bool>(0)),
        "every session of the service is TLS"
    );
    println!(
        "PostgreSQL over TLS: {} sessions of the service, all encrypted; refusals named: \
         unknown issuer, name mismatch, pg_hba reject, wrong password",
        encrypted.len()
    );
}
