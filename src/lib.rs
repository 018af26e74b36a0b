//! aitokens: a gRPC secrets service for AI tokens.
//!
//! Admin tooling stores tokens (API keys, MCP-server credentials) through the
//! public `TokenAdmin` service; agent runtimes fetch decrypted values through
//! `TokenResolver`, on a separate internal listener that requires mutual TLS.
//!
//! # Trust boundaries
//!
//! - **admin listener**: TLS with a required client certificate; the caller's
//!   certificate identity must be an admin of the tenant in the policy. No
//!   admin method ever returns a value.
//! - **internal listener**: mTLS; the identity must be a resolver allowed for
//!   the token's tenant and id. The only way a value leaves the service.
//! - **at rest**: values are sealed (XChaCha20-Poly1305, per-token data keys
//!   wrapped by versioned KEKs sealed under the master key) before SQLite
//!   sees them.
//!
//! # Layout
//!
//! Data flows one way: [`api`] (transport) -> [`auth`] -> [`tokens`] (domain)
//! -> [`crypto`] / [`store`]. [`error`] holds the one error type and its one
//! mapping to gRPC statuses. [`server`] wires two tonic servers over one
//! domain handle; [`dev`] and [`pki`] make the embedded default; [`mod@bench`]
//! measures the server against its transport floor.

pub mod api;
pub mod auth;
pub mod bench;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod error;
pub mod pki;
pub mod server;
pub mod store;
pub mod tls;
pub mod tokens;

pub use error::{Error, Result};
