//! The PostgreSQL store against a real server (a scratch database each):
//! two stores over one database stand for two replicas.

use std::{sync::Arc, time::Duration};

use super::{PgStore, scratch::ScratchDatabase};
use crate::{
    crypto::{Keyring, RootKey, chain::ChainKey},
    error::Error,
    model::{
        Actor, Outcome, TokenName, TokenRecord, TokenUid, UsageBatch, UsageDelta, UsageStats, now,
    },
    store::{AuditLog, KeyringStore, Maintenance, Pending, StoreChange, TokenStore, UsageStore},
};

struct Replicas {
    _db: ScratchDatabase,
    a: Arc<PgStore>,
    b: Arc<PgStore>,
    keyring: Arc<Keyring>,
    chain: Arc<ChainKey>,
    _dir: tempfile::TempDir,
}

async fn replicas() -> Replicas {
    let db = ScratchDatabase::create().await.expect("scratch database");
    let a = Arc::new(db.open().await.expect("open a"));
    let b = Arc::new(db.open().await.expect("open b"));
    let dir = tempfile::tempdir().expect("tempdir");
    let root = RootKey::create_file(&dir.path().join("k")).expect("root key");
    let (keyring, records) = Keyring::create(&root).expect("keyring");
    a.init_keyring(records).await.expect("init keyring");
    let chain = Arc::new(ChainKey::from_secret_for_tests([7; 32]));
    a.use_chain_key(chain.clone());
    b.use_chain_key(chain.clone());
    Replicas {
        _db: db,
        a,
        b,
        keyring: Arc::new(keyring),
        chain,
        _dir: dir,
    }
}

fn actor() -> Actor {
    Actor {
        identity: "spiffe://test/admin".into(),
        peer: "127.0.0.1:1".into(),
        method: "aitokens.v1.TokenAdmin/CreateToken",
    }
}

async fn create(store: &PgStore, keyring: &Keyring, id: &str) -> crate::Result<TokenRecord> {
    let name = TokenName::parse(&format!("tenants/acme/tokens/{id}"), "name").expect("name");
    let uid = TokenUid::generate().expect("uid");
    let sealed = keyring
        .seal_value("acme", &uid, id.as_bytes())
        .expect("seal");
    let event = actor().event(Some("acme"), name.to_string(), Outcome::Allowed, "created");
    let record = TokenRecord::new(uid, name, id.into(), now());
    store.insert(record, sealed, None, vec![event]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_writing_at_once_never_fork_the_chain_and_usage_adds_up() {
    let r = replicas().await;
    let writers: Vec<_> = (0..80)
        .map(|i| {
            let store = if i % 2 == 0 { r.a.clone() } else { r.b.clone() };
            let keyring = r.keyring.clone();
            tokio::spawn(async move { create(&store, &keyring, &format!("t{i}")).await })
        })
        .collect();
    for writer in writers {
        writer.await.expect("task").expect("create");
    }
    // The same name from the other replica: taken.
    let taken = create(&r.b, &r.keyring, "t0").await.expect_err("duplicate");
    assert!(matches!(taken, Error::AlreadyExists(_)), "{taken:?}");

    let token =
        r.a.get(&TokenName::parse("tenants/acme/tokens/t1", "n").expect("name"))
            .await
            .expect("get")
            .expect("present");
    let flush = |store: Arc<PgStore>, at: i64| {
        let token = token.clone();
        async move {
            let mut stats = UsageStats::default();
            stats.resolved(at, false);
            let usage = UsageBatch {
                by_uid: vec![UsageDelta {
                    uid: token.uid,
                    token: token.name.clone(),
                    caller: "spiffe://test/agent".into(),
                    stats,
                }],
                by_name: Vec::new(),
            };
            store
                .flush(Pending {
                    usage,
                    events: Vec::new(),
                })
                .await
                .map_err(|u| u.error)
        }
    };
    let flushes: Vec<_> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 { r.a.clone() } else { r.b.clone() };
            tokio::spawn(flush(store, 1_000 + i))
        })
        .collect();
    for f in flushes {
        f.await.expect("task").expect("flush");
    }
    let usage = r.b.usage(&token.uid).await.expect("usage");
    assert_eq!(usage.len(), 1);
    let stats = &usage[0].1;
    assert_eq!(
        (
            stats.resolve_count,
            stats.first_resolve_us,
            stats.last_resolve_us
        ),
        (40, Some(1_000), Some(1_039))
    );

    let links = r.a.chain_links(0, 1_000).await.expect("links");
    assert_eq!(
        links.len(),
        80,
        "one record per create, none for the refusal"
    );
    let mut prev = crate::crypto::chain::GENESIS.to_vec();
    for (i, link) in links.iter().enumerate() {
        assert_eq!(link.record.seq, i as i64 + 1, "no gap, no duplicate");
        assert_eq!(
            link.prev_hash,
            prev,
            "record {} links to the one before",
            i + 1
        );
        let expected = r.chain.link(&prev, link.record.seq, &link.record.event);
        assert_eq!(link.hash, expected.to_vec(), "record {} hash", i + 1);
        prev = link.hash.clone();
    }
    assert_eq!(
        r.b.chain_head().await.expect("head"),
        Some((80, prev)),
        "the head row is the last link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_is_announced_to_the_other() {
    let r = replicas().await;
    let mut feed =
        r.b.subscribe_changes()
            .expect("PostgreSQL announces changes");
    let before = r.b.change_generation().await.expect("generation");
    let record = create(&r.a, &r.keyring, "announced").await.expect("create");
    // Wait until B's listener is subscribed: it says so by relaying the
    // first change it sees; creates are not changes a cache depends on, so
    // make one that is.
    let renamed = TokenName::parse("tenants/acme/tokens/renamed", "n").expect("name");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let target = renamed.clone();
    r.a.update(
        &record.name,
        Box::new(move |current| {
            let mut next = current.clone();
            next.name = target.clone();
            Ok((next, Vec::new()))
        }),
    )
    .await
    .expect("rename");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let change = tokio::time::timeout_at(deadline, feed.recv())
            .await
            .expect("announced within 5 s")
            .expect("feed open");
        if let StoreChange::Changed {
            token: Some(name), ..
        } = change
        {
            seen.push(name.to_string());
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "tenants/acme/tokens/announced".to_owned(),
            "tenants/acme/tokens/renamed".to_owned()
        ],
        "both the old and the new name are announced"
    );
    assert!(r.b.change_generation().await.expect("generation") > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_at_a_time_holds_a_lease_and_dropping_it_frees_it() {
    let r = replicas().await;
    let held = r.a.lease("rewrap").await.expect("lease").expect("free");
    assert!(
        r.b.lease("rewrap").await.expect("lease").is_none(),
        "B must not get the lease A holds"
    );
    assert!(
        r.b.lease("other-job").await.expect("lease").is_some(),
        "another job's lease is separate"
    );
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if r.b.lease("rewrap").await.expect("lease").is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease is freed within 5 s of being dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_schema_this_build_does_not_know_is_refused() {
    let db = ScratchDatabase::create().await.expect("scratch database");
    let client = db
        .target()
        .expect("target")
        .connect_one()
        .await
        .expect("connect");
    client
        .batch_execute("UPDATE aitokens_schema SET version = 99")
        .await
        .expect("bump");
    let err = db.open().await.err().expect("refused").to_string();
    assert!(
        err.contains("version 99, newer than this build knows"),
        "{err}"
    );
    client
        .batch_execute("DROP TABLE aitokens_schema")
        .await
        .expect("drop");
    let err = db.open().await.err().expect("refused").to_string();
    assert!(err.contains("run `aitokens migrate"), "{err}");
}

#[tokio::test]
async fn the_audit_table_refuses_edits_and_deletes() {
    let r = replicas().await;
    create(&r.a, &r.keyring, "t").await.expect("create");
    let client = r
        ._db
        .target()
        .expect("target")
        .connect_one()
        .await
        .expect("c");
    for sql in [
        "UPDATE audit SET reason = 'nothing happened'",
        "DELETE FROM audit",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.message(), "the audit log is append-only", "{sql}");
    }
    assert_eq!(r.a.chain_links(0, 10).await.expect("links").len(), 1);
}
