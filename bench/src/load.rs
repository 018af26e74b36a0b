//! The load generator: callers driving an operation, latency histograms,
//! CPU time from /proc.

use std::{
    future::Future,
    process::Command,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tonic::transport::Channel;

use aitokens::api::pb::{ResolveTokenRequest, token_resolver_client::TokenResolverClient};

use crate::{Error, Result, report::ListFigures};

/// What the callers of one load saw.
pub struct Outcome {
    /// Latency of each successful call.
    pub latency: Histogram<u64>,
    /// Failed calls.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

/// `callers` tasks call `op(caller, seq, random)` back to back until `for`
/// has passed or each made `per_caller` calls. `seq_base` offsets the
/// sequence numbers (so warm-up creates do not collide with measured ones).
pub async fn drive<F, Fut>(
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

pub async fn resolve_one(
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

pub fn status_text(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Latency histogram in nanoseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
        .map_err(|e| Error::Internal(format!("histogram: {e}")))
}

pub fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    hist.saturating_record(elapsed.as_nanos().min(u128::from(u64::MAX)) as u64);
}

pub fn quantile_us(hist: &Histogram<u64>, q: f64) -> f64 {
    if hist.is_empty() {
        return 0.0;
    }
    hist.value_at_quantile(q) as f64 / 1e3
}

pub fn list_figures(depth: u64, hist: &Histogram<u64>) -> ListFigures {
    ListFigures {
        depth,
        calls: hist.len(),
        p50_us: quantile_us(hist, 0.5),
        p99_us: quantile_us(hist, 0.99),
    }
}

pub fn token_id(index: u64) -> String {
    format!("t{index}")
}

pub fn token_name(tenant: &str, index: u64) -> String {
    format!("tenants/{tenant}/tokens/{}", token_id(index))
}

/// The value stored for token `index`: 49 characters, like an API key.
pub fn value_for(index: u64) -> String {
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

/// User plus system CPU time of a process (all its threads), from
/// `/proc/PID/stat` (`PID` may be `self`).
pub fn cpu_time(pid: &str) -> Result<Duration> {
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
