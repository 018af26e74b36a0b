//! Key lifecycle: rotation under load, kill -9 during the re-wrap job,
//! destroy-old, backup during writes, a damaged row. Rekey, and what is left
//! of removed tokens, are in [`remnants`].

mod remnants;

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aitokens::{
    api::pb::{
        DestroyOldKeysRequest, GetKeyStatusRequest, ResolveTokenRequest, RotateKeysRequest,
        key_admin_client::KeyAdminClient,
    },
    config::Config,
};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

use crate::{
    admin::contains,
    backend::{self, BackDoor},
    common::{Setup, TestServer, assert_status, create_request},
};

fn value_of(i: usize) -> String {
    format!(
        "sk-rot-{i:05}-{:08x}",
        (i as u32).wrapping_mul(2_654_435_761)
    )
}

async fn key_admin(server: &TestServer) -> KeyAdminClient<Channel> {
    KeyAdminClient::new(
        server
            .channel(server.admin_addr, Some(server.client_identity("admin")))
            .await
            .expect("channel"),
    )
}

/// Creates `count` tokens t00000.. in acme, 8 at a time.
async fn seed(server: &TestServer, count: usize) {
    let admin = server.admin().await;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..count).step_by(8) {
                admin
                    .create_token(create_request("acme", &format!("t{i:05}"), &value_of(i)))
                    .await
                    .expect("seed");
            }
        }));
    }
    for task in tasks {
        task.await.expect("seeder");
    }
}

async fn assert_all_resolve(server: &TestServer, count: usize) {
    assert_values(
        server,
        (0..count).map(|i| (format!("t{i:05}"), value_of(i))),
    )
    .await;
}

/// Every (token id in acme, value) pair resolves to exactly that value.
async fn assert_values(server: &TestServer, expected: impl IntoIterator<Item = (String, String)>) {
    let mut resolver = server.resolver().await;
    for (id, value) in expected {
        let got = resolver
            .resolve_token(ResolveTokenRequest {
                name: format!("tenants/acme/tokens/{id}"),
            })
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"))
            .into_inner();
        assert_eq!(got.value, value, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_resolve_and_create_load_fails_no_request() {
    let mut setup = Setup::new();
    setup.config.usage.flush_interval_secs = 1;
    let server = setup.start().await;
    let seeded = 600;
    seed(&server, seeded).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for worker in 0..4 {
        let mut resolver = server.resolver().await;
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n = i % seeded;
                match resolver
                    .resolve_token(ResolveTokenRequest {
                        name: format!("tenants/acme/tokens/t{n:05}"),
                    })
                    .await
                {
                    Ok(r) if r.get_ref().value == value_of(n) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 7;
            }
        }));
    }
    let created = Arc::new(AtomicUsize::new(0));
    {
        let mut admin = server.admin().await;
        let (stop, failed, created) = (stop.clone(), failed.clone(), created.clone());
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            for i in 0..400 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match admin
                    .create_token(create_request(
                        "acme",
                        &format!("new{i:04}"),
                        &value_of(10_000 + i),
                    ))
                    .await
                {
                    Ok(_) => created.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    let mut keys = key_admin(&server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = keys
        .rotate_keys(RotateKeysRequest {})
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(rotated.current_version, 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = keys
            .get_key_status(GetKeyStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        if status.pending_rewrap == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "re-wrap did not finish: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    eprintln!(
        "rotation under load: {} resolves and {} creates succeeded, {} failed",
        ok.load(Ordering::Relaxed),
        created.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "the load did not run");

    // Destroy-old, then every token (old and new) still resolves exactly.
    let destroyed = keys
        .destroy_old_keys(DestroyOldKeysRequest {})
        .await
        .expect("destroy")
        .into_inner();
    assert_eq!(destroyed.destroyed_versions, [1]);
    let versions: Vec<_> = destroyed
        .status
        .expect("status")
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, [2]);
    assert_all_resolve(&server, seeded).await;
    let created = created.load(Ordering::Relaxed);
    assert_values(
        &server,
        (0..created).map(|i| (format!("new{i:04}"), value_of(10_000 + i))),
    )
    .await;
}

#[tokio::test]
async fn destroy_old_is_refused_while_data_keys_use_the_old_version() {
    let mut setup = Setup::new();
    setup.config.usage.flush_interval_secs = 3600; // no background re-wrap in this test
    let server = setup.start().await;
    seed(&server, 20).await;
    let mut keys = key_admin(&server).await;
    keys.rotate_keys(RotateKeysRequest {})
        .await
        .expect("rotate");
    let status = keys
        .destroy_old_keys(DestroyOldKeysRequest {})
        .await
        .expect_err("pending");
    assert_status(&status, Code::FailedPrecondition, None);
    assert_eq!(
        status
            .get_error_details()
            .error_info()
            .expect("ErrorInfo")
            .reason,
        "REWRAP_PENDING"
    );
    // The agent identity is no key admin.
    let channel = server
        .channel(server.admin_addr, Some(server.client_identity("agent")))
        .await
        .expect("channel");
    let status = KeyAdminClient::new(channel)
        .rotate_keys(RotateKeysRequest {})
        .await
        .expect_err("agent");
    assert_status(&status, Code::PermissionDenied, None);
    assert_all_resolve(&server, 20).await;
}

fn aitokens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aitokens"))
}

fn write_config(config: &Config, path: &Path) {
    std::fs::write(path, toml::to_string(config).expect("config")).expect("write config");
}

/// Rows per KEK version, read behind the server's back.
async fn versions(door: &BackDoor) -> BTreeMap<u32, i64> {
    door.query(
        "SELECT kek_version, count(*) FROM tokens GROUP BY kek_version",
        &[],
    )
    .await
    .into_iter()
    .map(|r| (u32::try_from(r[0].int()).expect("version"), r[1].int()))
    .collect()
}

#[tokio::test]
async fn kill_9_during_the_rewrap_job_then_resume() {
    let server = TestServer::start().await;
    let count = 400;
    seed(&server, count).await;
    let (dir, config) = server.stop().await;
    let config_path = dir.path().join("config-abs.toml");
    write_config(&config, &config_path);
    let door = dir.store.back_door().await;

    // Small batches: many transactions, so the kill lands mid-job.
    let mut child = aitokens()
        .args(["keys", "rotate", "--batch-size", "3", "--config"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rotate");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = versions(&door).await;
        if v.get(&2).copied().unwrap_or(0) >= 30 {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "rotate finished before it could be killed: {v:?}"
        );
        assert!(Instant::now() < deadline, "re-wrap never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let mid = versions(&door).await;
    assert!(
        mid.get(&1).copied().unwrap_or(0) > 0,
        "the job was not interrupted mid-way: {mid:?}"
    );
    dir.store.assert_intact().await;

    // The server resumes the job by itself and every token resolves exactly.
    let mut config = config;
    config.usage.flush_interval_secs = 1;
    let server = TestServer::start_in(dir, config).await;
    assert_all_resolve(&server, count).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while versions(&door).await.get(&1).copied().unwrap_or(0) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server did not resume the re-wrap job"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(versions(&door).await.get(&2).copied(), Some(count as i64));
    assert_all_resolve(&server, count).await;
}

/// Creates `w0000`.. while `during` runs; returns the creates acknowledged
/// before `during` started.
async fn writes_around<T>(server: &TestServer, during: impl AsyncFnOnce() -> T) -> (Vec<usize>, T) {
    let mut admin = server.admin().await;
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..150 {
            if admin
                .create_token(create_request(
                    "acme",
                    &format!("w{i:04}"),
                    &value_of(20_000 + i),
                ))
                .await
                .is_ok()
            {
                acked.push((i, Instant::now()));
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let result = during().await;
    let acked = writer.await.expect("writer");
    let before: Vec<usize> = acked
        .iter()
        .filter(|(_, t)| *t < started)
        .map(|(i, _)| *i)
        .collect();
    assert!(
        !before.is_empty(),
        "no write was acknowledged before the backup"
    );
    (before, result)
}

/// PostgreSQL: `aitokens backup` and `restore` name PostgreSQL's own tools;
/// a pg_dump taken during writes, restored into an empty database, serves
/// every create acknowledged before it, holds no plaintext, and opens only
/// with the deployment's root key.
async fn pg_dump_during_writes_restores_every_acknowledged_token() {
    let server = TestServer::start().await;
    seed(&server, 100).await;
    let config_path = server.path("abs.toml");
    write_config(&server.config, &config_path);
    let out = aitokens()
        .args(["backup", "--config"])
        .arg(&config_path)
        .arg("--out")
        .arg(server.path("backup.db"))
        .output()
        .expect("backup");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("pg_dump"), "{text}");
    let out = aitokens()
        .args(["restore", "--config"])
        .arg(&config_path)
        .arg("--from")
        .arg(server.path("backup.db"))
        .output()
        .expect("restore");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("pg_restore"),
        "{text}"
    );

    let dump = server.path("backup.dump");
    let url = server.store().spec();
    let (before_backup, ()) = writes_around(&server, async || {
        let out = Command::new("pg_dump")
            .args(["--format=custom", "--file"])
            .arg(&dump)
            .arg(&url)
            .output()
            .expect("pg_dump");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
    let bytes = std::fs::read(&dump).expect("read dump");
    assert!(
        !contains(&bytes, value_of(0).as_bytes()),
        "plaintext in the dump"
    );

    let (dir, mut config) = server.stop().await;
    let empty = backend::empty_postgres();
    let out = Command::new("pg_restore")
        .args(["--exit-on-error", "--dbname", &empty.spec()])
        .arg(&dump)
        .output()
        .expect("pg_restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    empty.configure(&mut config);
    let mut wrong = config.clone();
    let wrong_key = dir.path().join("wrong.key");
    aitokens::crypto::RootKey::create_file(&wrong_key).expect("key");
    wrong.store.master_key_file = Some(wrong_key);
    let refused = match aitokens::server::Server::open(&wrong).await {
        Ok(_) => panic!("the dump opened with another key"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("master key does not match"), "{refused}");
    let server = TestServer::start_in(dir, config).await;
    assert_all_resolve(&server, 100).await;
    assert_values(
        &server,
        before_backup
            .into_iter()
            .map(|i| (format!("w{i:04}"), value_of(20_000 + i))),
    )
    .await;
    drop(empty);
}

#[tokio::test]
async fn backup_during_writes_restores_every_acknowledged_token() {
    if backend::postgres() {
        return pg_dump_during_writes_restores_every_acknowledged_token().await;
    }
    let server = TestServer::start().await;
    seed(&server, 100).await;
    let config_path = server.path("abs.toml");
    write_config(&server.config, &config_path);
    let backup = server.path("backup.db");
    let (before_backup, ()) = writes_around(&server, async || {
        let out = aitokens()
            .args(["backup", "--config"])
            .arg(&config_path)
            .arg("--out")
            .arg(&backup)
            .output()
            .expect("backup");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
    let bytes = std::fs::read(&backup).expect("read backup");
    assert!(
        !contains(&bytes, value_of(0).as_bytes()),
        "plaintext in the backup"
    );

    let (dir, config) = server.stop().await;
    // Restoring with the wrong key is refused and replaces nothing.
    let wrong_key = dir.path().join("wrong.key");
    aitokens::crypto::RootKey::create_file(&wrong_key).expect("key");
    let mut wrong = config.clone();
    wrong.store.master_key_file = Some(wrong_key);
    let wrong_path = dir.path().join("wrong.toml");
    write_config(&wrong, &wrong_path);
    let db_before = std::fs::metadata(&config.store.database).expect("db").len();
    let out = aitokens()
        .args(["restore", "--config"])
        .arg(&wrong_path)
        .arg("--from")
        .arg(&backup)
        .output()
        .expect("restore");
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("master key does not match")
    );
    assert_eq!(
        std::fs::metadata(&config.store.database).expect("db").len(),
        db_before
    );

    let restored = dir.path().join("restored.db");
    let out = aitokens()
        .args(["restore", "--config"])
        .arg(&config_path)
        .arg("--from")
        .arg(&backup)
        .arg("--db")
        .arg(&restored)
        .output()
        .expect("restore");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("every value opens"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut config = config;
    config.store.database = restored;
    let server = TestServer::start_in(dir, config).await;
    assert_all_resolve(&server, 100).await;
    // Every create acknowledged before the backup started.
    assert_values(
        &server,
        before_backup
            .into_iter()
            .map(|i| (format!("w{i:04}"), value_of(20_000 + i))),
    )
    .await;
}

#[tokio::test]
async fn a_damaged_row_does_not_stall_the_rewrap_job() {
    let mut setup = Setup::new();
    setup.config.usage.flush_interval_secs = 1;
    let server = setup.start().await;
    seed(&server, 40).await;
    let door = server.back_door().await;
    let zeros = if backend::postgres() {
        "decode(repeat('00', length(wrapped_data_key)), 'hex')"
    } else {
        "zeroblob(length(wrapped_data_key))"
    };
    let damaged = door
        .execute(
            &format!("UPDATE tokens SET wrapped_data_key = {zeros} WHERE token_id = 't00003'"),
            &[],
        )
        .await;
    assert_eq!(damaged, 1, "damaged one row");
    let mut keys = key_admin(&server).await;
    keys.rotate_keys(RotateKeysRequest {})
        .await
        .expect("rotate");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = keys
            .get_key_status(GetKeyStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        if status.pending_rewrap == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the job stalled: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every other row moved; the damaged one stays, and keeps its KEK alive.
    assert_eq!(versions(&door).await.get(&2).copied(), Some(39));
    let status = keys
        .destroy_old_keys(DestroyOldKeysRequest {})
        .await
        .expect_err("still needed");
    assert_status(&status, Code::FailedPrecondition, None);
    let mut resolver = server.resolver().await;
    for i in (0..40).filter(|i| *i != 3) {
        let got = resolver
            .resolve_token(ResolveTokenRequest {
                name: format!("tenants/acme/tokens/t{i:05}"),
            })
            .await
            .expect("resolve");
        assert_eq!(got.get_ref().value, value_of(i));
    }
    let status = resolver
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/t00003".into(),
        })
        .await
        .expect_err("damaged");
    assert_status(&status, Code::DataLoss, None);
}
