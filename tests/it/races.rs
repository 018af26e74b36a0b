//! Concurrency: racing creates of one id, rename against remove with etags,
//! and resolves racing removes.
//!
//! A race test proves nothing if the calls never overlapped, so each one
//! records when its calls were in flight (client side: from just before the
//! call to its answer) and asserts that the window was hit: two calls in
//! flight at once, and, where the outcome can go either way, both outcomes
//! seen. Each runs rounds until that evidence is in or a bound (rounds and
//! time) is hit, and then fails with its counts.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aitokens::api::pb::{
    GetTokenRequest, RemoveTokenRequest, RenameTokenRequest, ResolveTokenRequest, Token,
    token_admin_client::TokenAdminClient, token_resolver_client::TokenResolverClient,
};
use tonic::{Code, Status, transport::Channel};

use crate::{
    common::{TestServer, create_request},
    process::long_tests,
};

/// When a call was in flight, as its client saw it.
#[derive(Clone, Copy, Debug)]
struct Flight {
    sent: Instant,
    answered: Instant,
}

impl Flight {
    /// Whether the two calls were in flight at the same time.
    fn overlaps(self, other: Flight) -> bool {
        self.sent < other.answered && other.sent < self.answered
    }
}

/// Runs `call`, timing it.
async fn timed<T>(call: impl Future<Output = T>) -> (Flight, T) {
    let sent = Instant::now();
    let result = call.await;
    (
        Flight {
            sent,
            answered: Instant::now(),
        },
        result,
    )
}

/// Rounds: at least the first, at most the second (and at most 120 s).
fn rounds(short: (usize, usize)) -> (usize, usize) {
    if long_tests() {
        (short.0 * 10, short.1 * 10)
    } else {
        short
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_of_one_id_have_exactly_one_winner() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let mut resolver = server.resolver().await;
    let (least, most) = rounds((20, 200));
    let deadline = Instant::now() + Duration::from_secs(120);
    // Rounds in which a loser was in flight together with the winner.
    let mut overlapped = 0;
    let mut round = 0;
    while round < least || (overlapped < 3 && round < most && Instant::now() < deadline) {
        let id = format!("race-{round}");
        let tasks: Vec<_> = (0..32)
            .map(|caller| {
                let (mut admin, id) = (admin.clone(), id.clone());
                tokio::spawn(async move {
                    let value = format!("sk-race-{round}-{caller}");
                    let (flight, result) =
                        timed(admin.create_token(create_request("acme", &id, &value))).await;
                    (value, flight, result)
                })
            })
            .collect();
        let (mut winners, mut losers) = (Vec::new(), Vec::new());
        for task in tasks {
            let (value, flight, result) = task.await.expect("task");
            match result {
                Ok(_) => winners.push((value, flight)),
                Err(status) => {
                    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
                    losers.push(flight);
                }
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let (value, won) = &winners[0];
        if losers.iter().any(|lost| lost.overlaps(*won)) {
            overlapped += 1;
        }
        let got = resolver
            .resolve_token(ResolveTokenRequest {
                name: format!("tenants/acme/tokens/{id}"),
            })
            .await
            .expect("resolve")
            .into_inner();
        assert!(got.value == *value, "round {round}: not the winner's value");
        round += 1;
    }
    eprintln!("racing creates: {overlapped} of {round} rounds overlapped the winner");
    assert!(
        overlapped >= 3,
        "the creates never raced: a loser was in flight with the winner in only \
         {overlapped} of {round} rounds"
    );
}

/// Counts of the rename-against-remove rounds.
#[derive(Debug, Default)]
struct RenameRemove {
    rounds: usize,
    renamed_wins: usize,
    removed_wins: usize,
    /// Rounds in which both calls were in flight at once.
    overlapped: usize,
}

impl RenameRemove {
    fn window_hit(&self) -> bool {
        self.renamed_wins > 0 && self.removed_wins > 0 && self.overlapped > 0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_against_remove_with_the_same_etag_has_one_winner() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let (least, most) = rounds((30, 300));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tally = RenameRemove::default();
    while tally.rounds < least
        || (!tally.window_hit() && tally.rounds < most && Instant::now() < deadline)
    {
        rename_remove_round(&admin, tally.rounds, &mut tally).await;
        tally.rounds += 1;
    }
    eprintln!("rename against remove: {tally:?}");
    assert!(
        tally.window_hit(),
        "the race was not hit (each side must win at least once, with both calls \
         in flight at once): {tally:?}"
    );
}

/// One round: a rename and a remove with the same etag, started together
/// (each round the other one first). Exactly one wins.
async fn rename_remove_round(
    admin: &TokenAdminClient<Channel>,
    round: usize,
    tally: &mut RenameRemove,
) {
    let id = format!("rr-{round}");
    let name = format!("tenants/acme/tokens/{id}");
    let etag = admin
        .clone()
        .create_token(create_request("acme", &id, "sk-rr"))
        .await
        .expect("create")
        .into_inner()
        .etag;
    let new_id = (round % 4 < 2).then(|| format!("{id}-new"));
    let rename = RenameTokenRequest {
        name: name.clone(),
        display_name: Some("renamed".into()),
        new_token_id: new_id.clone(),
        etag: Some(etag.clone()),
    };
    let remove = RemoveTokenRequest {
        name: name.clone(),
        etag: Some(etag),
        force: true,
    };
    let (mut a, mut b) = (admin.clone(), admin.clone());
    let rename = async move { timed(a.rename_token(rename)).await };
    let remove = async move { timed(b.remove_token(remove)).await };
    let ((rename_flight, rename), (remove_flight, remove)) = if round.is_multiple_of(2) {
        let rename = tokio::spawn(rename);
        let remove = tokio::spawn(remove);
        (rename.await.expect("task"), remove.await.expect("task"))
    } else {
        let remove = tokio::spawn(remove);
        let rename = tokio::spawn(rename);
        (rename.await.expect("task"), remove.await.expect("task"))
    };
    if rename_flight.overlaps(remove_flight) {
        tally.overlapped += 1;
    }
    match (rename, remove) {
        (Ok(token), Err(status)) => {
            tally.renamed_wins += 1;
            renamed_won(admin, &token.into_inner(), &status).await;
        }
        (Err(status), Ok(_)) => {
            tally.removed_wins += 1;
            removed_won(admin, &name, new_id.as_deref(), &status).await;
        }
        (rename, remove) => panic!("round {round}: rename {rename:?}, remove {remove:?}"),
    }
}

/// The rename won: the remove saw the new etag (ABORTED) or, renamed away,
/// no token; the token carries the rename.
async fn renamed_won(admin: &TokenAdminClient<Channel>, token: &Token, status: &Status) {
    assert!(
        matches!(status.code(), Code::Aborted | Code::NotFound),
        "{status:?}"
    );
    let got = admin
        .clone()
        .get_token(GetTokenRequest {
            name: token.name.clone(),
        })
        .await
        .expect("renamed token exists")
        .into_inner();
    assert_eq!(got.display_name, "renamed");
    assert_eq!(got.etag, token.etag);
}

/// The remove won: the rename was refused, and the token is gone under its
/// old name and under the new one.
async fn removed_won(
    admin: &TokenAdminClient<Channel>,
    name: &str,
    new_id: Option<&str>,
    status: &Status,
) {
    assert!(
        matches!(status.code(), Code::Aborted | Code::NotFound),
        "{status:?}"
    );
    let names = std::iter::once(name.to_owned())
        .chain(new_id.map(|id| format!("tenants/acme/tokens/{id}")));
    for name in names {
        let status = admin
            .clone()
            .get_token(GetTokenRequest { name: name.clone() })
            .await
            .expect_err("removed, never renamed");
        assert_eq!(status.code(), Code::NotFound, "{name}");
    }
}

/// What the readers of the resolve-against-remove race saw.
#[derive(Debug, Default)]
struct ResolveRemove {
    batches: usize,
    found: u64,
    gone: u64,
    /// Resolves of a token sent while its removal was in flight (sent, not
    /// yet acknowledged), by outcome.
    during_found: u64,
    during_gone: u64,
}

impl ResolveRemove {
    fn add(&mut self, other: &ResolveRemove) {
        self.found += other.found;
        self.gone += other.gone;
        self.during_found += other.during_found;
        self.during_gone += other.during_gone;
    }

    /// Resolves landed on both sides of a removal they were racing.
    fn window_hit(&self) -> bool {
        self.during_found > 0 && self.during_gone > 0
    }
}

/// The remover's progress, shared with the readers.
#[derive(Default)]
struct Removal {
    /// 1 + the index whose removal is in flight; 0 between removals.
    in_flight: AtomicUsize,
    /// Indices whose removal the server has acknowledged.
    acknowledged: Mutex<HashSet<usize>>,
    done: AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_during_remove_never_returns_another_value_or_one_after_the_remove() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let resolver = server.resolver().await;
    let per_batch = if long_tests() { 1_000 } else { 100 };
    let mut total = ResolveRemove::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while total.batches < 1 || (!total.window_hit() && total.batches < 10) {
        assert!(Instant::now() < deadline, "out of time: {total:?}");
        let batch = total.batches;
        let values: Arc<Vec<String>> = Arc::new(
            (0..per_batch)
                .map(|i| format!("sk-remove-race-{batch}-{i:05}-{:08x}", fastrand::u32(..)))
                .collect(),
        );
        for (i, value) in values.iter().enumerate() {
            admin
                .create_token(create_request("acme", &format!("b{batch}-t{i}"), value))
                .await
                .expect("create");
        }
        let removal = Arc::new(Removal::default());
        let readers: Vec<_> = (0..8)
            .map(|r| {
                let (resolver, values, removal) =
                    (resolver.clone(), values.clone(), removal.clone());
                tokio::spawn(read_while_removing(resolver, batch, r, values, removal))
            })
            .collect();
        for i in 0..per_batch {
            removal.in_flight.store(i + 1, Ordering::SeqCst);
            admin
                .remove_token(RemoveTokenRequest {
                    name: format!("tenants/acme/tokens/b{batch}-t{i}"),
                    etag: None,
                    // Readers resolve these tokens right now: force past the
                    // recent-caller guard (the property tested is elsewhere).
                    force: true,
                })
                .await
                .expect("remove");
            removal.acknowledged.lock().expect("set").insert(i);
            removal.in_flight.store(0, Ordering::SeqCst);
        }
        removal.done.store(true, Ordering::SeqCst);
        for reader in readers {
            total.add(&reader.await.expect("reader"));
        }
        total.batches += 1;
    }
    eprintln!("resolves during removal: {total:?}");
    assert!(
        total.window_hit(),
        "no resolve landed on both sides of a removal it raced: {total:?}"
    );
}

/// One reader: mostly the token being removed right now (or the next one),
/// sometimes any token. Never another value; never a value once the removal
/// was acknowledged before the resolve was sent.
async fn read_while_removing(
    mut resolver: TokenResolverClient<Channel>,
    batch: usize,
    seed: u64,
    values: Arc<Vec<String>>,
    removal: Arc<Removal>,
) -> ResolveRemove {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seen = ResolveRemove::default();
    for _ in 0..values.len() * 200 {
        if removal.done.load(Ordering::SeqCst) {
            break;
        }
        let i = match (rng.u8(0..4), removal.in_flight.load(Ordering::SeqCst)) {
            (0, _) | (_, 0) => rng.usize(0..values.len()),
            (1, current) => current.min(values.len() - 1),
            (_, current) => current - 1,
        };
        let removed_before = removal.acknowledged.lock().expect("set").contains(&i);
        let during = !removed_before && removal.in_flight.load(Ordering::SeqCst) == i + 1;
        let result = resolver
            .resolve_token(ResolveTokenRequest {
                name: format!("tenants/acme/tokens/b{batch}-t{i}"),
            })
            .await;
        match result {
            Ok(reply) => {
                assert!(
                    !removed_before,
                    "b{batch}-t{i} resolved after its removal was acknowledged"
                );
                assert!(
                    reply.get_ref().value == values[i],
                    "b{batch}-t{i}: another value"
                );
                seen.found += 1;
                seen.during_found += u64::from(during);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "b{batch}-t{i}: {status:?}");
                // The remover marks a removal acknowledged before it clears
                // the in-flight mark, so one of the two shows here.
                let asked = removal.in_flight.load(Ordering::SeqCst) == i + 1
                    || removal.acknowledged.lock().expect("set").contains(&i);
                assert!(asked, "b{batch}-t{i} was gone before its removal was sent");
                seen.gone += 1;
                seen.during_gone += u64::from(during);
            }
        }
    }
    seen
}
