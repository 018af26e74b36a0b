//! `aitokens-bench`: ResolveToken measured against the transport floor.
//! (`aitokens bench` runs this program.)
//!
//! The benchmark runs the real server as a child process (`aitokens serve
//! --config FILE`: both listeners, real mutual TLS, a real SQLite file in a
//! temp dir, or with `--store` a fresh PostgreSQL database), so that the server's CPU time and memory can be read from
//! `/proc/PID/stat` and `/proc/PID/status` apart from the load generator's.
//! Everything binds to and connects to 127.0.0.1; every load loop is bounded
//! in time and in count.
//!
//! Phases, in order:
//!
//! 1. **seed**: N tokens (`--tokens`) are sealed with the real keyring and
//!    written through the store in batches of one transaction each, before
//!    the server starts (much faster than N fsynced creates).
//! 2. **startup**: spawn to both listeners answering health checks.
//! 3. **resolve**: C callers (`--concurrency`) over a few HTTP/2 connections
//!    (`--connections`) resolve random tokens for T seconds after a warm-up.
//! 4. **floor**: the same load against `aitokens.bench.v1.Echo`, served by the
//!    same server on the same internal listener behind the same mTLS (turned
//!    on by `[bench] echo = true` in the config the benchmark writes).
//! 5. **create**: CreateToken throughput, one caller, then C callers.
//! 6. **replicas** (PostgreSQL only): a second server over the same
//!    database, and the resolve load spread over both.
//! 7. **catalog**: a second database with 100k tokens in one tenant: startup
//!    time, memory, ListTokens latency of the first page against a page 100k
//!    deep, and a resolve load over it.
//!
//! The report ends with a PASS/FAIL verdict per target ([`verdict`]),
//! computed from the unrounded figures; `aitokens-bench table --from FILE`
//! turns a run's JSON into the README's performance table ([`table`]).

mod load;
mod phases;
mod report;
mod seed;
mod server;
mod table;
mod verdict;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;

pub use report::{
    CatalogFigures, ListFigures, LoadFigures, Machine, Ratios, Report, SeedFigures, SetupFigures,
    render,
};

/// What went wrong in a run, for the person running it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run could not be set up (files, the server process, options).
    #[error("{0}")]
    Setup(String),
    /// Something failed while measuring.
    #[error("{0}")]
    Internal(String),
    /// The aitokens library refused.
    #[error(transparent)]
    Aitokens(#[from] aitokens::Error),
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest the server may take to answer health checks after spawning.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Page size of the ListTokens phase.
const LIST_PAGE: usize = 50;
/// Tenant of the resolve and create phases.
const TENANT: &str = "bench";
/// Tenant of the catalog phase.
const CATALOG_TENANT: &str = "catalog";

/// Options of `aitokens-bench` (and `aitokens bench`).
#[derive(Clone, Debug, Parser)]
#[command(
    name = "aitokens-bench",
    version,
    about = "Measure aitokens against its transport floor.",
    args_conflicts_with_subcommands = true
)]
pub struct Options {
    /// Instead of measuring: another task.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Tokens in the database of the resolve phases (at most 1,000,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub tokens: u64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// HTTP/2 connections the callers share (each a separate TLS session).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub connections: u64,
    /// Seconds of measured load per phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of unmeasured load before each measured phase.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Most requests of one measured load phase (a bound in count).
    #[arg(long, default_value_t = 5_000_000)]
    pub max_requests: u64,
    /// Most creates in each of the two CreateToken phases.
    #[arg(long, default_value_t = 2_000)]
    pub creates: u64,
    /// Tokens in the catalog phase's database (ListTokens depth, startup, RSS).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    pub catalog_tokens: u64,
    /// ListTokens calls per page position (first page, deep page).
    #[arg(long, default_value_t = 200)]
    pub list_calls: u64,
    /// Skip phases: any of resolve, create, catalog (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<Phase>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// RUST_LOG of the server process (its log goes to a file in the temp
    /// dir). It must keep `aitokens` at info: the bench reads the listening
    /// addresses from the "serving" line.
    #[arg(long, default_value = "info")]
    pub server_log: String,
    /// The aitokens binary to run as the server [default: the one that ran
    /// this program (`aitokens bench`), else `aitokens` beside it].
    #[arg(long, env = "AITOKENS_BENCH_SERVER_EXE")]
    pub server_exe: Option<PathBuf>,
    /// Run the server with usage tracking off (`[usage] track = false`), to
    /// measure what tracking costs on the resolve path.
    #[arg(long)]
    pub no_usage_tracking: bool,
    /// Memory for the server's resolve cache of sealed rows, in MiB
    /// (`[cache] max_mib`); 0 reads every resolve from the store.
    #[arg(long, default_value_t = aitokens::tokens::DEFAULT_CACHE_BYTES >> 20)]
    pub cache_mib: usize,
    /// Run every phase on PostgreSQL instead of SQLite:
    /// `postgres://USER@HOST[:PORT]/DB`, where the bench creates (and
    /// drops) a fresh database per phase; DB is the one it connects to for
    /// that. Adds a phase with two replicas behind the same load generator.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// What `aitokens-bench` can do besides measuring.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Print the README's performance table (markdown) from a run's JSON;
    /// its verdicts are recomputed from the figures.
    Table {
        /// The JSON a run wrote (`--json FILE`).
        #[arg(long)]
        from: PathBuf,
        /// Write the table into this markdown file instead, between its lines
        /// `<!-- begin bench table: NAME -->` (NAME: the file name of
        /// `--from`) and `<!-- end bench table -->`.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

/// A phase that `--skip` can leave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Resolve and floor.
    Resolve,
    /// CreateToken throughput.
    Create,
    /// The 100k-token catalog: startup, RSS, ListTokens depth.
    Catalog,
}

/// Runs the benchmark and prints its figures; writes JSON if asked.
pub async fn run(options: Options) -> Result<Report> {
    let exe = match &options.server_exe {
        Some(exe) => exe.clone(),
        None => server_beside_this_program()?,
    };
    if !(options.duration > 0.0 && options.warmup >= 0.0) {
        return Err(Error::Setup(
            "--duration must be positive and --warmup not negative".into(),
        ));
    }
    let mut report = Report {
        command: command_line(),
        machine: server::machine(),
        setup: SetupFigures {
            tokens: options.tokens,
            concurrency: options.concurrency,
            connections: options.connections,
            duration_s: options.duration,
            warmup_s: options.warmup,
            usage_tracking: !options.no_usage_tracking,
            cache_mib: options.cache_mib,
            store: match &options.store {
                Some(_) => "postgres".into(),
                None => "sqlite".into(),
            },
        },
        ..Report::default()
    };
    let bench = phases::Bench {
        exe,
        options: options.clone(),
    };

    if !(options.skip.contains(&Phase::Resolve) && options.skip.contains(&Phase::Create)) {
        bench.main_phases(&mut report).await?;
    }
    if !options.skip.contains(&Phase::Catalog) {
        report.catalog = Some(bench.catalog_phase().await?);
    }
    report.verdicts = verdict::verdicts(&report);

    print!("{}", render(&report));
    if let Some(path) = &options.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Internal(format!("JSON: {e}")))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| Error::Setup(format!("writing {}: {e}", path.display())))?;
    }
    Ok(report)
}

/// `aitokens-bench ARGS`: how this run was started, without the directory.
fn command_line() -> String {
    let mut words = vec!["aitokens-bench".to_owned()];
    words.extend(std::env::args().skip(1));
    words.join(" ")
}

/// `aitokens-bench table`.
fn print_table(from: &std::path::Path, write: Option<&std::path::Path>) -> Result<()> {
    let markdown = table::render(&table::load(from)?);
    match write {
        Some(file) => table::write_into(file, from, &markdown),
        None => {
            print!("{markdown}");
            Ok(())
        }
    }
}

/// `aitokens` in the directory this program runs from.
fn server_beside_this_program() -> Result<PathBuf> {
    let exe =
        std::env::current_exe().map_err(|e| Error::Setup(format!("locating this program: {e}")))?;
    let server = exe.with_file_name("aitokens");
    if !server.is_file() {
        return Err(Error::Setup(format!(
            "no aitokens binary at {}; build it (cargo build --release) or pass --server-exe",
            server.display()
        )));
    }
    Ok(server)
}

fn say(line: &str) {
    eprintln!("bench: {line}");
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    if let Some(Command::Table { from, write }) = &options.command {
        return match print_table(from, write.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aitokens-bench: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // On Ctrl-C the run is dropped, which stops its server process and
    // removes its temp dirs.
    let result = tokio::select! {
        result = run(options) => result.map(drop),
        _ = tokio::signal::ctrl_c() => Err(Error::Setup("interrupted".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aitokens-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
