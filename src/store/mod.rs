//! Persistence behind a narrow trait.
//!
//! [`TokenStore`] is what the domain needs and nothing more; SQLite
//! ([`SqliteStore`]) is the embedded implementation, and a PostgreSQL one can
//! sit behind the same trait later. Every method blocks: callers run them on
//! the blocking pool. Values reach the store only sealed. Every mutation
//! writes its audit events in the same transaction (fail closed).

mod schema;
mod sqlite;

use std::time::SystemTime;

pub use sqlite::{AuditVerdict, SqliteStore, backup_file, verify_audit_file};

use crate::{
    audit::{AuditEvent, AuditRecord},
    crypto::{KeyringRecords, SealedValue, TokenUid},
    error::Result,
    tokens::{BindingId, TenantId, TokenId, TokenName, TokenRecord, UsageBatch, UsageStats},
};

/// Decides, inside the store's write transaction, what a row becomes and
/// which audit events record it.
pub type UpdateFn<'a> = dyn FnMut(&TokenRecord) -> Result<(TokenRecord, Vec<AuditEvent>)> + 'a;
/// Decides, inside the store's write transaction, whether a row may go
/// (given what still uses it) and which audit events record its removal.
pub type RemoveFn<'a> = dyn FnMut(&TokenRecord, &RemovalContext) -> Result<Vec<AuditEvent>> + 'a;

/// Re-wraps one data key: given the row's tenant, uid, KEK version and
/// wrapped key, returns the key wrapped under the current KEK.
pub type RewrapFn<'a> = dyn FnMut(&str, &TokenUid, u32, &[u8]) -> Result<Vec<u8>> + 'a;

/// What one re-wrap batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RewrapBatch {
    /// Rows looked at (0: nothing left after the cursor).
    pub scanned: usize,
    /// Rows moved to the current KEK.
    pub moved: usize,
    /// Sequence of the last row looked at.
    pub last_seq: i64,
    /// Rows whose data key did not open, by sequence and name.
    pub damaged: Vec<(i64, String)>,
}

/// What the resolve path needs of a token: no more than one indexed read.
#[derive(Debug)]
pub struct SealedToken {
    /// The token's internal id.
    pub uid: TokenUid,
    /// Kill switch.
    pub disabled: bool,
    /// Whether another token replaces this one.
    pub replaced: bool,
    /// The sealed value.
    pub sealed: SealedValue,
    /// The certificate identities its bindings name (bindings-only mode
    /// resolves only for these); empty where the caller did not ask.
    pub bound_identities: Vec<String>,
}

/// A declared use of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingRecord {
    /// The consumer's stable id.
    pub binding_id: BindingId,
    /// The certificate identity the consumer resolves with, if declared.
    pub caller_identity: Option<String>,
    /// What the consumer uses the token for.
    pub purpose: String,
    /// When it was declared.
    pub create_time: SystemTime,
}

/// What still refers to a token that is about to be removed.
#[derive(Debug, Default)]
pub struct RemovalContext {
    /// Its bindings.
    pub bindings: Vec<BindingRecord>,
    /// Its stored usage, per caller.
    pub usage: Vec<(String, UsageStats)>,
}

/// Which audit events to list.
#[derive(Debug, Default)]
pub struct AuditFilter {
    /// Only this tenant's events; `None` for all.
    pub tenant: Option<TenantId>,
    /// Only events about this resource.
    pub resource: Option<String>,
    /// Only events by this actor.
    pub actor: Option<String>,
    /// Only this method.
    pub method: Option<String>,
    /// Only events at or after this time (µs since the epoch).
    pub start_us: Option<i64>,
    /// Only events before this time (µs since the epoch).
    pub end_us: Option<i64>,
}

/// What the domain needs from persistence.
pub trait TokenStore: Send + Sync + 'static {
    /// The sealed keyring, or `None` for a database that has none yet.
    fn keyring(&self) -> Result<Option<KeyringRecords>>;
    /// Stores the keyring of a new database. Fails if one exists.
    fn init_keyring(&self, records: &KeyringRecords) -> Result<()>;

    /// Inserts a new token (and links it to the token it `replaces`).
    /// `AlreadyExists` if its id is taken. Returns the stored record.
    fn insert(
        &self,
        record: TokenRecord,
        sealed: &SealedValue,
        replaces: Option<&TokenId>,
        events: &[AuditEvent],
    ) -> Result<TokenRecord>;
    /// A token's metadata, with its stored usage summary.
    fn get(&self, name: &TokenName) -> Result<Option<TokenRecord>>;
    /// What resolving a token needs, bound identities included.
    fn get_sealed(&self, name: &TokenName) -> Result<Option<SealedToken>>;
    /// A counter that moves whenever what [`TokenStore::get_sealed`] returns
    /// may have changed, whoever changed it (this process or another).
    fn change_generation(&self) -> Result<i64>;
    /// Up to `limit` tokens of `tenant` with a sequence above `after_seq`, in
    /// order; with `unused_since_us`, only those not resolved since then.
    fn list(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: usize,
        unused_since_us: Option<i64>,
    ) -> Result<Vec<TokenRecord>>;
    /// Replaces a token's metadata with what `change` makes of it, atomically.
    fn update(&self, name: &TokenName, change: &mut UpdateFn<'_>) -> Result<TokenRecord>;
    /// Deletes a token (and its bindings and usage) if `decide` allows it,
    /// atomically, then erases it from the write-ahead log.
    fn delete(&self, name: &TokenName, decide: &mut RemoveFn<'_>) -> Result<()>;

    /// Stored usage of a token, per caller.
    fn usage(&self, uid: &TokenUid) -> Result<Vec<(String, UsageStats)>>;
    /// Writes a batch of usage counters and queued audit events in one
    /// transaction. Counters of tokens removed meanwhile are dropped.
    fn flush(&self, batch: &UsageBatch, events: &[AuditEvent]) -> Result<()>;

    /// Adds a binding to a token. `NotFound` / `AlreadyExists`.
    fn create_binding(
        &self,
        token: &TokenName,
        binding: &BindingRecord,
        events: &[AuditEvent],
    ) -> Result<()>;
    /// A token's bindings, oldest first. `NotFound` if the token is absent.
    fn list_bindings(&self, token: &TokenName) -> Result<Vec<BindingRecord>>;
    /// Removes a binding. `NotFound` if absent.
    fn delete_binding(
        &self,
        token: &TokenName,
        binding_id: &BindingId,
        events: &[AuditEvent],
    ) -> Result<()>;

    /// Audit records after `after_seq` matching `filter`, in order.
    fn list_audit(
        &self,
        filter: &AuditFilter,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>>;

    /// Rows per KEK version, every stored version included (0 rows too).
    fn kek_usage(&self) -> Result<Vec<(u32, i64)>>;
    /// Stores KEK `version` (sealed) and makes it current, provided the
    /// stored keyring is still `expected` (else FAILED_PRECONDITION
    /// `KEYRING_CHANGED`: another process rotated or rekeyed meanwhile).
    fn add_kek(
        &self,
        expected: &KeyringRecords,
        version: u32,
        sealed: &[u8],
        events: &[AuditEvent],
    ) -> Result<()>;
    /// Re-wraps up to `limit` data keys not under KEK `current` whose row
    /// sequence is above `after_seq`, in one transaction. A row whose key no
    /// longer opens (tampered, corrupt) is left as it is and reported; the
    /// others move on.
    fn rewrap_batch(
        &self,
        current: u32,
        after_seq: i64,
        limit: usize,
        rewrap: &mut RewrapFn<'_>,
    ) -> Result<RewrapBatch>;
    /// Deletes KEK `version`: refused while it is current or any row uses it.
    /// Then erases it from the WAL and the file (VACUUM).
    fn destroy_kek(&self, version: u32, events: &[AuditEvent]) -> Result<()>;
    /// Replaces the sealed keyring (rekey) in one transaction, provided the
    /// stored keyring is still `expected` (same check and versions).
    fn replace_keyring(
        &self,
        expected: &KeyringRecords,
        records: &KeyringRecords,
        events: &[AuditEvent],
    ) -> Result<()>;
    /// Rebuilds the file so no deleted content lingers in free pages.
    fn vacuum(&self) -> Result<()>;
    /// How many tokens the store holds, across tenants (for metrics).
    fn count(&self) -> Result<u64>;
    /// Folds the write-ahead log into the database file and truncates it
    /// (at shutdown, so the files at rest are complete and minimal).
    fn checkpoint(&self) -> Result<()>;
    /// Copies the live database to `dest` with SQLite's online backup.
    fn backup(&self, dest: &std::path::Path) -> Result<()>;
    /// Up to `limit` tokens after sequence `after_seq`, every tenant, with
    /// their sealed values and bound identities (restore checks that each
    /// one opens; the server warms its resolve cache with them).
    fn scan_sealed(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TokenName, SealedToken)>>;
}
