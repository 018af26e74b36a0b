//! Rekey interrupted at any point, and what is left of removed tokens: in an
//! old copy of the database after rotate, destroy-old and rekey, and in the
//! live file and WAL right after removal.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use aitokens::{
    api::pb::{DestroyOldKeysRequest, RemoveTokenRequest, RotateKeysRequest},
    cli::Offline,
    config::Config,
    rotation::Legacy,
    store::{Hold, StoreLocation},
};

use super::{aitokens, assert_all_resolve, key_admin, seed, write_config};
use crate::{
    admin::contains,
    backend::{self, TestStore},
    common::{TestServer, create_request},
};

async fn opens_with(db: &TestStore, key: &Path) -> bool {
    let location = StoreLocation::parse(&db.spec(), None).expect("location");
    Offline::open_at(
        &location,
        &aitokens::crypto::KeySource::File(key.to_owned()),
        Legacy::Refuse,
        Hold::Shared,
    )
    .await
    .is_ok()
}

/// The KEK versions stored in `db`, read behind the server's back.
async fn kek_versions(db: &TestStore) -> Vec<u32> {
    db.back_door()
        .await
        .query("SELECT version FROM keks ORDER BY version", &[])
        .await
        .into_iter()
        .map(|r| u32::try_from(r[0].int()).expect("version"))
        .collect()
}

/// The keyring's key check: it changes exactly when the root key does.
async fn key_check(db: &TestStore) -> Vec<u8> {
    db.back_door()
        .await
        .value("SELECT key_check FROM keyring WHERE id = 1", &[])
        .await
        .bytes()
}

/// Where a killed `aitokens keys rekey` stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Before it wrote the new key file.
    BeforeKeyFile,
    /// After the new key file, before the commit: the old key still works.
    BeforeCommit,
    /// The new keyring is committed: the new key works, the old one not.
    Committed,
}

/// Most rekey attempts, and the least before stopping once both a cut and
/// a commit were seen.
const REKEY_ATTEMPTS: (usize, usize) = (40, 8);

/// Kills `aitokens keys rekey` after a delay that follows a staircase: 1.6 ×
/// longer after a cut, 1.6 × shorter after a commit, so the kills settle
/// around the commit point wherever it lies on this machine today, and both
/// outcomes happen. Every attempt must leave exactly one working key; the
/// test fails unless it saw at least one commit and one cut before commit.
#[tokio::test]
async fn rekey_interrupted_anywhere_leaves_exactly_one_working_key() {
    let server = TestServer::start().await;
    seed(&server, 50).await;
    let (dir, mut config) = server.stop().await;
    let mut current: PathBuf = config.store.master_key_file.clone().expect("key file");
    let mut delay = Duration::from_millis(2);
    let mut seen: Vec<(Duration, Cut)> = Vec::new();
    let count = |seen: &[(Duration, Cut)], cut: Cut| seen.iter().filter(|(_, c)| *c == cut).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    for attempt in 0..REKEY_ATTEMPTS.0 {
        let committed = count(&seen, Cut::Committed);
        if attempt >= REKEY_ATTEMPTS.1 && committed > 0 && committed < seen.len() {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        config.store.master_key_file = Some(current.clone());
        let next = dir.path().join(format!("key-{attempt}"));
        let cut = rekey_killed_after(&config, &dir.store, &next, delay).await;
        seen.push((delay, cut));
        if cut == Cut::Committed {
            current = next;
            delay = delay.div_f64(1.6);
        } else {
            delay = delay.mul_f64(1.6).min(Duration::from_secs(10));
        }
    }
    let committed = count(&seen, Cut::Committed);
    let before_commit = count(&seen, Cut::BeforeCommit);
    let before_key_file = count(&seen, Cut::BeforeKeyFile);
    eprintln!(
        "rekey kills: {committed} committed, {before_commit} cut after the new key file, \
         {before_key_file} cut before it; (delay, outcome): {seen:?}"
    );
    assert!(
        committed > 0 && before_commit + before_key_file > 0,
        "the kills missed the commit window: {committed} committed, {} cut before commit \
         in {} attempts: {seen:?}",
        before_commit + before_key_file,
        seen.len()
    );
    config.store.master_key_file = Some(current);
    let server = TestServer::start_in(dir, config).await;
    assert_all_resolve(&server, 50).await;
}

/// Runs `aitokens keys rekey` from the config's key to a new key file
/// `next`, kills it after `delay`, and says where it stopped. Exactly one of
/// the two keys must open the database afterwards.
async fn rekey_killed_after(config: &Config, db: &TestStore, next: &Path, delay: Duration) -> Cut {
    let current = config.store.master_key_file.clone().expect("key file");
    let config_path = next.with_extension("toml");
    write_config(config, &config_path);
    let mut child = aitokens()
        .args(["keys", "rekey", "--config"])
        .arg(&config_path)
        .arg("--new-key-file")
        .arg(next)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rekey");
    tokio::time::sleep(delay).await;
    let _ = child.kill();
    child.wait().expect("reap");
    let (old_ok, new_ok) = (
        opens_with(db, &current).await,
        next.exists() && opens_with(db, next).await,
    );
    assert!(
        old_ok != new_ok,
        "killed after {delay:?}: old key opens {old_ok}, new key opens {new_ok}"
    );
    match (new_ok, next.exists()) {
        (true, _) => Cut::Committed,
        (false, true) => Cut::BeforeCommit,
        (false, false) => Cut::BeforeKeyFile,
    }
}

/// An old copy of the database (taken while a token existed) no longer opens
/// once the token is removed, the KEKs rotated, the old version destroyed and
/// the root key changed. Each step's effect is asserted, so the test fails if
/// any of them did nothing.
#[tokio::test]
async fn a_removed_token_is_gone_from_old_copies_after_destroy_old_and_rekey() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    admin
        .create_token(create_request("acme", "doomed", "sk-doomed-77"))
        .await
        .expect("create");
    let (dir, config) = server.stop().await;
    let db = dir.store.clone();
    let old_copy = db.copy("old-copy.db").await;
    let old_key = config.store.master_key_file.clone().expect("key");
    assert!(
        opens_with(&old_copy, &old_key).await,
        "control: the copy opens with the key of its time"
    );
    assert_eq!(kek_versions(&db).await, [1]);
    let check_before = key_check(&db).await;

    let server = TestServer::start_in(dir, config.clone()).await;
    let mut admin = server.admin().await;
    admin
        .remove_token(RemoveTokenRequest {
            name: "tenants/acme/tokens/doomed".into(),
            ..Default::default()
        })
        .await
        .expect("remove");
    let mut keys = key_admin(&server).await;
    let rotated = keys
        .rotate_keys(RotateKeysRequest {})
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(rotated.current_version, 2);
    assert_eq!(
        kek_versions(&db).await,
        [1, 2],
        "rotate added KEK version 2"
    );
    let destroyed = keys
        .destroy_old_keys(DestroyOldKeysRequest {})
        .await
        .expect("destroy old (no rows left on v1)")
        .into_inner();
    assert_eq!(destroyed.destroyed_versions, [1]);
    assert_eq!(
        kek_versions(&db).await,
        [2],
        "destroy-old removed version 1"
    );
    let (dir, _) = server.stop().await;

    let new_key = dir.path().join("new.key");
    rekey(&config, &new_key);
    assert_ne!(
        key_check(&db).await,
        check_before,
        "rekey changed the root key"
    );
    assert!(
        opens_with(&db, &new_key).await,
        "the live database opens with the new key"
    );
    assert!(
        !opens_with(&db, &old_key).await,
        "the live database still opens with the old key"
    );
    std::fs::remove_file(&old_key).expect("destroy the old root key");
    // What remains (the live database and its current key) cannot open the copy.
    assert!(
        !opens_with(&old_copy, &new_key).await,
        "the old copy opens with the current key"
    );
}

/// `aitokens keys rekey` to the new key file `new_key`, to completion.
fn rekey(config: &Config, new_key: &Path) {
    let config_path = new_key.with_extension("toml");
    write_config(config, &config_path);
    let out = aitokens()
        .args(["keys", "rekey", "--config"])
        .arg(&config_path)
        .arg("--new-key-file")
        .arg(new_key)
        .output()
        .expect("rekey");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn removal_erases_ciphertext_and_wrapped_key_from_the_file_and_wal() {
    let server = TestServer::start().await;
    seed(&server, 30).await;
    let door = server.back_door().await;
    let sealed: Vec<(Vec<u8>, Vec<u8>)> = door
        .query(
            "SELECT wrapped_data_key, value_ciphertext FROM tokens WHERE token_id < 't00010' ORDER BY seq",
            &[],
        )
        .await
        .into_iter()
        .map(|r| (r[0].bytes(), r[1].bytes()))
        .collect();
    assert_eq!(sealed.len(), 10);
    let mut admin = server.admin().await;
    for i in 0..10 {
        admin
            .remove_token(RemoveTokenRequest {
                name: format!("tenants/acme/tokens/t{i:05}"),
                ..Default::default()
            })
            .await
            .expect("remove");
    }
    // SQLite overwrites freed pages (secure_delete) and truncates its WAL.
    // PostgreSQL keeps dead tuples until a vacuum: what the server can
    // promise there is the table rewritten by VACUUM FULL (its WAL and
    // backups are for crypto-shredding: keys rotate, destroy-old, rekey).
    // VACUUM FULL still copies a row as "recently dead" while a transaction
    // of this database began before its removal (the server's generation
    // poll, a usage flush): such a rewrite is done again, a bounded few times.
    let kept = door
        .value(
            "SELECT value_ciphertext FROM tokens WHERE token_id = 't00020'",
            &[],
        )
        .await
        .bytes();
    let mut rewrites = 0;
    let files: Vec<(String, Vec<u8>)> = loop {
        let files = match server.store() {
            TestStore::Sqlite(db) => ["", "-wal"]
                .iter()
                .map(|suffix| {
                    let path = format!("{}{suffix}", db.display());
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    (path, bytes)
                })
                .collect(),
            store @ TestStore::Postgres(_) => {
                door.batch("VACUUM FULL tokens").await;
                rewrites += 1;
                // The database's files, not the WAL written meanwhile.
                let mark = store.mark().await;
                let mut files = store.at_rest(&mark).await;
                files.retain(|(path, _)| path.starts_with("base/"));
                files
            }
        };
        let remnant = sealed
            .iter()
            .flat_map(|(dek, ct)| [dek, ct])
            .any(|bytes| files.iter().any(|(_, file)| contains(file, bytes)));
        if !remnant || !backend::postgres() || rewrites == 5 {
            break files;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    for (i, (dek, ct)) in sealed.iter().enumerate() {
        for (what, bytes) in [("wrapped data key", dek), ("value ciphertext", ct)] {
            for (path, file) in &files {
                assert!(!contains(file, bytes), "token {i}: {what} still in {path}");
            }
        }
    }
    // Control: the kept tokens' ciphertexts are found by the same search.
    assert!(
        files.iter().any(|(_, file)| contains(file, &kept)),
        "search control failed"
    );
}
