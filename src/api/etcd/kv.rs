//! etcd's `KV` service. Every RPC answers `Unimplemented` until the multi-version store
//! (`src/mvcc/`) is merged; then `Range` (linearizable unless `serializable`, through
//! `raft::read`), `Put`, `DeleteRange`, `Txn` and `Compact` are served here on top of it, with
//! [`crate::api::etcd::header`] carrying the store's revision.

use etcd_client::proto::PbCompactionRequest;
use etcd_client::proto::PbCompactionResponse;
use etcd_client::proto::PbDeleteRequest;
use etcd_client::proto::PbDeleteResponse;
use etcd_client::proto::PbKvService;
use etcd_client::proto::PbPutRequest;
use etcd_client::proto::PbPutResponse;
use etcd_client::proto::PbRangeRequest;
use etcd_client::proto::PbRangeResponse;
use etcd_client::proto::PbRangeStreamResponse;
use etcd_client::proto::PbTxnRequest;
use etcd_client::proto::PbTxnResponse;
use futures::stream::BoxStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::etcd::error::EtcdError;
use crate::app::SharedApp;

pub struct KvService {
    #[allow(dead_code)] // used once the multi-version store serves these RPCs
    app: SharedApp,
}

impl KvService {
    pub fn new(app: SharedApp) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(
        &self,
        _request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        Err(EtcdError::Unimplemented("KV.Range").into())
    }

    type RangeStreamStream = BoxStream<'static, Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(EtcdError::Unimplemented("KV.RangeStream").into())
    }

    async fn put(
        &self,
        _request: Request<PbPutRequest>,
    ) -> Result<Response<PbPutResponse>, Status> {
        Err(EtcdError::Unimplemented("KV.Put").into())
    }

    async fn delete_range(
        &self,
        _request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        Err(EtcdError::Unimplemented("KV.DeleteRange").into())
    }

    async fn txn(
        &self,
        _request: Request<PbTxnRequest>,
    ) -> Result<Response<PbTxnResponse>, Status> {
        Err(EtcdError::Unimplemented("KV.Txn").into())
    }

    async fn compact(
        &self,
        _request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        Err(EtcdError::Unimplemented("KV.Compact").into())
    }
}
