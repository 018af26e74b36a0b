//! The SQLite store: one writer connection, a few readers, WAL with
//! `synchronous=FULL`, `secure_delete=ON` asserted on every connection.

use std::{
    fs,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

pub use audit::{AuditVerdict, verify_audit_file};

use super::{
    AuditFilter, BindingRecord, RemovalContext, RemoveFn, RewrapBatch, RewrapFn, SealedToken,
    TokenStore, UpdateFn, schema::MIGRATIONS,
};
use crate::{
    audit::{AuditEvent, AuditRecord, JsonlSink},
    crypto::{KdfParams, KeyringRecords, SealedValue, TokenUid},
    error::{Error, Result},
    tokens::{BindingId, TenantId, TokenId, TokenName, TokenRecord, UsageBatch, UsageStats},
};

mod activity;
mod audit;
mod tokens;

/// Reader connections in the pool.
const READERS: usize = 4;
/// How long a connection waits on a lock before reporting busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often, and how far apart, a TRUNCATE checkpoint is retried while
/// readers pin the write-ahead log.
const CHECKPOINT_TRIES: u32 = 100;
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(5);

/// SQLite-backed [`TokenStore`].
pub struct SqliteStore {
    path: PathBuf,
    audit_mirror: Option<JsonlSink>,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the database at `path`, applies
    /// pending migrations and checks its integrity.
    pub fn open(path: &Path) -> Result<Self> {
        create_private_file(path)?;
        let writer = Connection::open(path).map_err(|e| open_error(path, &e))?;
        configure(&writer)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Startup(format!(
                "database {}: could not enable WAL mode (got {mode})",
                path.display()
            )));
        }
        migrate(&writer, path)?;
        let integrity: String = writer.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if integrity != "ok" {
            return Err(Error::Startup(format!(
                "database {} failed its integrity check: {integrity}",
                path.display()
            )));
        }
        let readers = (0..READERS)
            .map(|_| {
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn =
                    Connection::open_with_flags(path, flags).map_err(|e| open_error(path, &e))?;
                configure(&conn)?;
                Ok(Mutex::new(conn))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            path: path.to_owned(),
            audit_mirror: None,
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Mirrors every committed audit record to a JSON-lines file.
    pub fn with_audit_mirror(mut self, sink: JsonlSink) -> Self {
        self.audit_mirror = Some(sink);
        self
    }

    /// Inserts sealed tokens in one transaction: all or none (a taken id
    /// fails the batch with `AlreadyExists`). For bulk loading, such as the
    /// benchmark's seeding; the records' `seq` fields are ignored. Not
    /// audited: it is not an admin mutation of a serving deployment.
    pub fn insert_batch(&self, rows: &[(TokenRecord, SealedValue)]) -> Result<()> {
        self.write(|tx| {
            for (record, sealed) in rows {
                tokens::insert(tx, record, sealed, None)?;
            }
            Ok(((), Vec::new()))
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (a
        // dropped transaction rolls back), so a poisoned lock is still usable.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..READERS {
            if let Ok(conn) = self.readers[(start + i) % READERS].try_lock() {
                return conn;
            }
        }
        self.readers[start % READERS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` in one write transaction, appends the audit events it
    /// returns in that same transaction (so a change that cannot be audited
    /// does not happen), commits, then mirrors the events to the JSON sink.
    fn write<T>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<(T, Vec<AuditEvent>)>,
    ) -> Result<T> {
        let mut conn = self.writer();
        // IMMEDIATE: take the write lock before the first read, so a
        // read-then-write (the audit head, an etag check) cannot be raced by
        // another process sharing the file (the CLI beside a server).
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (value, events) = work(&tx)?;
        let records = audit::append(&tx, &events)?;
        tx.commit()?;
        drop(conn);
        if let Some(mirror) = &self.audit_mirror {
            mirror.write(&records);
        }
        Ok(value)
    }

    /// Resets the write-ahead log so deleted pages do not linger in it.
    /// TRUNCATE returns busy while a reader holds a snapshot: retry, and say
    /// so in the log if it never succeeds (the next removal tries again).
    fn truncate_wal(&self) -> Result<()> {
        let conn = self.writer();
        // No busy handler while checkpointing: a long outside reader must
        // cost a few short retries, not 5 s each with every writer waiting.
        conn.busy_timeout(Duration::ZERO)?;
        let outcome = (|| {
            for _ in 0..CHECKPOINT_TRIES {
                let busy: i64 =
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
                if busy == 0 {
                    return Ok(true);
                }
                thread::sleep(CHECKPOINT_PAUSE);
            }
            Ok::<_, Error>(false)
        })();
        conn.busy_timeout(BUSY_TIMEOUT)?;
        if !outcome? {
            tracing::warn!(
                "WAL checkpoint stayed busy; removed data may linger in the WAL until the next one"
            );
        }
        Ok(())
    }
}

impl TokenStore for SqliteStore {
    fn keyring(&self) -> Result<Option<KeyringRecords>> {
        let conn = self.reader();
        type Row = (
            Vec<u8>,
            Vec<u8>,
            u32,
            Option<Vec<u8>>,
            Option<u32>,
            Option<u32>,
            Option<u32>,
        );
        let Some((deployment_id, key_check, current_version, salt, m_kib, t, p)): Option<Row> = conn
            .query_row(
                "SELECT deployment_id, key_check, current_version, kdf_salt, kdf_m_kib, kdf_t, kdf_p
                 FROM keyring WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .optional()?
        else {
            return Ok(None);
        };
        let kdf = match (salt, m_kib, t, p) {
            (Some(salt), Some(m_kib), Some(t), Some(p)) => Some(KdfParams { salt, m_kib, t, p }),
            (None, None, None, None) => None,
            _ => {
                return Err(Error::Startup(
                    "the keyring's passphrase parameters are incomplete".into(),
                ));
            }
        };
        let mut stmt = conn.prepare("SELECT version, sealed FROM keks ORDER BY version")?;
        let sealed_keks = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(KeyringRecords {
            deployment_id,
            key_check,
            current_version,
            sealed_keks,
            kdf,
        }))
    }

    fn init_keyring(&self, records: &KeyringRecords) -> Result<()> {
        let kdf = records.kdf.as_ref();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO keyring (id, deployment_id, key_check, current_version,
                                      kdf_salt, kdf_m_kib, kdf_t, kdf_p)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    records.deployment_id,
                    records.key_check,
                    records.current_version,
                    kdf.map(|k| &k.salt),
                    kdf.map(|k| k.m_kib),
                    kdf.map(|k| k.t),
                    kdf.map(|k| k.p),
                ],
            )
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    Error::Startup("the database already has a keyring (it is initialized)".into())
                }
                _ => e.into(),
            })?;
            for (version, sealed) in &records.sealed_keks {
                tx.execute(
                    "INSERT INTO keks (version, sealed) VALUES (?1, ?2)",
                    params![version, sealed],
                )?;
            }
            Ok(((), Vec::new()))
        })
    }

    fn insert(
        &self,
        mut record: TokenRecord,
        sealed: &SealedValue,
        replaces: Option<&TokenId>,
        events: &[AuditEvent],
    ) -> Result<TokenRecord> {
        self.write(|tx| {
            record.seq = tokens::insert(tx, &record, sealed, replaces)?;
            Ok((tokens::get_for_write(tx, &record.name)?, events.to_vec()))
        })
    }

    fn get(&self, name: &TokenName) -> Result<Option<TokenRecord>> {
        tokens::get(&self.reader(), name)
    }

    fn get_sealed(&self, name: &TokenName) -> Result<Option<SealedToken>> {
        tokens::get_sealed(&self.reader(), name)
    }

    fn change_generation(&self) -> Result<i64> {
        Ok(self
            .reader()
            .prepare_cached("SELECT generation FROM token_changes WHERE id = 1")?
            .query_row([], |r| r.get(0))?)
    }

    fn list(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: usize,
        unused_since_us: Option<i64>,
    ) -> Result<Vec<TokenRecord>> {
        tokens::list(&self.reader(), tenant, after_seq, limit, unused_since_us)
    }

    fn update(&self, name: &TokenName, change: &mut UpdateFn<'_>) -> Result<TokenRecord> {
        self.write(|tx| {
            let current = tokens::get_for_write(tx, name)?;
            let (updated, events) = change(&current)?;
            tokens::update(tx, &current, &updated)?;
            Ok((tokens::get_for_write(tx, &updated.name)?, events))
        })
    }

    fn delete(&self, name: &TokenName, decide: &mut RemoveFn<'_>) -> Result<()> {
        self.write(|tx| {
            let current = tokens::get_for_write(tx, name)?;
            let context = RemovalContext {
                bindings: activity::bindings_of(tx, current.uid.as_bytes())?,
                usage: activity::usage(tx, &current.uid)?,
            };
            let events = decide(&current, &context)?;
            tokens::delete(tx, &current)?;
            Ok(((), events))
        })?;
        // The removal is committed (and audited): a failed erasure step must
        // not report it as failed. The next removal or VACUUM retries it.
        if let Err(e) = self.truncate_wal() {
            tracing::error!(error = %e, "WAL truncation after a removal failed");
        }
        Ok(())
    }

    fn usage(&self, uid: &TokenUid) -> Result<Vec<(String, UsageStats)>> {
        activity::usage(&self.reader(), uid)
    }

    fn flush(&self, batch: &UsageBatch, events: &[AuditEvent]) -> Result<()> {
        self.write(|tx| {
            activity::add_usage(tx, batch)?;
            Ok(((), events.to_vec()))
        })
    }

    fn create_binding(
        &self,
        token: &TokenName,
        binding: &BindingRecord,
        events: &[AuditEvent],
    ) -> Result<()> {
        self.write(|tx| {
            activity::create_binding(tx, token, binding)?;
            Ok(((), events.to_vec()))
        })
    }

    fn list_bindings(&self, token: &TokenName) -> Result<Vec<BindingRecord>> {
        activity::list_bindings(&self.reader(), token)
    }

    fn delete_binding(
        &self,
        token: &TokenName,
        binding_id: &BindingId,
        events: &[AuditEvent],
    ) -> Result<()> {
        self.write(|tx| {
            activity::delete_binding(tx, token, binding_id)?;
            Ok(((), events.to_vec()))
        })
    }

    fn list_audit(
        &self,
        filter: &AuditFilter,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        audit::list(&self.reader(), filter, after_seq, limit)
    }

    fn kek_usage(&self) -> Result<Vec<(u32, i64)>> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT k.version, (SELECT count(*) FROM tokens t WHERE t.kek_version = k.version)
             FROM keks k ORDER BY k.version",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn add_kek(
        &self,
        expected: &KeyringRecords,
        version: u32,
        sealed: &[u8],
        events: &[AuditEvent],
    ) -> Result<()> {
        self.write(|tx| {
            ensure_keyring_unchanged(tx, expected)?;
            tx.execute(
                "INSERT INTO keks (version, sealed) VALUES (?1, ?2)",
                params![version, sealed],
            )?;
            tx.execute(
                "UPDATE keyring SET current_version = ?1 WHERE id = 1",
                params![version],
            )?;
            Ok(((), events.to_vec()))
        })
    }

    fn rewrap_batch(
        &self,
        current: u32,
        after_seq: i64,
        limit: usize,
        rewrap: &mut RewrapFn<'_>,
    ) -> Result<RewrapBatch> {
        self.write(|tx| {
            // (seq, tenant, token id, uid, KEK version, wrapped data key)
            type Row = (i64, String, String, Vec<u8>, u32, Vec<u8>);
            let rows: Vec<Row> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT seq, tenant, token_id, uid, kek_version, wrapped_data_key FROM tokens
                     WHERE kek_version != ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![current, after_seq, limit as i64], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut update = tx.prepare_cached(
                "UPDATE tokens SET kek_version = ?2, wrapped_data_key = ?3
                 WHERE seq = ?1 AND kek_version = ?4",
            )?;
            let mut batch = RewrapBatch {
                scanned: rows.len(),
                last_seq: rows.last().map_or(after_seq, |r| r.0),
                ..RewrapBatch::default()
            };
            for (seq, tenant, token_id, uid, from, wrapped) in &rows {
                let rewrapped = TokenUid::from_slice(uid)
                    .ok_or(Error::DataLoss)
                    .and_then(|uid| rewrap(tenant, &uid, *from, wrapped));
                match rewrapped {
                    Ok(rewrapped) => {
                        update.execute(params![seq, current, rewrapped, from])?;
                        batch.moved += 1;
                    }
                    Err(Error::DataLoss) => {
                        batch
                            .damaged
                            .push((*seq, format!("tenants/{tenant}/tokens/{token_id}")));
                    }
                    Err(other) => return Err(other),
                }
            }
            Ok((batch, Vec::new()))
        })
    }

    fn destroy_kek(&self, version: u32, events: &[AuditEvent]) -> Result<()> {
        self.write(|tx| {
            let current: u32 = tx.query_row(
                "SELECT current_version FROM keyring WHERE id = 1",
                [],
                |r| r.get(0),
            )?;
            let used: i64 = tx.query_row(
                "SELECT count(*) FROM tokens WHERE kek_version = ?1",
                params![version],
                |r| r.get(0),
            )?;
            if version == current || used > 0 {
                return Err(Error::FailedPrecondition {
                    reason: "KEK_IN_USE",
                    message: "this KEK version is current or still wraps data keys; \
                              rotate and wait for the re-wrap job",
                    violations: Vec::new(),
                });
            }
            tx.execute("DELETE FROM keks WHERE version = ?1", params![version])?;
            Ok(((), events.to_vec()))
        })?;
        self.vacuum()
    }

    fn replace_keyring(
        &self,
        expected: &KeyringRecords,
        records: &KeyringRecords,
        events: &[AuditEvent],
    ) -> Result<()> {
        let kdf = records.kdf.as_ref();
        self.write(|tx| {
            ensure_keyring_unchanged(tx, expected)?;
            tx.execute(
                "UPDATE keyring SET key_check = ?1, current_version = ?2,
                        kdf_salt = ?3, kdf_m_kib = ?4, kdf_t = ?5, kdf_p = ?6 WHERE id = 1",
                params![
                    records.key_check,
                    records.current_version,
                    kdf.map(|k| &k.salt),
                    kdf.map(|k| k.m_kib),
                    kdf.map(|k| k.t),
                    kdf.map(|k| k.p),
                ],
            )?;
            for (version, sealed) in &records.sealed_keks {
                let changed = tx.execute(
                    "UPDATE keks SET sealed = ?2 WHERE version = ?1",
                    params![version, sealed],
                )?;
                if changed != 1 {
                    return Err(Error::Internal(format!(
                        "KEK version {version} vanished during rekey"
                    )));
                }
            }
            Ok(((), events.to_vec()))
        })?;
        self.truncate_wal()
    }

    fn count(&self) -> Result<u64> {
        let conn = self.reader();
        let count: i64 = conn.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn checkpoint(&self) -> Result<()> {
        self.truncate_wal()
    }

    fn vacuum(&self) -> Result<()> {
        let conn = self.writer();
        conn.execute_batch("VACUUM")?;
        drop(conn);
        self.truncate_wal()
    }

    fn backup(&self, dest: &Path) -> Result<()> {
        backup_to(&self.reader(), dest)
    }

    fn scan_sealed(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TokenName, SealedToken)>> {
        tokens::scan_sealed(&self.reader(), after_seq, limit)
    }
}

/// Compare-and-swap guard for keyring changes: the stored key check,
/// current version and set of KEK versions must be what the caller read.
fn ensure_keyring_unchanged(tx: &Transaction<'_>, expected: &KeyringRecords) -> Result<()> {
    let (check, current): (Vec<u8>, u32) = tx.query_row(
        "SELECT key_check, current_version FROM keyring WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let versions: Vec<u32> = {
        let mut stmt = tx.prepare("SELECT version FROM keks ORDER BY version")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let expected_versions: Vec<u32> = expected.sealed_keks.iter().map(|(v, _)| *v).collect();
    if check != expected.key_check
        || current != expected.current_version
        || versions != expected_versions
    {
        return Err(Error::FailedPrecondition {
            reason: "KEYRING_CHANGED",
            message: "the keyring changed meanwhile (another rotation or rekey); check `aitokens keys status` and retry",
            violations: Vec::new(),
        });
    }
    Ok(())
}

/// Copies the database `source` reads to `dest` with SQLite's online backup
/// API, in one step: a single read snapshot, so writers elsewhere neither
/// wait for it nor make it start over. The copy is synced before it counts.
fn backup_to(source: &Connection, dest: &Path) -> Result<()> {
    create_private_file(dest)?;
    let mut target = Connection::open(dest)?;
    {
        use rusqlite::backup::StepResult;
        let backup = rusqlite::backup::Backup::new(source, &mut target)?;
        // All pages in one step (-1): one read snapshot of the source.
        let mut tries = 0;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::Busy | StepResult::Locked if tries < 200 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(25));
                }
                other => {
                    return Err(Error::Storage(format!(
                        "online backup did not finish: {other:?}"
                    )));
                }
            }
        }
    }
    target.execute_batch("PRAGMA journal_mode = DELETE;")?;
    drop(target);
    fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Startup(format!("syncing {}: {e}", dest.display())))?;
    Ok(())
}

/// Backs up the database at `path` (opened read-only: no migration, no
/// check, nothing written to it) to `dest`, while a server may serve it.
pub fn backup_file(path: &Path, dest: &Path) -> Result<()> {
    let source = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| open_error(path, &e))?;
    source.busy_timeout(BUSY_TIMEOUT)?;
    backup_to(&source, dest)
}

fn open_error(path: &Path, e: &rusqlite::Error) -> Error {
    Error::Startup(format!("opening database {}: {e}", path.display()))
}

/// Creates the database file with mode 0600 before SQLite sees it (SQLite
/// gives its -wal and -shm files the database file's mode), and tightens the
/// mode of an existing file that is open to others.
fn create_private_file(path: &Path) -> Result<()> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Startup(format!("opening database {}: {e}", path.display())))?;
    let mode = file
        .metadata()
        .map_err(|e| Error::Startup(format!("database {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "database file was open to others; setting mode 0600");
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Startup(format!("chmod 600 {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Per-connection settings, set and then read back: a build or a connection
/// that silently ignores one of them must not serve.
fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA secure_delete = ON;
         PRAGMA foreign_keys = ON;",
    )?;
    let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    let secure_delete: i64 = conn.query_row("PRAGMA secure_delete", [], |r| r.get(0))?;
    let foreign_keys: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    if (synchronous, secure_delete, foreign_keys) != (2, 1, 1) {
        return Err(Error::Startup(format!(
            "SQLite refused required settings (synchronous={synchronous}, \
             secure_delete={secure_delete}, foreign_keys={foreign_keys})"
        )));
    }
    Ok(())
}

fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(Error::Startup(format!(
            "database {} has schema version {version}, newer than this build knows ({}); \
             upgrade aitokens",
            path.display(),
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_has_the_required_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("t.db")).expect("open");
        for conn in std::iter::once(&store.writer).chain(&store.readers) {
            let conn = conn.lock().expect("lock");
            let sd: i64 = conn
                .query_row("PRAGMA secure_delete", [], |r| r.get(0))
                .expect("pragma");
            let sync: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .expect("pragma");
            assert_eq!((sd, sync), (1, 2));
        }
        let mode = fs::metadata(store.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn flushed_usage_adds_to_what_is_stored() {
        use crate::crypto::{Keyring, RootKey};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("t.db")).expect("open");
        let root = RootKey::create_file(&dir.path().join("k")).expect("root key");
        let (keyring, records) = Keyring::create(&root).expect("keyring");
        store.init_keyring(&records).expect("init");
        let name = TokenName::parse("tenants/acme/tokens/t", "name").expect("name");
        let uid = TokenUid::generate().expect("uid");
        let now = std::time::SystemTime::now();
        let record = TokenRecord {
            uid,
            seq: 0,
            name: name.clone(),
            display_name: "t".into(),
            create_time: now,
            update_time: now,
            revision: 1,
            disabled: false,
            replaces: None,
            replaced_by: None,
            last_resolve: None,
            resolve_count: 0,
        };
        let sealed = keyring.seal_value("acme", &uid, b"v").expect("seal");
        store.insert_batch(&[(record, sealed)]).expect("insert");
        let delta = |first, last, denied: Option<i64>| UsageStats {
            first_resolve_us: first,
            last_resolve_us: last,
            resolve_count: i64::from(first.is_some()),
            denied_count: i64::from(denied.is_some()),
            last_denied_us: denied,
            superseded_count: 0,
            last_superseded_us: None,
        };
        let flush = |stats: UsageStats| {
            let batch = UsageBatch {
                by_uid: vec![(uid, "spiffe://a".to_owned(), stats)],
                by_name: Vec::new(),
            };
            store.flush(&batch, &[]).expect("flush");
        };
        flush(delta(None, None, Some(50)));
        flush(delta(Some(30), Some(40), None));
        flush(delta(Some(10), Some(20), Some(45)));
        let stored = store.usage(&uid).expect("usage");
        assert_eq!(stored.len(), 1);
        let s = stored[0].1;
        assert_eq!(
            (s.first_resolve_us, s.last_resolve_us, s.resolve_count),
            (Some(10), Some(40), 2)
        );
        assert_eq!((s.denied_count, s.last_denied_us), (2, Some(50)));
        assert_eq!((s.superseded_count, s.last_superseded_us), (0, None));
        // A removed token's counters are dropped, not an error.
        let gone = TokenUid::generate().expect("uid");
        let batch = UsageBatch {
            by_uid: vec![(gone, "spiffe://a".to_owned(), delta(Some(1), Some(1), None))],
            by_name: Vec::new(),
        };
        store.flush(&batch, &[]).expect("flush of a removed token");
        assert!(store.usage(&gone).expect("usage").is_empty());
    }

    #[test]
    fn reopening_keeps_the_schema_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        drop(SqliteStore::open(&path).expect("open"));
        let store = SqliteStore::open(&path).expect("reopen");
        let version: i64 = store
            .writer()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
