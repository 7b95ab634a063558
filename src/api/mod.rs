//! Public APIs beyond raftd/hraftd's HTTP (which lives in [`crate::http`]): [`etcd`], etcd's v3
//! gRPC API on the same port.

pub mod etcd;
