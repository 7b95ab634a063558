//! `GET /metrics`: this node's metrics in the OpenMetrics text format (prometheus-client), named
//! after etcd's counterparts (`raftkv_server_has_leader` beside `etcd_server_has_leader`, ...;
//! the README lists them all).
//!
//! Owns: the one [`Registry`] and the [`Metrics`] struct (held in `App`, built in `node.rs`),
//! the MVCC op and proposal counters. Submodules: [`http`] (request middleware and the scrape
//! handler), [`grpc`] (the etcd API's call counts), [`raft`] (gauges read from openraft at
//! scrape time, the leader-change watcher), [`peer`] (the peer links' counters), [`storage`] (WAL and snapshot instruments, owned by
//! the stores), [`process`] (RSS, open fds), [`progress`] (progress logs of long work).
//!
//! Invariants: instruments are atomics (a family's label lookup takes a short read lock, never
//! held across I/O), so the hot paths pay a few atomic operations; a scrape reads openraft's
//! metrics through its watch channel and never takes a lock that `apply` holds; every label set
//! is bounded (route templates, fixed method tables, member names, status codes).

pub mod grpc;
pub mod http;
pub mod peer;
pub mod process;
pub mod progress;
pub mod raft;
pub mod storage;

use std::fmt;
use std::path::PathBuf;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::raft::types::Command;
use crate::raft::types::Raft;
use storage::SnapshotMetrics;
use storage::WalMetrics;

/// etcd's MVCC op counters, counted where this node serves a request of either API: writes in
/// `raft::forward::write` (also forwarded ones), reads in the state machine's read calls.
#[derive(Clone, Debug, Default)]
pub struct MvccMetrics {
    pub put: Counter,
    pub delete: Counter,
    pub txn: Counter,
    pub range: Counter,
}

impl MvccMetrics {
    /// Counts one write request (a multi-key set counts one put per key).
    pub fn count_write(&self, cmd: &Command) {
        match cmd {
            Command::Set { .. } | Command::Put(_) => {
                self.put.inc();
            }
            Command::SetMany { pairs } => {
                self.put.inc_by(pairs.len() as u64);
            }
            Command::Delete { .. } | Command::DeleteRange(_) => {
                self.delete.inc();
            }
            Command::Txn(_) => {
                self.txn.inc();
            }
            Command::Compact { .. } | Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => {}
            Command::Batch(cmds) => cmds.iter().for_each(|cmd| self.count_write(cmd)),
        }
    }
}

/// What [`Metrics::new`] reads from: the Raft handle and the stores' own instruments.
pub struct Sources {
    pub raft: Raft,
    pub wal: WalMetrics,
    pub snapshots: SnapshotMetrics,
    pub mvcc: MvccMetrics,
    /// The peer links' counters (updated by `peer::link`).
    pub links: std::sync::Arc<peer::LinkMetrics>,
    pub log_dir: PathBuf,
    pub snapshot_dir: PathBuf,
}

/// This node's metrics. Updated through the public instruments; read by [`Metrics::encode`].
pub struct Metrics {
    registry: Registry,
    pub http: http::HttpMetrics,
    pub grpc: grpc::GrpcMetrics,
    pub mvcc: MvccMetrics,
    /// Proposals this leader could not see through (timeout, lost leadership, Raft stopped).
    pub proposals_failed: Counter,
    /// Log entries this leader proposed holding several client writes (`raft/propose.rs`).
    pub write_batches: Counter,
    /// Client writes proposed in those entries.
    pub batched_writes: Counter,
    /// Holds of the next batch ("Gathering" in `raft/propose.rs`) that ended with their
    /// writers back, and that ran out of time.
    pub write_holds_filled: Counter,
    pub write_holds_expired: Counter,
    /// Updated by [`raft::watch_leader_changes`].
    pub leader_changes: Counter,
}

/// Sizes of the data dir's directories, read at scrape time.
#[derive(Debug)]
struct DiskCollector {
    log_dir: PathBuf,
    snapshot_dir: PathBuf,
}

impl Collector for DiskCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let dirs = [
            (
                "raftkv_disk_wal_size_bytes",
                "Bytes of the Raft log (WAL) files on disk.",
                &self.log_dir,
            ),
            (
                "raftkv_disk_snapshot_size_bytes",
                "Bytes of the snapshot files on disk (etcd: mvcc_db_total_size_in_bytes).",
                &self.snapshot_dir,
            ),
        ];
        for (name, help, dir) in dirs {
            if let Some(bytes) = storage::dir_bytes(dir) {
                process::gauge(&mut encoder, name, help, process::to_i64(bytes))?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Instruments registered nowhere (unit tests of code that updates them).
    pub fn unregistered() -> Metrics {
        Metrics {
            registry: Registry::default(),
            http: http::HttpMetrics::default(),
            grpc: grpc::GrpcMetrics::default(),
            mvcc: MvccMetrics::default(),
            proposals_failed: Counter::default(),
            write_batches: Counter::default(),
            batched_writes: Counter::default(),
            write_holds_filled: Counter::default(),
            write_holds_expired: Counter::default(),
            leader_changes: Counter::default(),
        }
    }

    /// Registers every metric of this node.
    pub fn new(sources: Sources) -> Metrics {
        let mut m = Metrics::unregistered();
        m.mvcc = sources.mvcc;
        let r = &mut m.registry;
        r.register(
            "raftkv_http_requests",
            "HTTP requests by route template, method and status code",
            m.http.requests.clone(),
        );
        r.register(
            "raftkv_http_request_duration_seconds",
            "HTTP request latency until the response head, by route template and method",
            m.http.duration.clone(),
        );
        r.register(
            "raftkv_grpc_server_started",
            "gRPC calls started (etcd: grpc_server_started_total)",
            m.grpc.started.clone(),
        );
        r.register(
            "raftkv_grpc_server_handled",
            "gRPC calls completed, by code (etcd: grpc_server_handled_total)",
            m.grpc.handled.clone(),
        );
        let mvcc = [
            ("raftkv_mvcc_put", "Puts served by this member", &m.mvcc.put),
            (
                "raftkv_mvcc_delete",
                "Deletes served by this member",
                &m.mvcc.delete,
            ),
            ("raftkv_mvcc_txn", "Txns served by this member", &m.mvcc.txn),
            (
                "raftkv_mvcc_range",
                "Ranges (reads) served by this member",
                &m.mvcc.range,
            ),
        ];
        let server = [
            (
                "raftkv_server_proposals_failed",
                "Proposals this member made as leader that failed",
                &m.proposals_failed,
            ),
            (
                "raftkv_server_write_batches",
                "Log entries this member proposed as leader holding several client writes",
                &m.write_batches,
            ),
            (
                "raftkv_server_batched_writes",
                "Client writes this member proposed as leader in entries shared with others",
                &m.batched_writes,
            ),
            (
                "raftkv_server_write_holds_filled",
                "Holds of the next batch for the writers just answered that ended with them back",
                &m.write_holds_filled,
            ),
            (
                "raftkv_server_write_holds_expired",
                "Holds of the next batch for the writers just answered that ran out of time",
                &m.write_holds_expired,
            ),
            (
                "raftkv_server_leader_changes_seen",
                "Leader changes seen by this member",
                &m.leader_changes,
            ),
        ];
        for (name, help, counter) in mvcc.into_iter().chain(server) {
            r.register(name, help, counter.clone());
        }
        register_storage(r, &sources.wal, &sources.snapshots);
        r.register_collector(Box::new(peer::LinkCollector {
            links: sources.links,
            raft: sources.raft.clone(),
        }));
        r.register_collector(Box::new(raft::RaftCollector { raft: sources.raft }));
        r.register_collector(Box::new(DiskCollector {
            log_dir: sources.log_dir,
            snapshot_dir: sources.snapshot_dir,
        }));
        r.register_collector(Box::new(process::ProcessCollector));
        m
    }

    /// The OpenMetrics text of every metric (ends with `# EOF`). Runs the collectors, which
    /// read `/proc` and walk the data dir: call it off the async executor.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn register_storage(r: &mut Registry, wal: &WalMetrics, snapshots: &SnapshotMetrics) {
    r.register(
        "raftkv_disk_wal_fsync_duration_seconds",
        "From a log append's flush request until the fsync covering it completed (includes \
         the group-commit wait)",
        wal.fsync.clone(),
    );
    r.register(
        "raftkv_disk_wal_append_duration_seconds",
        "Time to hand a batch of log entries to the WAL (before its fsync)",
        wal.append.clone(),
    );
    r.register(
        "raftkv_disk_wal_entries_appended",
        "Log entries appended to the WAL",
        wal.entries.clone(),
    );
    r.register(
        "raftkv_disk_backend_snapshot_duration_seconds",
        "Time to build a snapshot file (etcd: disk_backend_snapshot_duration_seconds)",
        snapshots.build.clone(),
    );
    r.register(
        "raftkv_snapshot_install_duration_seconds",
        "Time to validate, store and swap in a snapshot received from the leader",
        snapshots.install.clone(),
    );
    r.register(
        "raftkv_snapshot_send_duration_seconds",
        "Time to stream a snapshot to a follower until it answered",
        snapshots.send.clone(),
    );
    let bytes = [
        (
            "raftkv_snapshot_built_bytes",
            "Bytes of snapshot files built",
            &snapshots.built_bytes,
        ),
        (
            "raftkv_snapshot_installed_bytes",
            "Bytes of snapshot files installed",
            &snapshots.installed_bytes,
        ),
        (
            "raftkv_snapshot_sent_bytes",
            "Bytes of snapshots sent to followers",
            &snapshots.sent_bytes,
        ),
        (
            "raftkv_snapshot_send_failures",
            "Snapshot sends that failed or were cancelled",
            &snapshots.send_failures,
        ),
    ];
    for (name, help, counter) in bytes {
        r.register(name, help, counter.clone());
    }
}
