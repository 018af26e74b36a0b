//! Changes a cache of resolved values must know about, as the store records
//! them (the `token_events` table, written in the same transaction as the
//! change).

use std::time::SystemTime;

use super::TokenName;

/// What happened to a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenEventKind {
    /// The kill switch was turned on.
    Disabled,
    /// The kill switch was turned off.
    Enabled,
    /// The token was removed.
    Removed,
    /// The token's id changed (see [`TokenEvent::other`]: the new name).
    Renamed,
    /// Another token replaces it ([`TokenEvent::other`]: the replacement).
    Replaced,
}

impl TokenEventKind {
    /// The spelling stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "DISABLED",
            Self::Enabled => "ENABLED",
            Self::Removed => "REMOVED",
            Self::Renamed => "RENAMED",
            Self::Replaced => "REPLACED",
        }
    }

    /// The kind stored as `text`, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Disabled,
            Self::Enabled,
            Self::Removed,
            Self::Renamed,
            Self::Replaced,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// One recorded change, with its place in the store's sequence of events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEvent {
    /// Its sequence: strictly increasing in commit order.
    pub seq: i64,
    /// When it was committed.
    pub time: SystemTime,
    /// What happened.
    pub kind: TokenEventKind,
    /// The token it happened to (for a rename: its old name).
    pub name: TokenName,
    /// For a rename, the new name; for a replacement, the replacement's name.
    pub other: Option<TokenName>,
}

/// Where a store's event sequence stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventWindow {
    /// Every event up to this sequence was pruned: a client that saw only
    /// events before it must resync.
    pub floor: i64,
    /// The last sequence written (0: none yet).
    pub head: i64,
}
