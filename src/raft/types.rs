//! Raft type configuration: the commands replicated through the log, their responses, and the
//! node record every member carries. Everything that names openraft's generic types lives here so
//! an alpha upgrade touches as few files as possible.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

/// openraft's node id. Members are named by strings (hraftd's `-id`); the name is mapped to this
/// id with [`node_id_from_name`] so the mapping is the same on every node.
pub type NodeId = u64;

/// What every member of the cluster records about every other member.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Stable node name given with `-id` or generated on first start.
    pub name: String,
    /// HTTP API address (host:port) clients and forwarded requests use.
    pub api_addr: String,
    /// Raft RPC address (host:port); equals `api_addr` unless `-raddr` was given.
    pub raft_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}(api={}, raft={})",
            self.name, self.api_addr, self.raft_addr
        )
    }
}

/// A state machine command: one log entry. Multi-key sets are one entry, so they apply atomically.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Set one key (raftd's `POST /db/<key>`).
    Set { key: String, value: Vec<u8> },
    /// Set several keys at once (hraftd's `POST /key` with a JSON object).
    SetMany { pairs: Vec<(String, Vec<u8>)> },
    /// Remove one key; removing an absent key is not an error.
    Delete { key: String },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Set { key, value } => write!(f, "set {key} ({} bytes)", value.len()),
            Command::SetMany { pairs } => write!(f, "set {} keys", pairs.len()),
            Command::Delete { key } => write!(f, "delete {key}"),
        }
    }
}

/// What applying a [`Command`] reports back to the client that proposed it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// For `Delete`: whether the key existed. For sets: whether any key was overwritten.
    pub existed: bool,
}

openraft::declare_raft_types!(
    /// The raftkv type configuration for openraft.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Node,
);

/// The Raft handle type used everywhere in the node.
pub type Raft = openraft::Raft<TypeConfig, crate::store::state_machine::StateMachineStore>;

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type SnapshotData = crate::store::snapshot::SnapshotData;

/// Maps a node name to openraft's numeric id: 64-bit FNV-1a of the UTF-8 name. Stable across
/// versions and platforms (never change it: ids are stored in the log and in snapshots).
pub fn node_id_from_name(name: &str) -> NodeId {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    name.bytes().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_stable_and_distinct() {
        // Known FNV-1a 64 test vectors: the mapping must never change.
        assert_eq!(node_id_from_name(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(node_id_from_name("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(node_id_from_name("node1"), node_id_from_name("node2"));
    }
}
