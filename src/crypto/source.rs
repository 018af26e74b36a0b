//! Where the root key comes from: a key file, an environment variable, or a
//! passphrase (from a file, standard input, or a no-echo terminal prompt —
//! never from the command line, which `ps` and shell history show).

use std::{io::BufRead, path::PathBuf};

use zeroize::Zeroizing;

use super::RootKey;
use crate::{
    error::{Error, Result},
    model::{KdfParams, KeyringRecords},
};

/// A configured root key source.
pub enum KeySource {
    /// A key file (32 bytes, raw or base64, mode 0600 or stricter).
    File(PathBuf),
    /// A key (base64) already taken out of environment variable `name`.
    Env {
        /// The variable's name, for messages.
        name: String,
        /// Its value; the variable itself was removed from the environment.
        value: Option<Zeroizing<String>>,
    },
    /// A passphrase file (its first line; mode 0600 or stricter).
    PassphraseFile(PathBuf),
    /// A passphrase on standard input (its first line).
    PassphraseStdin,
    /// A passphrase typed at a terminal prompt, not echoed.
    PassphrasePrompt,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "key file {}", path.display()),
            Self::Env { name, .. } => write!(f, "environment variable {name}"),
            Self::PassphraseFile(path) => write!(f, "passphrase file {}", path.display()),
            Self::PassphraseStdin => f.write_str("passphrase on stdin"),
            Self::PassphrasePrompt => f.write_str("passphrase prompt"),
        }
    }
}

/// What a source yields: a key, or a passphrase still to be stretched with
/// the parameters stored in the database.
pub enum RootMaterial {
    /// A ready key, and the deployment its file names, if any.
    Key(RootKey, Option<Vec<u8>>),
    /// A passphrase.
    Passphrase(Zeroizing<String>),
}

impl KeySource {
    /// Reads the key or passphrase.
    pub fn load(&self) -> Result<RootMaterial> {
        match self {
            Self::File(path) => {
                let file = RootKey::read_file(path)?;
                Ok(RootMaterial::Key(file.key, file.deployment))
            }
            Self::Env { name, value } => {
                let value = value.as_ref().ok_or_else(|| {
                    Error::master_key(format!("the master key variable {name} is not set"))
                })?;
                let key = RootKey::from_encoded(value.as_bytes()).ok_or_else(|| {
                    Error::master_key(format!(
                        "the master key variable {name} must hold 32 bytes in base64"
                    ))
                })?;
                Ok(RootMaterial::Key(key, None))
            }
            Self::PassphraseFile(path) => {
                super::root_key::check_private(path, "passphrase file")?;
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Error::master_key(format!("passphrase file {}: {e}", path.display()))
                })?);
                Ok(RootMaterial::Passphrase(first_line(&text)))
            }
            Self::PassphraseStdin => {
                let mut line = Zeroizing::new(String::new());
                std::io::stdin().lock().read_line(&mut line).map_err(|e| {
                    Error::master_key(format!("reading the passphrase from stdin: {e}"))
                })?;
                Ok(RootMaterial::Passphrase(first_line(&line)))
            }
            Self::PassphrasePrompt => {
                let typed = rpassword::prompt_password("aitokens passphrase: ").map_err(|e| {
                    Error::master_key(format!("reading the passphrase from the terminal: {e}"))
                })?;
                Ok(RootMaterial::Passphrase(Zeroizing::new(typed)))
            }
        }
    }
}

fn first_line(text: &str) -> Zeroizing<String> {
    Zeroizing::new(text.lines().next().unwrap_or_default().to_owned())
}

impl RootMaterial {
    /// The root key for an existing keyring: a key must meet a key-protected
    /// keyring, a passphrase a passphrase-protected one, and a key file that
    /// names a deployment must name this database's.
    pub fn unlock(self, records: &KeyringRecords) -> Result<RootKey> {
        match (self, &records.kdf) {
            (Self::Key(key, deployment), None) => {
                if let Some(id) = deployment
                    && id != records.deployment_id
                {
                    return Err(Error::master_key(format!(
                        "this database belongs to another deployment ({}), not the one the key file is for ({})",
                        super::hex_encode(&records.deployment_id),
                        super::hex_encode(&id)
                    )));
                }
                Ok(key)
            }
            (Self::Passphrase(passphrase), Some(params)) => {
                params.check()?;
                RootKey::from_passphrase(passphrase.as_bytes(), params)
            }
            (Self::Key(..), Some(_)) => Err(Error::master_key(
                "this database is protected by a passphrase, but a key was configured",
            )),
            (Self::Passphrase(_), None) => Err(Error::master_key(
                "this database is protected by a key file, but a passphrase was configured",
            )),
        }
    }

    /// Whether this key or passphrase opens the stored keyring `records`
    /// (its key check). A "new" root key that does is not new: whatever the
    /// old one opens, it opens too. Derives a passphrase key with the stored
    /// parameters, so it blocks like [`RootMaterial::unlock`].
    pub fn opens(&self, records: &KeyringRecords) -> Result<bool> {
        let derived;
        let root = match (self, &records.kdf) {
            (Self::Key(key, _), None) => key,
            (Self::Passphrase(passphrase), Some(params)) => {
                params.check()?;
                derived = RootKey::from_passphrase(passphrase.as_bytes(), params)?;
                &derived
            }
            (Self::Key(..), Some(_)) | (Self::Passphrase(_), None) => return Ok(false),
        };
        Ok(super::Keyring::open(root, records).is_ok())
    }

    /// The root key for a new keyring, and the KDF parameters to store with
    /// it when it comes from a passphrase.
    pub fn fresh(self) -> Result<(RootKey, Option<KdfParams>)> {
        match self {
            Self::Key(key, _) => Ok((key, None)),
            Self::Passphrase(passphrase) => {
                let params = KdfParams::generate()?;
                Ok((
                    RootKey::from_passphrase(passphrase.as_bytes(), &params)?,
                    Some(params),
                ))
            }
        }
    }
}
