//! raftkv: a replicated key/value database on Raft (openraft), a successor of raftd and hraftd.
//!
//! Modules in data-path order:
//! - [`cli`] → [`config`]: flags (Go-style `-join` too) become a validated `Config`.
//! - [`node`]: wiring — open the stores, build Raft, bind listeners, bootstrap/join, shut down.
//! - [`http`]: the public API (raftd's `/db`, hraftd's `/key`, `/join`, `/remove`, `/status`) and
//!   the one place errors become status codes.
//! - [`api`]: etcd's v3 gRPC API on the same port ([`api::etcd`]), dispatched by content type.
//! - [`service`]: the protocol-neutral layer both APIs call (membership and status as data,
//!   membership changes from any node).
//! - [`raft`]: type config, outbound network, inbound RPC, write forwarding, read levels.
//! - [`cluster`]: bootstrap, join (learner → voter), remove.
//! - [`store`]: the durable Raft log (raft-log), the state machine and its snapshot files.
//! - [`peer`], [`serve`], [`tls`]: node-to-node transport and authentication, the accept loop,
//!   and the TLS material both are built from.
//! - [`metrics`]: `GET /metrics` (Prometheus/OpenMetrics text) and the progress logs of long work.
//! - [`limits`]: every size limit, and the check every command passes before it is proposed.
//! - [`backup`]: backup files (`GET /snapshot`, `Maintenance.Snapshot`) and `raftkv restore`.
//! - [`compaction`]: the leader's automatic compaction (etcd's flags).
//! - [`shutdown`]: graceful shutdown (leadership hand-off, drain, log flush) and the lifecycle
//!   phase health checks read.
//! - [`mvcc`]: a pure multi-version store with etcd v3's revisions, ranges, txns and compaction.
//!
//! Dependencies run one way: http / api → service → raft/cluster → store.

pub mod api;
pub mod app;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod compaction;
pub mod config;
pub mod error;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod peer;
pub mod raft;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod tls;
