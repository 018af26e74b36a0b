//! The server's background tasks, each running until the stop signal:
//!
//! - the flusher writes usage counters and queued audit events in batches;
//! - key upkeep picks up keyring changes made elsewhere, runs the re-wrap
//!   job and now and then VACUUMs;
//! - the change watch drops the resolve cache when another process changed
//!   the database;
//! - the recount task counts the tokens in the store every few seconds (a
//!   scrape of `/metrics` reads the count from memory and never touches the
//!   store);
//! - the policy and TLS reloaders swap in changed files (SIGHUP forces it),
//!   keeping what they had when a new file is bad.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, watch};

use super::tls::{Reload, TlsMaterial};
use crate::{
    audit::Checkpointer,
    auth::{Policy, PolicyHandle},
    rotation::{KeyRotation, REWRAP_BATCH},
    store::{Lease, Maintenance, StoreChange},
    telemetry::Telemetry,
    tokens::{Domain, Flusher, Resolver},
};

/// How often the store's change generation is looked at. A change made by
/// another process reaches resolves within about this long; changes made
/// through this server are in force at once.
const STORE_CHANGE_POLL: Duration = Duration::from_millis(250);
/// How long the re-wrap job works before yielding to a stop request.
const REWRAP_SLICE: Duration = Duration::from_millis(200);
/// How often the database is VACUUMed (erasing deleted content from free pages).
const VACUUM_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// How often the policy file is checked for changes.
const POLICY_POLL: Duration = Duration::from_secs(1);
/// How often the tokens are recounted.
const RECOUNT_INTERVAL: Duration = Duration::from_secs(10);

/// Completes once a stop is requested (holding no watch guard across awaits).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// SIGHUP, when the platform has it.
#[cfg(unix)]
pub(super) type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
pub(super) type Hangup = ();

async fn hangup(signal: &mut Option<Hangup>) {
    #[cfg(unix)]
    if let Some(signal) = signal.as_mut() {
        signal.recv().await;
        return;
    }
    let _ = signal;
    std::future::pending::<()>().await;
}

/// Writes usage counters and queued audit events every `interval`, and
/// early when many counters are pending, until stop.
///
/// A failed write keeps everything queued for the next tick and counts in
/// `aitokens_usage_flush_failures_total` and `aitokens_audit_failures_total`
/// (the batch carries the queued audit events).
pub(super) async fn flush_periodically(
    flusher: Flusher,
    telemetry: Telemetry,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = flusher.usage_filled() => ticker.reset(),
            () = stopped(&mut stop) => return,
        }
        if let Err(e) = flusher.flush().await {
            telemetry.usage_flush_failed();
            telemetry.audit_failed();
            tracing::error!(error = %e, "flushing usage counters and audit events failed; will retry");
        }
    }
}

/// Loads sealed rows into the resolve cache in the background, so that
/// resolves soon after start do not each pay a store read.
pub(super) async fn warm_resolve_cache(resolver: Resolver) {
    let started = Instant::now();
    match resolver.warm_cache().await {
        Ok(rows) => {
            let stats = resolver.cache_stats();
            tracing::info!(
                rows,
                mib = stats.bytes >> 20,
                ms = started.elapsed().as_millis() as u64,
                "resolve cache warmed"
            );
        }
        // Not fatal: rows are read on demand instead.
        Err(e) => {
            tracing::warn!(error = %e, "warming the resolve cache stopped; rows will be read on demand")
        }
    }
}

/// Longest a change-generation poll may take before the store counts as
/// unreachable.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// Drops cached rows whenever the database changed behind this process
/// (see [`Resolver::notice_store_changes`]), and tracks whether the store
/// answers: `/readyz` says not ready while it does not, and after `grace`
/// without an answer the cache is dropped, so resolves are refused rather
/// than served from rows that may have been removed elsewhere.
pub(super) async fn notice_store_changes(
    resolver: Resolver,
    telemetry: Telemetry,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(STORE_CHANGE_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreachable_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stopped(&mut stop) => return,
        }
        match tokio::time::timeout(POLL_TIMEOUT, resolver.notice_store_changes()).await {
            Ok(Ok(changed)) => {
                if unreachable_since.take().is_some() {
                    tracing::info!("the store answers again");
                }
                telemetry.set_store_reachable(true);
                if changed {
                    tracing::debug!("the database changed; resolve cache dropped");
                }
            }
            outcome => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    let why = match &outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {POLL_TIMEOUT:?}"),
                    };
                    tracing::warn!(error = %why, grace = ?grace, "the store does not answer; not ready");
                    Instant::now()
                });
                telemetry.set_store_reachable(false);
                if since.elapsed() >= grace {
                    resolver.drop_cache();
                }
            }
        }
    }
}

/// Applies the changes a store reports as they are committed (PostgreSQL's
/// NOTIFY: every replica's changes, this one's included) until stop.
pub(super) async fn follow_store_changes(
    resolver: Resolver,
    mut changes: broadcast::Receiver<StoreChange>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            () = stopped(&mut stop) => return,
        };
        match change {
            Ok(change) => resolver.apply(&change),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "change notifications came faster than they were applied; resolve cache dropped"
                );
                resolver.drop_cache();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Recounts the tokens in the store every [`RECOUNT_INTERVAL`], so that
/// the in-memory count (which this process's creates and removals move at
/// once) also follows changes made by other processes.
pub(super) async fn recount_tokens(domain: Domain, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(RECOUNT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stopped(&mut stop) => return,
        }
        if let Err(e) = domain.lifecycle.recount().await {
            tracing::warn!(error = %e, "could not recount tokens for /metrics; will retry");
        }
    }
}

/// Writes a checkpoint of the audit chain every `interval` (when it grew),
/// until stop.
pub(super) async fn checkpoint_periodically(
    checkpoints: Arc<Checkpointer>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stopped(&mut stop) => return,
        }
        if let Err(e) = checkpoints.checkpoint().await {
            tracing::error!(error = %e, "writing an audit checkpoint failed; will retry");
        }
    }
}

/// Every `interval`: picks up keyring changes made by another process, runs
/// the re-wrap job while data keys sit under an old KEK version, and now and
/// then VACUUMs so deleted pages do not linger in the file.
pub(super) async fn maintain_keys(
    keys: KeyRotation,
    store: Arc<dyn Maintenance>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_vacuum = Instant::now();
    let mut lease = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stopped(&mut stop) => return,
        }
        let vacuum_due = last_vacuum.elapsed() >= VACUUM_INTERVAL;
        let outcome = maintain_once(&keys, &*store, &mut lease, vacuum_due).await;
        if vacuum_due {
            last_vacuum = Instant::now();
        }
        match outcome {
            Ok(0) => {}
            Ok(scanned) => tracing::debug!(scanned, "re-wrap job progressed"),
            Err(e) => tracing::error!(error = %e, "key maintenance failed; will retry"),
        }
    }
}

/// One round of key maintenance: the keyring reloaded if another process
/// changed it (every replica), then a slice of the re-wrap job, which one
/// process at a time runs: this one while it holds the job's lease (kept
/// from round to round; if it is lost, or its holder dies, whoever asks
/// next takes the job over).
async fn maintain_once(
    keys: &KeyRotation,
    store: &dyn Maintenance,
    lease: &mut Option<Lease>,
    vacuum_due: bool,
) -> crate::Result<usize> {
    keys.reload_if_changed().await?;
    if lease.as_ref().is_some_and(Lease::is_lost) {
        tracing::warn!("lost the re-wrap job's lease (its database session ended)");
        *lease = None;
    }
    if lease.is_none() {
        *lease = store.lease("rewrap").await?;
    }
    let mut scanned = 0;
    if lease.is_some() {
        let started = Instant::now();
        while started.elapsed() < REWRAP_SLICE {
            match keys.rewrap_step(REWRAP_BATCH).await? {
                0 => break,
                n => scanned += n,
            }
        }
    }
    if vacuum_due {
        store.vacuum().await?;
    }
    Ok(scanned)
}

/// Reloads the listeners' TLS material when its files change (checked every
/// `interval`) or on SIGHUP, until shutdown. A failed reload keeps the
/// previous material and says why in the log and in
/// `aitokens_tls_reloads_total{result="error"}`.
pub(super) async fn reload_tls(
    materials: Vec<Arc<TlsMaterial>>,
    mut signal: Option<Hangup>,
    interval: Duration,
    telemetry: Telemetry,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let force = tokio::select! {
            () = hangup(&mut signal) => true,
            () = tokio::time::sleep(interval) => false,
            () = stopped(&mut stop) => return,
        };
        if force {
            tracing::info!("SIGHUP: reloading TLS material");
        }
        for material in &materials {
            let outcome = {
                let material = material.clone();
                tokio::task::spawn_blocking(move || material.reload(force)).await
            };
            let listener = material.name();
            match outcome {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Reloaded) => {
                    tracing::info!(listener, "TLS material reloaded; new connections use it");
                    telemetry.tls_reloaded(listener, true);
                }
                Ok(Reload::Failed(e)) => {
                    tracing::warn!(listener, error = %e, "TLS reload failed; keeping the previous certificate, client CA and CRLs");
                    telemetry.tls_reloaded(listener, false);
                }
                Err(e) => tracing::warn!(listener, error = %e, "TLS reload task failed"),
            }
        }
    }
}

/// Reloads the policy on SIGHUP (`signal`) or when its file changes. An
/// invalid new file keeps the old policy in force and says why in the log;
/// `aitokens_policy_reloads_total{result}` counts both outcomes. Requests in
/// flight keep the policy they started with; connections are not touched.
pub(super) async fn reload_policy(
    policy: Arc<PolicyHandle>,
    path: PathBuf,
    mut signal: Option<Hangup>,
    telemetry: Telemetry,
    mut stop: watch::Receiver<bool>,
) {
    let fingerprint = |path: &Path| std::fs::read(path).ok();
    let mut seen = fingerprint(&path);
    let mut ticker = tokio::time::interval(POLICY_POLL);
    loop {
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            () = hangup(&mut signal) => true,
            () = stopped(&mut stop) => return,
        };
        let current = fingerprint(&path);
        if !forced && current == seen {
            continue;
        }
        if forced {
            tracing::info!("SIGHUP: reloading the policy");
        }
        seen = current;
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Policy::load(&path)).await
        };
        match loaded {
            Ok(Ok(new_policy)) => {
                policy.replace(new_policy);
                telemetry.policy_reloaded(true);
                tracing::info!(path = %path.display(), "policy reloaded");
            }
            Ok(Err(e)) => {
                telemetry.policy_reloaded(false);
                tracing::error!(error = %e, "policy not reloaded; the previous policy stays in force")
            }
            Err(e) => tracing::error!(error = %e, "policy reload task failed"),
        }
    }
}
