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
//! domain handle; [`dev`] and [`pki`] make the embedded default. [`cli`] is
//! the `aitokens` command line: the server commands and a gRPC client
//! (`aitokens token ...`) that uses only the public contract. [`telemetry`]
//! holds the metrics, the health and readiness endpoints and request ids;
//! [`tls`] the rustls acceptor with CRLs and reloads; [`mod@bench`] measures
//! the server against its transport floor.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod error;
pub mod hardening;
pub mod keys;
pub mod ops;
pub mod pki;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;

pub use error::{Error, Result};
