//! Property tests (proptest): id and resource-name validation against a
//! model, page tokens, the envelope parser, and the seal/open round trip.
//!
//! 256 cases per property by default; more with e.g.
//! `PROPTEST_CASES=10000 cargo test --test it props`.

use std::sync::Arc;

use aitokens::{
    Error,
    audit::{AuditHealth, AuditQueue},
    crypto::{Keyring, RootKey, RootMaterial, envelope::Envelope},
    model::{Actor, PageCursor, SealedValue, SecretValue, TenantId, TokenId, TokenName, TokenUid},
    rotation::{Legacy, Missing, unlock},
    store::SqliteStore,
    tokens::{Accounting, Domain, NewToken, TokenSettings},
};
use proptest::prelude::*;

/// The id rule, written independently of the implementation.
fn model_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn model_name(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("tenants/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    parts.len() == 3 && parts[1] == "tokens" && model_id(parts[0]) && model_id(parts[2])
}

/// Ids near the rule's edges: letters of both cases, digits, punctuation,
/// non-ASCII, lengths around 63.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,62}",
        "[a-z][a-z0-9-]{60,66}",
        "[a-zA-Z0-9_./é -]{0,70}",
        any::<String>(),
    ]
}

fn valid_id() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,62}"
}

proptest! {
    #[test]
    fn ids_follow_the_model(s in id_like()) {
        prop_assert_eq!(TokenId::new(&s, "token_id").is_ok(), model_id(&s));
        prop_assert_eq!(TenantId::new(&s, "tenant").is_ok(), model_id(&s));
        match TokenId::new(&s, "token_id") {
            Ok(id) => prop_assert_eq!(id.as_str(), s.as_str()),
            Err(e) => prop_assert!(
                matches!(e, Error::InvalidArgument { field: "token_id", .. }),
                "wrong error for {s:?}"
            ),
        }
    }

    #[test]
    fn names_follow_the_model_and_round_trip(
        tenant in id_like(),
        id in id_like(),
        sep in prop_oneof![Just("/tokens/"), Just("/token/"), Just("//tokens/"), Just("/tokens//")],
        prefix in prop_oneof![Just("tenants/"), Just(""), Just("/tenants/"), Just("Tenants/")],
    ) {
        let text = format!("{prefix}{tenant}{sep}{id}");
        let parsed = TokenName::parse(&text, "name");
        prop_assert_eq!(parsed.is_ok(), model_name(&text), "{:?}", text);
        if let Ok(name) = parsed {
            prop_assert_eq!(name.to_string(), text);
            prop_assert_eq!(name.tenant.as_str(), tenant.as_str());
        } else {
            prop_assert!(
                matches!(parsed, Err(Error::InvalidArgument { field: "name", .. })),
                "wrong error for {:?}", text
            );
        }
        let parent = format!("{prefix}{tenant}");
        prop_assert_eq!(
            TenantId::from_parent(&parent, "parent").is_ok(),
            prefix == "tenants/" && model_id(&tenant)
        );
    }

    #[test]
    fn arbitrary_names_never_panic(s in any::<String>()) {
        prop_assert_eq!(TokenName::parse(&s, "name").is_ok(), model_name(&s));
    }

    #[test]
    fn page_tokens_round_trip_and_bind_their_tenant(
        tenant in valid_id(),
        other in valid_id(),
        after_seq in 0..i64::MAX,
    ) {
        let tenant = TenantId::new(&tenant, "t").expect("valid");
        let cursor = PageCursor { kind: "tokens", scope: tenant.to_string(), after_seq };
        let token = cursor.encode();
        prop_assert_eq!(PageCursor::decode(&token, "tokens", tenant.as_str()).expect("own"), after_seq);
        let other = TenantId::new(&other, "t").expect("valid");
        if other != tenant {
            prop_assert!(
                matches!(
                    PageCursor::decode(&token, "tokens", other.as_str()),
                    Err(Error::InvalidArgument { field: "page_token", .. })
                ),
                "a page token crossed tenants"
            );
        }
        prop_assert!(PageCursor::decode(&token, "audit", tenant.as_str()).is_err(), "a page token crossed listings");
    }

    #[test]
    fn forged_page_tokens_are_refused_or_harmless(s in any::<String>(), tenant in valid_id()) {
        let tenant = TenantId::new(&tenant, "t").expect("valid");
        match PageCursor::decode(&s, "tokens", tenant.as_str()) {
            Ok(after_seq) => prop_assert!(after_seq >= 0 && (!s.is_empty() || after_seq == 0)),
            Err(e) => prop_assert!(
                matches!(e, Error::InvalidArgument { field: "page_token", .. }),
                "unexpected error {e}"
            ),
        }
    }

    #[test]
    fn the_envelope_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        match Envelope::parse(&bytes) {
            Ok(envelope) => {
                prop_assert_eq!(bytes[0], 1);
                prop_assert!(bytes.len() >= 1 + 24 + 16);
                prop_assert_eq!(&envelope.nonce[..], &bytes[1..25]);
                prop_assert_eq!(envelope.ciphertext, &bytes[25..]);
            }
            Err(e) => prop_assert!(matches!(e, Error::DataLoss), "wrong error"),
        }
    }
}

fn keyring() -> Keyring {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = RootKey::create_file(&dir.path().join("k")).expect("root key");
    Keyring::create(&root).expect("keyring").0
}

proptest! {
    #[test]
    fn seal_open_round_trips_and_binds_row_and_tenant(
        value in proptest::collection::vec(any::<u8>(), 1..4096),
        tenant in valid_id(),
        other_tenant in valid_id(),
        flip_at in any::<prop::sample::Index>(),
        flip_bit in 0u8..8,
        flip_dek in any::<bool>(),
    ) {
        let keyring = keyring();
        let uid = TokenUid::generate().expect("uid");
        let sealed = keyring.seal_value(&tenant, &uid, &value).expect("seal");
        prop_assert_eq!(&keyring.open_value(&tenant, &uid, &sealed).expect("open")[..], &value[..]);
        // A fresh nonce and data key every time: same value, other bytes.
        let again = keyring.seal_value(&tenant, &uid, &value).expect("seal");
        prop_assert_ne!(&again.value_ciphertext, &sealed.value_ciphertext);
        prop_assert_ne!(&again.wrapped_data_key, &sealed.wrapped_data_key);

        let other_uid = TokenUid::generate().expect("uid");
        prop_assert!(matches!(keyring.open_value(&tenant, &other_uid, &sealed), Err(Error::DataLoss)));
        if other_tenant != tenant {
            prop_assert!(matches!(keyring.open_value(&other_tenant, &uid, &sealed), Err(Error::DataLoss)));
        }
        let mut tampered: SealedValue = sealed.clone();
        let blob = if flip_dek { &mut tampered.wrapped_data_key } else { &mut tampered.value_ciphertext };
        let at = flip_at.index(blob.len());
        blob[at] ^= 1 << flip_bit;
        prop_assert!(matches!(keyring.open_value(&tenant, &uid, &tampered), Err(Error::DataLoss)));
        // The plaintext never appears in the stored bytes.
        if value.len() >= 8 {
            prop_assert!(!sealed.value_ciphertext.windows(value.len()).any(|w| w == &value[..]));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48)
    ))]
    /// Display names and values through the domain's own create, against a
    /// real SQLite store: accepted exactly when within the documented limits.
    #[test]
    fn create_validates_display_name_and_value(
        display_name in prop_oneof![
            Just(String::new()),
            "\\PC{1,40}",
            "\\PC{255,258}",
            "é{256,257}",
        ],
        value_len in prop_oneof![Just(0usize), 1usize..64, 65_530usize..65_540],
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).expect("store"));
        let root = RootKey::create_file(&dir.path().join("k")).expect("root key");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let material = RootMaterial::Key(root, None);
        let handle = Arc::new(
            runtime
                .block_on(unlock(&*store, material, Missing::Create, Legacy::Refuse))
                .expect("keyring"),
        );
        let audit = Arc::new(AuditQueue::default());
        let accounting = Accounting {
            health: Arc::new(AuditHealth::new(audit.clone(), std::time::Duration::from_secs(600))),
            per_call: None,
        };
        let domain = runtime
            .block_on(Domain::new(store, handle, audit, accounting, TokenSettings::default()))
            .expect("domain");
        let actor = Actor {
            identity: "spiffe://test/admin".into(),
            peer: "127.0.0.1:1".into(),
            method: "test",
        };
        let new = NewToken {
            tenant: TenantId::new("acme", "t").expect("valid"),
            token_id: "t".into(),
            display_name: display_name.clone(),
            value: SecretValue::new("v".repeat(value_len)),
            replaces: String::new(),
        };
        let result = runtime.block_on(domain.lifecycle.create(&actor, new));
        let chars = display_name.chars().count();
        let expect_ok = (1..=256).contains(&chars) && (1..=65_536).contains(&value_len);
        match result {
            Ok(record) => {
                prop_assert!(expect_ok);
                prop_assert_eq!(record.display_name, display_name);
            }
            Err(Error::InvalidArgument { field, .. }) => {
                prop_assert!(!expect_ok);
                prop_assert!(field == "token.display_name" || field == "value");
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}
