//! The cluster as data, for `GET /status` and etcd's `Cluster.MemberList` / `Maintenance.Status`,
//! and membership changes asked of any node: on the leader they run the safety rules of
//! `cluster::membership`; a follower relays them to the leader's `/join` / `/remove` (its peer
//! route, authenticated like every peer request), exactly as `POST /join` on a follower does.

use std::path::Path;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use serde::Deserialize;

use crate::app::App;
use crate::cluster::JoinRequest;
use crate::cluster::RemoveRequest;
use crate::error::KvError;
use crate::raft::types::Node;
use crate::raft::types::NodeId;
use crate::raft::types::node_id_from_name;

/// One member as this node's Raft membership records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub node: Node,
    /// A voter; `false` for a learner (a join still catching up).
    pub voter: bool,
}

/// This node's role in Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// This node's view of the cluster at one moment (one metrics snapshot).
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub role: Role,
    pub term: u64,
    /// The leader this node knows, with its record when the membership has it.
    pub leader: Option<(NodeId, Option<Node>)>,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Whether this node is a learner (not a voter) in the membership it knows.
    pub is_learner: bool,
    pub members: Vec<Member>,
}

/// The members this node knows (possibly not yet committed), in node id order.
pub fn members(app: &App) -> Vec<Member> {
    members_of(app.membership().membership())
}

fn members_of(membership: &openraft::Membership<NodeId, Node>) -> Vec<Member> {
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| Member {
            id: *id,
            node: node.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

/// This node's status, read from one metrics snapshot.
pub fn status(app: &App) -> NodeStatus {
    let metrics = app.raft.metrics();
    let m = metrics.borrow_watched();
    let role = match m.state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    };
    let membership = m.membership_config.membership();
    let leader = m
        .current_leader
        .map(|id| (id, membership.get_node(&id).cloned()));
    let members = members_of(membership);
    NodeStatus {
        node_id: app.node_id,
        role,
        term: m.current_term,
        leader,
        last_log_index: m.last_log_index,
        commit_index: m.local_committed.map(|l| l.index),
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        is_learner: !membership.voter_ids().any(|v| v == app.node_id),
        members,
    }
}

/// The cluster id as a number, for protocols that carry one (etcd's `cluster_id`): FNV-1a 64 of
/// the cluster id string (the same hash that makes node ids from names), so every member
/// reports the same number; 0 while this node belongs to no cluster yet.
pub fn cluster_id_number(app: &App) -> u64 {
    app.identity()
        .cluster_id()
        .map_or(0, |id| node_id_from_name(&id))
}

/// Bytes this node keeps on disk for the cluster (Raft log and snapshot files): the closest
/// thing to etcd's database size. Files that vanish while counted are skipped.
pub fn disk_bytes(data_dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: u32) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_file() => m.len(),
                Ok(m) if m.is_dir() && depth < 4 => walk(&e.path(), depth + 1),
                _ => 0,
            })
            .sum()
    }
    walk(data_dir, 0)
}

/// Adds `node` as a voter, asked of any node: the leader runs `cluster::add_member`; a
/// follower relays the join to the leader and reports its answer.
pub async fn join(app: &App, node: Node) -> Result<(), KvError> {
    let request = JoinRequest {
        id: Some(node.name.clone()),
        addr: Some(node.raft_addr.clone()),
        api_addr: Some(node.api_addr.clone()),
        ..JoinRequest::default()
    };
    if relay_to_leader(app, "join", &request).await? {
        return Ok(());
    }
    crate::cluster::add_member(app, node).await
}

/// Removes the member named `name`, asked of any node (relayed like [`join`]).
pub async fn remove(app: &App, name: &str) -> Result<(), KvError> {
    let request = RemoveRequest {
        id: name.to_string(),
    };
    if relay_to_leader(app, "remove", &request).await? {
        return Ok(());
    }
    crate::cluster::remove_member(app, name).await
}

/// The JSON error body every HTTP error has (`http/error.rs`).
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    code: String,
}

/// On a follower, sends `request` to the leader's `/<route>` on its Raft address (its peer
/// router serves the admin routes, authenticated like every peer request) and hands back the
/// leader's raw answer; `None` when this node is the leader and should handle it itself.
pub(crate) async fn send_to_leader<T: serde::Serialize>(
    app: &App,
    route: &str,
    request: &T,
) -> Result<Option<reqwest::Response>, KvError> {
    let Some((leader_id, leader)) = app.leader() else {
        return Err(KvError::NoLeader("no leader known; retry shortly".into()));
    };
    if leader_id == app.node_id {
        return Ok(None);
    }
    app.peers
        .post_admin(&leader.raft_addr, route)
        .json(request)
        .timeout(app.join_timeout + app.request_timeout)
        .send()
        .await
        .map(Some)
        .map_err(|e| {
            KvError::NoLeader(format!(
                "cannot reach the leader at {}: {e}",
                leader.raft_addr
            ))
        })
}

/// On a follower, relays `request` to the leader and turns its answer back into a result
/// (`true`: done by the leader); `false` when this node is the leader.
async fn relay_to_leader<T: serde::Serialize>(
    app: &App,
    route: &str,
    request: &T,
) -> Result<bool, KvError> {
    let Some(answer) = send_to_leader(app, route, request).await? else {
        return Ok(false);
    };
    if answer.status().is_success() {
        return Ok(true);
    }
    let status = answer.status();
    let body = answer
        .bytes()
        .await
        .map_err(|_| KvError::Timeout(app.request_timeout))?;
    let Ok(ErrorBody { error, code }) = serde_json::from_slice::<ErrorBody>(&body) else {
        return Err(KvError::Internal(format!(
            "the leader answered {status} without an error body"
        )));
    };
    Err(error_from_code(&code, error, app))
}

/// The error an HTTP error `code` (README, "Errors") stands for; the message is kept.
fn error_from_code(code: &str, message: String, app: &App) -> KvError {
    match code {
        "bad_request" => KvError::BadRequest(message),
        "not_found" => KvError::NoSuchMember(message),
        "conflict" => KvError::Conflict(message),
        "no_leader" => KvError::NoLeader(message),
        "timeout" => KvError::Timeout(app.request_timeout),
        "forbidden" => KvError::Forbidden(message),
        "join_failed" => KvError::JoinFailed(message),
        "busy" => KvError::Busy(message),
        _ => KvError::Internal(message),
    }
}
