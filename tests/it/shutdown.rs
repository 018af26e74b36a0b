//! Graceful shutdown: not ready from the first moment, and no WAL content
//! left behind (the server checkpoints with TRUNCATE at the end; SQLite's own
//! checkpoint when the last connection closes would also empty it, so this
//! test cannot tell the two apart).

use crate::common::{TestServer, create_request};

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
    let wal = server.database().with_extension("db-wal");
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
