//! Generated protobuf types, plus the hand-written parts that keep values safe:
//! a redacting `Debug` and a zeroizing `Drop` for every message that carries a
//! token value (build.rs turns their generated `Debug` off).

#![allow(missing_docs)]

use std::fmt;

use zeroize::Zeroize;

use crate::tokens::TokenRecord;

tonic::include_proto!("aitokens.v1");

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

impl From<TokenRecord> for Token {
    fn from(record: TokenRecord) -> Self {
        Self {
            etag: record.etag(),
            name: record.name.to_string(),
            token_id: record.name.token_id.to_string(),
            display_name: record.display_name,
            create_time: Some(record.create_time.into()),
            update_time: Some(record.update_time.into()),
        }
    }
}
