use std::{fs, os::unix::fs::PermissionsExt};

use super::*;
use crate::{
    crypto::{Keyring, RootKey},
    model::{TokenName, TokenRecord, TokenUid, UsageBatch, UsageStats},
    store::{KeyringStore, Pending, TokenStore, UsageStore},
};

#[tokio::test]
async fn every_connection_has_the_required_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("t.db")).expect("open");
    let pragmas = |conn: &Connection| -> Result<(i64, i64)> {
        Ok((
            conn.query_row("PRAGMA secure_delete", [], |r| r.get(0))?,
            conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
        ))
    };
    let writer = store.on_writer(pragmas).await.expect("writer");
    let readers = store.readers.each(pragmas).await.expect("readers");
    assert_eq!(readers.len(), reader_count());
    for settings in std::iter::once(writer).chain(readers) {
        assert_eq!(settings, (1, 2));
    }
    let mode = fs::metadata(store.path())
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

// Long: one token's counters through several flushes, checked field by field.
#[tokio::test]
async fn flushed_usage_adds_to_what_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("t.db")).expect("open");
    let root = RootKey::create_file(&dir.path().join("k")).expect("root key");
    let (keyring, records) = Keyring::create(&root).expect("keyring");
    store.init_keyring(records).await.expect("init");
    let name = TokenName::parse("tenants/acme/tokens/t", "name").expect("name");
    let uid = TokenUid::generate().expect("uid");
    let now = crate::model::now();
    let record = TokenRecord::new(uid, name.clone(), "t".into(), now);
    let sealed = keyring.seal_value("acme", &uid, b"v").expect("seal");
    store
        .insert(record, sealed, None, Vec::new())
        .await
        .expect("insert");
    let delta = |first, last, denied: Option<i64>| UsageStats {
        first_resolve_us: first,
        last_resolve_us: last,
        resolve_count: i64::from(first.is_some()),
        denied_count: i64::from(denied.is_some()),
        last_denied_us: denied,
        superseded_count: 0,
        last_superseded_us: None,
    };
    let batch = |uid: TokenUid, stats: UsageStats| Pending {
        usage: UsageBatch {
            by_uid: vec![crate::model::UsageDelta {
                uid,
                token: TokenName::parse("tenants/acme/tokens/t", "name").expect("name"),
                caller: "spiffe://a".to_owned(),
                stats,
            }],
            by_name: Vec::new(),
        },
        events: Vec::new(),
    };
    for stats in [
        delta(None, None, Some(50)),
        delta(Some(30), Some(40), None),
        delta(Some(10), Some(20), Some(45)),
    ] {
        store.flush(batch(uid, stats)).await.expect("flush");
    }
    let stored = store.usage(&uid).await.expect("usage");
    assert_eq!(stored.len(), 1);
    let s = stored[0].1;
    assert_eq!(
        (s.first_resolve_us, s.last_resolve_us, s.resolve_count),
        (Some(10), Some(40), 2)
    );
    assert_eq!((s.denied_count, s.last_denied_us), (2, Some(50)));
    assert_eq!((s.superseded_count, s.last_superseded_us), (0, None));
    // A removed token's counters are dropped, not an error.
    let gone = TokenUid::generate().expect("uid");
    store
        .flush(batch(gone, delta(Some(1), Some(1), None)))
        .await
        .expect("flush of a removed token");
    assert!(store.usage(&gone).await.expect("usage").is_empty());
}

#[tokio::test]
async fn reopening_keeps_the_schema_version_and_read_only_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    drop(SqliteStore::open(&path).expect("open"));
    let store = SqliteStore::open(&path).expect("reopen");
    let version: i64 = store
        .on_writer(|conn| Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?))
        .await
        .expect("pragma");
    assert_eq!(version, MIGRATIONS.len() as i64);
    drop(store);

    let read_only = SqliteStore::open_read_only(&path).expect("read-only");
    assert!(read_only.keyring().await.expect("read").is_none());
    let refused = read_only
        .init_keyring(crate::model::KeyringRecords {
            deployment_id: vec![1],
            key_check: vec![2],
            current_version: 1,
            sealed_keks: Vec::new(),
            kdf: None,
            sealed_audit_key: None,
        })
        .await
        .expect_err("a read-only store refuses writes");
    assert!(refused.to_string().contains("read-only"), "{refused}");
    let missing = SqliteStore::open_read_only(&dir.path().join("none.db"));
    assert!(missing.is_err());
    assert!(!dir.path().join("none.db").exists(), "nothing was created");
}
