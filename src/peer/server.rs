//! The internal routes over HTTP (`/raft/...`) and the peer copy of the membership routes. Every
//! request passes [`guard`] first: the caller must be an authenticated peer (see `auth.rs`) and,
//! for the `/raft/` routes, carry identity headers naming this node and its cluster (see
//! `identity.rs`). A refused caller gets `403` (not authenticated) or `421` (meant for another
//! node or cluster).
//!
//! Nodes send their RPCs over peer links (`link.rs`, `link_server.rs`); the HTTP routes carry the
//! same RPCs (handled by `rpc.rs`, same bodies and answers) for the joining handshake
//! (`/raft/hello`) and tools (snapshots go over links too, `snapshot.rs`; `/raft/snapshot` stays
//! for tools). Request body = postcard(request);
//! response body = postcard(`Result<response, String>`), where `Err` carries the remote node's
//! error text. Snapshot request body = u32 BE length + postcard((vote, meta)) + the snapshot
//! file's bytes.
//!
//! Limits (all in `limits.rs`): a body is at most `RPC_BODY_BYTES_MAX`, a snapshot at most
//! `SNAPSHOT_BYTES_MAX` (the per-RPC limits are in `rpc.rs`).

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::post;
use futures::StreamExt;
use serde::Serialize;
use std::sync::atomic::AtomicU64;

use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::limits::RPC_BODY_BYTES_MAX;
use crate::limits::SNAPSHOT_HEADER_BYTES_MAX;
use crate::peer::auth::authorize_peer;
use crate::peer::client::POSTCARD;
use crate::peer::rpc;
use crate::peer::rpc::Refused;
use crate::peer::snapshot;
use crate::peer::wire::Rpc;
use crate::raft::types::TypeConfig;

/// The peer router: internal routes plus `/join`, `/remove` and `/leader` (relayed by followers and sent
/// by joiners), all behind [`guard`].
pub fn routes(app: SharedApp) -> Router<SharedApp> {
    Router::new()
        .route("/raft/hello", post(hello))
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/pre_vote", post(pre_vote))
        .route("/raft/transfer_leader", post(transfer_leader))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/write_batch", post(write_batch))
        .route("/raft/read_index", post(read_index))
        .route("/raft/lease", post(lease))
        .route("/join", post(crate::http::admin::join))
        .route("/remove", post(crate::http::admin::remove))
        .route("/leader", post(crate::http::leader::transfer))
        .route_layer(axum::middleware::from_fn_with_state(app, guard))
}

/// Refuses callers that are not authenticated peers (403) and `/raft/` requests not meant for
/// this node and cluster (421); both are logged, at most once per 5 s.
async fn guard(
    State(app): State<SharedApp>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    static LAST_LOG_MS: AtomicU64 = AtomicU64::new(0);
    let Some(conn) = request.extensions().get::<crate::serve::ConnInfo>() else {
        return (StatusCode::FORBIDDEN, "no connection info").into_response();
    };
    let internal = request.uri().path().starts_with("/raft/");
    let allowed = if internal {
        authorize_peer(&app.peer_auth, conn)
    } else {
        crate::peer::auth::authorize_admin(&app.peer_auth, conn)
    };
    if let Err(e) = allowed {
        if crate::peer::log_gate(&LAST_LOG_MS, 5000) {
            tracing::warn!(remote = %conn.remote, path = request.uri().path(), reason = %e, "refused a peer request");
        }
        return crate::http::error::ApiError(KvError::Forbidden(e.to_string())).into_response();
    }
    let path = request.uri().path();
    if internal {
        let handshake = path == "/raft/hello";
        if let Err(e) = app.identity().check(request.headers(), handshake) {
            if crate::peer::log_gate(&LAST_LOG_MS, 5000) {
                tracing::warn!(remote = %conn.remote, path, reason = %e, "refused a misdirected peer request");
            }
            return (StatusCode::MISDIRECTED_REQUEST, e.to_string()).into_response();
        }
    }
    next.run(request).await
}

/// The joining handshake, sent by a leader before it adds this node: who are you, and may you
/// join cluster `HEADER_CLUSTER`? A node of no cluster (or one never initialised) adopts it.
async fn hello(State(app): State<SharedApp>, headers: axum::http::HeaderMap) -> Response {
    let theirs = headers
        .get(crate::peer::identity::HEADER_CLUSTER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let result = crate::cluster::answer_hello(&app, &theirs).await;
    postcard_reply(&result)
}

/// A peer RPC carried over HTTP: the body (at most `RPC_BODY_BYTES_MAX`) is handed to
/// [`rpc::handle`], as a link would hand it.
async fn carry(app: &App, rpc: Rpc, body: Body) -> Response {
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    match rpc::handle(app, rpc, &bytes).await {
        Ok(answer) => ([(header::CONTENT_TYPE, POSTCARD)], answer).into_response(),
        Err(refused) => refused.into_response(),
    }
}

macro_rules! carried {
    ($name:ident, $rpc:expr) => {
        async fn $name(State(app): State<SharedApp>, body: Body) -> Response {
            carry(&app, $rpc, body).await
        }
    };
}

carried!(append, Rpc::Append);
carried!(vote, Rpc::Vote);
carried!(pre_vote, Rpc::PreVote);
carried!(transfer_leader, Rpc::TransferLeader);
carried!(write_batch, Rpc::WriteBatch);
carried!(read_index, Rpc::ReadIndex);
carried!(lease, Rpc::Lease);

/// A postcard response body holding `Result<T, E>`.
pub fn postcard_reply<T: Serialize, E: Serialize>(result: &Result<T, E>) -> Response {
    match postcard::to_stdvec(result) {
        Ok(bytes) => ([(header::CONTENT_TYPE, POSTCARD)], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}")).into_response(),
    }
}

/// Reads a request body of at most `RPC_BODY_BYTES_MAX`.
async fn read_body(body: Body) -> Result<Bytes, Refused> {
    axum::body::to_bytes(body, RPC_BODY_BYTES_MAX)
        .await
        .map_err(|e| {
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let status = if over_limit {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            (
                status,
                format!("read body (limit {RPC_BODY_BYTES_MAX} bytes): {e}"),
            )
        })
}

/// Receives a streamed snapshot (the same as over a link, `snapshot.rs`, in one body): header,
/// then the file bytes, spooled to a file in the snapshot dir (unnamed, never held in memory
/// whole), then installed by openraft.
async fn snapshot(State(app): State<SharedApp>, body: Body) -> Response {
    let result = receive_snapshot(&app, body).await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, "snapshot install failed");
    }
    postcard_reply(&result)
}

/// Receives a snapshot: the header first (`snapshot::begin` refuses a sender whose vote is
/// older before a byte is spooled), then the file bytes, then openraft installs it.
async fn receive_snapshot(
    app: &SharedApp,
    body: Body,
) -> Result<openraft::raft::SnapshotResponse<TypeConfig>, String> {
    let mut stream = body.into_data_stream();
    let mut buffered: Vec<u8> = Vec::new();
    // Header: u32 BE length + postcard((vote, meta)).
    let header_len = loop {
        if buffered.len() >= 4 {
            let len =
                u32::from_be_bytes([buffered[0], buffered[1], buffered[2], buffered[3]]) as usize;
            if len > SNAPSHOT_HEADER_BYTES_MAX {
                return Err(format!(
                    "snapshot header of {len} bytes is over the limit of {SNAPSHOT_HEADER_BYTES_MAX}"
                ));
            }
            if buffered.len() >= 4 + len {
                break len;
            }
        }
        match stream.next().await {
            Some(Ok(chunk)) => buffered.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(format!("read snapshot body: {e}")),
            None => return Err("snapshot body ended inside its header".into()),
        }
    };
    let mut receiving = match snapshot::begin(app, &buffered[4..4 + header_len]).await? {
        snapshot::Begun::Refused(response) => return Ok(response),
        snapshot::Begun::Receiving(receiving) => receiving,
    };
    receiving
        .push(Bytes::copy_from_slice(&buffered[4 + header_len..]))
        .await?;
    drop(buffered);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("read snapshot body: {e}"))?;
        receiving.push(chunk).await?;
    }
    receiving.finish(app).await
}
