//! Where a token is used, read back: usage per caller (stored and pending)
//! and whether a replaced token can go.

use std::{sync::Arc, time::Duration};

use super::{FlushGate, UsageTracker};
use crate::{
    error::{Error, Result},
    model::{TokenName, UsageStats, micros_ago},
    store::{TokenStore, UsageStore},
    tokens::rules::{self, ReplacementStatus},
};

/// Usage reports over the store and the tracker.
#[derive(Clone)]
pub struct UsageReports {
    tokens: Arc<dyn TokenStore>,
    stored: Arc<dyn UsageStore>,
    usage: Arc<UsageTracker>,
    gate: FlushGate,
    recent_window: Duration,
}

impl UsageReports {
    /// Reports over `tokens` and `stored` plus what `usage` holds; a resolve
    /// within `recent_window` counts as recent.
    pub fn new(
        tokens: Arc<dyn TokenStore>,
        stored: Arc<dyn UsageStore>,
        usage: Arc<UsageTracker>,
        gate: FlushGate,
        recent_window: Duration,
    ) -> Self {
        Self {
            tokens,
            stored,
            usage,
            gate,
            recent_window,
        }
    }

    /// Usage of a token per caller identity, stored and pending, most
    /// recently active first.
    pub async fn usages(&self, name: &TokenName) -> Result<Vec<(String, UsageStats)>> {
        let _no_flush = self.gate.hold().await;
        let record = self
            .tokens
            .get(name)
            .await?
            .ok_or(Error::NotFound("token"))?;
        let stored = self.stored.usage(&record.uid).await?;
        Ok(rules::merged_usage(
            &stored,
            self.usage.pending(&record.uid),
        ))
    }

    /// Whether a replaced token can be removed.
    pub async fn replacement_status(&self, name: &TokenName) -> Result<ReplacementStatus> {
        let record = self
            .tokens
            .get(name)
            .await?
            .ok_or(Error::NotFound("token"))?;
        let callers = self.usages(name).await?;
        Ok(rules::replacement_status(
            &record,
            callers,
            self.recent_window,
            micros_ago(self.recent_window),
        ))
    }
}
