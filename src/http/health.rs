//! Health for load balancers and orchestrators: `GET /livez`, `GET /readyz`, `GET /health`;
//! and the drain guard that answers `503 shutting_down` to public requests once a shutdown
//! drains (see `shutdown.rs`).
//!
//! - `/livez`: the process runs and its Raft core has not stopped (restart the node if not).
//! - `/readyz`: this node is a member (voter or learner) that knows a leader, has applied the
//!   log up to within [`READY_APPLY_LAG_MAX`] entries of the commit index it knows (its own, or
//!   the cluster's as the leader last reported it, whichever is higher), and is not shutting
//!   down: send it traffic.
//! - `/health`: etcd's check — running, a leader known, and a linearizable read barrier (the
//!   default read level) confirmed within [`HEALTH_READ_MAX`]. Body shaped like etcd's
//!   (`{"health":"true","reason":""}`); a failure adds our `error` and `code`.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use serde_json::json;

use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::http::error::ApiError;
use crate::raft::read::ReadLevel;

/// How far the applied index may trail the known commit index on a ready node.
pub const READY_APPLY_LAG_MAX: u64 = 64;
/// Bound on `/health`'s read barrier.
pub const HEALTH_READ_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// What readiness is judged on, read from the Raft metrics in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    /// `Err(why)` when the Raft core stopped.
    running: Result<(), String>,
    member: bool,
    /// The known leader's name, if its record is in this node's membership.
    leader: Option<String>,
    committed: Option<u64>,
    applied: Option<u64>,
    role: &'static str,
}

fn facts(app: &App) -> Facts {
    let metrics = app.raft.metrics();
    let m = metrics.borrow_watched();
    let running = match (&m.running_state, m.state) {
        (Err(fatal), _) => Err(fatal.to_string()),
        (Ok(()), ServerState::Shutdown) => Err("the Raft core shut down".to_string()),
        (Ok(()), _) => Ok(()),
    };
    let membership = m.membership_config.membership();
    Facts {
        running,
        member: membership.get_node(&app.node_id).is_some(),
        leader: m
            .current_leader
            .and_then(|id| membership.get_node(&id))
            .map(|n| n.name.clone()),
        // The leader's commit index as last reported, if ahead of what this node holds: a
        // node far behind is catching up, not ready.
        committed: m.local_committed.max(m.cluster_committed).map(|l| l.index),
        applied: m.last_applied.map(|l| l.index),
        role: match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        },
    }
}

/// Whether a node with these facts is ready; the reason if not.
fn judge_ready(f: &Facts) -> Result<(), KvError> {
    f.running.clone().map_err(KvError::NotReady)?;
    if !f.member {
        return Err(KvError::NotReady(
            "not a member of a cluster (not joined yet, or removed)".into(),
        ));
    }
    if f.leader.is_none() {
        return Err(KvError::NotReady("no leader known".into()));
    }
    let committed = f.committed.unwrap_or(0);
    let applied = f.applied.unwrap_or(0);
    if committed.saturating_sub(applied) > READY_APPLY_LAG_MAX {
        return Err(KvError::NotReady(format!(
            "catching up: applied {applied} of {committed} committed entries"
        )));
    }
    Ok(())
}

/// `GET /livez`: 200 while the process and its Raft core run.
pub async fn livez(State(app): State<SharedApp>) -> Result<Response, ApiError> {
    let f = facts(&app);
    f.running.map_err(KvError::NotReady)?;
    Ok(Json(json!({ "live": true, "role": f.role })).into_response())
}

/// `GET /readyz`: 200 when this node is caught up and serving (see the module doc).
pub async fn readyz(State(app): State<SharedApp>) -> Result<Response, ApiError> {
    if app.lifecycle.is_stopping() {
        return Err(KvError::ShuttingDown.into());
    }
    let f = facts(&app);
    judge_ready(&f)?;
    Ok(Json(json!({
        "ready": true,
        "role": f.role,
        "leader": f.leader,
        "commit_index": f.committed,
        "applied_index": f.applied,
    }))
    .into_response())
}

/// `GET /health`: etcd's health check (running, a leader, a linearizable read barrier).
pub async fn health(State(app): State<SharedApp>) -> Response {
    match check_health(&app).await {
        Ok(()) => Json(json!({ "health": "true", "reason": "" })).into_response(),
        Err(e) => {
            let error = ApiError(e);
            let (status, code) = error.status_and_code();
            let reason = error.0.to_string();
            let body =
                json!({ "health": "false", "reason": reason, "error": reason, "code": code });
            (status, Json(body)).into_response()
        }
    }
}

async fn check_health(app: &App) -> Result<(), KvError> {
    if app.lifecycle.is_stopping() {
        return Err(KvError::ShuttingDown);
    }
    let f = facts(app);
    f.running.map_err(KvError::NotReady)?;
    if f.leader.is_none() {
        return Err(KvError::NotReady("no leader known".into()));
    }
    match tokio::time::timeout(
        HEALTH_READ_MAX,
        crate::raft::read::read_barrier(app, ReadLevel::Linearizable),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(KvError::NotReady(format!("linearizable read failed: {e}"))),
        Err(_) => Err(KvError::NotReady(format!(
            "linearizable read not confirmed within {HEALTH_READ_MAX:?} (no quorum?)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_follower() -> Facts {
        Facts {
            running: Ok(()),
            member: true,
            leader: Some("n1".into()),
            committed: Some(100),
            applied: Some(100),
            role: "follower",
        }
    }

    fn reason(f: &Facts) -> String {
        match judge_ready(f) {
            Err(KvError::NotReady(why)) => why,
            other => panic!("expected NotReady, got {other:?}"),
        }
    }

    #[test]
    fn a_caught_up_member_that_knows_a_leader_is_ready() {
        assert_eq!(judge_ready(&ready_follower()), Ok(()));
        let lagging_a_little = Facts {
            applied: Some(100 - READY_APPLY_LAG_MAX),
            ..ready_follower()
        };
        assert_eq!(judge_ready(&lagging_a_little), Ok(()));
    }

    #[test]
    fn each_missing_condition_is_named() {
        let stopped = Facts {
            running: Err("storage error".into()),
            ..ready_follower()
        };
        assert_eq!(reason(&stopped), "storage error");
        let stranger = Facts {
            member: false,
            ..ready_follower()
        };
        assert!(reason(&stranger).contains("not a member"));
        let leaderless = Facts {
            leader: None,
            ..ready_follower()
        };
        assert!(reason(&leaderless).contains("no leader"));
        let behind = Facts {
            applied: Some(99 - READY_APPLY_LAG_MAX),
            ..ready_follower()
        };
        assert!(
            reason(&behind).contains("catching up"),
            "{}",
            reason(&behind)
        );
        let pristine = Facts {
            committed: None,
            applied: None,
            ..ready_follower()
        };
        assert_eq!(judge_ready(&pristine), Ok(()));
    }
}
