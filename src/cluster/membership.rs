//! The leader's side of membership changes, with the rules that keep a typo or a wrong address
//! from breaking the cluster:
//!
//! 1. A joiner's addresses must not be used by another member (409 naming the clash).
//! 2. Before the learner is added, the leader's handshake (`/raft/hello`, identity headers
//!    naming the joiner) must reach the joiner itself at its advertised Raft address: nothing
//!    listening is an error (the voters are unchanged), another node answering is a 409.
//! 3. A learner is promoted only when its replicated log is within `CATCH_UP_ENTRIES_MAX`
//!    entries of the leader's, checked on every attempt (retries included); one that does not
//!    catch up within the join timeout is removed again.
//! 4. No change may leave the new voter set without a quorum among the members reachable now
//!    (etcd's strict reconfiguration check): refused with 409 and an explanation.
//!
//! A learner that never caught up can always be removed with `POST /remove`.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::ChangeMembershipError;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;
use tokio::time::Instant;

use crate::app::App;
use crate::cluster::HelloReply;
use crate::error::KvError;
use crate::peer::client::PeerError;
use crate::peer::client::decode_response;
use crate::raft::types::Node;
use crate::raft::types::NodeId;
use crate::raft::types::TypeConfig;
use crate::raft::types::node_id_from_name;

/// A learner is promoted only when it is at most this many entries behind the leader.
pub const CATCH_UP_ENTRIES_MAX: u64 = 64;
/// Bound on the leader's handshake with a joiner.
const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// A member counts as reachable when it acknowledged the leader within this many heartbeats.
const REACHABLE_HEARTBEATS: u32 = 20;

/// Adds `node` as a voter (on the leader): checks, handshake, learner, catch-up, promotion.
/// Idempotent: joining an existing voter again with the same address is a no-op.
pub async fn add_member(app: &App, node: Node) -> Result<(), KvError> {
    let deadline = Instant::now() + app.join_timeout;
    // Must hold the lock from the checks until the change is committed: the checks judge the
    // membership the change is applied to.
    let _serial = lock_membership(app, deadline).await?;
    let id = node_id_from_name(&node.name);
    let membership = app.membership();
    if let Some(existing) = membership.get_node(&id) {
        // Same name and Raft address is the same node (hraftd's join form carries no API
        // address, so that one is not compared).
        if existing.raft_addr != node.raft_addr {
            return Err(KvError::Conflict(format!(
                "node name {:?} is already used by {existing}; pick another -id",
                node.name
            )));
        }
        if membership.voter_ids().any(|v| v == id) {
            tracing::info!(node = %node, "join: already a voter");
            return Ok(());
        }
        tracing::info!(node = %node, "join: already a learner; checking it again before promotion");
    }
    check_addresses(app, id, &node)?;
    let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    voters.insert(id);
    check_quorum_after(app, &voters, Some(id))?;
    handshake(app, id, &node).await?;

    if membership.get_node(&id).is_none() {
        tracing::info!(node = %node, "join: adding learner");
        let remaining = deadline.saturating_duration_since(Instant::now());
        with_timeout(remaining, app.raft.add_learner(id, node.clone(), false)).await?;
    }
    let progress = crate::metrics::progress::CatchUpLog::start(&app.raft, id, &node.name);
    let caught_up = wait_caught_up(app, id, deadline).await;
    drop(progress);
    if !caught_up? {
        let (matched, last) = replication_progress(app, id);
        remove_learner_after_failed_join(app, id, &node).await;
        return Err(KvError::JoinFailed(format!(
            "{} did not catch up within {:?} (it holds the log up to {}, the leader is at {}); \
             it was removed again and the voters are unchanged",
            node,
            app.join_timeout,
            matched.map_or_else(|| "nothing".to_string(), |i| i.to_string()),
            last
        )));
    }
    // Checked again right before the change: reachability may have changed while we waited.
    check_quorum_after(app, &voters, Some(id))?;
    tracing::info!(node = %node, "join: learner caught up, promoting to voter");
    let remaining = deadline.saturating_duration_since(Instant::now());
    with_timeout(
        remaining.max(app.request_timeout),
        app.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false),
    )
    .await?;
    tracing::info!(node = %node, "join: member is a voter");
    Ok(())
}

/// Removes the member named `name` (on the leader). Removing a voter must leave a quorum of
/// reachable voters; removing a learner is always allowed.
pub async fn remove_member(app: &App, name: &str) -> Result<(), KvError> {
    let _serial = lock_membership(app, Instant::now() + app.request_timeout * 4).await?;
    let id = node_id_from_name(name);
    let membership = app.membership();
    if membership.get_node(&id).is_none() {
        return Err(KvError::NoSuchMember(name.to_string()));
    }
    let change = if membership.voter_ids().any(|v| v == id) {
        let voters: BTreeSet<NodeId> = membership.voter_ids().filter(|v| *v != id).collect();
        if voters.is_empty() {
            return Err(KvError::Conflict(format!(
                "{name} is the last voter; a cluster cannot remove its last voter"
            )));
        }
        check_quorum_after(app, &voters, None)?;
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    with_timeout(
        app.request_timeout * 4,
        app.raft.change_membership(change, false),
    )
    .await?;
    tracing::info!(name, "removed member");
    Ok(())
}

/// Waits for this node's other membership change to finish (bounded by `deadline`).
async fn lock_membership(
    app: &App,
    deadline: Instant,
) -> Result<tokio::sync::MutexGuard<'_, ()>, KvError> {
    let wait = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(wait, app.membership_lock.lock())
        .await
        .map_err(|_| {
            KvError::Busy(format!(
                "another membership change kept this leader busy for {wait:?}"
            ))
        })
}

/// Refuses a joiner whose API or Raft address is already used by another member (including
/// this node).
fn check_addresses(app: &App, id: NodeId, node: &Node) -> Result<(), KvError> {
    let membership = app.membership();
    let ours = [node.api_addr.as_str(), node.raft_addr.as_str()];
    for (other_id, other) in membership.nodes() {
        if *other_id == id {
            continue;
        }
        if let Some(clash) = [other.api_addr.as_str(), other.raft_addr.as_str()]
            .into_iter()
            .find(|a| ours.contains(a))
        {
            return Err(KvError::Conflict(format!(
                "address {clash} of joining node {:?} is already used by member {other}; \
                 advertise the joiner's own address (-h, -haddr/-raddr or --advertise-*)",
                node.name
            )));
        }
    }
    Ok(())
}

/// The leader's handshake with a joiner: must reach the joiner itself, which adopts (or
/// already has) this cluster's id.
async fn handshake(app: &App, id: NodeId, node: &Node) -> Result<(), KvError> {
    if app.identity().cluster_id().is_none() {
        return Err(KvError::Internal("this leader has no cluster id".into()));
    }
    let sent = app
        .peers
        .post_raft(&node.raft_addr, id, "hello")
        .timeout(HELLO_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            KvError::JoinFailed(format!(
                "the leader cannot reach {:?} at its advertised Raft address {}: {}; \
                 the voters are unchanged (is it running, and is the address right?)",
                node.name,
                node.raft_addr,
                crate::peer::client::error_chain(&e)
            ))
        })?;
    match decode_response::<HelloReply>(sent).await {
        Ok(reply) if reply.node_id == id && reply.name == node.name => Ok(()),
        Ok(reply) => Err(KvError::Conflict(format!(
            "address {} reaches node {:?}, not the joining node {:?}",
            node.raft_addr, reply.name, node.name
        ))),
        Err(PeerError::Refused {
            status: 421, text, ..
        }) => Err(KvError::Conflict(format!(
            "address {} does not reach the joining node {:?}: {text}",
            node.raft_addr, node.name
        ))),
        Err(PeerError::Refused { text, .. }) => Err(KvError::JoinFailed(format!(
            "{:?} at {} refused the leader's handshake: {text}",
            node.name, node.raft_addr
        ))),
        Err(PeerError::Failed(text)) if text.contains("already belongs to cluster") => {
            Err(KvError::Conflict(text))
        }
        Err(PeerError::Failed(text)) => Err(KvError::JoinFailed(format!(
            "handshake with {:?} at {} failed: {text}",
            node.name, node.raft_addr
        ))),
    }
}

/// Waits until learner `id` is within `CATCH_UP_ENTRIES_MAX` of the leader's log; `false` at the
/// deadline; `NoLeader` if this node stops being the leader meanwhile.
async fn wait_caught_up(app: &App, id: NodeId, deadline: Instant) -> Result<bool, KvError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let _ = app
        .raft
        .wait(Some(remaining))
        .metrics(
            |m| m.replication.is_none() || caught_up(m, id),
            "learner caught up",
        )
        .await;
    let metrics = app.raft.metrics().borrow_watched().clone();
    if metrics.replication.is_none() {
        return Err(KvError::NoLeader(
            "this node stopped being the leader during the join; retry".into(),
        ));
    }
    Ok(caught_up(&metrics, id))
}

fn caught_up(m: &openraft::RaftMetrics<TypeConfig>, id: NodeId) -> bool {
    let Some(replication) = &m.replication else {
        return false;
    };
    let matched = replication.get(&id).cloned().flatten().map(|l| l.index);
    let last = m.last_log_index.unwrap_or(0);
    matched.is_some_and(|i| i + CATCH_UP_ENTRIES_MAX >= last)
}

/// The learner's matched index and the leader's last index.
fn replication_progress(app: &App, id: NodeId) -> (Option<u64>, u64) {
    let metrics = app.raft.metrics();
    let m = metrics.borrow_watched();
    let matched = m
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map(|l| l.index);
    (matched, m.last_log_index.unwrap_or(0))
}

async fn remove_learner_after_failed_join(app: &App, id: NodeId, node: &Node) {
    let change = ChangeMembers::RemoveNodes(BTreeSet::from([id]));
    match with_timeout(
        app.request_timeout,
        app.raft.change_membership(change, false),
    )
    .await
    {
        Ok(_) => tracing::warn!(node = %node, "join: learner did not catch up; removed it again"),
        Err(e) => tracing::error!(node = %node, error = %e,
            "join: learner did not catch up and removing it failed; remove it with POST /remove"),
    }
}

/// Refuses a change after which `voters` could not form a quorum among the members reachable
/// now: this node, `joiner` (just checked by the handshake) and the voters that acknowledged the
/// leader recently.
fn check_quorum_after(
    app: &App,
    voters: &BTreeSet<NodeId>,
    joiner: Option<NodeId>,
) -> Result<(), KvError> {
    let within = app.heartbeat_interval * REACHABLE_HEARTBEATS;
    let metrics = app.raft.metrics().borrow_watched().clone();
    let Some(heartbeat) = metrics.heartbeat.as_ref() else {
        return Err(KvError::NoLeader(
            "this node is no longer the leader".into(),
        ));
    };
    let reachable = |v: &NodeId| {
        *v == app.node_id
            || Some(*v) == joiner
            || heartbeat
                .get(v)
                .cloned()
                .flatten()
                .is_some_and(|t| openraft::Instant::elapsed(&*t) < within)
    };
    let membership = metrics.membership_config.membership();
    let name = |v: &NodeId| {
        membership
            .get_node(v)
            .map_or_else(|| v.to_string(), |n| n.name.clone())
    };
    let (up, down): (Vec<NodeId>, Vec<NodeId>) = voters.iter().partition(|v| reachable(v));
    let quorum = voters.len() / 2 + 1;
    if up.len() >= quorum {
        return Ok(());
    }
    let down: Vec<String> = down.iter().map(name).collect();
    Err(KvError::Conflict(format!(
        "refused: after this change the {} voters need {quorum} reachable for a quorum, but only \
         {} are reachable now (unreachable: {}); bring those members back or remove them first",
        voters.len(),
        up.len(),
        down.join(", ")
    )))
}

/// Runs a membership change with a deadline; "not the leader" becomes `NoLeader` (not applied);
/// a change still in progress becomes `Busy` (503, not applied).
async fn with_timeout<T>(
    timeout: Duration,
    change: impl Future<Output = Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>>,
) -> Result<T, KvError> {
    match tokio::time::timeout(timeout, change).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(KvError::NoLeader(format!(
                "this node is no longer the leader (leader: {:?})",
                f.leader_id
            )))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(e),
        )))) => Err(KvError::Conflict(format!(
            "another membership change is still in progress ({e}); retry in a moment"
        ))),
        Ok(Err(e)) => Err(KvError::Internal(e.to_string())),
        Err(_) => Err(KvError::Timeout(timeout)),
    }
}
