//! The store traits over [`MemoryStore`].

use super::*;

#[async_trait]
impl TokenStore for MemoryStore {
    async fn insert(
        &self,
        record: TokenRecord,
        sealed: SealedValue,
        replaces: Option<TokenId>,
        events: Vec<AuditEvent>,
    ) -> Result<TokenRecord> {
        self.write(|state| Ok((state.insert(record, sealed, replaces.as_ref())?, events)))
    }

    async fn get(&self, name: &TokenName) -> Result<Option<TokenRecord>> {
        let state = self.state();
        Ok(state.row(name).ok().map(|row| state.record(row)))
    }

    async fn get_sealed(&self, name: &TokenName) -> Result<Option<SealedToken>> {
        let state = self.state();
        Ok(state.row(name).ok().map(|row| state.sealed(row)))
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: usize,
        unused_since_us: Option<i64>,
    ) -> Result<Vec<TokenRecord>> {
        let state = self.state();
        let used_since = |uid: TokenUid, since: i64| {
            state
                .usage_of(uid)
                .iter()
                .any(|(_, s)| s.last_resolve_us.is_some_and(|t| t >= since))
        };
        Ok(state
            .rows
            .range(after_seq.saturating_add(1)..)
            .map(|(_, row)| row)
            .filter(|row| row.record.name.tenant == *tenant)
            .filter(|row| {
                unused_since_us.is_none_or(|since| {
                    micros(row.record.create_time) < since && !used_since(row.record.uid, since)
                })
            })
            .take(limit)
            .map(|row| state.record(row))
            .collect())
    }

    async fn update(&self, name: &TokenName, mut change: UpdateFn) -> Result<TokenRecord> {
        self.write(|state| {
            let seq = state.seq_of(name).ok_or(Error::NotFound("token"))?;
            let current = state.record(&state.rows[&seq]);
            let (updated, events) = change(&current)?;
            if updated.name != current.name && state.seq_of(&updated.name).is_some() {
                return Err(Error::AlreadyExists("token"));
            }
            let row = state.rows.get_mut(&seq).ok_or(Error::NotFound("token"))?;
            row.record.name.token_id = updated.name.token_id.clone();
            row.record.display_name = updated.display_name.clone();
            row.record.update_time = updated.update_time;
            row.record.revision = updated.revision;
            row.record.disabled = updated.disabled;
            state.generation += 1;
            let stored = state.record(&state.rows[&seq]);
            Ok((stored, events))
        })
    }

    async fn delete(&self, name: &TokenName, mut decide: RemoveFn) -> Result<TokenRecord> {
        self.write(|state| {
            let seq = state.seq_of(name).ok_or(Error::NotFound("token"))?;
            let current = state.record(&state.rows[&seq]);
            let context = RemovalContext {
                bindings: state.bindings_of(current.uid),
                usage: state.usage_of(current.uid),
            };
            let events = decide(&current, &context)?;
            state.rows.remove(&seq);
            for row in state.rows.values_mut() {
                if row.replaced_by == Some(current.uid) {
                    row.replaced_by = None;
                }
            }
            state.bindings.retain(|(uid, _)| *uid != current.uid);
            state.usage.retain(|(uid, _), _| *uid != current.uid);
            state.generation += 1;
            Ok((current, events))
        })
    }

    async fn change_generation(&self) -> Result<i64> {
        Ok(self.state().generation)
    }

    async fn scan_sealed(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TokenName, SealedToken)>> {
        let state = self.state();
        Ok(state
            .rows
            .range(after_seq.saturating_add(1)..)
            .take(limit)
            .map(|(seq, row)| (*seq, row.record.name.clone(), state.sealed(row)))
            .collect())
    }

    async fn count(&self) -> Result<u64> {
        Ok(self.state().rows.len() as u64)
    }

    async fn tenants(&self) -> Result<Vec<TenantId>> {
        let tenants: std::collections::BTreeSet<TenantId> = self
            .state()
            .rows
            .values()
            .map(|row| row.record.name.tenant.clone())
            .collect();
        Ok(tenants.into_iter().collect())
    }
}

#[async_trait]
impl BindingStore for MemoryStore {
    async fn create_binding(
        &self,
        token: &TokenName,
        binding: BindingRecord,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        self.write(|state| {
            let uid = state.row(token)?.record.uid;
            if state
                .bindings
                .iter()
                .any(|(owner, b)| *owner == uid && b.binding_id == binding.binding_id)
            {
                return Err(Error::AlreadyExists("binding"));
            }
            state.bindings.push((uid, binding));
            state.generation += 1;
            Ok(((), events))
        })
    }

    async fn list_bindings(&self, token: &TokenName) -> Result<Vec<BindingRecord>> {
        let state = self.state();
        let uid = state.row(token)?.record.uid;
        Ok(state.bindings_of(uid))
    }

    async fn delete_binding(
        &self,
        token: &TokenName,
        binding_id: &BindingId,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        self.write(|state| {
            let uid = state.row(token)?.record.uid;
            let before = state.bindings.len();
            state
                .bindings
                .retain(|(owner, b)| !(*owner == uid && b.binding_id == *binding_id));
            if state.bindings.len() == before {
                return Err(Error::NotFound("binding"));
            }
            state.generation += 1;
            Ok(((), events))
        })
    }
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn usage(&self, uid: &TokenUid) -> Result<Vec<(String, UsageStats)>> {
        Ok(self.state().usage_of(*uid))
    }

    async fn flush(&self, pending: Pending) -> std::result::Result<(), Unflushed> {
        self.flush_waiting.notify_one();
        drop(self.flush_hold.lock().await);
        let written = self.write(|state| {
            let by_name = pending.usage.by_name.iter().filter_map(|(name, id, s)| {
                state.row(name).ok().map(|row| (row.record.uid, id, s))
            });
            let all: Vec<(TokenUid, String, UsageStats)> = pending
                .usage
                .by_uid
                .iter()
                .map(|d| (d.uid, &d.caller, &d.stats))
                .chain(by_name)
                .map(|(uid, id, s)| (uid, id.clone(), *s))
                .collect();
            for (uid, identity, delta) in all {
                // A token removed since is skipped (its usage went with it).
                if state.rows.values().any(|row| row.record.uid == uid) {
                    state
                        .usage
                        .entry((uid, identity))
                        .or_default()
                        .merge(&delta);
                }
            }
            Ok(((), pending.events.clone()))
        });
        written.map_err(|error| Unflushed { error, pending })
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    fn use_chain_key(&self, key: Arc<ChainKey>) {
        *self.chain.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let state = self.state();
        let matches = |e: &AuditEvent| {
            let t = micros(e.time);
            filter
                .tenant
                .as_ref()
                .is_none_or(|t| e.tenant.as_deref() == Some(t.as_str()))
                && filter
                    .resource
                    .as_ref()
                    .is_none_or(|r| e.resource == *r || e.resource.starts_with(&format!("{r}/")))
                && filter.actor.as_ref().is_none_or(|a| e.actor == *a)
                && filter.method.as_ref().is_none_or(|m| e.method == *m)
                && filter.start_us.is_none_or(|s| t >= s)
                && filter.end_us.is_none_or(|end| t < end)
        };
        Ok(state
            .audit
            .iter()
            .map(|l| &l.record)
            .filter(|r| r.seq > after_seq && matches(&r.event))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn chain_links(&self, after_seq: i64, limit: usize) -> Result<Vec<ChainLink>> {
        let state = self.state();
        Ok(state
            .audit
            .iter()
            .filter(|l| l.record.seq > after_seq)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn chain_head(&self) -> Result<Option<(i64, Vec<u8>)>> {
        let state = self.state();
        Ok(match (state.audit.last(), &state.base) {
            (Some(l), _) => Some((l.record.seq, l.hash.clone())),
            (None, Some(base)) => Some((base.seq, base.head.clone())),
            (None, None) => None,
        })
    }

    async fn chain_base(&self) -> Result<Option<super::super::Checkpoint>> {
        Ok(self.state().base.clone())
    }

    async fn relink(&self) -> Result<i64> {
        // This store has only ever linked under a key.
        Ok(0)
    }

    async fn prune(&self, base: super::super::Checkpoint) -> Result<usize> {
        self.write(|state| {
            let held = state
                .audit
                .iter()
                .find(|l| l.record.seq == base.seq)
                .map(|l| l.hash.clone());
            if held.as_deref() != Some(base.head.as_slice()) {
                return Err(Error::invalid(
                    "through_seq",
                    "must name a record in the trail, whose link the checkpoint holds",
                ));
            }
            let before = state.audit.len();
            state.audit.retain(|l| l.record.seq > base.seq);
            let deleted = before - state.audit.len();
            state.base = Some(base);
            Ok((deleted, Vec::new()))
        })
    }
}

#[async_trait]
impl KeyringStore for MemoryStore {
    async fn keyring(&self) -> Result<Option<KeyringRecords>> {
        Ok(self.state().keyring.clone())
    }

    async fn init_keyring(&self, records: KeyringRecords) -> Result<()> {
        self.write(|state| {
            if state.keyring.is_some() {
                return Err(Error::database(
                    "the database already has a keyring (it is initialized)",
                ));
            }
            state.keyring = Some(records);
            Ok(((), Vec::new()))
        })
    }

    async fn kek_usage(&self) -> Result<Vec<(u32, i64)>> {
        let state = self.state();
        let versions = state
            .keyring
            .as_ref()
            .map(KeyringRecords::versions)
            .unwrap_or_default();
        Ok(versions
            .into_iter()
            .map(|v| {
                let rows = state.rows.values().filter(|r| r.sealed.kek_version == v);
                (v, rows.count() as i64)
            })
            .collect())
    }

    async fn add_kek(
        &self,
        expected: KeyringRecords,
        version: u32,
        sealed: Vec<u8>,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        self.write(|state| {
            keyring_unchanged(state, &expected)?;
            let keyring = state.keyring.as_mut().ok_or(Error::NotFound("keyring"))?;
            keyring.sealed_keks.push((version, sealed));
            keyring.current_version = version;
            Ok(((), events))
        })
    }

    async fn rewrap_batch(
        &self,
        current: u32,
        after_seq: i64,
        limit: usize,
        mut rewrap: RewrapFn,
    ) -> Result<RewrapBatch> {
        self.write(|state| {
            let mut batch = RewrapBatch {
                last_seq: after_seq,
                ..RewrapBatch::default()
            };
            let seqs: Vec<i64> = state
                .rows
                .range(after_seq.saturating_add(1)..)
                .filter(|(_, r)| r.sealed.kek_version != current)
                .map(|(seq, _)| *seq)
                .take(limit)
                .collect();
            for seq in seqs {
                let row = state.rows.get_mut(&seq).ok_or(Error::NotFound("token"))?;
                let (name, sealed) = (&row.record.name, &row.sealed);
                batch.scanned += 1;
                batch.last_seq = seq;
                let tenant = name.tenant.as_str();
                match rewrap(
                    tenant,
                    &row.record.uid,
                    sealed.kek_version,
                    &sealed.wrapped_data_key,
                ) {
                    Ok(rewrapped) => {
                        row.sealed.kek_version = current;
                        row.sealed.wrapped_data_key = rewrapped;
                        batch.moved += 1;
                    }
                    Err(Error::DataLoss) => batch.damaged.push((seq, name.to_string())),
                    Err(other) => return Err(other),
                }
            }
            if batch.moved > 0 {
                state.generation += 1;
            }
            Ok((batch, Vec::new()))
        })
    }

    async fn add_audit_key(&self, expected: KeyringRecords, sealed: Vec<u8>) -> Result<()> {
        self.write(|state| {
            keyring_unchanged(state, &expected)?;
            let keyring = state.keyring.as_mut().ok_or(Error::NotFound("keyring"))?;
            if keyring.sealed_audit_key.is_some() {
                return Err(Error::FailedPrecondition {
                    reason: "KEYRING_CHANGED",
                    message: "the keyring changed meanwhile (another rotation or rekey); check `aitokens keys status` and retry",
                    violations: Vec::new(),
                });
            }
            keyring.sealed_audit_key = Some(sealed);
            Ok(((), Vec::new()))
        })
    }

    async fn destroy_kek(&self, version: u32, events: Vec<AuditEvent>) -> Result<()> {
        self.write(|state| {
            let used = state.rows.values().any(|r| r.sealed.kek_version == version);
            let keyring = state.keyring.as_mut().ok_or(Error::NotFound("keyring"))?;
            if version == keyring.current_version || used {
                return Err(Error::FailedPrecondition {
                    reason: "KEK_IN_USE",
                    message: "this KEK version is current or still wraps data keys; \
                              rotate and wait for the re-wrap job",
                    violations: Vec::new(),
                });
            }
            keyring.sealed_keks.retain(|(v, _)| *v != version);
            Ok(((), events))
        })
    }

    async fn replace_keyring(
        &self,
        expected: KeyringRecords,
        records: KeyringRecords,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        self.write(|state| {
            keyring_unchanged(state, &expected)?;
            state.keyring = Some(records);
            Ok(((), events))
        })
    }
}

#[async_trait]
impl Maintenance for MemoryStore {
    async fn checkpoint(&self) -> Result<()> {
        Ok(())
    }

    async fn vacuum(&self) -> Result<()> {
        Ok(())
    }

    async fn lease(&self, _job: &'static str) -> Result<Option<crate::store::Lease>> {
        Ok(Some(crate::store::Lease::free()))
    }

    async fn backup(&self, _dest: &Path) -> Result<()> {
        Err(Error::file("the in-memory store has no file to back up"))
    }
}
