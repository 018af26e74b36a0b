//! Concurrent admin writes on every replica for 30 s (bounded in count and
//! time): creates, renames, disables/enables and removes from admin
//! clients that pick a replica at random for each call, contended creates
//! of shared ids, and resolvers on every replica. Afterwards the replicas
//! stop gracefully (SIGTERM: a final flush) and:
//!
//! - `aitokens audit verify` finds the chain intact;
//! - the usage counters in the store add up exactly to the resolves the
//!   clients saw succeed (and the refused ones to the refusals they saw),
//!   per token that still exists;
//! - the tokens in the store are exactly the acknowledged creates minus the
//!   acknowledged removes, under their last acknowledged names, disabled as
//!   last acknowledged (no loss, no duplicate), and each contended id was
//!   created exactly once.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aitokens::api::pb::{
    DisableTokenRequest, EnableTokenRequest, RemoveTokenRequest, RenameTokenRequest,
    token_admin_client::TokenAdminClient, token_resolver_client::TokenResolverClient,
};
use tonic::{Code, transport::Channel};

use super::{Fleet, reason};
use crate::common::{create_request, resolve};

const REPLICAS: usize = 3;
/// Admin clients per replica's worth of load (each calls every replica).
const WRITERS: usize = 2 * REPLICAS;
/// Resolvers on each replica.
const RESOLVERS_PER_REPLICA: usize = 2;
const LOAD: Duration = Duration::from_secs(30);
/// Upper bounds on the calls of one client, whatever the machine's speed.
const MAX_ADMIN_CALLS: usize = 20_000;
const MAX_RESOLVES: usize = 500_000;
/// Shared ids that every writer tries to create.
const CONTENDED_IDS: usize = 40;

/// What the clients know of one token.
#[derive(Debug)]
struct Token {
    name: String,
    value: String,
    disabled: bool,
    removed: bool,
    /// A disable was sent at some point: TOKEN_DISABLED may be seen.
    ever_disabled: bool,
    /// Resolves that returned the value / were refused as disabled.
    resolved: u64,
    refused_disabled: u64,
}

/// The clients' book: every token, and every name any token ever had.
#[derive(Default)]
struct Book {
    tokens: Vec<Token>,
    /// Name → (token, whether a rename or remove of it was sent).
    names: BTreeMap<String, (usize, bool)>,
    /// Current names of the tokens not removed (what resolvers pick from).
    live: Vec<String>,
    /// Contended id → values whose create was acknowledged.
    contended: BTreeMap<String, Vec<String>>,
    contended_attempts: u64,
    calls: BTreeMap<&'static str, u64>,
    /// Resolves refused as not found (a rename or remove raced them).
    not_found: u64,
}

impl Book {
    fn add(&mut self, name: String, value: String) {
        self.tokens.push(Token {
            name: name.clone(),
            value,
            disabled: false,
            removed: false,
            ever_disabled: false,
            resolved: 0,
            refused_disabled: 0,
        });
        self.names
            .insert(name.clone(), (self.tokens.len() - 1, false));
        self.live.push(name);
    }

    fn count(&mut self, call: &'static str) {
        *self.calls.entry(call).or_default() += 1;
    }
}

type Shared = Arc<Mutex<Book>>;

fn lock(book: &Shared) -> std::sync::MutexGuard<'_, Book> {
    book.lock().expect("book")
}

/// One admin client: its own tokens, any replica for each call.
async fn writer(
    w: usize,
    mut admins: Vec<TokenAdminClient<Channel>>,
    book: Shared,
    deadline: Instant,
) {
    let mut rng = fastrand::Rng::with_seed(0x5eed + w as u64);
    let mut mine: Vec<usize> = Vec::new();
    let mut next = 0;
    for _ in 0..MAX_ADMIN_CALLS {
        if Instant::now() >= deadline {
            return;
        }
        let r = rng.usize(..admins.len());
        let admin = &mut admins[r];
        let live: Vec<usize> = {
            let book = lock(&book);
            mine.iter()
                .copied()
                .filter(|t| !book.tokens[*t].removed)
                .collect()
        };
        let roll = rng.u32(..100);
        if roll < 8 {
            // A contended create: exactly one writer may win each id.
            let id = format!("shared-{}", rng.usize(..CONTENDED_IDS));
            let value = format!("sk-shared-{id}-by-{w}-{:08x}", rng.u32(..));
            lock(&book).contended_attempts += 1;
            match admin
                .create_token(create_request("acme", &id, &value))
                .await
            {
                Ok(_) => {
                    let mut book = lock(&book);
                    book.contended
                        .entry(id.clone())
                        .or_default()
                        .push(value.clone());
                    book.add(format!("tenants/acme/tokens/{id}"), value);
                    book.count("create (contended, won)");
                }
                Err(status) => {
                    assert_eq!(
                        (status.code(), reason(&status).as_str()),
                        (Code::AlreadyExists, "TOKEN_ALREADY_EXISTS"),
                        "contended create of {id} on replica {r}: {status:?}"
                    );
                    lock(&book).count("create (contended, lost)");
                }
            }
            continue;
        }
        if live.len() < 5 || roll < 40 {
            let id = format!("w{w}-{next}");
            next += 1;
            let value = format!("sk-w-{id}-{:016x}", rng.u64(..));
            admin
                .create_token(create_request("acme", &id, &value))
                .await
                .unwrap_or_else(|s| panic!("create {id} on replica {r}: {s:?}"));
            let mut book = lock(&book);
            book.add(format!("tenants/acme/tokens/{id}"), value);
            mine.push(book.tokens.len() - 1);
            book.count("create");
            continue;
        }
        let t = live[rng.usize(..live.len())];
        let (name, disabled) = {
            let book = lock(&book);
            (book.tokens[t].name.clone(), book.tokens[t].disabled)
        };
        if roll < 60 {
            let new_id = format!("w{w}-{next}");
            next += 1;
            lock(&book).names.get_mut(&name).expect("name").1 = true;
            admin
                .rename_token(RenameTokenRequest {
                    name: name.clone(),
                    new_token_id: Some(new_id.clone()),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|s| panic!("rename {name} on replica {r}: {s:?}"));
            let new_name = format!("tenants/acme/tokens/{new_id}");
            let mut book = lock(&book);
            book.tokens[t].name = new_name.clone();
            book.names.insert(new_name.clone(), (t, false));
            let slot = book.live.iter().position(|n| *n == name).expect("live");
            book.live[slot] = new_name;
            book.count("rename");
        } else if roll < 85 {
            if disabled {
                admin
                    .enable_token(EnableTokenRequest {
                        name: name.clone(),
                        etag: None,
                    })
                    .await
                    .unwrap_or_else(|s| panic!("enable {name} on replica {r}: {s:?}"));
                let mut book = lock(&book);
                book.tokens[t].disabled = false;
                book.count("enable");
            } else {
                lock(&book).tokens[t].ever_disabled = true;
                admin
                    .disable_token(DisableTokenRequest {
                        name: name.clone(),
                        etag: None,
                    })
                    .await
                    .unwrap_or_else(|s| panic!("disable {name} on replica {r}: {s:?}"));
                let mut book = lock(&book);
                book.tokens[t].disabled = true;
                book.count("disable");
            }
        } else {
            lock(&book).names.get_mut(&name).expect("name").1 = true;
            admin
                .remove_token(RemoveTokenRequest {
                    name: name.clone(),
                    etag: None,
                    force: true,
                })
                .await
                .unwrap_or_else(|s| panic!("remove {name} on replica {r}: {s:?}"));
            let mut book = lock(&book);
            book.tokens[t].removed = true;
            book.live.retain(|n| *n != name);
            book.count("remove");
        }
    }
}

/// What a resolve answered.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Value,
    NotFound,
    Disabled,
}

/// Resolves `name` on `client` and books the outcome: a value must be the
/// token's exact value; a refusal must be explained by a change sent.
async fn resolve_and_book(
    client: &mut TokenResolverClient<Channel>,
    r: usize,
    name: &str,
    book: &Shared,
) -> Answer {
    let outcome = resolve(client, name).await;
    let mut book = lock(book);
    let (t, departing) = *book.names.get(name).expect("a booked name");
    let token = &mut book.tokens[t];
    match outcome {
        Ok(value) => {
            assert!(
                value == token.value,
                "replica {r}: a wrong value for {name}"
            );
            token.resolved += 1;
            Answer::Value
        }
        Err(status) => match (status.code(), reason(&status).as_str()) {
            (Code::NotFound, "TOKEN_NOT_FOUND") => {
                assert!(
                    departing,
                    "replica {r}: {name} not found, but nobody renamed or removed it"
                );
                book.not_found += 1;
                Answer::NotFound
            }
            (Code::FailedPrecondition, "TOKEN_DISABLED") => {
                assert!(
                    token.ever_disabled,
                    "replica {r}: {name} disabled, but nobody disabled it"
                );
                token.refused_disabled += 1;
                Answer::Disabled
            }
            _ => panic!("replica {r}: resolve {name}: {status:?}"),
        },
    }
}

async fn resolver(
    r: usize,
    seed: u64,
    mut client: TokenResolverClient<Channel>,
    book: Shared,
    deadline: Instant,
) -> u64 {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut calls = 0;
    for _ in 0..MAX_RESOLVES {
        if Instant::now() >= deadline {
            break;
        }
        let name = {
            let book = lock(&book);
            if book.live.is_empty() {
                None
            } else {
                Some(book.live[rng.usize(..book.live.len())].clone())
            }
        };
        let Some(name) = name else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        resolve_and_book(&mut client, r, &name, &book).await;
        calls += 1;
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_on_every_replica_add_up_exactly() {
    let _heavy = crate::common::HEAVY.lock().await;
    let mut fleet = Fleet::scratch().await;
    fleet.start_n(REPLICAS, |_| {});
    let book: Shared = Arc::default();
    let started = Instant::now();
    let deadline = started + LOAD;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut admins = Vec::new();
        for r in 0..REPLICAS {
            admins.push(fleet.admin(r).await);
        }
        writers.push(tokio::spawn(writer(w, admins, book.clone(), deadline)));
    }
    let mut resolvers = Vec::new();
    for r in 0..REPLICAS {
        for k in 0..RESOLVERS_PER_REPLICA {
            let client = fleet.resolver(r).await;
            let seed = (r * 100 + k) as u64;
            resolvers.push(tokio::spawn(resolver(
                r,
                seed,
                client,
                book.clone(),
                deadline,
            )));
        }
    }
    for task in writers {
        tokio::time::timeout(LOAD + Duration::from_secs(60), task)
            .await
            .expect("writers end after the load")
            .expect("writer");
    }
    let mut resolves = 0;
    for task in resolvers {
        resolves += tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("resolvers end after the load")
            .expect("resolver");
    }
    let load = started.elapsed();

    // A last look from every replica, past the 1 s propagation bound.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let live = lock(&book).live.clone();
    for r in 0..REPLICAS {
        let mut client = fleet.resolver(r).await;
        for name in &live {
            let answer = resolve_and_book(&mut client, r, name, &book).await;
            let disabled = {
                let book = lock(&book);
                book.tokens[book.names[name].0].disabled
            };
            let want = if disabled {
                Answer::Disabled
            } else {
                Answer::Value
            };
            assert_eq!(answer, want, "replica {r}: {name} at the end");
        }
    }

    fleet.terminate_all();
    let (records, checkpoints) = fleet.audit_verify();

    let door = crate::pgcluster::connect_url(&fleet.url).await;
    let rows = door
        .query(
            "SELECT 'tenants/' || t.tenant || '/tokens/' || t.token_id, t.disabled,
                    coalesce(sum(u.resolve_count), 0)::bigint,
                    coalesce(sum(u.denied_count), 0)::bigint
             FROM tokens t LEFT JOIN token_usage u ON u.token_uid = t.uid
             GROUP BY t.tenant, t.token_id, t.disabled",
            &[],
        )
        .await
        .expect("read the store");
    let stored: BTreeMap<String, (bool, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();

    // The clients have ended: the book is whole.
    let book = std::mem::take(&mut *lock(&book));
    let expected: BTreeMap<String, (bool, i64, i64)> = book
        .tokens
        .iter()
        .filter(|t| !t.removed)
        .map(|t| {
            (
                t.name.clone(),
                (t.disabled, t.resolved as i64, t.refused_disabled as i64),
            )
        })
        .collect();
    let stored_names: BTreeSet<&String> = stored.keys().collect();
    let expected_names: BTreeSet<&String> = expected.keys().collect();
    let lost: Vec<_> = expected_names.difference(&stored_names).collect();
    let extra: Vec<_> = stored_names.difference(&expected_names).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "tokens lost: {lost:?}; tokens the clients do not know: {extra:?}"
    );
    let mut mismatched = Vec::new();
    for (name, want) in &expected {
        if stored[name] != *want {
            mismatched.push(format!(
                "{name}: stored (disabled, resolves, refusals) {:?}, clients saw {want:?}",
                stored[name]
            ));
        }
    }
    assert!(mismatched.is_empty(), "{mismatched:#?}");
    for (id, values) in &book.contended {
        assert_eq!(values.len(), 1, "{id} created {} times", values.len());
    }

    let seen_resolves: i64 = expected.values().map(|v| v.1).sum();
    let seen_refusals: i64 = expected.values().map(|v| v.2).sum();
    let stored_resolves: i64 = stored.values().map(|v| v.1).sum();
    let stored_refusals: i64 = stored.values().map(|v| v.2).sum();
    let rows: i64 = door
        .query_one("SELECT count(*) FROM tokens", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows as usize, stored.len(), "one row per name");

    // The audit trail accounts for every call the clients saw answered,
    // removed tokens included: writes one record each, resolves as exact
    // aggregates.
    let trail: BTreeMap<(String, String, String), i64> = door
        .query(
            "SELECT split_part(method, '/', 2), outcome, reason, sum(count)::bigint FROM audit
             WHERE method LIKE 'aitokens.v1.Token%' GROUP BY 1, 2, 3",
            &[],
        )
        .await
        .expect("read the trail")
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
        .collect();
    let in_trail = |method: &str, outcome: &str, reason: Option<&str>| -> i64 {
        trail
            .iter()
            .filter(|((m, o, why), _)| {
                m == method && o == outcome && reason.is_none_or(|r| why == r)
            })
            .map(|(_, n)| *n)
            .sum()
    };
    let calls = |name: &str| book.calls.get(name).copied().unwrap_or(0) as i64;
    let all_refused_disabled: u64 = book.tokens.iter().map(|t| t.refused_disabled).sum();
    let all_resolved: u64 = book.tokens.iter().map(|t| t.resolved).sum();
    let accounted = [
        (
            "CreateToken allowed",
            in_trail("CreateToken", "allowed", None),
            calls("create") + calls("create (contended, won)"),
        ),
        (
            "CreateToken failed TOKEN_ALREADY_EXISTS",
            in_trail("CreateToken", "failed", Some("TOKEN_ALREADY_EXISTS")),
            calls("create (contended, lost)"),
        ),
        (
            "RenameToken allowed",
            in_trail("RenameToken", "allowed", None),
            calls("rename"),
        ),
        (
            "DisableToken allowed",
            in_trail("DisableToken", "allowed", None),
            calls("disable"),
        ),
        (
            "EnableToken allowed",
            in_trail("EnableToken", "allowed", None),
            calls("enable"),
        ),
        (
            "RemoveToken allowed",
            in_trail("RemoveToken", "allowed", None),
            calls("remove"),
        ),
        (
            "ResolveToken allowed",
            in_trail("ResolveToken", "allowed", None),
            all_resolved as i64,
        ),
        (
            "ResolveToken refused TOKEN_DISABLED",
            in_trail("ResolveToken", "failed", Some("TOKEN_DISABLED"))
                + in_trail("ResolveToken", "denied", Some("TOKEN_DISABLED")),
            all_refused_disabled as i64,
        ),
        (
            "ResolveToken refused TOKEN_NOT_FOUND",
            in_trail("ResolveToken", "failed", Some("TOKEN_NOT_FOUND")),
            book.not_found as i64,
        ),
    ];
    let off: Vec<_> = accounted.iter().filter(|(_, t, c)| t != c).collect();
    assert!(
        off.is_empty(),
        "the trail (left) and the clients (right) disagree: {off:?}\ntrail: {trail:?}"
    );

    println!(
        "concurrent writes, {REPLICAS} replicas, {:.1}s of load: {:?}; {} contended create \
         attempts on {} ids, each created once",
        load.as_secs_f64(),
        book.calls,
        book.contended_attempts,
        book.contended.len()
    );
    println!(
        "concurrent writes: {resolves} resolves under load ({all_resolved} successful in all); \
         {} tokens in the store = acknowledged creates {} - removes {} (lost 0, unknown 0); \
         resolves counted in the store for them {stored_resolves} = seen by clients \
         {seen_resolves}; disabled refusals counted {stored_refusals} = seen {seen_refusals}; audit chain intact: {records} records, {checkpoints} \
         anchor checkpoints; the trail accounts for every call (trail = clients): {}",
        stored.len(),
        book.tokens.len(),
        book.tokens.iter().filter(|t| t.removed).count(),
        accounted
            .iter()
            .map(|(what, n, _)| format!("{what} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    assert!(
        book.calls.get("rename").copied().unwrap_or(0) > 0
            && book.calls.get("remove").copied().unwrap_or(0) > 0
            && book.calls.get("disable").copied().unwrap_or(0) > 0
            && !book.contended.is_empty(),
        "the load did every kind of write: {:?}",
        book.calls
    );
}
