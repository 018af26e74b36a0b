//! Request decoding plus validation: arbitrary bytes decoded as each request
//! message the services accept, then run through the same parsing and
//! validation the handlers do first. Never a panic; every refusal is
//! INVALID_ARGUMENT naming a field.

#![no_main]

use aitokens::{
    Error,
    api::pb::{
        CreateTokenRequest, GetTokenRequest, ListTokensRequest, RemoveTokenRequest,
        RenameTokenRequest, ResolveTokenRequest,
    },
    model::{PageCursor, SecretValue, TenantId, TokenId, TokenName},
    tokens::rules::validate_new_token,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn refused(result: Result<impl Sized, Error>) {
    if let Err(e) = result {
        assert!(
            matches!(e, Error::InvalidArgument { .. }),
            "unexpected error kind"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            if let Ok(mut r) = CreateTokenRequest::decode(bytes) {
                refused(TenantId::from_parent(&r.parent, "parent"));
                let display_name = r.token.as_ref().map_or("", |t| t.display_name.as_str());
                let value = SecretValue::new(std::mem::take(&mut r.value));
                refused(validate_new_token(&r.token_id, display_name, &value));
            }
        }
        1 => {
            if let Ok(r) = GetTokenRequest::decode(bytes) {
                refused(TokenName::parse(&r.name, "name"));
            }
        }
        2 => {
            if let Ok(r) = ListTokensRequest::decode(bytes) {
                if let Ok(tenant) = TenantId::from_parent(&r.parent, "parent") {
                    refused(PageCursor::decode(&r.page_token, "tokens", tenant.as_str()));
                }
            }
        }
        3 => {
            if let Ok(r) = RenameTokenRequest::decode(bytes) {
                refused(TokenName::parse(&r.name, "name"));
                if let Some(id) = &r.new_token_id {
                    refused(TokenId::new(id, "new_token_id"));
                }
            }
        }
        4 => {
            if let Ok(r) = RemoveTokenRequest::decode(bytes) {
                refused(TokenName::parse(&r.name, "name"));
            }
        }
        _ => {
            if let Ok(r) = ResolveTokenRequest::decode(bytes) {
                if let Ok(name) = TokenName::parse(&r.name, "name") {
                    assert_eq!(name.to_string(), r.name);
                }
            }
        }
    }
});
