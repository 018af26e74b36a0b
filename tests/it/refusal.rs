//! Helpers that assert why a request was refused: the handshake failure
//! the server counted, the gRPC code with its ErrorInfo reason, the audit
//! record, and the policy reloads counted.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use aitokens::{api::pb::ListAuditEventsRequest, telemetry::Telemetry};
use tonic::{Code, Status};

use crate::common::TestServer;

/// The TLS handshake failures `telemetry` counted on `listener`, by reason.
pub fn handshake_failures(telemetry: &Telemetry, listener: &str) -> BTreeMap<String, u64> {
    let text = telemetry.render();
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("aitokens_tls_handshake_failures_total{")?;
            let (labels, value) = rest.split_once("} ")?;
            let label = |key: &str| {
                labels.split(',').find_map(|pair| {
                    pair.strip_prefix(key)?
                        .strip_prefix("=\"")?
                        .strip_suffix('"')
                })
            };
            if label("listener")? != listener {
                return None;
            }
            Some((label("reason")?.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Asserts that, since `before` (from [`handshake_failures`]), exactly one
/// more handshake on `listener` failed, and for `reason`. Waits (at most
/// 10 s) for the server to count it: it counts just after the client sees
/// the failure.
pub async fn assert_handshake_failed(
    telemetry: &Telemetry,
    listener: &str,
    before: &BTreeMap<String, u64>,
    reason: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = handshake_failures(telemetry, listener);
        let moved: BTreeMap<&str, u64> = now
            .iter()
            .filter_map(|(r, n)| {
                let delta = n - before.get(r).copied().unwrap_or(0);
                (delta > 0).then_some((r.as_str(), delta))
            })
            .collect();
        if !moved.is_empty() || Instant::now() > deadline {
            assert_eq!(
                moved,
                BTreeMap::from([(reason, 1)]),
                "handshake failures counted on the {listener} listener"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `status` is `code` with `google.rpc.ErrorInfo` reason `reason`.
pub fn assert_refused_by(status: &Status, code: Code, reason: &str) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        ("aitokens", reason),
        "{status:?}"
    );
}

/// The (outcome, reason) of every audit record of `method` (the full name,
/// `aitokens.v1.Service/Method`) by `actor`, oldest first, read by the dev
/// admin across all tenants.
pub async fn audited(server: &TestServer, method: &str, actor: &str) -> Vec<(String, String)> {
    let events = server
        .admin()
        .await
        .list_audit_events(ListAuditEventsRequest {
            parent: "tenants/-".into(),
            page_size: 1000,
            method: method.into(),
            actor: actor.into(),
            ..Default::default()
        })
        .await
        .expect("list audit events")
        .into_inner()
        .events;
    events.into_iter().map(|e| (e.outcome, e.reason)).collect()
}

/// Waits (at most 15 s) until `telemetry` counted at least `at_least` policy
/// reloads with `result` (`ok`, or `error` for a rejected file); returns
/// the count.
pub async fn policy_reloads_reach(telemetry: &Telemetry, result: &str, at_least: u64) -> u64 {
    let line = format!("aitokens_policy_reloads_total{{result=\"{result}\"}} ");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = telemetry.render();
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix(&line)?.parse().ok())
            .unwrap_or(0);
        if count >= at_least {
            return count;
        }
        assert!(
            Instant::now() < deadline,
            "{at_least} policy reloads with result {result} not counted within 15 s (got {count})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
