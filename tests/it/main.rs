//! Integration tests: the real server, real TLS, a real SQLite file.
//!
//! One test binary with modules (it builds much faster than many binaries).

mod admin;
mod audit;
mod binary;
mod cli;
mod common;
mod deploy;
mod keys;
mod lifecycle;
mod mtls;
mod observability;
mod readme;
mod reload;
mod rotation;
mod shutdown;
mod store;
mod validation;
