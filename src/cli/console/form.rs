//! Reading a posted form: the only way a handler gets a request body, so
//! that no post reaches a handler without its CSRF token checked.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
};
use zeroize::{Zeroize, Zeroizing};

use super::{Refusal, Shared, handlers::Visitor};

/// Largest form body read (a token value is at most 64 KiB, percent-encoded
/// up to three times that).
const MAX_FORM_BYTES: usize = 256 * 1024;

/// A posted form whose CSRF token matched the session's. Every field is held
/// in a buffer that is zeroized when dropped (the Add form carries a value).
pub struct PostForm {
    fields: Vec<(String, Zeroizing<String>)>,
    /// The logged-in visitor who posted it.
    pub visitor: Visitor,
}

impl PostForm {
    /// A field's text, empty if absent.
    pub fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    }

    /// A field's text with surrounding white space removed.
    pub fn trimmed(&self, name: &str) -> String {
        self.get(name).trim().to_owned()
    }

    /// Moves a field out (the token value), leaving nothing behind.
    pub fn take(&mut self, name: &str) -> Zeroizing<String> {
        self.fields
            .iter_mut()
            .find(|(key, _)| key == name)
            .map(|(_, value)| std::mem::take(value))
            .unwrap_or_default()
    }
}

impl FromRequest<Shared> for PostForm {
    type Rejection = Refusal;

    async fn from_request(request: Request, _: &Shared) -> Result<Self, Self::Rejection> {
        let visitor = request
            .extensions()
            .get::<Visitor>()
            .cloned()
            .ok_or(Refusal::NoSession)?;
        let body = axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| Refusal::BadForm)?;
        let fields = parse(&body);
        wipe(body);
        let form = Self { fields, visitor };
        match form.get("csrf") {
            "" => Err(Refusal::CsrfMissing),
            given if !form.visitor.session.csrf_matches(given) => Err(Refusal::CsrfWrong),
            _ => Ok(form),
        }
    }
}

/// `application/x-www-form-urlencoded` pairs, each value in a zeroizing buffer.
pub fn parse(body: &[u8]) -> Vec<(String, Zeroizing<String>)> {
    form_urlencoded::parse(body)
        // A decoded value is moved (not copied) into the zeroizing buffer.
        .map(|(key, value)| (key.into_owned(), Zeroizing::new(value.into_owned())))
        .collect()
}

/// Zeroes the raw body when this is its only reference (a body that hyper
/// still shares with its read buffer is overwritten by the next read).
fn wipe(body: Bytes) {
    if let Ok(mut bytes) = body.try_into_mut() {
        bytes.as_mut().zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_decoded() {
        let fields = parse(b"csrf=abc&value=s%26k+x&token_id=a");
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str().to_owned())
        };
        assert_eq!(get("value").as_deref(), Some("s&k x"));
        assert_eq!(get("token_id").as_deref(), Some("a"));
        assert_eq!(get("other"), None);
    }
}
