//! The internal routes over HTTP (`/raft/...`) and the peer copy of the membership routes. Every
//! request passes [`guard`] first: the caller must be an authenticated peer (see `auth.rs`) and,
//! for the `/raft/` routes, carry identity headers naming this node and its cluster (see
//! `identity.rs`). A refused caller gets `403` (not authenticated) or `421` (meant for another
//! node or cluster).
//!
//! Nodes send their RPCs over peer links (`link.rs`, `link_server.rs`); the HTTP routes carry the
//! same RPCs (handled by `rpc.rs`, same bodies and answers) for the joining handshake
//! (`/raft/hello`), snapshots (`/raft/snapshot`) and tools. Request body = postcard(request);
//! response body = postcard(`Result<response, String>`), where `Err` carries the remote node's
//! error text. Snapshot request body = u32 BE length + postcard((vote, meta)) + the snapshot
//! file's bytes.
//!
//! Limits (all in `limits.rs`): a body is at most `RPC_BODY_BYTES_MAX`, a snapshot at most
//! `SNAPSHOT_BYTES_MAX` (the per-RPC limits are in `rpc.rs`).

use std::cmp::Ordering;
use std::fs::File;
use std::io;
use std::io::BufWriter;
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
use openraft::async_runtime::watch::WatchReceiver;
use serde::Serialize;
use std::sync::atomic::AtomicU64;
use tokio::sync::mpsc;

use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::limits::RPC_BODY_BYTES_MAX;
use crate::limits::SNAPSHOT_BYTES_MAX;
use crate::limits::SNAPSHOT_HEADER_BYTES_MAX;
use crate::peer::auth::authorize_peer;
use crate::peer::client::POSTCARD;
use crate::peer::rpc;
use crate::peer::rpc::Refused;
use crate::peer::wire::Rpc;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

/// Received snapshot chunks queued for the spooling thread (backpressure on the sender).
const SPOOL_CHUNKS_QUEUED_MAX: usize = 16;
/// Write buffer of the spooling thread.
const SPOOL_BUFFER_BYTES: usize = 256 << 10;

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

/// Receives a streamed snapshot: header, then the file bytes, spooled to a file in
/// the snapshot dir (unnamed, never held in memory whole), then installed by openraft.
async fn snapshot(State(app): State<SharedApp>, body: Body) -> Response {
    let result = receive_snapshot(&app, body).await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, "snapshot install failed");
    }
    postcard_reply(&result)
}

/// Receives a snapshot: the header first; a sender whose vote is older than this node's is
/// answered with this node's vote (as openraft itself answers it, so the stale leader steps
/// down) before a byte is spooled; then the file bytes, at most `SNAPSHOT_BYTES_MAX`, are
/// spooled by a blocking thread; then openraft installs it.
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
    let (vote, meta): (Vote, SnapshotMeta) = postcard::from_bytes(&buffered[4..4 + header_len])
        .map_err(|e| format!("decode snapshot header: {e}"))?;

    // The metrics' vote may lag the core's, never lead it (votes only grow): this refuses only
    // what openraft would refuse too, and openraft checks again on install.
    let mine = app.raft.metrics().borrow_watched().vote;
    if !sender_is_current(&vote, &mine) {
        tracing::warn!(sender_vote = %vote, my_vote = %mine, last_log_id = ?meta.last_log_id,
            "refused a snapshot from a leader of an older term; answering with this node's vote");
        return Ok(openraft::raft::SnapshotResponse::new(mine));
    }

    let file = app.state_machine.clone();
    let file = tokio::task::spawn_blocking(move || file.incoming_snapshot_file())
        .await
        .map_err(|e| format!("spool file: {e}"))?
        .map_err(|e| format!("spool file: {e}"))?;
    let (chunks, queued) = mpsc::channel::<Bytes>(SPOOL_CHUNKS_QUEUED_MAX);
    let writer = tokio::task::spawn_blocking(move || spool(file, queued));
    let first = Bytes::copy_from_slice(&buffered[4 + header_len..]);
    drop(buffered);
    let streamed = async {
        let mut received: u64 = 0;
        let mut next = Some(Ok(first));
        while let Some(chunk) = next {
            let chunk = chunk.map_err(|e| format!("read snapshot body: {e}"))?;
            received += chunk.len() as u64;
            if received > SNAPSHOT_BYTES_MAX {
                return Err(format!(
                    "snapshot is over the limit of {SNAPSHOT_BYTES_MAX} bytes; refused"
                ));
            }
            if chunks.send(chunk).await.is_err() {
                break; // the writer failed; its error is reported below
            }
            next = stream.next().await;
        }
        Ok(received)
    }
    .await;
    drop(chunks); // ends the writer
    let written = writer.await.map_err(|e| format!("spool: {e}"))?;
    let received = streamed?;
    let spooled = written.map_err(|e| format!("spool write: {e}"))?;
    tracing::info!(last_log_id = ?meta.last_log_id, bytes = received, "received snapshot, installing");

    let snapshot = openraft::Snapshot {
        meta,
        snapshot: spooled,
    };
    app.raft
        .install_full_snapshot(vote, snapshot)
        .await
        .map_err(|e| e.to_string())
}

/// Whether a snapshot sent with `sender`'s vote may be installed by a node holding `mine`: the
/// rule openraft applies (`sender >= mine`; votes are only partially ordered, so "not greater or
/// equal" is not "less").
fn sender_is_current(sender: &Vote, mine: &Vote) -> bool {
    matches!(
        sender.partial_cmp(mine),
        Some(Ordering::Greater | Ordering::Equal)
    )
}

/// Writes the queued chunks to `file` (blocking; runs on a blocking thread) until the channel
/// closes, and returns the file rewound to its start.
fn spool(file: File, mut queued: mpsc::Receiver<Bytes>) -> io::Result<File> {
    let mut out = BufWriter::with_capacity(SPOOL_BUFFER_BYTES, file);
    while let Some(chunk) = queued.blocking_recv() {
        out.write_all(&chunk)?;
    }
    // Every byte must be flushed to the file before it is rewound and handed to
    // install_full_snapshot: the store reads it back through this handle. (No fsync here: the
    // store's import copies it to its own file and fsyncs that before it takes effect.)
    let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.rewind()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn only_snapshots_from_a_current_leader_are_accepted() {
        let mine = Vote::new_committed(5, 1);
        assert!(sender_is_current(&Vote::new_committed(5, 1), &mine));
        assert!(sender_is_current(&Vote::new_committed(6, 2), &mine));
        assert!(!sender_is_current(&Vote::new_committed(4, 1), &mine));
        assert!(!sender_is_current(&Vote::new_committed(4, 9), &mine));
        // The same leader id, not yet granted: older than the granted vote this node holds.
        assert!(!sender_is_current(&Vote::new(5, 1), &mine));
    }

    #[tokio::test]
    async fn spooling_writes_every_chunk_and_rewinds() {
        let file = tempfile::tempfile().expect("temp file");
        let (tx, rx) = mpsc::channel(SPOOL_CHUNKS_QUEUED_MAX);
        let writer = tokio::task::spawn_blocking(move || spool(file, rx));
        let mut expected = Vec::new();
        for i in 0..100u8 {
            let chunk = vec![i; 10_000];
            expected.extend_from_slice(&chunk);
            tx.send(Bytes::from(chunk)).await.expect("send");
        }
        drop(tx);
        let mut file = writer.await.expect("join").expect("spool");
        let mut read = Vec::new();
        file.read_to_end(&mut read).expect("read");
        assert_eq!(read, expected);
    }
}
