//! The audit trail as a component: the queue for decisions that change
//! nothing, the JSON-lines mirror, reading the trail and walking its chain.
//!
//! Every admin mutation writes its event in the same store transaction as
//! the change (the store appends it to the keyed chain, see
//! [`crate::crypto::chain`]); decisions that change nothing (reads,
//! refusals) are pushed to the [`AuditQueue`] and written in batches with
//! the usage counters, together with the aggregates that account for every
//! allowed resolve and summaries of refused handshakes. [`AuditHealth`]
//! stops values from leaving while none of that can be written;
//! [`Checkpointer`] keeps MAC'd checkpoints outside the database; and
//! [`verify_chain`] walks the chain against them. One queue is created at start-up and
//! handed to everything that records decisions: the TLS acceptor, the
//! authorization layer, the API and the flusher.
//!
//! An event never carries a value, a ciphertext or a hash of a value.

mod anchor;
mod health;
mod queue;
mod sink;
mod trail;
mod verify;

pub use anchor::{Checkpointer, checkpoint, checkpoint_line, read_anchor};
pub use health::AuditHealth;
pub use queue::{AuditQueue, MAX_HANDSHAKE_SOURCES, MAX_QUEUED_EVENTS};
pub use sink::JsonlSink;
pub use trail::AuditTrail;
pub use verify::{AuditVerdict, verify_chain};
