use super::*;

fn name(id: &str) -> TokenName {
    TokenName::parse(&format!("tenants/acme/tokens/{id}"), "name").expect("name")
}

#[test]
fn counts_merge_and_survive_a_failed_flush() {
    let tracker = UsageTracker::new();
    let uid = TokenUid::generate().expect("uid");
    let t = name("t");
    assert!(tracker.resolved(&uid, &t, "spiffe://a", 10, false));
    assert!(tracker.resolved(&uid, &t, "spiffe://a", 30, true));
    assert!(tracker.resolved(&uid, &t, "spiffe://b", 20, false));
    tracker.denied(&uid, &t, "spiffe://c", 25);
    assert_eq!(tracker.pending_pairs(), 3);
    let batch = tracker.drain();
    assert_eq!(batch.by_uid.len(), 3);
    assert!(batch.by_uid.iter().all(|d| d.token == t));
    assert_eq!(tracker.pending_pairs(), 0);
    assert!(tracker.drain().is_empty());
    tracker.restore(batch);
    assert_eq!(tracker.pending_pairs(), 3);
    assert!(tracker.resolved(&uid, &t, "spiffe://a", 5, false));
    let mut pending = tracker.pending(&uid);
    pending.sort_by(|x, y| x.0.cmp(&y.0));
    let a = pending[0].1;
    assert_eq!(
        (a.first_resolve_us, a.last_resolve_us, a.resolve_count),
        (Some(5), Some(30), 3)
    );
    assert_eq!((a.superseded_count, a.last_superseded_us), (1, Some(30)));
    assert_eq!(pending[2].1.denied_count, 1);
}

#[test]
fn memory_is_bounded_and_what_does_not_fit_is_refused_or_counted() {
    let tracker = UsageTracker::new();
    let t = name("t");
    let uids: Vec<_> = (0..MAX_PENDING_PAIRS)
        .map(|_| TokenUid::generate().expect("uid"))
        .collect();
    for uid in &uids {
        assert!(tracker.resolved(uid, &t, "spiffe://a", 1, false));
    }
    let one_more = TokenUid::generate().expect("uid");
    assert!(
        !tracker.resolved(&one_more, &t, "spiffe://a", 2, false),
        "a pair past the bound cannot be accounted"
    );
    assert!(
        tracker.resolved(&uids[0], &t, "spiffe://a", 3, false),
        "a known pair still counts"
    );
    tracker.denied(&one_more, &t, "spiffe://a", 4);
    assert_eq!(tracker.dropped(), 1);
    for i in 0..MAX_DENIED_BY_NAME + 5 {
        tracker.denied_by_name(&name(&format!("n{i}")), "spiffe://a", 5);
    }
    assert_eq!(tracker.dropped(), 6);
    assert_eq!(tracker.drain().by_name.len(), MAX_DENIED_BY_NAME);
}
