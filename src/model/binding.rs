//! Declared uses of a token.

use std::time::SystemTime;

use super::{BindingId, BindingName};

/// A declared use of a token, as stored.
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

/// A binding with its resource name, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Its resource name.
    pub name: BindingName,
    /// What is stored.
    pub record: BindingRecord,
}
