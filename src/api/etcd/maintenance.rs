//! etcd's `Maintenance` service: `Status` (this node's Raft state), `Alarm` (raftkv raises no
//! alarms), `MoveLeader` (openraft's leader transfer), `HashKV`, `Snapshot` (a raftkv backup, the
//! bytes `GET /snapshot` serves, in chunks of at most [`SNAPSHOT_CHUNK_BYTES`] with
//! `remaining_bytes`, then etcd's final message holding the sha256 of the data, as etcd 3.4's
//! `maintenanceServer.Snapshot` sends it; restore it with `raftkv restore`, not etcdctl's).
//! `Defragment` builds a snapshot now (the store is in memory; the Raft log is what holds disk
//! space, and the snapshot lets openraft purge it). `Hash` and `Downgrade` answer
//! `Unimplemented`.
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
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::AsyncReadExt;
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

/// Largest blob of one `SnapshotResponse` (etcd's 32 KiB).
pub const SNAPSHOT_CHUNK_BYTES: u64 = 32 << 10;

/// How long `Defragment` waits for its snapshot (a 5M-key store took 11–18 s to write one,
/// BENCHMARKS.md "The scale curve"; etcdctl's own `--command-timeout` is 5 s by default).
const DEFRAGMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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

    /// raftkv's store lives in memory and has nothing to defragment; what takes disk space is
    /// the Raft log, so this member builds a snapshot now covering everything it applied, and
    /// openraft purges the log the snapshot covers (`raft::snapshot_policy::build_now`). The
    /// admin rule applies, as to `Snapshot` (a build rewrites the whole store).
    async fn defragment(
        &self,
        request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        authorize_admin(&self.app, &request)?;
        let index = crate::raft::snapshot_policy::build_now(&self.app, DEFRAGMENT_TIMEOUT)
            .await
            .map_err(EtcdError::from)?;
        tracing::info!(snapshot_index = index, "defragment: snapshot built");
        Ok(Response::new(PbDefragmentResponse {
            header: Some(header(&self.app)),
        }))
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

    /// A backup holding every write acknowledged before the call (see `backup.rs`); the
    /// admin rule applies, as to `GET /snapshot` (it exports all data).
    async fn snapshot(
        &self,
        request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        authorize_admin(&self.app, &request)?;
        let level = crate::raft::read::ReadLevel::Linearizable;
        let backup = crate::backup::take(&self.app, level)
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(snapshot_stream(backup)))
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

/// What the snapshot stream still has to send.
struct SnapshotSender {
    file: tokio::fs::File,
    /// Data bytes (everything before the sha256 trailer) not yet sent.
    remaining: u64,
    /// The trailer, sent alone in the last message; `None` once sent.
    sha256: Option<[u8; 32]>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// etcd's stream: the data in chunks with `remaining_bytes`, then one message with its sha256.
fn snapshot_stream(
    backup: crate::backup::Backup,
) -> BoxStream<'static, Result<PbSnapshotResponse, Status>> {
    let sender = SnapshotSender {
        file: tokio::fs::File::from_std(backup.file),
        remaining: backup.bytes - crate::backup::SHA256_BYTES,
        sha256: Some(backup.sha256),
        _permit: backup.permit,
    };
    futures::stream::unfold(Some(sender), |state| async move {
        let mut s = state?;
        if s.remaining == 0 {
            let sha = s.sha256.take()?;
            let last = PbSnapshotResponse {
                header: None,
                remaining_bytes: 0,
                blob: sha.to_vec(),
                ..PbSnapshotResponse::default()
            };
            return Some((Ok(last), Some(s)));
        }
        let n = s.remaining.min(SNAPSHOT_CHUNK_BYTES);
        let mut blob = vec![0u8; usize::try_from(n).unwrap_or(0)];
        if let Err(e) = s.file.read_exact(&mut blob).await {
            let error = crate::error::KvError::Internal(format!("reading the backup: {e}"));
            return Some((Err(EtcdError::from(error).into()), None));
        }
        s.remaining -= n;
        let chunk = PbSnapshotResponse {
            header: None,
            remaining_bytes: s.remaining,
            blob,
            ..PbSnapshotResponse::default()
        };
        Some((Ok(chunk), Some(s)))
    })
    .boxed()
}
