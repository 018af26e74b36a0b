//! `aitokens.v1.KeyAdmin`: key rotation and retirement on a running server,
//! for the key-admin role only.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    identify,
    pb::{
        self, DestroyOldKeysRequest, DestroyOldKeysResponse, GetKeyStatusRequest, KekVersion,
        RotateKeysRequest, key_admin_server,
    },
};
use crate::{
    audit::{Actor, AuditQueue, Outcome},
    auth::PolicyHandle,
    error::{Error, Result},
    keys::{KeyStatus, Keys},
};

/// Serves KeyAdmin.
#[derive(Clone)]
pub struct KeyAdminApi {
    keys: Keys,
    policy: Arc<PolicyHandle>,
    audit: Arc<AuditQueue>,
}

impl KeyAdminApi {
    /// Handlers over `keys`, authorized by `policy`, decisions queued on `audit`.
    pub fn new(keys: Keys, policy: Arc<PolicyHandle>, audit: Arc<AuditQueue>) -> Self {
        Self {
            keys,
            policy,
            audit,
        }
    }

    fn authorize<T>(&self, request: &Request<T>, method: &'static str) -> Result<Actor> {
        let (peer, mut actor) = identify(request, method, "keyring", &self.audit)?;
        match self.policy.current().authorize_key_admin(&peer) {
            Ok(caller) => {
                actor.identity = caller.identity;
                Ok(actor)
            }
            Err(e) => {
                tracing::warn!(method, caller = %actor.identity, "key admin request denied");
                self.audit
                    .push(actor.event(None, "keyring", Outcome::Denied, "not a key admin"));
                Err(e)
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(Keys) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || work(keys))
            .await
            .map_err(|e| Error::Internal(format!("key task failed: {e}")))?
    }
}

impl From<KeyStatus> for pb::KeyStatus {
    fn from(status: KeyStatus) -> Self {
        Self {
            current_version: status.current_version,
            pending_rewrap: status.pending(),
            versions: status
                .versions
                .into_iter()
                .map(|(version, data_keys)| KekVersion { version, data_keys })
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl key_admin_server::KeyAdmin for KeyAdminApi {
    #[tracing::instrument(name = "GetKeyStatus", skip_all)]
    async fn get_key_status(
        &self,
        request: Request<GetKeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatus>, Status> {
        let actor = self.authorize(&request, "aitokens.v1.KeyAdmin/GetKeyStatus")?;
        let status = self.blocking(|keys| keys.status()).await?;
        self.audit
            .push(actor.event(None, "keyring", Outcome::Allowed, "read"));
        Ok(Response::new(status.into()))
    }

    #[tracing::instrument(name = "RotateKeys", skip_all)]
    async fn rotate_keys(
        &self,
        request: Request<RotateKeysRequest>,
    ) -> Result<Response<pb::KeyStatus>, Status> {
        let actor = self.authorize(&request, "aitokens.v1.KeyAdmin/RotateKeys")?;
        let event = actor.event(None, "keyring", Outcome::Allowed, "KEK rotated");
        let status = self
            .blocking(move |keys| {
                keys.rotate(&[event])?;
                keys.status()
            })
            .await?;
        tracing::info!(caller = %actor.identity, version = status.current_version, "KEK rotated");
        Ok(Response::new(status.into()))
    }

    #[tracing::instrument(name = "DestroyOldKeys", skip_all)]
    async fn destroy_old_keys(
        &self,
        request: Request<DestroyOldKeysRequest>,
    ) -> Result<Response<DestroyOldKeysResponse>, Status> {
        let actor = self.authorize(&request, "aitokens.v1.KeyAdmin/DestroyOldKeys")?;
        let event = actor.event(
            None,
            "keyring",
            Outcome::Allowed,
            "old KEK versions destroyed",
        );
        let (destroyed, status) = self
            .blocking(move |keys| {
                let destroyed = keys.destroy_old(&event)?;
                Ok((destroyed, keys.status()?))
            })
            .await?;
        tracing::info!(caller = %actor.identity, ?destroyed, "old KEK versions destroyed");
        Ok(Response::new(DestroyOldKeysResponse {
            destroyed_versions: destroyed,
            status: Some(status.into()),
        }))
    }
}
