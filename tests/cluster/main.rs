//! Cluster integration tests: each story starts real `raftkv` processes on loopback ports (see
//! `harness`) and drives them over HTTP like a user following the raftd/hraftd READMEs would.
//! One file per story; every story is a linear sequence of announced phases, waits on
//! conditions with deadlines, and owns its ports and temp dirs, so stories run in parallel.
//!
//! Useful knobs: `RAFTKV_TEST_LOGS=1` prints every node's log tail even on success;
//! `RAFTKV_KEEP_TMP=1` keeps a failed test's data dirs and logs.

mod harness;

mod allocator;
mod backup;
mod bad_input;
mod batching;
mod crash_safety;
mod failover;
mod forwarding;
mod hraftd;
mod limits;
mod membership;
mod metrics;
mod operate;
mod page;
mod quorum;
mod raftd;
mod restart;
mod safety;
mod snapshot;
mod tls;
mod tls_shared_port;
mod tls_support;
mod versions;
mod watch;
