//! `aitokens bench`: ResolveToken measured against the transport floor.
//!
//! The benchmark runs the real server as a child process (`aitokens serve
//! --config FILE`: both listeners, real mutual TLS, a real SQLite file in a
//! temp dir), so that the server's CPU time and memory can be read from
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
//! 6. **catalog**: a second database with 100k tokens in one tenant: startup
//!    time, memory, ListTokens latency of the first page against a page 100k
//!    deep, and a resolve load over it.

use std::{
    fmt::Write as _,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    api::{
        echo::pb::{EchoRequest, echo_client::EchoClient},
        pb::{
            CreateTokenRequest, ListTokensRequest, ResolveTokenRequest, Token,
            token_admin_client::TokenAdminClient, token_resolver_client::TokenResolverClient,
        },
    },
    config::Config,
    crypto::{Keyring, RootKey, TokenUid},
    dev,
    error::{Error, Result},
    store::{SqliteStore, TokenStore},
    tokens::{PageCursor, TenantId, TokenId, TokenName, TokenRecord},
};

/// Tokens sealed and inserted per transaction while seeding.
const SEED_BATCH: usize = 10_000;
/// Longest the server may take to answer health checks after spawning.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Page size of the ListTokens phase.
const LIST_PAGE: usize = 50;
/// Tenant of the resolve and create phases.
const TENANT: &str = "bench";
/// Tenant of the catalog phase.
const CATALOG_TENANT: &str = "catalog";

/// Options of `aitokens bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
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
    /// The aitokens binary to run as the server (default: this one).
    #[arg(long)]
    pub server_exe: Option<PathBuf>,
    /// Run the server with usage tracking off (`[usage] track = false`), to
    /// measure what tracking costs on the resolve path.
    #[arg(long)]
    pub no_usage_tracking: bool,
    /// Memory for the server's resolve cache of sealed rows, in MiB
    /// (`[cache] max_mib`); 0 reads every resolve from SQLite.
    #[arg(long, default_value_t = crate::tokens::DEFAULT_CACHE_BYTES >> 20)]
    pub cache_mib: usize,
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

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Where the figures came from.
    pub machine: Machine,
    /// The load shape.
    pub setup: SetupFigures,
    /// Seeding the resolve database.
    pub seed: Option<SeedFigures>,
    /// Milliseconds from spawning the server (N tokens) to both listeners ready.
    pub startup_ms: Option<f64>,
    /// Milliseconds from spawning the server to its resolve cache warm
    /// (none when the cache is off).
    pub cache_warm_ms: Option<f64>,
    /// ResolveToken under load.
    pub resolve: Option<LoadFigures>,
    /// Echo under the same load: the transport floor.
    pub floor: Option<LoadFigures>,
    /// resolve / floor.
    pub ratios: Option<Ratios>,
    /// CreateToken, one caller.
    pub create_sequential: Option<LoadFigures>,
    /// CreateToken, C callers.
    pub create_concurrent: Option<LoadFigures>,
    /// The large-catalog phase.
    pub catalog: Option<CatalogFigures>,
}

/// The machine the run happened on.
#[derive(Debug, Default, Serialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
}

/// The load shape.
#[derive(Debug, Default, Serialize)]
pub struct SetupFigures {
    /// Tokens in the resolve database.
    pub tokens: u64,
    /// Concurrent callers.
    pub concurrency: u64,
    /// HTTP/2 connections.
    pub connections: u64,
    /// Measured seconds per load phase.
    pub duration_s: f64,
    /// Warm-up seconds per load phase.
    pub warmup_s: f64,
    /// Server usage tracking on.
    pub usage_tracking: bool,
    /// Server resolve cache, MiB (0: off).
    pub cache_mib: usize,
}

/// How the database was filled.
#[derive(Debug, Default, Serialize)]
pub struct SeedFigures {
    /// Tokens written.
    pub tokens: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// How.
    pub method: String,
}

/// One measured load phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadFigures {
    /// Successful requests in the measured window.
    pub requests: u64,
    /// Failed requests (any status, or a wrong value).
    pub errors: u64,
    /// The first error, if any (a status code and message; never a value).
    pub first_error: Option<String>,
    /// Length of the measured window.
    pub seconds: f64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest request.
    pub max_us: f64,
    /// Server CPU time (user + system) per successful request, microseconds.
    pub server_cpu_us_per_req: f64,
    /// Load-generator CPU time per successful request, microseconds.
    pub loader_cpu_us_per_req: f64,
    /// Server peak resident set size during the phase (VmHWM), KiB.
    pub server_peak_rss_kib: u64,
}

/// Resolve relative to the floor.
#[derive(Debug, Default, Serialize)]
pub struct Ratios {
    /// resolve requests/s / floor requests/s (target >= 0.8).
    pub throughput: f64,
    /// resolve p99 / floor p99 (target <= 2).
    pub p99: f64,
    /// resolve server CPU per request / floor server CPU per request.
    pub server_cpu: f64,
}

/// The large-catalog phase.
#[derive(Debug, Default, Serialize)]
pub struct CatalogFigures {
    /// Tokens in the tenant.
    pub tokens: u64,
    /// Seeding.
    pub seed: SeedFigures,
    /// Milliseconds from spawn to both listeners ready.
    pub startup_ms: f64,
    /// Server RSS right after start-up, KiB.
    pub rss_after_ready_kib: u64,
    /// Milliseconds from spawn to the resolve cache warm (none when off).
    pub cache_warm_ms: Option<f64>,
    /// Server RSS once the resolve cache is warm (every row cached), KiB.
    pub rss_cache_warm_kib: u64,
    /// ListTokens of the first page.
    pub list_first_page: ListFigures,
    /// ListTokens of the page that starts `tokens - 50` deep.
    pub list_deep_page: ListFigures,
    /// deep p50 / first p50 (target <= 2).
    pub deep_over_first_p50: f64,
    /// ResolveToken load over this catalog.
    pub resolve: LoadFigures,
    /// Server peak RSS over the whole phase (VmHWM since start), KiB.
    pub server_peak_rss_kib: u64,
}

/// Sequential ListTokens latency for one page position.
#[derive(Debug, Default, Serialize)]
pub struct ListFigures {
    /// How many tokens precede the page.
    pub depth: u64,
    /// Calls made.
    pub calls: u64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
}

/// Runs the benchmark and prints its figures; writes JSON if asked.
pub async fn run(options: Options) -> Result<Report> {
    let exe = match &options.server_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()
            .map_err(|e| Error::Startup(format!("locating the aitokens binary: {e}")))?,
    };
    if !(options.duration > 0.0 && options.warmup >= 0.0) {
        return Err(Error::Startup(
            "--duration must be positive and --warmup not negative".into(),
        ));
    }
    let mut report = Report {
        machine: machine(),
        setup: SetupFigures {
            tokens: options.tokens,
            concurrency: options.concurrency,
            connections: options.connections,
            duration_s: options.duration,
            warmup_s: options.warmup,
            usage_tracking: !options.no_usage_tracking,
            cache_mib: options.cache_mib,
        },
        ..Report::default()
    };
    let bench = Bench {
        exe,
        options: options.clone(),
    };

    if !(options.skip.contains(&Phase::Resolve) && options.skip.contains(&Phase::Create)) {
        bench.main_phases(&mut report).await?;
    }
    if !options.skip.contains(&Phase::Catalog) {
        report.catalog = Some(bench.catalog_phase().await?);
    }

    print!("{}", render(&report));
    if let Some(path) = &options.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Internal(format!("JSON: {e}")))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| Error::Startup(format!("writing {}: {e}", path.display())))?;
    }
    Ok(report)
}

struct Bench {
    exe: PathBuf,
    options: Options,
}

impl Bench {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.options.duration)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.options.warmup)
    }

    async fn main_phases(&self, report: &mut Report) -> Result<()> {
        let data = DataDir::prepare(true, &self.options)?;
        say(&format!("seeding {} tokens ...", self.options.tokens));
        report.seed = Some(data.seed(TENANT, self.options.tokens).await?);
        let server = ServerProcess::start(&self.exe, &data, &self.options.server_log).await?;
        report.startup_ms = Some(server.ready_after.as_secs_f64() * 1e3);
        report.cache_warm_ms = self.cache_warm(&server).await?;
        let channels = data
            .channels(server.internal, "agent", self.options.connections)
            .await?;
        let callers = self.options.concurrency as usize;
        let tokens = self.options.tokens;

        if !self.options.skip.contains(&Phase::Resolve) {
            let clients: Vec<_> = channels
                .iter()
                .cloned()
                .map(TokenResolverClient::new)
                .collect();
            let resolve = move |caller: usize, _seq: u64, random: u64| {
                let mut client = clients[caller % clients.len()].clone();
                async move { resolve_one(&mut client, TENANT, random % tokens).await }
            };
            say("resolve ...");
            report.resolve = Some(self.load(&server, callers, resolve).await?);

            let clients: Vec<_> = channels.iter().cloned().map(EchoClient::new).collect();
            let filler = value_for(0);
            let echo = move |caller: usize, _seq: u64, random: u64| {
                let mut client = clients[caller % clients.len()].clone();
                let message = EchoRequest {
                    name: token_name(TENANT, random % tokens),
                    value: filler.clone(),
                };
                async move {
                    let reply = client.echo(message.clone()).await.map_err(status_text)?;
                    if reply.get_ref().name != message.name {
                        return Err("echo returned another message".to_owned());
                    }
                    Ok(())
                }
            };
            say("floor (echo) ...");
            report.floor = Some(self.load(&server, callers, echo).await?);
            if let (Some(r), Some(f)) = (&report.resolve, &report.floor) {
                report.ratios = Some(Ratios {
                    throughput: r.requests_per_s / f.requests_per_s,
                    p99: r.p99_us / f.p99_us,
                    server_cpu: r.server_cpu_us_per_req / f.server_cpu_us_per_req,
                });
            }
        }

        if !self.options.skip.contains(&Phase::Create) {
            let admin = data
                .channels(server.admin, "admin", self.options.connections)
                .await?;
            let clients: Vec<_> = admin.into_iter().map(TokenAdminClient::new).collect();
            let create = |phase: &'static str| {
                let clients = clients.clone();
                move |caller: usize, seq: u64, _random: u64| {
                    let mut client = clients[caller % clients.len()].clone();
                    let request = CreateTokenRequest {
                        parent: format!("tenants/{TENANT}-create"),
                        token_id: format!("{phase}-{caller}-{seq}"),
                        token: Some(Token {
                            display_name: format!("bench create {caller} {seq}"),
                            ..Token::default()
                        }),
                        value: value_for(seq),
                        replaces: String::new(),
                    };
                    async move {
                        client.create_token(request).await.map_err(status_text)?;
                        Ok(())
                    }
                }
            };
            let creates = self.options.creates;
            say("create, one caller ...");
            report.create_sequential = Some(
                self.measure(&server, 1, creates, Duration::ZERO, create("s"))
                    .await?,
            );
            say("create, concurrent ...");
            let per_caller = creates.div_ceil(callers as u64);
            report.create_concurrent = Some(
                self.measure(&server, callers, per_caller, Duration::ZERO, create("c"))
                    .await?,
            );
        }
        server.stop().await
    }

    async fn catalog_phase(&self) -> Result<CatalogFigures> {
        let tokens = self.options.catalog_tokens;
        let data = DataDir::prepare(false, &self.options)?;
        say(&format!("catalog: seeding {tokens} tokens ..."));
        let seed = data.seed(CATALOG_TENANT, tokens).await?;
        let server = ServerProcess::start(&self.exe, &data, &self.options.server_log).await?;
        let rss_after_ready_kib = server.status_kib("VmRSS")?;
        let cache_warm_ms = self.cache_warm(&server).await?;
        let rss_cache_warm_kib = server.status_kib("VmRSS")?;
        let admin = data.channels(server.admin, "admin", 1).await?;
        let mut client = TokenAdminClient::new(admin[0].clone());

        let depth = tokens - LIST_PAGE as u64;
        // The page token the server hands out after `depth` tokens (sequence
        // numbers of a freshly seeded database run 1..=tokens).
        let deep_token = PageCursor {
            kind: "tokens",
            scope: CATALOG_TENANT.to_owned(),
            after_seq: depth as i64,
        }
        .encode();
        let mut first = histogram()?;
        let mut deep = histogram()?;
        say("catalog: ListTokens ...");
        for _ in 0..self.options.list_calls {
            for (page_token, hist, expect_next) in [
                (String::new(), &mut first, true),
                (deep_token.clone(), &mut deep, false),
            ] {
                let started = Instant::now();
                let page = client
                    .list_tokens(ListTokensRequest {
                        parent: format!("tenants/{CATALOG_TENANT}"),
                        page_size: LIST_PAGE as i32,
                        page_token,
                        unused_for: None,
                    })
                    .await
                    .map_err(|s| Error::Internal(format!("ListTokens: {}", status_text(s))))?;
                record(hist, started.elapsed());
                let page = page.into_inner();
                if page.tokens.len() != LIST_PAGE || page.next_page_token.is_empty() == expect_next
                {
                    return Err(Error::Internal(format!(
                        "ListTokens returned {} tokens (next page: {})",
                        page.tokens.len(),
                        !page.next_page_token.is_empty()
                    )));
                }
            }
        }
        let list_first_page = list_figures(0, &first);
        let list_deep_page = list_figures(depth, &deep);

        let channels = data
            .channels(server.internal, "agent", self.options.connections)
            .await?;
        let clients: Vec<_> = channels.into_iter().map(TokenResolverClient::new).collect();
        let resolve = move |caller: usize, _seq: u64, random: u64| {
            let mut client = clients[caller % clients.len()].clone();
            async move { resolve_one(&mut client, CATALOG_TENANT, random % tokens).await }
        };
        say("catalog: resolve ...");
        // VmHWM is left alone here: the phase's peak covers start-up, the
        // listing and the resolve load.
        let resolve = self
            .load_keep_peak(&server, self.options.concurrency as usize, resolve)
            .await?;
        let server_peak_rss_kib = server.status_kib("VmHWM")?;
        let startup_ms = server.ready_after.as_secs_f64() * 1e3;
        server.stop().await?;
        Ok(CatalogFigures {
            tokens,
            seed,
            startup_ms,
            rss_after_ready_kib,
            cache_warm_ms,
            rss_cache_warm_kib,
            deep_over_first_p50: list_deep_page.p50_us / list_first_page.p50_us,
            list_first_page,
            list_deep_page,
            resolve,
            server_peak_rss_kib,
        })
    }

    /// Waits until the server has warmed its resolve cache (it logs that);
    /// returns milliseconds since it was spawned, or none when the cache is off.
    async fn cache_warm(&self, server: &ServerProcess) -> Result<Option<f64>> {
        if self.options.cache_mib == 0 {
            return Ok(None);
        }
        loop {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            if log.contains("resolve cache warmed") {
                return Ok(Some(server.started.elapsed().as_secs_f64() * 1e3));
            }
            if log.contains("warming the resolve cache stopped") {
                return Err(Error::Internal(format!(
                    "the server could not warm its resolve cache; its log:\n{}",
                    server.log_tail()
                )));
            }
            if server.started.elapsed() > READY_TIMEOUT {
                return Err(Error::Internal(format!(
                    "the resolve cache was not warm after {READY_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Warm-up, then a measured window with the peak RSS reset at its start.
    async fn load<F, Fut>(
        &self,
        server: &ServerProcess,
        callers: usize,
        op: F,
    ) -> Result<LoadFigures>
    where
        F: Fn(usize, u64, u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        server.reset_peak_rss();
        self.load_keep_peak(server, callers, op).await
    }

    async fn load_keep_peak<F, Fut>(
        &self,
        server: &ServerProcess,
        callers: usize,
        op: F,
    ) -> Result<LoadFigures>
    where
        F: Fn(usize, u64, u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        let per_caller = self.options.max_requests.div_ceil(callers as u64);
        self.measure(server, callers, per_caller, self.warmup(), op)
            .await
    }

    /// Runs `op` from `callers` tasks: first `warmup` unmeasured, then for
    /// the configured duration or until each caller made `per_caller` calls.
    async fn measure<F, Fut>(
        &self,
        server: &ServerProcess,
        callers: usize,
        per_caller: u64,
        warmup: Duration,
        op: F,
    ) -> Result<LoadFigures>
    where
        F: Fn(usize, u64, u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        if !warmup.is_zero() {
            drive(callers, warmup, per_caller, 1 << 40, op.clone()).await?;
        }
        let server_cpu = server.cpu_time()?;
        let loader_cpu = cpu_time("self")?;
        let started = Instant::now();
        let outcome = drive(callers, self.duration(), per_caller, 0, op).await?;
        let seconds = started.elapsed().as_secs_f64();
        let server_cpu = server.cpu_time()?.saturating_sub(server_cpu);
        let loader_cpu = cpu_time("self")?.saturating_sub(loader_cpu);
        let ok = outcome.latency.len();
        let per_req = |cpu: Duration| {
            if ok == 0 {
                0.0
            } else {
                cpu.as_secs_f64() * 1e6 / ok as f64
            }
        };
        Ok(LoadFigures {
            requests: ok,
            errors: outcome.errors,
            first_error: outcome.first_error,
            seconds,
            requests_per_s: ok as f64 / seconds,
            p50_us: quantile_us(&outcome.latency, 0.5),
            p99_us: quantile_us(&outcome.latency, 0.99),
            p999_us: quantile_us(&outcome.latency, 0.999),
            max_us: outcome.latency.max() as f64 / 1e3,
            server_cpu_us_per_req: per_req(server_cpu),
            loader_cpu_us_per_req: per_req(loader_cpu),
            server_peak_rss_kib: server.status_kib("VmHWM")?,
        })
    }
}

struct Outcome {
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// `callers` tasks call `op(caller, seq, random)` back to back until `for`
/// has passed or each made `per_caller` calls. `seq_base` offsets the
/// sequence numbers (so warm-up creates do not collide with measured ones).
async fn drive<F, Fut>(
    callers: usize,
    length: Duration,
    per_caller: u64,
    seq_base: u64,
    op: F,
) -> Result<Outcome>
where
    F: Fn(usize, u64, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + length;
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0x5eed_0000 + caller as u64);
            let mut latency = histogram()?;
            let (mut errors, mut first_error) = (0u64, None);
            for seq in seq_base..seq_base + per_caller {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let started = Instant::now();
                match op(caller, seq, rng.u64(..)).await {
                    Ok(()) => record(&mut latency, started.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            Ok::<_, Error>(Outcome {
                latency,
                errors,
                first_error,
            })
        }));
    }
    let mut total = Outcome {
        latency: histogram()?,
        errors: 0,
        first_error: None,
    };
    for task in tasks {
        let outcome = task
            .await
            .map_err(|e| Error::Internal(format!("load task: {e}")))??;
        total
            .latency
            .add(&outcome.latency)
            .map_err(|e| Error::Internal(format!("histogram: {e}")))?;
        total.errors += outcome.errors;
        if total.first_error.is_none() {
            total.first_error = outcome.first_error;
        }
    }
    Ok(total)
}

async fn resolve_one(
    client: &mut TokenResolverClient<Channel>,
    tenant: &str,
    index: u64,
) -> std::result::Result<(), String> {
    let reply = client
        .resolve_token(ResolveTokenRequest {
            name: token_name(tenant, index),
        })
        .await
        .map_err(status_text)?;
    if reply.get_ref().value != value_for(index) {
        // Never print the value itself.
        return Err(format!("wrong value for token {index}"));
    }
    Ok(())
}

fn status_text(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Latency histogram in nanoseconds, 1 µs to 60 s, 3 significant digits.
fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
        .map_err(|e| Error::Internal(format!("histogram: {e}")))
}

fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    hist.saturating_record(elapsed.as_nanos().min(u128::from(u64::MAX)) as u64);
}

fn quantile_us(hist: &Histogram<u64>, q: f64) -> f64 {
    if hist.is_empty() {
        return 0.0;
    }
    hist.value_at_quantile(q) as f64 / 1e3
}

fn list_figures(depth: u64, hist: &Histogram<u64>) -> ListFigures {
    ListFigures {
        depth,
        calls: hist.len(),
        p50_us: quantile_us(hist, 0.5),
        p99_us: quantile_us(hist, 0.99),
    }
}

fn token_id(index: u64) -> String {
    format!("t{index}")
}

fn token_name(tenant: &str, index: u64) -> String {
    format!("tenants/{tenant}/tokens/{}", token_id(index))
}

/// The value stored for token `index`: 49 characters, like an API key.
fn value_for(index: u64) -> String {
    let mix = |x: u64| {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    format!(
        "sk-bench-{:016x}{:016x}{:08x}",
        mix(index),
        mix(!index),
        index as u32
    )
}

/// A temp data folder prepared by `aitokens dev`'s code, with a config that
/// binds both listeners to free 127.0.0.1 ports.
struct DataDir {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    config: Config,
}

impl DataDir {
    fn prepare(echo: bool, options: &Options) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("aitokens-bench-")
            .tempdir()
            .map_err(|e| Error::Startup(format!("temp dir: {e}")))?;
        // Port 0: the server binds free ports and logs them ("serving").
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut config = dev::prepare(dir.path(), any, any, None)?.config;
        config.bench.echo = echo;
        config.usage.track = !options.no_usage_tracking;
        config.cache.max_mib = options.cache_mib;
        let config_path = dir.path().join("bench.toml");
        let text = toml::to_string(&config).map_err(|e| Error::Internal(format!("config: {e}")))?;
        std::fs::write(&config_path, text)
            .map_err(|e| Error::Startup(format!("writing {}: {e}", config_path.display())))?;
        Ok(Self {
            dir,
            config_path,
            config,
        })
    }

    /// Writes `count` tokens of `tenant` straight through the store (sealed
    /// by the real keyring), in transactions of [`SEED_BATCH`].
    async fn seed(&self, tenant: &str, count: u64) -> Result<SeedFigures> {
        let config = self.config.clone();
        let tenant = TenantId::new(tenant, "tenant")?;
        let started = Instant::now();
        tokio::task::spawn_blocking(move || seed_blocking(&config, &tenant, count))
            .await
            .map_err(|e| Error::Internal(format!("seeding: {e}")))??;
        Ok(SeedFigures {
            tokens: count,
            seconds: started.elapsed().as_secs_f64(),
            method: format!(
                "sealed with the real keyring on {} threads, inserted through the store in \
                 transactions of {SEED_BATCH}, before the server starts",
                seal_threads()
            ),
        })
    }

    fn file(&self, name: &str) -> Result<String> {
        let path = self.dir.path().join(name);
        std::fs::read_to_string(&path)
            .map_err(|e| Error::Startup(format!("reading {}: {e}", path.display())))
    }

    /// `count` separate HTTP/2 connections to `addr` as `who` (admin or agent).
    async fn channels(&self, addr: SocketAddr, who: &str, count: u64) -> Result<Vec<Channel>> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.file("ca.pem")?))
            .identity(Identity::from_pem(
                self.file(&format!("{who}.pem"))?,
                self.file(&format!("{who}.key"))?,
            ))
            .domain_name("localhost");
        let mut channels = Vec::new();
        for _ in 0..count {
            let channel = Endpoint::from_shared(format!("https://{addr}"))
                .map_err(|e| Error::Internal(format!("endpoint: {e}")))?
                .tls_config(tls.clone())
                .map_err(|e| Error::Internal(format!("client TLS: {e}")))?
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(30))
                .connect()
                .await
                .map_err(|e| Error::Internal(format!("connecting to {addr}: {e}")))?;
            channels.push(channel);
        }
        Ok(channels)
    }
}

fn seal_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn seed_blocking(config: &Config, tenant: &TenantId, count: u64) -> Result<()> {
    let key_file = config
        .store
        .master_key_file
        .as_deref()
        .ok_or_else(|| Error::Startup("the bench data folder uses a key file".into()))?;
    let root = RootKey::from_file(key_file)?;
    let store = SqliteStore::open(&config.store.database)?;
    let keyring = match store.keyring()? {
        Some(records) => Keyring::open(&root, &records)?,
        None => {
            let (keyring, records) = Keyring::create(&root)?;
            store.init_keyring(&records)?;
            keyring
        }
    };
    let keyring = Arc::new(keyring);
    let now = now_micros();
    let threads = seal_threads() as u64;
    let mut start = 0;
    while start < count {
        let end = (start + SEED_BATCH as u64).min(count);
        let chunk = (end - start).div_ceil(threads);
        let rows = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let keyring = keyring.clone();
                    let from = start + t * chunk;
                    let to = (from + chunk).min(end);
                    scope.spawn(move || -> Result<Vec<_>> {
                        (from..to)
                            .map(|i| {
                                let record = TokenRecord {
                                    uid: TokenUid::generate()?,
                                    seq: 0,
                                    name: TokenName {
                                        tenant: tenant.clone(),
                                        token_id: TokenId::new(&token_id(i), "token_id")?,
                                    },
                                    display_name: format!("Bench token {i}"),
                                    create_time: now,
                                    update_time: now,
                                    revision: 1,
                                    disabled: false,
                                    replaces: None,
                                    replaced_by: None,
                                    last_resolve: None,
                                    resolve_count: 0,
                                };
                                let sealed = keyring.seal_value(
                                    tenant.as_str(),
                                    &record.uid,
                                    value_for(i).as_bytes(),
                                )?;
                                Ok((record, sealed))
                            })
                            .collect()
                    })
                })
                .collect();
            let mut rows = Vec::new();
            for worker in workers {
                let part = worker
                    .join()
                    .map_err(|_| Error::Internal("a sealing thread panicked".into()))??;
                rows.extend(part);
            }
            Ok::<_, Error>(rows)
        })?;
        store.insert_batch(&rows)?;
        start = end;
    }
    Ok(())
}

/// Now, truncated to whole microseconds (what the store keeps).
fn now_micros() -> SystemTime {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_micros(since.as_micros() as u64)
}

/// The addresses in the server's "serving admin=ADDR internal=ADDR" log line.
fn serving_addresses(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    log.lines()
        .filter(|l| l.contains(" serving "))
        .find_map(|line| {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(key))
                    .and_then(|addr| addr.parse().ok())
            };
            Some((field("admin=")?, field("internal=")?))
        })
}

/// `aitokens serve` as a child process.
struct ServerProcess {
    child: Child,
    pid: u32,
    admin: SocketAddr,
    internal: SocketAddr,
    ready_after: Duration,
    started: Instant,
    log: PathBuf,
}

impl ServerProcess {
    async fn start(exe: &Path, data: &DataDir, log_filter: &str) -> Result<Self> {
        let log = data.dir.path().join("server.log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| Error::Startup(format!("creating {}: {e}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| Error::Startup(format!("server log: {e}")))?;
        let started = Instant::now();
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&data.config_path)
            .env("RUST_LOG", log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| Error::Startup(format!("starting {}: {e}", exe.display())))?;
        let mut server = Self {
            pid: child.id(),
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            internal: SocketAddr::from(([127, 0, 0, 1], 0)),
            ready_after: Duration::ZERO,
            started,
            log,
        };
        let health = |addr: SocketAddr, who: &'static str| async move {
            let channel = data.channels(addr, who, 1).await.ok()?.pop()?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .ok()?;
            Some(reply.get_ref().status() == ServingStatus::Serving)
        };
        loop {
            if let Some(exit) = server
                .child
                .try_wait()
                .map_err(|e| Error::Internal(format!("server process: {e}")))?
            {
                return Err(Error::Startup(format!(
                    "the server exited ({exit}) before it was ready; its log:\n{}",
                    server.log_tail()
                )));
            }
            if server.admin.port() == 0 {
                let text = std::fs::read_to_string(&server.log).unwrap_or_default();
                if let Some((admin, internal)) = serving_addresses(&text) {
                    (server.admin, server.internal) = (admin, internal);
                }
            }
            if server.admin.port() != 0
                && health(server.admin, "admin").await == Some(true)
                && health(server.internal, "agent").await == Some(true)
            {
                server.ready_after = started.elapsed();
                return Ok(server);
            }
            if started.elapsed() > READY_TIMEOUT {
                let tail = server.log_tail();
                let _ = server.child.kill();
                return Err(Error::Startup(format!(
                    "the server was not ready after {READY_TIMEOUT:?}; its log:\n{tail}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn cpu_time(&self) -> Result<Duration> {
        cpu_time(&self.pid.to_string())
    }

    /// Resets VmHWM to the current RSS (Linux: `echo 5 > /proc/PID/clear_refs`).
    fn reset_peak_rss(&self) {
        let path = format!("/proc/{}/clear_refs", self.pid);
        if let Err(e) = std::fs::write(&path, "5") {
            say(&format!(
                "could not reset the peak RSS ({path}: {e}); peaks are since start"
            ));
        }
    }

    fn status_kib(&self, field: &str) -> Result<u64> {
        status_kib(self.pid, field)
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    async fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(exit)) if exit.success() => return Ok(()),
                Ok(Some(exit)) => {
                    return Err(Error::Internal(format!(
                        "the server exited with {exit}; its log:\n{}",
                        self.log_tail()
                    )));
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(Error::Internal(
                        "the server did not stop within 30 s of SIGTERM".into(),
                    ));
                }
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// User plus system CPU time of a process (all its threads), from
/// `/proc/PID/stat` (`PID` may be `self`).
fn cpu_time(pid: &str) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Internal(format!("reading {path}: {e}")))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| Error::Internal(format!("{path}: unexpected format")))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime), counted from 1; `fields[0]` is field 3.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| Error::Internal(format!("{path}: unexpected format")))
    };
    let ticks = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// `USER_HZ`, the unit of `/proc/PID/stat` CPU times.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// A `kB` field of `/proc/PID/status` (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Internal(format!("reading {path}: {e}")))?;
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .ok_or_else(|| Error::Internal(format!("{path}: no {field}")))
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine {
        cpus: seal_threads(),
        cpu_model,
        kernel,
    }
}

fn say(line: &str) {
    eprintln!("bench: {line}");
}

/// The human-readable report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let s = &report.setup;
    let _ = writeln!(
        out,
        "\naitokens bench — {} CPUs ({}), Linux {}",
        m.cpus, m.cpu_model, m.kernel
    );
    let _ = writeln!(
        out,
        "load: {} callers over {} HTTP/2 connections, {} s measured after {} s warm-up, \
         random tokens of {}",
        s.concurrency, s.connections, s.duration_s, s.warmup_s, s.tokens
    );
    let on_off = |on: bool| if on { "on" } else { "off" };
    let cache = match s.cache_mib {
        0 => "off".to_owned(),
        mib => format!("{mib} MiB"),
    };
    let _ = writeln!(
        out,
        "server: usage tracking {}, resolve cache {cache}",
        on_off(s.usage_tracking)
    );
    if let Some(seed) = &report.seed {
        let _ = writeln!(
            out,
            "seed: {} tokens in {:.1} s ({})",
            seed.tokens, seed.seconds, seed.method
        );
    }
    if let Some(ms) = report.startup_ms {
        let _ = writeln!(out, "startup to ready ({} tokens): {ms:.0} ms", s.tokens);
    }
    if let Some(ms) = report.cache_warm_ms {
        let _ = writeln!(
            out,
            "resolve cache warm ({} tokens): {ms:.0} ms after start (load starts then)",
            s.tokens
        );
    }
    let header = format!(
        "\n{:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12} {:>10} {:>7}",
        "phase",
        "req/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "srv CPU µs/r",
        "gen CPU µs/r",
        "peak RSS",
        "errors"
    );
    let row = |out: &mut String, name: &str, f: &LoadFigures| {
        let _ = writeln!(
            out,
            "{:<22} {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>12.1} {:>12.1} {:>7} MiB {:>7}",
            name,
            f.requests_per_s,
            f.p50_us,
            f.p99_us,
            f.p999_us,
            f.max_us,
            f.server_cpu_us_per_req,
            f.loader_cpu_us_per_req,
            f.server_peak_rss_kib / 1024,
            f.errors
        );
        if let Some(e) = &f.first_error {
            let _ = writeln!(out, "{:<22} first error: {e}", "");
        }
    };
    out.push_str(&header);
    out.push('\n');
    for (name, figures) in [
        ("resolve", &report.resolve),
        ("floor (echo)", &report.floor),
        ("create, 1 caller", &report.create_sequential),
        ("create, concurrent", &report.create_concurrent),
    ] {
        if let Some(f) = figures {
            row(&mut out, name, f);
        }
    }
    if let Some(c) = &report.catalog {
        row(
            &mut out,
            &format!("resolve, {} tokens", c.tokens),
            &c.resolve,
        );
    }
    if let Some(r) = &report.ratios {
        let _ = writeln!(
            out,
            "\nresolve / floor: throughput {:.2} (target >= 0.8), p99 {:.2} (target <= 2), \
             server CPU per request {:.2}",
            r.throughput, r.p99, r.server_cpu
        );
    }
    if let Some(c) = &report.catalog {
        let _ = writeln!(
            out,
            "\ncatalog of {} tokens (seeded in {:.1} s): startup to ready {:.0} ms, \
             RSS after start {} MiB, peak RSS {} MiB (target <= 64)",
            c.tokens,
            c.seed.seconds,
            c.startup_ms,
            c.rss_after_ready_kib / 1024,
            c.server_peak_rss_kib / 1024
        );
        if let Some(ms) = c.cache_warm_ms {
            let _ = writeln!(
                out,
                "resolve cache warm {ms:.0} ms after start, RSS then {} MiB",
                c.rss_cache_warm_kib / 1024
            );
        }
        let _ = writeln!(
            out,
            "ListTokens page of {LIST_PAGE}: first page p50 {:.0} µs p99 {:.0} µs; \
             {} deep p50 {:.0} µs p99 {:.0} µs; deep/first p50 {:.2} (target <= 2)",
            c.list_first_page.p50_us,
            c.list_first_page.p99_us,
            c.list_deep_page.depth,
            c.list_deep_page.p50_us,
            c.list_deep_page.p99_us,
            c.deep_over_first_p50
        );
    }
    out
}
