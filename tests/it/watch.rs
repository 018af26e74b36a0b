//! TokenResolver.WatchTokens over real mTLS, on both stores: every event
//! kind in order, resuming, the retained window, per-caller filtering, the
//! stream limit, heartbeats that reveal a dead server, and event delays
//! under churn.

use std::time::{Duration, Instant};

use aitokens::api::pb::{
    DisableTokenRequest, EnableTokenRequest, RemoveTokenRequest, RenameTokenRequest,
    WatchTokensRequest, WatchTokensResponse, token_admin_client::TokenAdminClient,
    token_resolver_client::TokenResolverClient, watch_tokens_response::EventType,
};
use tonic::{Code, Status, Streaming, transport::Channel};

use crate::{
    common::{BINDINGS_ONLY_POLICY, Setup, TestServer, assert_status, create_request},
    replicas::{Spread, reason},
};

/// How long a test waits for a message it expects.
const WAIT: Duration = Duration::from_secs(10);

pub fn tenant(parent: &str) -> WatchTokensRequest {
    WatchTokensRequest {
        parent: parent.into(),
        ..Default::default()
    }
}

/// A watch of the tenant `parent` resumed after `sequence`.
fn resume_after(parent: &str, sequence: i64) -> WatchTokensRequest {
    WatchTokensRequest {
        resume_after_sequence: sequence,
        ..tenant(parent)
    }
}

pub async fn open(
    client: &mut TokenResolverClient<Channel>,
    request: WatchTokensRequest,
) -> Result<Streaming<WatchTokensResponse>, Status> {
    client.watch_tokens(request).await.map(|r| r.into_inner())
}

/// The next message of any type.
pub async fn next_message(stream: &mut Streaming<WatchTokensResponse>) -> WatchTokensResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a message within 10 s")
        .expect("the stream stays up")
        .expect("the stream does not end")
}

/// The next message that is not a heartbeat, within 10 s.
pub async fn next_event(stream: &mut Streaming<WatchTokensResponse>) -> WatchTokensResponse {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(until, stream.message())
            .await
            .expect("an event within 10 s")
            .expect("the stream stays up")
            .expect("the stream does not end");
        if message.r#type() != EventType::Heartbeat {
            return message;
        }
    }
}

/// Asserts nothing but heartbeats arrives for `quiet`.
async fn assert_quiet(stream: &mut Streaming<WatchTokensResponse>, quiet: Duration) {
    let until = tokio::time::Instant::now() + quiet;
    while let Ok(message) = tokio::time::timeout_at(until, stream.message()).await {
        let message = message.expect("stream up").expect("stream open");
        assert_eq!(
            message.r#type(),
            EventType::Heartbeat,
            "unexpected {message:?}"
        );
    }
}

fn summary(m: &WatchTokensResponse) -> (EventType, String, String) {
    (m.r#type(), m.name.clone(), m.new_name.clone())
}

fn token(tenant: &str, id: &str) -> String {
    format!("tenants/{tenant}/tokens/{id}")
}

pub async fn create(admin: &mut TokenAdminClient<Channel>, tenant: &str, id: &str) {
    admin
        .create_token(create_request(tenant, id, &format!("sk-value-of-{id}")))
        .await
        .expect("create");
}

pub async fn disable(admin: &mut TokenAdminClient<Channel>, name: &str) {
    admin
        .disable_token(DisableTokenRequest {
            name: name.into(),
            etag: None,
        })
        .await
        .expect("disable");
}

pub async fn enable(admin: &mut TokenAdminClient<Channel>, name: &str) {
    admin
        .enable_token(EnableTokenRequest {
            name: name.into(),
            etag: None,
        })
        .await
        .expect("enable");
}

pub async fn rename(admin: &mut TokenAdminClient<Channel>, name: &str, new_id: &str) {
    admin
        .rename_token(RenameTokenRequest {
            name: name.into(),
            new_token_id: Some(new_id.into()),
            ..Default::default()
        })
        .await
        .expect("rename");
}

pub async fn remove(admin: &mut TokenAdminClient<Channel>, name: &str) {
    admin
        .remove_token(RemoveTokenRequest {
            name: name.into(),
            etag: None,
            force: true,
        })
        .await
        .expect("remove");
}

#[tokio::test]
async fn each_event_kind_arrives_in_order_with_increasing_sequences() {
    let server = TestServer::start().await;
    let (mut admin, mut resolver) = (server.admin().await, server.resolver().await);
    create(&mut admin, "acme", "alpha").await;
    create(&mut admin, "acme", "beta").await;
    let mut stream = open(&mut resolver, tenant("tenants/acme"))
        .await
        .expect("watch");
    let first = next_message(&mut stream).await;
    assert_eq!(first.r#type(), EventType::Heartbeat, "a heartbeat at once");
    let start = first.sequence;

    disable(&mut admin, &token("acme", "alpha")).await;
    enable(&mut admin, &token("acme", "alpha")).await;
    rename(&mut admin, &token("acme", "alpha"), "alpha-2").await;
    let mut replacing = create_request("acme", "gamma", "sk-value-of-gamma");
    replacing.replaces = token("acme", "beta");
    admin.create_token(replacing).await.expect("replace");
    remove(&mut admin, &token("acme", "alpha-2")).await;

    let expected = [
        (EventType::Disabled, token("acme", "alpha"), String::new()),
        (EventType::Enabled, token("acme", "alpha"), String::new()),
        (
            EventType::Renamed,
            token("acme", "alpha"),
            token("acme", "alpha-2"),
        ),
        (
            EventType::Replaced,
            token("acme", "beta"),
            token("acme", "gamma"),
        ),
        (EventType::Removed, token("acme", "alpha-2"), String::new()),
    ];
    let mut sequence = start;
    for want in expected {
        let got = next_event(&mut stream).await;
        assert_eq!(summary(&got), want);
        assert_eq!(got.sequence, sequence + 1, "sequences increase by one");
        assert!(got.event_time.is_some());
        sequence = got.sequence;
    }
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
    println!(
        "watch: 5 event kinds in order, sequences {}..={sequence}",
        start + 1
    );
}

#[tokio::test]
async fn resume_delivers_exactly_the_missed_events() {
    let server = TestServer::start().await;
    let (mut admin, mut resolver) = (server.admin().await, server.resolver().await);
    let name = token("acme", "resumed");
    create(&mut admin, "acme", "resumed").await;
    let mut stream = open(&mut resolver, tenant("tenants/acme"))
        .await
        .expect("watch");
    let start = next_message(&mut stream).await.sequence;
    disable(&mut admin, &name).await;
    let seen = next_event(&mut stream).await;
    assert_eq!(seen.r#type(), EventType::Disabled);
    drop(stream);

    // Missed while disconnected.
    enable(&mut admin, &name).await;
    disable(&mut admin, &name).await;
    rename(&mut admin, &name, "resumed-2").await;

    let mut resumed = open(&mut resolver, resume_after("tenants/acme", seen.sequence))
        .await
        .expect("resume");
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut resumed).await;
        got.push((event.sequence, event.r#type()));
    }
    assert_eq!(
        got,
        vec![
            (seen.sequence + 1, EventType::Enabled),
            (seen.sequence + 2, EventType::Disabled),
            (seen.sequence + 3, EventType::Renamed),
        ]
    );
    // Exactly those: nothing more, and then live events follow.
    assert_quiet(&mut resumed, Duration::from_millis(500)).await;
    enable(&mut admin, &token("acme", "resumed-2")).await;
    let live = next_event(&mut resumed).await;
    assert_eq!(
        (live.sequence, live.r#type()),
        (seen.sequence + 4, EventType::Enabled)
    );
    // From after the first event: the four since.
    let mut again = open(&mut resolver, resume_after("tenants/acme", start + 1))
        .await
        .expect("resume");
    for i in 2..=5 {
        assert_eq!(next_event(&mut again).await.sequence, start + i);
    }
}

#[tokio::test]
async fn resuming_from_before_the_retained_window_resyncs() {
    let mut setup = Setup::new();
    setup.config.watch.retain_events = 3;
    let server = setup.start().await;
    let (mut admin, mut resolver) = (server.admin().await, server.resolver().await);
    let name = token("acme", "churned");
    create(&mut admin, "acme", "churned").await;
    let mut stream = open(&mut resolver, tenant("tenants/acme"))
        .await
        .expect("watch");
    let start = next_message(&mut stream).await.sequence;
    for _ in 0..4 {
        disable(&mut admin, &name).await;
        enable(&mut admin, &name).await;
    }
    // Eight events; three retained: resuming after the first is too old.
    let mut late = open(&mut resolver, resume_after("tenants/acme", start + 1))
        .await
        .expect("resume");
    let resync = next_event(&mut late).await;
    assert_eq!(resync.r#type(), EventType::Resync);
    assert_eq!(resync.sequence, start + 8, "continues from the head");
    assert!(resync.name.is_empty());
    // Within the window: no resync, exactly the events after it.
    let mut recent = open(&mut resolver, resume_after("tenants/acme", start + 6))
        .await
        .expect("resume");
    assert_eq!(
        (
            next_event(&mut recent).await.sequence,
            next_event(&mut recent).await.sequence
        ),
        (start + 7, start + 8)
    );
    // After a resync the stream goes on live.
    disable(&mut admin, &name).await;
    let live = next_event(&mut late).await;
    assert_eq!(
        (live.r#type(), live.sequence),
        (EventType::Disabled, start + 9)
    );
    // The pruned rows are gone from the store, not just skipped.
    let door = server.back_door().await;
    let pruned = crate::backend::eventually(Duration::from_secs(5), async || {
        door.value("SELECT count(*) FROM token_events", &[])
            .await
            .int()
            <= 3
    })
    .await;
    assert!(pruned, "at most 3 events kept, the window");
}

/// Agent-2 may resolve only `shared-*` tokens of tenant acme.
const NARROW: &str = r#"
    [[admin]]
    identity = "spiffe://aitokens.dev/admin"
    tenants = ["*"]

    [[resolver]]
    identity = "spiffe://aitokens.dev/agent"
    tenants = ["*"]
    tokens = ["*"]

    [[resolver]]
    identity = "spiffe://aitokens.dev/agent-2"
    tenants = ["acme"]
    tokens = ["shared-*"]
"#;

#[tokio::test]
async fn a_caller_sees_only_events_of_tokens_it_may_resolve() {
    let setup = Setup::new().policy(NARROW);
    let pki = setup.pki();
    let server = setup.start().await;
    let mut admin = server.admin().await;
    let channel = server
        .channel(
            server.internal_addr,
            Some(pki.client("spiffe://aitokens.dev/agent-2")),
        )
        .await
        .expect("channel");
    let mut narrow = TokenResolverClient::new(channel);
    for (tenant, id) in [
        ("acme", "shared-one"),
        ("acme", "shared-two"),
        ("acme", "private-x"),
        ("globex", "shared-one"),
    ] {
        create(&mut admin, tenant, id).await;
    }
    let mut stream = open(&mut narrow, tenant("tenants/acme"))
        .await
        .expect("watch acme");
    next_message(&mut stream).await;
    // Another tenant, a token outside its patterns: not a word.
    disable(&mut admin, &token("globex", "shared-one")).await;
    disable(&mut admin, &token("acme", "private-x")).await;
    rename(&mut admin, &token("acme", "private-x"), "shared-private").await;
    // Renamed out of its patterns: to this caller the token is gone.
    rename(&mut admin, &token("acme", "shared-two"), "hidden-two").await;
    disable(&mut admin, &token("acme", "shared-one")).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(summary(&next_event(&mut stream).await));
    }
    assert_eq!(
        got,
        vec![
            (
                EventType::Removed,
                token("acme", "shared-two"),
                String::new()
            ),
            (
                EventType::Disabled,
                token("acme", "shared-one"),
                String::new()
            ),
        ]
    );
    assert_quiet(&mut stream, Duration::from_millis(500)).await;

    // Refused outright, and told why.
    let denied = open(&mut narrow, tenant("tenants/globex"))
        .await
        .expect_err("another tenant");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(reason(&denied), "POLICY_DENIED");
    let denied = open(
        &mut narrow,
        WatchTokensRequest {
            names: vec![token("acme", "shared-one"), token("acme", "hidden-two")],
            ..Default::default()
        },
    )
    .await
    .expect_err("a name outside its patterns");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(reason(&denied), "POLICY_DENIED");
    assert!(!denied.message().contains("hidden"), "{}", denied.message());
}

#[tokio::test]
async fn a_list_of_names_selects_exactly_those_tokens() {
    let server = TestServer::start().await;
    let (mut admin, mut resolver) = (server.admin().await, server.resolver().await);
    for id in ["one", "two", "three"] {
        create(&mut admin, "acme", id).await;
    }
    let mut stream = open(
        &mut resolver,
        WatchTokensRequest {
            names: vec![token("acme", "one"), token("acme", "three")],
            ..Default::default()
        },
    )
    .await
    .expect("watch names");
    next_message(&mut stream).await;
    disable(&mut admin, &token("acme", "two")).await;
    disable(&mut admin, &token("acme", "three")).await;
    rename(&mut admin, &token("acme", "one"), "one-b").await;
    assert_eq!(
        summary(&next_event(&mut stream).await),
        (EventType::Disabled, token("acme", "three"), String::new())
    );
    assert_eq!(
        summary(&next_event(&mut stream).await),
        (
            EventType::Renamed,
            token("acme", "one"),
            token("acme", "one-b")
        )
    );
}

#[tokio::test]
async fn malformed_watch_requests_are_refused_with_the_field() {
    let server = TestServer::start().await;
    let mut resolver = server.resolver().await;
    let none = open(&mut resolver, WatchTokensRequest::default())
        .await
        .expect_err("no selection");
    assert_status(&none, Code::InvalidArgument, Some("names"));
    let both = open(
        &mut resolver,
        WatchTokensRequest {
            names: vec![token("acme", "a")],
            parent: "tenants/acme".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("both");
    assert_status(&both, Code::InvalidArgument, Some("parent"));
    let many = open(
        &mut resolver,
        WatchTokensRequest {
            names: (0..101).map(|i| token("acme", &format!("t{i}"))).collect(),
            ..Default::default()
        },
    )
    .await
    .expect_err("101 names");
    assert_status(&many, Code::InvalidArgument, Some("names"));
    let bad = open(
        &mut resolver,
        WatchTokensRequest {
            names: vec!["tenants/acme/tokens/NOT VALID".into()],
            ..Default::default()
        },
    )
    .await
    .expect_err("bad name");
    assert_status(&bad, Code::InvalidArgument, Some("names"));
    let negative = open(&mut resolver, resume_after("tenants/acme", -1))
        .await
        .expect_err("negative");
    assert_status(
        &negative,
        Code::InvalidArgument,
        Some("resume_after_sequence"),
    );
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused_naming_it() {
    let mut setup = Setup::new();
    setup.config.watch.max_streams = 2;
    let server = setup.start().await;
    let mut resolver = server.resolver().await;
    let mut first = open(&mut resolver, tenant("tenants/acme"))
        .await
        .expect("1");
    let second = open(&mut resolver, tenant("tenants/acme"))
        .await
        .expect("2");
    next_message(&mut first).await;
    let refused = open(&mut resolver, tenant("tenants/acme"))
        .await
        .expect_err("3rd");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason(&refused), "WATCH_STREAMS_EXHAUSTED");
    assert!(
        refused.message().contains("maximum of 2 watch streams")
            && refused.message().contains("max_streams"),
        "{}",
        refused.message()
    );
    // A slot comes back when a client goes.
    drop(second);
    let again = crate::backend::eventually(Duration::from_secs(5), async || {
        open(&mut resolver, tenant("tenants/acme")).await.is_ok()
    })
    .await;
    assert!(again, "a closed stream frees its slot");
}

#[tokio::test]
async fn bindings_only_grants_are_refused_with_a_reason() {
    let server = Setup::new().policy(BINDINGS_ONLY_POLICY).start().await;
    let mut resolver = server.resolver().await;
    let refused = open(&mut resolver, tenant("tenants/acme"))
        .await
        .expect_err("bindings-only");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "WATCH_BINDINGS_ONLY");
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_alive_and_stop_ends_it() {
    let mut setup = Setup::new();
    setup.config.watch.heartbeat_ms = 200;
    let server = setup.start().await;
    let mut resolver = server.resolver().await;
    let mut stream = open(&mut resolver, tenant("tenants/acme"))
        .await
        .expect("watch");
    let started = Instant::now();
    let mut beats = 0;
    while started.elapsed() < Duration::from_millis(1100) {
        let message = next_message(&mut stream).await;
        assert_eq!(message.r#type(), EventType::Heartbeat);
        beats += 1;
    }
    // One at once, then one per 200 ms.
    assert!((5..=8).contains(&beats), "{beats} heartbeats in 1.1 s");
    // A stopping server ends the stream, saying why (it does not hold up
    // the shutdown).
    let stopping = tokio::spawn(server.stop());
    let end = loop {
        match tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("ends")
        {
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    if let Some(status) = end {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the server stops within 5 s despite an open stream")
        .expect("stop");
}

#[tokio::test]
async fn events_reach_watchers_within_a_second_under_churn() {
    let server = TestServer::start().await;
    let (mut admin, mut resolver) = (server.admin().await, server.resolver().await);
    let mut stream = open(&mut resolver, tenant("tenants/churn"))
        .await
        .expect("watch");
    next_message(&mut stream).await;
    // A client cache: name -> value, dropped on every event about it.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            if message.r#type() != EventType::Heartbeat
                && arrived_tx.send((message, Instant::now())).is_err()
            {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut delays, mut changes) = (Vec::new(), 0);
    for i in 0..55 {
        assert!(Instant::now() < deadline, "churn took over 120 s");
        let id = format!("t{i}");
        create(&mut admin, "churn", &id).await;
        let name = token("churn", &id);
        let renamed = token("churn", &format!("t{i}-r"));
        for (kind, step) in [
            (EventType::Disabled, 0),
            (EventType::Enabled, 1),
            (EventType::Renamed, 2),
            (EventType::Removed, 3),
        ] {
            match step {
                0 => disable(&mut admin, &name).await,
                1 => enable(&mut admin, &name).await,
                2 => rename(&mut admin, &name, &format!("t{i}-r")).await,
                _ => remove(&mut admin, &renamed).await,
            }
            let acknowledged = Instant::now();
            changes += 1;
            let (event, at) = tokio::time::timeout(WAIT, arrived.recv())
                .await
                .expect("event within 10 s")
                .expect("watcher up");
            assert_eq!(event.r#type(), kind);
            let about = if step == 3 { &renamed } else { &name };
            assert_eq!(&event.name, about);
            // An event may arrive before the acknowledgement does.
            delays.push(at.saturating_duration_since(acknowledged));
        }
    }
    watcher.abort();
    let spread = Spread::of(delays);
    println!(
        "watch churn ({}): {changes} changes; event delay after acknowledgement p50 {:?}, p99 {:?}, max {:?}",
        if crate::backend::postgres() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        spread.pct(50.0),
        spread.pct(99.0),
        spread.pct(100.0)
    );
    assert!(changes >= 200);
    assert!(
        spread.pct(100.0) < Duration::from_secs(1),
        "every cached value is dropped within 1 s of the acknowledgement"
    );
}

#[tokio::test]
async fn events_survive_in_the_store_across_a_restart() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    create(&mut admin, "acme", "kept").await;
    let mut resolver = server.resolver().await;
    let mut stream = open(&mut resolver, tenant("tenants/acme"))
        .await
        .expect("watch");
    next_message(&mut stream).await;
    disable(&mut admin, &token("acme", "kept")).await;
    let seen = next_event(&mut stream).await.sequence;
    enable(&mut admin, &token("acme", "kept")).await;
    drop(stream);
    let server = server.restart().await;
    let mut resolver = server.resolver().await;
    let mut resumed = open(&mut resolver, resume_after("tenants/acme", seen))
        .await
        .expect("resume");
    let event = next_event(&mut resumed).await;
    assert_eq!(
        (event.r#type(), event.sequence),
        (EventType::Enabled, seen + 1)
    );
}

/// A client that hears nothing for twice the heartbeat interval calls the
/// stream dead: measured against a real `aitokens serve` that is frozen
/// (SIGSTOP: the connection stays open, only heartbeats can tell) and one
/// that is killed (SIGKILL: the kernel closes the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_detects_a_dead_server_within_its_heartbeat_bound() {
    use crate::process::{DataDir, Serve};

    const HEARTBEAT: Duration = Duration::from_millis(500);
    let bound = HEARTBEAT * 2;
    let _heavy = crate::common::HEAVY.lock().await;
    let data = {
        let mut data = DataDir::new();
        data.config.watch.heartbeat_ms = HEARTBEAT.as_millis() as u64;
        std::fs::write(
            &data.config_path,
            toml::to_string(&data.config).expect("toml"),
        )
        .expect("write config");
        data
    };

    /// Time from the last message until the client gave up, or an error.
    async fn silence(stream: &mut Streaming<WatchTokensResponse>, bound: Duration) -> Duration {
        let mut last = Instant::now();
        loop {
            match tokio::time::timeout(bound, stream.message()).await {
                Ok(Ok(Some(_))) => last = Instant::now(),
                // Ended or failed: dead, and known to be.
                Ok(Ok(None) | Err(_)) | Err(_) => return last.elapsed(),
            }
        }
    }

    for signal in ["STOP", "KILL"] {
        let serve = Serve::start(&data, "info", &format!("serve-{signal}.log"));
        let mut resolver = serve.resolver(&data).await;
        let mut stream = open(&mut resolver, tenant("tenants/acme"))
            .await
            .expect("watch");
        // Alive: heartbeats for a while, no gap beyond the bound.
        let alive = Instant::now();
        while alive.elapsed() < Duration::from_millis(1500) {
            tokio::time::timeout(bound, stream.message())
                .await
                .expect("a heartbeat within the bound while the server lives")
                .expect("up")
                .expect("open");
        }
        let pid = serve.pid().to_string();
        let sent = Instant::now();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), pid.as_str()])
            .status()
            .expect("kill");
        assert!(status.success());
        let quiet = silence(&mut stream, bound).await;
        let detected = sent.elapsed();
        println!(
            "watch: SIG{signal} of the server detected {detected:?} after the signal ({quiet:?} after the last message; heartbeat {HEARTBEAT:?}, bound {bound:?})"
        );
        assert!(
            detected <= bound + HEARTBEAT,
            "SIG{signal}: detected after {detected:?}"
        );
        if signal == "STOP" {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", pid.as_str()])
                .status();
        }
        serve.kill9();
    }
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// 10,000 idle streams on one `aitokens serve` (50 connections of 200):
/// the server's RSS they add, and the time from an admin change's
/// acknowledgement until every stream has its event. Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_holds_10000_idle_streams_and_reaches_them_all() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use crate::process::{DataDir, Serve, channel};

    const CONNECTIONS: usize = 50;
    const PER_CONNECTION: usize = 200;
    const STREAMS: usize = CONNECTIONS * PER_CONNECTION;
    let _heavy = crate::common::HEAVY.lock().await;
    let data = DataDir::new();
    let serve = Serve::start(&data, "info", "serve.log");
    let mut admin = serve.admin(&data).await;
    create(&mut admin, "acme", "watched").await;
    let started = Instant::now();
    let before = rss_kib(serve.pid());
    let reached = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let conn = channel(data.dir.path(), serve.internal, "agent").await;
        for _ in 0..PER_CONNECTION {
            let mut client = TokenResolverClient::new(conn.clone());
            let (reached, done_tx, opened_tx) =
                (reached.clone(), done_tx.clone(), opened_tx.clone());
            tasks.push(tokio::spawn(async move {
                let mut stream = open(&mut client, tenant("tenants/acme"))
                    .await
                    .expect("watch");
                next_message(&mut stream).await;
                let _ = opened_tx.send(());
                loop {
                    match stream.message().await {
                        Ok(Some(m)) if m.r#type() == EventType::Heartbeat => continue,
                        Ok(Some(_)) => break,
                        other => panic!("stream ended: {other:?}"),
                    }
                }
                if reached.fetch_add(1, Ordering::AcqRel) + 1 == STREAMS {
                    let _ = done_tx.send(Instant::now());
                }
                // Held open until the test ends.
                std::future::pending::<()>().await;
            }));
        }
    }
    for _ in 0..STREAMS {
        tokio::time::timeout(Duration::from_secs(120), opened.recv())
            .await
            .expect("every stream opens within 120 s")
            .expect("opened");
    }
    let open_after = started.elapsed();
    // Let the server settle (its first heartbeats sent, buffers sized).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(serve.pid());
    disable(&mut admin, &token("acme", "watched")).await;
    let acknowledged = Instant::now();
    let all = tokio::time::timeout(Duration::from_secs(60), done.recv())
        .await
        .expect("every stream has the event within 60 s")
        .expect("done");
    let fan_out = all.saturating_duration_since(acknowledged);
    println!(
        "watch: {STREAMS} idle streams opened in {open_after:?}; server RSS {before} KiB -> {after} KiB \
         (+{} KiB, {:.1} KiB per stream); one event reached all of them {fan_out:?} after the acknowledgement",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / STREAMS as f64
    );
    for task in tasks {
        task.abort();
    }
    serve.kill9();
}
