//! Failover: a primary and a synchronous streaming standby of the test's
//! own (`initdb`, `pg_basebackup -R`, `synchronous_standby_names` on the
//! primary so that a commit waits for the standby), two replicas on the
//! multi-host URL with `target_session_attrs=read-write`, creates running
//! on both. The primary is killed (`pg_ctl stop -m immediate`) and the
//! standby promoted: the replicas reconnect by themselves, writes resume,
//! and every acknowledged create (before the kill, and after) is there
//! afterwards.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aitokens::api::pb::token_admin_client::TokenAdminClient;
use tonic::{Code, transport::Channel};

use super::{Fleet, ms, reason};
use crate::{
    common::{create_request, resolve},
    pgcluster::PgCluster,
};

const REPLICAS: usize = 2;
const CREATORS_PER_REPLICA: usize = 2;
const MAX_CALLS: usize = 100_000;

/// One create as its client saw it.
struct Create {
    id: String,
    value: String,
    replica: usize,
    sent: Instant,
    /// When it was acknowledged; none if it was refused.
    acknowledged: Option<Instant>,
    refusal: Option<String>,
}

#[derive(Default)]
struct Journal {
    creates: Vec<Create>,
}

type Shared = Arc<Mutex<Journal>>;

async fn creator(
    r: usize,
    k: usize,
    mut admin: TokenAdminClient<Channel>,
    journal: Shared,
    killed: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
) {
    for n in 0..MAX_CALLS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = format!("f{r}-{k}-{n}");
        let value = format!("sk-failover-{id}-{:016x}", fastrand::u64(..));
        let sent = Instant::now();
        let outcome = admin
            .create_token(create_request("acme", &id, &value))
            .await;
        let (acknowledged, refusal) = match outcome {
            Ok(_) => (Some(Instant::now()), None),
            Err(status) => {
                // Only while the database fails over, and only UNAVAILABLE.
                let kill = *killed.lock().expect("killed");
                assert!(
                    kill.is_some_and(|at| at <= Instant::now()),
                    "replica {r}: create {id} refused before the failover: {status:?}"
                );
                assert_eq!(
                    status.code(),
                    Code::Unavailable,
                    "replica {r}: create {id} during the failover: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                (None, Some(reason(&status)))
            }
        };
        journal.lock().expect("journal").creates.push(Create {
            id,
            value,
            replica: r,
            sent,
            acknowledged,
            refusal,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_synchronous_standby_loses_no_acknowledged_create() {
    let _heavy = crate::common::HEAVY.lock().await;
    let primary = PgCluster::init();
    primary.start();
    primary.create_database("aitokens").await;
    let standby = PgCluster::standby_of(&primary);
    standby.start();
    primary.require_synchronous_standby(&standby).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/aitokens?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let mut fleet = Fleet::on(url);
    fleet.start_n(REPLICAS, |_| {});

    let journal = Shared::default();
    let killed: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for r in 0..REPLICAS {
        for k in 0..CREATORS_PER_REPLICA {
            tasks.push(tokio::spawn(creator(
                r,
                k,
                fleet.admin(r).await,
                journal.clone(),
                killed.clone(),
                stop.clone(),
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The primary dies; the standby is promoted. `kill` is when the kill
    // was issued (a create acknowledged before it was acknowledged by the
    // old primary); `dead` when the primary was gone for sure.
    let kill = Instant::now();
    *killed.lock().expect("killed") = Some(kill);
    primary.stop("immediate");
    let dead = Instant::now();
    standby.promote();
    let promoted = Instant::now();

    // Writes resume on every replica (a create sent after the primary was
    // gone, and acknowledged), within 30 s.
    let deadline = dead + Duration::from_secs(30);
    let resumed = loop {
        let resumed: BTreeMap<usize, Duration> = {
            let journal = journal.lock().expect("journal");
            (0..REPLICAS)
                .filter_map(|r| {
                    journal
                        .creates
                        .iter()
                        .filter(|c| c.replica == r && c.sent > dead)
                        .filter_map(|c| c.acknowledged)
                        .min()
                        .map(|at| (r, at - dead))
                })
                .collect()
        };
        if resumed.len() == REPLICAS {
            break resumed;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume on every replica within 30 s: {resumed:?}\n{}",
            standby.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("creators end")
            .expect("creator");
    }

    // What the promoted standby holds.
    let door = standby.connect("aitokens").await;
    let stored: BTreeMap<String, ()> = door
        .query("SELECT token_id FROM tokens WHERE tenant = 'acme'", &[])
        .await
        .expect("read the promoted standby")
        .iter()
        .map(|r| (r.get(0), ()))
        .collect();
    // The creators have ended: the journal is whole.
    let journal = std::mem::take(&mut *journal.lock().expect("journal"));
    let before: Vec<&Create> = journal
        .creates
        .iter()
        .filter(|c| c.acknowledged.is_some_and(|at| at < kill))
        .collect();
    let acknowledged: Vec<&Create> = journal
        .creates
        .iter()
        .filter(|c| c.acknowledged.is_some())
        .collect();
    let lost: Vec<&str> = acknowledged
        .iter()
        .filter(|c| !stored.contains_key(&c.id))
        .map(|c| c.id.as_str())
        .collect();
    let mut refusals: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &journal.creates {
        if let Some(why) = &c.refusal {
            *refusals.entry(why.as_str()).or_default() += 1;
        }
    }
    // Creates the kill caught in flight (sent before it, answered after).
    let in_flight = journal
        .creates
        .iter()
        .filter(|c| c.sent < kill && c.acknowledged.is_none_or(|at| at > kill))
        .count();
    let unanswered_committed = journal
        .creates
        .iter()
        .filter(|c| c.acknowledged.is_none() && stored.contains_key(&c.id))
        .count();
    println!(
        "failover (2 replicas, synchronous standby, multi-host URL): primary killed \
         (pg_ctl stop -m immediate) in {:.0}ms, standby promoted (pg_ctl promote) in {:.0}ms; \
         writes resumed {:?} ms after the primary was gone (first create sent after it and \
         acknowledged, by replica); acknowledged creates {} ({} before the kill), lost {} \
         (data-loss count); {in_flight} creates in flight at the kill; refusals during the \
         failover (all UNAVAILABLE) {refusals:?}; {unanswered_committed} refused creates had \
         committed",
        ms(dead - kill),
        ms(promoted - dead),
        resumed
            .iter()
            .map(|(r, d)| (*r, ms(*d).round() as u64))
            .collect::<BTreeMap<_, _>>(),
        acknowledged.len(),
        before.len(),
        lost.len(),
    );
    assert!(
        before.len() >= 10,
        "only {} creates before the kill",
        before.len()
    );
    assert!(lost.is_empty(), "acknowledged creates lost: {lost:?}");
    assert!(
        in_flight > 0 || !refusals.is_empty(),
        "the failover cut no create: the load had stopped"
    );

    // And every acknowledged create resolves to its exact value on every
    // replica.
    for r in 0..REPLICAS {
        let mut resolver = fleet.resolver(r).await;
        for c in &acknowledged {
            let got = resolve(&mut resolver, &format!("tenants/acme/tokens/{}", c.id)).await;
            assert!(
                got.as_ref().ok() == Some(&c.value),
                "replica {r}: {}: {got:?}",
                c.id
            );
        }
    }
    fleet.terminate_all();
    let (records, _) = fleet.audit_verify();
    println!("failover: audit chain intact on the promoted standby ({records} records)");
}
