//! The state every request handler shares: the Raft handle, the state machine (for reads), this
//! node's identity, the peer client pool and the request limits. Built once in `node.rs`.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use crate::raft::forward_batch::ForwardBatcher;
use crate::raft::network::PeerClients;
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
    /// Bound on how long a write or a linearizable read waits before answering 503.
    pub request_timeout: Duration,
    pub max_value_bytes: usize,
}

pub type SharedApp = Arc<App>;

impl App {
    /// The membership this node currently knows (possibly not yet committed).
    pub fn membership(&self) -> Arc<StoredMembership> {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone()
    }

    /// The current leader's id and record, if one is known.
    pub fn leader(&self) -> Option<(NodeId, Node)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }
}
