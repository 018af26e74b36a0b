//! Graceful shutdown: not ready from the first moment, and nothing left
//! behind: no WAL content in SQLite (the server checkpoints with TRUNCATE at
//! the end; SQLite's own checkpoint when the last connection closes would
//! also empty it, so this test cannot tell the two apart), no session in
//! PostgreSQL.

use crate::{
    backend::{self, TestStore},
    common::{TestServer, create_request},
};

#[tokio::test]
async fn shutdown_turns_unready_and_leaves_no_wal_behind() {
    let server = TestServer::start().await;
    let telemetry = server.telemetry.clone();
    let mut admin = server.admin().await;
    for i in 0..20 {
        admin
            .create_token(create_request(
                "acme",
                &format!("t{i}"),
                "sk-shutdown-canary",
            ))
            .await
            .expect("create");
    }
    drop(admin);
    assert!(telemetry.is_ready(), "ready while serving");
    match server.store().clone() {
        TestStore::Sqlite(db) => {
            let wal = db.with_extension("db-wal");
            assert!(
                std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0,
                "creates went through the WAL"
            );
            let (_dir, _config) = server.stop().await;
            assert!(!telemetry.is_ready(), "not ready once stopped");
            assert_eq!(
                std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
                0,
                "no WAL content is left behind after shutdown"
            );
        }
        store @ TestStore::Postgres(_) => {
            // PostgreSQL: a stopped replica leaves no session behind (no
            // connection, no advisory lock held on the others' behalf).
            let door = store.back_door().await;
            let sessions = async || {
                door.value(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'aitokens'
                       AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .int()
            };
            assert!(
                sessions().await > 0,
                "the server holds sessions while serving"
            );
            let (_dir, _config) = server.stop().await;
            assert!(!telemetry.is_ready(), "not ready once stopped");
            let closed = backend::eventually(std::time::Duration::from_secs(5), async || {
                sessions().await == 0
            })
            .await;
            assert!(closed, "{} sessions left after shutdown", sessions().await);
        }
    }
}
