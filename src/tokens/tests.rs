//! The domain over the in-memory store: no sockets, no files.

use std::{sync::Arc, time::Duration};

use super::*;
use crate::{
    crypto::{Keyring, RootKey},
    model::{Actor, SecretValue, TenantId, TokenName},
    store::{AuditFilter, AuditLog, KeyringStore, TokenStore, UpdateFn, memory::MemoryStore},
};

const AGENT: &str = "spiffe://t/agent";

struct Fixture {
    store: Arc<MemoryStore>,
    domain: Domain,
    audit: Arc<AuditQueue>,
    admin: Actor,
}

async fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let root = RootKey::from_encoded(&[7; 32]).expect("root key");
    let (keyring, records) = Keyring::create(&root).expect("keyring");
    store.init_keyring(records).await.expect("init");
    let keyring = Arc::new(KeyringHandle::new(root, keyring));
    let audit = Arc::new(AuditQueue::default());
    let settings = TokenSettings {
        recent_window: Duration::from_secs(60),
        ..TokenSettings::default()
    };
    let domain = Domain::new(store.clone(), keyring, audit.clone(), settings)
        .await
        .expect("domain");
    Fixture {
        store,
        domain,
        audit,
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
    let verdict = crate::audit::verify_chain(&*f.store).await.expect("verify");
    assert_eq!(verdict, crate::audit::AuditVerdict::Intact { records: 2 });
    assert_eq!(
        f.store.chain_head().await.expect("head").map(|h| h.0),
        Some(2)
    );
}
