//! aitokens: a gRPC secrets service for AI tokens.
//!
//! Admin tooling stores tokens (API keys, MCP-server credentials) through the
//! public `TokenAdmin` service; agent runtimes fetch decrypted values through
//! `TokenResolver`, on a separate internal listener that requires mutual TLS.
//!
//! # Trust boundaries
//!
//! - **admin listener**: TLS with a required client certificate; the caller's
//!   certificate identity must be an admin of the tenant in the policy (or a
//!   key admin, for `KeyAdmin`). No admin method ever returns a value.
//! - **internal listener**: mTLS; the identity must be a resolver allowed for
//!   the token's tenant and id. The only way a value leaves the service.
//! - **metrics listener** (optional, plain HTTP): `/metrics`, `/healthz`,
//!   `/readyz`. It serves no token data, names, tenants or identities; bind
//!   it where only monitoring reaches it.
//! - **at rest**: values are sealed (XChaCha20-Poly1305, per-token data keys
//!   wrapped by versioned KEKs sealed under the master key) before the store
//!   sees them; the master key never enters the database.
//!
//! # Layers
//!
//! Data flows one way, and each module imports only modules below it
//! (`scripts/check-layers` checks this in CI), from the bottom up:
//!
//! 1. [`error`]: the one error type.
//! 2. [`proto`]: the generated contract and the table of RPC names.
//! 3. [`model`]: plain shared types (ids, names, records, usage, audit events).
//! 4. [`crypto`], [`pki`], [`hardening`]: sealing and opening, the audit hash
//!    chain, the keyring handle; certificates for dev and tests; process
//!    hardening.
//! 5. [`telemetry`]: metrics, health and readiness, request ids.
//! 6. [`store`]: small traits by consumer; SQLite implements them, and a fake
//!    in memory serves the domain's tests.
//! 7. [`audit`]: the queue of decisions, the JSON-lines mirror, reading the
//!    trail and walking its chain.
//! 8. the domain, [`tokens`] (lifecycle, resolve, bindings, usage, the rules
//!    as pure functions) and [`rotation`] (key rotation, re-wrap, rekey, and
//!    unlocking a keyring).
//! 9. [`auth`]: the caller from the peer certificate, as a tower layer; the
//!    policy; one `authorize(scope)` per request.
//! 10. [`api`]: gRPC handlers, protobuf in and out; the one `Error -> Status`
//!     mapping and the audit reason codes.
//! 11. [`config`], then [`server`] (listeners, TLS, background tasks) and
//!     [`dev`] (the embedded default's data folder).
//! 12. [`cli`]: the `aitokens` command line: the server commands, a gRPC
//!     client (`aitokens token ...`) and a local web console (`aitokens
//!     console`) that use only the public admin contract, and the offline
//!     operator commands (`init`, `keys`, `backup`, `restore`, `audit
//!     verify`), which open the database directly.
//!
//! The benchmark is its own workspace crate (`bench/`), which seeds through
//! the `testkit` feature's bulk loader rather than the server's write API.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod error;
pub mod hardening;
pub mod model;
pub mod pki;
pub mod proto;
pub mod rotation;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tokens;

pub use error::{Error, Result};
