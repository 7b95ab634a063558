//! Cluster membership: bootstrap a one-node cluster, join an existing one (learner → catch up →
//! voter), restart without `-join`, remove a member. Join and remove requests reaching a
//! follower are forwarded to the leader.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;
use serde::Deserialize;
use serde::Serialize;

use crate::app::App;
use crate::error::KvError;
use crate::raft::types::Node;
use crate::raft::types::TypeConfig;
use crate::raft::types::node_id_from_name;

/// How long a join may take: the learner must receive the log or a snapshot first.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between attempts to reach the member given with `-join`.
const JOIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// `POST /join` body: hraftd's `{"addr","id"}`, raftd's `{"name","connectionString"}`, or ours
/// (hraftd's plus `api_addr`, sent by `raftkv -join`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct JoinRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub addr: Option<String>,
    #[serde(default)]
    pub api_addr: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "connectionString")]
    pub connection_string: Option<String>,
}

impl JoinRequest {
    /// The member record this request asks to add.
    pub fn to_node(&self) -> Result<Node, KvError> {
        let name = self
            .id
            .clone()
            .or_else(|| self.name.clone())
            .filter(|n| !n.is_empty());
        let raft_addr = self.addr.clone().or_else(|| self.connection_string.clone());
        let (Some(name), Some(raft_addr)) = (name, raft_addr) else {
            return Err(KvError::BadRequest(
                "join needs {\"id\":NAME,\"addr\":HOST:PORT} or {\"name\":NAME,\"connectionString\":URL}".into(),
            ));
        };
        let norm = |a: &str| {
            crate::config::normalize_peer_addr(a)
                .map_err(|e| KvError::BadRequest(format!("join address: {e}")))
        };
        let raft_addr = norm(&raft_addr)?;
        // hraftd's join carries only the Raft address; raftkv serves its whole API there too.
        let api_addr = match &self.api_addr {
            Some(a) => norm(a)?,
            None => raft_addr.clone(),
        };
        Ok(Node {
            name,
            api_addr,
            raft_addr,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub id: String,
}

/// On startup: initialise a one-node cluster, join one, or just come back from disk.
pub async fn bootstrap(app: &App, join: Option<&str>) -> Result<(), KvError> {
    let initialized = app
        .raft
        .is_initialized()
        .await
        .map_err(|e| KvError::Internal(e.to_string()))?;
    match (initialized, join) {
        (true, Some(addr)) => {
            tracing::info!(
                join = addr,
                "data dir holds cluster state: -join ignored, rejoining from disk"
            );
        }
        (true, None) => tracing::info!("restarted from the data dir"),
        (false, None) => {
            let members = BTreeMap::from([(app.node_id, app.me.clone())]);
            app.raft
                .initialize(members)
                .await
                .map_err(|e| KvError::Internal(e.to_string()))?;
            tracing::info!(node = %app.me, "initialised a new one-node cluster");
        }
        (false, Some(addr)) => join_cluster(app, addr).await,
    }
    Ok(())
}

/// Asks the member at `addr` to add us, retrying until it accepts.
async fn join_cluster(app: &App, addr: &str) {
    let request = JoinRequest {
        id: Some(app.me.name.clone()),
        addr: Some(app.me.raft_addr.clone()),
        api_addr: Some(app.me.api_addr.clone()),
        ..JoinRequest::default()
    };
    let client = app.peers.get(addr, false);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let sent = client
            .post(format!("http://{addr}/join"))
            .json(&request)
            .timeout(JOIN_TIMEOUT)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(via = addr, node = %app.me, "joined the cluster");
                return;
            }
            Ok(resp) if resp.status() == reqwest::StatusCode::CONFLICT => {
                let text = resp.text().await.unwrap_or_default();
                tracing::error!(via = addr, answer = %text, "join refused; fix -id or the data dir");
                return;
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                tracing::warn!(via = addr, attempt, %status, answer = %text, "join not accepted yet, retrying");
            }
            Err(e) => {
                tracing::warn!(via = addr, attempt, error = %e, "cannot reach member to join, retrying")
            }
        }
        tokio::time::sleep(JOIN_RETRY_INTERVAL).await;
    }
}

/// Adds `node` as a voter (on the leader): learner first, caught up, then promoted. Idempotent.
pub async fn add_member(app: &App, node: Node) -> Result<(), KvError> {
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
    } else {
        tracing::info!(node = %node, "join: adding learner");
        with_timeout(JOIN_TIMEOUT, app.raft.add_learner(id, node.clone(), true)).await?;
    }
    tracing::info!(node = %node, "join: promoting to voter");
    with_timeout(
        JOIN_TIMEOUT,
        app.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false),
    )
    .await?;
    tracing::info!(node = %node, "join: member is a voter");
    Ok(())
}

/// Removes the member named `name` (on the leader).
pub async fn remove_member(app: &App, name: &str) -> Result<(), KvError> {
    let id = node_id_from_name(name);
    let membership = app.membership();
    if membership.get_node(&id).is_none() {
        return Err(KvError::NoSuchMember(name.to_string()));
    }
    let change = if membership.voter_ids().any(|v| v == id) {
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

/// Runs a membership change with a deadline; "not the leader" becomes `NoLeader` (not applied).
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
        Ok(Err(e)) => Err(KvError::Internal(e.to_string())),
        Err(_) => Err(KvError::Timeout(timeout)),
    }
}
