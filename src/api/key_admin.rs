//! `aitokens.v1.KeyAdmin`: key rotation and retirement on a running server,
//! for the key-admin role only.

use tonic::{Request, Response, Status};

use super::call::Call;
use crate::{
    auth::{Authorizer, Scope},
    model::Outcome,
    proto::{
        self, DestroyOldKeysRequest, DestroyOldKeysResponse, GetKeyStatusRequest, KekVersion,
        RotateKeysRequest, key_admin_server,
    },
    rotation::{KeyRotation, KeyStatus},
};

/// Every KeyAdmin call acts on this resource.
const KEYRING: &str = "keyring";

/// Serves KeyAdmin.
#[derive(Clone)]
pub struct KeyAdminApi {
    keys: KeyRotation,
    auth: Authorizer,
}

impl KeyAdminApi {
    /// Handlers over `keys`, authorized by `auth`.
    pub fn new(keys: KeyRotation, auth: Authorizer) -> Self {
        Self { keys, auth }
    }
}

fn status(status: KeyStatus) -> proto::KeyStatus {
    proto::KeyStatus {
        current_version: status.current_version,
        pending_rewrap: status.pending(),
        versions: status
            .versions
            .into_iter()
            .map(|(version, data_keys)| KekVersion { version, data_keys })
            .collect(),
    }
}

#[tonic::async_trait]
impl key_admin_server::KeyAdmin for KeyAdminApi {
    #[tracing::instrument(name = "GetKeyStatus", skip_all)]
    async fn get_key_status(
        &self,
        request: Request<GetKeyStatusRequest>,
    ) -> Result<Response<proto::KeyStatus>, Status> {
        let call = Call::authorize(&self.auth, &request, Scope::KeyAdmin, KEYRING)?;
        let current = call.read(self.keys.status().await)?;
        Ok(Response::new(status(current)))
    }

    #[tracing::instrument(name = "RotateKeys", skip_all)]
    async fn rotate_keys(
        &self,
        request: Request<RotateKeysRequest>,
    ) -> Result<Response<proto::KeyStatus>, Status> {
        let call = Call::authorize(&self.auth, &request, Scope::KeyAdmin, KEYRING)?;
        let event = call
            .actor
            .event(None, KEYRING, Outcome::Allowed, "KEK rotated");
        call.finish(self.keys.rotate(vec![event]).await)?;
        let current = call.finish(self.keys.status().await)?;
        tracing::info!(caller = %call.actor.identity, version = current.current_version, "KEK rotated");
        Ok(Response::new(status(current)))
    }

    #[tracing::instrument(name = "DestroyOldKeys", skip_all)]
    async fn destroy_old_keys(
        &self,
        request: Request<DestroyOldKeysRequest>,
    ) -> Result<Response<DestroyOldKeysResponse>, Status> {
        let call = Call::authorize(&self.auth, &request, Scope::KeyAdmin, KEYRING)?;
        let event = call.actor.event(
            None,
            KEYRING,
            Outcome::Allowed,
            "old KEK versions destroyed",
        );
        let destroyed = call.finish(self.keys.destroy_old(&event).await)?;
        let current = call.finish(self.keys.status().await)?;
        tracing::info!(caller = %call.actor.identity, ?destroyed, "old KEK versions destroyed");
        Ok(Response::new(DestroyOldKeysResponse {
            destroyed_versions: destroyed,
            status: Some(status(current)),
        }))
    }
}
