//! Opaque page tokens for ListTokens (AIP-158).
//!
//! A page token records the tenant it was issued for and the position (the
//! internal, immutable creation sequence of the last token returned), so the
//! listing is keyset-paginated: stable under concurrent renames, and as fast
//! deep in the listing as on its first page.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::TenantId;
use crate::error::{Error, Result};

const PREFIX: &str = "v1:";

/// A decoded page token: where the previous page stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    /// The tenant the listing is for.
    pub tenant: TenantId,
    /// Sequence number of the last token already returned.
    pub after_seq: i64,
}

impl PageCursor {
    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{PREFIX}{}:{}", self.tenant, self.after_seq))
    }

    /// Decodes `page_token` for a listing of `tenant`. An empty token means
    /// "first page" (`None`).
    pub fn decode(page_token: &str, tenant: &TenantId) -> Result<Option<Self>> {
        if page_token.is_empty() {
            return Ok(None);
        }
        let malformed =
            || Error::invalid("page_token", "is not a page token issued by this service");
        let bytes = URL_SAFE_NO_PAD
            .decode(page_token)
            .map_err(|_| malformed())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| malformed())?;
        let (issued_for, seq) = text
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(malformed)?;
        let issued_for = TenantId::new(issued_for, "page_token").map_err(|_| malformed())?;
        let after_seq: i64 = seq.parse().map_err(|_| malformed())?;
        if after_seq < 0 {
            return Err(malformed());
        }
        if &issued_for != tenant {
            return Err(Error::invalid(
                "page_token",
                "was issued for a different parent; restart the listing without a page token",
            ));
        }
        Ok(Some(Self {
            tenant: issued_for,
            after_seq,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tenant_binding() {
        let acme = TenantId::new("acme", "t").expect("id");
        let cursor = PageCursor {
            tenant: acme.clone(),
            after_seq: 42,
        };
        let token = cursor.encode();
        assert_eq!(PageCursor::decode(&token, &acme).expect("ok"), Some(cursor));
        assert_eq!(PageCursor::decode("", &acme).expect("ok"), None);

        let globex = TenantId::new("globex", "t").expect("id");
        assert!(PageCursor::decode(&token, &globex).is_err());
        for forged in [
            "x",
            "!!!",
            &URL_SAFE_NO_PAD.encode("v1:acme:-1"),
            &URL_SAFE_NO_PAD.encode("v2:acme:1"),
        ] {
            let err = PageCursor::decode(forged, &acme).expect_err(forged);
            assert!(matches!(
                err,
                Error::InvalidArgument {
                    field: "page_token",
                    ..
                }
            ));
        }
    }
}
