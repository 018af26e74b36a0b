//! Integration tests: the real server, real TLS, a real SQLite file.
//!
//! One test binary with modules (it builds much faster than many binaries).

mod admin;
mod audit;
mod bad_input;
mod bench;
mod binary;
mod cache;
mod cli;
mod cli_safety;
mod common;
mod crash;
mod deploy;
mod dev;
mod identity;
mod leak;
mod lifecycle;
mod limits;
mod mtls;
mod observability;
mod process;
mod props;
mod races;
mod readme;
mod reload;
mod root_key;
mod rotation;
mod shred;
mod shutdown;
mod soak;
mod store;
mod tamper;
mod validation;
