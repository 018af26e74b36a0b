//! Integration tests: the real server, real TLS, a real SQLite file.
//!
//! One test binary with modules (it builds much faster than many binaries).

mod admin;
mod bad_input;
mod bench;
mod binary;
mod common;
mod crash;
mod leak;
mod mtls;
mod process;
mod props;
mod races;
mod soak;
mod store;
mod tamper;
mod validation;
