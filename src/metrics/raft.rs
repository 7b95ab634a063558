//! Raft metrics, read from openraft's `raft.metrics()` at scrape time (a collector, so nothing
//! is updated on the Raft paths): leader known / is leader, term, last log / committed / applied
//! / snapshot index, the leader's per-peer matched index and lag; plus the watcher task that
//! counts leader changes (the one figure a scrape cannot compute from a single reading).
//!
//! Owns: the translation of `RaftMetrics` to gauges and the leader-change counter's updates.
//! Does not own: openraft's metrics (read only, through the watch channel, cloned and released
//! at once: the scrape never holds anything the Raft core or `apply` waits for).
//!
//! Label cardinality: `peer` is a member's name, so the per-peer families have at most one
//! series per member of the cluster.

use std::fmt;

use openraft::async_runtime::watch::WatchReceiver;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::metrics::process::gauge;
use crate::metrics::process::to_i64;
use crate::raft::types::NodeId;
use crate::raft::types::Raft;

/// Reads the Raft gauges at each scrape.
pub struct RaftCollector {
    pub raft: Raft,
}

impl fmt::Debug for RaftCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RaftCollector")
    }
}

/// Counts changes of the known leader (to a new, known leader: etcd's
/// `leader_changes_seen_total`) until the Raft core stops.
///
/// Follows `server_metrics()`, which openraft publishes only when the server state changes,
/// not `metrics()`, which it sends after every flush: waiting on the latter woke this task
/// once per batch of writes.
pub async fn watch_leader_changes(raft: Raft, changes: Counter) {
    let mut server = raft.server_metrics();
    let mut last: Option<NodeId> = None;
    loop {
        let leader = server.borrow_watched().current_leader;
        if leader.is_some() && leader != last {
            changes.inc();
            let term = raft.metrics().borrow_watched().current_term;
            tracing::info!(leader = ?leader, term, "leader changed");
            last = leader;
        }
        if server.changed().await.is_err() {
            return;
        }
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric)
}

/// One gauge family labelled by `peer`.
fn per_peer(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(String, i64)],
) -> fmt::Result {
    // No peers (not the leader): no family at all, rather than a descriptor without samples.
    if values.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (peer, value) in values {
        let labels = [("peer", peer.as_str())];
        ConstGauge::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for RaftCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // Cloned under the watch's read lock, which is released at once.
        let m = self.raft.metrics().borrow_watched().clone();
        let e = &mut encoder;
        let has_leader = i64::from(m.current_leader.is_some());
        let is_leader = i64::from(m.current_leader == Some(m.id));
        gauge(
            e,
            "raftkv_server_has_leader",
            "Whether a leader is known (1) or not (0).",
            has_leader,
        )?;
        gauge(
            e,
            "raftkv_server_is_leader",
            "Whether this member is the leader (1) or not (0).",
            is_leader,
        )?;
        gauge(
            e,
            "raftkv_raft_term",
            "The current Raft term.",
            to_i64(m.current_term),
        )?;
        let index = |l: Option<u64>| to_i64(l.unwrap_or(0));
        let last = m.last_log_index.unwrap_or(0);
        let committed = m.local_committed.map(|l| l.index);
        let applied = m.last_applied.map(|l| l.index);
        gauge(
            e,
            "raftkv_raft_last_log_index",
            "Index of the last entry in this member's log.",
            to_i64(last),
        )?;
        gauge(
            e,
            "raftkv_raft_snapshot_index",
            "Last index covered by this member's newest snapshot.",
            index(m.snapshot.map(|l| l.index)),
        )?;
        // etcd exposes these two as gauges named `_total`; here they are counters (monotonic
        // while the process runs).
        counter(
            e,
            "raftkv_server_proposals_committed",
            "Index of the last entry known committed (etcd: proposals_committed_total).",
            committed.unwrap_or(0),
        )?;
        counter(
            e,
            "raftkv_server_proposals_applied",
            "Index of the last entry applied to the state machine.",
            applied.unwrap_or(0),
        )?;
        let (mut matched, mut lag) = (Vec::new(), Vec::new());
        if let Some(replication) = &m.replication {
            let membership = m.membership_config.membership();
            for (id, log_id) in replication.iter().filter(|(id, _)| **id != m.id) {
                let name = membership
                    .get_node(id)
                    .map_or_else(|| id.to_string(), |n| n.name.clone());
                let at = log_id.map(|l| l.index);
                matched.push((name.clone(), index(at)));
                let behind = at.map_or(last, |a| last.saturating_sub(a));
                lag.push((name, to_i64(behind)));
            }
        }
        per_peer(
            e,
            "raftkv_raft_replication_matched_index",
            "On the leader: the last index known replicated to each peer.",
            &matched,
        )?;
        per_peer(
            e,
            "raftkv_raft_replication_lag_entries",
            "On the leader: how many entries each peer's log is behind the leader's.",
            &lag,
        )
    }
}
