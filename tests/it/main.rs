//! Integration tests: the real server, real TLS, a real SQLite file.
//!
//! One test binary with modules (it builds much faster than many binaries).

mod admin;
mod binary;
mod cli;
mod common;
mod deploy;
mod mtls;
mod observability;
mod readme;
mod reload;
mod shutdown;
mod store;
mod validation;
