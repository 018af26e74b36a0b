//! Validated identifiers and resource names (AIP-122).
//!
//! Ids (tenants and tokens) are `[a-z][a-z0-9-]{0,62}`: a lowercase letter,
//! then up to 62 lowercase letters, digits or `-`. Token names are
//! `tenants/{tenant}/tokens/{token_id}`; parents are `tenants/{tenant}`.

use std::fmt;

use crate::error::{Error, Result};

/// The rule every id follows, as shown to clients.
pub const ID_RULE: &str = "must match [a-z][a-z0-9-]{0,62}";
/// Longest id, in bytes.
pub const MAX_ID_LEN: usize = 63;

fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes.len() <= MAX_ID_LEN
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// Defines an id newtype that only holds text following [`ID_RULE`].
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates an id given in request field `field`.
            pub fn new(id: &str, field: &'static str) -> Result<Self> {
                if is_valid_id(id) {
                    Ok(Self(id.to_owned()))
                } else {
                    Err(Error::invalid(field, ID_RULE))
                }
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A tenant id.
    TenantId
);
id_type!(
    /// A token id, unique within its tenant.
    TokenId
);
id_type!(
    /// A binding id: the stable id of a consumer of a token.
    BindingId
);

impl TenantId {
    /// Parses a parent resource name, `tenants/{tenant}`, from request field `field`.
    pub fn from_parent(parent: &str, field: &'static str) -> Result<Self> {
        match parent.strip_prefix("tenants/") {
            Some(id) if is_valid_id(id) => Ok(Self(id.to_owned())),
            _ => Err(Error::invalid(
                field,
                "must be tenants/{tenant} with tenant matching [a-z][a-z0-9-]{0,62}",
            )),
        }
    }
}

/// Whether `identity` is spelled as certificate identities are: a URI SAN
/// (`scheme://rest`, e.g. a SPIFFE id) or `dns:NAME`, without whitespace, at
/// most 2 KiB. The policy names callers this way and bindings name them the
/// same way: one rule for both, so that neither accepts a spelling that
/// could never match a caller.
pub fn is_identity(identity: &str) -> bool {
    let well_formed = match identity.strip_prefix("dns:") {
        Some(name) => !name.is_empty(),
        None => identity
            .split_once("://")
            .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty()),
    };
    well_formed && identity.len() <= 2048 && !identity.chars().any(char::is_whitespace)
}

/// A binding's resource name: `tenants/{tenant}/tokens/{token_id}/bindings/{binding_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BindingName {
    /// The token the binding is on.
    pub token: TokenName,
    /// The binding's id.
    pub binding_id: BindingId,
}

impl BindingName {
    /// Parses a binding name from request field `field`.
    pub fn parse(name: &str, field: &'static str) -> Result<Self> {
        let invalid = || {
            Error::invalid(
                field,
                "must be tenants/{tenant}/tokens/{token_id}/bindings/{binding_id} with ids matching [a-z][a-z0-9-]{0,62}",
            )
        };
        let (token, binding_id) = name.rsplit_once("/bindings/").ok_or_else(invalid)?;
        Ok(Self {
            token: TokenName::parse(token, field).map_err(|_| invalid())?,
            binding_id: BindingId::new(binding_id, field).map_err(|_| invalid())?,
        })
    }
}

impl fmt::Display for BindingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/bindings/{}", self.token, self.binding_id.0)
    }
}

/// A token's resource name: `tenants/{tenant}/tokens/{token_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenName {
    /// The owning tenant.
    pub tenant: TenantId,
    /// The token's id within the tenant.
    pub token_id: TokenId,
}

impl TokenName {
    /// Parses a token name from request field `field`.
    pub fn parse(name: &str, field: &'static str) -> Result<Self> {
        let invalid = || {
            Error::invalid(
                field,
                "must be tenants/{tenant}/tokens/{token_id} with ids matching [a-z][a-z0-9-]{0,62}",
            )
        };
        let rest = name.strip_prefix("tenants/").ok_or_else(invalid)?;
        let (tenant, token_id) = rest.split_once("/tokens/").ok_or_else(invalid)?;
        if !is_valid_id(tenant) || !is_valid_id(token_id) {
            return Err(invalid());
        }
        Ok(Self {
            tenant: TenantId(tenant.to_owned()),
            token_id: TokenId(token_id.to_owned()),
        })
    }
}

impl fmt::Display for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenants/{}/tokens/{}", self.tenant, self.token_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_rule() {
        for good in ["a", "openai-prod", "a1-", &format!("a{}", "b".repeat(62))] {
            assert!(is_valid_id(good), "{good}");
        }
        for bad in [
            "",
            "1a",
            "-a",
            "A",
            "a_b",
            "a.b",
            "a/b",
            "é",
            &format!("a{}", "b".repeat(63)),
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn names_parse_and_print() {
        let name = TokenName::parse("tenants/acme/tokens/openai", "name").expect("valid");
        assert_eq!(name.tenant.as_str(), "acme");
        assert_eq!(name.token_id.as_str(), "openai");
        assert_eq!(name.to_string(), "tenants/acme/tokens/openai");
        for bad in [
            "",
            "tenants/acme",
            "tenants/acme/tokens/",
            "tenants//tokens/x",
            "tenants/acme/tokens/x/extra",
            "tenants/acme/secrets/x",
            "/tenants/acme/tokens/x",
            "tenants/Acme/tokens/x",
        ] {
            let err = TokenName::parse(bad, "name").expect_err(bad);
            assert!(
                matches!(err, Error::InvalidArgument { field: "name", .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn identities_are_uri_or_dns_sans() {
        for good in ["spiffe://t/agent", "dns:agent.internal"] {
            assert!(is_identity(good), "{good}");
        }
        let long = format!("spiffe://t/{}", "a".repeat(2048));
        for bad in ["agent", "dns:", "spiffe://", "spiffe://a b", "://x", &long] {
            assert!(!is_identity(bad), "{bad}");
        }
    }

    #[test]
    fn parents_parse() {
        assert_eq!(
            TenantId::from_parent("tenants/acme", "parent")
                .expect("ok")
                .as_str(),
            "acme"
        );
        for bad in ["acme", "tenants/", "tenants/acme/", "tenants/acme/tokens/x"] {
            assert!(TenantId::from_parent(bad, "parent").is_err(), "{bad}");
        }
    }
}
