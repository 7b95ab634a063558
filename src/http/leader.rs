//! `POST /leader {"id": NAME}`: make member NAME the leader. An admin route (same guard as
//! `/join`); a follower relays it to the leader like `/join`. Answers `200` once NAME leads
//! (bounded by [`TRANSFER_MAX`]), `404` for an unknown member, `409` for a learner, `503` on
//! timeout. The transfer itself is `cluster::leader::transfer_leader` (protocol-neutral).

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::app::SharedApp;
use crate::error::KvError;
use crate::http::error::ApiError;
use crate::http::read_limited;

/// Largest accepted request body.
const LEADER_BODY_BYTES_MAX: usize = 64 * 1024;
/// Bound on the transfer: the target catches up, wins its election and is seen as leader.
pub const TRANSFER_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderRequest {
    pub id: String,
}

/// `POST /leader`.
pub async fn transfer(State(app): State<SharedApp>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_limited(body, LEADER_BODY_BYTES_MAX, "request body").await?;
    let request: LeaderRequest = serde_json::from_slice(&bytes)
        .map_err(|e| KvError::BadRequest(format!("invalid JSON: {e}")))?;
    if request.id.is_empty() {
        return Err(KvError::BadRequest("leader needs {\"id\": NAME}".into()).into());
    }
    // Checked here too, so an unknown name or a learner is answered without a relay.
    let to = crate::cluster::leader::voter_by_name(&app, &request.id)?;
    if let Some(response) =
        crate::http::admin::forward_admin_to_leader(&app, "leader", &request).await?
    {
        return Ok(response);
    }
    let t0 = Instant::now();
    crate::cluster::leader::transfer_leader(&app, to, TRANSFER_MAX).await?;
    Ok(Json(json!({
        "leader": request.id,
        "node_id": to,
        "took_ms": u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
    }))
    .into_response())
}
