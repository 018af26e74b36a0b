//! `kill -9` of one replica during mixed load (creates and resolves from
//! clients that hold channels to every replica and retry on another one):
//! the only errors the clients see are transport errors, on the killed
//! replica's channels, after the kill; no acknowledged create is lost.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aitokens::api::pb::{
    token_admin_client::TokenAdminClient, token_resolver_client::TokenResolverClient,
};
use tonic::{Code, Status, transport::Channel};

use super::{Fleet, reason};
use crate::{
    common::{create_request, resolve},
    crash::transport_error,
};

const REPLICAS: usize = 3;
const CLIENTS: usize = 6;
const SEEDED: usize = 30;
/// The load lasts this long; the kill lands in its first half.
const LOAD: Duration = Duration::from_secs(8);
const MAX_CALLS: usize = 50_000;

fn seeded_value(i: usize) -> String {
    format!(
        "sk-kill-seed-{i:03}-{:08x}",
        (i as u32).wrapping_mul(2_654_435_761)
    )
}

/// When and which replica was killed (none before).
type Killed = Arc<Mutex<Option<(Instant, usize)>>>;

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged creates: id → value.
    acknowledged: BTreeMap<String, String>,
    /// Creates whose first attempt died with the replica and whose retry
    /// found the token (the first attempt had committed).
    committed_before_dying: usize,
    resolves: usize,
    /// Transport errors, by kind (digits masked).
    transport_errors: BTreeMap<String, usize>,
    /// Errors cut in flight (the call was sent before the kill).
    cut_in_flight: usize,
}

/// Checks that `status`, from replica `r` for a call sent at `sent`, is a
/// transport error on the killed replica after its kill; books it.
fn died(status: &Status, r: usize, sent: Instant, killed: &Killed, seen: &mut Seen, what: &str) {
    let now = Instant::now();
    let kill = *killed.lock().expect("killed");
    let Some((at, victim)) = kill else {
        panic!("{what} on replica {r}: an error before any kill: {status:?}");
    };
    assert!(
        r == victim && at <= now,
        "{what} on replica {r}: an error not on the killed replica {victim}: {status:?}"
    );
    let kind = transport_error(status)
        .unwrap_or_else(|| panic!("{what} on replica {r}: not a transport error: {status:?}"));
    *seen.transport_errors.entry(kind).or_default() += 1;
    if sent < at {
        seen.cut_in_flight += 1;
    }
}

struct Client {
    c: usize,
    admins: Vec<TokenAdminClient<Channel>>,
    resolvers: Vec<TokenResolverClient<Channel>>,
    dead: Vec<bool>,
    killed: Killed,
    seen: Seen,
    deadline: Instant,
}

impl Client {
    /// The replicas to try, starting at `first`, skipping those seen dead.
    fn order(&self, first: usize) -> Vec<usize> {
        (0..REPLICAS)
            .map(|k| (first + k) % REPLICAS)
            .filter(|r| !self.dead[*r])
            .collect()
    }

    async fn create(&mut self, id: String, value: String, first: usize) {
        let mut died_once = false;
        for r in self.order(first) {
            let sent = Instant::now();
            match self.admins[r]
                .create_token(create_request("acme", &id, &value))
                .await
            {
                Ok(_) => {
                    self.seen.acknowledged.insert(id, value);
                    return;
                }
                Err(s) if died_once && s.code() == Code::AlreadyExists => {
                    assert_eq!(reason(&s), "TOKEN_ALREADY_EXISTS", "{s:?}");
                    // The attempt that died had committed: the token is
                    // there (its value is checked with the others).
                    self.seen.committed_before_dying += 1;
                    self.seen.acknowledged.insert(id, value);
                    return;
                }
                Err(s) => {
                    died(&s, r, sent, &self.killed, &mut self.seen, "create");
                    self.dead[r] = true;
                    died_once = true;
                }
            }
        }
        panic!("client {}: no replica left for create {id}", self.c);
    }

    async fn resolve(&mut self, i: usize, first: usize) {
        let name = format!("tenants/acme/tokens/seed-{i}");
        for r in self.order(first) {
            let sent = Instant::now();
            match resolve(&mut self.resolvers[r], &name).await {
                Ok(value) => {
                    assert!(
                        value == seeded_value(i),
                        "replica {r}: a wrong value for {name}"
                    );
                    self.seen.resolves += 1;
                    return;
                }
                Err(s) => {
                    died(&s, r, sent, &self.killed, &mut self.seen, "resolve");
                    self.dead[r] = true;
                }
            }
        }
        panic!("client {}: no replica left for resolve {name}", self.c);
    }

    async fn run(mut self) -> Seen {
        let mut rng = fastrand::Rng::with_seed(self.c as u64);
        for n in 0..MAX_CALLS {
            if Instant::now() >= self.deadline {
                break;
            }
            let first = (self.c + n) % REPLICAS;
            if rng.bool() {
                let id = format!("k{}-{n}", self.c);
                let value = format!("sk-kill-{id}-{:016x}", rng.u64(..));
                self.create(id, value, first).await;
            } else {
                self.resolve(rng.usize(..SEEDED), first).await;
            }
        }
        self.seen
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_costs_only_its_connections() {
    let _heavy = crate::common::HEAVY.lock().await;
    let mut fleet = Fleet::scratch().await;
    fleet.start_n(REPLICAS, |_| {});
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
    let killed = Killed::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = Client {
            c,
            admins: Vec::new(),
            resolvers: Vec::new(),
            dead: vec![false; REPLICAS],
            killed: killed.clone(),
            seen: Seen::default(),
            deadline: started + LOAD,
        };
        for r in 0..REPLICAS {
            client.admins.push(fleet.admin(r).await);
            client.resolvers.push(fleet.resolver(r).await);
        }
        tasks.push(tokio::spawn(client.run()));
    }
    // Somewhere in the first half of the load, with no warning.
    let victim = 1;
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1000..3000))).await;
    *killed.lock().expect("killed") = Some((Instant::now(), victim));
    fleet.kill9(victim);
    let killed_after = started.elapsed();

    let mut seen = Vec::new();
    for task in tasks {
        seen.push(
            tokio::time::timeout(LOAD + Duration::from_secs(60), task)
                .await
                .expect("clients end after the load")
                .expect("client"),
        );
    }
    let acknowledged: BTreeMap<&String, &String> =
        seen.iter().flat_map(|s| s.acknowledged.iter()).collect();
    let mut errors: BTreeMap<&String, usize> = BTreeMap::new();
    for s in &seen {
        for (kind, n) in &s.transport_errors {
            *errors.entry(kind).or_default() += n;
        }
    }
    let cut_in_flight: usize = seen.iter().map(|s| s.cut_in_flight).sum();
    let committed_before_dying: usize = seen.iter().map(|s| s.committed_before_dying).sum();
    let resolves: usize = seen.iter().map(|s| s.resolves).sum();
    assert!(
        !errors.is_empty(),
        "no client met the killed replica after the kill"
    );

    // Every acknowledged create, on every survivor and on the killed
    // replica restarted.
    fleet.restart(victim);
    let mut lost = 0;
    for r in 0..REPLICAS {
        let mut resolver = fleet.resolver(r).await;
        for (id, value) in &acknowledged {
            match resolve(&mut resolver, &format!("tenants/acme/tokens/{id}")).await {
                Ok(got) => assert!(got == **value, "replica {r}: a wrong value for {id}"),
                Err(s) if s.code() == Code::NotFound => lost += 1,
                Err(s) => panic!("replica {r}: {id}: {s:?}"),
            }
        }
    }
    println!(
        "kill -9 of replica {victim} of {REPLICAS} at {:.2}s of {LOAD:?} mixed load: {} \
         acknowledged creates ({committed_before_dying} found committed on retry after their \
         replica died), {resolves} resolves; errors seen: only transport errors on replica \
         {victim}'s channels after the kill ({cut_in_flight} cut in flight): {errors:?}; \
         acknowledged creates lost: {lost}",
        killed_after.as_secs_f64(),
        acknowledged.len(),
    );
    assert_eq!(lost, 0, "acknowledged creates lost");
    fleet.terminate_all();
    let (records, _) = fleet.audit_verify();
    println!("kill -9: audit chain intact afterwards ({records} records)");
}
