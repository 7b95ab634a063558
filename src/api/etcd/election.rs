//! etcd's `Election` service (`v3electionpb.Election`) on `service::election`: `Campaign`
//! waits for leadership (like a `Lock`, see `lock.rs`: a dropped call resigns its candidacy),
//! `Proclaim` / `Resign` act with the `LeaderKey` a campaign answered, `Leader` reads the
//! current leader, `Observe` streams every leader and value change.
//!
//! `Observe` runs in its own task, sending into a queue of [`OBSERVE_RESPONSES_MAX`]
//! responses; it stops when the client goes away or the node shuts down, and ends the stream
//! with the error when a read fails (etcd 3.4 closes it then without one).

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::etcd::error::EtcdError;
use crate::api::etcd::pb::v3electionpb::CampaignRequest;
use crate::api::etcd::pb::v3electionpb::CampaignResponse;
use crate::api::etcd::pb::v3electionpb::LeaderKey as PbLeaderKey;
use crate::api::etcd::pb::v3electionpb::LeaderRequest;
use crate::api::etcd::pb::v3electionpb::LeaderResponse;
use crate::api::etcd::pb::v3electionpb::ProclaimRequest;
use crate::api::etcd::pb::v3electionpb::ProclaimResponse;
use crate::api::etcd::pb::v3electionpb::ResignRequest;
use crate::api::etcd::pb::v3electionpb::ResignResponse;
use crate::api::etcd::pb::v3electionpb::election_server::Election;
use crate::app::SharedApp;
use crate::service::election;
use crate::service::election::LeaderKey;
use crate::service::election::Observer;

/// Leader updates queued for one `Observe` client before its task waits.
pub const OBSERVE_RESPONSES_MAX: usize = 16;

pub struct ElectionService {
    app: SharedApp,
}

impl ElectionService {
    pub fn new(app: SharedApp) -> Self {
        ElectionService { app }
    }
}

/// The request's `LeaderKey`, which Proclaim and Resign must carry.
fn leader_key(leader: Option<PbLeaderKey>) -> Result<LeaderKey, EtcdError> {
    let l = leader.ok_or(EtcdError::MissingLeaderKey)?;
    Ok(LeaderKey {
        name: Bytes::from(l.name),
        key: Bytes::from(l.key),
        rev: l.rev,
        lease: l.lease,
    })
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let r = request.into_inner();
        let held = election::campaign(&self.app, &r.name, r.lease, Bytes::from(r.value))
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(CampaignResponse {
            header: Some(super::header_at(&self.app, held.revision)),
            leader: Some(PbLeaderKey {
                name: r.name,
                key: held.key.to_vec(),
                rev: held.create_revision,
                lease: held.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let r = request.into_inner();
        let leader = leader_key(r.leader)?;
        let revision = election::proclaim(&self.app, &leader, Bytes::from(r.value))
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(ProclaimResponse {
            header: Some(super::header_at(&self.app, revision)),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let name = request.into_inner().name;
        let (revision, kv) = election::leader(&self.app, &name)
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(LeaderResponse {
            header: Some(super::header_at(&self.app, revision)),
            kv: Some(super::kv::pb_kv(kv)),
        }))
    }

    type ObserveStream = BoxStream<'static, Result<LeaderResponse, Status>>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = request.into_inner().name;
        let (tx, rx) = mpsc::channel(OBSERVE_RESPONSES_MAX);
        let app = self.app.clone();
        tokio::spawn(async move {
            let mut observer = Observer::new(&name);
            loop {
                let update = tokio::select! {
                    update = observer.next(&app) => update,
                    () = tx.closed() => return,
                };
                let response = update
                    .map(|(revision, kv)| LeaderResponse {
                        header: Some(super::header_at(&app, revision)),
                        kv: Some(super::kv::pb_kv(kv)),
                    })
                    .map_err(|e| Status::from(EtcdError::from(e)));
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

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let leader = leader_key(request.into_inner().leader)?;
        let revision = election::resign(&self.app, &leader)
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(ResignResponse {
            header: Some(super::header_at(&self.app, revision)),
        }))
    }
}
