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
};

use super::{aitokens, assert_all_resolve, key_admin, seed, write_config};
use crate::{
    admin::contains,
    common::{TestServer, create_request},
};

async fn opens_with(db: &Path, key: &Path) -> bool {
    Offline::open(db, &aitokens::crypto::KeySource::File(key.to_owned()))
        .await
        .is_ok()
}

/// The KEK versions stored in `db`, read behind the server's back.
fn kek_versions(db: &Path) -> Vec<u32> {
    let conn = rusqlite::Connection::open(db).expect("open");
    let mut stmt = conn
        .prepare("SELECT version FROM keks ORDER BY version")
        .expect("sql");
    stmt.query_map([], |r| r.get(0))
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect()
}

/// The keyring's key check: it changes exactly when the root key does.
fn key_check(db: &Path) -> Vec<u8> {
    rusqlite::Connection::open(db)
        .expect("open")
        .query_row("SELECT key_check FROM keyring WHERE id = 1", [], |r| {
            r.get(0)
        })
        .expect("key check")
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
        let cut = rekey_killed_after(&config, &next, delay).await;
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
async fn rekey_killed_after(config: &Config, next: &Path, delay: Duration) -> Cut {
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
    let db = &config.store.database;
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
    let db = config.store.database.clone();
    let old_copy = dir.path().join("old-copy.db");
    copy_database(&db, &old_copy);
    let old_key = config.store.master_key_file.clone().expect("key");
    assert!(
        opens_with(&old_copy, &old_key).await,
        "control: the copy opens with the key of its time"
    );
    assert_eq!(kek_versions(&db), [1]);
    let check_before = key_check(&db);

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
    assert_eq!(kek_versions(&db), [1, 2], "rotate added KEK version 2");
    let destroyed = keys
        .destroy_old_keys(DestroyOldKeysRequest {})
        .await
        .expect("destroy old (no rows left on v1)")
        .into_inner();
    assert_eq!(destroyed.destroyed_versions, [1]);
    assert_eq!(kek_versions(&db), [2], "destroy-old removed version 1");
    let (dir, _) = server.stop().await;

    let new_key = dir.path().join("new.key");
    rekey(&config, &new_key);
    assert_ne!(key_check(&db), check_before, "rekey changed the root key");
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

/// Copies a database file (and its WAL, if any) while no server runs.
fn copy_database(db: &Path, to: &Path) {
    std::fs::copy(db, to).expect("copy");
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    if wal.exists() {
        std::fs::copy(&wal, format!("{}-wal", to.display())).expect("copy wal");
    }
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
    let db = server.database();
    let sealed: Vec<(Vec<u8>, Vec<u8>)> = {
        let conn = rusqlite::Connection::open(&db).expect("open");
        let mut stmt = conn
            .prepare("SELECT wrapped_data_key, value_ciphertext FROM tokens WHERE token_id < 't00010' ORDER BY seq")
            .expect("sql");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect()
    };
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
    let read =
        |suffix: &str| std::fs::read(format!("{}{suffix}", db.display())).unwrap_or_default();
    let (file, wal) = (read(""), read("-wal"));
    for (i, (dek, ct)) in sealed.iter().enumerate() {
        for (what, bytes) in [("wrapped data key", dek), ("value ciphertext", ct)] {
            assert!(
                !contains(&file, bytes),
                "token {i}: {what} still in the database file"
            );
            assert!(!contains(&wal, bytes), "token {i}: {what} still in the WAL");
        }
    }
    // Control: the kept tokens' ciphertexts are found by the same search.
    let conn = rusqlite::Connection::open(&db).expect("open");
    let kept: Vec<u8> = conn
        .query_row(
            "SELECT value_ciphertext FROM tokens WHERE token_id = 't00020'",
            [],
            |r| r.get(0),
        )
        .expect("kept");
    drop(conn);
    assert!(
        contains(&read(""), &kept) || contains(&read("-wal"), &kept),
        "search control failed"
    );
}
