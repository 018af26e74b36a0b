//! The stored-envelope parser and the keyring's open, on arbitrary bytes:
//! never a panic, never a value; anything malformed or unauthentic is
//! DATA_LOSS.

#![no_main]

use std::sync::LazyLock;

use aitokens::{
    Error,
    crypto::{Keyring, RootKey, envelope::Envelope},
    model::{SealedValue, TokenUid},
};
use libfuzzer_sys::fuzz_target;

static KEYRING: LazyLock<Keyring> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("aitokens-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("master.key");
    let _ = std::fs::remove_file(&path);
    let root = RootKey::create_file(&path).expect("root key");
    let _ = std::fs::remove_file(&path);
    Keyring::create(&root).expect("keyring").0
});

fuzz_target!(|data: &[u8]| {
    match Envelope::parse(data) {
        Ok(envelope) => {
            assert_eq!(data[0], 1);
            assert_eq!(envelope.ciphertext.len() + 25, data.len());
        }
        Err(e) => assert!(matches!(e, Error::DataLoss)),
    }
    // Split the input into a key version, a wrapped data key and a value
    // ciphertext, and try to open it as a stored token.
    if data.len() < 5 {
        return;
    }
    let version = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) % 4;
    let split = usize::from(data[4]).min(data.len() - 5);
    let rest = &data[5..];
    let sealed = SealedValue {
        kek_version: version,
        wrapped_data_key: rest[..split].to_vec(),
        value_ciphertext: rest[split..].to_vec(),
    };
    let uid = TokenUid::from_slice(&[7; 16]).expect("uid");
    match KEYRING.open_value("acme", &uid, &sealed) {
        Ok(_) => panic!("random bytes opened as a value"),
        Err(e) => assert!(matches!(e, Error::DataLoss)),
    }
});
