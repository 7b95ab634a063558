//! etcd's v3 gRPC API on the public HTTP port: one listener serves raftd/hraftd's HTTP API and
//! etcd's gRPC side by side, in cleartext (HTTP/1.1 and h2c, told apart by `serve.rs`'s
//! hyper-util auto builder) and over TLS when client TLS is on (the acceptor offers ALPN `h2`).
//!
//! **Routing.** [`with_grpc`] wraps the HTTP router in a small dispatcher that looks at one
//! thing, the request's `content-type`: `application/grpc` (and `application/grpc+proto`) goes
//! to the tonic services, everything else to the axum router. So a gRPC call always gets a gRPC
//! answer — an unknown service or method (`Auth`, `v3lock`, …) gets
//! `Unimplemented` from the gRPC fallback, never the HTTP API's JSON 404 — and a curl request
//! always gets the HTTP API's JSON, never a gRPC status. A dispatcher rather than merging
//! tonic's routes into the axum router, because a merged router has one fallback for both
//! protocols.
//!
//! **Limits.** Every service decodes messages of at most
//! [`limits::grpc_request_bytes_max`] (what the HTTP API accepts: the largest value plus the
//! command slack) and encodes at most [`limits::GRPC_RESPONSE_BYTES_MAX`] (over either: tonic's
//! `OutOfRange` "message length too large"); at most
//! [`GRPC_IN_FLIGHT_MAX`] calls are answered at once, more get etcd's `ResourceExhausted
//! "etcdserver: too many requests"`. Each RPC bounds its own wait (`--timeout-ms` for reads
//! and proposals, `--join-timeout-ms` for a member add); the client's `grpc-timeout` is not
//! enforced by the server (clients enforce their own deadline).
//!
//! **Who may change the cluster.** `MemberAdd`, `MemberRemove` and `MoveLeader` (and
//! `Snapshot`, which exports all data) follow `POST /join`'s rule ([`authorize_admin`]): loopback callers, or holders of a peer certificate
//! under peer TLS; anyone else gets `PermissionDenied`. Reads (`MemberList`, `Status`) are open
//! like `GET /status`.
//!
//! **Headers.** Every response header carries `cluster_id` (FNV-1a 64 of the cluster id string,
//! see [`crate::service::cluster::cluster_id_number`]), `member_id` (this node's id: the same
//! u64 as in `/status` and in `Cluster.MemberList`), `raft_term`, and `revision` 0 until the
//! multi-version store lands.
//!
//! Services: [`cluster`] (`Cluster`), [`maintenance`] (`Maintenance`), [`kv`] (`KV`),
//! [`watch`] (`Watch`), [`lease`] (`Lease`); [`error`] is the one place errors become gRPC statuses.

pub mod cluster;
pub mod error;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use etcd_client::proto::PbClusterServer;
use etcd_client::proto::PbKvServer;
use etcd_client::proto::PbLeaseServer;
use etcd_client::proto::PbMaintenanceServer;
use etcd_client::proto::PbResponseHeader;
use etcd_client::proto::PbWatchServer;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::limits;
use error::EtcdError;

/// gRPC calls answered at once by one node; more are refused with "too many requests".
pub const GRPC_IN_FLIGHT_MAX: usize = 1024;

/// The public router `http` with etcd's gRPC services beside it, dispatched by content type.
pub fn with_grpc(app: SharedApp, http: Router) -> Router {
    let grpc = grpc_router(app);
    let dispatch = tower::service_fn(move |request: Request| {
        let target = if is_grpc(&request) {
            grpc.clone()
        } else {
            http.clone()
        };
        target.oneshot(request)
    });
    Router::new().fallback_service(dispatch)
}

/// Whether a request is a gRPC call (`application/grpc`, optionally `+proto` / `;…`).
pub fn is_grpc<B>(request: &axum::http::Request<B>) -> bool {
    request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

/// The tonic services as one axum router, with the gRPC fallback and the in-flight limit.
fn grpc_router(app: SharedApp) -> Router {
    let decode_max = limits::grpc_request_bytes_max(app.max_value_bytes);
    let encode_max = limits::GRPC_RESPONSE_BYTES_MAX;
    let cluster = PbClusterServer::new(cluster::ClusterService::new(app.clone()))
        .max_decoding_message_size(decode_max)
        .max_encoding_message_size(encode_max);
    let maintenance = PbMaintenanceServer::new(maintenance::MaintenanceService::new(app.clone()))
        .max_decoding_message_size(decode_max)
        .max_encoding_message_size(encode_max);
    let kv = PbKvServer::new(kv::KvService::new(app.clone()))
        .max_decoding_message_size(decode_max)
        .max_encoding_message_size(encode_max);
    let watch = PbWatchServer::new(watch::WatchService::new(app.clone()))
        .max_decoding_message_size(decode_max)
        .max_encoding_message_size(encode_max);
    let lease = PbLeaseServer::new(lease::LeaseService::new(app.clone()))
        .max_decoding_message_size(decode_max)
        .max_encoding_message_size(encode_max);
    let permits = Arc::new(Semaphore::new(GRPC_IN_FLIGHT_MAX));
    tonic::service::Routes::new(cluster)
        .add_service(maintenance)
        .add_service(kv)
        .add_service(watch)
        .add_service(lease)
        .into_axum_router()
        .fallback(unimplemented)
        .layer(axum::middleware::from_fn_with_state(
            Admission { permits, app },
            admit,
        ))
}

/// What [`admit`] checks a call against.
#[derive(Clone)]
struct Admission {
    permits: Arc<Semaphore>,
    app: SharedApp,
}

/// Answers a gRPC status as an HTTP response (status 200, `grpc-status` header).
fn status_response(status: tonic::Status) -> Response {
    status.into_http::<Body>().map(Body::new)
}

/// Every service or method not served here: `Unimplemented`, naming it.
async fn unimplemented(uri: axum::http::Uri) -> Response {
    let method = uri.path().trim_start_matches('/').to_string();
    status_response(tonic::Status::unimplemented(format!(
        "raftkv: {method} is not implemented"
    )))
}

/// Refuses a call once the node drains for shutdown (`Unavailable`, etcd's "server stopped",
/// so clients go to another endpoint) and beyond [`GRPC_IN_FLIGHT_MAX`] at once; an admitted
/// call counts as in flight (the drain waits for it) until its response starts.
async fn admit(
    axum::extract::State(admission): axum::extract::State<Admission>,
    request: Request,
    next: axum::middleware::Next,
) -> Result<Response, Infallible> {
    // Counted as started now and as handled when its status is known (metrics::grpc).
    let call = admission.app.metrics.grpc.start(request.uri().path());
    let Some(_in_flight) = admission.app.lifecycle.enter() else {
        let refused = status_response(EtcdError::from(KvError::ShuttingDown).into());
        return Ok(call.finish(refused));
    };
    let Ok(_permit) = admission.permits.try_acquire_owned() else {
        return Ok(call.finish(status_response(EtcdError::TooManyRequests.into())));
    };
    Ok(call.finish(next.run(request).await))
}

/// Lets only callers allowed to change the membership through the public port (`POST /join`'s
/// rule, `peer::auth::authorize_admin`: loopback, or a peer certificate under peer TLS) make a
/// membership or leadership change; others get `PermissionDenied` saying what to configure.
pub fn authorize_admin<T>(app: &App, request: &tonic::Request<T>) -> Result<(), EtcdError> {
    let Some(conn) = request.extensions().get::<crate::serve::ConnInfo>() else {
        return Err(KvError::Forbidden("no connection info".into()).into());
    };
    crate::peer::auth::authorize_admin(&app.peer_auth, conn).map_err(|e| {
        tracing::warn!(remote = %conn.remote, reason = %e, "refused an etcd membership call");
        EtcdError::from(KvError::Forbidden(e.to_string()))
    })
}

/// The header of every response: see the module docs.
pub fn header(app: &App) -> PbResponseHeader {
    use openraft::async_runtime::watch::WatchReceiver;
    let term = app.raft.metrics().borrow_watched().current_term;
    PbResponseHeader {
        cluster_id: crate::service::cluster::cluster_id_number(app),
        member_id: app.node_id,
        revision: app.state_machine.revision(),
        raft_term: term,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_content_type(ct: &str) -> axum::http::Request<()> {
        axum::http::Request::builder()
            .header("content-type", ct)
            .body(())
            .expect("request")
    }

    #[test]
    fn grpc_is_told_apart_by_content_type() {
        assert!(is_grpc(&with_content_type("application/grpc")));
        assert!(is_grpc(&with_content_type("application/grpc+proto")));
        assert!(is_grpc(&with_content_type("application/grpc; charset=x")));
        assert!(!is_grpc(&with_content_type("application/grpcx")));
        assert!(!is_grpc(&with_content_type("application/json")));
        assert!(!is_grpc(&axum::http::Request::new(())));
    }
}
