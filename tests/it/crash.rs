//! Crash durability: `kill -9` the real `aitokens serve` process at random
//! points during a concurrent create load, then restart it and check that
//! nothing acknowledged was lost, nothing is half-written, and the database
//! passes `PRAGMA integrity_check`.
//!
//! The only errors a creator may see are transport errors (the connection
//! went away), and only after the kill: the kill instant is recorded just
//! before the signal, so an error seen before it, or any other status, fails
//! the test. Every cycle must see its load cut by the kill.
//!
//! 20 cycles in CI; 50 with `AITOKENS_LONG_TESTS=1`. A kill -9 cannot test
//! `synchronous=FULL` against power loss (SQLite is durable across process
//! crashes at any setting); that needs a LazyFS-style harness.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aitokens::api::pb::{ResolveTokenRequest, token_admin_client::TokenAdminClient};
use tonic::{Code, transport::Channel};

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

/// When the current cycle's kill was sent (none before it).
type KillInstant = Arc<Mutex<Option<Instant>>>;

/// Whether `status` says the connection went away: UNAVAILABLE, or UNKNOWN
/// "transport error" caused by the connection (reset, closed, broken pipe).
/// Returns the failure's text for the summary.
pub(crate) fn transport_error(status: &tonic::Status) -> Option<String> {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        text.push_str(": ");
        text.push_str(&error.to_string());
        source = error.source();
    }
    let lower = text.to_lowercase();
    // tonic says "transport error" for a failed connection and "h2 protocol
    // error" for an HTTP/2 connection that broke under a stream; an io
    // error's kind may be printed in its Debug form ("ConnectionReset").
    let transport = (lower.starts_with("transport error")
        || lower.starts_with("h2 protocol error"))
        && [
            "connection reset",
            "connectionreset",
            "brokenpipe",
            "unexpectedeof",
            "connection closed",
            "closed connection",
            "broken pipe",
            "connection refused",
            "unexpected eof",
        ]
        .iter()
        .any(|words| lower.contains(words));
    // Ports and addresses vary; the summary keeps the kind of failure.
    let text: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    match status.code() {
        Code::Unavailable => Some(format!("Unavailable: {text}")),
        Code::Unknown if transport => Some(format!("Unknown: {text}")),
        // hyper cancels a request whose connection closed under it.
        Code::Cancelled if lower.contains("connection closed") => {
            Some(format!("Cancelled: {text}"))
        }
        _ => None,
    }
}

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

    let mut transport_errors = BTreeSet::new();
    let mut server = Serve::start(&data, "info", "serve-0.log");
    for cycle in 0..cycles {
        transport_errors.extend(kill_under_load(server, &data, &journal, cycle, &mut rng).await);
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
        "{cycles} kill -9 cycles, {acknowledged} acknowledged creates, slowest restart-to-serving \
         {slowest:?}; transport errors after the kills: {transport_errors:?}"
    );
    server.terminate();
}

/// Starts 8 concurrent creators (bounded in count and time), kills the
/// server at a random point of their load, and returns the transport errors
/// that stopped them; at least one must have been cut by the kill.
async fn kill_under_load(
    server: Serve,
    data: &DataDir,
    journal: &Journal,
    cycle: usize,
    rng: &mut fastrand::Rng,
) -> Vec<String> {
    let admin = server.admin(data).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let killed_at = KillInstant::default();
    let mut tasks = Vec::new();
    for task in 0..8 {
        let creator = Creator {
            admin: admin.clone(),
            journal: journal.clone(),
            killed_at: killed_at.clone(),
            prefix: format!("c{cycle}-{task}"),
            salt: rng.u64(..),
            deadline,
        };
        tasks.push(tokio::spawn(creator.run()));
    }
    // A random point in the load, then no warning at all.
    tokio::time::sleep(Duration::from_millis(rng.u64(30..400))).await;
    *killed_at.lock().expect("kill instant") = Some(Instant::now());
    server.kill9();
    let mut failures = Vec::new();
    for task in tasks {
        let failure = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("creators stop once the server is gone")
            .expect("creator task");
        failures.extend(failure);
    }
    assert!(
        !failures.is_empty(),
        "cycle {cycle}: the kill cut no create in flight (the load had ended)"
    );
    failures
}

/// One of the concurrent creators of a cycle.
struct Creator {
    admin: TokenAdminClient<Channel>,
    journal: Journal,
    killed_at: KillInstant,
    /// Token ids are PREFIX-K.
    prefix: String,
    salt: u64,
    deadline: Instant,
}

impl Creator {
    /// Creates tokens until the server is gone, journaling each; returns the
    /// transport error that stopped it (none if the load ran out first).
    async fn run(mut self) -> Option<String> {
        for k in 0..2_000 {
            if Instant::now() > self.deadline {
                break;
            }
            let id = format!("{}-{k}", self.prefix);
            let value = format!("sk-crash-{id}-{:016x}", self.salt);
            self.journal
                .lock()
                .expect("journal")
                .insert(id.clone(), (value.clone(), Outcome::Unknown));
            let result = self
                .admin
                .create_token(create_request("acme", &id, &value))
                .await;
            let status = match result {
                Ok(_) => {
                    let mut journal = self.journal.lock().expect("journal");
                    journal.get_mut(&id).expect("entry").1 = Outcome::Acknowledged;
                    continue;
                }
                Err(status) => status,
            };
            // The server is gone (this create stays Unknown), and only then.
            let seen = Instant::now();
            let killed = *self.killed_at.lock().expect("kill instant");
            assert!(
                killed.is_some_and(|k| k <= seen),
                "{id}: an error before the kill: {status:?}"
            );
            let failure = transport_error(&status).unwrap_or_else(|| {
                panic!("{id}: not a transport error after the kill: {status:?}")
            });
            return Some(failure);
        }
        None
    }
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
    data.dir.store.assert_intact().await;
}

#[test]
fn only_connection_failures_count_as_transport_errors() {
    let with_source = |message: &str, kind: std::io::ErrorKind, text: &str| {
        let mut status = tonic::Status::unknown(message);
        status.set_source(Arc::new(std::io::Error::new(kind, text.to_owned())));
        status
    };
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, Other};
    for transport in [
        tonic::Status::unavailable("tcp connect error"),
        with_source("transport error", ConnectionReset, "connection reset"),
        with_source("transport error", BrokenPipe, "broken pipe"),
        tonic::Status::unknown(
            "h2 protocol error: error reading a body from connection: Kind(ConnectionReset)",
        ),
        {
            let mut closed = tonic::Status::cancelled("operation was canceled");
            closed.set_source(Arc::new(std::io::Error::new(Other, "connection closed")));
            closed
        },
    ] {
        assert!(transport_error(&transport).is_some(), "{transport:?}");
    }
    for other in [
        tonic::Status::already_exists("a token with this id already exists"),
        tonic::Status::internal("internal error"),
        tonic::Status::cancelled("Timeout expired"),
        tonic::Status::unknown("transport error"),
        tonic::Status::unknown("h2 protocol error: stream no longer needed"),
        with_source("transport error", Other, "something else"),
        with_source("handler failed", ConnectionReset, "connection reset"),
    ] {
        assert!(transport_error(&other).is_none(), "{other:?}");
    }
}
