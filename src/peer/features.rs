//! What each peer can do, as it said when a link to it last opened (`wire::features`). The
//! leader asks before it uses something older nodes cannot read: write batching proposes
//! `Command::Batch` entries only once every other member has said it reads them.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::raft::types::NodeId;

/// Each peer's feature bits, from its last hello answer; a peer never heard from has none.
#[derive(Debug, Default)]
pub struct PeerFeatures {
    by_node: Mutex<HashMap<NodeId, u64>>,
}

impl PeerFeatures {
    /// Node `node` answered a link's hello with `features` (0 from an older version). A node
    /// restarted with another version says so when its links reopen, before any request on
    /// them.
    pub fn record(&self, node: NodeId, features: u64) {
        let mut by_node = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        by_node.insert(node, features);
    }

    /// The first of `nodes` not known to have every bit of `features`, if any.
    pub fn first_without(
        &self,
        nodes: impl IntoIterator<Item = NodeId>,
        features: u64,
    ) -> Option<NodeId> {
        let by_node = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        nodes.into_iter().find(|node| {
            by_node
                .get(node)
                .is_none_or(|&has| has & features != features)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_older_peers_lack_features() {
        let f = PeerFeatures::default();
        assert_eq!(f.first_without([], 1), None, "no peers: nothing lacks it");
        assert_eq!(f.first_without([2, 3], 1), Some(2), "never heard from");
        f.record(2, 1);
        assert_eq!(f.first_without([2, 3], 1), Some(3));
        f.record(3, 0b11);
        assert_eq!(f.first_without([2, 3], 1), None);
        f.record(2, 0);
        assert_eq!(
            f.first_without([2, 3], 1),
            Some(2),
            "restarted with an older version"
        );
    }
}
