//! etcd's `KV` service on the multi-version store (`src/mvcc/`): protobuf ↔ store types, and
//! the paths every API shares — `Range` after the read barrier (linearizable unless
//! `serializable`), writes through `raft::forward::write` (forwarded from a follower, limits
//! checked on the leader), read-only txns served like ranges without a log entry.
//! Headers carry the store's revision as etcd's do: the current revision for reads, the
//! revision after the entry for writes.

use bytes::Bytes;
use etcd_client::proto::PbCompactionRequest;
use etcd_client::proto::PbCompactionResponse;
use etcd_client::proto::PbCompare;
use etcd_client::proto::PbDeleteRequest;
use etcd_client::proto::PbDeleteResponse;
use etcd_client::proto::PbKeyValue;
use etcd_client::proto::PbKvService;
use etcd_client::proto::PbPutRequest;
use etcd_client::proto::PbPutResponse;
use etcd_client::proto::PbRangeRequest;
use etcd_client::proto::PbRangeResponse;
use etcd_client::proto::PbRangeStreamResponse;
use etcd_client::proto::PbResponseHeader;
use etcd_client::proto::PbResponseOp;
use etcd_client::proto::PbTargetUnion;
use etcd_client::proto::PbTxnOpRequest;
use etcd_client::proto::PbTxnOpResponse;
use etcd_client::proto::PbTxnRequest;
use etcd_client::proto::PbTxnRequestOp;
use etcd_client::proto::PbTxnResponse;
use futures::stream::BoxStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::etcd::error::EtcdError;
use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::mvcc;
use crate::raft::read::ReadLevel;
use crate::raft::types::Command;
use crate::raft::types::Outcome;

pub struct KvService {
    app: SharedApp,
}

impl KvService {
    pub fn new(app: SharedApp) -> Self {
        Self { app }
    }
}

/// The response header at store revision `revision`.
fn header_at(app: &App, revision: i64) -> Option<PbResponseHeader> {
    let mut h = crate::api::etcd::header(app);
    h.revision = revision;
    Some(h)
}

/// A nested (in-txn) response's header: etcd fills only the revision there.
fn nested_header(revision: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        revision,
        ..PbResponseHeader::default()
    })
}

/// The wait before a read of the local store: none for `serializable` (the local replica, as
/// etcd serves it), else the linearizable read barrier the HTTP API uses too.
async fn read_barrier(app: &App, serializable: bool) -> Result<(), EtcdError> {
    let level = if serializable {
        ReadLevel::Stale
    } else {
        ReadLevel::Linearizable
    };
    crate::raft::read::read_barrier(app, level)
        .await
        .map_err(EtcdError::from)
}

/// Proposes `cmd` and returns the store's answer (or its refusal as etcd's error).
async fn propose(app: &App, cmd: Command) -> Result<(i64, Outcome), EtcdError> {
    Ok(crate::raft::forward::propose(app, cmd).await?)
}

fn unexpected(what: &str, outcome: &Outcome) -> EtcdError {
    KvError::Internal(format!("{what} answered {outcome:?}")).into()
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let p = request.into_inner();
        read_barrier(&self.app, p.serializable).await?;
        let r = self
            .app
            .state_machine
            .range(&range_request(p))
            .map_err(|e| EtcdError::from(KvError::Store(e)))?;
        // A range's header carries the current revision, also for a read of a past one.
        let revision = r.revision;
        Ok(Response::new(range_response(
            r,
            header_at(&self.app, revision),
        )))
    }

    type RangeStreamStream = BoxStream<'static, Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(EtcdError::Unimplemented("KV.RangeStream").into())
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let cmd = Command::Put(put_request(request.into_inner()));
        let (revision, outcome) = propose(&self.app, cmd).await?;
        match outcome {
            Outcome::Put(r) => Ok(Response::new(PbPutResponse {
                header: header_at(&self.app, revision),
                prev_kv: r.prev_kv.map(pb_kv),
            })),
            other => Err(unexpected("Put", &other).into()),
        }
    }

    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let cmd = Command::DeleteRange(delete_request(request.into_inner()));
        let (revision, outcome) = propose(&self.app, cmd).await?;
        match outcome {
            Outcome::DeleteRange(r) => Ok(Response::new(PbDeleteResponse {
                header: header_at(&self.app, revision),
                deleted: r.deleted,
                prev_kvs: r.prev_kvs.into_iter().map(pb_kv).collect(),
            })),
            other => Err(unexpected("DeleteRange", &other).into()),
        }
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let p = request.into_inner();
        let serializable = txn_ranges_serializable(&p);
        let txn = txn_request(p).map_err(|e| EtcdError::from(KvError::Store(e)))?;
        if mvcc::is_txn_read_only(&txn) {
            // Like a range: no log entry; linearizable unless every range asked serializable.
            read_barrier(&self.app, serializable).await?;
            let r = self
                .app
                .state_machine
                .read_txn(&txn)
                .ok_or_else(|| EtcdError::from(KvError::Internal("not a read-only txn".into())))?
                .map_err(|e| EtcdError::from(KvError::Store(e)))?;
            let revision = r.revision;
            return Ok(Response::new(txn_response(
                r,
                header_at(&self.app, revision),
            )));
        }
        let (revision, outcome) = propose(&self.app, Command::Txn(txn)).await?;
        match outcome {
            Outcome::Txn(r) => Ok(Response::new(txn_response(
                r,
                header_at(&self.app, revision),
            ))),
            other => Err(unexpected("Txn", &other).into()),
        }
    }

    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        // `physical` asks to wait until the compaction is on disk; ours is done when applied.
        let revision = request.into_inner().revision;
        let (after, outcome) = propose(&self.app, Command::Compact { revision }).await?;
        match outcome {
            Outcome::Compact => Ok(Response::new(PbCompactionResponse {
                header: header_at(&self.app, after),
            })),
            other => Err(unexpected("Compact", &other).into()),
        }
    }
}

// ----- protobuf → store ----------------------------------------------------------------------

fn sort_order(n: i32) -> mvcc::SortOrder {
    match n {
        1 => mvcc::SortOrder::Ascend,
        2 => mvcc::SortOrder::Descend,
        _ => mvcc::SortOrder::None,
    }
}

fn sort_target(n: i32) -> mvcc::SortTarget {
    match n {
        1 => mvcc::SortTarget::Version,
        2 => mvcc::SortTarget::Create,
        3 => mvcc::SortTarget::Mod,
        4 => mvcc::SortTarget::Value,
        _ => mvcc::SortTarget::Key,
    }
}

pub fn range_request(p: PbRangeRequest) -> mvcc::RangeRequest {
    mvcc::RangeRequest {
        key: Bytes::from(p.key),
        range_end: Bytes::from(p.range_end),
        limit: p.limit,
        revision: p.revision,
        sort_order: sort_order(p.sort_order),
        sort_target: sort_target(p.sort_target),
        keys_only: p.keys_only,
        count_only: p.count_only,
        min_mod_revision: p.min_mod_revision,
        max_mod_revision: p.max_mod_revision,
        min_create_revision: p.min_create_revision,
        max_create_revision: p.max_create_revision,
    }
}

fn put_request(p: PbPutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: Bytes::from(p.key),
        value: Bytes::from(p.value),
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

fn delete_request(p: PbDeleteRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: Bytes::from(p.key),
        range_end: Bytes::from(p.range_end),
        prev_kv: p.prev_kv,
    }
}

/// etcd compares a `Compare` whose union does not match its target against 0 / the empty value.
fn compare(c: PbCompare) -> mvcc::Compare {
    use mvcc::CompareTarget as T;
    let target = match (c.target, &c.target_union) {
        (0, Some(PbTargetUnion::Version(v))) => T::Version(*v),
        (0, _) => T::Version(0),
        (1, Some(PbTargetUnion::CreateRevision(v))) => T::Create(*v),
        (1, _) => T::Create(0),
        (2, Some(PbTargetUnion::ModRevision(v))) => T::Mod(*v),
        (2, _) => T::Mod(0),
        (3, Some(PbTargetUnion::Value(v))) => T::Value(Bytes::from(v.clone())),
        (3, _) => T::Value(Bytes::new()),
        (4, Some(PbTargetUnion::Lease(v))) => T::Lease(*v),
        // LEASE with another union, or a target this version does not know.
        (_, _) => T::Lease(0),
    };
    let result = match c.result {
        1 => mvcc::CompareResult::Greater,
        2 => mvcc::CompareResult::Less,
        3 => mvcc::CompareResult::NotEqual,
        _ => mvcc::CompareResult::Equal,
    };
    mvcc::Compare {
        key: Bytes::from(c.key),
        range_end: Bytes::from(c.range_end),
        result,
        target,
    }
}

fn request_op(op: PbTxnRequestOp) -> Result<mvcc::RequestOp, mvcc::MvccError> {
    match op.request {
        Some(PbTxnOpRequest::RequestRange(r)) => Ok(mvcc::RequestOp::Range(range_request(r))),
        Some(PbTxnOpRequest::RequestPut(p)) => Ok(mvcc::RequestOp::Put(put_request(p))),
        Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
            Ok(mvcc::RequestOp::DeleteRange(delete_request(d)))
        }
        Some(PbTxnOpRequest::RequestTxn(t)) => Ok(mvcc::RequestOp::Txn(txn_request(t)?)),
        // etcd's checkRequestOp answers an empty op with "key not found".
        None => Err(mvcc::MvccError::KeyNotFound),
    }
}

pub fn txn_request(p: PbTxnRequest) -> Result<mvcc::TxnRequest, mvcc::MvccError> {
    Ok(mvcc::TxnRequest {
        compare: p.compare.into_iter().map(compare).collect(),
        success: p
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: p
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

/// Whether every range of a txn (nested ones included) asked for `serializable`.
fn txn_ranges_serializable(p: &PbTxnRequest) -> bool {
    p.success
        .iter()
        .chain(&p.failure)
        .all(|op| match &op.request {
            Some(PbTxnOpRequest::RequestRange(r)) => r.serializable,
            Some(PbTxnOpRequest::RequestTxn(t)) => txn_ranges_serializable(t),
            _ => true,
        })
}

// ----- store → protobuf ----------------------------------------------------------------------

pub(super) fn pb_kv(kv: mvcc::KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key.to_vec(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.to_vec(),
        lease: kv.lease,
    }
}

fn range_response(r: mvcc::RangeResponse, header: Option<PbResponseHeader>) -> PbRangeResponse {
    PbRangeResponse {
        header,
        kvs: r.kvs.into_iter().map(pb_kv).collect(),
        more: r.more,
        count: r.count,
    }
}

fn txn_response(r: mvcc::TxnResponse, header: Option<PbResponseHeader>) -> PbTxnResponse {
    PbTxnResponse {
        header,
        succeeded: r.succeeded,
        responses: r.responses.into_iter().map(response_op).collect(),
    }
}

fn response_op(r: mvcc::ResponseOp) -> PbResponseOp {
    let response = match r {
        mvcc::ResponseOp::Range(r) => {
            let h = nested_header(r.revision);
            PbTxnOpResponse::ResponseRange(range_response(r, h))
        }
        mvcc::ResponseOp::Put(p) => PbTxnOpResponse::ResponsePut(PbPutResponse {
            header: nested_header(p.revision),
            prev_kv: p.prev_kv.map(pb_kv),
        }),
        mvcc::ResponseOp::DeleteRange(d) => {
            PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse {
                header: nested_header(d.revision),
                deleted: d.deleted,
                prev_kvs: d.prev_kvs.into_iter().map(pb_kv).collect(),
            })
        }
        mvcc::ResponseOp::Txn(t) => {
            let h = nested_header(t.revision);
            PbTxnOpResponse::ResponseTxn(txn_response(t, h))
        }
    };
    PbResponseOp {
        response: Some(response),
    }
}
