//! Soak: a bounded mixed load (resolves plus admin create, get, rename,
//! list, remove) against the real `aitokens serve`, with the server's RSS and
//! open file descriptors sampled once a second. No errors; no growth trend.
//!
//! CI runs 12 s; `AITOKENS_LONG_TESTS=1` runs 3 minutes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aitokens::api::pb::{
    GetTokenRequest, ListTokensRequest, RemoveTokenRequest, RenameTokenRequest, ResolveTokenRequest,
};

use crate::{
    common::create_request,
    process::{DataDir, Serve, long_tests},
};

const STABLE: usize = 100;

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
    let ops = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + length;
    let mut tasks = Vec::new();
    for r in 0..6 {
        let (mut resolver, stop, ops) = (server.resolver(&data).await, stop.clone(), ops.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(r);
            for _ in 0..10_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = rng.usize(0..STABLE);
                let reply = resolver
                    .resolve_token(ResolveTokenRequest {
                        name: format!("tenants/acme/tokens/stable-{i}"),
                    })
                    .await
                    .expect("resolve");
                assert!(reply.get_ref().value == stable_value(i), "wrong value");
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for a in 0..2 {
        let (mut admin, stop, ops) = (admin.clone(), stop.clone(), ops.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..1_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("churn-{a}-{k}");
                let token = admin
                    .create_token(create_request("acme", &id, &format!("sk-soak-{a}-{k}")))
                    .await
                    .expect("create")
                    .into_inner();
                admin
                    .get_token(GetTokenRequest {
                        name: token.name.clone(),
                    })
                    .await
                    .expect("get");
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
                admin
                    .list_tokens(ListTokensRequest {
                        parent: "tenants/acme".into(),
                        page_size: 50,
                        ..Default::default()
                    })
                    .await
                    .expect("list");
                admin
                    .remove_token(RemoveTokenRequest {
                        name: renamed.name,
                        etag: Some(renamed.etag),
                        force: true,
                    })
                    .await
                    .expect("remove");
                ops.fetch_add(5, Ordering::Relaxed);
            }
        }));
    }

    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((rss_kib(pid), open_fds(pid)));
        if tasks.iter().any(|t| t.is_finished()) {
            break; // a task failed: its error comes out below
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("load stops")
            .expect("no errors under load");
    }
    let total = ops.load(Ordering::Relaxed);
    eprintln!("soak: {total} operations in {length:?}; (RSS KiB, fds) samples: {samples:?}");
    assert!(samples.len() >= 6, "too few samples");
    // Growth: compare the last third with the second third (the first third
    // is warm-up: caches, pools and allocator arenas filling).
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
    server.terminate();
}
