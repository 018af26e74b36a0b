//! The audit chain is keyed: `aitokens audit verify` (with the root key,
//! and an anchor of checkpoints kept outside the database) finds a record
//! altered, a record removed, a chain rebuilt without the key and the
//! newest records truncated; export and prune keep the rest verifiable; a
//! trail written before chains were keyed is re-linked once it verifies.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use aitokens::{
    crypto::chain::{GENESIS, legacy_link},
    model::{AuditEvent, Outcome, from_micros},
};
use rusqlite::{Connection, params};

use crate::common::{Setup, TestServer, create_request};

/// A stopped server's data folder with `tokens` creates in its trail.
async fn trail_with(tokens: usize) -> (tempfile::TempDir, aitokens::config::Config) {
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
    db: PathBuf,
    key: PathBuf,
    anchor: PathBuf,
}

fn files(dir: &Path, config: &aitokens::config::Config) -> Files {
    Files {
        db: config.store.database.clone(),
        key: config.store.master_key_file.clone().expect("key file"),
        anchor: dir.join("audit-anchor.jsonl"),
    }
}

/// `aitokens audit verify` of `db` with the key, and the anchor if given.
fn verify(db: &Path, key: &Path, anchor: Option<&Path>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aitokens"));
    command
        .args(["audit", "verify", "--db"])
        .arg(db)
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

/// A copy of the database (with its WAL, if any) named `name`.
fn copy(db: &Path, name: &str) -> PathBuf {
    let path = db.with_file_name(name);
    std::fs::copy(db, &path).expect("copy db");
    let wal = format!("{}-wal", db.display());
    if Path::new(&wal).exists() {
        std::fs::copy(&wal, format!("{}-wal", path.display())).expect("copy wal");
    }
    path
}

fn sql(db: &Path, statements: &str) {
    Connection::open(db)
        .expect("open")
        .execute_batch(statements)
        .expect("tamper");
}

/// Events of every record left in `db`, by sequence.
fn events(conn: &Connection) -> Vec<(i64, AuditEvent)> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, time_us, actor, peer, method, tenant, resource, outcome, reason, count, first_us
             FROM audit ORDER BY seq",
        )
        .expect("prepare");
    stmt.query_map([], |r| {
        let time: i64 = r.get(1)?;
        let outcome: String = r.get(7)?;
        Ok((
            r.get(0)?,
            AuditEvent {
                time: from_micros(time),
                first_time: from_micros(r.get::<_, Option<i64>>(10)?.unwrap_or(time)),
                count: r.get(9)?,
                actor: r.get(2)?,
                peer: r.get(3)?,
                method: r.get(4)?,
                tenant: r.get(5)?,
                resource: r.get(6)?,
                outcome: Outcome::parse(&outcome),
                reason: r.get(8)?,
            },
        ))
    })
    .expect("query")
    .collect::<rusqlite::Result<_>>()
    .expect("rows")
}

/// What someone with write access to the database but not the key can do:
/// keep `keep` records, renumber them and compute a fresh chain over them
/// with the unkeyed hash, head included.
fn rebuild_without_the_key(db: &Path, keep: usize) {
    let conn = Connection::open(db).expect("open");
    let kept: Vec<_> = events(&conn).into_iter().take(keep).collect();
    conn.execute_batch(
        "DROP TRIGGER audit_no_delete; DROP TRIGGER audit_no_update; DELETE FROM audit;",
    )
    .expect("wipe");
    let mut prev = GENESIS.to_vec();
    for (i, (_, event)) in kept.iter().enumerate() {
        let seq = i as i64 + 1;
        let hash = legacy_link(&prev, seq, event);
        conn.execute(
            "INSERT INTO audit (seq, time_us, actor, peer, method, tenant, resource, outcome, reason,
                                count, first_us, prev_hash, hash)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13",
            params![
                seq,
                aitokens::model::micros(event.time),
                event.actor,
                event.peer,
                event.method,
                event.tenant,
                event.resource,
                event.outcome.as_str(),
                event.reason,
                event.count,
                aitokens::model::micros(event.first_time),
                prev,
                hash.as_slice()
            ],
        )
        .expect("insert");
        prev = hash.to_vec();
    }
    conn.execute(
        "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1",
        params![kept.len() as i64, prev],
    )
    .expect("head");
}

#[tokio::test]
async fn verify_finds_every_kind_of_tampering() {
    let (dir, config) = trail_with(8).await;
    let f = files(dir.path(), &config);
    let (ok, text) = verify(&f.db, &f.key, Some(&f.anchor));
    assert!(ok, "the untouched trail must verify: {text}");
    assert!(text.contains("intact: 8 records"), "{text}");
    assert!(text.contains("checkpoints of"), "{text}");

    let altered = copy(&f.db, "altered.db");
    sql(
        &altered,
        "DROP TRIGGER audit_no_update; UPDATE audit SET actor = 'someone-else' WHERE seq = 2;",
    );
    let (ok, text) = verify(&altered, &f.key, None);
    assert!(!ok && text.contains("broken at record 2"), "{text}");

    let removed = copy(&f.db, "removed.db");
    sql(
        &removed,
        "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 3;",
    );
    let (ok, text) = verify(&removed, &f.key, None);
    assert!(!ok && text.contains("broken at record 3"), "{text}");

    let rebuilt = copy(&f.db, "rebuilt.db");
    rebuild_without_the_key(&rebuilt, 3);
    let (ok, text) = verify(&rebuilt, &f.key, None);
    assert!(
        !ok && text.contains("broken at record 1") && text.contains("MAC"),
        "a chain rebuilt without the key must not verify: {text}"
    );

    // Truncated after the last checkpoint, head adjusted to match: the
    // database alone looks intact; the anchor shows what it held.
    let truncated = copy(&f.db, "truncated.db");
    let conn = Connection::open(&truncated).expect("open");
    let (seq, hash): (i64, Vec<u8>) = conn
        .query_row("SELECT seq, hash FROM audit WHERE seq = 6", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("record 6");
    conn.execute_batch("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 6;")
        .expect("truncate");
    conn.execute(
        "UPDATE audit_head SET seq = ?1, hash = ?2",
        params![seq, hash],
    )
    .expect("head");
    drop(conn);
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
    let f = files(dir.path(), &config);
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
    let f = files(dir.path(), &config);
    let (ok, text) = verify(&f.db, &f.key, Some(&f.anchor));
    assert!(ok && text.contains("intact: 3 records"), "{text}");
    // The base cannot be moved without the key.
    let moved = copy(&f.db, "moved-base.db");
    sql(&moved, "UPDATE audit_base SET seq = 3;");
    let (ok, text) = verify(&moved, &f.key, None);
    assert!(!ok && text.contains("base of the pruned trail"), "{text}");
}

#[tokio::test]
async fn a_trail_from_before_keyed_chains_is_relinked_only_if_it_verifies() {
    let (dir, config) = trail_with(3).await;
    let db = config.store.database.clone();
    // Turn the database back into one written before chains were keyed: no
    // audit key, every link the unkeyed hash.
    let legacy = |db: &Path| {
        let conn = Connection::open(db).expect("open");
        let all = events(&conn);
        conn.execute_batch("UPDATE keyring SET audit_key = NULL; DROP TRIGGER audit_no_update;")
            .expect("unkey");
        let mut prev = GENESIS.to_vec();
        for (seq, event) in &all {
            let hash = legacy_link(&prev, *seq, event);
            conn.execute(
                "UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE seq = ?1",
                params![seq, prev, hash.as_slice()],
            )
            .expect("relink");
            prev = hash.to_vec();
        }
        conn.execute(
            "UPDATE audit_head SET seq = ?1, hash = ?2",
            params![all.len() as i64, prev],
        )
        .expect("head");
        conn.execute_batch(
            "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
                 BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
        )
        .expect("trigger");
    };
    legacy(&db);
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
    let tampered = copy(&db, "tampered.db");
    sql(
        &tampered,
        "DROP TRIGGER audit_no_update; UPDATE audit SET reason = 'edited' WHERE seq = 2;",
    );
    let tampered_config = dir.path().join("tampered.toml");
    std::fs::write(
        &tampered_config,
        std::fs::read_to_string(&config_path)
            .expect("config")
            .replace("aitokens.db", "tampered.db"),
    )
    .expect("write config");
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
