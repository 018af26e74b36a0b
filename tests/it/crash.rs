//! Crash durability: `kill -9` the real `aitokens serve` process at random
//! points during a concurrent create load, then restart it and check that
//! nothing acknowledged was lost, nothing is half-written, and the database
//! passes `PRAGMA integrity_check`.
//!
//! 20 cycles in CI; 50 with `AITOKENS_LONG_TESTS=1`. A kill -9 cannot test
//! `synchronous=FULL` against power loss (SQLite is durable across process
//! crashes at any setting); that needs a LazyFS-style harness.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aitokens::api::pb::ResolveTokenRequest;
use rusqlite::Connection;
use tonic::Code;

use crate::{
    common::create_request,
    process::{DataDir, Serve, long_tests},
};

/// What the client knows about one create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The server answered OK: the token must exist from now on.
    Acknowledged,
    /// Sent, but no answer (the server died): present or absent, never half.
    Unknown,
}

type Journal = Arc<Mutex<HashMap<String, (String, Outcome)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_creates_loses_nothing_acknowledged() {
    let _heavy = crate::common::HEAVY.lock().await;

    let cycles = if long_tests() { 50 } else { 20 };
    let seed = std::env::var("AITOKENS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        });
    eprintln!("crash test seed: {seed} (AITOKENS_CRASH_SEED={seed} replays the same kill delays)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let data = DataDir::new();
    let journal: Journal = Arc::default();
    let mut restarts = Vec::new();

    let mut server = Serve::start(&data, "info", "serve-0.log");
    for cycle in 0..cycles {
        // Load: 8 concurrent creators, bounded in count and time.
        let admin = server.admin(&data).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tasks = Vec::new();
        for task in 0..8 {
            let (mut admin, journal) = (admin.clone(), journal.clone());
            let salt = rng.u64(..);
            tasks.push(tokio::spawn(async move {
                for k in 0..2_000 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let id = format!("c{cycle}-{task}-{k}");
                    let value = format!("sk-crash-{cycle}-{task}-{k}-{salt:016x}");
                    journal
                        .lock()
                        .expect("journal")
                        .insert(id.clone(), (value.clone(), Outcome::Unknown));
                    match admin
                        .create_token(create_request("acme", &id, &value))
                        .await
                    {
                        Ok(_) => {
                            journal
                                .lock()
                                .expect("journal")
                                .get_mut(&id)
                                .expect("entry")
                                .1 = Outcome::Acknowledged;
                        }
                        // The server is gone: this create stays Unknown.
                        Err(status) => {
                            assert_ne!(status.code(), Code::AlreadyExists, "{id}: {status:?}");
                            break;
                        }
                    }
                }
            }));
        }
        // A random point in the load, then no warning at all.
        tokio::time::sleep(Duration::from_millis(rng.u64(30..400))).await;
        server.kill9();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("creators stop once the server is gone")
                .expect("creator task");
        }
        drop(admin);

        server = Serve::start(&data, "info", &format!("serve-{}.log", cycle + 1));
        restarts.push(server.ready_after);
        verify(&data, &server, &journal, Some(cycle)).await;
    }
    // Every acknowledged create of every cycle, once more at the end.
    verify(&data, &server, &journal, None).await;
    let acknowledged = journal
        .lock()
        .expect("journal")
        .values()
        .filter(|(_, o)| *o == Outcome::Acknowledged)
        .count();
    assert!(
        acknowledged >= cycles,
        "the load acknowledged only {acknowledged} creates in {cycles} cycles"
    );
    let slowest = restarts.iter().max().expect("restarts");
    eprintln!(
        "{cycles} kill -9 cycles, {acknowledged} acknowledged creates, slowest restart-to-serving {slowest:?}"
    );
    server.terminate();
}

/// Acknowledged creates resolve to their exact value; unknown ones are
/// either exactly present or absent; the database is intact.
async fn verify(data: &DataDir, server: &Serve, journal: &Journal, cycle: Option<usize>) {
    let entries: Vec<(String, String, Outcome)> = journal
        .lock()
        .expect("journal")
        .iter()
        .filter(|(id, _)| cycle.is_none_or(|c| id.starts_with(&format!("c{c}-"))))
        .map(|(id, (value, outcome))| (id.clone(), value.clone(), *outcome))
        .collect();
    let mut resolver = server.resolver(data).await;
    for (id, value, outcome) in entries {
        let result = resolver
            .resolve_token(ResolveTokenRequest {
                name: format!("tenants/acme/tokens/{id}"),
            })
            .await;
        match (outcome, result) {
            (_, Ok(reply)) => assert!(reply.get_ref().value == value, "{id}: wrong value"),
            (Outcome::Unknown, Err(status)) if status.code() == Code::NotFound => {}
            (outcome, Err(status)) => panic!("{id} ({outcome:?}): {status:?}"),
        }
    }
    let conn = Connection::open(&data.config.store.database).expect("open db");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
}
