//! The audit chain is keyed: `aitokens audit verify` (with the root key,
//! and an anchor of checkpoints kept outside the database) finds a record
//! altered, a record removed, a chain rebuilt without the key and the
//! newest records truncated; export and prune keep the rest verifiable; a
//! trail written before chains were keyed is re-linked once it verifies.

use std::{path::Path, process::Command};

use aitokens::{
    crypto::chain::{GENESIS, legacy_link},
    model::{AuditEvent, Outcome, from_micros, micros},
};

use crate::{
    backend::{BackDoor, DataFolder, TestStore, Val},
    common::{Setup, TestServer, create_request},
};

/// A stopped server's data folder with `tokens` creates in its trail.
async fn trail_with(tokens: usize) -> (DataFolder, aitokens::config::Config) {
    let mut setup = Setup::new();
    setup.config.audit.checkpoint_interval_secs = 1;
    let server = setup.start().await;
    let mut admin = server.admin().await;
    for i in 0..tokens {
        admin
            .create_token(create_request("acme", &format!("t{i}"), "v"))
            .await
            .expect("create");
    }
    drop(admin);
    server.stop().await
}

struct Files {
    db: TestStore,
    key: std::path::PathBuf,
    anchor: std::path::PathBuf,
}

fn files(dir: &DataFolder, config: &aitokens::config::Config) -> Files {
    Files {
        db: dir.store.clone(),
        key: config.store.master_key_file.clone().expect("key file"),
        anchor: dir.path().join("audit-anchor.jsonl"),
    }
}

/// `aitokens audit verify` of `db` with the key, and the anchor if given.
fn verify(db: &TestStore, key: &Path, anchor: Option<&Path>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aitokens"));
    command
        .args(["audit", "verify", "--db", &db.spec()])
        .arg("--key-file")
        .arg(key);
    if let Some(anchor) = anchor {
        command.arg("--anchor").arg(anchor);
    }
    let out = command.output().expect("run aitokens audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `statements` on `db` as someone who ignores the trail's guards.
async fn tamper(db: &TestStore, statements: &str) {
    let door = db.back_door().await;
    door.ignore_guards().await;
    door.batch(statements).await;
}

/// Events of every record left in the database, by sequence.
async fn events(door: &BackDoor) -> Vec<(i64, AuditEvent)> {
    door.query(
        "SELECT seq, time_us, actor, peer, method, tenant, resource, outcome, reason, count, first_us
         FROM audit ORDER BY seq",
        &[],
    )
    .await
    .into_iter()
    .map(|r| {
        let time = r[1].int();
        let first = match &r[10] {
            Val::Null => time,
            v => v.int(),
        };
        let tenant = match &r[5] {
            Val::Null => None,
            v => Some(v.text()),
        };
        (
            r[0].int(),
            AuditEvent {
                time: from_micros(time),
                first_time: from_micros(first),
                count: r[9].int(),
                actor: r[2].text(),
                peer: r[3].text(),
                method: r[4].text(),
                tenant,
                resource: r[6].text(),
                outcome: Outcome::parse(&r[7].text()),
                reason: r[8].text(),
            },
        )
    })
    .collect()
}

/// What someone with write access to the database but not the key can do:
/// keep `keep` records, renumber them and compute a fresh chain over them
/// with the unkeyed hash, head included.
async fn rebuild_without_the_key(db: &TestStore, keep: usize) {
    let door = db.back_door().await;
    door.ignore_guards().await;
    let kept: Vec<_> = events(&door).await.into_iter().take(keep).collect();
    door.batch("DELETE FROM audit").await;
    let mut prev = GENESIS.to_vec();
    for (i, (_, event)) in kept.iter().enumerate() {
        let seq = i as i64 + 1;
        let hash = legacy_link(&prev, seq, event);
        door.execute(
            "INSERT INTO audit (seq, time_us, actor, peer, method, tenant, resource, outcome, reason,
                                count, first_us, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                seq.into(),
                micros(event.time).into(),
                event.actor.as_str().into(),
                event.peer.as_str().into(),
                event.method.as_str().into(),
                event.tenant.as_deref().map_or(Val::Null, Val::from),
                event.resource.as_str().into(),
                event.outcome.as_str().into(),
                event.reason.as_str().into(),
                event.count.into(),
                micros(event.first_time).into(),
                prev.clone().into(),
                hash.to_vec().into(),
            ],
        )
        .await;
        prev = hash.to_vec();
    }
    door.execute(
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
        &[(kept.len() as i64).into(), prev.into()],
    )
    .await;
}

#[tokio::test]
async fn verify_finds_every_kind_of_tampering() {
    let (dir, config) = trail_with(8).await;
    let f = files(&dir, &config);
    let (ok, text) = verify(&f.db, &f.key, Some(&f.anchor));
    assert!(ok, "the untouched trail must verify: {text}");
    assert!(text.contains("intact: 8 records"), "{text}");
    assert!(text.contains("checkpoints of"), "{text}");

    let altered = f.db.copy("altered.db").await;
    tamper(
        &altered,
        "UPDATE audit SET actor = 'someone-else' WHERE seq = 2",
    )
    .await;
    let (ok, text) = verify(&altered, &f.key, None);
    assert!(!ok && text.contains("broken at record 2"), "{text}");

    let removed = f.db.copy("removed.db").await;
    tamper(&removed, "DELETE FROM audit WHERE seq = 3").await;
    let (ok, text) = verify(&removed, &f.key, None);
    assert!(!ok && text.contains("broken at record 3"), "{text}");

    let rebuilt = f.db.copy("rebuilt.db").await;
    rebuild_without_the_key(&rebuilt, 3).await;
    let (ok, text) = verify(&rebuilt, &f.key, None);
    assert!(
        !ok && text.contains("broken at record 1") && text.contains("MAC"),
        "a chain rebuilt without the key must not verify: {text}"
    );

    // Truncated after the last checkpoint, head adjusted to match: the
    // database alone looks intact; the anchor shows what it held.
    let truncated = f.db.copy("truncated.db").await;
    let door = truncated.back_door().await;
    door.ignore_guards().await;
    let six = &door
        .query("SELECT seq, hash FROM audit WHERE seq = 6", &[])
        .await[0];
    assert_eq!(
        door.execute("DELETE FROM audit WHERE seq > 6", &[]).await,
        2
    );
    door.execute(
        "UPDATE audit_head SET seq = $1, hash = $2",
        &[six[0].clone(), six[1].clone()],
    )
    .await;
    drop(door);
    let (ok, text) = verify(&truncated, &f.key, None);
    assert!(
        ok,
        "without the anchor a careful truncation is invisible: {text}"
    );
    let (ok, text) = verify(&truncated, &f.key, Some(&f.anchor));
    assert!(
        !ok && text.contains("broken at record 7") && text.contains("newest records were removed"),
        "{text}"
    );

    // An anchor line edited by hand does not carry a valid MAC.
    let forged = dir.path().join("forged-anchor.jsonl");
    let anchor = std::fs::read_to_string(&f.anchor).expect("anchor");
    std::fs::write(
        &forged,
        anchor.replacen("\"sequence\":", "\"sequence\":1", 1),
    )
    .expect("forge");
    let (ok, text) = verify(&f.db, &f.key, Some(&forged));
    assert!(!ok && text.contains("valid MAC"), "{text}");

    // Without the key nothing verifies: the wrong key file is refused.
    let wrong = dir.path().join("wrong.key");
    aitokens::crypto::RootKey::create_file(&wrong).expect("key");
    let (ok, text) = verify(&f.db, &wrong, None);
    assert!(!ok && text.contains("master key does not match"), "{text}");
}

#[tokio::test]
async fn export_then_prune_leaves_a_trail_that_still_verifies() {
    let (dir, config) = trail_with(6).await;
    let f = files(&dir, &config);
    let config_path = dir.path().join("config.toml");
    let exported = dir.path().join("export.jsonl");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_aitokens"))
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .output()
            .expect("run aitokens");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let out = exported.to_str().expect("path");
    let (ok, text) = run(&["audit", "export", "--out", out]);
    assert!(ok && text.contains("exported 6 audit records"), "{text}");
    let lines = std::fs::read_to_string(&exported).expect("export");
    assert_eq!(lines.lines().count(), 6);
    assert!(lines.lines().all(|l| l.contains("\"link\":")), "{lines}");

    let (ok, text) = run(&["audit", "prune", "--through-seq", "4"]);
    assert!(ok && text.contains("pruned 4 audit records"), "{text}");
    let (ok, text) = verify(&f.db, &f.key, Some(&f.anchor));
    assert!(ok && text.contains("intact: 2 records"), "{text}");
    // A server keeps appending after the base.
    let server = TestServer::start_in(dir, config).await;
    let mut admin = server.admin().await;
    admin
        .create_token(create_request("acme", "after", "v"))
        .await
        .expect("create");
    drop(admin);
    let (dir, config) = server.stop().await;
    let f = files(&dir, &config);
    let (ok, text) = verify(&f.db, &f.key, Some(&f.anchor));
    assert!(ok && text.contains("intact: 3 records"), "{text}");
    // The base cannot be moved without the key.
    let moved = f.db.copy("moved-base.db").await;
    tamper(&moved, "UPDATE audit_base SET seq = 3").await;
    let (ok, text) = verify(&moved, &f.key, None);
    assert!(!ok && text.contains("base of the pruned trail"), "{text}");
}

#[tokio::test]
async fn a_trail_from_before_keyed_chains_is_relinked_only_if_it_verifies() {
    let (dir, config) = trail_with(3).await;
    let db = dir.store.clone();
    // Turn the database back into one written before chains were keyed: no
    // audit key, every link the unkeyed hash.
    {
        let door = db.back_door().await;
        let all = events(&door).await;
        door.ignore_guards().await;
        door.batch("UPDATE keyring SET audit_key = NULL").await;
        let mut prev = GENESIS.to_vec();
        for (seq, event) in &all {
            let hash = legacy_link(&prev, *seq, event);
            door.execute(
                "UPDATE audit SET prev_hash = $2, hash = $3 WHERE seq = $1",
                &[(*seq).into(), prev.clone().into(), hash.to_vec().into()],
            )
            .await;
            prev = hash.to_vec();
        }
        door.execute(
            "UPDATE audit_head SET seq = $1, hash = $2",
            &[(all.len() as i64).into(), prev.into()],
        )
        .await;
        door.restore_guards().await;
    }
    let key = config.store.master_key_file.clone().expect("key");
    let (ok, text) = verify(&db, &key, None);
    assert!(!ok && text.contains("not keyed yet"), "{text}");

    // A server does not upgrade it by itself (whoever can write the
    // database could otherwise have a rebuilt trail re-linked): it refuses
    // and names the command.
    let refused = match aitokens::server::Server::open(&config).await {
        Ok(_) => panic!("a server re-linked an unkeyed trail on its own"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("aitokens audit upgrade"), "{refused}");

    // A legacy trail that was tampered with is refused, not laundered.
    let config_path = dir.path().join("config.toml");
    let upgrade = |config: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_aitokens"))
            .args(["audit", "upgrade", "--config"])
            .arg(config)
            .output()
            .expect("run aitokens audit upgrade");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let tampered = db.copy("tampered.db").await;
    tamper(
        &tampered,
        "UPDATE audit SET reason = 'edited' WHERE seq = 2",
    )
    .await;
    let tampered_config = dir.path().join("tampered.toml");
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config_path).expect("config")).expect("toml");
    tampered.configure_toml(table["store"].as_table_mut().expect("[store]"));
    std::fs::write(&tampered_config, toml::to_string(&table).expect("toml")).expect("write config");
    let (ok, text) = upgrade(&tampered_config);
    assert!(
        !ok && text.contains("does not verify at record 2"),
        "{text}"
    );

    // An intact legacy trail is keyed by the command, and verifies after.
    let (ok, text) = upgrade(&config_path);
    assert!(ok && text.contains("is keyed"), "{text}");
    let (ok, text) = verify(&db, &key, None);
    assert!(ok && text.contains("intact: 4 records"), "{text}");
    let server = TestServer::start_in(dir, config).await;
    drop(server);
}
