//! Leadership transfer, protocol-neutral: `POST /leader` (HTTP), a shutting-down leader's
//! hand-off, and etcd's `MoveLeader` all call [`transfer_leader`] / [`hand_off`] on the leader.
//!
//! openraft (0.10.0-alpha.37): `Raft::trigger().transfer_leader(to)` makes the leader stop
//! proposing (new writes are refused with `ForwardToLeader` before they are appended, so the
//! write path forwards them to the new leader once it is known), stop its heartbeats, and send
//! `TransferLeaderRequest { from_leader, to, last_log_id }` to every voter (our
//! `/raft/transfer_leader` → `Raft::handle_transfer_leader`). Every voter drops its leader lease;
//! `to` waits (up to an election timeout) until its log holds `last_log_id`, then starts an
//! election at once. If that fails, the followers elect a leader after an election timeout anyway
//! (the old leader sends no heartbeats while transferring), so a failed transfer costs about one
//! election timeout, never the cluster.

use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::time::Instant;

use crate::app::App;
use crate::error::KvError;
use crate::raft::types::NodeId;

/// The voter named `name`: `NoSuchMember` if there is none, `Conflict` if it is a learner.
pub fn voter_by_name(app: &App, name: &str) -> Result<NodeId, KvError> {
    let membership = app.membership();
    let membership = membership.membership();
    let Some((id, _)) = membership.nodes().find(|(_, node)| node.name == name) else {
        return Err(KvError::NoSuchMember(name.to_string()));
    };
    let id = *id;
    if !membership.voter_ids().any(|v| v == id) {
        return Err(KvError::Conflict(format!(
            "{name} is a learner: only a voter can become leader (wait until its join completes)"
        )));
    }
    Ok(id)
}

/// On the leader: the other voter whose replicated log reaches furthest, if any.
pub fn most_caught_up_voter(app: &App) -> Option<NodeId> {
    let metrics = app.raft.metrics();
    let m = metrics.borrow_watched();
    if m.state != ServerState::Leader {
        return None;
    }
    let replication = m.replication.as_ref()?;
    m.membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != app.node_id)
        .max_by_key(|id| replication.get(id).cloned().flatten().map(|l| l.index))
}

/// On the leader: makes voter `to` the leader and waits until this node's metrics show it,
/// at most `bound` (`Timeout` then). `to` being this node is a no-op.
pub async fn transfer_leader(app: &App, to: NodeId, bound: Duration) -> Result<(), KvError> {
    if to == app.node_id && is_leader(app) {
        return Ok(());
    }
    transfer_until(app, to, bound, move |leader| leader == Some(to))
        .await
        .map(|_| ())
}

/// For a leader that is about to stop: transfers leadership to the most caught-up other voter
/// and waits (at most `bound`) until another node is leader; returns it. `Ok(None)` when this
/// node is not the leader or is the only voter (nothing to hand off).
pub async fn hand_off(app: &App, bound: Duration) -> Result<Option<NodeId>, KvError> {
    let Some(to) = most_caught_up_voter(app) else {
        return Ok(None);
    };
    tracing::info!(to, "handing leadership off to the most caught-up voter");
    let me = app.node_id;
    // Any other leader will do: the point is that this one stops.
    transfer_until(app, to, bound, move |leader| {
        leader.is_some_and(|l| l != me)
    })
    .await
    .map(Some)
}

fn is_leader(app: &App) -> bool {
    app.raft.metrics().borrow_watched().state == ServerState::Leader
}

/// Triggers the transfer to `to` and waits until `done(current leader)`; re-sends the request
/// every election timeout while this node is still the leader (a target that was behind may
/// have caught up since).
async fn transfer_until(
    app: &App,
    to: NodeId,
    bound: Duration,
    done: impl Fn(Option<NodeId>) -> bool + Send + Sync + Clone + 'static,
) -> Result<NodeId, KvError> {
    if !is_leader(app) {
        return Err(KvError::NoLeader(
            "this node is not the leader; send the request to the leader".into(),
        ));
    }
    let t0 = Instant::now();
    let deadline = t0 + bound;
    // The election timeout is 5–10 heartbeats (node.rs).
    let resend_every = app.heartbeat_interval * 10;
    loop {
        if is_leader(app) {
            app.raft
                .trigger()
                .transfer_leader(to)
                .await
                .map_err(|e| KvError::Internal(e.to_string()))?;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let done = done.clone();
        let waited = app
            .raft
            .wait(Some(remaining.min(resend_every)))
            .metrics(move |m| done(m.current_leader), "leadership transferred")
            .await;
        if let Ok(m) = waited
            && let Some(leader) = m.current_leader
        {
            tracing::info!(
                from = app.node_id,
                to = leader,
                took_ms = t0.elapsed().as_millis(),
                "leadership transferred"
            );
            return Ok(leader);
        }
        if Instant::now() >= deadline {
            return Err(KvError::Timeout(bound));
        }
    }
}
