//! The SQLite store: one writer connection (on the blocking pool), a few
//! reader threads that own a read-only connection each, WAL with
//! `synchronous=FULL` and `secure_delete=ON` asserted on every connection.

mod audit;
mod backup;
mod bindings;
mod events;
mod impls;
mod keyring;
mod lock;
mod readers;
mod schema;
mod tokens;
mod transfer;
mod usage;

use std::{
    fs,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, RwLock},
    thread,
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use readers::ReadPool;
use schema::MIGRATIONS;

pub use lock::{DbLock, Hold};

use super::AuditMirror;
use crate::{
    crypto::chain::ChainKey,
    error::{Error, Result},
    model::AuditEvent,
};

/// How long a connection waits on a lock before reporting busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often, and how far apart, a TRUNCATE checkpoint is retried while
/// readers pin the write-ahead log.
const CHECKPOINT_TRIES: u32 = 100;
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(5);

/// Reader threads (and connections): one per core (more only park and wake
/// more often; the benchmark showed futex traffic growing with idle
/// readers), at least two, at most four.
fn reader_count() -> usize {
    thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        // rusqlite errors name SQL and constraint text, never bound parameters.
        Self::Storage(e.to_string())
    }
}

/// SQLite-backed implementation of every store trait.
pub struct SqliteStore {
    inner: Arc<Inner>,
    readers: ReadPool,
}

struct Inner {
    path: PathBuf,
    mirror: Option<Arc<dyn AuditMirror>>,
    /// The key audit records are linked under (see [`AuditLog::use_chain_key`]).
    chain: RwLock<Option<Arc<ChainKey>>>,
    /// `None` for a store opened read-only (verification, backups).
    writer: Option<Mutex<Connection>>,
    /// Held while the store is open (see [`DbLock`]); `None` read-only.
    _lock: Option<DbLock>,
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the database at `path`, applies
    /// pending migrations and checks its integrity, holding its lock shared
    /// (beside servers and other such commands) until dropped. Blocking.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_held(path, Hold::Shared)
    }

    /// Like [`SqliteStore::open`], holding the database alone: refused while
    /// a server or another command holds it (restore, rekey, shred). Blocking.
    pub fn open_exclusive(path: &Path) -> Result<Self> {
        Self::open_held(path, Hold::Exclusive)
    }

    fn open_held(path: &Path, hold: Hold) -> Result<Self> {
        let lock = DbLock::acquire(path, hold)?;
        create_private_file(path)?;
        let writer = Connection::open(path).map_err(|e| open_error(path, &e))?;
        configure(&writer)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::database(format!(
                "database {}: could not enable WAL mode (got {mode})",
                path.display()
            )));
        }
        migrate(&writer, path)?;
        let integrity: String = writer.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if integrity != "ok" {
            return Err(Error::database(format!(
                "database {} failed its integrity check: {integrity}",
                path.display()
            )));
        }
        Self::with_readers(path, Some((writer, lock)))
    }

    /// Opens an existing database for reading only: nothing is created,
    /// migrated or written. Refuses a schema newer than this build. Blocking.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::database(format!(
                "database {}: no such file",
                path.display()
            )));
        }
        let store = Self::with_readers(path, None)?;
        let version: i64 =
            read_only_connection(path)?.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if usize::try_from(version).map_or(true, |v| v > MIGRATIONS.len()) {
            return Err(newer_schema(path, version));
        }
        Ok(store)
    }

    fn with_readers(path: &Path, writer: Option<(Connection, DbLock)>) -> Result<Self> {
        let connections = (0..reader_count())
            .map(|_| {
                let conn = read_only_connection(path)?;
                configure(&conn)?;
                Ok(conn)
            })
            .collect::<Result<Vec<_>>>()?;
        let (writer, lock) = writer.unzip();
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                mirror: None,
                chain: RwLock::new(None),
                writer: writer.map(Mutex::new),
                _lock: lock,
            }),
            readers: ReadPool::new(connections)?,
        })
    }

    /// Hands every committed audit record to `mirror` as well.
    pub fn with_audit_mirror(mut self, mirror: Arc<dyn AuditMirror>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.mirror = Some(mirror);
        }
        self
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` on a reader thread.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.readers.run(work).await
    }

    /// Runs `work` with the writer connection on the blocking pool.
    async fn on_writer<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| work(&*inner.writer()?)))
            .await
            .map_err(|e| Error::Internal(format!("store task failed: {e}")))?
    }

    /// Runs `work` in one write transaction, appends the audit events it
    /// returns in that same transaction (so a change that cannot be audited
    /// does not happen), commits, then hands the records to the mirror.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<(T, Vec<AuditEvent>)> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        self.on_writer(move |conn| {
            // IMMEDIATE: take the write lock before the first read, so a
            // read-then-write (the audit head, an etag check) cannot be raced
            // by another process sharing the file (the CLI beside a server).
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            let (value, events) = work(&tx)?;
            let records = audit::append(&tx, inner.chain_key().as_deref(), &events)?;
            tx.commit()?;
            if let Some(mirror) = &inner.mirror
                && !records.is_empty()
            {
                mirror.committed(&records);
            }
            Ok(value)
        })
        .await
    }
}

impl Inner {
    fn chain_key(&self) -> Option<Arc<ChainKey>> {
        self.chain.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn writer(&self) -> Result<MutexGuard<'_, Connection>> {
        let writer = self
            .writer
            .as_ref()
            .ok_or_else(|| Error::Internal("this database was opened read-only".into()))?;
        // A panic while holding the lock cannot leave SQLite inconsistent (a
        // dropped transaction rolls back), so a poisoned lock is still usable.
        Ok(writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// Resets the write-ahead log so deleted pages do not linger in it.
/// TRUNCATE returns busy while a reader holds a snapshot: retry, and say so
/// in the log if it never succeeds (the next removal tries again).
fn truncate_wal(conn: &Connection) -> Result<()> {
    // No busy handler while checkpointing: a long outside reader must cost
    // a few short retries, not 5 s each with every writer waiting.
    conn.busy_timeout(Duration::ZERO)?;
    let outcome = (|| {
        for _ in 0..CHECKPOINT_TRIES {
            let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
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

fn read_only_connection(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags).map_err(|e| open_error(path, &e))
}

fn open_error(path: &Path, e: &rusqlite::Error) -> Error {
    Error::database(format!("opening database {}: {e}", path.display()))
}

fn newer_schema(path: &Path, version: i64) -> Error {
    Error::database(format!(
        "database {} has schema version {version}, newer than this build knows ({}); \
         upgrade aitokens",
        path.display(),
        MIGRATIONS.len()
    ))
}

/// Creates a database file with mode 0600 before SQLite sees it (SQLite
/// gives its -wal and -shm files the database file's mode), and tightens the
/// mode of an existing file that is open to others.
fn create_private_file(path: &Path) -> Result<()> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::database(format!("opening database {}: {e}", path.display())))?;
    let mode = file
        .metadata()
        .map_err(|e| Error::database(format!("database {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "database file was open to others; setting mode 0600");
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::database(format!("chmod 600 {}: {e}", path.display())))?;
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
        return Err(Error::database(format!(
            "SQLite refused required settings (synchronous={synchronous}, \
             secure_delete={secure_delete}, foreign_keys={foreign_keys})"
        )));
    }
    Ok(())
}

fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = usize::try_from(version).map_err(|_| newer_schema(path, version))?;
    if known > MIGRATIONS.len() {
        return Err(newer_schema(path, version));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(known) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(feature = "testkit")]
impl SqliteStore {
    /// Inserts sealed tokens in one transaction, unaudited (see
    /// [`crate::testkit`]).
    pub(crate) async fn bulk_insert(
        &self,
        rows: Vec<(crate::model::TokenRecord, crate::model::SealedValue)>,
    ) -> Result<()> {
        self.write(move |tx| {
            for (record, sealed) in &rows {
                tokens::insert(tx, record, sealed, None)?;
            }
            Ok(((), Vec::new()))
        })
        .await
    }
}
