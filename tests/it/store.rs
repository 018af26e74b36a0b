//! What lands on disk, what survives a restart, and what tampering does.

use std::process::Command;

use aitokens::{
    api::pb::{
        DisableTokenRequest, ListTokenUsagesRequest, ListTokensRequest, RemoveTokenRequest,
        RenameTokenRequest, ResolveTokenRequest,
    },
    crypto::RootKey,
    server::Server,
};
use tonic::Code;

use crate::{
    backend::{self, TestStore, Val},
    common::{TestServer, assert_status, create_request, resolve},
    leak,
};

/// A value that starts with the leak scan's prefix (so that its search
/// finds it in any encoding).
fn canary(i: usize) -> String {
    format!(
        "{}store-{i:04}-{:016x}",
        leak::PREFIX,
        0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1)
    )
}

#[tokio::test]
async fn plaintext_values_never_reach_the_database_or_its_wal() {
    let server = TestServer::start().await;
    let mark = server.store().mark().await;
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
    let files = server.store().at_rest(&mark).await;
    // Control: the search does find what is stored in the clear (display names).
    assert!(
        files
            .iter()
            .any(|(_, bytes)| memchr::memmem::find(bytes, b"Token t199").is_some()),
        "search control failed"
    );
    for (path, bytes) in &files {
        leak::assert_clean(path, bytes);
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
    let door = server.back_door().await;
    door.ignore_guards().await;
    let sealed = async |id: &str| -> (Vec<u8>, Vec<u8>) {
        let row = &door
            .query(
                "SELECT wrapped_data_key, value_ciphertext FROM tokens WHERE token_id = $1",
                &[id.into()],
            )
            .await[0];
        (row[0].bytes(), row[1].bytes())
    };
    let set = async |id: &str, dek: &[u8], ct: &[u8]| {
        let changed = door
            .execute(
                "UPDATE tokens SET wrapped_data_key = $2, value_ciphertext = $3 WHERE token_id = $1",
                &[id.into(), Val::from(dek), Val::from(ct)],
            )
            .await;
        assert_eq!(changed, 1, "tampered with {id}");
    };
    // a's ciphertexts moved onto b (same tenant) and onto e (other tenant).
    let (dek_a, ct_a) = sealed("a").await;
    set("b", &dek_a, &ct_a).await;
    set("e", &dek_a, &ct_a).await;
    // One flipped byte in c's value ciphertext, and in d's wrapped data key.
    let (dek_c, mut ct_c) = sealed("c").await;
    let last = ct_c.len() - 1;
    ct_c[last] ^= 0x01;
    set("c", &dek_c, &ct_c).await;
    let (mut dek_d, ct_d) = sealed("d").await;
    dek_d[30] ^= 0x80;
    set("d", &dek_d, &ct_d).await;

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
    let changed = door
        .execute(
            "UPDATE tokens SET kek_version = 7 WHERE token_id = 'a'",
            &[],
        )
        .await;
    assert_eq!(changed, 1, "tampered with a's key version");
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

/// `aitokens store copy` from the store under test to the other backend
/// (SQLite to PostgreSQL, or back): every row as it is, nothing decrypted;
/// the copy serves the same values, usage and audit trail, and a second
/// copy into it is refused.
#[tokio::test]
async fn a_store_copied_to_the_other_backend_serves_the_same_tokens() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    for i in 0..20 {
        admin
            .create_token(create_request("acme", &format!("t{i}"), &canary(i)))
            .await
            .expect("create");
    }
    for i in 0..10 {
        resolve(&mut resolver, &format!("tenants/acme/tokens/t{i}"))
            .await
            .expect("resolve");
    }
    admin
        .rename_token(RenameTokenRequest {
            name: "tenants/acme/tokens/t1".into(),
            new_token_id: Some("renamed".into()),
            ..Default::default()
        })
        .await
        .expect("rename");
    admin
        .disable_token(DisableTokenRequest {
            name: "tenants/acme/tokens/t2".into(),
            ..Default::default()
        })
        .await
        .expect("disable");
    admin
        .remove_token(RemoveTokenRequest {
            name: "tenants/acme/tokens/t19".into(),
            ..Default::default()
        })
        .await
        .expect("remove");
    drop((admin, resolver));
    let (dir, config) = server.stop().await;
    let config_path = dir.path().join("config.toml");
    let target = if backend::postgres() {
        TestStore::Sqlite(dir.path().join("copy.db"))
    } else {
        TestStore::named(dir.path(), "unused")
    };
    let copy = |to: &TestStore| {
        let out = Command::new(env!("CARGO_BIN_EXE_aitokens"))
            .args([
                "store",
                "copy",
                "--from",
                &dir.store.spec(),
                "--to",
                &to.spec(),
            ])
            .arg("--config")
            .arg(&config_path)
            .output()
            .expect("run aitokens store copy");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = copy(&target);
    assert!(ok, "{text}");
    assert!(text.contains("copied 19 tokens"), "{text}");
    assert!(text.contains("(nothing decrypted)"), "{text}");
    assert!(text.contains("all 19 values open"), "{text}");
    let (ok, text) = copy(&target);
    assert!(
        !ok && text.contains("is not empty"),
        "a second copy: {text}"
    );

    let mut copied = config.clone();
    target.configure(&mut copied);
    let server = TestServer::start_in(
        backend::DataFolder {
            dir: dir.dir,
            store: target,
        },
        copied,
    )
    .await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    let usage = admin
        .list_token_usages(ListTokenUsagesRequest {
            name: "tenants/acme/tokens/t3".into(),
        })
        .await
        .expect("usage")
        .into_inner();
    let resolves: i64 = usage.usages.iter().map(|u| u.resolve_count).sum();
    assert_eq!(resolves, 1, "the usage before the copy: {usage:?}");
    for i in (0..19).filter(|i| ![1, 2].contains(i)) {
        assert_eq!(
            resolve(&mut resolver, &format!("tenants/acme/tokens/t{i}"))
                .await
                .expect("resolve the copy"),
            canary(i)
        );
    }
    assert_eq!(
        resolve(&mut resolver, "tenants/acme/tokens/renamed")
            .await
            .expect("renamed"),
        canary(1)
    );
    let disabled = resolve(&mut resolver, "tenants/acme/tokens/t2")
        .await
        .expect_err("disabled");
    assert_eq!(disabled.code(), Code::FailedPrecondition, "{disabled:?}");
    let removed = resolve(&mut resolver, "tenants/acme/tokens/t19")
        .await
        .expect_err("removed");
    assert_eq!(removed.code(), Code::NotFound);
}
