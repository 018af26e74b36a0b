use std::time::Duration;

use super::*;
use crate::model::{BindingId, TokenUid, now};

fn name(id: &str) -> TokenName {
    TokenName::parse(&format!("tenants/acme/tokens/{id}"), "name").expect("name")
}

fn record(id: &str, replaced_by: Option<&str>) -> TokenRecord {
    TokenRecord {
        uid: TokenUid::from_slice(&[0xab; 16]).expect("uid"),
        seq: 1,
        name: name(id),
        display_name: id.into(),
        create_time: now(),
        update_time: now(),
        revision: 3,
        disabled: false,
        replaces: None,
        replaced_by: replaced_by.map(|r| TokenId::new(r, "t").expect("id")),
        last_resolve: None,
        resolve_count: 0,
    }
}

fn binding(id: &str) -> BindingRecord {
    BindingRecord {
        binding_id: BindingId::new(id, "b").expect("id"),
        caller_identity: None,
        purpose: "billing agent".into(),
        create_time: now(),
    }
}

fn resolved_at(us: i64) -> UsageStats {
    let mut stats = UsageStats::default();
    stats.resolved(us, false);
    stats
}

#[test]
fn an_unused_token_goes_without_force() {
    let blockers = removal_blockers(
        &name("a"),
        &InUse {
            bindings: &[],
            callers: &[],
        },
        0,
        0,
    );
    assert!(blockers.is_empty());
    assert_eq!(decide_removal(blockers, false).expect("allowed"), "removed");
}

#[test]
fn bindings_and_recent_callers_block_a_removal_and_force_overrides() {
    let now_us = 1_000_000_000;
    let callers = vec![
        (
            "spiffe://x/recent".to_owned(),
            resolved_at(now_us - 5_000_000),
        ),
        (
            "spiffe://x/old".to_owned(),
            resolved_at(now_us - 90_000_000),
        ),
        ("spiffe://x/denied-only".to_owned(), {
            let mut s = UsageStats::default();
            s.denied(now_us);
            s
        }),
    ];
    let bindings = [binding("billing")];
    let in_use = InUse {
        bindings: &bindings,
        callers: &callers,
    };
    let blockers = removal_blockers(&name("a"), &in_use, now_us - 60_000_000, now_us);
    let kinds: Vec<_> = blockers
        .iter()
        .map(|v| (v.kind, v.subject.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("BINDING", "tenants/acme/tokens/a/bindings/billing"),
            ("RECENT_CALLER", "spiffe://x/recent"),
        ]
    );
    assert_eq!(blockers[0].description, "declared use: billing agent");
    assert_eq!(blockers[1].description, "resolved the token 5 s ago");
    match decide_removal(blockers.clone(), false) {
        Err(Error::FailedPrecondition {
            reason: "TOKEN_IN_USE",
            violations,
            ..
        }) => assert_eq!(violations, blockers),
        other => panic!("expected TOKEN_IN_USE, got {other:?}"),
    }
    assert_eq!(
        decide_removal(blockers, true).expect("forced"),
        "removed with force despite 2 blocker(s)"
    );
}

#[test]
fn a_replaced_token_is_ready_once_nobody_resolves_it_as_superseded() {
    let window = Duration::from_secs(60);
    let mut superseded = UsageStats::default();
    superseded.resolved(100, true);
    let mut lately = UsageStats::default();
    lately.resolved(5_000, true);
    let callers = vec![
        ("spiffe://x/a".to_owned(), superseded),
        ("spiffe://x/b".to_owned(), lately),
    ];
    let status = replacement_status(&record("old", Some("new")), callers.clone(), window, 1_000);
    assert!(!status.ready_to_remove);
    assert_eq!(status.callers_not_switched, ["spiffe://x/b"]);
    assert_eq!(status.replaced_by, Some(name("new")));
    assert_eq!(status.last_superseded, Some(from_micros(5_000)));
    let later = replacement_status(&record("old", Some("new")), callers.clone(), window, 6_000);
    assert!(later.ready_to_remove && later.callers_not_switched.is_empty());
    // Without a replacement a token is never "ready".
    let alone = replacement_status(&record("old", None), callers, window, 6_000);
    assert!(!alone.ready_to_remove);
}

#[test]
fn usage_merges_stored_and_pending_most_recent_first() {
    let stored = vec![("spiffe://x/a".to_owned(), resolved_at(10))];
    let pending = vec![
        ("spiffe://x/a".to_owned(), resolved_at(30)),
        ("spiffe://x/b".to_owned(), resolved_at(20)),
    ];
    let merged = merged_usage(&stored, pending);
    assert_eq!(merged[0].0, "spiffe://x/a");
    assert_eq!(merged[0].1.resolve_count, 2);
    assert_eq!(merged[0].1.first_resolve_us, Some(10));
    assert_eq!(merged[1].0, "spiffe://x/b");
}

#[test]
fn etags_values_names_and_identities() {
    let current = record("a", None);
    assert!(check_etag(&current, None).is_ok());
    assert!(check_etag(&current, Some(&current.etag())).is_ok());
    assert!(matches!(
        check_etag(&current, Some("0-0")),
        Err(Error::Aborted)
    ));

    let value = |n: usize| SecretValue::new("v".repeat(n));
    assert!(validate_new_token("a", "A", &value(1)).is_ok());
    assert!(validate_new_token("a", "A", &value(MAX_VALUE_BYTES)).is_ok());
    for (id, display, len, field) in [
        ("A", "A", 1, "token_id"),
        ("a", "", 1, "token.display_name"),
        ("a", &"x".repeat(257), 1, "token.display_name"),
        ("a", "A", 0, "value"),
        ("a", "A", MAX_VALUE_BYTES + 1, "value"),
    ] {
        match validate_new_token(id, display, &value(len)) {
            Err(Error::InvalidArgument { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
}
