//! `aitokens keys shred`, run as the real binary: what it guarantees for a
//! copy of the database made before a removal, and the commands that hold
//! the database alone (shred, rekey, restore) refusing while a server has
//! it open.

use std::{
    ffi::OsStr,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use aitokens::{
    api::pb::RemoveTokenRequest,
    cli::Offline,
    config::Config,
    crypto::KeySource,
    rotation::Legacy,
    store::{Hold, StoreLocation},
};
use tonic::Code;

use crate::{
    backend::{self, DataFolder, TestStore},
    common::{Setup, TestServer, create_request, resolve},
    root_key::write_private,
};

const KEPT: usize = 12;

fn value_of(i: usize) -> String {
    format!(
        "sk-shred-kept-{i:03}-{:08x}",
        (i as u32).wrapping_mul(40_503)
    )
}

const DOOMED_VALUE: &str = "sk-shred-doomed-5f3a9c";

fn aitokens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aitokens"))
}

fn write_config(config: &Config, path: &Path) {
    std::fs::write(path, toml::to_string(config).expect("config")).expect("write config");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What the keyring table says: KEK versions, current version, key check.
#[derive(Debug, PartialEq, Eq)]
struct KeyringFacts {
    versions: Vec<u32>,
    current: u32,
    key_check: Vec<u8>,
    /// KEK version of every token row.
    token_versions: Vec<u32>,
}

async fn keyring_facts(db: &TestStore) -> KeyringFacts {
    let door = db.back_door().await;
    let column = async |sql: &str| -> Vec<u32> {
        door.query(sql, &[])
            .await
            .into_iter()
            .map(|r| u32::try_from(r[0].int()).expect("version"))
            .collect()
    };
    let versions = column("SELECT version FROM keks ORDER BY version").await;
    let token_versions = column("SELECT DISTINCT kek_version FROM tokens ORDER BY 1").await;
    let row = &door
        .query("SELECT current_version, key_check FROM keyring", &[])
        .await[0];
    KeyringFacts {
        versions,
        current: u32::try_from(row[0].int()).expect("version"),
        key_check: row[1].bytes(),
        token_versions,
    }
}

fn shred(config_path: &Path, new_key: &Path) -> Output {
    aitokens()
        .args(["keys", "shred", "--config"])
        .arg(config_path)
        .arg("--new-key-file")
        .arg(new_key)
        .output()
        .expect("run keys shred")
}

/// The error `Offline::open` gives, or "opened".
async fn open_error(db: &TestStore, source: KeySource) -> String {
    let location = StoreLocation::parse(&db.spec(), None).expect("location");
    match Offline::open_at(&location, &source, Legacy::Refuse, Hold::Shared).await {
        Ok(_) => "opened".to_owned(),
        Err(e) => e.to_string(),
    }
}

const KEY_CHECK_FAILED: &str = "the master key does not match this database (key check failed); \
    start with the master key the database was created with";

/// A stopped server's folder after: tokens kept-0.. and `doomed` created,
/// a copy of the database taken (`old-copy.db`, shown to open with the old
/// key, the doomed value included), then `doomed` removed.
async fn copy_then_remove() -> (DataFolder, Config, TestStore) {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    for i in 0..KEPT {
        admin
            .create_token(create_request("acme", &format!("kept-{i}"), &value_of(i)))
            .await
            .expect("create");
    }
    admin
        .create_token(create_request("acme", "doomed", DOOMED_VALUE))
        .await
        .expect("create doomed");
    drop(admin);
    let (dir, config) = server.stop().await;
    let old_copy = dir.store.copy("old-copy.db").await;
    // Control: the old copy opens with the old key, every value included.
    let old_key = config.store.master_key_file.clone().expect("key file");
    let location = StoreLocation::parse(&old_copy.spec(), None).expect("location");
    let copy = Offline::open_at(
        &location,
        &KeySource::File(old_key),
        Legacy::Refuse,
        Hold::Shared,
    )
    .await
    .expect("the old copy opens with the old key");
    assert_eq!(copy.verify_every_value().await.expect("open all"), KEPT + 1);
    drop(copy);

    let server = TestServer::start_in(dir, config).await;
    server
        .admin()
        .await
        .remove_token(RemoveTokenRequest {
            name: "tenants/acme/tokens/doomed".into(),
            ..Default::default()
        })
        .await
        .expect("remove");
    let (dir, config) = server.stop().await;
    (dir, config, old_copy)
}

/// Serves the folder with `key`: every kept token resolves to its exact
/// value, the removed one is NOT_FOUND.
async fn assert_live_serves(dir: DataFolder, mut config: Config, key: PathBuf) {
    config.store.master_key_file = Some(key);
    let server = TestServer::start_in(dir, config).await;
    let mut resolver = server.resolver().await;
    for i in 0..KEPT {
        let name = format!("tenants/acme/tokens/kept-{i}");
        assert_eq!(
            resolve(&mut resolver, &name).await.expect("resolve"),
            value_of(i)
        );
    }
    let gone = resolve(&mut resolver, "tenants/acme/tokens/doomed")
        .await
        .expect_err("removed");
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn after_shred_and_the_old_key_destroyed_an_old_copy_opens_with_no_remaining_key() {
    let (dir, config, old_copy) = copy_then_remove().await;
    let db = dir.store.clone();
    let old_key = config.store.master_key_file.clone().expect("key file");
    let before = keyring_facts(&db).await;
    assert_eq!((before.versions.as_slice(), before.current), (&[1][..], 1));

    let config_path = dir.path().join("shred.toml");
    write_config(&config, &config_path);
    let new_key = dir.path().join("new.key");
    let out = shred(&config_path, &new_key);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let destroy = format!(
        "Now destroy the old root key file {0}: delete it (e.g. shred -u {0}) and every copy of it.",
        old_key.display()
    );
    assert!(stdout.contains(&destroy), "{stdout}");
    assert!(
        stdout.contains("once it is destroyed, they can no longer be opened"),
        "{stdout}"
    );

    // Every step happened (so skipping one fails here): a new KEK, every
    // row moved to it, the old KEK gone, the keyring under another root key.
    let after = keyring_facts(&db).await;
    assert_eq!(after.versions, [2], "old KEK versions remain");
    assert_eq!(
        (after.current, after.token_versions.as_slice()),
        (2, &[2][..])
    );
    assert!(
        after.key_check != before.key_check,
        "the root key did not change"
    );

    std::fs::remove_file(&old_key).expect("destroy the old root key");
    // What remains cannot open the old copy: the new key fails its key check.
    assert_eq!(
        open_error(&old_copy, KeySource::File(new_key.clone())).await,
        KEY_CHECK_FAILED
    );
    assert!(
        open_error(&old_copy, KeySource::File(old_key))
            .await
            .contains("No such file"),
        "the old key file is gone"
    );
    // The old copy's own keyring still names only KEK version 1, sealed
    // under the destroyed key; the live database holds version 2 only.
    assert_eq!(keyring_facts(&old_copy).await.versions, [1]);

    assert_eq!(
        open_error(&db, KeySource::File(new_key.clone())).await,
        "opened"
    );
    assert_live_serves(dir, config, new_key).await;
}

// One scenario, kept whole: a serving server, the three commands refused,
// nothing changed, then the control once it stopped.
#[tokio::test]
async fn shred_rekey_and_restore_are_refused_while_a_server_holds_the_database() {
    let o = OsStr::new;
    let server = TestServer::start().await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "live", "sk-live-while-serving"))
        .await
        .expect("create");
    let db = server.store().clone();
    let config_path = server.path("held.toml");
    write_config(&server.config, &config_path);
    let backup = server.path("backup.db");
    let (refusal, restore_refusal) = match &db {
        TestStore::Sqlite(path) => {
            let out = aitokens()
                .args([o("backup"), o("--config"), config_path.as_os_str()])
                .args([o("--out"), backup.as_os_str()])
                .output()
                .expect("backup");
            assert!(out.status.success(), "backup: {}", text(&out.stderr));
            let refusal = format!(
                "aitokens: error: database {0} is in use by a running server or another \
                 aitokens command (it holds {0}.lock); stop the server first\n",
                path.display()
            );
            (refusal.clone(), refusal)
        }
        // PostgreSQL: the replicas' sessions say the database is in use;
        // restoring is pg_restore's job.
        TestStore::Postgres(_) => {
            let location = StoreLocation::parse(&db.spec(), None).expect("location");
            let refusal = format!(
                "aitokens: error: {} is in use: ",
                match &location {
                    StoreLocation::Postgres(target) => target.shown().to_owned(),
                    StoreLocation::Sqlite(_) => unreachable!(),
                }
            );
            (refusal, "pg_restore".to_owned())
        }
    };
    let before = keyring_facts(&db).await;

    let new_key = server.path("new.key");
    let (config, key, from) = (
        config_path.as_os_str(),
        new_key.as_os_str(),
        backup.as_os_str(),
    );
    for (args, expected) in [
        (
            &[
                o("keys"),
                o("shred"),
                o("--config"),
                config,
                o("--new-key-file"),
                key,
            ][..],
            &refusal,
        ),
        (
            &[
                o("keys"),
                o("rekey"),
                o("--config"),
                config,
                o("--new-key-file"),
                key,
            ][..],
            &refusal,
        ),
        (
            &[o("restore"), o("--config"), config, o("--from"), from][..],
            &restore_refusal,
        ),
    ] {
        let out = aitokens().args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        if backend::postgres() {
            assert!(stderr.contains(expected.as_str()), "{args:?}: {stderr}");
        } else {
            assert_eq!(&stderr, expected, "{args:?}");
        }
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    }

    // Nothing changed: no new key, the same keyring, no staging file, and
    // the server still serves the token.
    assert!(!new_key.exists(), "a new key file was created");
    assert_eq!(keyring_facts(&db).await, before);
    if let TestStore::Sqlite(path) = &db {
        assert!(!PathBuf::from(format!("{}.restore", path.display())).exists());
    }
    let mut resolver = server.resolver().await;
    assert_eq!(
        resolve(&mut resolver, "tenants/acme/tokens/live")
            .await
            .expect("resolve"),
        "sk-live-while-serving"
    );
    drop(resolver);

    // Control: stopped, the same command goes through (SQLite: the restore;
    // PostgreSQL, where restore is pg_restore's: the rekey).
    let (_dir, _config) = server.stop().await;
    let control: &[&OsStr] = if backend::postgres() {
        &[
            o("keys"),
            o("rekey"),
            o("--config"),
            config,
            o("--new-key-file"),
            key,
        ]
    } else {
        &[o("restore"), o("--config"), config, o("--from"), from]
    };
    let out = aitokens().args(control).output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A database initialized under a passphrase (from a file), and a config
/// for it: (config path, database, passphrase file).
fn passphrase_database(setup: &Setup) -> (PathBuf, TestStore, PathBuf) {
    let dir = setup.dir.path();
    let db = TestStore::named(dir, "passphrase.db");
    let old_passphrase = dir.join("old-passphrase");
    write_private(&old_passphrase, "the old passphrase\n");
    let out = aitokens()
        .args(["init", "--db", &db.spec()])
        .arg("--passphrase-file")
        .arg(&old_passphrase)
        .output()
        .expect("init");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut config = setup.config.clone();
    db.configure(&mut config);
    config.store.master_key_file = None;
    config.store.passphrase_file = Some(old_passphrase.clone());
    let config_path = dir.join("passphrase.toml");
    write_config(&config, &config_path);
    (config_path, db, old_passphrase)
}

#[tokio::test]
async fn shred_refuses_a_new_passphrase_that_opens_the_database_now() {
    let setup = Setup::new();
    let dir = setup.dir.path().to_owned();
    let (config_path, db, old_passphrase) = passphrase_database(&setup);
    let before = keyring_facts(&db).await;

    // The same passphrase (another file) is no new root key.
    let same = dir.join("same-passphrase");
    write_private(&same, "the old passphrase\n");
    let out = aitokens()
        .args(["keys", "shred", "--config"])
        .arg(&config_path)
        .arg("--new-passphrase-file")
        .arg(&same)
        .output()
        .expect("shred");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "aitokens: error: the new root key opens this database already (it is the current \
         key or passphrase); choose a new one\n"
    );
    assert_eq!(
        keyring_facts(&db).await,
        before,
        "refused, yet something changed"
    );

    // A new passphrase on stdin goes through, and names the old one to destroy.
    let mut child = aitokens()
        .args(["keys", "shred", "--new-passphrase-stdin", "--config"])
        .arg(&config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shred");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a brand new passphrase\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "Now destroy the old passphrase: delete {} and every copy of it, and forget the passphrase.",
            old_passphrase.display()
        )),
        "{stdout}"
    );
    let after = keyring_facts(&db).await;
    assert_eq!((after.versions.as_slice(), after.current), (&[2][..], 2));
    assert_ne!(after.key_check, before.key_check);
    let new_passphrase = dir.join("new-passphrase");
    write_private(&new_passphrase, "a brand new passphrase\n");
    assert_eq!(
        open_error(&db, KeySource::PassphraseFile(new_passphrase)).await,
        "opened"
    );
    assert_eq!(
        open_error(&db, KeySource::PassphraseFile(old_passphrase)).await,
        KEY_CHECK_FAILED
    );
}
