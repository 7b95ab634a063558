//! The public port's front door: a request whose `content-type` is gRPC goes to etcd's services,
//! any other to the HTTP API's axum router ([`Dispatch`]). A gRPC call is admitted (draining,
//! the in-flight limit, its metrics) and handed to its service by the service name in its path
//! (`/etcdserverpb.KV/Put` → `KV`), with no router in between. Two axum routers per call (path
//! match, URL parameters, matched-path extension, boxed futures) were ≈ 6 % of the leader's
//! samples at 64 gRPC clients; without them linearizable gRPC reads took 8 % less CPU (BENCHMARKS.md,
//! "gRPC calls in their connection's task").

use std::convert::Infallible;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use etcd_client::proto::PbClusterServer;
use etcd_client::proto::PbKvServer;
use etcd_client::proto::PbLeaseServer;
use etcd_client::proto::PbMaintenanceServer;
use etcd_client::proto::PbWatchServer;
use futures::future::BoxFuture;
use futures::future::Either;
use tokio::sync::Semaphore;
use tonic::server::NamedService;
use tower::Service;
use tower::ServiceExt;
use tower::util::Oneshot;

use super::EtcdError;
use super::GRPC_IN_FLIGHT_MAX;
use super::cluster::ClusterService;
use super::election::ElectionService;
use super::lease::LeaseService;
use super::lock::LockService;
use super::maintenance::MaintenanceService;
use super::pb::v3electionpb::election_server::ElectionServer;
use super::pb::v3lockpb::lock_server::LockServer;
use super::watch::WatchService;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::limits;

/// What a listener answers with: an axum router, with etcd's gRPC services beside it (told
/// apart by content type) on the public port.
#[derive(Clone)]
pub struct Dispatch {
    http: Router,
    grpc: Option<Arc<Grpc>>,
}

impl Dispatch {
    /// `http` with etcd's gRPC services beside it.
    pub fn with_grpc(app: SharedApp, http: Router) -> Self {
        Self {
            http,
            grpc: Some(Arc::new(Grpc::new(app))),
        }
    }

    /// `http` alone (a separate Raft listener's internal routes).
    pub fn http_only(http: Router) -> Self {
        Self { http, grpc: None }
    }
}

impl Service<Request> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future =
        Either<Oneshot<Router, Request>, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match &self.grpc {
            Some(grpc) if super::is_grpc(&request) => {
                Either::Right(Box::pin(grpc.clone().admit(request)))
            }
            _ => Either::Left(self.http.clone().oneshot(request)),
        }
    }
}

/// etcd's services, each with the message limits, and what a call is admitted against.
struct Grpc {
    cluster: PbClusterServer<ClusterService>,
    maintenance: PbMaintenanceServer<MaintenanceService>,
    kv: PbKvServer<super::kv::KvService>,
    watch: PbWatchServer<WatchService>,
    lease: PbLeaseServer<LeaseService>,
    lock: LockServer<LockService>,
    election: ElectionServer<ElectionService>,
    permits: Arc<Semaphore>,
    app: SharedApp,
}

/// Applies the message limits to a generated server.
macro_rules! limited {
    ($server:expr, $decode_max:expr) => {
        $server
            .max_decoding_message_size($decode_max)
            .max_encoding_message_size(limits::GRPC_RESPONSE_BYTES_MAX)
    };
}

impl Grpc {
    fn new(app: SharedApp) -> Self {
        let decode_max = limits::grpc_request_bytes_max(app.max_value_bytes);
        Self {
            cluster: limited!(
                PbClusterServer::new(ClusterService::new(app.clone())),
                decode_max
            ),
            maintenance: limited!(
                PbMaintenanceServer::new(MaintenanceService::new(app.clone())),
                decode_max
            ),
            kv: limited!(
                PbKvServer::new(super::kv::KvService::new(app.clone())),
                decode_max
            ),
            watch: limited!(
                PbWatchServer::new(WatchService::new(app.clone())),
                decode_max
            ),
            lease: limited!(
                PbLeaseServer::new(LeaseService::new(app.clone())),
                decode_max
            ),
            lock: limited!(LockServer::new(LockService::new(app.clone())), decode_max),
            election: limited!(
                ElectionServer::new(ElectionService::new(app.clone())),
                decode_max
            ),
            permits: Arc::new(Semaphore::new(GRPC_IN_FLIGHT_MAX)),
            app,
        }
    }

    /// Refuses a call once the node drains for shutdown (`Unavailable`, etcd's "server
    /// stopped", so clients go to another endpoint) and beyond [`GRPC_IN_FLIGHT_MAX`] at once;
    /// an admitted call counts as in flight (the drain waits for it) until its response starts.
    async fn admit(self: Arc<Self>, request: Request) -> Result<Response, Infallible> {
        // Counted as started now and as handled when its status is known (metrics::grpc).
        let call = self.app.metrics.grpc.start(request.uri().path());
        let Some(_in_flight) = self.app.lifecycle.enter() else {
            let refused = status_response(EtcdError::from(KvError::ShuttingDown).into());
            return Ok(call.finish(refused));
        };
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            return Ok(call.finish(status_response(EtcdError::TooManyRequests.into())));
        };
        Ok(call.finish(self.route(request).await))
    }

    /// Hands the call to the service its path names; an unknown service gets `Unimplemented`
    /// naming the method (an unknown method of a known service gets tonic's `Unimplemented`).
    async fn route(&self, request: Request) -> Response {
        let answered = match Target::of(request.uri().path()) {
            Target::Cluster => self.cluster.clone().oneshot(request).await,
            Target::Maintenance => self.maintenance.clone().oneshot(request).await,
            Target::Kv => self.kv.clone().oneshot(request).await,
            Target::Watch => self.watch.clone().oneshot(request).await,
            Target::Lease => self.lease.clone().oneshot(request).await,
            Target::Lock => self.lock.clone().oneshot(request).await,
            Target::Election => self.election.clone().oneshot(request).await,
            Target::Unknown => {
                let method = request.uri().path().trim_start_matches('/');
                return status_response(tonic::Status::unimplemented(format!(
                    "raftkv: {method} is not implemented"
                )));
            }
        };
        match answered {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        }
    }
}

/// Which service a gRPC path (`/<package.Service>/<Method>`) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Cluster,
    Maintenance,
    Kv,
    Watch,
    Lease,
    Lock,
    Election,
    Unknown,
}

impl Target {
    fn of(path: &str) -> Target {
        let Some((service, _method)) = path.strip_prefix('/').and_then(|p| p.split_once('/'))
        else {
            return Target::Unknown;
        };
        [
            (PbClusterServer::<ClusterService>::NAME, Target::Cluster),
            (
                PbMaintenanceServer::<MaintenanceService>::NAME,
                Target::Maintenance,
            ),
            (PbKvServer::<super::kv::KvService>::NAME, Target::Kv),
            (PbWatchServer::<WatchService>::NAME, Target::Watch),
            (PbLeaseServer::<LeaseService>::NAME, Target::Lease),
            (LockServer::<LockService>::NAME, Target::Lock),
            (ElectionServer::<ElectionService>::NAME, Target::Election),
        ]
        .into_iter()
        .find_map(|(name, target)| (name == service).then_some(target))
        .unwrap_or(Target::Unknown)
    }
}

/// Answers a gRPC status as an HTTP response (status 200, `grpc-status` header).
fn status_response(status: tonic::Status) -> Response {
    status.into_http::<Body>().map(Body::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_its_service() {
        assert_eq!(Target::of("/etcdserverpb.KV/Put"), Target::Kv);
        assert_eq!(Target::of("/etcdserverpb.KV/Nope"), Target::Kv);
        assert_eq!(Target::of("/etcdserverpb.Watch/Watch"), Target::Watch);
        assert_eq!(Target::of("/etcdserverpb.Lease/LeaseGrant"), Target::Lease);
        assert_eq!(
            Target::of("/etcdserverpb.Cluster/MemberList"),
            Target::Cluster
        );
        assert_eq!(
            Target::of("/etcdserverpb.Maintenance/Status"),
            Target::Maintenance
        );
        assert_eq!(Target::of("/v3lockpb.Lock/Lock"), Target::Lock);
        assert_eq!(
            Target::of("/v3electionpb.Election/Campaign"),
            Target::Election
        );
        assert_eq!(
            Target::of("/etcdserverpb.Auth/Authenticate"),
            Target::Unknown
        );
        assert_eq!(Target::of("/etcdserverpb.KV"), Target::Unknown);
        assert_eq!(Target::of("etcdserverpb.KV/Put"), Target::Unknown);
        assert_eq!(Target::of("/"), Target::Unknown);
        assert_eq!(Target::of(""), Target::Unknown);
    }
}
