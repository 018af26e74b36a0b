//! The domain over the in-memory store: no sockets, no files.
//!
//! One file of about 600 lines, kept whole: every test starts from the
//! fixture below, and files split by topic would each need it.

use std::{sync::Arc, time::Duration};

use super::*;
use crate::{
    crypto::{Keyring, RootKey},
    model::{Actor, Clock, SecretValue, TenantId, TokenName},
    store::{AuditFilter, AuditLog, KeyringStore, TokenStore, UpdateFn, memory::MemoryStore},
};

const AGENT: &str = "spiffe://t/agent";

struct Fixture {
    store: Arc<MemoryStore>,
    domain: Domain,
    audit: Arc<AuditQueue>,
    health: Arc<AuditHealth>,
    chain: Arc<crate::crypto::chain::ChainKey>,
    admin: Actor,
}

async fn fixture() -> Fixture {
    fixture_with(Duration::from_secs(600)).await
}

/// A fixture whose audit trail may go `bound` without a write.
async fn fixture_with(bound: Duration) -> Fixture {
    fixture_at(bound, Clock::system()).await
}

/// A fixture whose domain reads the time from `clock`.
async fn fixture_at(bound: Duration, clock: Clock) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let root = RootKey::from_encoded(&[7; 32]).expect("root key");
    let (keyring, records) = Keyring::create(&root).expect("keyring");
    store.init_keyring(records).await.expect("init");
    let chain = Arc::new(keyring.chain_key().expect("a new keyring has an audit key"));
    store.use_chain_key(chain.clone());
    let keyring = Arc::new(KeyringHandle::new(root, keyring));
    let audit = Arc::new(AuditQueue::default());
    let health = Arc::new(AuditHealth::new(audit.clone(), bound));
    let accounting = Accounting {
        health: health.clone(),
        per_call: None,
    };
    let settings = TokenSettings {
        recent_window: Duration::from_secs(60),
        clock,
        ..TokenSettings::default()
    };
    let domain = Domain::new(store.clone(), keyring, audit.clone(), accounting, settings)
        .await
        .expect("domain");
    Fixture {
        store,
        domain,
        audit,
        health,
        chain,
        admin: Actor {
            identity: "spiffe://t/admin".into(),
            peer: "test".into(),
            method: "test/Method",
        },
    }
}

fn name(id: &str) -> TokenName {
    TokenName::parse(&format!("tenants/acme/tokens/{id}"), "name").expect("name")
}

impl Fixture {
    async fn create(&self, id: &str, value: &str, replaces: &str) -> crate::model::TokenRecord {
        let new = NewToken {
            tenant: TenantId::new("acme", "t").expect("tenant"),
            token_id: id.into(),
            display_name: id.into(),
            value: SecretValue::new(value.into()),
            replaces: replaces.into(),
        };
        self.domain
            .lifecycle
            .create(&self.admin, new)
            .await
            .expect("create")
    }

    async fn resolve(&self, id: &str) -> crate::Result<String> {
        self.domain
            .resolver
            .resolve(&name(id), AGENT, false)
            .await
            .map(|v| v.expose().to_owned())
    }

    async fn remove(&self, id: &str, force: bool) -> crate::Result<()> {
        self.domain
            .lifecycle
            .remove(&self.admin, name(id), None, force)
            .await
    }
}

#[tokio::test]
async fn a_created_token_resolves_to_its_value_and_counts_the_caller() {
    let f = fixture().await;
    f.create("openai", "sk-one", "").await;
    assert_eq!(f.resolve("openai").await.expect("resolve"), "sk-one");
    assert_eq!(f.resolve("openai").await.expect("cached"), "sk-one");
    let record = f.domain.lifecycle.get(&name("openai")).await.expect("get");
    assert_eq!(record.resolve_count, 2, "pending resolves are counted");
    let usages = f
        .domain
        .reports
        .usages(&name("openai"))
        .await
        .expect("usages");
    assert_eq!(usages.len(), 1);
    assert_eq!(
        (usages[0].0.as_str(), usages[0].1.resolve_count),
        (AGENT, 2)
    );
    assert!(matches!(
        f.resolve("missing").await,
        Err(Error::NotFound("token"))
    ));
}

#[tokio::test]
async fn reads_during_a_flush_wait_for_it_and_count_what_it_carries() {
    let f = fixture().await;
    f.create("t", "v", "").await;
    f.resolve("t").await.expect("resolve");
    let held = f.store.hold_flushes().await;
    let flusher = f.domain.flusher.clone();
    let flush = tokio::spawn(async move { flusher.flush().await });
    // The window: the tracker handed its counters over, the store has none.
    f.store.flush_waiting().await;
    let domain = f.domain.clone();
    let mut get = tokio::spawn(async move { domain.lifecycle.get(&name("t")).await });
    let domain = f.domain.clone();
    let mut list = tokio::spawn(async move {
        let tenant = TenantId::new("acme", "tenant").expect("tenant");
        domain.lifecycle.list(tenant, 10, "", None).await
    });
    // Neither read may answer inside the window (it would count nothing).
    let window = Duration::from_millis(200);
    assert!(
        tokio::time::timeout(window, &mut get).await.is_err(),
        "get answered mid-flush"
    );
    assert!(
        tokio::time::timeout(window, &mut list).await.is_err(),
        "list answered mid-flush"
    );
    drop(held);
    flush.await.expect("join").expect("flush");
    let record = get.await.expect("join").expect("get");
    assert_eq!(record.resolve_count, 1);
    let page = list.await.expect("join").expect("list");
    assert_eq!(page.items[0].resolve_count, 1);
}

#[tokio::test]
async fn usage_pending_and_flushed_add_up_and_a_failed_flush_loses_nothing() {
    let f = fixture().await;
    f.create("t", "v", "").await;
    f.resolve("t").await.expect("resolve");
    f.domain.flusher.flush().await.expect("flush");
    f.resolve("t").await.expect("resolve");
    f.store.fail_writes(true);
    f.resolve("t").await.expect("a resolve needs no write");
    let failed = f.domain.flusher.flush().await;
    assert!(matches!(failed, Err(Error::Storage(_))), "{failed:?}");
    // Both unflushed resolves are still counted, beside the flushed one.
    let usages = f.domain.reports.usages(&name("t")).await.expect("usages");
    assert_eq!(usages[0].1.resolve_count, 3);
    f.store.fail_writes(false);
    f.domain.flusher.flush().await.expect("flush");
    let stored = f.store.get(&name("t")).await.expect("get").expect("row");
    assert_eq!(stored.resolve_count, 3, "exactly the resolves made");
}

#[tokio::test]
async fn unused_for_n_days_means_created_and_not_resolved_within_them() {
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    let clock = Clock::manual(crate::model::now());
    let f = fixture_at(Duration::from_secs(600), clock.clone()).await;
    let unused_for = |days: u32| {
        let lifecycle = f.domain.lifecycle.clone();
        async move {
            let tenant = TenantId::new("acme", "t").expect("tenant");
            let page = lifecycle
                .list(tenant, 0, "", Some(DAY * days))
                .await
                .expect("list");
            page.items
                .iter()
                .map(|r| r.name.token_id.as_str().to_owned())
                .collect::<Vec<_>>()
        }
    };
    f.create("fresh", "sk-fresh", "").await;
    assert!(
        unused_for(30).await.is_empty(),
        "a token created a moment ago is not unused for 30 days"
    );
    clock.advance(DAY * 30);
    assert!(
        unused_for(30).await.is_empty(),
        "created exactly 30 days ago: not more than 30 days"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        unused_for(30).await,
        ["fresh"],
        "30 days and a second, never resolved"
    );
    assert!(unused_for(31).await.is_empty(), "not yet 31 days old");

    f.resolve("fresh").await.expect("resolve");
    assert!(
        unused_for(30).await.is_empty(),
        "resolved now (pending counters)"
    );
    f.domain.flusher.flush().await.expect("flush");
    assert!(
        unused_for(30).await.is_empty(),
        "resolved now (flushed to the store)"
    );
    clock.advance(DAY * 29);
    assert!(unused_for(30).await.is_empty(), "resolved 29 days ago");
    assert_eq!(unused_for(28).await, ["fresh"], "resolved 29 days ago");
    clock.advance(DAY * 2);
    assert_eq!(unused_for(30).await, ["fresh"], "resolved 31 days ago");
}

#[tokio::test]
async fn disable_refuses_at_once_and_enable_restores() {
    let f = fixture().await;
    f.create("t", "v", "").await;
    f.resolve("t").await.expect("cached now");
    let disabled = f
        .domain
        .lifecycle
        .set_disabled(&f.admin, name("t"), true, None)
        .await
        .expect("disable");
    assert!(disabled.disabled);
    match f.resolve("t").await {
        Err(Error::FailedPrecondition {
            reason: "TOKEN_DISABLED",
            ..
        }) => {}
        other => panic!("a disabled token resolved: {other:?}"),
    }
    f.domain
        .lifecycle
        .set_disabled(&f.admin, name("t"), false, None)
        .await
        .expect("enable");
    assert_eq!(f.resolve("t").await.expect("enabled"), "v");
}

#[tokio::test]
async fn rename_moves_the_value_and_the_old_name_stops_resolving() {
    let f = fixture().await;
    let before = f.create("old-id", "v", "").await;
    f.resolve("old-id")
        .await
        .expect("cached under the old name");
    let change = Rename {
        new_token_id: Some("new-id".into()),
        etag: Some(before.etag()),
        ..Rename::default()
    };
    let renamed = f
        .domain
        .lifecycle
        .rename(&f.admin, name("old-id"), change)
        .await
        .expect("rename");
    assert_eq!((renamed.uid, renamed.revision), (before.uid, 2));
    assert!(matches!(f.resolve("old-id").await, Err(Error::NotFound(_))));
    assert_eq!(f.resolve("new-id").await.expect("resolve"), "v");
    // A stale etag changes nothing.
    let stale = Rename {
        display_name: Some("x".into()),
        etag: Some(before.etag()),
        ..Rename::default()
    };
    let refused = f
        .domain
        .lifecycle
        .rename(&f.admin, name("new-id"), stale)
        .await;
    assert!(matches!(refused, Err(Error::Aborted)));
}

#[tokio::test]
async fn the_removal_guard_blocks_recent_callers_and_bindings_unless_forced() {
    let f = fixture().await;
    f.create("used", "v", "").await;
    f.create("bound", "v", "").await;
    f.create("idle", "v", "").await;
    f.resolve("used").await.expect("resolve");
    f.domain
        .bindings
        .create(&f.admin, name("bound"), "billing", "", "billing agent")
        .await
        .expect("bind");
    for (id, kind) in [("used", "RECENT_CALLER"), ("bound", "BINDING")] {
        match f.remove(id, false).await {
            Err(Error::FailedPrecondition {
                reason: "TOKEN_IN_USE",
                violations,
                ..
            }) => assert_eq!(violations[0].kind, kind, "{id}"),
            other => panic!("{id}: expected TOKEN_IN_USE, got {other:?}"),
        }
        assert!(
            f.resolve(id).await.is_ok(),
            "a refused removal changed {id}"
        );
    }
    f.remove("idle", false).await.expect("an unused token goes");
    f.remove("used", true).await.expect("forced");
    f.remove("bound", true).await.expect("forced");
    for id in ["idle", "used", "bound"] {
        assert!(
            matches!(f.resolve(id).await, Err(Error::NotFound(_))),
            "{id}"
        );
    }
    // The forced removal audited the binding that went with it.
    let events = f
        .store
        .list_audit(&AuditFilter::default(), 0, 100)
        .await
        .expect("audit");
    assert!(
        events
            .iter()
            .any(|r| r.event.reason == "binding deleted by forced removal")
    );
    assert!(
        events
            .iter()
            .any(|r| r.event.reason == "removed with force despite 1 blocker(s)")
    );
}

#[tokio::test]
async fn a_replaced_token_is_ready_to_remove_once_callers_switch() {
    let f = fixture().await;
    f.create("old", "v1", "").await;
    f.create("new", "v2", "tenants/acme/tokens/old").await;
    let status = f
        .domain
        .reports
        .replacement_status(&name("old"))
        .await
        .expect("status");
    assert_eq!(status.replaced_by, Some(name("new")));
    assert!(status.ready_to_remove, "nobody resolved the old token yet");
    f.resolve("old").await.expect("a superseded resolve");
    let status = f
        .domain
        .reports
        .replacement_status(&name("old"))
        .await
        .expect("status");
    assert!(!status.ready_to_remove);
    assert_eq!(status.callers_not_switched, [AGENT]);
    // Removing the replacement unlinks the old token, which resolves as
    // not replaced again (its cached row was invalidated).
    f.remove("new", false).await.expect("remove the new token");
    let old = f.domain.lifecycle.get(&name("old")).await.expect("old");
    assert_eq!(old.replaced_by, None);
    let resolved = f.domain.reports.usages(&name("old")).await.expect("usages");
    f.resolve("old").await.expect("resolve");
    let after = f.domain.reports.usages(&name("old")).await.expect("usages");
    assert_eq!(
        after[0].1.superseded_count, resolved[0].1.superseded_count,
        "a token no longer replaced is not counted as superseded"
    );
}

#[tokio::test]
async fn a_change_made_behind_the_domain_drops_the_cache() {
    let f = fixture().await;
    f.create("t", "v", "").await;
    f.resolve("t").await.expect("cached");
    assert_eq!(f.domain.resolver.cache_stats().rows, 1);
    // Another process disables the token straight in the store.
    let disable: UpdateFn = Box::new(|current| {
        let mut updated = current.clone();
        updated.disabled = true;
        Ok((updated, Vec::new()))
    });
    f.store.update(&name("t"), disable).await.expect("update");
    assert_eq!(f.resolve("t").await.expect("the cache still has it"), "v");
    assert!(
        f.domain
            .resolver
            .notice_store_changes()
            .await
            .expect("poll")
    );
    assert_eq!(f.domain.resolver.cache_stats().rows, 0);
    assert!(matches!(
        f.resolve("t").await,
        Err(Error::FailedPrecondition { .. })
    ));
    assert!(
        !f.domain
            .resolver
            .notice_store_changes()
            .await
            .expect("poll")
    );
}

#[tokio::test]
async fn every_change_is_audited_in_its_transaction_and_decisions_are_queued() {
    let f = fixture().await;
    f.create("t", "v", "").await;
    let stored = f
        .store
        .list_audit(&AuditFilter::default(), 0, 10)
        .await
        .expect("audit");
    assert_eq!(stored.len(), 1, "the create is in the trail at once");
    assert_eq!(stored[0].event.reason, "created");
    f.audit.push(
        f.admin
            .event(None, "x", crate::model::Outcome::Allowed, "read"),
    );
    f.domain.flusher.flush().await.expect("flush");
    let verdict = crate::audit::verify_chain(&*f.store, &f.chain, &[])
        .await
        .expect("verify");
    assert_eq!(
        verdict,
        crate::audit::AuditVerdict::Intact {
            records: 2,
            checkpoints: 0
        }
    );
    assert_eq!(
        f.store.chain_head().await.expect("head").map(|h| h.0),
        Some(2)
    );
}

#[tokio::test]
async fn every_allowed_resolve_is_accounted_for_in_the_trail() {
    let f = fixture().await;
    f.create("a", "v", "").await;
    f.create("b", "v", "").await;
    for (id, caller, times) in [
        ("a", AGENT, 5),
        ("a", "spiffe://t/other", 3),
        ("b", AGENT, 2),
    ] {
        for _ in 0..times {
            f.domain
                .resolver
                .resolve(&name(id), caller, false)
                .await
                .expect("resolve");
        }
    }
    f.domain.flusher.flush().await.expect("flush");
    let events = f
        .store
        .list_audit(&AuditFilter::default(), 0, 100)
        .await
        .expect("audit");
    let resolved: Vec<_> = events
        .iter()
        .filter(|r| r.event.method.ends_with("/ResolveToken"))
        .map(|r| {
            (
                r.event.resource.as_str(),
                r.event.actor.as_str(),
                r.event.count,
            )
        })
        .collect();
    assert_eq!(
        resolved.len(),
        3,
        "one aggregate per (token, caller): {resolved:?}"
    );
    assert_eq!(
        resolved.iter().map(|r| r.2).sum::<i64>(),
        10,
        "exactly the resolves made"
    );
    assert!(resolved.contains(&("tenants/acme/tokens/a", "spiffe://t/other", 3)));
    let a = events
        .iter()
        .find(|r| r.event.resource.ends_with("/a") && r.event.actor == AGENT)
        .expect("a by the agent");
    assert!(a.event.first_time <= a.event.time);
    assert_eq!(a.event.tenant.as_deref(), Some("acme"));
}

#[tokio::test]
async fn values_stop_leaving_while_the_trail_cannot_be_written() {
    let f = fixture_with(Duration::from_millis(300)).await;
    f.create("t", "v", "").await;
    f.domain.flusher.flush().await.expect("flush");
    assert_eq!(f.resolve("t").await.expect("healthy"), "v");
    f.store.fail_writes(true);
    let started = std::time::Instant::now();
    let refused = loop {
        let _ = f.domain.flusher.flush().await;
        match f.resolve("t").await {
            Err(e) => break e,
            Ok(_) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "still resolving 10 s after writes stopped"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        matches!(
            refused,
            Error::Unavailable {
                reason: "AUDIT_UNAVAILABLE",
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(!f.health.accepting());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the bound"
    );
    // Writes come back: the next flush writes everything held, and values
    // leave again, every one of them accounted for.
    f.store.fail_writes(false);
    f.domain.flusher.flush().await.expect("flush");
    assert_eq!(f.resolve("t").await.expect("recovered"), "v");
    f.domain.flusher.flush().await.expect("flush");
    let counted: i64 = f
        .store
        .list_audit(&AuditFilter::default(), 0, 1000)
        .await
        .expect("audit")
        .iter()
        .filter(|r| r.event.method.ends_with("/ResolveToken"))
        .map(|r| r.event.count)
        .sum();
    let made = f
        .domain
        .lifecycle
        .get(&name("t"))
        .await
        .expect("get")
        .resolve_count;
    assert_eq!(
        counted, made,
        "the trail accounts for exactly the resolves made"
    );
}

#[tokio::test]
async fn without_its_chain_key_the_store_audits_nothing_and_changes_nothing() {
    let store = MemoryStore::new();
    let root = RootKey::from_encoded(&[9; 32]).expect("root key");
    let (_, records) = Keyring::create(&root).expect("keyring");
    store
        .init_keyring(records)
        .await
        .expect("no events: no key needed");
    let record = crate::model::TokenRecord::new(
        crate::model::TokenUid::generate().expect("uid"),
        name("t"),
        "t".into(),
        crate::model::now(),
    );
    let sealed = crate::model::SealedValue {
        kek_version: 1,
        wrapped_data_key: vec![1],
        value_ciphertext: vec![2],
    };
    let event = Actor {
        identity: "x".into(),
        peer: "y".into(),
        method: "z",
    }
    .event(None, "t", crate::model::Outcome::Allowed, "created");
    let refused = store.insert(record, sealed, None, vec![event]).await;
    assert!(matches!(refused, Err(Error::Internal(_))), "{refused:?}");
    assert_eq!(store.count().await.expect("count"), 0);
}
