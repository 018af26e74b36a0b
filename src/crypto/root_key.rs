//! The root ("master") key: from a key file, an environment variable, or a
//! passphrase stretched with Argon2id; held in zeroizing memory.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use zeroize::Zeroizing;

use super::{KEY_LEN, SecretKey};
use crate::{
    error::{Error, Result},
    model::KdfParams,
};

/// The key that seals the keyring. Never printed, zeroized on drop.
pub struct RootKey(SecretKey);

/// Written out rather than derived: it names the type and nothing else, so
/// that no field added later can reach a log through it.
impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey([REDACTED])")
    }
}

impl RootKey {
    /// Reads a key file (see [`RootKey::read_file`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        Ok(Self::read_file(path)?.key)
    }

    /// Reads a key file: exactly 32 raw bytes, or those 32 bytes in base64
    /// (surrounding whitespace ignored), optionally after a comment line
    /// `# aitokens root key for deployment HEX` that `aitokens init` writes.
    /// The file must not be readable by group or others.
    pub fn read_file(path: &Path) -> Result<KeyFile> {
        let shown = path.display();
        check_private(path, "master key file")?;
        let contents = Zeroizing::new(
            fs::read(path)
                .map_err(|e| Error::master_key(format!("master key file {shown}: {e}")))?,
        );
        Self::parse_key_file(&contents).ok_or_else(|| {
            Error::master_key(format!(
                "master key file {shown} must hold exactly {KEY_LEN} bytes, raw or base64"
            ))
        })
    }

    fn parse_key_file(contents: &[u8]) -> Option<KeyFile> {
        if let Some(key) = Self::from_encoded(contents) {
            return Some(KeyFile {
                key,
                deployment: None,
            });
        }
        let text = std::str::from_utf8(contents).ok()?;
        let (first, rest) = text.split_once('\n')?;
        let deployment = first.strip_prefix(DEPLOYMENT_LINE)?;
        let deployment = hex_decode(deployment.trim())?;
        Some(KeyFile {
            key: Self::from_encoded(rest.as_bytes())?,
            deployment: Some(deployment),
        })
    }

    /// A key from exactly 32 raw bytes or their base64 text.
    pub fn from_encoded(contents: &[u8]) -> Option<Self> {
        if let Some(key) = SecretKey::from_slice(contents) {
            return Some(Self(key));
        }
        let text = std::str::from_utf8(contents).ok()?.trim();
        let decoded = Zeroizing::new(STANDARD.decode(text).ok()?);
        SecretKey::from_slice(&decoded).map(Self)
    }

    /// Stretches a passphrase into a root key with Argon2id and `params`.
    pub fn from_passphrase(passphrase: &[u8], params: &KdfParams) -> Result<Self> {
        if passphrase.is_empty() {
            return Err(Error::master_key("the passphrase is empty"));
        }
        let argon =
            argon2::Params::new(params.m_kib, params.t, params.p, Some(KEY_LEN)).map_err(|e| {
                Error::master_key(format!("stored Argon2id parameters are invalid: {e}"))
            })?;
        let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        kdf.hash_password_into(passphrase, &params.salt, key.as_mut())
            .map_err(|e| {
                Error::master_key(format!("deriving the root key from the passphrase: {e}"))
            })?;
        Ok(Self(SecretKey(key)))
    }

    /// Creates a new key file (mode 0600, base64) holding a fresh random key.
    /// Fails if the file exists: a master key is never overwritten.
    pub fn create_file(path: &Path) -> Result<Self> {
        Self::create_file_for(path, None)
    }

    /// Like [`RootKey::create_file`], recording the deployment the key is for
    /// so that a database of another deployment is recognized as such.
    pub fn create_file_for(path: &Path, deployment: Option<&[u8]>) -> Result<Self> {
        let key = SecretKey::generate()?;
        let mut encoded = Zeroizing::new(String::new());
        if let Some(id) = deployment {
            encoded.push_str(DEPLOYMENT_LINE);
            encoded.push_str(&hex_encode(id));
            encoded.push('\n');
        }
        encoded.push_str(&STANDARD.encode(key.expose()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                Error::master_key(format!("creating master key file {}: {e}", path.display()))
            })?;
        file.write_all(encoded.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                Error::master_key(format!("writing master key file {}: {e}", path.display()))
            })?;
        Ok(Self(key))
    }

    pub(super) fn key(&self) -> &SecretKey {
        &self.0
    }
}

/// Refuses a secret file (`what`: "master key file", "passphrase file")
/// that group or others may read or write, naming the fix.
pub(super) fn check_private(path: &Path, what: &str) -> Result<()> {
    let shown = path.display();
    let mode = fs::metadata(path)
        .map_err(|e| Error::master_key(format!("{what} {shown}: {e}")))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::master_key(format!(
            "{what} {shown} is readable or writable by group or others \
             (mode {:o}); run: chmod 600 {shown}",
            mode & 0o777
        )));
    }
    Ok(())
}

const DEPLOYMENT_LINE: &str = "# aitokens root key for deployment ";

/// A key file's contents. Its `Debug` shows the deployment, never the key.
pub struct KeyFile {
    /// The key.
    pub key: RootKey,
    /// The deployment it was created for, when the file says.
    pub deployment: Option<Vec<u8>>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("key", &"[REDACTED]")
            .field("deployment", &self.deployment.as_deref().map(hex_encode))
            .finish()
    }
}

/// Lowercase hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
