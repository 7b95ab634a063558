//! etcd's `Lease` service on `service::lease`: grant and revoke go through the log (from any
//! node: forwarded to the leader like every write); keep-alive and time-to-live are answered by
//! the leader (a follower relays each request to it); the list is read locally after the read
//! barrier. Answers as etcd 3.4's `v3rpc/lease.go` does, including its quiet cases: a
//! keep-alive of an unknown lease answers TTL 0, a time-to-live of one answers TTL -1.

use etcd_client::proto::PbLeaseGrantRequest;
use etcd_client::proto::PbLeaseGrantResponse;
use etcd_client::proto::PbLeaseKeepAliveRequest;
use etcd_client::proto::PbLeaseKeepAliveResponse;
use etcd_client::proto::PbLeaseLeasesRequest;
use etcd_client::proto::PbLeaseLeasesResponse;
use etcd_client::proto::PbLeaseRevokeRequest;
use etcd_client::proto::PbLeaseRevokeResponse;
use etcd_client::proto::PbLeaseService;
use etcd_client::proto::PbLeaseStatus;
use etcd_client::proto::PbLeaseTimeToLiveRequest;
use etcd_client::proto::PbLeaseTimeToLiveResponse;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::api::etcd::error::EtcdError;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::mvcc::MvccError;
use crate::raft::read::ReadLevel;
use crate::service::lease;
use crate::service::lease::LeaseAsk;

/// Keep-alive answers queued for one stream's client.
pub const KEEPALIVE_RESPONSES_MAX: usize = 16;

pub struct LeaseService {
    app: SharedApp,
}

impl LeaseService {
    pub fn new(app: SharedApp) -> Self {
        LeaseService { app }
    }
}

fn not_found(e: &KvError) -> bool {
    matches!(e, KvError::Store(MvccError::LeaseNotFound { .. }))
}

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let r = request.into_inner();
        let (id, ttl) = lease::grant(&self.app, r.id, r.ttl)
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(PbLeaseGrantResponse {
            header: Some(super::header(&self.app)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let revision = lease::revoke(&self.app, id)
            .await
            .map_err(EtcdError::from)?;
        let header = etcd_client::proto::PbResponseHeader {
            revision,
            ..super::header(&self.app)
        };
        Ok(Response::new(PbLeaseRevokeResponse {
            header: Some(header),
        }))
    }

    type LeaseKeepAliveStream = BoxStream<'static, Result<PbLeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_RESPONSES_MAX);
        let app = self.app.clone();
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    request = inbound.message() => request,
                    () = tx.closed() => return,
                };
                let Ok(Some(request)) = request else { return };
                // The header is taken before the renewal (as etcd does), so a lease revoked at
                // revision R is never seen kept alive at a revision after R.
                let header = super::header(&app);
                let answer = match lease::ask(&app, LeaseAsk::KeepAlive { id: request.id }).await {
                    Ok(t) => Ok(t.granted),
                    Err(e) if not_found(&e) => Ok(0),
                    Err(e) => Err(Status::from(EtcdError::from(e))),
                };
                let response = answer.map(|ttl| PbLeaseKeepAliveResponse {
                    header: Some(header),
                    id: request.id,
                    ttl,
                });
                let failed = response.is_err();
                if tx.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let (ttl, granted_ttl) =
            match lease::ask(&self.app, LeaseAsk::TimeToLive { id: r.id }).await {
                Ok(t) => (t.remaining, t.granted),
                Err(e) if not_found(&e) => (-1, 0),
                Err(e) => return Err(EtcdError::from(e).into()),
            };
        let keys = if r.keys && ttl >= 0 {
            let keys = self.app.state_machine.lease_keys(r.id);
            keys.into_iter().map(|k| k.to_vec()).collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(PbLeaseTimeToLiveResponse {
            header: Some(super::header(&self.app)),
            id: r.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        crate::raft::read::read_barrier(&self.app, ReadLevel::Linearizable)
            .await
            .map_err(EtcdError::from)?;
        let leases = self.app.state_machine.lease_ttls();
        Ok(Response::new(PbLeaseLeasesResponse {
            header: Some(super::header(&self.app)),
            leases: leases
                .into_iter()
                .map(|(id, _)| PbLeaseStatus { id })
                .collect(),
        }))
    }
}
