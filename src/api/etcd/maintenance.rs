//! etcd's `Maintenance` service: `Status` (this node's Raft state), `Alarm` (raftkv raises no
//! alarms), `MoveLeader` (openraft's leader transfer). `HashKV`, `Hash`, `Snapshot`,
//! `Defragment` and `Downgrade` answer `Unimplemented` until the multi-version store lands (its
//! hash and snapshot are what they would serve).
//!
//! `Status.version` is `3.4.23`: the etcd release whose API raftkv answers like (clients and
//! tools read it as the API level, e.g. to decide which RPCs exist); raftkv's own version is in
//! `GET /status`. `dbSize` (and `dbSizeInUse`) is the bytes of this node's Raft log and snapshot
//! files; `raftIndex` is the commit index, `raftAppliedIndex` the applied index.

use etcd_client::proto::PbAlarmRequest;
use etcd_client::proto::PbAlarmResponse;
use etcd_client::proto::PbDefragmentRequest;
use etcd_client::proto::PbDefragmentResponse;
use etcd_client::proto::PbDowngradeRequest;
use etcd_client::proto::PbDowngradeResponse;
use etcd_client::proto::PbHashKvRequest;
use etcd_client::proto::PbHashKvResponse;
use etcd_client::proto::PbHashRequest;
use etcd_client::proto::PbHashResponse;
use etcd_client::proto::PbMaintenanceService;
use etcd_client::proto::PbMoveLeaderRequest;
use etcd_client::proto::PbMoveLeaderResponse;
use etcd_client::proto::PbSnapshotRequest;
use etcd_client::proto::PbSnapshotResponse;
use etcd_client::proto::PbStatusRequest;
use etcd_client::proto::PbStatusResponse;
use futures::stream::BoxStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::etcd::authorize_admin;
use crate::api::etcd::error::EtcdError;
use crate::api::etcd::error::text;
use crate::api::etcd::header;
use crate::app::SharedApp;
use crate::service::cluster;
use crate::service::cluster::Role;

/// The etcd release whose v3 API raftkv answers like (see the module docs).
pub const ETCD_API_VERSION: &str = "3.4.23";

/// `AlarmRequest.action`: GET = 0, ACTIVATE = 1, DEACTIVATE = 2 (etcd's rpc.proto).
const ALARM_ACTIVATE: i32 = 1;

pub struct MaintenanceService {
    app: SharedApp,
}

impl MaintenanceService {
    pub fn new(app: SharedApp) -> Self {
        Self { app }
    }

    fn status(&self) -> PbStatusResponse {
        let app = &self.app;
        let s = cluster::status(app);
        let db_size = i64::try_from(cluster::disk_bytes(&app.data_dir)).unwrap_or(i64::MAX);
        let leader = s.leader.as_ref().map_or(0, |(id, _)| *id);
        let mut errors = Vec::new();
        if leader == 0 {
            errors.push(text::NO_LEADER.to_string());
        }
        PbStatusResponse {
            header: Some(header(app)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader,
            raft_index: s.commit_index.unwrap_or(0),
            raft_term: s.term,
            raft_applied_index: s.applied_index.unwrap_or(0),
            errors,
            db_size_in_use: db_size,
            is_learner: s.is_learner,
            ..PbStatusResponse::default()
        }
    }

    /// Transfers leadership to `target` (on the leader) and waits until it leads.
    async fn move_leader(&self, target: u64) -> Result<PbMoveLeaderResponse, EtcdError> {
        let app = &self.app;
        let s = cluster::status(app);
        if s.role != Role::Leader {
            return Err(EtcdError::NotLeader);
        }
        if !s.members.iter().any(|m| m.id == target && m.voter) {
            return Err(EtcdError::BadLeaderTransferee);
        }
        crate::cluster::leader::transfer_leader(app, target, app.request_timeout)
            .await
            .map_err(|e| match e {
                crate::error::KvError::Timeout(_) => EtcdError::LeaderTransferTimeout,
                other => other.into(),
            })?;
        Ok(PbMoveLeaderResponse {
            header: Some(header(app)),
        })
    }
}

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        if request.get_ref().action == ALARM_ACTIVATE {
            return Err(EtcdError::Unimplemented("Maintenance.Alarm(ACTIVATE)").into());
        }
        // GET lists no alarms; DEACTIVATE (etcdctl alarm disarm) has none to clear.
        Ok(Response::new(PbAlarmResponse {
            header: Some(header(&self.app)),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        Ok(Response::new(self.status()))
    }

    async fn defragment(
        &self,
        _request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        Err(EtcdError::Unimplemented("Maintenance.Defragment").into())
    }

    async fn hash(
        &self,
        _request: Request<PbHashRequest>,
    ) -> Result<Response<PbHashResponse>, Status> {
        Err(EtcdError::Unimplemented("Maintenance.Hash").into())
    }

    /// The store's hash up to a revision (0: now), equal on members that applied the same log
    /// (etcdctl's consistency check compares it across endpoints). The hash function is ours
    /// (crc32 over the retained entries), so it equals no etcd's hash of the same data.
    async fn hash_kv(
        &self,
        request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let h = self
            .app
            .state_machine
            .hash_kv(revision)
            .map_err(|e| EtcdError::from(crate::error::KvError::Store(e)))?;
        let mut header = header(&self.app);
        header.revision = h.revision;
        Ok(Response::new(PbHashKvResponse {
            header: Some(header),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: if revision > 0 { revision } else { h.revision },
        }))
    }

    type SnapshotStream = BoxStream<'static, Result<PbSnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // Not yet: etcdctl's `snapshot save` expects a bbolt file with a sha256 trailer that
        // `snapshot restore` can open; raftkv's backup format comes with its restore command
        // (issue 10), and then this streams it.
        Err(EtcdError::Unimplemented("Maintenance.Snapshot").into())
    }

    async fn move_leader(
        &self,
        request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        authorize_admin(&self.app, &request)?;
        let target = request.get_ref().target_id;
        Ok(Response::new(self.move_leader(target).await?))
    }

    async fn downgrade(
        &self,
        _request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(EtcdError::Unimplemented("Maintenance.Downgrade").into())
    }
}
