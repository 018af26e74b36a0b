//! The contract: types and services generated from `proto/` at build time,
//! plus the hand-written parts that keep values safe (a redacting `Debug`
//! and a zeroizing `Drop` for every message that carries a token value;
//! build.rs turns their generated `Debug` off), and [`rpcs`], the table of
//! RPC names read from the generated descriptors.
//!
//! It depends on nothing else in the crate: every layer may speak it, and
//! the conversions to and from the domain live in the API layer.

#![allow(missing_docs)]

pub mod rpcs;

use std::fmt;

use zeroize::Zeroize;

tonic::include_proto!("aitokens.v1");

/// Generated types of `proto/aitokens/bench/v1/echo.proto`: the transport
/// floor `aitokens bench` measures against.
pub mod bench {
    tonic::include_proto!("aitokens.bench.v1");
}

/// Descriptors of the aitokens services and their imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aitokens_descriptor");

impl fmt::Debug for CreateTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateTokenRequest")
            .field("parent", &self.parent)
            .field("token_id", &self.token_id)
            .field("token", &self.token)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

impl Drop for CreateTokenRequest {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl fmt::Debug for ResolveTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolveTokenResponse")
            .field("name", &self.name)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

impl Drop for ResolveTokenResponse {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl fmt::Debug for BatchResolveTokensResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchResolveTokensResult")
            .field("name", &self.name)
            .field("value", &"[REDACTED]")
            .field("status", &self.status)
            .finish()
    }
}

impl Drop for BatchResolveTokensResult {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}
