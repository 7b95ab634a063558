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
/// Values are serialised as byte strings (see [`value_bytes`]); never reorder the variants.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Set one key (raftd's `POST /db/<key>`).
    Set {
        key: String,
        #[serde(with = "value_bytes")]
        value: Vec<u8>,
    },
    /// Set several keys at once (hraftd's `POST /key` with a JSON object).
    SetMany {
        #[serde(with = "value_bytes::pairs")]
        pairs: Vec<(String, Vec<u8>)>,
    },
    /// Remove one key; removing an absent key is not an error.
    Delete { key: String },
    // etcd v3 operations, the multi-version store's own requests (types version
    // `mvcc::TYPES_WIRE_VERSION`). New variants go last.
    /// etcd's Put.
    Put(crate::mvcc::PutRequest),
    /// etcd's DeleteRange.
    DeleteRange(crate::mvcc::DeleteRangeRequest),
    /// etcd's Txn (also the HTTP API's compare-and-swap).
    Txn(crate::mvcc::TxnRequest),
    /// etcd's Compact: drop history below `revision`.
    Compact { revision: i64 },
    /// etcd's LeaseGrant, with the id chosen by the node that proposed it.
    LeaseGrant { id: i64, ttl: i64 },
    /// etcd's LeaseRevoke (also how the leader expires a lease).
    LeaseRevoke { id: i64 },
    /// Concurrent clients' writes in one log entry (the leader's write batching,
    /// `raft/propose.rs`). Each applies as if it were its own entry, in order, at its own
    /// revision, and gets its own answer ([`Outcome::Batch`]): etcd's lock and election recipes
    /// order waiters by create revision, so two writes must never share one. Only
    /// [`Command::batchable`] commands, never a batch in a batch (`limits::check_command`).
    /// Nodes of a version before this variant cannot decode it: the leader proposes batches
    /// only while every member has said it reads them (`peer::features`).
    Batch(Vec<Command>),
}

impl Command {
    /// Whether the leader may put this command in a [`Command::Batch`]: the client writes.
    /// Compactions and lease changes are rare and have effects beyond the store's revision
    /// (the compactor, the lessor), so they stay entries of their own.
    pub fn batchable(&self) -> bool {
        match self {
            Command::Set { .. }
            | Command::SetMany { .. }
            | Command::Delete { .. }
            | Command::Put(_)
            | Command::DeleteRange(_)
            | Command::Txn(_) => true,
            Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::Batch(_) => false,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Set { key, value } => write!(f, "set {key} ({} bytes)", value.len()),
            Command::SetMany { pairs } => write!(f, "set {} keys", pairs.len()),
            Command::Delete { key } => write!(f, "delete {key}"),
            Command::Put(p) => write!(f, "put {:?} ({} bytes)", p.key, p.value.len()),
            Command::DeleteRange(d) => write!(f, "delete range {:?}..{:?}", d.key, d.range_end),
            Command::Txn(t) => write!(
                f,
                "txn ({} compares, {} / {} ops)",
                t.compare.len(),
                t.success.len(),
                t.failure.len()
            ),
            Command::Compact { revision } => write!(f, "compact at {revision}"),
            Command::LeaseGrant { id, ttl } => write!(f, "grant lease {id:x} ttl {ttl}s"),
            Command::LeaseRevoke { id } => write!(f, "revoke lease {id:x}"),
            Command::Batch(cmds) => write!(f, "batch of {} writes", cmds.len()),
        }
    }
}

/// Serde of values as byte strings instead of sequences of `u8`. postcard encodes both the same
/// way (varint length, then the bytes), so the log and the wire format do not change (tested
/// below), but a value is copied whole instead of with one serde call per byte — in a debug
/// build that was ~50 ms per 1 MiB value on each of the several encodes and decodes it passes.
mod value_bytes {
    use std::fmt;

    use serde::Deserialize;
    use serde::Deserializer;
    use serde::Serialize;
    use serde::Serializer;
    use serde::de::SeqAccess;
    use serde::de::Visitor;

    pub fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        /// Formats without byte strings send a sequence of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 << 10));
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }

    /// One value, for [`pairs`].
    struct Value(Vec<u8>);

    impl<'de> Deserialize<'de> for Value {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize(d).map(Value)
        }
    }

    struct ValueRef<'a>(&'a [u8]);

    impl Serialize for ValueRef<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize(self.0, s)
        }
    }

    /// The same for the `(key, value)` pairs of a multi-key set.
    pub mod pairs {
        use super::*;

        #[allow(clippy::ptr_arg)] // serde's `with` passes the field as it is declared
        pub fn serialize<S: Serializer>(
            pairs: &Vec<(String, Vec<u8>)>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.collect_seq(pairs.iter().map(|(k, v)| (k, ValueRef(v))))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<(String, Vec<u8>)>, D::Error> {
            let pairs = Vec::<(String, Value)>::deserialize(d)?;
            Ok(pairs.into_iter().map(|(k, v)| (k, v.0)).collect())
        }
    }
}

/// What applying a [`Command`] reports back to the client that proposed it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// For `Delete`: whether the key existed. For sets: whether any key was overwritten.
    pub existed: bool,
    /// The store's revision after this entry (etcd's header revision).
    pub revision: i64,
    /// The etcd operations' own answer; `None` for the seed commands and for blank and
    /// membership entries.
    pub outcome: Option<Outcome>,
}

/// What an etcd operation answered. Never reorder the variants.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Put(crate::mvcc::PutResponse),
    DeleteRange(crate::mvcc::DeleteRangeResponse),
    Txn(crate::mvcc::TxnResponse),
    Compact,
    /// The store refused it (the same on every replica; nothing changed).
    Refused(crate::mvcc::MvccError),
    /// A lease was granted with this TTL (seconds, after the minimum was applied).
    LeaseGranted {
        ttl: i64,
    },
    LeaseRevoked,
    /// A [`Command::Batch`]'s answers, one per command, in order.
    Batch(Vec<Response>),
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

    /// `Command` as it was serialised before values became byte strings.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum CommandAsSeq {
        Set { key: String, value: Vec<u8> },
        SetMany { pairs: Vec<(String, Vec<u8>)> },
        Delete { key: String },
    }

    #[test]
    fn values_as_byte_strings_keep_the_wire_and_log_format() {
        let value: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        let cases = [
            (
                Command::Set {
                    key: "k".into(),
                    value: value.clone(),
                },
                CommandAsSeq::Set {
                    key: "k".into(),
                    value: value.clone(),
                },
            ),
            (
                Command::SetMany {
                    pairs: vec![("a".into(), vec![]), ("b".into(), value.clone())],
                },
                CommandAsSeq::SetMany {
                    pairs: vec![("a".into(), vec![]), ("b".into(), value.clone())],
                },
            ),
            (
                Command::Delete { key: "d".into() },
                CommandAsSeq::Delete { key: "d".into() },
            ),
        ];
        for (new, old) in cases {
            let new_bytes = postcard::to_stdvec(&new).unwrap();
            assert_eq!(new_bytes, postcard::to_stdvec(&old).unwrap(), "{new}");
            assert_eq!(
                postcard::from_bytes::<CommandAsSeq>(&new_bytes).unwrap(),
                old
            );
            assert_eq!(postcard::from_bytes::<Command>(&new_bytes).unwrap(), new);
            // Formats without byte strings still round-trip.
            let json = serde_json::to_string(&new).unwrap();
            assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), new);
        }
    }

    #[test]
    fn node_id_is_stable_and_distinct() {
        // Known FNV-1a 64 test vectors: the mapping must never change.
        assert_eq!(node_id_from_name(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(node_id_from_name("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(node_id_from_name("node1"), node_id_from_name("node2"));
    }
}
