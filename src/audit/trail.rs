//! Reading the audit trail, a page at a time.

use std::sync::Arc;

use crate::{
    error::Result,
    model::{AuditRecord, Page, PageCursor, TenantId, page_limit},
    store::{AuditFilter, AuditLog},
};

/// Pages of the stored audit trail.
#[derive(Clone)]
pub struct AuditTrail {
    log: Arc<dyn AuditLog>,
}

impl AuditTrail {
    /// Reads from `log`.
    pub fn new(log: Arc<dyn AuditLog>) -> Self {
        Self { log }
    }

    /// One page of the trail of `tenant` (`None`: every tenant's), matching
    /// `filter`. Queued events are not in it until they are flushed.
    pub async fn page(
        &self,
        tenant: Option<TenantId>,
        mut filter: AuditFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<AuditRecord>> {
        let limit = page_limit(page_size)?;
        let scope = tenant.as_ref().map_or("-".to_owned(), |t| t.to_string());
        let after_seq = PageCursor::decode(page_token, "audit", &scope)?;
        filter.tenant = tenant;
        let rows = self.log.list_audit(&filter, after_seq, limit + 1).await?;
        Ok(Page::of(rows, limit, "audit", scope, |r| r.seq))
    }
}
