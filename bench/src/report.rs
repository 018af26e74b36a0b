//! The figures of a run: what is measured, as JSON and as text.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{LIST_PAGE, verdict::Verdict};

/// Everything one run measured.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// The command line of the run (program name without its directory).
    pub command: String,
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
    /// ResolveToken under the same load spread over two replicas of one
    /// PostgreSQL database (server CPU: both servers together).
    pub resolve_two_replicas: Option<LoadFigures>,
    /// The large-catalog phase.
    pub catalog: Option<CatalogFigures>,
    /// Each target against its figure, judged from the unrounded figures
    /// ([`crate::verdict::verdicts`]).
    pub verdicts: Vec<Verdict>,
}

/// The machine the run happened on.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// The 1-minute load average when the run started (`/proc/loadavg`):
    /// work other than this run on a shared machine shows here.
    pub load_average: f64,
}

/// The load shape.
#[derive(Debug, Default, Serialize, Deserialize)]
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
    /// The store: `sqlite` or `postgres`.
    #[serde(default = "sqlite")]
    pub store: String,
}

fn sqlite() -> String {
    "sqlite".into()
}

/// How the database was filled.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SeedFigures {
    /// Tokens written.
    pub tokens: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// How.
    pub method: String,
}

/// One measured load phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ratios {
    /// resolve requests/s / floor requests/s (target >= 0.8).
    pub throughput: f64,
    /// resolve p99 / floor p99 (target <= 2).
    pub p99: f64,
    /// resolve server CPU per request / floor server CPU per request.
    pub server_cpu: f64,
}

/// The large-catalog phase.
#[derive(Debug, Default, Serialize, Deserialize)]
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
#[derive(Debug, Default, Serialize, Deserialize)]
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

/// The human-readable report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let s = &report.setup;
    let _ = writeln!(
        out,
        "\naitokens bench — {} CPUs ({}), Linux {}, load average {} at the start",
        m.cpus, m.cpu_model, m.kernel, m.load_average
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
        "server: {} store, usage tracking {}, resolve cache {cache}",
        s.store,
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
        ("resolve, 2 replicas", &report.resolve_two_replicas),
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
            "\nresolve / floor (unrounded): throughput {}, p99 {}, server CPU per request {}",
            r.throughput, r.p99, r.server_cpu
        );
    }
    if let (Some(one), Some(two)) = (&report.resolve, &report.resolve_two_replicas) {
        let _ = writeln!(
            out,
            "two replicas / one (unrounded): throughput {}, server CPU per request {}",
            two.requests_per_s / one.requests_per_s,
            two.server_cpu_us_per_req / one.server_cpu_us_per_req
        );
    }
    if let Some(c) = &report.catalog {
        render_catalog(&mut out, c);
    }
    render_verdicts(&mut out, &report.verdicts);
    out
}

/// The catalog phase's lines of the text report.
fn render_catalog(out: &mut String, c: &CatalogFigures) {
    let _ = writeln!(
        out,
        "\ncatalog of {} tokens (seeded in {:.1} s): startup to ready {:.0} ms, \
         RSS after start {} MiB, peak RSS {} MiB",
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
         {} deep p50 {:.0} µs p99 {:.0} µs; deep/first p50 {}",
        c.list_first_page.p50_us,
        c.list_first_page.p99_us,
        c.list_deep_page.depth,
        c.list_deep_page.p50_us,
        c.list_deep_page.p99_us,
        c.deep_over_first_p50
    );
}

/// One line per target: PASS or FAIL, the unrounded figure, the bound.
fn render_verdicts(out: &mut String, verdicts: &[Verdict]) {
    if verdicts.is_empty() {
        return;
    }
    out.push_str("\ntargets (judged from the unrounded figures):\n");
    for v in verdicts {
        let unit = match v.unit.as_str() {
            "" => String::new(),
            unit => format!(" {unit}"),
        };
        let _ = writeln!(
            out,
            "  {}  {}: {}{unit} (target {} {}{unit})",
            v.word(),
            v.target,
            v.value,
            v.comparison.symbol(),
            v.bound,
        );
    }
}

/// 41215.3 -> "41,215".
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
