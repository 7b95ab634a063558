//! raftd's API: `/db/<key>` with the raw request body as the value.

use axum::body::Body;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;

use crate::app::SharedApp;
use crate::error::KvError;
use crate::http::ReadParams;
use crate::http::error::ApiError;
use crate::http::read_limited;
use crate::http::read_value;
use crate::http::validate_key;
use crate::http::versions;

/// `?ttl=30s` on a write: attach a fresh lease of that TTL.
#[derive(Debug, serde::Deserialize, Default)]
pub struct WriteParams {
    #[serde(default)]
    ttl: Option<String>,
}

/// `POST|PUT /db/<key>`: the body is the value; `If-Match` / `If-None-Match` make it a
/// compare-and-swap (see `versions.rs`); `?ttl=30s` attaches a fresh lease (its id, in hex as
/// etcdctl writes it, answers in `X-Raft-Lease`).
pub async fn put(
    State(app): State<SharedApp>,
    Path(key): Path<String>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    validate_key(&key)?;
    let pre = versions::precondition(&headers)?;
    let value = read_limited(body, app.max_value_bytes, "value").await?;
    let lease = match params.ttl.as_deref() {
        None => 0,
        Some(ttl) => {
            let ttl = crate::compaction::parse_duration("ttl", ttl).map_err(KvError::BadRequest)?;
            let secs = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
            if secs == 0 {
                return Err(
                    KvError::BadRequest("ttl must be above 0 (e.g. ttl=30s)".into()).into(),
                );
            }
            crate::service::lease::grant(&app, 0, secs).await?.0
        }
    };
    let written = versions::guarded_write(&app, key, Some(value.to_vec()), pre, lease).await;
    // The lease was granted for this write alone: a write that certainly did not happen (its
    // If-Match / If-None-Match failed, or the store refused it) must not leave the lease behind
    // until its TTL runs out. A write whose outcome is unknown (a timeout) keeps it: revoking
    // would delete the key if the write did happen. Best effort: a lease whose revoke fails
    // still expires on its own.
    let nothing_written = match &written {
        Ok(response) => response.status() == axum::http::StatusCode::PRECONDITION_FAILED,
        Err(ApiError(e)) => matches!(e, KvError::Store(_)),
    };
    if lease != 0
        && nothing_written
        && let Err(e) = crate::service::lease::revoke(&app, lease).await
    {
        tracing::debug!(lease, error = %e, "could not revoke the lease of a write that did not happen");
    }
    let mut response = written?;
    if let Some(v) = (lease != 0)
        .then(|| axum::http::HeaderValue::from_str(&format!("{lease:x}")).ok())
        .flatten()
    {
        response
            .headers_mut()
            .insert(crate::http::X_RAFT_LEASE.clone(), v);
    }
    Ok(response)
}

/// `GET /db/<key>`: the raw value, 404 if absent.
pub async fn get(
    State(app): State<SharedApp>,
    Path(key): Path<String>,
    Query(params): Query<ReadParams>,
) -> Result<Response, ApiError> {
    if let Some(rev) = params.wait {
        crate::http::watch::wait_for_change(&app, &key, rev, params.timeout.as_deref()).await?;
    }
    let kv = read_value(&app, &key, &params).await?;
    let mut response = (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        kv.value,
    )
        .into_response();
    crate::http::revision_headers(&mut response, kv.mod_revision);
    Ok(response)
}

/// `DELETE /db/<key>` and `DELETE /key/<key>`; `If-Match` makes it conditional.
pub async fn delete(
    State(app): State<SharedApp>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate_key(&key)?;
    let pre = versions::precondition(&headers)?;
    versions::guarded_write(&app, key, None, pre, 0).await
}

/// `/db/` with no key.
pub async fn empty_key() -> ApiError {
    ApiError(KvError::BadRequest("empty key: use /db/<key>".into()))
}
