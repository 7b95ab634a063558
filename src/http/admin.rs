//! Cluster administration: `POST /join`, `POST /remove` (forwarded to the leader from any node)
//! and `GET /status`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
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

/// On a follower, relays an admin request to the leader's Raft address (its peer router serves
/// `/join` and `/remove`, authenticated like every peer request) and returns its answer;
/// `None` when this node is the leader and should handle it.
pub(crate) async fn forward_admin_to_leader<T: Serialize>(
    app: &App,
    route: &str,
    request: &T,
) -> Result<Option<Response>, KvError> {
    let Some((leader_id, leader)) = app.leader() else {
        return Err(KvError::NoLeader("no leader known; retry shortly".into()));
    };
    if leader_id == app.node_id {
        return Ok(None);
    }
    let answer = app
        .peers
        .post_admin(&leader.raft_addr, route)
        .json(request)
        .timeout(app.join_timeout + app.request_timeout)
        .send()
        .await
        .map_err(|e| {
            KvError::NoLeader(format!(
                "cannot reach the leader at {}: {e}",
                leader.raft_addr
            ))
        })?;
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
    let metrics = app.raft.metrics();
    let m = metrics.borrow_watched();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| {
            json!({
                "id": node.name,
                "node_id": id,
                "api_addr": node.api_addr,
                "raft_addr": node.raft_addr,
                "voter": voters.contains(id),
            })
        })
        .collect()
}

/// `GET /status`: this node's view of the cluster.
pub async fn status(State(app): State<SharedApp>) -> Json<Value> {
    let (role, term, leader, last_log_index, commit_index, applied_index, snapshot_index) = {
        let metrics = app.raft.metrics();
        let m = metrics.borrow_watched();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let leader = m.current_leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| json!({ "id": n.name, "node_id": id, "api_addr": n.api_addr }))
        });
        (
            role,
            m.current_term,
            leader,
            m.last_log_index,
            m.local_committed.map(|l| l.index),
            m.last_applied.map(|l| l.index),
            m.snapshot.map(|l| l.index),
        )
    };
    let digest = app.state_machine.digest();
    Json(json!({
        "id": app.me.name,
        "node_id": app.node_id,
        "cluster_id": app.identity().cluster_id(),
        "api_addr": app.me.api_addr,
        "raft_addr": app.me.raft_addr,
        "role": role,
        "term": term,
        "leader": leader,
        "last_log_index": last_log_index,
        "commit_index": commit_index,
        "applied_index": applied_index,
        "snapshot_index": snapshot_index,
        "revision": app.state_machine.revision(),
        "members": members_json(&app),
        "digest": { "applied_index": digest.0, "value": format!("{:016x}", digest.1), "keys": digest.2 },
    }))
}
