//! The protocol-neutral layer both public APIs call (raftd/hraftd HTTP in `http/`, etcd's gRPC
//! in `api/etcd/`): what a request means, written once; each API only translates its wire format
//! and maps [`crate::error::KvError`] to its own status codes.
//!
//! - [`cluster`]: the membership as data, this node's status as data, and membership changes
//!   that can be asked of any node (a follower relays them to the leader).
//! - [`status`]: the whole cluster as this node sees it (every member's `/status`, merged) for
//!   the cluster page.
//! - [`lock`], [`election`]: etcd's server-side locks and elections (`v3lock`, `v3election`)
//!   on the write path, the read barrier and the watch feed.

pub mod cluster;
pub mod election;
pub mod lease;
pub mod lock;
pub mod status;
pub mod watch;
