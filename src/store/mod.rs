//! Storage: the durable Raft log and the state machine with its snapshot files.
pub mod error;
pub mod feed;
pub mod kv;
pub mod log;
pub mod small_file;
pub mod snapshot;
pub mod state_machine;
