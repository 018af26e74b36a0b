use super::*;
use crate::model::SealedValue;

fn name(id: &str) -> TokenName {
    TokenName::parse(&format!("tenants/acme/tokens/{id}"), "name").expect("name")
}

fn row_of(id: &str, byte: u8, len: usize) -> CachedRow {
    CachedRow::new(
        &name(id),
        &SealedToken {
            uid: TokenUid::from_slice(&[byte; 16]).expect("uid"),
            disabled: false,
            replaced: false,
            sealed: SealedValue {
                kek_version: 1,
                wrapped_data_key: vec![byte; 72],
                value_ciphertext: vec![byte.wrapping_add(1); len],
            },
            bound_identities: vec!["spiffe://x/agent".into(), "dns:agent.x".into()],
        },
    )
}

#[test]
fn a_row_keeps_its_fields_apart_and_shows_no_bytes() {
    let row = row_of("a", 7, 40);
    assert_eq!(row.key(), b"acme/a");
    assert_eq!((row.uid().as_bytes()[0], row.kek_version()), (7, 1));
    assert!(!row.disabled() && !row.replaced());
    assert_eq!(row.wrapped_data_key(), &[7; 72][..]);
    assert_eq!(row.value_ciphertext(), &[8; 40][..]);
    assert!(row.binds("spiffe://x/agent") && row.binds("dns:agent.x"));
    assert!(!row.binds("spiffe://x/other") && !row.binds("spiffe://x/agen"));
    let debug = format!("{row:?}");
    assert!(debug.starts_with("CachedRow {"), "{debug}");
    assert!(
        !debug.contains("7, 7") && !debug.contains("8, 8"),
        "{debug}"
    );
}

#[test]
fn a_read_that_raced_an_invalidation_is_not_cached() {
    let cache = SealedCache::new(1 << 20);
    let before = cache.epoch();
    // A change commits and invalidates while the read is in flight...
    cache.invalidate(&name("a"));
    // ... so the row that read saw must not land.
    cache.insert(before, row_of("a", 1, 40));
    assert!(cache.get(&name("a")).is_none());
    // A read that starts after the change is cached.
    cache.insert(cache.epoch(), row_of("a", 2, 40));
    assert_eq!(
        cache.get(&name("a")).expect("cached").uid().as_bytes()[0],
        2
    );
    cache.invalidate(&name("a"));
    assert!(cache.get(&name("a")).is_none());
    assert_eq!(cache.size(), (0, 0));
}

#[test]
fn clear_and_evict_drop_rows_and_stale_reads() {
    let cache = SealedCache::new(1 << 20);
    let stale = cache.epoch();
    cache.insert(stale, row_of("a", 1, 40));
    cache.insert(stale, row_of("b", 2, 40));
    cache.clear();
    assert!(cache.get(&name("a")).is_none() && cache.get(&name("b")).is_none());
    cache.insert(stale, row_of("a", 1, 40));
    assert!(cache.get(&name("a")).is_none(), "a pre-clear read landed");

    let now = cache.epoch();
    let first = row_of("a", 1, 40);
    cache.insert(now, first.clone());
    cache.insert(now, row_of("a", 3, 40));
    // Evicting the row that failed leaves a newer one alone.
    cache.evict(&name("a"), &first);
    assert_eq!(cache.get(&name("a")).expect("newer").uid().as_bytes()[0], 3);
    let newer = cache.get(&name("a")).expect("newer");
    cache.evict(&name("a"), &newer);
    assert!(cache.get(&name("a")).is_none());
    assert_eq!(cache.size(), (0, 0));
}

#[test]
fn stays_within_its_byte_budget_and_can_be_off() {
    let budget = 256 * 1024;
    let cache = SealedCache::new(budget);
    let mut fitted = 0;
    for i in 0..10_000 {
        let row = row_of(&format!("t{i}"), 1, 100);
        fitted += usize::from(cache.insert_if_room(cache.epoch(), row));
    }
    let (rows, bytes) = cache.size();
    assert_eq!(rows, fitted, "filling ahead of demand evicts nothing");
    assert!(bytes <= budget, "{bytes} bytes over a budget of {budget}");
    assert!(rows > 500, "only {rows} rows cached");
    for i in 0..10_000 {
        cache.insert(cache.epoch(), row_of(&format!("u{i}"), 1, 100));
    }
    let (rows, bytes) = cache.size();
    assert!(bytes <= budget, "{bytes} bytes over a budget of {budget}");
    assert!(rows > 100, "only {rows} rows cached");
    // A row larger than a shard's share is never cached.
    cache.insert(cache.epoch(), row_of("big", 1, budget));
    assert!(cache.get(&name("big")).is_none());

    let off = SealedCache::new(0);
    off.insert(off.epoch(), row_of("a", 1, 40));
    assert!(off.get(&name("a")).is_none());
    assert_eq!(off.size(), (0, 0));
}
