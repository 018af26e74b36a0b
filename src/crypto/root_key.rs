//! The root ("master") key: loaded once from a key file, held in zeroizing memory.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use zeroize::Zeroizing;

use super::{KEY_LEN, SecretKey};
use crate::error::{Error, Result};

/// The key that seals the keyring. Never printed, zeroized on drop.
#[derive(Debug)]
pub struct RootKey(SecretKey);

impl RootKey {
    /// Reads a key file: exactly 32 raw bytes, or those 32 bytes in base64
    /// (surrounding whitespace ignored). The file must not be readable by
    /// group or others.
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display();
        let meta = fs::metadata(path)
            .map_err(|e| Error::Startup(format!("master key file {shown}: {e}")))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::Startup(format!(
                "master key file {shown} is readable or writable by group or others \
                 (mode {:o}); run: chmod 600 {shown}",
                meta.permissions().mode() & 0o777
            )));
        }
        let contents = Zeroizing::new(
            fs::read(path).map_err(|e| Error::Startup(format!("master key file {shown}: {e}")))?,
        );
        Self::from_file_contents(&contents).ok_or_else(|| {
            Error::Startup(format!(
                "master key file {shown} must hold exactly {KEY_LEN} bytes, raw or base64"
            ))
        })
    }

    fn from_file_contents(contents: &[u8]) -> Option<Self> {
        if let Some(key) = SecretKey::from_slice(contents) {
            return Some(Self(key));
        }
        let text = std::str::from_utf8(contents).ok()?.trim();
        let decoded = Zeroizing::new(STANDARD.decode(text).ok()?);
        SecretKey::from_slice(&decoded).map(Self)
    }

    /// Creates a new key file (mode 0600, base64) holding a fresh random key.
    /// Fails if the file exists: a master key is never overwritten.
    pub fn create_file(path: &Path) -> Result<Self> {
        let key = SecretKey::generate()?;
        let encoded = Zeroizing::new(STANDARD.encode(key.expose()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                Error::Startup(format!("creating master key file {}: {e}", path.display()))
            })?;
        file.write_all(encoded.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                Error::Startup(format!("writing master key file {}: {e}", path.display()))
            })?;
        Ok(Self(key))
    }

    pub(super) fn key(&self) -> &SecretKey {
        &self.0
    }
}
