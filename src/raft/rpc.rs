//! Inbound Raft RPC (`/raft/...` routes): decode postcard, hand to openraft, encode the result.
//! The routes of forwarded writes and follower reads live in `forward.rs` and `read.rs`.

use std::io::Seek;
use std::io::Write;

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
use serde::de::DeserializeOwned;

use crate::app::SharedApp;
use crate::raft::network::POSTCARD;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::Vote;

/// Largest accepted non-snapshot RPC body: a batch of appended entries.
const RPC_BODY_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Largest accepted snapshot header (vote + metadata incl. membership).
const SNAPSHOT_HEADER_BYTES_MAX: usize = 16 * 1024 * 1024;

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/pre_vote", post(pre_vote))
        .route("/raft/transfer_leader", post(transfer_leader))
        .route("/raft/snapshot", post(snapshot))
        .route(
            "/raft/write_batch",
            post(crate::raft::forward::handle_forwarded_batch),
        )
        .route(
            "/raft/read_index",
            post(crate::raft::read::handle_read_index),
        )
}

/// A postcard response body holding `Result<T, E>`.
pub fn postcard_reply<T: Serialize, E: Serialize>(result: &Result<T, E>) -> Response {
    match postcard::to_stdvec(result) {
        Ok(bytes) => ([(header::CONTENT_TYPE, POSTCARD)], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}")).into_response(),
    }
}

/// Reads and decodes a postcard request body, or answers 400.
pub async fn decode_body<T: DeserializeOwned>(body: Body) -> Result<T, Response> {
    let bytes: Bytes = axum::body::to_bytes(body, RPC_BODY_BYTES_MAX)
        .await
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("read body: {e}")).into_response())?;
    postcard::from_bytes(&bytes)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("decode body: {e}")).into_response())
}

macro_rules! raft_rpc {
    ($name:ident, $method:ident) => {
        async fn $name(State(app): State<SharedApp>, body: Body) -> Response {
            let req = match decode_body(body).await {
                Ok(req) => req,
                Err(resp) => return resp,
            };
            let result = app.raft.$method(req).await.map_err(|e| e.to_string());
            postcard_reply(&result)
        }
    };
}

raft_rpc!(append, append_entries);
raft_rpc!(vote, vote);
raft_rpc!(pre_vote, pre_vote);

async fn transfer_leader(State(app): State<SharedApp>, body: Body) -> Response {
    let req = match decode_body(body).await {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    let result = app
        .raft
        .handle_transfer_leader(req)
        .await
        .map_err(|e| e.to_string());
    postcard_reply(&result)
}

/// Receives a streamed snapshot: header, then the file bytes, spooled to a file in
/// the snapshot dir (unnamed, never held in memory whole), then installed by openraft.
async fn snapshot(State(app): State<SharedApp>, body: Body) -> Response {
    let result = receive_snapshot(&app, body).await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, "snapshot install failed");
    }
    postcard_reply(&result)
}

async fn receive_snapshot(
    app: &SharedApp,
    body: Body,
) -> Result<openraft::raft::SnapshotResponse<crate::raft::types::TypeConfig>, String> {
    let mut stream = body.into_data_stream();
    let mut buffered: Vec<u8> = Vec::new();
    // Header: u32 BE length + postcard((vote, meta)).
    let header_len = loop {
        if buffered.len() >= 4 {
            let len =
                u32::from_be_bytes([buffered[0], buffered[1], buffered[2], buffered[3]]) as usize;
            if len > SNAPSHOT_HEADER_BYTES_MAX {
                return Err(format!("snapshot header of {len} bytes is over the limit"));
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
    let (vote, meta): (Vote, SnapshotMeta) = postcard::from_bytes(&buffered[4..4 + header_len])
        .map_err(|e| format!("decode snapshot header: {e}"))?;

    let mut spool = app
        .state_machine
        .incoming_snapshot_file()
        .map_err(|e| format!("spool file: {e}"))?;
    let mut received = buffered.len() - 4 - header_len;
    spool
        .write_all(&buffered[4 + header_len..])
        .map_err(|e| format!("spool write: {e}"))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("read snapshot body: {e}"))?;
        received += chunk.len();
        spool
            .write_all(&chunk)
            .map_err(|e| format!("spool write: {e}"))?;
    }
    spool.rewind().map_err(|e| format!("spool rewind: {e}"))?;
    tracing::info!(last_log_id = ?meta.last_log_id, bytes = received, "received snapshot, installing");

    let snapshot = openraft::Snapshot {
        meta,
        snapshot: spool,
    };
    app.raft
        .install_full_snapshot(vote, snapshot)
        .await
        .map_err(|e| e.to_string())
}
