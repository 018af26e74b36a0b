//! Seeding: tokens sealed with the real keyring on every core, written in
//! transactions of [`SEED_BATCH`] by the library's bulk loader (the
//! `testkit` feature: not the server's audited write path), before the
//! server starts. Much faster than as many fsynced creates.

use std::{sync::Arc, time::Instant};

use aitokens::{
    config::Config,
    crypto::Keyring,
    model::{SealedValue, TenantId, TokenId, TokenName, TokenRecord, TokenUid, now},
    testkit::BulkLoader,
};

use crate::{
    Error, Result,
    load::{token_id, value_for},
    report::SeedFigures,
};

/// Tokens sealed and inserted per transaction while seeding.
const SEED_BATCH: u64 = 10_000;

/// Threads that seal values: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Writes `count` tokens of `tenant` into the database `config` names.
pub async fn seed(config: &Config, tenant: &str, count: u64) -> Result<SeedFigures> {
    let tenant = TenantId::new(tenant, "tenant")?;
    let started = Instant::now();
    let loader = BulkLoader::open(config).await?;
    let keyring = loader.keyring();
    let mut start = 0;
    while start < count {
        let end = (start + SEED_BATCH).min(count);
        let (keyring, tenant) = (keyring.clone(), tenant.clone());
        let rows = tokio::task::spawn_blocking(move || seal_range(&keyring, &tenant, start, end))
            .await
            .map_err(|e| Error::Internal(format!("sealing: {e}")))??;
        loader.insert(rows).await?;
        start = end;
    }
    Ok(SeedFigures {
        tokens: count,
        seconds: started.elapsed().as_secs_f64(),
        method: format!(
            "sealed with the real keyring on {} threads, bulk-loaded (testkit) in \
             transactions of {SEED_BATCH}, before the server starts",
            threads()
        ),
    })
}

/// Seals tokens `from..to` on every core.
fn seal_range(
    keyring: &Arc<Keyring>,
    tenant: &TenantId,
    from: u64,
    to: u64,
) -> Result<Vec<(TokenRecord, SealedValue)>> {
    let threads = threads() as u64;
    let chunk = (to - from).div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let first = from + t * chunk;
                let last = (first + chunk).min(to);
                scope.spawn(move || {
                    (first..last)
                        .map(|i| seal_one(keyring, tenant, i))
                        .collect()
                })
            })
            .collect();
        let mut rows = Vec::new();
        for worker in workers {
            let part: Result<Vec<_>> = worker
                .join()
                .map_err(|_| Error::Internal("a sealing thread panicked".into()))?;
            rows.extend(part?);
        }
        Ok(rows)
    })
}

fn seal_one(keyring: &Keyring, tenant: &TenantId, i: u64) -> Result<(TokenRecord, SealedValue)> {
    let name = TokenName {
        tenant: tenant.clone(),
        token_id: TokenId::new(&token_id(i), "token_id")?,
    };
    let display_name = format!("Bench token {i}");
    let record = TokenRecord::new(TokenUid::generate()?, name, display_name, now());
    let sealed = keyring.seal_value(tenant.as_str(), &record.uid, value_for(i).as_bytes())?;
    Ok((record, sealed))
}
