//! The state every request handler shares: the Raft handle, the state machine (for reads), this
//! node's identity, the peer client pool and the request limits. Built once in `node.rs`.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use crate::peer::auth::PeerAuth;
use crate::peer::client::PeerClients;
use crate::peer::identity::Identity;
use crate::raft::forward_batch::ForwardBatcher;
use crate::raft::types::Node;
use crate::raft::types::NodeId;
use crate::raft::types::Raft;
use crate::raft::types::StoredMembership;
use crate::store::state_machine::StateMachineStore;

pub struct App {
    pub raft: Raft,
    pub state_machine: StateMachineStore,
    pub node_id: NodeId,
    /// This node's name and advertised addresses, as recorded in the membership.
    pub me: Node,
    pub peers: PeerClients,
    /// Batches writes this node forwards to the leader.
    pub forwarder: ForwardBatcher,
    /// Proposes writes on this node while it leads (batching concurrent ones).
    pub proposer: crate::raft::propose::Proposer,
    /// Bound on how long a write or a linearizable read waits before answering 503.
    pub request_timeout: Duration,
    pub max_value_bytes: usize,
    /// Who may call the internal and membership routes.
    pub peer_auth: PeerAuth,
    /// Bound on a whole join: handshake, learner catch-up, promotion.
    pub join_timeout: Duration,
    /// Raft heartbeat interval (reachability of members is judged in heartbeats).
    pub heartbeat_interval: Duration,
    /// Serialises this leader's membership changes (joins queue behind each other instead of
    /// failing with "change in progress").
    pub membership_lock: tokio::sync::Mutex<()>,
    /// This node's data dir (its size is etcd's `dbSize`).
    pub data_dir: std::path::PathBuf,
    /// `https` when the public API is served over TLS, else `http` (etcd's client URLs).
    pub api_scheme: &'static str,
    /// Serving, stopping or draining, and the public requests in flight (`shutdown.rs`).
    pub lifecycle: crate::shutdown::Lifecycle,
    /// How often a `progress_notify` watch hears the revision when nothing changed.
    pub watch_progress_interval: Duration,
    /// The HTTP event streams and long polls open on this node (bounded).
    pub http_watches: crate::http::watch::HttpWatches,
    /// The leader's lease deadlines.
    pub lessor: crate::service::lease::Lessor,
    /// This node's metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// openraft's metrics channel, subscribed once: `raft.metrics()` clones a receiver (two
    /// shared atomic updates, two more to drop it) on every call, which the per-request paths
    /// (reads, writes, response headers) should not pay.
    pub raft_metrics: RaftMetricsRx,
}

/// A subscription to openraft's metrics (`Raft::metrics`).
pub type RaftMetricsRx = openraft::alias::WatchReceiverOf<
    crate::raft::types::TypeConfig,
    openraft::RaftMetrics<crate::raft::types::TypeConfig>,
>;

pub type SharedApp = Arc<App>;

impl App {
    /// This node's identity on peer links (name, node id, cluster id).
    pub fn identity(&self) -> &Arc<Identity> {
        self.peers.identity()
    }

    /// The membership this node currently knows (possibly not yet committed).
    pub fn membership(&self) -> Arc<StoredMembership> {
        self.raft_metrics.borrow_watched().membership_config.clone()
    }

    /// The current leader's id and record, if one is known.
    pub fn leader(&self) -> Option<(NodeId, Node)> {
        let m = self.raft_metrics.borrow_watched();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Where a request for the leader goes now: served here, sent to the leader (its id and
    /// record), or nowhere yet. The leader's own requests copy no node record.
    pub fn leader_route(&self) -> LeaderRoute {
        let m = self.raft_metrics.borrow_watched();
        match m.current_leader {
            Some(id) if id == self.node_id => LeaderRoute::Local,
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(node) => LeaderRoute::Remote(id, node.clone()),
                None => LeaderRoute::Unknown,
            },
            None => LeaderRoute::Unknown,
        }
    }
}

/// See [`App::leader_route`].
#[derive(Debug)]
pub enum LeaderRoute {
    /// This node leads.
    Local,
    /// Another node leads: its id and record.
    Remote(NodeId, Node),
    /// No leader is known (an election, or a leader outside the membership this node knows).
    Unknown,
}
