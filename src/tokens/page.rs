//! Opaque page tokens (AIP-158).
//!
//! A page token records which listing it belongs to, the parent it was issued
//! for, and the position: the internal, immutable sequence of the last item
//! returned. Listings are therefore keyset-paginated: stable under concurrent
//! renames, and as fast deep in the listing as on its first page.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::error::{Error, Result};

const VERSION: &str = "v1";

/// A decoded page token: where the previous page of one listing stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    /// Which listing (`tokens`, `audit`).
    pub kind: &'static str,
    /// The parent the listing is for (a tenant id, or `-` for all).
    pub scope: String,
    /// Sequence number of the last item already returned.
    pub after_seq: i64,
}

impl PageCursor {
    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{VERSION}:{}:{}:{}",
            self.kind, self.scope, self.after_seq
        ))
    }

    /// Decodes `page_token` for a `kind` listing of `scope`; returns the
    /// position to continue after (0 for an empty token: the first page).
    pub fn decode(page_token: &str, kind: &'static str, scope: &str) -> Result<i64> {
        if page_token.is_empty() {
            return Ok(0);
        }
        let malformed =
            || Error::invalid("page_token", "is not a page token issued by this service");
        let bytes = URL_SAFE_NO_PAD
            .decode(page_token)
            .map_err(|_| malformed())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| malformed())?;
        let mut parts = text.split(':');
        let (Some(VERSION), Some(issued_kind), Some(issued_scope), Some(seq), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        let after_seq: i64 = seq.parse().map_err(|_| malformed())?;
        if issued_kind != kind || after_seq < 0 {
            return Err(malformed());
        }
        if issued_scope != scope {
            return Err(Error::invalid(
                "page_token",
                "was issued for a different parent; restart the listing without a page token",
            ));
        }
        Ok(after_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_scope_binding() {
        let cursor = PageCursor {
            kind: "tokens",
            scope: "acme".into(),
            after_seq: 42,
        };
        let token = cursor.encode();
        assert_eq!(
            PageCursor::decode(&token, "tokens", "acme").expect("ok"),
            42
        );
        assert_eq!(PageCursor::decode("", "tokens", "acme").expect("ok"), 0);
        assert!(PageCursor::decode(&token, "tokens", "globex").is_err());
        assert!(PageCursor::decode(&token, "audit", "acme").is_err());
        for forged in [
            "x".to_owned(),
            "!!!".to_owned(),
            URL_SAFE_NO_PAD.encode("v1:tokens:acme:-1"),
            URL_SAFE_NO_PAD.encode("v2:tokens:acme:1"),
            URL_SAFE_NO_PAD.encode("v1:tokens:acme:1:2"),
        ] {
            let err = PageCursor::decode(&forged, "tokens", "acme").expect_err(&forged);
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
