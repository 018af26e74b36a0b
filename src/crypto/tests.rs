use std::{collections::HashSet, os::unix::fs::PermissionsExt};

use super::*;
use crate::model::{KeyringRecords, TokenUid};

fn keyring() -> (RootKey, Keyring, KeyringRecords) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = RootKey::create_file(&dir.path().join("k")).expect("root key");
    let (keyring, records) = Keyring::create(&root).expect("keyring");
    (root, keyring, records)
}

#[test]
fn seal_open_round_trip() {
    let (_, keyring, _) = keyring();
    let uid = TokenUid::generate().expect("uid");
    let sealed = keyring
        .seal_value("acme", &uid, b"sk-live-123")
        .expect("seal");
    let opened = keyring.open_value("acme", &uid, &sealed).expect("open");
    assert_eq!(opened.as_slice(), b"sk-live-123");
}

#[test]
fn ciphertext_bound_to_tenant_uid_and_version() {
    let (_, keyring, _) = keyring();
    let uid = TokenUid::generate().expect("uid");
    let other = TokenUid::generate().expect("uid");
    let sealed = keyring.seal_value("acme", &uid, b"v").expect("seal");
    assert!(matches!(
        keyring.open_value("globex", &uid, &sealed),
        Err(Error::DataLoss)
    ));
    assert!(matches!(
        keyring.open_value("acme", &other, &sealed),
        Err(Error::DataLoss)
    ));
    let mut bumped = sealed.clone();
    bumped.kek_version = 2;
    assert!(matches!(
        keyring.open_value("acme", &uid, &bumped),
        Err(Error::DataLoss)
    ));
}

#[test]
fn every_flipped_bit_fails_to_open() {
    let (_, keyring, _) = keyring();
    let uid = TokenUid::generate().expect("uid");
    let sealed = keyring.seal_value("acme", &uid, b"value").expect("seal");
    for field in 0..2 {
        let len = [&sealed.wrapped_data_key, &sealed.value_ciphertext][field].len();
        for bit in 0..len * 8 {
            let mut tampered = sealed.clone();
            let bytes = if field == 0 {
                &mut tampered.wrapped_data_key
            } else {
                &mut tampered.value_ciphertext
            };
            bytes[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    keyring.open_value("acme", &uid, &tampered),
                    Err(Error::DataLoss)
                ),
                "field {field} bit {bit}"
            );
        }
    }
}

#[test]
fn nonces_are_unique() {
    let key = SecretKey::generate().expect("key");
    let mut seen = HashSet::new();
    for _ in 0..10_000 {
        let sealed = key.seal(b"aad", b"same plaintext").expect("seal");
        let nonce = envelope::Envelope::parse(&sealed)
            .expect("parse")
            .nonce
            .to_owned();
        assert!(seen.insert(nonce), "duplicate nonce");
    }
}

#[test]
fn keyring_reopens_with_the_right_key_only() {
    let (root, keyring, records) = keyring();
    let uid = TokenUid::generate().expect("uid");
    let sealed = keyring.seal_value("acme", &uid, b"v").expect("seal");
    let reopened = Keyring::open(&root, &records).expect("reopen");
    assert_eq!(
        reopened
            .open_value("acme", &uid, &sealed)
            .expect("open")
            .as_slice(),
        b"v"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = RootKey::create_file(&dir.path().join("k")).expect("root key");
    let err = Keyring::open(&wrong, &records)
        .err()
        .expect("wrong key must fail");
    assert!(
        err.to_string().contains("master key does not match"),
        "{err}"
    );
}

#[test]
fn envelope_parser_rejects_malformed_input() {
    for bad in [&[][..], &[2u8; 60][..], &[1u8; 24][..], &[1u8; 40][..]] {
        assert!(matches!(
            envelope::Envelope::parse(bad),
            Err(Error::DataLoss)
        ));
    }
}

#[test]
fn key_file_permissions_and_format_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    RootKey::create_file(&path).expect("create");
    assert!(
        RootKey::create_file(&path).is_err(),
        "never overwrite a master key"
    );
    RootKey::from_file(&path).expect("base64 key file");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = RootKey::from_file(&path).expect_err("world-readable key file");
    assert!(err.to_string().contains("chmod 600"), "{err}");

    let raw = dir.path().join("raw.key");
    std::fs::write(&raw, [7u8; 32]).expect("write");
    std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    RootKey::from_file(&raw).expect("raw key file");
    std::fs::write(&raw, [7u8; 31]).expect("write");
    let err = RootKey::from_file(&raw).expect_err("short key");
    assert!(err.to_string().contains("exactly 32 bytes"), "{err}");
}

#[test]
fn a_passphrase_file_open_to_others_is_refused_like_a_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("passphrase");
    std::fs::write(&path, "correct horse\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let source = KeySource::PassphraseFile(path.clone());
    let Err(err) = source.load() else {
        panic!("a world-readable passphrase file was read");
    };
    assert_eq!(
        err.to_string(),
        format!(
            "passphrase file {0} is readable or writable by group or others (mode 644); \
             run: chmod 600 {0}",
            path.display()
        )
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    match source.load().expect("a private passphrase file is read") {
        RootMaterial::Passphrase(text) => assert_eq!(text.as_str(), "correct horse"),
        RootMaterial::Key(..) => panic!("a passphrase file yields a passphrase"),
    }
}

#[test]
fn debug_output_shows_no_key_material() {
    let key = SecretKey::generate().expect("key");
    assert_eq!(format!("{key:?}"), "SecretKey([REDACTED])");
    let (_, keyring, _) = keyring();
    let uid = TokenUid::generate().expect("uid");
    let sealed = keyring.seal_value("acme", &uid, b"v").expect("seal");
    assert_eq!(format!("{sealed:?}"), "SealedValue { kek_version: 1, .. }");
}

#[test]
fn root_key_and_envelope_debug_show_no_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = RootKey::create_file(&dir.path().join("k")).expect("root key");
    assert_eq!(format!("{root:?}"), "RootKey([REDACTED])");

    let key = SecretKey::generate().expect("key");
    let sealed = key.seal(b"aad", b"plaintext").expect("seal");
    let parsed = envelope::Envelope::parse(&sealed).expect("parse");
    let shown = format!("{parsed:?}");
    assert_eq!(
        shown,
        format!(
            "Envelope {{ nonce_len: 24, ciphertext_len: {} }}",
            sealed.len() - 1 - envelope::NONCE_LEN
        )
    );
    // No byte list (a derived Debug prints the nonce as `[12, 200, ...]`).
    assert!(!shown.contains('['), "{shown}");
}
