//! `GET /snapshot`: streams a backup of this node's state machine (`backup.rs` format) that holds
//! every write acknowledged before the request (a linearizable read barrier first; with
//! `?level=stale`, what this node has applied, which works without a quorum). Restore it with
//! `raftkv restore --from FILE DATA_DIR`.
//!
//! Headers: `X-Raft-Revision` (the store's revision), `X-Raft-Index` (the applied index it
//! reflects), `X-Raftkv-Compact-Revision`, `X-Raftkv-Keys`, `Content-Length`, and
//! `X-Raftkv-Sha256` (hex sha256 of the body before its last 32 bytes — which are that same
//! sha256, so `curl -o` keeps the check in the file). The body is streamed from a temp file, never held in memory whole.
//!
//! Who may call it: it exports all data, so the admin rule of `/join` applies (router:
//! `admin::guard`; protected mode: loopback callers; peer TLS: a peer certificate too).

use axum::body::Body;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use futures::StreamExt;
use tokio_util::io::ReaderStream;

use crate::app::SharedApp;
use crate::http::ReadParams;
use crate::http::error::ApiError;

/// Read size of the body stream.
const STREAM_CHUNK_BYTES: usize = 64 << 10;

/// `GET /snapshot`.
pub async fn get(
    State(app): State<SharedApp>,
    Query(params): Query<ReadParams>,
) -> Result<Response, ApiError> {
    if params.revision != 0 {
        let why = "a backup holds every retained revision: ?revision does not apply";
        return Err(crate::error::KvError::BadRequest(why.into()).into());
    }
    let backup = crate::backup::take(&app, params.level()?).await?;
    let permit = backup.permit;
    let file = tokio::fs::File::from_std(backup.file);
    // The permit travels with the stream: a place is free again when the download ends.
    let body = ReaderStream::with_capacity(file, STREAM_CHUNK_BYTES).map(move |chunk| {
        let _held = &permit;
        chunk
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(
        header::CONTENT_TYPE.as_str(),
        "application/octet-stream".into(),
    );
    set(header::CONTENT_LENGTH.as_str(), backup.bytes.to_string());
    set(
        header::CONTENT_DISPOSITION.as_str(),
        format!(
            "attachment; filename=\"raftkv-rev{}.snap\"",
            backup.revision
        ),
    );
    set("x-raft-revision", backup.revision.to_string());
    if let Some(index) = backup.applied_index {
        set("x-raft-index", index.to_string());
    }
    set(
        "x-raftkv-compact-revision",
        backup.compact_revision.to_string(),
    );
    set("x-raftkv-keys", backup.keys.to_string());
    set("x-raftkv-sha256", crate::backup::hex(&backup.sha256));
    Ok(response)
}
