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
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Transaction, params};

use super::{CheckFn, TokenStore, UpdateFn, schema::MIGRATIONS};
use crate::{
    crypto::{KeyringRecords, SealedValue, TokenUid},
    error::{Error, Result},
    tokens::{TenantId, TokenId, TokenName, TokenRecord},
};

/// Reader connections in the pool.
const READERS: usize = 4;
/// How long a connection waits on a lock before reporting busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often, and how far apart, a TRUNCATE checkpoint is retried while
/// readers pin the write-ahead log.
const CHECKPOINT_TRIES: u32 = 100;
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(5);

const TOKEN_COLUMNS: &str =
    "seq, uid, tenant, token_id, display_name, create_us, update_us, revision";

/// SQLite-backed [`TokenStore`].
pub struct SqliteStore {
    path: PathBuf,
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
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Inserts sealed tokens in one transaction: all or none (a taken id
    /// fails the batch with `AlreadyExists`). For bulk loading, such as the
    /// benchmark's seeding; the records' `seq` fields are ignored.
    pub fn insert_batch(&self, rows: &[(TokenRecord, SealedValue)]) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(INSERT_TOKEN)?;
            for (record, sealed) in rows {
                insert_row(&mut stmt, record, sealed)?;
            }
        }
        tx.commit()?;
        Ok(())
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

    /// Resets the write-ahead log so deleted pages do not linger in it.
    /// TRUNCATE returns busy while a reader holds a snapshot: retry, and say
    /// so in the log if it never succeeds (the next removal tries again).
    fn truncate_wal(conn: &Connection) -> Result<()> {
        for _ in 0..CHECKPOINT_TRIES {
            let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            if busy == 0 {
                return Ok(());
            }
            thread::sleep(CHECKPOINT_PAUSE);
        }
        tracing::warn!(
            "WAL checkpoint stayed busy; removed data may linger in the WAL until the next one"
        );
        Ok(())
    }
}

impl TokenStore for SqliteStore {
    fn keyring(&self) -> Result<Option<KeyringRecords>> {
        let conn = self.reader();
        let Some((deployment_id, key_check, current_version)) = conn
            .query_row(
                "SELECT deployment_id, key_check, current_version FROM keyring WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
        else {
            return Ok(None);
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
        }))
    }

    fn init_keyring(&self, records: &KeyringRecords) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO keyring (id, deployment_id, key_check, current_version) VALUES (1, ?1, ?2, ?3)",
            params![records.deployment_id, records.key_check, records.current_version],
        )?;
        for (version, sealed) in &records.sealed_keks {
            tx.execute(
                "INSERT INTO keks (version, sealed) VALUES (?1, ?2)",
                params![version, sealed],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn insert(&self, mut record: TokenRecord, sealed: &SealedValue) -> Result<TokenRecord> {
        let conn = self.writer();
        insert_row(&mut conn.prepare_cached(INSERT_TOKEN)?, &record, sealed)?;
        record.seq = conn.last_insert_rowid();
        Ok(record)
    }

    fn get(&self, name: &TokenName) -> Result<Option<TokenRecord>> {
        let conn = self.reader();
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE tenant = ?1 AND token_id = ?2");
        let mut stmt = conn.prepare_cached(&sql)?;
        let record = stmt
            .query_row(
                params![name.tenant.as_str(), name.token_id.as_str()],
                token_from_row,
            )
            .optional()?;
        record.transpose()
    }

    fn get_sealed(&self, name: &TokenName) -> Result<Option<(TokenRecord, SealedValue)>> {
        let conn = self.reader();
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, kek_version, wrapped_data_key, value_ciphertext
             FROM tokens WHERE tenant = ?1 AND token_id = ?2"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let row = stmt
            .query_row(params![name.tenant.as_str(), name.token_id.as_str()], |r| {
                // A key version no KEK could have (negative, or beyond u32)
                // was written behind our back: data loss, like any other
                // tampered encrypted field, not a store failure.
                let kek_version: i64 = r.get(8)?;
                let sealed = u32::try_from(kek_version).map_err(|_| Error::DataLoss).map(
                    |kek_version| -> rusqlite::Result<SealedValue> {
                        Ok(SealedValue {
                            kek_version,
                            wrapped_data_key: r.get(9)?,
                            value_ciphertext: r.get(10)?,
                        })
                    },
                );
                let sealed = match sealed {
                    Ok(read) => Ok(read?),
                    Err(e) => Err(e),
                };
                Ok(token_from_row(r)?.and_then(|record| Ok((record, sealed?))))
            })
            .optional()?;
        row.transpose()
    }

    fn list(&self, tenant: &TenantId, after_seq: i64, limit: usize) -> Result<Vec<TokenRecord>> {
        let conn = self.reader();
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE tenant = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![tenant.as_str(), after_seq, limit as i64],
            token_from_row,
        )?;
        rows.map(|row| row?).collect()
    }

    fn update(&self, name: &TokenName, change: &mut UpdateFn<'_>) -> Result<TokenRecord> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let current = select_for_write(&tx, name)?;
        let updated = change(&current)?;
        tx.execute(
            "UPDATE tokens SET token_id = ?2, display_name = ?3, update_us = ?4, revision = ?5
             WHERE seq = ?1",
            params![
                current.seq,
                updated.name.token_id.as_str(),
                updated.display_name,
                micros(updated.update_time),
                updated.revision,
            ],
        )
        .map_err(unique_to_already_exists)?;
        tx.commit()?;
        Ok(updated)
    }

    fn delete(&self, name: &TokenName, check: &mut CheckFn<'_>) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let current = select_for_write(&tx, name)?;
        check(&current)?;
        tx.execute("DELETE FROM tokens WHERE seq = ?1", params![current.seq])?;
        tx.commit()?;
        Self::truncate_wal(&conn)
    }
}

const INSERT_TOKEN: &str = "INSERT INTO tokens (uid, tenant, token_id, display_name, create_us,
                         update_us, revision, kek_version, wrapped_data_key, value_ciphertext)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

fn insert_row(
    stmt: &mut rusqlite::CachedStatement<'_>,
    record: &TokenRecord,
    sealed: &SealedValue,
) -> Result<()> {
    stmt.execute(params![
        record.uid.as_bytes(),
        record.name.tenant.as_str(),
        record.name.token_id.as_str(),
        record.display_name,
        micros(record.create_time),
        micros(record.update_time),
        record.revision,
        sealed.kek_version,
        sealed.wrapped_data_key,
        sealed.value_ciphertext,
    ])
    .map_err(unique_to_already_exists)?;
    Ok(())
}

fn select_for_write(tx: &Transaction<'_>, name: &TokenName) -> Result<TokenRecord> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE tenant = ?1 AND token_id = ?2");
    tx.query_row(
        &sql,
        params![name.tenant.as_str(), name.token_id.as_str()],
        token_from_row,
    )
    .optional()?
    .ok_or(Error::NotFound)?
}

/// Reads the metadata columns; a row that violates the domain's rules (it
/// was edited behind our back) is data loss, not a panic.
fn token_from_row(r: &Row<'_>) -> rusqlite::Result<Result<TokenRecord>> {
    let uid: Vec<u8> = r.get(1)?;
    let tenant: String = r.get(2)?;
    let token_id: String = r.get(3)?;
    let record = (|| {
        Ok(TokenRecord {
            seq: r.get(0)?,
            uid: TokenUid::from_slice(&uid).ok_or(Error::DataLoss)?,
            name: TokenName {
                tenant: TenantId::new(&tenant, "tenant").map_err(|_| Error::DataLoss)?,
                token_id: TokenId::new(&token_id, "token_id").map_err(|_| Error::DataLoss)?,
            },
            display_name: r.get(4)?,
            create_time: from_micros(r.get(5)?),
            update_time: from_micros(r.get(6)?),
            revision: r.get(7)?,
        })
    })();
    Ok(record)
}

fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

fn unique_to_already_exists(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => Error::AlreadyExists,
        _ => e.into(),
    }
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
