//! The plain types every layer shares: ids and resource names, token
//! records, sealed values, usage counters, bindings, audit events, keyring
//! records, page cursors and time in the stored unit.
//!
//! This layer depends on nothing above it (only on [`crate::error`]): the
//! store, crypto, the domain and the API all speak these types, so none of
//! them has to import another to exchange data. Types here hold data and
//! check their own invariants (an id follows the id rule); the rules of the
//! product (what blocks a removal, who may resolve) live in the domain.

mod audit;
mod binding;
mod event;
mod keyring;
mod names;
mod page;
mod time;
mod token;
mod usage;

pub use audit::{Actor, AuditEvent, AuditRecord, Outcome};
pub use binding::{Binding, BindingRecord};
pub use event::{EventWindow, TokenEvent, TokenEventKind};
pub use keyring::{KdfParams, KeyringRecords};
pub use names::{
    BindingId, BindingName, ID_RULE, MAX_ID_LEN, TenantId, TokenId, TokenName, is_identity,
};
pub use page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, PageCursor, page_limit};
pub use time::{Clock, from_micros, micros, micros_ago, now};
pub use token::{SealedToken, SealedValue, SecretValue, TokenRecord, TokenUid};
pub use usage::{UsageBatch, UsageDelta, UsageStats};
