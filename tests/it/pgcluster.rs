//! PostgreSQL clusters of a test's own, for tests that stop, kill or fail
//! over the database (never the shared server at 127.0.0.1:5432): `initdb`
//! in a temp dir, `postgres` on a free 127.0.0.1 port with trust
//! authentication, its socket in that dir. The server binaries come from
//! the distribution's server package (`/usr/lib/postgresql/N/bin`, or
//! `AITOKENS_PG_BIN`, or `PATH`). PostgreSQL refuses to run as root: as
//! root, every server binary runs as the `postgres` OS user (`runuser`),
//! over a temp dir handed to it.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use aitokens::store::{PgStore, PgTarget};
use tempfile::TempDir;

/// The OS user that runs the server binaries when this process is root.
const SERVER_USER: &str = "postgres";

/// The directory holding `initdb`, `pg_ctl`, `postgres`, `pg_basebackup`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AITOKENS_PG_BIN") {
        return PathBuf::from(dir);
    }
    // Debian and Ubuntu: /usr/lib/postgresql/VERSION/bin; the newest wins.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl): install the distribution's \
             PostgreSQL server package, or set AITOKENS_PG_BIN"
        )
    })
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A free TCP port on 127.0.0.1 (free when this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs server binary `program` of the package (as the server user when
/// root) with `args` in `cwd`; panics with its output unless it succeeds.
fn run(program: &str, args: &[&str], cwd: &Path) -> Output {
    let path = bin_dir().join(program);
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", SERVER_USER, "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    let out = command
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A temp dir the server user may write (handed over when root).
fn server_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    if running_as_root() {
        let out = Command::new("id")
            .args(["-u", SERVER_USER])
            .output()
            .expect("id -u postgres");
        let uid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!("running as root needs the OS user {SERVER_USER} to run PostgreSQL")
            });
        std::os::unix::fs::chown(dir.path(), Some(uid), None).expect("chown the cluster dir");
    }
    dir
}

/// A connection to the database at `url` (no pool).
pub async fn connect_url(url: &str) -> tokio_postgres::Client {
    PgTarget::parse(url, None)
        .expect("target")
        .connect_one()
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// One PostgreSQL server of a test: its data directory, port and log.
pub struct PgCluster {
    root: TempDir,
    pub port: u16,
}

impl PgCluster {
    /// `initdb` of a new cluster (trust authentication, superuser
    /// `postgres`) on a free port; not started.
    pub fn init() -> Self {
        let root = server_dir();
        let data = root.path().join("data");
        run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            root.path(),
        );
        Self {
            root,
            port: free_port(),
        }
    }

    /// A streaming standby of `primary` (which must be running):
    /// `pg_basebackup -R` into a new directory, on a free port; not started.
    pub fn standby_of(primary: &PgCluster) -> Self {
        let root = server_dir();
        let data = root.path().join("data");
        let port = primary.port.to_string();
        run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                data.to_str().expect("utf-8 path"),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            root.path(),
        );
        Self {
            root,
            port: free_port(),
        }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn data_arg(&self) -> String {
        self.data().display().to_string()
    }

    /// Writes `contents` as file `name` of the data directory, mode 0600,
    /// owned by the server's user (server keys, `pg_hba.conf`).
    pub fn install(&self, name: &str, contents: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data().join(name);
        std::fs::write(&path, contents).expect("write into the data directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if running_as_root() {
            let owner = std::fs::metadata(self.data()).expect("data dir");
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).expect("chown");
        }
        path
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        self.start_with("");
    }

    /// [`PgCluster::start`] with more server options (`-c name=value ...`).
    pub fn start_with(&self, extra: &str) {
        // fsync off: these tests kill processes, not machines; what a
        // process wrote survives in the page cache.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c full_page_writes=off -c max_connections=60 {extra}",
            self.port,
            self.root.path().display()
        );
        let log = self.root.path().join("server.log");
        run(
            "pg_ctl",
            &[
                "-D",
                &self.data_arg(),
                "-l",
                log.to_str().expect("utf-8 path"),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            self.root.path(),
        );
    }

    /// `pg_ctl stop -m mode` (smart, fast or immediate), waiting for it.
    pub fn stop(&self, mode: &str) {
        run(
            "pg_ctl",
            &["-D", &self.data_arg(), "-m", mode, "-w", "-t", "60", "stop"],
            self.root.path(),
        );
    }

    /// `pg_ctl promote` of a standby, waiting until it accepts writes.
    pub fn promote(&self) {
        run(
            "pg_ctl",
            &["-D", &self.data_arg(), "-w", "-t", "60", "promote"],
            self.root.path(),
        );
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection to database `db` (retried for up to 30 s while the
    /// server comes up).
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let target = PgTarget::parse(&self.url(db), None).expect("target");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match target.connect_one().await {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for the test's PostgreSQL");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connecting to {}: {e}\n{}", self.url(db), self.log()),
            }
        }
    }

    /// Creates database `db` and applies aitokens' migrations to it.
    pub async fn create_database(&self, db: &str) {
        let created = async {
            let admin = self.connect("postgres").await;
            admin
                .batch_execute(&format!("CREATE DATABASE {db}"))
                .await
                .expect("create database");
            let target = PgTarget::parse(&self.url(db), None).expect("target");
            PgStore::migrate(&target).await.expect("migrate");
        };
        tokio::time::timeout(Duration::from_secs(60), created)
            .await
            .unwrap_or_else(|_| panic!("creating {db} took over 60 s:\n{}", self.log()));
    }

    /// Makes every commit on this primary wait for a standby
    /// (`synchronous_standby_names = '*'`, in this server's own settings,
    /// after the base backup: a promoted standby must not wait for one),
    /// and waits until its standby streams synchronously.
    pub async fn require_synchronous_standby(&self, standby: &PgCluster) {
        let client = self.connect("postgres").await;
        // Two statements: ALTER SYSTEM refuses to run in a multi-statement
        // batch (an implicit transaction).
        for sql in [
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "SELECT pg_reload_conf()",
        ] {
            client
                .batch_execute(sql)
                .await
                .expect("synchronous_standby_names");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = client
                .query("SELECT sync_state FROM pg_stat_replication", &[])
                .await
                .expect("pg_stat_replication");
            if rows.iter().any(|r| r.get::<_, String>(0) == "sync") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the standby never became synchronous:\n{}",
                standby.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Stopped already, or never started: pg_ctl says so, harmlessly.
        let path = bin_dir().join("pg_ctl");
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", SERVER_USER, "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = command
            .args(["-D", &self.data_arg(), "-m", "immediate", "-w", "stop"])
            .current_dir(self.root.path())
            .output();
    }
}

#[tokio::test]
async fn a_cluster_of_the_test_starts_stops_and_streams_to_a_synchronous_standby() {
    let primary = PgCluster::init();
    primary.start();
    let standby = PgCluster::standby_of(&primary);
    standby.start();
    primary.require_synchronous_standby(&standby).await;
    let client = primary.connect("postgres").await;
    let mode: String = client
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(mode, "*");
    client
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
        .await
        .expect("write on the primary");
    let read = standby.connect("postgres").await;
    let recovering: bool = read
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("query")
        .get(0);
    assert!(recovering, "the standby is in recovery");
    // Synchronous: the commit above waited for the standby to have it.
    let v: i32 = read
        .query_one("SELECT v FROM t", &[])
        .await
        .expect("replicated row")
        .get(0);
    assert_eq!(v, 7);
    drop((client, read));
    primary.stop("immediate");
    standby.promote();
    let promoted = standby.connect("postgres").await;
    promoted
        .batch_execute("INSERT INTO t VALUES (8)")
        .await
        .expect("the promoted standby takes writes (without waiting for a standby)");
}
