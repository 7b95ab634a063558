//! Cluster membership: bootstrap a one-node cluster, join an existing one, restart without
//! `-join`, answer a leader's joining handshake. The leader's side of a change (checks, learner,
//! catch-up, promotion, removal) is in `membership.rs`. Join and remove requests reaching a
//! follower are relayed to the leader.

pub mod leader;
mod membership;

pub use membership::add_member;
pub use membership::remove_member;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::app::App;
use crate::error::KvError;
use crate::raft::types::Node;

/// Pause between attempts to reach the member given with `-join`.
const JOIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Longest pause between join attempts after failures that need an operator (unreachable
/// member, `join_failed`): the interval doubles up to this.
const JOIN_RETRY_INTERVAL_MAX: Duration = Duration::from_secs(30);

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
        (false, None) if app.identity().cluster_id().is_some() => {
            // A leader adopted us into its cluster, then we restarted before receiving its log:
            // initialising now would fork a second cluster with the same id.
            tracing::warn!(
                cluster_id = app.identity().cluster_id().unwrap_or_default(),
                "this node was being added to a cluster but has no log yet: waiting for the \
                 leader (restart with -join to ask again; delete the data dir to start anew)"
            );
        }
        (false, None) => {
            // Must be on disk before the cluster exists: every peer request carries it.
            let cluster_id = app
                .identity()
                .create_cluster_id()
                .map_err(|e| KvError::Internal(e.to_string()))?;
            let members = BTreeMap::from([(app.node_id, app.me.clone())]);
            app.raft
                .initialize(members)
                .await
                .map_err(|e| KvError::Internal(e.to_string()))?;
            tracing::info!(node = %app.me, cluster_id, "initialised a new one-node cluster");
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
    let mut attempt = 0u32;
    let mut pause = JOIN_RETRY_INTERVAL;
    loop {
        attempt += 1;
        let sent = app
            .peers
            .post_admin(addr, "join")
            .json(&request)
            .timeout(app.join_timeout + app.request_timeout)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(via = addr, node = %app.me, "joined the cluster");
                return;
            }
            Ok(resp)
                if resp.status() == reqwest::StatusCode::CONFLICT
                    || resp.status() == reqwest::StatusCode::FORBIDDEN =>
            {
                let text = resp.text().await.unwrap_or_default();
                tracing::error!(via = addr, answer = %text, "join refused; fix the flags named in the answer, then restart");
                return;
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                // No leader yet or busy: retry soon. The joiner unreachable or not catching up:
                // that needs a fix elsewhere, so back off.
                pause = if text.contains("\"join_failed\"") {
                    (pause * 2).min(JOIN_RETRY_INTERVAL_MAX)
                } else {
                    JOIN_RETRY_INTERVAL
                };
                tracing::warn!(via = addr, attempt, %status, answer = %text, retry_in = ?pause, "join not accepted yet, retrying");
            }
            Err(e) => {
                pause = (pause * 2).min(JOIN_RETRY_INTERVAL_MAX);
                let error = crate::peer::client::error_chain(&e);
                let scheme = app.peers.scheme();
                tracing::warn!(
                    via = addr,
                    attempt,
                    scheme,
                    error = %error,
                    retry_in = ?pause,
                    "cannot reach member to join, retrying (the join goes over {scheme}, like \
                     every peer link: name a member address that speaks it, e.g. its -raddr)"
                )
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// What a node answers a leader's joining handshake.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelloReply {
    pub name: String,
    pub node_id: crate::raft::types::NodeId,
    pub cluster_id: String,
}

/// Answers the joining handshake of a leader of cluster `theirs` (identity headers already
/// checked: it is meant for this node). A node of that cluster answers at once; a node that was
/// never initialised adopts the id (durably, before answering); a member of another cluster
/// refuses.
pub async fn answer_hello(app: &App, theirs: &str) -> Result<HelloReply, String> {
    if theirs.is_empty() {
        return Err("handshake without a cluster id".into());
    }
    let identity = app.identity();
    let reply = || HelloReply {
        name: identity.name.clone(),
        node_id: identity.node_id,
        cluster_id: theirs.to_string(),
    };
    if identity.cluster_id().as_deref() == Some(theirs) {
        return Ok(reply());
    }
    let initialized = app.raft.is_initialized().await.map_err(|e| e.to_string())?;
    if initialized {
        return Err(format!(
            "node {} already belongs to cluster {}; remove it there, or start it with an empty data dir",
            identity.name,
            identity.cluster_id().unwrap_or_default()
        ));
    }
    identity.adopt(theirs).map_err(|e| e.to_string())?;
    tracing::info!(
        cluster_id = theirs,
        "a leader is adding this node to its cluster"
    );
    Ok(reply())
}
