//! Persistence behind a narrow trait.
//!
//! [`TokenStore`] is what the domain needs and nothing more; SQLite
//! ([`SqliteStore`]) is the embedded implementation, and a PostgreSQL one can
//! sit behind the same trait later. Every method blocks: callers run them on
//! the blocking pool. Values reach the store only sealed.

mod schema;
mod sqlite;

pub use sqlite::SqliteStore;

use crate::{
    crypto::{KeyringRecords, SealedValue},
    error::Result,
    tokens::{TenantId, TokenName, TokenRecord},
};

/// Decides, inside the store's write transaction, what a row becomes.
pub type UpdateFn<'a> = dyn FnMut(&TokenRecord) -> Result<TokenRecord> + 'a;
/// Decides, inside the store's write transaction, whether a row may go.
pub type CheckFn<'a> = dyn FnMut(&TokenRecord) -> Result<()> + 'a;

/// What the domain needs from persistence.
pub trait TokenStore: Send + Sync + 'static {
    /// The sealed keyring, or `None` for a database that has none yet.
    fn keyring(&self) -> Result<Option<KeyringRecords>>;
    /// Stores the keyring of a new database. Fails if one exists.
    fn init_keyring(&self, records: &KeyringRecords) -> Result<()>;

    /// Inserts a new token; [`Error::AlreadyExists`](crate::Error::AlreadyExists)
    /// if its id is taken. Returns the record with its sequence assigned.
    fn insert(&self, record: TokenRecord, sealed: &SealedValue) -> Result<TokenRecord>;
    /// A token's metadata.
    fn get(&self, name: &TokenName) -> Result<Option<TokenRecord>>;
    /// A token's metadata and sealed value.
    fn get_sealed(&self, name: &TokenName) -> Result<Option<(TokenRecord, SealedValue)>>;
    /// Up to `limit` tokens of `tenant` with a sequence above `after_seq`, in order.
    fn list(&self, tenant: &TenantId, after_seq: i64, limit: usize) -> Result<Vec<TokenRecord>>;
    /// Replaces a token's metadata with what `change` makes of it, atomically.
    /// `NotFound` if absent; `AlreadyExists` if a new id is taken.
    fn update(&self, name: &TokenName, change: &mut UpdateFn<'_>) -> Result<TokenRecord>;
    /// Deletes a token if `check` allows it, atomically, then erases it from
    /// the write-ahead log.
    fn delete(&self, name: &TokenName, check: &mut CheckFn<'_>) -> Result<()>;
    /// How many tokens the store holds, across tenants (for metrics).
    fn count(&self) -> Result<u64>;
    /// Folds the write-ahead log into the database file and truncates it
    /// (at shutdown, so the files at rest are complete and minimal).
    fn checkpoint(&self) -> Result<()>;
}
