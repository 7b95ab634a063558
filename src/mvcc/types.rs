//! Protocol-neutral requests and responses, mirroring etcd's `rpc.proto` fields (not its
//! protobuf types: the gRPC layer maps protos onto these). Requests and responses derive serde
//! because they travel in Raft log entries and forwarded replies.
//!
//! Wire rule for every serde enum here: variants are never reordered or removed; new ones go at
//! the end, and a change of meaning bumps the log-entry format version of whoever embeds them.

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

use crate::mvcc::revision::Revision;

/// The shape version of every serde type in this file (postcard is not self-describing). Embed
/// it in whatever format carries them (log entries, forwarded replies) and bump it when a field
/// or variant changes.
pub const TYPES_WIRE_VERSION: u32 = 1;

/// A live key as etcd's `mvccpb.KeyValue` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes_compat")]
    pub key: Bytes,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// 1 on create, +1 per put; a delete ends the key's generation.
    pub version: i64,
    #[serde(with = "serde_bytes_compat")]
    pub value: Bytes,
    /// Lease id, 0 = none.
    pub lease: i64,
}

/// etcd's `RangeRequest.SortOrder` (discriminants are the protobuf numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None = 0,
    Ascend = 1,
    Descend = 2,
}

/// etcd's `RangeRequest.SortTarget` (discriminants are the protobuf numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key = 0,
    Version = 1,
    Create = 2,
    Mod = 3,
    Value = 4,
}

/// etcd's `RangeRequest`. `range_end`: empty = just `key`; `[0]` = every key ≥ `key`; else the
/// half-open `[key, range_end)` (see [`crate::mvcc::prefix_end`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeRequest {
    #[serde(with = "serde_bytes_compat")]
    pub key: Bytes,
    #[serde(with = "serde_bytes_compat")]
    pub range_end: Bytes,
    /// ≤ 0 = no limit.
    pub limit: i64,
    /// ≤ 0 = the current revision.
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    /// Filters, 0 = off. They drop keys from `kvs` but not from `count` (etcd's behaviour).
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The header revision: the store's current revision (inside a txn: the txn's view).
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    /// More keys passed the filters than `limit` let through.
    pub more: bool,
    /// Keys in the range at the read revision, before filters and limit.
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PutRequest {
    #[serde(with = "serde_bytes_compat")]
    pub key: Bytes,
    #[serde(with = "serde_bytes_compat")]
    pub value: Bytes,
    pub lease: i64,
    pub prev_kv: bool,
    /// Keep the current value (the key must exist, `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist, `lease` must be 0).
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PutResponse {
    pub revision: i64,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    #[serde(with = "serde_bytes_compat")]
    pub key: Bytes,
    #[serde(with = "serde_bytes_compat")]
    pub range_end: Bytes,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub revision: i64,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// etcd's `Compare.CompareResult` (discriminants are the protobuf numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal = 0,
    Greater = 1,
    Less = 2,
    NotEqual = 3,
}

/// etcd's `Compare.target` together with its `target_union`. A proto whose union does not match
/// its target compares against 0 / the empty value in etcd: the mapper passes that (e.g.
/// `Version(0)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(#[serde(with = "serde_bytes_compat")] Bytes),
    Lease(i64),
}

/// etcd's `Compare`; with a `range_end` it must hold for every key in the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes_compat")]
    pub key: Bytes,
    #[serde(with = "serde_bytes_compat")]
    pub range_end: Bytes,
    pub result: CompareResult,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxnResponse {
    /// The txn's revision (+1 over the start if anything changed). A nested txn's is 0: etcd
    /// 3.4 leaves a nested header empty.
    pub revision: i64,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One change an applied write made, in apply order: what the watch hub and the lessor need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    pub revision: Revision,
    /// After a put: the new kv. After a delete: `key` and `mod_revision` only (as etcd's
    /// delete events carry).
    pub kv: KeyValue,
    /// The key's kv just before this change, if it was live.
    pub prev_kv: Option<KeyValue>,
}

/// A write's answer plus its changes (empty when it changed nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<R> {
    pub response: R,
    pub changes: Vec<Change>,
}

/// serde for `Bytes` without the `bytes/serde` feature: written as a byte string, read from a
/// byte string or a sequence of u8 (what postcard and serde_json give back).
pub(crate) mod serde_bytes_compat {
    use std::fmt;

    use bytes::Bytes;
    use serde::Deserializer;
    use serde::Serializer;
    use serde::de::SeqAccess;
    use serde::de::Visitor;

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Bytes::from(out))
            }
        }
        d.deserialize_bytes(V)
    }
}
