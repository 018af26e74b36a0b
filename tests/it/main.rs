//! Integration tests: the real server, real TLS, a real store (a SQLite
//! file, or PostgreSQL with `AITOKENS_TEST_STORE=postgres`). The
//! multi-replica tests ([`replicas`]) always run on PostgreSQL: a scratch
//! database, or clusters of their own ([`pgcluster`]).
//!
//! One test binary with modules (it builds much faster than many binaries).

mod accounting;
mod admin;
mod audit;
mod backend;
mod bad_input;
mod batch;
mod bench;
mod binary;
mod cache;
mod cli;
mod cli_safety;
mod common;
mod console;
mod crash;
mod deploy;
mod dev;
mod flood;
mod identity;
mod leak;
mod lifecycle;
mod limits;
mod mtls;
mod observability;
mod pgcluster;
mod policy_reload;
mod process;
mod props;
mod races;
mod readme;
mod refusal;
mod reload;
mod replicas;
mod root_key;
mod rotation;
mod shred;
mod shutdown;
mod slowloris;
mod soak;
mod store;
mod tamper;
mod toolchain;
mod trail;
mod validation;
mod watch;
