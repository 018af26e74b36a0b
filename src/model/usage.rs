//! Usage counters: who resolved which token, and when.

use super::{TokenName, TokenUid};

/// Usage counters of one (token, caller) pair. The same shape serves as a
/// pending delta and as a stored row; times are microseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageStats {
    /// First allowed resolve.
    pub first_resolve_us: Option<i64>,
    /// Last allowed resolve.
    pub last_resolve_us: Option<i64>,
    /// Allowed resolves.
    pub resolve_count: i64,
    /// Refused resolves.
    pub denied_count: i64,
    /// Last refused resolve.
    pub last_denied_us: Option<i64>,
    /// Allowed resolves of the token while it was replaced.
    pub superseded_count: i64,
    /// Last superseded resolve.
    pub last_superseded_us: Option<i64>,
}

impl UsageStats {
    /// Adds `other` to these counters: counts add, first times take the
    /// minimum and last times the maximum (so merging is order-free).
    pub fn merge(&mut self, other: &Self) {
        self.first_resolve_us = min_opt(self.first_resolve_us, other.first_resolve_us);
        self.last_resolve_us = self.last_resolve_us.max(other.last_resolve_us);
        self.resolve_count += other.resolve_count;
        self.denied_count += other.denied_count;
        self.last_denied_us = self.last_denied_us.max(other.last_denied_us);
        self.superseded_count += other.superseded_count;
        self.last_superseded_us = self.last_superseded_us.max(other.last_superseded_us);
    }

    /// Counts an allowed resolve at `now_us`; `superseded` when the token
    /// had a replacement.
    pub fn resolved(&mut self, now_us: i64, superseded: bool) {
        self.first_resolve_us = min_opt(self.first_resolve_us, Some(now_us));
        self.last_resolve_us = self.last_resolve_us.max(Some(now_us));
        self.resolve_count += 1;
        if superseded {
            self.superseded_count += 1;
            self.last_superseded_us = self.last_superseded_us.max(Some(now_us));
        }
    }

    /// Counts a refused resolve at `now_us`.
    pub fn denied(&mut self, now_us: i64) {
        self.denied_count += 1;
        self.last_denied_us = self.last_denied_us.max(Some(now_us));
    }

    /// The caller's last activity of any kind.
    pub fn last_activity_us(&self) -> Option<i64> {
        self.last_resolve_us.max(self.last_denied_us)
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The counters of one (token, caller) pair since the last batch write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDelta {
    /// The token.
    pub uid: TokenUid,
    /// Its name when the counters began (for the audit aggregate).
    pub token: TokenName,
    /// The caller's identity.
    pub caller: String,
    /// What happened.
    pub stats: UsageStats,
}

/// Pending usage taken out of memory for one batch write.
#[derive(Clone, Debug, Default)]
pub struct UsageBatch {
    /// Counters by token uid (resolves that found their token).
    pub by_uid: Vec<UsageDelta>,
    /// Refusals decided before any lookup, by the name the caller asked for.
    pub by_name: Vec<(TokenName, String, UsageStats)>,
}

impl UsageBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty() && self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_keeps_the_extreme_times() {
        let mut a = UsageStats::default();
        a.resolved(30, false);
        a.resolved(10, true);
        let mut b = UsageStats::default();
        b.resolved(20, false);
        b.denied(40);
        let mut ab = a;
        ab.merge(&b);
        let mut ba = b;
        ba.merge(&a);
        assert_eq!(ab, ba, "merging is order-free");
        assert_eq!(
            (ab.first_resolve_us, ab.last_resolve_us, ab.resolve_count),
            (Some(10), Some(30), 3)
        );
        assert_eq!((ab.superseded_count, ab.last_superseded_us), (1, Some(10)));
        assert_eq!((ab.denied_count, ab.last_activity_us()), (1, Some(40)));
    }
}
