//! The store the suite runs against: SQLite files (the default) or, with
//! `AITOKENS_TEST_STORE=postgres`, a fresh PostgreSQL database per test on
//! the server `AITOKENS_TEST_PG` names (default the local one). `.ci/run`
//! runs the whole suite once per backend.
//!
//! Tests that reach into the database behind the server's back (what an
//! attacker with write access does) use [`BackDoor`], which speaks to
//! either backend.

use std::{
    ops::Deref,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use aitokens::{config::Config, store::postgres::scratch::ScratchDatabase};
use tempfile::TempDir;

/// Whether this run's store is PostgreSQL.
pub fn postgres() -> bool {
    match std::env::var("AITOKENS_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("AITOKENS_TEST_STORE={other}: use sqlite or postgres"),
    }
}

/// A test's store.
#[derive(Clone)]
pub enum TestStore {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A scratch PostgreSQL database, dropped with the last handle.
    Postgres(Arc<ScratchDatabase>),
}

impl TestStore {
    /// The store a fresh data folder at `dir` gets: `aitokens.db` in it,
    /// or a new PostgreSQL database.
    pub fn new_for(dir: &Path) -> Self {
        if postgres() {
            Self::Postgres(Arc::new(scratch()))
        } else {
            Self::Sqlite(dir.join("aitokens.db"))
        }
    }

    /// A store named `file` in `dir` (SQLite), or a new scratch database.
    pub fn named(dir: &Path, file: &str) -> Self {
        if postgres() {
            Self::Postgres(Arc::new(scratch()))
        } else {
            Self::Sqlite(dir.join(file))
        }
    }

    /// Points the `[store]` table of a config file at this store.
    pub fn configure_toml(&self, store: &mut toml::Table) {
        match self {
            Self::Sqlite(path) => {
                store.remove("url");
                store.insert("database".into(), path.display().to_string().into());
            }
            Self::Postgres(db) => {
                store.remove("database");
                store.insert("url".into(), db.url().into());
            }
        }
    }

    /// Points `config` at this store.
    pub fn configure(&self, config: &mut Config) {
        match self {
            Self::Sqlite(path) => {
                config.store.database = path.clone();
                config.store.url = None;
            }
            Self::Postgres(db) => {
                config.store.database = PathBuf::new();
                config.store.url = Some(db.url().to_owned());
            }
        }
    }

    /// How `--store`, `--db` and `--from`/`--to` name it.
    pub fn spec(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite:{}", path.display()),
            Self::Postgres(db) => db.url().to_owned(),
        }
    }

    /// A copy of this store as it is now (the server must be stopped): the
    /// SQLite file with its WAL, or a PostgreSQL database made from this
    /// one as a template.
    pub async fn copy(&self, name: &str) -> Self {
        match self {
            Self::Sqlite(path) => {
                let to = path.with_file_name(name);
                std::fs::copy(path, &to).expect("copy database");
                let wal = PathBuf::from(format!("{}-wal", path.display()));
                if wal.exists() {
                    std::fs::copy(&wal, format!("{}-wal", to.display())).expect("copy wal");
                }
                Self::Sqlite(to)
            }
            Self::Postgres(db) => {
                // Async, so that this runtime closes connections being
                // dropped meanwhile (a template must have none).
                let copy = ScratchDatabase::copy_of(db.name()).await;
                Self::Postgres(Arc::new(copy.expect("copy the scratch database")))
            }
        }
    }

    /// A connection behind the server's back.
    pub async fn back_door(&self) -> BackDoor {
        match self {
            Self::Sqlite(path) => BackDoor::Sqlite(
                rusqlite::Connection::open(path).expect("open the database behind its back"),
            ),
            Self::Postgres(db) => {
                let client = db
                    .target()
                    .expect("target")
                    .connect_one()
                    .await
                    .expect("connect behind its back");
                // Not named like a server: the commands that must run
                // alone count connections named `aitokens`.
                client
                    .batch_execute("SET application_name = 'aitokens-test-back-door'")
                    .await
                    .expect("name the back door");
                BackDoor::Postgres(client)
            }
        }
    }
}

/// A point in the store's history, for [`TestStore::at_rest`].
pub struct Mark(Option<String>);

impl TestStore {
    /// Where the write-ahead log is now (PostgreSQL; SQLite keeps its own).
    pub async fn mark(&self) -> Mark {
        match self {
            Self::Sqlite(_) => Mark(None),
            Self::Postgres(_) => {
                let door = self.back_door().await;
                Mark(Some(
                    door.value("SELECT pg_current_wal_lsn()::text", &[])
                        .await
                        .text(),
                ))
            }
        }
    }

    /// Every byte the store holds on disk, by file: the SQLite file with
    /// its WAL and shared memory; or, for PostgreSQL (after a checkpoint),
    /// every file of the database's directory and the server's write-ahead
    /// log written since `since` (read through the server, which owns them).
    pub async fn at_rest(&self, since: &Mark) -> Vec<(String, Vec<u8>)> {
        match self {
            Self::Sqlite(db) => ["", "-wal", "-shm"]
                .iter()
                .filter_map(|suffix| {
                    let path = format!("{}{suffix}", db.display());
                    std::fs::read(&path).ok().map(|bytes| (path, bytes))
                })
                .collect(),
            Self::Postgres(_) => {
                let door = self.back_door().await;
                door.batch("CHECKPOINT").await;
                let base = format!(
                    "base/{}",
                    door.value(
                        "SELECT oid::bigint FROM pg_database WHERE datname = current_database()",
                        &[],
                    )
                    .await
                    .int()
                );
                let names: std::collections::HashMap<String, String> = door
                    .query(
                        "SELECT pg_relation_filepath(oid), relname FROM pg_class
                         WHERE pg_relation_filepath(oid) IS NOT NULL",
                        &[],
                    )
                    .await
                    .into_iter()
                    .map(|r| (r[0].text(), r[1].text()))
                    .collect();
                let mut files = Vec::new();
                for row in door
                    .query("SELECT f FROM pg_ls_dir($1) AS f", &[base.as_str().into()])
                    .await
                {
                    let file = format!("{base}/{}", row[0].text());
                    let relation = file.split('_').next().and_then(|f| names.get(f));
                    let path = match relation {
                        Some(name) => format!("{file} ({name})"),
                        None => file.clone(),
                    };
                    let bytes = door
                        .value(
                            "SELECT pg_read_binary_file($1, 0, 536870912, true)",
                            &[file.as_str().into()],
                        )
                        .await;
                    if let Val::Bytes(bytes) = bytes {
                        files.push((path, bytes));
                    }
                }
                let start = since.0.as_deref().expect("a PostgreSQL mark");
                let at = |lsn: &str| {
                    let lsn = lsn.to_owned();
                    let door = &door;
                    async move {
                        let row = &door
                            .query(
                                "SELECT file_name, file_offset::bigint
                                 FROM pg_walfile_name_offset($1::text::pg_lsn)",
                                &[lsn.as_str().into()],
                            )
                            .await[0];
                        (row[0].text(), row[1].int())
                    }
                };
                let (first, first_offset) = at(start).await;
                let now = door
                    .value("SELECT pg_current_wal_lsn()::text", &[])
                    .await
                    .text();
                let (last, last_offset) = at(&now).await;
                let segments = door
                    .query(
                        "SELECT name FROM pg_ls_waldir() WHERE name >= $1 AND name <= $2
                         AND length(name) = 24 ORDER BY name",
                        &[first.as_str().into(), last.as_str().into()],
                    )
                    .await;
                for row in segments {
                    let name = row[0].text();
                    let from = if name == first { first_offset } else { 0 };
                    let to = if name == last { last_offset } else { 1 << 29 };
                    let bytes = door
                        .value(
                            "SELECT pg_read_binary_file($1, $2, $3, true)",
                            &[
                                format!("pg_wal/{name}").as_str().into(),
                                from.into(),
                                (to - from).max(0).into(),
                            ],
                        )
                        .await;
                    if let Val::Bytes(bytes) = bytes {
                        files.push((format!("pg_wal/{name}"), bytes));
                    }
                }
                files
            }
        }
    }
}

impl TestStore {
    /// Asserts that the store is consistent on disk: SQLite's integrity
    /// check, or amcheck over every B-tree index and its table (PostgreSQL).
    pub async fn assert_intact(&self) {
        let door = self.back_door().await;
        match self {
            Self::Sqlite(_) => {
                assert_eq!(door.value("PRAGMA integrity_check", &[]).await.text(), "ok")
            }
            Self::Postgres(_) => {
                door.batch("CREATE EXTENSION IF NOT EXISTS amcheck").await;
                let checked = door
                    .query(
                        "SELECT c.relname, bt_index_check(c.oid, true)::text
                         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                         JOIN pg_am a ON a.oid = c.relam
                         WHERE a.amname = 'btree' AND c.relnamespace = 'public'::regnamespace",
                        &[],
                    )
                    .await;
                assert!(
                    checked.len() >= 5,
                    "amcheck looked at {} indexes",
                    checked.len()
                );
            }
        }
    }
}

/// A new PostgreSQL database with no schema (for `pg_restore`).
pub fn empty_postgres() -> TestStore {
    TestStore::Postgres(Arc::new(
        on_a_thread(ScratchDatabase::create_empty()).expect("an empty scratch database"),
    ))
}

impl TestStore {
    /// What the store holds, as bytes that change whenever its keyring or
    /// any token row does: the SQLite file, or those rows (PostgreSQL).
    pub async fn fingerprint(&self) -> Vec<u8> {
        match self {
            Self::Sqlite(path) => std::fs::read(path).expect("read the database"),
            Self::Postgres(_) => {
                let door = self.back_door().await;
                let mut bytes = Vec::new();
                for sql in [
                    "SELECT deployment_id, key_check, current_version FROM keyring",
                    "SELECT version, sealed FROM keks ORDER BY version",
                    "SELECT uid, tenant, token_id, display_name, revision, disabled, kek_version,
                            wrapped_data_key, value_ciphertext FROM tokens ORDER BY seq",
                ] {
                    for row in door.query(sql, &[]).await {
                        bytes.extend(format!("{row:?}\n").into_bytes());
                    }
                }
                bytes
            }
        }
    }
}

fn scratch() -> ScratchDatabase {
    on_a_thread(ScratchDatabase::create()).expect("a scratch PostgreSQL database")
}

/// Runs `future` to completion on a thread of its own (callable from sync
/// code inside a runtime).
fn on_a_thread<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    })
    .join()
    .expect("thread")
}

/// A temp data folder and the store that goes with it: both live as long
/// as this does, across server restarts.
pub struct DataFolder {
    pub dir: TempDir,
    pub store: TestStore,
}

impl DataFolder {
    /// A new temp folder and a new store for it.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TestStore::new_for(dir.path());
        Self { dir, store }
    }
}

impl Deref for DataFolder {
    type Target = TempDir;
    fn deref(&self) -> &TempDir {
        &self.dir
    }
}

/// A column value, for [`BackDoor`].
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Val {
    pub fn int(&self) -> i64 {
        match self {
            Self::Int(i) => *i,
            other => panic!("not an integer: {other:?}"),
        }
    }
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Bytes(b) => b.clone(),
            other => panic!("not bytes: {other:?}"),
        }
    }
    pub fn text(&self) -> String {
        match self {
            Self::Text(t) => t.clone(),
            other => panic!("not text: {other:?}"),
        }
    }
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}
impl From<i64> for Val {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}
impl From<Vec<u8>> for Val {
    fn from(b: Vec<u8>) -> Self {
        Self::Bytes(b)
    }
}
impl From<&[u8]> for Val {
    fn from(b: &[u8]) -> Self {
        Self::Bytes(b.to_vec())
    }
}

/// The database behind the server's back, as someone with write access to
/// it sees it. SQL is written once, with `$1`-style parameters, in the
/// dialect both engines share.
pub enum BackDoor {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl BackDoor {
    /// Turns off what an attacker does not respect: foreign keys, and the
    /// triggers that keep the audit trail append-only.
    pub async fn ignore_guards(&self) {
        match self {
            Self::Sqlite(conn) => {
                conn.pragma_update(None, "foreign_keys", false)
                    .expect("foreign keys off");
                conn.execute_batch(
                    "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
                )
                .expect("drop the audit triggers");
            }
            Self::Postgres(client) => client
                .batch_execute("SET session_replication_role = replica")
                .await
                .expect("triggers and foreign keys off"),
        }
    }

    /// Puts the audit trail's guards back (after [`BackDoor::ignore_guards`]).
    pub async fn restore_guards(&self) {
        match self {
            Self::Sqlite(conn) => conn
                .execute_batch(
                    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
                         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
                     CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
                         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
                )
                .expect("restore the audit triggers"),
            Self::Postgres(client) => client
                .batch_execute("SET session_replication_role = origin")
                .await
                .expect("triggers back on"),
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub async fn execute(&self, sql: &str, params: &[Val]) -> u64 {
        match self {
            Self::Sqlite(conn) => conn
                .execute(
                    &sqlite_sql(sql),
                    rusqlite::params_from_iter(params.iter().map(sqlite_val)),
                )
                .unwrap_or_else(|e| panic!("{sql}: {e}")) as u64,
            Self::Postgres(client) => {
                let statement = client
                    .prepare(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                let bound = pg_params(statement.params(), params);
                client
                    .execute(&statement, &pg_refs(&bound))
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }

    /// Runs several statements without parameters.
    pub async fn batch(&self, sql: &str) {
        match self {
            Self::Sqlite(conn) => conn
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Self::Postgres(client) => client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// The rows of a query.
    pub async fn query(&self, sql: &str, params: &[Val]) -> Vec<Vec<Val>> {
        match self {
            Self::Sqlite(conn) => {
                let mut statement = conn
                    .prepare(&sqlite_sql(sql))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                let columns = statement.column_count();
                statement
                    .query_map(
                        rusqlite::params_from_iter(params.iter().map(sqlite_val)),
                        |row| {
                            (0..columns)
                                .map(|i| {
                                    Ok(match row.get_ref(i)? {
                                        rusqlite::types::ValueRef::Null => Val::Null,
                                        rusqlite::types::ValueRef::Integer(i) => Val::Int(i),
                                        rusqlite::types::ValueRef::Real(r) => Val::Int(r as i64),
                                        rusqlite::types::ValueRef::Text(t) => {
                                            Val::Text(String::from_utf8_lossy(t).into_owned())
                                        }
                                        rusqlite::types::ValueRef::Blob(b) => {
                                            Val::Bytes(b.to_vec())
                                        }
                                    })
                                })
                                .collect()
                        },
                    )
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .collect::<Result<_, _>>()
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            Self::Postgres(client) => {
                let statement = client
                    .prepare(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                let bound = pg_params(statement.params(), params);
                let rows = client
                    .query(&statement, &pg_refs(&bound))
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// The single value of a query that returns one row.
    pub async fn value(&self, sql: &str, params: &[Val]) -> Val {
        let rows = self.query(sql, params).await;
        assert_eq!(rows.len(), 1, "{sql}: one row expected");
        rows[0][0].clone()
    }
}

/// `$1` → `?1` (SQLite's `$NAME` parameters would be numbered by first
/// appearance, not by their digits).
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn sqlite_val(v: &Val) -> rusqlite::types::Value {
    match v {
        Val::Null => rusqlite::types::Value::Null,
        Val::Int(i) => rusqlite::types::Value::Integer(*i),
        Val::Text(t) => rusqlite::types::Value::Text(t.clone()),
        Val::Bytes(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

type PgParam = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// Each value as the type the statement's parameter has.
fn pg_params(types: &[tokio_postgres::types::Type], params: &[Val]) -> Vec<PgParam> {
    use tokio_postgres::types::Type;
    assert_eq!(types.len(), params.len(), "parameter count");
    types
        .iter()
        .zip(params)
        .map(|(ty, v)| -> PgParam {
            match (v, ty) {
                (Val::Null, _) => Box::new(None::<String>),
                (Val::Int(i), &Type::INT4) => Box::new(i32::try_from(*i).expect("fits INT4")),
                (Val::Int(i), &Type::BOOL) => Box::new(*i != 0),
                (Val::Int(i), _) => Box::new(*i),
                (Val::Text(t), _) => Box::new(t.clone()),
                (Val::Bytes(b), _) => Box::new(b.clone()),
            }
        })
        .collect()
}

fn pg_refs(bound: &[PgParam]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    bound
        .iter()
        .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

fn pg_row(row: &tokio_postgres::Row) -> Vec<Val> {
    use tokio_postgres::types::Type;
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, column)| match *column.type_() {
            Type::INT2 => opt(row.get::<_, Option<i16>>(i).map(|v| Val::Int(v.into()))),
            Type::INT4 => opt(row.get::<_, Option<i32>>(i).map(|v| Val::Int(v.into()))),
            Type::INT8 => opt(row.get::<_, Option<i64>>(i).map(Val::Int)),
            Type::BOOL => opt(row.get::<_, Option<bool>>(i).map(|v| Val::Int(v.into()))),
            Type::BYTEA => opt(row.get::<_, Option<Vec<u8>>>(i).map(Val::Bytes)),
            _ => opt(row.get::<_, Option<String>>(i).map(Val::Text)),
        })
        .collect()
}

fn opt(v: Option<Val>) -> Val {
    v.unwrap_or(Val::Null)
}

/// Waits up to `limit` for `check` to hold, polling.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
