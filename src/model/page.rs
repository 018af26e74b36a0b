//! Opaque page tokens (AIP-158).
//!
//! A page token records which listing it belongs to, the parent it was issued
//! for, and the position: the internal, immutable sequence of the last item
//! returned. Listings are therefore keyset-paginated: stable under concurrent
//! renames, and as fast deep in the listing as on its first page.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::error::{Error, Result};

const VERSION: &str = "v1";

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size; larger requests are clamped to it.
pub const MAX_PAGE_SIZE: usize = 1000;

/// One page of a listing.
#[derive(Debug)]
pub struct Page<T> {
    /// The items, in order.
    pub items: Vec<T>,
    /// The next page's token, if there is one.
    pub next_page_token: Option<String>,
}

impl<T> Page<T> {
    /// A page of `limit + 1` rows read at most (the extra row says whether
    /// another page follows), continuing after each item's `seq`.
    pub fn of(
        mut rows: Vec<T>,
        limit: usize,
        kind: &'static str,
        scope: String,
        seq: impl Fn(&T) -> i64,
    ) -> Self {
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_page_token = match rows.last() {
            Some(last) if more => Some(
                PageCursor {
                    kind,
                    scope,
                    after_seq: seq(last),
                }
                .encode(),
            ),
            _ => None,
        };
        Self {
            items: rows,
            next_page_token,
        }
    }
}

/// The number of items a request's `page_size` asks for: the default for 0,
/// at most [`MAX_PAGE_SIZE`]; negative sizes are refused.
pub fn page_limit(page_size: i32) -> Result<usize> {
    match usize::try_from(page_size) {
        Err(_) => Err(Error::invalid("page_size", "must not be negative")),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

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
    fn pages_stop_where_the_rows_do() {
        let page = Page::of(vec![1, 2, 3], 2, "tokens", "acme".into(), |n| *n);
        assert_eq!(page.items, vec![1, 2]);
        let token = page.next_page_token.expect("a next page");
        assert_eq!(PageCursor::decode(&token, "tokens", "acme").expect("ok"), 2);
        let last = Page::of(vec![1, 2], 2, "tokens", "acme".into(), |n| *n);
        assert!(last.next_page_token.is_none());
        assert_eq!(page_limit(0).expect("ok"), DEFAULT_PAGE_SIZE);
        assert_eq!(page_limit(5000).expect("ok"), MAX_PAGE_SIZE);
        assert!(page_limit(-1).is_err());
    }

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
