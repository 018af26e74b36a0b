//! WatchTokens across replicas: changes acknowledged by replica A reach a
//! watcher of replica B through the store's change notifications (the
//! events come from the shared table), in order, with A's sequences; the
//! delay from A's acknowledgement to B's event is measured.

use std::time::{Duration, Instant};

use super::{Fleet, Spread};
use crate::watch::{create, disable, enable, open, rename, tenant};
use aitokens::api::pb::watch_tokens_response::EventType;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_one_replica_reach_watchers_on_another() {
    let _heavy = crate::common::HEAVY.lock().await;
    let mut fleet = Fleet::scratch().await;
    // No poll to speak of: the notifications must carry it.
    fleet.start_n(2, |config| config.watch.poll_ms = 60_000);
    let mut admin = fleet.admin(0).await;
    let mut watcher = fleet.resolver(1).await;
    let mut stream = open(&mut watcher, tenant("tenants/acme"))
        .await
        .expect("watch on replica 1");
    let first = crate::watch::next_message(&mut stream).await;
    let mut sequence = first.sequence;
    let (tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            if message.r#type() != EventType::Heartbeat
                && tx.send((message, Instant::now())).is_err()
            {
                return;
            }
        }
    });
    let mut delays = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..25 {
        assert!(Instant::now() < deadline, "over 120 s");
        let id = format!("r{i}");
        create(&mut admin, "acme", &id).await;
        let name = format!("tenants/acme/tokens/{id}");
        for (step, kind) in [
            (0, EventType::Disabled),
            (1, EventType::Enabled),
            (2, EventType::Renamed),
        ] {
            match step {
                0 => disable(&mut admin, &name).await,
                1 => enable(&mut admin, &name).await,
                _ => rename(&mut admin, &name, &format!("{id}-b")).await,
            }
            let acknowledged = Instant::now();
            let (event, at) = tokio::time::timeout(Duration::from_secs(10), arrived.recv())
                .await
                .expect("the event reaches replica 1 within 10 s")
                .expect("reader up");
            assert_eq!((event.r#type(), event.name.as_str()), (kind, name.as_str()));
            assert_eq!(event.sequence, sequence + 1, "in order, no gaps");
            sequence = event.sequence;
            delays.push(at.saturating_duration_since(acknowledged));
        }
    }
    reader.abort();
    let spread = Spread::of(delays);
    println!(
        "watch across replicas: {} changes on replica 0, events on replica 1: p50 {:?}, p99 {:?}, max {:?}",
        spread.len(),
        spread.pct(50.0),
        spread.pct(99.0),
        spread.pct(100.0)
    );
    assert!(spread.pct(100.0) < Duration::from_secs(1));
    fleet.terminate_all();
}
