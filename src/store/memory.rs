//! A store in memory, for tests of the domain without sockets or files.
//!
//! It keeps the contract of the real stores (uniqueness, replacement links,
//! what a removal takes with it, the change generation, the audit chain)
//! with plain maps under one lock, so that a domain test exercises the same
//! rules the server runs. [`MemoryStore::fail_writes`] makes every write fail
//! as an unreachable database would.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use async_trait::async_trait;

use super::{
    AuditFilter, AuditLog, BindingStore, ChainLink, KeyringStore, Maintenance, Pending,
    RemovalContext, RemoveFn, RewrapBatch, RewrapFn, TokenStore, Unflushed, UpdateFn, UsageStore,
};
use crate::{
    crypto::chain::{ChainKey, GENESIS},
    error::{Error, Result},
    model::{
        AuditEvent, AuditRecord, BindingId, BindingRecord, KeyringRecords, SealedToken,
        SealedValue, TenantId, TokenId, TokenName, TokenRecord, TokenUid, UsageStats, micros,
    },
};

/// A token row: its record (usage summary left at zero) and sealed value,
/// with replacement links by uid as the real stores keep them.
#[derive(Clone)]
struct Row {
    record: TokenRecord,
    sealed: SealedValue,
    replaces: Option<TokenUid>,
    replaced_by: Option<TokenUid>,
}

#[derive(Default)]
struct State {
    keyring: Option<KeyringRecords>,
    rows: BTreeMap<i64, Row>,
    next_seq: i64,
    bindings: Vec<(TokenUid, BindingRecord)>,
    usage: HashMap<(TokenUid, String), UsageStats>,
    audit: Vec<ChainLink>,
    base: Option<super::Checkpoint>,
    generation: i64,
}

/// Every store trait over maps in memory.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    fail_writes: AtomicBool,
    /// While held, a usage flush waits before it writes (see
    /// [`MemoryStore::hold_flushes`]).
    flush_hold: tokio::sync::Mutex<()>,
    /// Told each time a flush reaches that wait.
    flush_waiting: tokio::sync::Notify,
    chain: std::sync::RwLock<Option<Arc<ChainKey>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every write fail (`true`) as an unreachable database would, or
    /// work again (`false`).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Holds every usage flush before its write until the guard is
    /// dropped: the window in which the tracker has handed its counters
    /// over and the store does not hold them yet.
    pub async fn hold_flushes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.flush_hold.lock().await
    }

    /// Completes once a flush waits on [`MemoryStore::hold_flushes`].
    pub async fn flush_waiting(&self) {
        self.flush_waiting.notified().await;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `work` as one transaction: on error nothing it did remains; on
    /// success its audit events are appended to the chain.
    fn write<T>(&self, work: impl FnOnce(&mut State) -> Result<(T, Vec<AuditEvent>)>) -> Result<T> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(Error::Storage("writes are switched off".into()));
        }
        let mut state = self.state();
        let mut draft = state.clone_all();
        let (value, events) = work(&mut draft)?;
        if !events.is_empty() {
            let key = self.chain_key().ok_or_else(|| {
                Error::Internal("the audit chain key is not loaded; nothing can be audited".into())
            })?;
            draft.append(&key, events);
        }
        *state = draft;
        Ok(value)
    }

    fn chain_key(&self) -> Option<Arc<ChainKey>> {
        self.chain.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl State {
    fn clone_all(&self) -> Self {
        Self {
            keyring: self.keyring.clone(),
            rows: self.rows.clone(),
            next_seq: self.next_seq,
            bindings: self.bindings.clone(),
            usage: self.usage.clone(),
            audit: self.audit.clone(),
            base: self.base.clone(),
            generation: self.generation,
        }
    }

    fn append(&mut self, key: &ChainKey, events: Vec<AuditEvent>) {
        for event in events {
            let (last_seq, prev) = match (self.audit.last(), &self.base) {
                (Some(l), _) => (l.record.seq, l.hash.clone()),
                (None, Some(base)) => (base.seq, base.head.clone()),
                (None, None) => (0, GENESIS.to_vec()),
            };
            let seq = last_seq + 1;
            let hash = key.link(&prev, seq, &event).to_vec();
            self.audit.push(ChainLink {
                stored_outcome: event.outcome.as_str().to_owned(),
                record: AuditRecord { seq, event },
                prev_hash: prev,
                hash,
            });
        }
    }

    fn seq_of(&self, name: &TokenName) -> Option<i64> {
        self.rows
            .iter()
            .find(|(_, row)| row.record.name == *name)
            .map(|(seq, _)| *seq)
    }

    fn row(&self, name: &TokenName) -> Result<&Row> {
        let seq = self.seq_of(name).ok_or(Error::NotFound("token"))?;
        Ok(&self.rows[&seq])
    }

    fn id_of(&self, uid: Option<TokenUid>) -> Option<TokenId> {
        let uid = uid?;
        self.rows
            .values()
            .find(|row| row.record.uid == uid)
            .map(|row| row.record.name.token_id.clone())
    }

    /// The record as the real stores read it: links as ids, usage summed.
    fn record(&self, row: &Row) -> TokenRecord {
        let mut record = row.record.clone();
        record.replaces = self.id_of(row.replaces);
        record.replaced_by = self.id_of(row.replaced_by);
        for ((uid, _), stats) in &self.usage {
            if *uid == record.uid {
                record.resolve_count += stats.resolve_count;
                record.last_resolve = record
                    .last_resolve
                    .max(stats.last_resolve_us.map(crate::model::from_micros));
            }
        }
        record
    }

    fn bindings_of(&self, uid: TokenUid) -> Vec<BindingRecord> {
        let mut found: Vec<_> = self
            .bindings
            .iter()
            .filter(|(owner, _)| *owner == uid)
            .map(|(_, b)| b.clone())
            .collect();
        found.sort_by(|a, b| {
            (micros(a.create_time), &a.binding_id).cmp(&(micros(b.create_time), &b.binding_id))
        });
        found
    }

    fn usage_of(&self, uid: TokenUid) -> Vec<(String, UsageStats)> {
        self.usage
            .iter()
            .filter(|((owner, _), _)| *owner == uid)
            .map(|((_, identity), stats)| (identity.clone(), *stats))
            .collect()
    }

    fn sealed(&self, row: &Row) -> SealedToken {
        let mut bound_identities: Vec<String> = self
            .bindings_of(row.record.uid)
            .into_iter()
            .filter_map(|b| b.caller_identity)
            .collect();
        bound_identities.sort();
        SealedToken {
            uid: row.record.uid,
            disabled: row.record.disabled,
            replaced: row.replaced_by.is_some(),
            sealed: row.sealed.clone(),
            bound_identities,
        }
    }

    fn insert(
        &mut self,
        mut record: TokenRecord,
        sealed: SealedValue,
        replaces: Option<&TokenId>,
    ) -> Result<TokenRecord> {
        if self.seq_of(&record.name).is_some() {
            return Err(Error::AlreadyExists("token"));
        }
        let replaces_uid = match replaces {
            None => None,
            Some(old) => {
                let old = record.sibling(old);
                let old_seq = self.seq_of(&old).ok_or_else(|| {
                    Error::invalid("replaces", "must name an existing token of the same tenant")
                })?;
                let old_row = self
                    .rows
                    .get_mut(&old_seq)
                    .ok_or(Error::NotFound("token"))?;
                if old_row.replaced_by.is_some() {
                    return Err(Error::already_replaced());
                }
                old_row.replaced_by = Some(record.uid);
                self.generation += 1;
                Some(old_row.record.uid)
            }
        };
        self.next_seq += 1;
        record.seq = self.next_seq;
        let row = Row {
            record,
            sealed,
            replaces: replaces_uid,
            replaced_by: None,
        };
        let stored = self.record(&row);
        self.rows.insert(self.next_seq, row);
        Ok(stored)
    }
}

fn keyring_unchanged(state: &State, expected: &KeyringRecords) -> Result<()> {
    let stored = state
        .keyring
        .as_ref()
        .ok_or_else(|| Error::database("no keyring"))?;
    if stored.key_check != expected.key_check
        || stored.current_version != expected.current_version
        || stored.versions() != expected.versions()
    {
        return Err(Error::FailedPrecondition {
            reason: "KEYRING_CHANGED",
            message: "the keyring changed meanwhile (another rotation or rekey); check `aitokens keys status` and retry",
            violations: Vec::new(),
        });
    }
    Ok(())
}

mod impls;
