//! PostgreSQL stopped and restarted under load (a cluster of the test's
//! own: the shared server is never stopped). Resolvers and creators run on
//! three replicas, two refusing at once (`outage_grace_secs = 0`, the
//! default) and one with a grace. Throughout: no wrong value is ever
//! returned, and every refusal is UNAVAILABLE (never DATA_LOSS or
//! INTERNAL). During the outage every replica reports not ready on
//! `/readyz`; the one with a grace keeps resolving cached tokens for the
//! grace, then refuses; after the restart every replica recovers by
//! itself (ready, resolving, creating) without a restart of its own, and
//! every acknowledged create is there.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aitokens::api::pb::{
    token_admin_client::TokenAdminClient, token_resolver_client::TokenResolverClient,
};
use tonic::{Code, Status, transport::Channel};

use super::{Fleet, ms, reason, until_readyz};
use crate::{
    common::{create_request, resolve},
    pgcluster::PgCluster,
};

const SEEDED: usize = 40;
/// The grace of replica 2.
const GRACE: Duration = Duration::from_secs(3);
/// How long PostgreSQL stays down (past the grace).
const DOWN: Duration = Duration::from_secs(6);
const MAX_CALLS: usize = 100_000;

fn seeded_value(i: usize) -> String {
    format!(
        "sk-outage-{i:03}-{:08x}",
        (i as u32).wrapping_mul(2_654_435_761)
    )
}

/// Outcomes of the load, by replica.
#[derive(Default)]
struct Tally {
    ok: BTreeMap<usize, usize>,
    /// (replica, call, reason) → count of UNAVAILABLE refusals.
    refused: BTreeMap<(usize, &'static str, String), usize>,
    /// Acknowledged creates: id → value; and ids whose outcome is unknown.
    acknowledged: BTreeMap<String, String>,
    unknown: BTreeMap<String, String>,
}

type Shared = Arc<Mutex<Tally>>;

/// A refusal must be UNAVAILABLE, with a reason; anything else fails.
fn refused(tally: &Shared, r: usize, call: &'static str, status: &Status) {
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "replica {r}: {call} refused with {status:?} (only UNAVAILABLE is allowed)"
    );
    let why = reason(status);
    assert!(!why.is_empty(), "no ErrorInfo reason: {status:?}");
    *tally
        .lock()
        .expect("tally")
        .refused
        .entry((r, call, why))
        .or_default() += 1;
}

async fn resolver(
    r: usize,
    mut client: TokenResolverClient<Channel>,
    tally: Shared,
    stop: Arc<AtomicBool>,
) {
    for n in 0..MAX_CALLS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let i = (n * 7 + r) % SEEDED;
        let name = format!("tenants/acme/tokens/seed-{i}");
        match resolve(&mut client, &name).await {
            Ok(value) => {
                assert!(
                    value == seeded_value(i),
                    "replica {r}: a wrong value for {name}"
                );
                *tally.lock().expect("tally").ok.entry(r).or_default() += 1;
            }
            Err(status) => refused(&tally, r, "resolve", &status),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn creator(
    r: usize,
    mut admin: TokenAdminClient<Channel>,
    tally: Shared,
    stop: Arc<AtomicBool>,
) {
    for n in 0..MAX_CALLS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = format!("o{r}-{n}");
        let value = format!("sk-outage-{id}-{:016x}", fastrand::u64(..));
        match admin
            .create_token(create_request("acme", &id, &value))
            .await
        {
            Ok(_) => {
                tally.lock().expect("tally").acknowledged.insert(id, value);
            }
            Err(status) => {
                refused(&tally, r, "create", &status);
                tally.lock().expect("tally").unknown.insert(id, value);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resolves a cached token on `client` until it is refused (or `limit`);
/// returns when, after `from`, the last success and the first refusal came.
async fn probe_grace(
    client: &mut TokenResolverClient<Channel>,
    from: Instant,
    limit: Duration,
) -> (Option<Duration>, Duration, Status) {
    let mut last_ok = None;
    loop {
        match resolve(client, "tenants/acme/tokens/seed-0").await {
            Ok(value) => {
                assert!(value == seeded_value(0), "a wrong value during the grace");
                last_ok = Some(from.elapsed());
            }
            Err(status) => return (last_ok, from.elapsed(), status),
        }
        assert!(from.elapsed() < limit, "still resolving after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_under_load() {
    let _heavy = crate::common::HEAVY.lock().await;
    let pg = PgCluster::init();
    pg.start();
    pg.create_database("aitokens").await;
    let mut fleet = Fleet::on(pg.url("aitokens"));
    fleet.start_n(2, |_| {});
    let graceful = fleet.start(|c| c.store.outage_grace_secs = GRACE.as_secs());
    let all: Vec<usize> = (0..fleet.len()).collect();

    let mut admin = fleet.admin(0).await;
    for i in 0..SEEDED {
        admin
            .create_token(create_request(
                "acme",
                &format!("seed-{i}"),
                &seeded_value(i),
            ))
            .await
            .expect("seed");
    }
    // Every replica has every seeded token cached.
    for &r in &all {
        let mut client = fleet.resolver(r).await;
        for i in 0..SEEDED {
            let name = format!("tenants/acme/tokens/seed-{i}");
            for _ in 0..2 {
                assert_eq!(
                    resolve(&mut client, &name).await.expect("warm"),
                    seeded_value(i)
                );
            }
        }
    }
    until_readyz(&fleet, &all, 200, Duration::from_secs(10)).await;

    let tally = Shared::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for &r in &all {
        tasks.push(tokio::spawn(resolver(
            r,
            fleet.resolver(r).await,
            tally.clone(),
            stop.clone(),
        )));
        if r != graceful {
            tasks.push(tokio::spawn(creator(
                r,
                fleet.admin(r).await,
                tally.clone(),
                stop.clone(),
            )));
        }
    }
    let mut probe = fleet.resolver(graceful).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Down.
    pg.stop("fast");
    let down = Instant::now();
    let unready_after = until_readyz(&fleet, &all, 503, Duration::from_secs(10)).await;
    let (last_ok, refused_at, why) = probe_grace(&mut probe, down, DOWN).await;
    assert_eq!(
        (why.code(), reason(&why).as_str()),
        (Code::Unavailable, "STORE_UNAVAILABLE"),
        "after the grace: {why:?}"
    );
    // The grace held (resolves served from the cache for most of it) and
    // ended (refused soon after it).
    let served = last_ok.unwrap_or_default();
    assert!(
        served + Duration::from_millis(500) >= GRACE,
        "replica {graceful} with a {GRACE:?} grace stopped resolving cached tokens after \
         {served:?} (refused at {refused_at:?}: {why:?})"
    );
    assert!(
        refused_at <= GRACE + Duration::from_millis(1500),
        "replica {graceful} resolved past its {GRACE:?} grace: refused only at {refused_at:?}"
    );
    let remaining = DOWN.saturating_sub(down.elapsed());
    tokio::time::sleep(remaining).await;

    // Up again: every replica recovers by itself.
    pg.start();
    let up = Instant::now();
    let ready_after = until_readyz(&fleet, &all, 200, Duration::from_secs(30)).await;
    let mut serving_after = BTreeMap::new();
    for &r in &all {
        let mut client = fleet.resolver(r).await;
        let mut admin = fleet.admin(r).await;
        let deadline = up + Duration::from_secs(30);
        loop {
            let resolved = resolve(&mut client, "tenants/acme/tokens/seed-1").await;
            let created = admin
                .create_token(create_request(
                    "acme",
                    &format!("after-{r}-{}", fastrand::u32(..)),
                    "sk-outage-after",
                ))
                .await;
            match (resolved, created) {
                (Ok(value), Ok(_)) => {
                    assert_eq!(value, seeded_value(1));
                    break;
                }
                (resolved, created) => {
                    for status in [resolved.err(), created.err()].into_iter().flatten() {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "replica {r} did not recover within 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        serving_after.insert(r, up.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("load ends")
            .expect("load task");
    }

    // The load has ended: the tally is whole.
    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    for &r in &all {
        assert!(
            tally.refused.keys().any(|(q, _, _)| *q == r),
            "replica {r} refused nothing: the outage did not reach it"
        );
    }
    // Every acknowledged create is there; an unknown one is there exactly
    // or not at all.
    let mut resolver = fleet.resolver(0).await;
    let mut unknown_present = 0;
    for (id, value) in &tally.acknowledged {
        let got = resolve(&mut resolver, &format!("tenants/acme/tokens/{id}")).await;
        assert!(
            got.as_ref().ok() == Some(value),
            "acknowledged {id}: {got:?}"
        );
    }
    for (id, value) in &tally.unknown {
        match resolve(&mut resolver, &format!("tenants/acme/tokens/{id}")).await {
            Ok(got) => {
                assert!(got == *value, "{id}: a wrong value");
                unknown_present += 1;
            }
            Err(s) => assert_eq!(s.code(), Code::NotFound, "{id}: {s:?}"),
        }
    }
    println!(
        "PostgreSQL outage of {DOWN:?} under load on 3 replicas: not ready on /readyz after \
         {:.0}ms; replica {graceful} (grace {GRACE:?}) resolved cached tokens until {:.0}ms and \
         refused from {:.0}ms; after the restart ready in {:.0}ms, resolving and creating again \
         after {:?} ms",
        ms(unready_after),
        ms(served),
        ms(refused_at),
        ms(ready_after),
        serving_after
            .iter()
            .map(|(r, d)| (*r, ms(*d).round() as u64))
            .collect::<BTreeMap<_, _>>()
    );
    println!(
        "PostgreSQL outage: successful resolves by replica {:?}; refusals (all UNAVAILABLE; \
         no DATA_LOSS, no INTERNAL, no wrong value) {:?}; {} acknowledged creates all present, \
         {} of {} unanswered creates committed",
        tally.ok,
        tally.refused,
        tally.acknowledged.len(),
        unknown_present,
        tally.unknown.len()
    );
    fleet.terminate_all();
    let (records, _) = fleet.audit_verify();
    println!("PostgreSQL outage: audit chain intact afterwards ({records} records)");
}
