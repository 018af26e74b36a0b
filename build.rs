//! Generates the gRPC code for `proto/aitokens/v1` into OUT_DIR.
//!
//! The protobuf compiler comes from `protoc-bin-vendored`, so a fresh machine
//! needs no system `protoc`.

use std::{env, error::Error, path::PathBuf};

/// Messages that carry a token value: their generated `Debug` is replaced by a
/// hand-written, redacting one in `src/api/pb.rs`.
const SECRET_MESSAGES: [&str; 3] = [
    "aitokens.v1.CreateTokenRequest",
    "aitokens.v1.ResolveTokenResponse",
    "aitokens.v1.BatchResolveTokensResult",
];

const PROTOS: [&str; 5] = [
    "proto/aitokens/v1/token.proto",
    "proto/aitokens/v1/admin.proto",
    "proto/aitokens/v1/keys.proto",
    "proto/aitokens/v1/resolver.proto",
    "proto/aitokens/bench/v1/echo.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    // tonic-prost-build's own rerun hint is a no-op (grpc-rust#2511).
    println!("cargo:rerun-if-changed=proto");

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("aitokens_descriptor.bin"))
        .skip_debug(SECRET_MESSAGES)
        // `google.rpc.Status` (vendored in proto/google/rpc for protoc) is
        // tonic-types' type, so statuses convert without re-encoding.
        .extern_path(".google.rpc.Status", "::tonic_types::Status")
        .compile_with_config(config, &PROTOS, &["proto"])?;
    Ok(())
}
