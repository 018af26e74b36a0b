//! Soak: a bounded mixed load (resolves plus admin create, get, rename,
//! list, remove) against the real `aitokens serve`, with the server's RSS and
//! open file descriptors sampled once a second. No errors; no growth trend.
//!
//! The churned tokens (created, renamed and removed during the soak) are
//! resolved too: by their churner at each step (the exact value while
//! present, NotFound once a rename or removal is acknowledged), and by the
//! readers while the churners work on them (never another value, never a
//! value after the removal was acknowledged, NotFound only once a removal
//! was sent).
//!
//! CI runs 12 s; `AITOKENS_LONG_TESTS=1` runs 3 minutes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aitokens::api::pb::{
    GetTokenRequest, ListTokensRequest, RemoveTokenRequest, RenameTokenRequest,
    ResolveTokenRequest, token_admin_client::TokenAdminClient,
    token_resolver_client::TokenResolverClient,
};
use tonic::{Code, transport::Channel};

use crate::{
    common::create_request,
    process::{DataDir, Serve, long_tests},
};

const STABLE: usize = 100;
/// Churners; each publishes the token it is working on.
const CHURNERS: usize = 2;

/// States of a published churned name.
const LIVE: u8 = 0;
/// Its rename or removal was sent.
const GOING: u8 = 1;
/// Its rename or removal was acknowledged.
const GONE: u8 = 2;

/// A churned token name the readers may resolve.
#[derive(Clone)]
struct Published {
    name: String,
    value: String,
    state: Arc<AtomicU8>,
}

type Slots = Arc<Vec<Mutex<Option<Published>>>>;

/// Counts shared by the load tasks.
#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    /// Resolves of churned tokens by their churner (value or NotFound as due).
    churn_checked: AtomicU64,
    /// Resolves of churned tokens by the readers, by outcome.
    churn_found: AtomicU64,
    churn_gone: AtomicU64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

fn stable_value(i: usize) -> String {
    format!("sk-soak-stable-{i:04}-5eed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_shows_no_errors_and_no_growth() {
    let _heavy = crate::common::HEAVY.lock().await;

    let length = if long_tests() {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(12)
    };
    let data = DataDir::new();
    let server = Serve::start(&data, "info", "soak.log");
    let pid = server.pid();
    let mut admin = server.admin(&data).await;
    for i in 0..STABLE {
        admin
            .create_token(create_request(
                "acme",
                &format!("stable-{i}"),
                &stable_value(i),
            ))
            .await
            .expect("create");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let slots: Slots = Arc::new((0..CHURNERS).map(|_| Mutex::new(None)).collect());
    let deadline = Instant::now() + length;
    let mut tasks = Vec::new();
    for r in 0..6 {
        let resolver = server.resolver(&data).await;
        let (stop, counts, slots) = (stop.clone(), counts.clone(), slots.clone());
        tasks.push(tokio::spawn(read(r, resolver, stop, counts, slots)));
    }
    for a in 0..CHURNERS {
        let (admin, resolver) = (admin.clone(), server.resolver(&data).await);
        let (stop, counts, slots) = (stop.clone(), counts.clone(), slots.clone());
        tasks.push(tokio::spawn(churn(a, admin, resolver, stop, counts, slots)));
    }

    let samples = sample_until(deadline, pid, &tasks).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("load stops")
            .expect("no errors under load");
    }
    let total = counts.ops.load(Ordering::Relaxed);
    let checked = counts.churn_checked.load(Ordering::Relaxed);
    let (found, gone) = (
        counts.churn_found.load(Ordering::Relaxed),
        counts.churn_gone.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak: {total} operations in {length:?}; churned tokens resolved {checked} times by \
         their churners, {found} found and {gone} gone by the readers; \
         (RSS KiB, fds) samples: {samples:?}"
    );
    assert!(
        checked > 0 && found > 0,
        "the churned tokens were not resolved: {checked} by churners, {found} found by readers"
    );
    assert_no_growth(&samples);
    server.terminate();
}

/// The server's (RSS KiB, open fds) once a second until `deadline`, or
/// until a load task ends (it failed: its error comes out when joined).
async fn sample_until(
    deadline: Instant,
    pid: u32,
    tasks: &[tokio::task::JoinHandle<()>],
) -> Vec<(u64, usize)> {
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((rss_kib(pid), open_fds(pid)));
        if tasks.iter().any(|t| t.is_finished()) {
            break;
        }
    }
    samples
}

/// Growth: compares the last third with the second third (the first third
/// is warm-up: caches, pools and allocator arenas filling).
fn assert_no_growth(samples: &[(u64, usize)]) {
    assert!(samples.len() >= 6, "too few samples");
    let third = samples.len() / 3;
    let middle = &samples[third..2 * third];
    let last = &samples[2 * third..];
    let mean = |s: &[(u64, usize)]| s.iter().map(|(r, _)| *r).sum::<u64>() / s.len() as u64;
    let (before, after) = (mean(middle), mean(last));
    assert!(
        after <= before + before / 5 + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    let fds_before = middle.iter().map(|(_, f)| *f).max().expect("fds");
    let fds_after = last.iter().map(|(_, f)| *f).max().expect("fds");
    assert!(
        fds_after <= fds_before + 4,
        "open files grew from {fds_before} to {fds_after}"
    );
}

/// A reader: stable tokens (exact values), and one time in four the token a
/// churner works on.
async fn read(
    seed: u64,
    mut resolver: TokenResolverClient<Channel>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    slots: Slots,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..10_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let churned = rng.u8(0..4) == 0;
        let published = churned
            .then(|| slots[rng.usize(0..CHURNERS)].lock().expect("slot").clone())
            .flatten();
        let Some(p) = published else {
            let i = rng.usize(0..STABLE);
            let reply = resolver
                .resolve_token(ResolveTokenRequest {
                    name: format!("tenants/acme/tokens/stable-{i}"),
                })
                .await
                .expect("resolve");
            assert!(reply.get_ref().value == stable_value(i), "wrong value");
            counts.ops.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let before = p.state.load(Ordering::SeqCst);
        let result = resolver
            .resolve_token(ResolveTokenRequest {
                name: p.name.clone(),
            })
            .await;
        match result {
            Ok(reply) => {
                assert!(
                    before != GONE,
                    "{} resolved after its removal was acknowledged",
                    p.name
                );
                assert!(
                    reply.get_ref().value == p.value,
                    "{}: another value",
                    p.name
                );
                counts.churn_found.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{}: {status:?}", p.name);
                assert_ne!(
                    p.state.load(Ordering::SeqCst),
                    LIVE,
                    "{}: NotFound before its removal was sent",
                    p.name
                );
                counts.churn_gone.fetch_add(1, Ordering::Relaxed);
            }
        }
        counts.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// The value the churned token's resolve returned, or its status code.
async fn resolve(resolver: &mut TokenResolverClient<Channel>, name: &str) -> Result<String, Code> {
    resolver
        .resolve_token(ResolveTokenRequest {
            name: name.to_owned(),
        })
        .await
        .map(|r| r.get_ref().value.clone())
        .map_err(|s| s.code())
}

/// Publishes `name` in `slot` for the readers, live.
fn publish(slot: &Mutex<Option<Published>>, name: &str, value: &str) -> Arc<AtomicU8> {
    let state = Arc::new(AtomicU8::new(LIVE));
    *slot.lock().expect("slot") = Some(Published {
        name: name.to_owned(),
        value: value.to_owned(),
        state: state.clone(),
    });
    state
}

/// A churner: rounds of [`churn_once`] until told to stop.
async fn churn(
    a: usize,
    mut admin: TokenAdminClient<Channel>,
    mut resolver: TokenResolverClient<Channel>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    slots: Slots,
) {
    for k in 0..1_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = format!("churn-{a}-{k}");
        churn_once(&id, k, &mut admin, &mut resolver, &slots[a]).await;
        counts.churn_checked.fetch_add(4, Ordering::Relaxed);
        counts.ops.fetch_add(9, Ordering::Relaxed);
    }
}

/// Create, get, rename (to a new id), list, remove one token, resolving it
/// after each change and publishing it in `slot` for the readers.
async fn churn_once(
    id: &str,
    k: u64,
    admin: &mut TokenAdminClient<Channel>,
    resolver: &mut TokenResolverClient<Channel>,
    slot: &Mutex<Option<Published>>,
) {
    let value = format!("sk-soak-{id}");
    let token = admin
        .create_token(create_request("acme", id, &value))
        .await
        .expect("create")
        .into_inner();
    let state = publish(slot, &token.name, &value);
    assert_eq!(resolve(resolver, &token.name).await, Ok(value.clone()));
    admin
        .get_token(GetTokenRequest {
            name: token.name.clone(),
        })
        .await
        .expect("get");
    state.store(GOING, Ordering::SeqCst);
    let renamed = admin
        .rename_token(RenameTokenRequest {
            name: token.name.clone(),
            display_name: Some(format!("renamed {k}")),
            new_token_id: Some(format!("{id}-r")),
            etag: Some(token.etag),
        })
        .await
        .expect("rename")
        .into_inner();
    state.store(GONE, Ordering::SeqCst);
    let state = publish(slot, &renamed.name, &value);
    assert_eq!(resolve(resolver, &token.name).await, Err(Code::NotFound));
    assert_eq!(resolve(resolver, &renamed.name).await, Ok(value));
    admin
        .list_tokens(ListTokensRequest {
            parent: "tenants/acme".into(),
            page_size: 50,
            ..Default::default()
        })
        .await
        .expect("list");
    state.store(GOING, Ordering::SeqCst);
    admin
        .remove_token(RemoveTokenRequest {
            name: renamed.name.clone(),
            etag: Some(renamed.etag),
            force: true,
        })
        .await
        .expect("remove");
    state.store(GONE, Ordering::SeqCst);
    assert_eq!(resolve(resolver, &renamed.name).await, Err(Code::NotFound));
}
