//! The domain: tokens, their rules, and the operations on them.
//!
//! No gRPC and no SQL in here. Handlers parse names with [`TokenName`] and
//! [`TenantId`], authorize the caller, then call [`Tokens`]; [`Tokens`]
//! enforces the rules (validation, uniqueness, etags, immutable values),
//! seals and opens values through the [`Keyring`], and persists through a
//! [`TokenStore`], always off the async executor.

mod names;
mod page;
mod readers;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use zeroize::Zeroizing;

use readers::ReadPool;

pub use names::{ID_RULE, TenantId, TokenId, TokenName};
pub use page::PageCursor;

use crate::{
    crypto::{Keyring, TokenUid},
    error::{Error, Result},
    store::TokenStore,
};

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size; larger requests are clamped to it.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A token's metadata, as stored. Never holds the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// Internal immutable id; binds the ciphertexts to this row.
    pub uid: TokenUid,
    /// Creation sequence within the store: the stable listing order.
    pub seq: i64,
    /// Tenant and token id.
    pub name: TokenName,
    /// Human-readable label.
    pub display_name: String,
    /// When the token was created.
    pub create_time: SystemTime,
    /// When the id or display name last changed.
    pub update_time: SystemTime,
    /// Bumped on every metadata change; the etag is derived from it.
    pub revision: i64,
}

impl TokenRecord {
    /// The opaque etag clients use for conditional changes (AIP-154).
    /// Derived from the immutable uid and the revision, so a removed and
    /// re-created token never shares an etag with its predecessor.
    pub fn etag(&self) -> String {
        let uid = self.uid.as_bytes();
        let prefix = u32::from_be_bytes([uid[0], uid[1], uid[2], uid[3]]);
        format!("{prefix:08x}-{}", self.revision)
    }
}

/// One page of a listing.
#[derive(Debug)]
pub struct TokenPage {
    /// Tokens in creation order.
    pub tokens: Vec<TokenRecord>,
    /// Where the next page starts, if there is one.
    pub next: Option<PageCursor>,
}

/// A change requested by RenameToken.
#[derive(Debug, Default)]
pub struct Rename {
    /// New display name, if any.
    pub display_name: Option<String>,
    /// New token id, if any.
    pub new_token_id: Option<String>,
    /// Required current etag, if any.
    pub etag: Option<String>,
}

/// A token value in memory: zeroized on drop, never printed.
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Takes ownership of `value` without copying it.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value, for sealing or for the one response that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Moves the value out (for the ResolveToken response, which zeroizes
    /// its own copy on drop).
    pub fn into_string(mut self) -> String {
        std::mem::take(&mut *self.0)
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue([REDACTED])")
    }
}

/// The token operations, over a store and an unsealed keyring.
#[derive(Clone)]
pub struct Tokens {
    store: Arc<dyn TokenStore>,
    keyring: Arc<Keyring>,
    /// Runs reads (get, list, resolve) off the executor without a thread
    /// wake-up per request; writes use the blocking pool.
    readers: Arc<ReadPool>,
}

/// Reader threads: one per core (more only park and wake more often; the
/// benchmark showed futex traffic growing with idle readers), at most the
/// SQLite store's four reader connections.
fn reader_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

impl Tokens {
    /// Operations over `store`, sealing with `keyring`.
    pub fn new(store: Arc<dyn TokenStore>, keyring: Arc<Keyring>) -> Result<Self> {
        Ok(Self {
            store,
            keyring,
            readers: Arc::new(ReadPool::new(reader_threads())?),
        })
    }

    /// Validates, seals and stores a new token.
    pub async fn create(
        &self,
        tenant: TenantId,
        token_id: &str,
        display_name: &str,
        value: SecretValue,
    ) -> Result<TokenRecord> {
        let token_id = validate_new_token(token_id, display_name, &value)?;
        let now = now();
        let record = TokenRecord {
            uid: TokenUid::generate()?,
            seq: 0,
            name: TokenName { tenant, token_id },
            display_name: display_name.to_owned(),
            create_time: now,
            update_time: now,
            revision: 1,
        };
        let (store, keyring) = (self.store.clone(), self.keyring.clone());
        blocking(move || {
            let sealed = keyring.seal_value(
                record.name.tenant.as_str(),
                &record.uid,
                value.expose().as_bytes(),
            )?;
            drop(value);
            store.insert(record, &sealed)
        })
        .await
    }

    /// A token's metadata.
    pub async fn get(&self, name: TokenName) -> Result<TokenRecord> {
        let store = self.store.clone();
        self.readers
            .run(move || store.get(&name)?.ok_or(Error::NotFound))
            .await
    }

    /// One page of a tenant's tokens, in creation order.
    pub async fn list(
        &self,
        tenant: TenantId,
        page_size: i32,
        page_token: &str,
    ) -> Result<TokenPage> {
        let limit = match usize::try_from(page_size) {
            Err(_) => return Err(Error::invalid("page_size", "must not be negative")),
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) => n.min(MAX_PAGE_SIZE),
        };
        let after_seq = PageCursor::decode(page_token, &tenant)?.map_or(0, |c| c.after_seq);
        let store = self.store.clone();
        self.readers
            .run(move || {
                let mut tokens = store.list(&tenant, after_seq, limit + 1)?;
                let next = if tokens.len() > limit {
                    tokens.truncate(limit);
                    tokens.last().map(|last| PageCursor {
                        tenant,
                        after_seq: last.seq,
                    })
                } else {
                    None
                };
                Ok(TokenPage { tokens, next })
            })
            .await
    }

    /// Changes a token's display name and/or id, optionally only at `etag`.
    pub async fn rename(&self, name: TokenName, change: Rename) -> Result<TokenRecord> {
        if change.display_name.is_none() && change.new_token_id.is_none() {
            return Err(Error::invalid(
                "display_name",
                "set display_name or new_token_id (or both)",
            ));
        }
        if let Some(display_name) = &change.display_name {
            validate_display_name(display_name, "display_name")?;
        }
        let new_token_id = change
            .new_token_id
            .as_deref()
            .map(|id| TokenId::new(id, "new_token_id"))
            .transpose()?;
        let store = self.store.clone();
        blocking(move || {
            store.update(&name, &mut |current| {
                check_etag(current, change.etag.as_deref())?;
                let mut updated = current.clone();
                if let Some(display_name) = &change.display_name {
                    updated.display_name.clone_from(display_name);
                }
                if let Some(token_id) = &new_token_id {
                    updated.name.token_id = token_id.clone();
                }
                updated.update_time = now();
                updated.revision += 1;
                Ok(updated)
            })
        })
        .await
    }

    /// Removes a token and its sealed value, optionally only at `etag`.
    pub async fn remove(&self, name: TokenName, etag: Option<String>) -> Result<()> {
        let store = self.store.clone();
        blocking(move || store.delete(&name, &mut |current| check_etag(current, etag.as_deref())))
            .await
    }

    /// Opens a token's value. The caller has been authorized already.
    pub async fn resolve(&self, name: TokenName) -> Result<SecretValue> {
        let (store, keyring) = (self.store.clone(), self.keyring.clone());
        self.readers
            .run(move || {
                let (record, sealed) = store.get_sealed(&name)?.ok_or(Error::NotFound)?;
                let mut plain =
                    keyring.open_value(record.name.tenant.as_str(), &record.uid, &sealed)?;
                // Values are stored as UTF-8 text; `from_utf8` takes the buffer
                // without copying it, and SecretValue zeroizes it from here on.
                let text = String::from_utf8(std::mem::take(&mut *plain)).map_err(|e| {
                    let mut bytes = e.into_bytes();
                    zeroize::Zeroize::zeroize(&mut bytes);
                    Error::DataLoss
                })?;
                Ok(SecretValue::new(text))
            })
            .await
    }
}

/// The checks CreateToken makes before anything is sealed or stored: the
/// token id, the display name and the value. Public so that fuzzing and
/// property tests drive exactly the code the server runs.
pub fn validate_new_token(
    token_id: &str,
    display_name: &str,
    value: &SecretValue,
) -> Result<TokenId> {
    let token_id = TokenId::new(token_id, "token_id")?;
    validate_display_name(display_name, "token.display_name")?;
    validate_value(value)?;
    Ok(token_id)
}

fn check_etag(current: &TokenRecord, expected: Option<&str>) -> Result<()> {
    match expected {
        Some(etag) if etag != current.etag() => Err(Error::Aborted),
        _ => Ok(()),
    }
}

fn validate_display_name(display_name: &str, field: &'static str) -> Result<()> {
    let chars = display_name.chars().count();
    if chars == 0 || chars > MAX_DISPLAY_NAME_CHARS {
        return Err(Error::invalid(field, "must be 1 to 256 characters"));
    }
    Ok(())
}

fn validate_value(value: &SecretValue) -> Result<()> {
    let len = value.expose().len();
    if len == 0 || len > MAX_VALUE_BYTES {
        return Err(Error::invalid("value", "must be 1 byte to 64 KiB"));
    }
    Ok(())
}

/// The current time, truncated to whole microseconds so that it survives the
/// store's round trip unchanged.
fn now() -> SystemTime {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH + Duration::from_micros(since_epoch.as_micros() as u64)
}

/// Runs store and crypto work on the blocking pool, never on the executor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}
