//! Throwaway databases for tests and benchmarks: each one a fresh
//! PostgreSQL database on the server `AITOKENS_TEST_PG` names (default: the
//! local one, `postgres://postgres@127.0.0.1:5432/postgres`), migrated, and
//! dropped again when its handle is dropped. Compiled into test builds and
//! the `testkit` feature only.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{PgStore, PgTarget, pg_error};
use crate::error::{Error, Result};

/// The server scratch databases are made on, as an admin URL.
pub fn admin_url() -> String {
    std::env::var("AITOKENS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Database names start with this, then the process id.
const PREFIX: &str = "aitokens_scratch_";

/// A fresh, migrated database, dropped with its handle.
pub struct ScratchDatabase {
    name: String,
    url: String,
    admin: String,
}

impl ScratchDatabase {
    /// Creates and migrates a new database. The first call of a process
    /// also drops the scratch databases of processes that no longer run.
    pub async fn create() -> Result<Self> {
        Self::create_on(&admin_url()).await
    }

    /// Like [`ScratchDatabase::create`], on the server `admin` (a URL of a
    /// database there, through which databases are created and dropped).
    pub async fn create_on(admin: &str) -> Result<Self> {
        let scratch = Self::create_empty_on(admin).await?;
        PgStore::migrate(&scratch.target()?).await?;
        Ok(scratch)
    }

    /// Creates a new database without any schema.
    pub async fn create_empty() -> Result<Self> {
        Self::create_empty_on(&admin_url()).await
    }

    async fn create_empty_on(admin_url: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let admin = PgTarget::parse(admin_url, None)?;
        let client = admin.connect_one().await?;
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            drop_orphans(&client, pid).await?;
        }
        let name = format!("{PREFIX}{pid}_{n}_{:08x}", fastrand::u32(..));
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(pg_error)?;
        let url = url_of(admin_url, &name)?;
        Ok(Self {
            name,
            url,
            admin: admin_url.to_owned(),
        })
    }

    /// A new scratch database holding a copy of `source` (a database
    /// nobody is connected to: PostgreSQL copies a template only then;
    /// waits up to 10 s for the last connections to close).
    pub async fn copy_of(source: &str) -> Result<Self> {
        let admin_url = admin_url();
        let admin = PgTarget::parse(&admin_url, None)?;
        let client = admin.connect_one().await?;
        let name = format!(
            "{PREFIX}{}_copy_{:08x}",
            std::process::id(),
            fastrand::u32(..)
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match client
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {source}"))
                .await
            {
                Ok(()) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for the template to be free");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => {
                    let holders = client
                        .query(
                            "SELECT application_name || ': ' || coalesce(query, '')
                             FROM pg_stat_activity WHERE datname = $1",
                            &[&source],
                        )
                        .await
                        .map_err(pg_error)?
                        .iter()
                        .map(|r| r.get::<_, String>(0))
                        .collect::<Vec<_>>();
                    return Err(Error::Storage(format!(
                        "{}; sessions: {holders:?}",
                        super::describe(&e)
                    )));
                }
            }
        }
        let url = url_of(&admin_url, &name)?;
        Ok(Self {
            name,
            url,
            admin: admin_url,
        })
    }

    /// The database's URL (no password: the scratch server trusts).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parsed target.
    pub fn target(&self) -> Result<PgTarget> {
        PgTarget::parse(&self.url, None)
    }

    /// Opens a store over it.
    pub async fn open(&self) -> Result<PgStore> {
        PgStore::open(self.target()?).await
    }
}

/// The URL of database `name` on the server of `admin`.
fn url_of(admin: &str, name: &str) -> Result<String> {
    let (base, query) = admin.split_once('?').unwrap_or((admin, ""));
    match base.rsplit_once('/') {
        Some((server, _)) if server.contains("://") && !server.ends_with('/') => {
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            Ok(format!("{server}/{name}{query}"))
        }
        _ => Err(Error::config(format!(
            "{}: name a database (postgres://USER@HOST[:PORT]/DB)",
            admin.split('@').next_back().unwrap_or_default()
        ))),
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let admin = std::mem::take(&mut self.admin);
        // Drop may run inside a runtime: do it on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let client = PgTarget::parse(&admin, None)
                    .ok()?
                    .connect_one()
                    .await
                    .ok()?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop a scratch database; the next run drops it");
        }
    }
}

/// Drops scratch databases whose process is gone.
async fn drop_orphans(client: &tokio_postgres::Client, pid: u32) -> Result<()> {
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&PREFIX],
        )
        .await
        .map_err(pg_error)?;
    for row in rows {
        let name: String = row.get(0);
        let owner = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive =
            owner.is_some_and(|p| p == pid || std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .map_err(pg_error)?;
        }
    }
    Ok(())
}
