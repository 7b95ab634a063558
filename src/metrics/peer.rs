//! Peer link metrics (etcd's `etcd_network_peer_*` counterparts): per member and lane, the
//! requests answered, bytes sent and received, failures by reason, links opened and open now, and
//! the round trip of answered requests. The peer links (`peer/link.rs`) update a [`LinkStats`]
//! of atomics per link; a collector reads them at scrape time and names each member from the
//! current membership.
//!
//! Label cardinality: `peer` is a member's name (members no longer in the membership are not
//! shown), `lane` one of four, `reason` one of five.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::async_runtime::watch::WatchReceiver;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;

use crate::raft::types::NodeId;
use crate::raft::types::Raft;

/// Why a request on a link got no usable answer (the link's error kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Unreachable = 0,
    Refused = 1,
    Rejected = 2,
    Lost = 3,
    Remote = 4,
}

const FAILURES: [(Failure, &str); 5] = [
    (Failure::Unreachable, "unreachable"),
    (Failure::Refused, "refused"),
    (Failure::Rejected, "rejected"),
    (Failure::Lost, "lost"),
    (Failure::Remote, "remote"),
];

/// The counters of one outbound link (one member, one lane).
#[derive(Debug)]
pub struct LinkStats {
    requests: AtomicU64,
    sent_bytes: AtomicU64,
    received_bytes: AtomicU64,
    failures: [AtomicU64; 5],
    opens: AtomicU64,
    open: AtomicI64,
    round_trip: Histogram,
}

impl Default for LinkStats {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            failures: Default::default(),
            opens: AtomicU64::new(0),
            open: AtomicI64::new(0),
            // 50 µs .. 1.6 s
            round_trip: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

impl LinkStats {
    /// One request answered: its frame's bytes, its answer's bytes and the time between.
    pub fn answered(&self, sent_bytes: usize, received_bytes: usize, round_trip_s: f64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.sent_bytes
            .fetch_add(sent_bytes as u64, Ordering::Relaxed);
        self.received_bytes
            .fetch_add(received_bytes as u64, Ordering::Relaxed);
        self.round_trip.observe(round_trip_s);
    }

    pub fn failed(&self, why: Failure) {
        self.failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection of this link opened (it counts as open until [`LinkStats::closed`]).
    pub fn opened(&self) {
        self.opens.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection counted by [`LinkStats::opened`] closed (called once per connection).
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every outbound link's stats, by member id and lane name.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    links: Mutex<HashMap<(NodeId, &'static str), Arc<LinkStats>>>,
}

impl LinkMetrics {
    /// The stats of the link to `to` on `lane` (kept across reconnections and address changes).
    pub fn link(&self, to: NodeId, lane: &'static str) -> Arc<LinkStats> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.entry((to, lane)).or_default().clone()
    }

    fn snapshot(&self) -> Vec<((NodeId, &'static str), Arc<LinkStats>)> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = links.iter().map(|(k, v)| (*k, v.clone())).collect();
        all.sort_by_key(|(k, _)| *k);
        all
    }
}

/// Reads every link's stats at scrape time.
pub struct LinkCollector {
    pub links: Arc<LinkMetrics>,
    pub raft: Raft,
}

impl fmt::Debug for LinkCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkCollector")
    }
}

type Labelled<'a> = Vec<([(&'static str, &'a str); 2], &'a LinkStats)>;

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    links: &Labelled<'_>,
    value: impl Fn(&LinkStats) -> u64,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, stats) in links {
        ConstCounter::new(value(stats)).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for LinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let all = self.links.snapshot();
        if all.is_empty() {
            return Ok(());
        }
        // Cloned under the watch's read lock, which is released at once.
        let membership = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let names: Vec<(String, &'static str, &LinkStats)> = all
            .iter()
            .filter_map(|((id, lane), stats)| {
                let node = membership.membership().get_node(id)?;
                Some((node.name.clone(), *lane, stats.as_ref()))
            })
            .collect();
        let links: Labelled<'_> = names
            .iter()
            .map(|(name, lane, stats)| ([("peer", name.as_str()), ("lane", *lane)], *stats))
            .collect();
        if links.is_empty() {
            return Ok(());
        }
        let e = &mut encoder;
        counters(
            e,
            "raftkv_network_peer_requests",
            "Requests answered on the peer links, by member and lane (an answer that is an \
             error counts here and in sent_failures, reason remote)",
            &links,
            |s| s.requests.load(Ordering::Relaxed),
        )?;
        counters(
            e,
            "raftkv_network_peer_sent_bytes",
            "Bytes of answered requests sent on the peer links (etcd: network_peer_sent_bytes_total)",
            &links,
            |s| s.sent_bytes.load(Ordering::Relaxed),
        )?;
        counters(
            e,
            "raftkv_network_peer_received_bytes",
            "Bytes of answers received on the peer links (etcd: network_peer_received_bytes_total)",
            &links,
            |s| s.received_bytes.load(Ordering::Relaxed),
        )?;
        counters(
            e,
            "raftkv_network_peer_link_opens",
            "Peer link connections opened (a rising count means links keep breaking)",
            &links,
            |s| s.opens.load(Ordering::Relaxed),
        )?;
        let mut family = e.encode_descriptor(
            "raftkv_network_peer_sent_failures",
            "Requests on the peer links without a usable answer, by reason: unreachable \
             (not sent), refused (the peer refused this node), rejected (refused before \
             handling), lost (no answer: outcome unknown), remote (handled, answered an error) \
             (etcd: network_peer_sent_failures_total)",
            None,
            MetricType::Counter,
        )?;
        for ([peer, lane], stats) in &links {
            for (why, reason) in FAILURES {
                let labels = [*peer, *lane, ("reason", reason)];
                let n = stats.failures[why as usize].load(Ordering::Relaxed);
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = e.encode_descriptor(
            "raftkv_network_peer_links_open",
            "Peer link connections open now, by member and lane (0 or 1)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, stats) in &links {
            ConstGauge::new(stats.open.load(Ordering::Relaxed))
                .encode(family.encode_family(labels)?)?;
        }
        let mut family = e.encode_descriptor(
            "raftkv_network_peer_round_trip_time_seconds",
            "From sending a request on a peer link to its answer, answered requests only; the \
             heartbeat lane is the network's round trip (etcd: network_peer_round_trip_time_seconds)",
            None,
            MetricType::Histogram,
        )?;
        for (labels, stats) in &links {
            stats.round_trip.encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}
