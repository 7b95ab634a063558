//! Cluster administration: `POST /join`, `POST /remove` (forwarded to the leader from any node)
//! and `GET /status`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;
use serde_json::json;

use crate::app::App;
use crate::app::SharedApp;
use crate::cluster::JoinRequest;
use crate::cluster::RemoveRequest;
use crate::error::KvError;
use crate::http::error::ApiError;
use crate::http::read_limited;
use crate::service::cluster::Member;

/// Largest accepted admin request body.
const ADMIN_BODY_BYTES_MAX: usize = 64 * 1024;

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, KvError> {
    serde_json::from_slice(bytes).map_err(|e| KvError::BadRequest(format!("invalid JSON: {e}")))
}

/// Lets only authorised callers change the membership (protected mode: loopback; peer TLS: a
/// peer certificate; see `peer/auth.rs`); others get 403 with what to configure.
pub async fn guard(
    State(app): State<SharedApp>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(conn) = request.extensions().get::<crate::serve::ConnInfo>() else {
        return ApiError(KvError::Forbidden("no connection info".into())).into_response();
    };
    if let Err(e) = crate::peer::auth::authorize_admin(&app.peer_auth, conn) {
        tracing::warn!(remote = %conn.remote, path = request.uri().path(), reason = %e, "refused a membership request");
        return ApiError(KvError::Forbidden(e.to_string())).into_response();
    }
    next.run(request).await
}

/// `POST /join`.
pub async fn join(State(app): State<SharedApp>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_limited(body, ADMIN_BODY_BYTES_MAX, "request body").await?;
    let request: JoinRequest = parse_json(&bytes)?;
    let node = request.to_node()?;
    if let Some(response) = forward_admin_to_leader(&app, "join", &request).await? {
        return Ok(response);
    }
    crate::cluster::add_member(&app, node.clone()).await?;
    Ok(Json(json!({ "joined": node.name, "members": members_json(&app) })).into_response())
}

/// `POST /remove` `{"id": NAME}`.
pub async fn remove(State(app): State<SharedApp>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_limited(body, ADMIN_BODY_BYTES_MAX, "request body").await?;
    let request: RemoveRequest = parse_json(&bytes)?;
    if request.id.is_empty() {
        return Err(KvError::BadRequest("remove needs {\"id\": NAME}".into()).into());
    }
    if let Some(response) = forward_admin_to_leader(&app, "remove", &request).await? {
        return Ok(response);
    }
    crate::cluster::remove_member(&app, &request.id).await?;
    Ok(Json(json!({ "removed": request.id, "members": members_json(&app) })).into_response())
}

/// On a follower, relays an admin request to the leader (see
/// `service::cluster::send_to_leader`) and returns its answer as is; `None` when this node is
/// the leader and should handle it.
pub(crate) async fn forward_admin_to_leader<T: Serialize>(
    app: &App,
    route: &str,
    request: &T,
) -> Result<Option<Response>, KvError> {
    let Some(answer) = crate::service::cluster::send_to_leader(app, route, request).await? else {
        return Ok(None);
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = answer.bytes().await.map_err(|e| {
        tracing::debug!(error = %e, "relayed admin request: no answer");
        KvError::Timeout(app.request_timeout)
    })?;
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(Some(response))
}

fn members_json(app: &App) -> Vec<Value> {
    members_to_json(&crate::service::cluster::members(app))
}

fn members_to_json(members: &[Member]) -> Vec<Value> {
    members
        .iter()
        .map(|m| {
            json!({
                "id": m.node.name,
                "node_id": m.id,
                "api_addr": m.node.api_addr,
                "raft_addr": m.node.raft_addr,
                "voter": m.voter,
            })
        })
        .collect()
}

/// `GET /status`: this node's view of the cluster.
pub async fn status(State(app): State<SharedApp>) -> Json<Value> {
    let s = crate::service::cluster::status(&app);
    let leader = s.leader.as_ref().and_then(|(id, node)| {
        node.as_ref()
            .map(|n| json!({ "id": n.name, "node_id": id, "api_addr": n.api_addr }))
    });
    let digest = app.state_machine.digest();
    Json(json!({
        "id": app.me.name,
        "node_id": app.node_id,
        "cluster_id": app.identity().cluster_id(),
        "api_addr": app.me.api_addr,
        "raft_addr": app.me.raft_addr,
        "role": s.role.as_str(),
        "term": s.term,
        "leader": leader,
        "last_log_index": s.last_log_index,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "revision": app.state_machine.revision(),
        "members": members_to_json(&s.members),
        "digest": { "applied_index": digest.0, "value": format!("{:016x}", digest.1), "keys": digest.2 },
    }))
}
