//! Integration tests: the real server, real TLS, a real SQLite file.
//!
//! One test binary with modules (it builds much faster than many binaries).

mod admin;
mod audit;
mod binary;
mod common;
mod keys;
mod lifecycle;
mod mtls;
mod rotation;
mod store;
mod validation;
