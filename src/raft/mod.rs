//! Raft glue: everything that talks to openraft's API except storage.
pub mod batch_queue;
pub mod forward;
pub mod forward_batch;
pub mod network;
pub mod propose;
pub mod read;
pub mod snapshot_policy;
pub mod types;
