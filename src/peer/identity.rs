//! Who is talking to whom: the cluster id (created when a cluster is initialised, adopted by a
//! joiner when the leader first contacts it, kept in DATA_DIR/`cluster-id`) and the identity
//! headers every node-to-node request carries (cluster id, sender's node id, the node id it is
//! meant for). A receiver refuses a request meant for another node or another cluster, including
//! its own requests coming back to it; the sender then counts that peer as unreachable.

use std::path::Path;
use std::path::PathBuf;
use std::sync::RwLock;

use axum::http::HeaderMap;

use crate::raft::types::NodeId;
use crate::store::error::StoreError;
use crate::store::small_file;

/// The cluster id every peer request carries.
pub const HEADER_CLUSTER: &str = "raftkv-cluster-id";
/// The sending node's id.
pub const HEADER_FROM: &str = "raftkv-from";
/// The node id the request is meant for.
pub const HEADER_TO: &str = "raftkv-to";

const CLUSTER_ID_FILE: &str = "cluster-id";

/// This node's identity on the peer links.
pub struct Identity {
    pub node_id: NodeId,
    pub name: String,
    data_dir: PathBuf,
    cluster_id: RwLock<Option<String>>,
}

/// Why an incoming peer request was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("request carries no valid {0} header: not from a raftkv peer")]
    MissingHeader(&'static str),
    #[error("request meant for node {to} reached node {name} ({me}): wrong address for that node")]
    WrongNode {
        to: NodeId,
        me: NodeId,
        name: String,
    },
    #[error(
        "node {name} ({me}) received its own request: an address of another member reaches this node"
    )]
    FromMyself { me: NodeId, name: String },
    #[error("request from cluster {theirs} reached node {name} of cluster {mine}")]
    WrongCluster {
        theirs: String,
        mine: String,
        name: String,
    },
    #[error("node {name} belongs to no cluster yet; only the joining handshake is accepted")]
    NoCluster { name: String },
}

impl Identity {
    /// Loads the cluster id kept in `data_dir`, if any.
    pub fn open(data_dir: &Path, node_id: NodeId, name: String) -> Result<Identity, StoreError> {
        let cluster_id = small_file::read(data_dir, CLUSTER_ID_FILE)?.filter(|s| !s.is_empty());
        Ok(Identity {
            node_id,
            name,
            data_dir: data_dir.to_path_buf(),
            cluster_id: RwLock::new(cluster_id),
        })
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Creates a fresh cluster id and keeps it; must be on disk before the cluster is initialised.
    pub fn create_cluster_id(&self) -> Result<String, StoreError> {
        let id = small_file::random_hex(2);
        self.adopt(&id)?;
        Ok(id)
    }

    /// Keeps `id` as this node's cluster id (durably, before returning).
    pub fn adopt(&self, id: &str) -> Result<(), StoreError> {
        let mut current = self.cluster_id.write().unwrap_or_else(|p| p.into_inner());
        if current.as_deref() == Some(id) {
            return Ok(());
        }
        small_file::write(&self.data_dir, CLUSTER_ID_FILE, id)?;
        *current = Some(id.to_string());
        Ok(())
    }

    /// Checks the identity headers of an incoming peer request. `handshake` is the joining
    /// handshake, accepted by a node without a cluster id.
    pub fn check(&self, headers: &HeaderMap, handshake: bool) -> Result<(), Refusal> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(Refusal::MissingHeader(name))
        };
        let number = |name: &'static str| {
            header(name)?
                .parse::<NodeId>()
                .map_err(|_| Refusal::MissingHeader(name))
        };
        let to = number(HEADER_TO)?;
        let from = number(HEADER_FROM)?;
        let theirs = header(HEADER_CLUSTER)?;
        self.check_ids(to, from, theirs, handshake)
    }

    /// The same check on the values themselves (a peer link's hello carries them once).
    pub fn check_ids(
        &self,
        to: NodeId,
        from: NodeId,
        theirs: &str,
        handshake: bool,
    ) -> Result<(), Refusal> {
        if to != self.node_id {
            return Err(Refusal::WrongNode {
                to,
                me: self.node_id,
                name: self.name.clone(),
            });
        }
        if from == self.node_id {
            return Err(Refusal::FromMyself {
                me: self.node_id,
                name: self.name.clone(),
            });
        }
        match self.cluster_id() {
            Some(mine) if mine == theirs => Ok(()),
            // A node that was never initialised may be (re)claimed by a joining handshake; the
            // handshake handler decides whether it adopts the id.
            _ if handshake => Ok(()),
            Some(mine) => Err(Refusal::WrongCluster {
                theirs: theirs.to_string(),
                mine,
                name: self.name.clone(),
            }),
            None => Err(Refusal::NoCluster {
                name: self.name.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cluster: &str, from: NodeId, to: NodeId) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_CLUSTER, cluster.parse().unwrap());
        h.insert(HEADER_FROM, from.to_string().parse().unwrap());
        h.insert(HEADER_TO, to.to_string().parse().unwrap());
        h
    }

    #[test]
    fn refuses_other_nodes_clusters_and_itself() {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::open(dir.path(), 7, "n7".into()).unwrap();
        assert_eq!(
            me.check(&headers("c", 1, 7), false),
            Err(Refusal::NoCluster { name: "n7".into() })
        );
        assert!(me.check(&headers("c", 1, 7), true).is_ok());
        me.adopt("c").unwrap();
        assert!(me.check(&headers("c", 1, 7), false).is_ok());
        assert!(matches!(
            me.check(&headers("c", 1, 8), false),
            Err(Refusal::WrongNode { to: 8, .. })
        ));
        assert!(matches!(
            me.check(&headers("c", 7, 7), false),
            Err(Refusal::FromMyself { .. })
        ));
        assert!(matches!(
            me.check(&headers("other", 1, 7), false),
            Err(Refusal::WrongCluster { .. })
        ));
        assert!(matches!(
            me.check(&HeaderMap::new(), false),
            Err(Refusal::MissingHeader(_))
        ));
        // Kept across a restart.
        let again = Identity::open(dir.path(), 7, "n7".into()).unwrap();
        assert_eq!(again.cluster_id().as_deref(), Some("c"));
    }
}
