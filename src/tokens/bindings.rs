//! Bindings: consumers declare that they use a token, so that removing it
//! is refused while they do (and, in bindings-only mode, so that only they
//! may resolve it).

use std::sync::Arc;

use super::{SealedCache, detached, rules};
use crate::{
    error::{Error, Result},
    model::{
        Actor, Binding, BindingId, BindingName, BindingRecord, Outcome, TokenName, is_identity, now,
    },
    store::BindingStore,
};

/// Binding operations.
#[derive(Clone)]
pub struct Bindings {
    store: Arc<dyn BindingStore>,
    cache: Arc<SealedCache>,
}

impl Bindings {
    /// Operations over `store`; changes invalidate `cache` (bindings decide
    /// who may resolve in bindings-only mode).
    pub(super) fn new(store: Arc<dyn BindingStore>, cache: Arc<SealedCache>) -> Self {
        Self { store, cache }
    }

    /// Declares that consumer `binding_id` uses `token`.
    pub async fn create(
        &self,
        actor: &Actor,
        token: TokenName,
        binding_id: &str,
        caller_identity: &str,
        purpose: &str,
    ) -> Result<Binding> {
        let binding_id = BindingId::new(binding_id, "binding_id")?;
        rules::validate_display_name(purpose, "binding.purpose")?;
        let caller_identity = match caller_identity {
            "" => None,
            identity if is_identity(identity) => Some(identity.to_owned()),
            _ => {
                return Err(Error::invalid(
                    "binding.caller_identity",
                    "must be a certificate identity (a URI such as spiffe://..., or dns:NAME) without spaces",
                ));
            }
        };
        let record = BindingRecord {
            binding_id: binding_id.clone(),
            caller_identity,
            purpose: purpose.to_owned(),
            create_time: now(),
        };
        let name = BindingName { token, binding_id };
        let event = actor.event(
            Some(name.token.tenant.as_str()),
            name.to_string(),
            Outcome::Allowed,
            "binding created",
        );
        let (store, cache) = (self.store.clone(), self.cache.clone());
        detached(async move {
            let created = store
                .create_binding(&name.token, record.clone(), vec![event])
                .await;
            cache.invalidate(&name.token);
            created.map(|()| Binding { name, record })
        })
        .await
    }

    /// A token's bindings.
    pub async fn list(&self, token: &TokenName) -> Result<Vec<Binding>> {
        let records = self.store.list_bindings(token).await?;
        Ok(records
            .into_iter()
            .map(|record| Binding {
                name: BindingName {
                    token: token.clone(),
                    binding_id: record.binding_id.clone(),
                },
                record,
            })
            .collect())
    }

    /// Withdraws a binding.
    pub async fn delete(&self, actor: &Actor, name: BindingName) -> Result<()> {
        let event = actor.event(
            Some(name.token.tenant.as_str()),
            name.to_string(),
            Outcome::Allowed,
            "binding deleted",
        );
        let (store, cache) = (self.store.clone(), self.cache.clone());
        detached(async move {
            let deleted = store
                .delete_binding(&name.token, &name.binding_id, vec![event])
                .await;
            cache.invalidate(&name.token);
            deleted
        })
        .await
    }
}
