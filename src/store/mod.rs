//! Persistence behind small traits, one per consumer.
//!
//! - [`TokenStore`]: token rows (the lifecycle and the resolve path);
//! - [`BindingStore`]: declared uses of a token;
//! - [`UsageStore`]: usage counters, written in batches with queued audit
//!   events;
//! - [`AuditLog`]: reading the audit trail and walking its chain;
//! - [`KeyringStore`]: the sealed keyring and the re-wrap job's rows;
//! - [`Maintenance`]: checkpoints, compaction, backups.
//!
//! [`Store`] is all of them, for wiring. [`sqlite`] is the embedded
//! implementation; a fake in memory (`memory`, test builds and the
//! `testkit` feature) lets the domain be tested without sockets or files.
//!
//! Rules every implementation keeps: values arrive sealed and are stored as
//! they are; every mutation appends its audit events in the same
//! transaction as the change (a change that cannot be audited does not
//! happen), chained with [`crate::crypto::chain`]; decisions that must see
//! the row as it is now (an etag check, the removal guard) run inside the
//! transaction, through the closures the domain passes in.
//!
//! The traits stay in one file (about 520 lines) so that the author of a
//! backend reads the whole contract in one place.

#[cfg(any(test, feature = "testkit"))]
pub mod memory;
pub mod postgres;
pub mod sqlite;
pub mod transfer;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use postgres::{PgStore, PgTarget};
pub use sqlite::{DbLock, Hold, SqliteStore};

use crate::{
    crypto::chain::ChainKey,
    error::{Error, Result},
    model::{
        AuditEvent, AuditRecord, BindingId, BindingRecord, EventWindow, KeyringRecords,
        SealedToken, SealedValue, TenantId, TokenEvent, TokenEventKind, TokenId, TokenName,
        TokenRecord, TokenUid, UsageBatch, UsageStats, from_micros,
    },
};

/// Decides, inside the store's write transaction, what a row becomes and
/// which audit events record it.
pub type UpdateFn =
    Box<dyn FnMut(&TokenRecord) -> Result<(TokenRecord, Vec<AuditEvent>)> + Send + 'static>;
/// Decides, inside the store's write transaction, whether a row may go
/// (given what still uses it) and which audit events record its removal.
pub type RemoveFn =
    Box<dyn FnMut(&TokenRecord, &RemovalContext) -> Result<Vec<AuditEvent>> + Send + 'static>;
/// Re-wraps one data key: given the row's tenant, uid, KEK version and
/// wrapped key, returns the key wrapped under the current KEK.
pub type RewrapFn = Box<dyn FnMut(&str, &TokenUid, u32, &[u8]) -> Result<Vec<u8>> + Send + 'static>;

/// What still refers to a token that is about to be removed.
#[derive(Debug, Default)]
pub struct RemovalContext {
    /// Its bindings.
    pub bindings: Vec<BindingRecord>,
    /// Its stored usage, per caller.
    pub usage: Vec<(String, UsageStats)>,
}

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

/// Which audit events to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only this tenant's events; `None` for all.
    pub tenant: Option<TenantId>,
    /// Only events about this resource (or resources below it).
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

/// A stored audit record with the chain links it was stored with.
#[derive(Clone, Debug)]
pub struct ChainLink {
    /// The record.
    pub record: AuditRecord,
    /// The outcome exactly as stored (an edited spelling must be caught).
    pub stored_outcome: String,
    /// The hash it says precedes it.
    pub prev_hash: Vec<u8>,
    /// Its own hash.
    pub hash: Vec<u8>,
}

/// A checkpoint of the audit chain: record `seq` had link `head` at
/// `time_us`; `mac` (under the chain's checkpoint key) proves it was made by
/// a holder of the key. Written outside the database (the anchor file, the
/// JSON-lines mirror), and inside it as the base of a pruned trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The record's sequence number.
    pub seq: i64,
    /// Its link.
    pub head: Vec<u8>,
    /// When the checkpoint was made (µs since the epoch).
    pub time_us: i64,
    /// The MAC over the three.
    pub mac: Vec<u8>,
}

/// Usage counters and queued audit events to write in one transaction.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    /// Usage counters.
    pub usage: UsageBatch,
    /// Audit events of decisions that changed nothing.
    pub events: Vec<AuditEvent>,
}

impl Pending {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.usage.is_empty() && self.events.is_empty()
    }
}

/// A batch write that did not happen, with what it was to write (so that
/// nothing is lost: the caller puts it back).
#[derive(Debug)]
pub struct Unflushed {
    /// Why.
    pub error: Error,
    /// What was not written.
    pub pending: Pending,
}

/// Receives audit records once they are committed (a mirror of the trail,
/// such as a JSON-lines file for a SIEM). Called after the commit, outside
/// the transaction: a mirror that fails must not undo a change.
pub trait AuditMirror: Send + Sync {
    /// Takes newly committed records, in sequence order.
    fn committed(&self, records: &[AuditRecord]);
}

/// A change committed by some process to a token or a binding, as a store
/// that can tell its clients publishes it (PostgreSQL's NOTIFY).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChange {
    /// The change generation moved to `generation`; `token` is a name it
    /// touched (none: only the generation is known).
    Changed {
        /// The new generation.
        generation: i64,
        /// A token the change touched.
        token: Option<TokenName>,
    },
    /// Changes may have been missed: drop everything derived from the store.
    Resync,
}

/// Token rows.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Inserts a new token (and links it to the token it `replaces`).
    /// `AlreadyExists` if its id is taken. Returns the stored record.
    async fn insert(
        &self,
        record: TokenRecord,
        sealed: SealedValue,
        replaces: Option<TokenId>,
        events: Vec<AuditEvent>,
    ) -> Result<TokenRecord>;
    /// A token's metadata, with its stored usage summary.
    async fn get(&self, name: &TokenName) -> Result<Option<TokenRecord>>;
    /// What resolving a token needs, bound identities included, from one
    /// snapshot.
    async fn get_sealed(&self, name: &TokenName) -> Result<Option<SealedToken>>;
    /// Up to `limit` tokens of `tenant` with a sequence above `after_seq`, in
    /// order; with `unused_since_us`, only those created before then and
    /// not resolved since then.
    async fn list(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: usize,
        unused_since_us: Option<i64>,
    ) -> Result<Vec<TokenRecord>>;
    /// Replaces a token's metadata with what `change` makes of it,
    /// atomically. Returns the stored record.
    async fn update(&self, name: &TokenName, change: UpdateFn) -> Result<TokenRecord>;
    /// Deletes a token (and its bindings and usage) if `decide` allows it,
    /// atomically, then erases it from the write-ahead log. Returns the
    /// record as it was.
    async fn delete(&self, name: &TokenName, decide: RemoveFn) -> Result<TokenRecord>;
    /// A counter that moves whenever what [`TokenStore::get_sealed`] returns
    /// may have changed, whoever changed it (this process or another).
    async fn change_generation(&self) -> Result<i64>;
    /// Up to `limit` tokens after sequence `after_seq`, every tenant, with
    /// their sealed values and bound identities (for warming the resolve
    /// cache and for checking that every value opens).
    async fn scan_sealed(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TokenName, SealedToken)>>;
    /// How many tokens the store holds, across tenants.
    async fn count(&self) -> Result<u64>;
    /// The tenants that hold at least one token, in order.
    async fn tenants(&self) -> Result<Vec<TenantId>>;
    /// Changes as they are committed, by this process or any other, when
    /// the store can tell (PostgreSQL); `None` when only
    /// [`TokenStore::change_generation`] can.
    fn subscribe_changes(&self) -> Option<broadcast::Receiver<StoreChange>> {
        None
    }
    /// Up to `limit` recorded token events after sequence `after_seq`, in
    /// sequence order (which is commit order). A store that records none
    /// (the fake in memory) returns none.
    async fn events_after(&self, after_seq: i64, limit: usize) -> Result<Vec<TokenEvent>> {
        let _ = (after_seq, limit);
        Ok(Vec::new())
    }
    /// Where the recorded events stand: the last sequence written and the
    /// last one pruned.
    async fn event_window(&self) -> Result<EventWindow> {
        Ok(EventWindow::default())
    }
    /// Deletes the events that are not among the newest `keep`, and those
    /// committed before `older_than_us` (µs since the epoch), moving the
    /// window's floor past them. Returns the window afterwards.
    async fn prune_events(&self, keep: u64, older_than_us: i64) -> Result<EventWindow> {
        let _ = (keep, older_than_us);
        Ok(EventWindow::default())
    }
}

/// Declared uses of tokens.
#[async_trait]
pub trait BindingStore: Send + Sync + 'static {
    /// Adds a binding to a token. `NotFound` / `AlreadyExists`.
    async fn create_binding(
        &self,
        token: &TokenName,
        binding: BindingRecord,
        events: Vec<AuditEvent>,
    ) -> Result<()>;
    /// A token's bindings, oldest first. `NotFound` if the token is absent.
    async fn list_bindings(&self, token: &TokenName) -> Result<Vec<BindingRecord>>;
    /// Removes a binding. `NotFound` if absent.
    async fn delete_binding(
        &self,
        token: &TokenName,
        binding_id: &BindingId,
        events: Vec<AuditEvent>,
    ) -> Result<()>;
}

/// Usage counters.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Stored usage of a token, per caller.
    async fn usage(&self, uid: &TokenUid) -> Result<Vec<(String, UsageStats)>>;
    /// Adds a batch of usage counters to the stored ones and appends queued
    /// audit events, in one transaction. Counters of tokens removed
    /// meanwhile are dropped. On failure, hands the batch back.
    async fn flush(&self, pending: Pending) -> std::result::Result<(), Unflushed>;
}

/// The audit trail: keyed appends (every write of every trait appends its
/// events), reading, verifying and pruning.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Links every record appended from now on under `key`. Until a key is
    /// set, every write that carries audit events fails (nothing unaudited
    /// happens).
    fn use_chain_key(&self, key: Arc<ChainKey>);
    /// Records after `after_seq` matching `filter`, in order.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>>;
    /// Up to `limit` records after `after_seq` with their stored links, in
    /// order, for verifying the chain.
    async fn chain_links(&self, after_seq: i64, limit: usize) -> Result<Vec<ChainLink>>;
    /// The recorded head of the chain (last sequence and hash), if any
    /// record was ever written.
    async fn chain_head(&self) -> Result<Option<(i64, Vec<u8>)>>;
    /// Where the chain starts, once a prune removed older records.
    async fn chain_base(&self) -> Result<Option<Checkpoint>>;
    /// Re-links a trail written before chains were keyed under the key set
    /// with [`AuditLog::use_chain_key`], after checking every old link, in
    /// one transaction. Returns how many records it re-linked (0 when the
    /// chain is keyed already); refuses a trail that does not verify.
    async fn relink(&self) -> Result<i64>;
    /// Deletes the records up to and including `base.seq` (whose link
    /// `base.head` must be) and keeps `base` as where the chain starts.
    /// Returns how many records it deleted.
    async fn prune(&self, base: Checkpoint) -> Result<usize>;
}

/// The sealed keyring.
#[async_trait]
pub trait KeyringStore: Send + Sync + 'static {
    /// The sealed keyring, or `None` for a database that has none yet.
    async fn keyring(&self) -> Result<Option<KeyringRecords>>;
    /// Stores the keyring of a new database. Fails if one exists.
    async fn init_keyring(&self, records: KeyringRecords) -> Result<()>;
    /// Rows per KEK version, every stored version included (0 rows too).
    async fn kek_usage(&self) -> Result<Vec<(u32, i64)>>;
    /// Stores KEK `version` (sealed) and makes it current, provided the
    /// stored keyring is still `expected` (else FAILED_PRECONDITION
    /// `KEYRING_CHANGED`: another process rotated or rekeyed meanwhile).
    async fn add_kek(
        &self,
        expected: KeyringRecords,
        version: u32,
        sealed: Vec<u8>,
        events: Vec<AuditEvent>,
    ) -> Result<()>;
    /// Re-wraps up to `limit` data keys not under KEK `current` whose row
    /// sequence is above `after_seq`, in one transaction. A row whose key no
    /// longer opens (tampered, corrupt) is left as it is and reported; the
    /// others move on.
    async fn rewrap_batch(
        &self,
        current: u32,
        after_seq: i64,
        limit: usize,
        rewrap: RewrapFn,
    ) -> Result<RewrapBatch>;
    /// Deletes KEK `version`: refused while it is current or any row uses
    /// it. Then erases it from the journal and the file.
    async fn destroy_kek(&self, version: u32, events: Vec<AuditEvent>) -> Result<()>;
    /// Stores the audit key of a keyring made before chains were keyed,
    /// provided the stored keyring is still `expected` and has none.
    async fn add_audit_key(&self, expected: KeyringRecords, sealed: Vec<u8>) -> Result<()>;
    /// Replaces the sealed keyring (rekey) in one transaction, provided the
    /// stored keyring is still `expected` (same check and versions).
    async fn replace_keyring(
        &self,
        expected: KeyringRecords,
        records: KeyringRecords,
        events: Vec<AuditEvent>,
    ) -> Result<()>;
}

/// Upkeep of the files at rest.
#[async_trait]
pub trait Maintenance: Send + Sync + 'static {
    /// Folds the write-ahead log into the database and truncates it (at
    /// shutdown, so the files at rest are complete and minimal).
    async fn checkpoint(&self) -> Result<()>;
    /// Rebuilds the database so no deleted content lingers in free pages.
    async fn vacuum(&self) -> Result<()>;
    /// Copies the live database to `dest` (a new file), consistently.
    async fn backup(&self, dest: &Path) -> Result<()>;
    /// The lease of `job` (such as the re-wrap job), which one process at a
    /// time holds until it drops the lease or dies; `None` while another
    /// holds it.
    async fn lease(&self, job: &'static str) -> Result<Option<Lease>>;
}

/// What keeps a [`Lease`] (a database session holding a lock).
pub trait LeaseHold: Send + Sync {
    /// Whether the hold is gone (the session ended: another process may
    /// hold the job now).
    fn lost(&self) -> bool;
}

/// A job held by this process until dropped (see [`Maintenance::lease`]).
pub struct Lease {
    held: Option<Box<dyn LeaseHold>>,
}

impl Lease {
    /// A lease that holds nothing (a store only one process writes).
    pub fn free() -> Self {
        Self { held: None }
    }

    /// A lease that lasts as long as `held`.
    pub fn holding(held: Box<dyn LeaseHold>) -> Self {
        Self { held: Some(held) }
    }

    /// Whether the lease was lost (its session ended): drop it and ask
    /// again.
    pub fn is_lost(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.lost())
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// Where a store is.
#[derive(Clone, Debug)]
pub enum StoreLocation {
    /// A SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(Box<PgTarget>),
}

impl StoreLocation {
    /// Parses `sqlite:PATH`, a bare path, or a `postgres://` URL (whose
    /// password comes from `password_file`).
    pub fn parse(spec: &str, password_file: Option<&Path>) -> Result<Self> {
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            return Ok(Self::Postgres(Box::new(PgTarget::parse(
                spec,
                password_file,
            )?)));
        }
        let path = spec.strip_prefix("sqlite:").unwrap_or(spec);
        if path.is_empty() {
            return Err(Error::config(
                "store: name a SQLite file (sqlite:PATH) or a postgres:// URL",
            ));
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }

    /// Where, for messages (never a password).
    pub fn shown(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite:{}", path.display()),
            Self::Postgres(target) => target.shown().to_owned(),
        }
    }
}

/// Opens the store at `location` for a server or a command: SQLite is
/// created and migrated if needed; PostgreSQL must be migrated already.
pub async fn open(
    location: &StoreLocation,
    mirror: Option<Arc<dyn AuditMirror>>,
) -> Result<SharedStore> {
    match location {
        StoreLocation::Sqlite(path) => {
            let path = path.clone();
            let mut store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                .await
                .map_err(|e| Error::Internal(format!("opening the database: {e}")))??;
            if let Some(mirror) = mirror {
                store = store.with_audit_mirror(mirror);
            }
            Ok(Arc::new(store))
        }
        StoreLocation::Postgres(target) => {
            let mut store = PgStore::open(PgTarget::clone(target)).await?;
            if let Some(mirror) = mirror {
                store = store.with_audit_mirror(mirror);
            }
            Ok(Arc::new(store))
        }
    }
}

/// An event row as the domain sees it; a row that breaks the id rules was
/// written behind our back: data loss.
pub(crate) fn decode_event(
    seq: i64,
    time_us: i64,
    tenant: &str,
    kind: &str,
    token_id: &str,
    other_id: Option<&str>,
) -> Result<TokenEvent> {
    let tenant = TenantId::new(tenant, "tenant").map_err(|_| Error::DataLoss)?;
    let name = |id: &str| {
        Ok::<_, Error>(TokenName {
            tenant: tenant.clone(),
            token_id: TokenId::new(id, "token_id").map_err(|_| Error::DataLoss)?,
        })
    };
    Ok(TokenEvent {
        seq,
        time: from_micros(time_us),
        kind: TokenEventKind::parse(kind).ok_or(Error::DataLoss)?,
        name: name(token_id)?,
        other: other_id.map(name).transpose()?,
    })
}

/// Everything a server needs of its store.
pub trait Store:
    TokenStore + BindingStore + UsageStore + AuditLog + KeyringStore + Maintenance
{
}

impl<T> Store for T where
    T: TokenStore + BindingStore + UsageStore + AuditLog + KeyringStore + Maintenance
{
}

/// A shared handle on a store.
pub type SharedStore = Arc<dyn Store>;
