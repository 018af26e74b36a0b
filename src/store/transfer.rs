//! Moving a whole store to another (SQLite to PostgreSQL) row for row,
//! without decrypting anything: sealed values, the sealed keyring, usage,
//! bindings and the audit trail with its links, sequence numbers kept (so
//! page tokens, etags and the chain stay valid).

use async_trait::async_trait;

use super::{ChainLink, Checkpoint};
use crate::{
    error::Result,
    model::{BindingRecord, KeyringRecords, SealedValue, TokenUid, UsageStats},
};

/// A token row exactly as stored.
#[derive(Clone, Debug)]
pub struct RawToken {
    /// Its sequence (listing order, page tokens).
    pub seq: i64,
    /// Its internal id.
    pub uid: TokenUid,
    /// Tenant id.
    pub tenant: String,
    /// Token id.
    pub token_id: String,
    /// Display name.
    pub display_name: String,
    /// Creation time, µs.
    pub create_us: i64,
    /// Last change, µs.
    pub update_us: i64,
    /// Revision (etags).
    pub revision: i64,
    /// The sealed value.
    pub sealed: SealedValue,
    /// Kill switch.
    pub disabled: bool,
    /// The token it replaces.
    pub replaces: Option<TokenUid>,
    /// The token that replaces it.
    pub replaced_by: Option<TokenUid>,
}

/// Tokens with their usage and bindings, one page of a transfer.
#[derive(Clone, Debug, Default)]
pub struct TokenPage {
    /// The rows, in sequence order.
    pub tokens: Vec<RawToken>,
    /// Their usage counters.
    pub usage: Vec<(TokenUid, String, UsageStats)>,
    /// Their bindings.
    pub bindings: Vec<(TokenUid, BindingRecord)>,
}

/// The audit trail as stored.
#[derive(Clone, Debug, Default)]
pub struct RawTrail {
    /// Every record with its links, in order.
    pub links: Vec<ChainLink>,
    /// The head.
    pub head: Option<(i64, Vec<u8>)>,
    /// The base of a pruned trail.
    pub base: Option<Checkpoint>,
}

/// Reading and writing a store row for row.
#[async_trait]
pub trait Transfer: Send + Sync {
    /// Whether the store holds nothing at all (no keyring, token or record).
    async fn is_empty(&self) -> Result<bool>;
    /// Up to `limit` token rows after `after_seq`, with their usage and
    /// bindings.
    async fn export_tokens(&self, after_seq: i64, limit: usize) -> Result<TokenPage>;
    /// The whole audit trail.
    async fn export_trail(&self) -> Result<RawTrail>;
    /// Writes the keyring as it is.
    async fn import_keyring(&self, records: KeyringRecords) -> Result<()>;
    /// Writes a page of rows as they are (sequences kept).
    async fn import_tokens(&self, page: TokenPage) -> Result<()>;
    /// Writes the audit trail as it is (links, head and base kept).
    async fn import_trail(&self, trail: RawTrail) -> Result<()>;
}
