//! The RPCs this server answers, by name, read once from the descriptors
//! the generated code embeds (ours, gRPC health and server reflection), so
//! that no method name is typed by hand: metrics labels, audit records and
//! the authentication layer all take their names from here.

use std::sync::LazyLock;

use prost::Message;

/// One RPC: its service, its method and the HTTP/2 path that routes to it.
#[derive(Debug, PartialEq, Eq)]
pub struct Rpc {
    /// `package.Service`, e.g. `aitokens.v1.TokenAdmin`.
    pub service: String,
    /// The method, e.g. `CreateToken`.
    pub method: String,
    /// `package.Service/Method`: how audit records name the RPC.
    pub full_name: String,
    /// `/package.Service/Method`: the request path.
    pub path: String,
}

static RPCS: LazyLock<Vec<Rpc>> = LazyLock::new(|| {
    let sets: [&[u8]; 4] = [
        super::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut rpcs = Vec::new();
    for set in sets {
        // Invariant: these descriptor sets were written by protoc at build
        // time (ours) or ship with the crates (a unit test decodes each); a
        // set that did not decode would only make its RPCs count as unknown.
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = format!("{package}.{}", service.name.unwrap_or_default());
                for method in service.method {
                    let method = method.name.unwrap_or_default();
                    let full_name = format!("{service_name}/{method}");
                    rpcs.push(Rpc {
                        service: service_name.clone(),
                        path: format!("/{full_name}"),
                        full_name,
                        method,
                    });
                }
            }
        }
    }
    rpcs
});

/// Every known RPC.
pub fn all() -> &'static [Rpc] {
    &RPCS
}

/// The RPC a request path routes to, if it is one of ours.
pub fn by_path(path: &str) -> Option<&'static Rpc> {
    RPCS.iter().find(|rpc| rpc.path == path)
}

/// The RPC `service`/`method` names, if it is one of ours.
pub fn find(service: &str, method: &str) -> Option<&'static Rpc> {
    RPCS.iter()
        .find(|rpc| rpc.service == service && rpc.method == method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_we_serve_is_known() {
        for (service, method) in [
            ("aitokens.v1.TokenAdmin", "CreateToken"),
            ("aitokens.v1.TokenAdmin", "ListAuditEvents"),
            ("aitokens.v1.KeyAdmin", "RotateKeys"),
            ("aitokens.v1.TokenResolver", "ResolveToken"),
            ("aitokens.bench.v1.Echo", "Echo"),
            ("grpc.health.v1.Health", "Check"),
            (
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo",
            ),
            (
                "grpc.reflection.v1alpha.ServerReflection",
                "ServerReflectionInfo",
            ),
        ] {
            let rpc = find(service, method).unwrap_or_else(|| panic!("{service}/{method}"));
            assert_eq!(by_path(&format!("/{service}/{method}")), Some(rpc));
            assert_eq!(rpc.full_name, format!("{service}/{method}"));
        }
        assert!(by_path("/evil.Service/x").is_none());
    }
}
