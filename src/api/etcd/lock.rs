//! etcd's `Lock` service (`v3lockpb.Lock`) on `service::lock`: `Lock` waits until the lease
//! holds the named lock and answers its key, `Unlock` deletes a key. Served by any node: the
//! writes go through the write path (forwarded from a follower), the wait follows the answering
//! node's own feed.
//!
//! A `Lock` waits as long as the client does: when the call is dropped (the client cancelled
//! or its deadline passed) the wait stops and the queued key is deleted, as etcd does. While it
//! waits it holds one of the [`super::GRPC_IN_FLIGHT_MAX`] call slots, and a node shutting down
//! ends it with etcd's "server stopped" (so the drain is not held up).

use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::etcd::error::EtcdError;
use crate::api::etcd::pb::v3lockpb::LockRequest;
use crate::api::etcd::pb::v3lockpb::LockResponse;
use crate::api::etcd::pb::v3lockpb::UnlockRequest;
use crate::api::etcd::pb::v3lockpb::UnlockResponse;
use crate::api::etcd::pb::v3lockpb::lock_server::Lock;
use crate::app::SharedApp;
use crate::service::lock;

pub struct LockService {
    app: SharedApp,
}

impl LockService {
    pub fn new(app: SharedApp) -> Self {
        LockService { app }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let r = request.into_inner();
        let held = lock::lock(&self.app, &r.name, r.lease)
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(LockResponse {
            header: Some(super::header_at(&self.app, held.revision)),
            key: held.key.to_vec(),
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let key = request.into_inner().key;
        let revision = lock::unlock(&self.app, &key)
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(UnlockResponse {
            header: Some(super::header_at(&self.app, revision)),
        }))
    }
}
