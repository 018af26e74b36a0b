//! What lands on disk, what survives a restart, and what tampering does.

use aitokens::{
    api::pb::{ListTokensRequest, RemoveTokenRequest, ResolveTokenRequest},
    crypto::RootKey,
    server::Server,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use rusqlite::{Connection, params};
use tonic::Code;

use crate::{
    admin::contains,
    common::{TestServer, assert_status, create_request},
};

fn canary(i: usize) -> String {
    format!(
        "sk-canary-{i:04}-{:016x}",
        0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The database file and its WAL, as bytes.
fn files(server: &TestServer) -> Vec<(String, Vec<u8>)> {
    let db = server.database();
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let path = format!("{}{suffix}", db.display());
            std::fs::read(&path).ok().map(|bytes| (path, bytes))
        })
        .collect()
}

#[tokio::test]
async fn plaintext_values_never_reach_the_database_or_its_wal() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let count = 200;
    for i in 0..count {
        admin
            .create_token(create_request("acme", &format!("t{i}"), &canary(i)))
            .await
            .expect("create");
    }
    for i in (0..count).step_by(3) {
        admin
            .remove_token(RemoveTokenRequest {
                name: format!("tenants/acme/tokens/t{i}"),
                ..Default::default()
            })
            .await
            .expect("remove");
    }
    let files = files(&server);
    // Control: the search does find what is stored in the clear (display names).
    assert!(
        files
            .iter()
            .any(|(_, bytes)| contains(bytes, b"Token t199")),
        "search control failed"
    );
    for (path, bytes) in &files {
        for i in 0..count {
            let value = canary(i);
            for form in [
                value.clone(),
                hex(value.as_bytes()),
                STANDARD.encode(&value),
            ] {
                assert!(!contains(bytes, form.as_bytes()), "{path} holds canary {i}");
            }
        }
    }
}

#[tokio::test]
async fn restart_keeps_every_token() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    for i in 0..60 {
        admin
            .create_token(create_request(
                ["acme", "globex"][i % 2],
                &format!("t{i}"),
                &canary(i),
            ))
            .await
            .expect("create");
    }
    drop(admin);
    let server = server.restart().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    for tenant in ["acme", "globex"] {
        let listed = admin
            .list_tokens(ListTokensRequest {
                parent: format!("tenants/{tenant}"),
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.tokens.len(), 30, "{tenant}");
    }
    for i in 0..60 {
        let name = format!("tenants/{}/tokens/t{i}", ["acme", "globex"][i % 2]);
        let value = resolver
            .resolve_token(ResolveTokenRequest { name })
            .await
            .expect("resolve")
            .into_inner()
            .value
            .clone();
        assert_eq!(value, canary(i));
    }
}

#[tokio::test]
async fn a_moved_or_flipped_ciphertext_is_data_loss() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    for (tenant, id) in [
        ("acme", "a"),
        ("acme", "b"),
        ("acme", "c"),
        ("acme", "d"),
        ("globex", "e"),
    ] {
        admin
            .create_token(create_request(tenant, id, &format!("value-of-{id}")))
            .await
            .expect("create");
    }
    let conn = Connection::open(server.database()).expect("open db behind the server's back");
    conn.pragma_update(None, "foreign_keys", false)
        .expect("an attacker ignores constraints");
    let sealed = |id: &str| -> (Vec<u8>, Vec<u8>) {
        conn.query_row(
            "SELECT wrapped_data_key, value_ciphertext FROM tokens WHERE token_id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row")
    };
    let set = |id: &str, dek: &[u8], ct: &[u8]| {
        conn.execute(
            "UPDATE tokens SET wrapped_data_key = ?2, value_ciphertext = ?3 WHERE token_id = ?1",
            params![id, dek, ct],
        )
        .expect("tamper");
    };
    // a's ciphertexts moved onto b (same tenant) and onto e (other tenant).
    let (dek_a, ct_a) = sealed("a");
    set("b", &dek_a, &ct_a);
    set("e", &dek_a, &ct_a);
    // One flipped byte in c's value ciphertext, and in d's wrapped data key.
    let (dek_c, mut ct_c) = sealed("c");
    let last = ct_c.len() - 1;
    ct_c[last] ^= 0x01;
    set("c", &dek_c, &ct_c);
    let (mut dek_d, ct_d) = sealed("d");
    dek_d[30] ^= 0x80;
    set("d", &dek_d, &ct_d);

    for name in [
        "tenants/acme/tokens/b",
        "tenants/globex/tokens/e",
        "tenants/acme/tokens/c",
        "tenants/acme/tokens/d",
    ] {
        let status = resolver
            .resolve_token(ResolveTokenRequest { name: name.into() })
            .await
            .expect_err(name);
        assert_status(&status, Code::DataLoss, None);
        assert!(!status.message().contains("value-of"), "{name}: {status:?}");
    }
    // A key version that does not match the wrapped key is data loss too.
    conn.execute("UPDATE tokens SET kek_version = 7 WHERE token_id = 'a'", [])
        .expect("tamper version");
    let status = resolver
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/a".into(),
        })
        .await
        .expect_err("version");
    assert_status(&status, Code::DataLoss, None);
}

#[tokio::test]
async fn a_wrong_master_key_stops_startup_with_a_clear_message() {
    let server = TestServer::start().await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "t", "v"))
        .await
        .expect("create");
    let (dir, config) = server.stop().await;
    let key = config
        .store
        .master_key_file
        .as_ref()
        .expect("dev uses a key file");
    std::fs::remove_file(key).expect("remove key");
    RootKey::create_file(key).expect("another key");
    let err = Server::open(&config)
        .await
        .err()
        .expect("must refuse to start");
    let message = err.to_string();
    assert!(
        message.contains("master key does not match this database"),
        "{message}"
    );

    std::fs::remove_file(key).expect("remove key");
    let err = Server::open(&config)
        .await
        .err()
        .expect("must refuse to start without a key");
    assert!(err.to_string().contains("master key file"), "{err}");
    drop(dir);
}
