//! The whole cluster as one node sees it, for the cluster page (`GET /status/cluster`): this
//! node's membership, each member's own `GET /status` (asked concurrently on its public
//! address, each bounded by [`MEMBER_STATUS_TIMEOUT`] and [`MEMBER_STATUS_BYTES_MAX`]), and
//! the merge of those answers into one view ([`merge`], pure).
//!
//! What it owns: asking the members and merging their answers. What it does not: any Raft
//! state (read through `service::cluster::status`), any wire format beyond the fields of
//! `/status` it reads.
//!
//! Invariants: a member that does not answer in time, answers an error, or answers too much is
//! reported unreachable with the reason, and never delays the view by more than the timeout;
//! this node's own entry comes from its metrics, never from the network; the leader of the view
//! is a reachable member that says it leads, in the highest term among those that do.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use openraft::async_runtime::watch::WatchReceiver;
use serde::Deserialize;
use serde::Serialize;

use crate::app::App;
use crate::error::KvError;
use crate::raft::types::NodeId;
use crate::service::cluster::Member;
use crate::service::cluster::NodeStatus;

/// Bound on one member's `GET /status`, connection included.
pub const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest `/status` answer read from a member (its members list makes it grow with the cluster).
pub const MEMBER_STATUS_BYTES_MAX: usize = 256 * 1024;
/// Views built at once by this process: each asks every member, so callers beyond this get
/// `busy` instead of multiplying the cluster's load.
pub const VIEWS_IN_FLIGHT_MAX: usize = 8;

static VIEWS_IN_FLIGHT: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(VIEWS_IN_FLIGHT_MAX);

/// What a member says about itself (the fields of its `GET /status` the view uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub role: String,
    pub term: u64,
    /// The leader it knows, by name.
    pub leader: Option<String>,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// The store's revision (one per applied write): the page's writes per second.
    pub revision: Option<i64>,
}

impl Report {
    /// This node's report, from its own metrics.
    pub fn from_local(s: &NodeStatus, revision: i64) -> Report {
        Report {
            role: s.role.as_str().to_string(),
            term: s.term,
            leader: s
                .leader
                .as_ref()
                .and_then(|(_, node)| node.as_ref().map(|n| n.name.clone())),
            last_log_index: s.last_log_index,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            revision: Some(revision),
        }
    }

    /// A member's report, from the body of its `GET /status`.
    pub fn from_status_json(body: &[u8]) -> Result<Report, FetchError> {
        #[derive(Deserialize)]
        struct LeaderWire {
            id: String,
        }
        #[derive(Deserialize)]
        struct StatusWire {
            role: String,
            term: u64,
            leader: Option<LeaderWire>,
            last_log_index: Option<u64>,
            commit_index: Option<u64>,
            applied_index: Option<u64>,
            #[serde(default)]
            revision: Option<i64>,
        }
        let w: StatusWire =
            serde_json::from_slice(body).map_err(|e| FetchError::BadBody(e.to_string()))?;
        Ok(Report {
            role: w.role,
            term: w.term,
            leader: w.leader.map(|l| l.id),
            last_log_index: w.last_log_index,
            commit_index: w.commit_index,
            applied_index: w.applied_index,
            revision: w.revision,
        })
    }
}

/// Why a member's status could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("unreadable answer: {0}")]
    BadBody(String),
}

/// One member's answer as gathered: its report or why there is none, and how long asking took.
#[derive(Debug, Clone)]
pub struct Answer {
    pub id: NodeId,
    pub report: Result<Report, FetchError>,
    pub rtt: Option<Duration>,
}

/// One member in the merged view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// The member's name.
    pub id: String,
    pub node_id: NodeId,
    pub api_addr: String,
    pub raft_addr: String,
    pub voter: bool,
    /// This is the node that built the view.
    #[serde(rename = "self")]
    pub is_self: bool,
    pub reachable: bool,
    /// Why it is unreachable.
    pub error: Option<String>,
    /// Reachable, but behind the cluster: an older term, or another (or no) leader in mind.
    pub stale: bool,
    /// What it says about itself (absent when unreachable).
    pub status: Option<Report>,
    /// Entries of the leader's log this member does not hold yet (0 for the leader).
    pub lag: Option<u64>,
    /// Where `lag` comes from: `leader` (it is the leader), `replication` (the leader's own
    /// replication state: this node leads) or `reported` (the leader's last log index minus
    /// the member's, as both reported).
    pub lag_source: Option<&'static str>,
    pub rtt_ms: Option<u64>,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// This node's name.
    pub node: String,
    /// The reachable member that says it leads, in the highest term among those that do (a
    /// deposed leader still saying so in an older term is not it).
    pub leader: Option<String>,
    /// The highest term any reachable member reports.
    pub term: u64,
    /// The highest store revision any reachable member reports.
    pub revision: Option<i64>,
    pub members: Vec<MemberView>,
    pub member_timeout_ms: u64,
    /// When this node built the view (Unix ms, its clock): the page divides by these, so its
    /// rates hold even when the browser delays its timers.
    pub at_unix_ms: u64,
}

/// Merges the members' answers into one view. `replication` is the leader's matched log index
/// per member when this node is the leader (openraft's replication metrics), else `None`.
pub fn merge(
    me: NodeId,
    members: &[Member],
    answers: &[Answer],
    replication: Option<&BTreeMap<NodeId, u64>>,
) -> ClusterView {
    let by_id: BTreeMap<NodeId, &Answer> = answers.iter().map(|a| (a.id, a)).collect();
    let reports: Vec<(&Member, &Report)> = members
        .iter()
        .filter_map(|m| match by_id.get(&m.id).map(|a| &a.report) {
            Some(Ok(r)) => Some((m, r)),
            _ => None,
        })
        .collect();
    let term = reports.iter().map(|(_, r)| r.term).max().unwrap_or(0);
    let revision = reports.iter().filter_map(|(_, r)| r.revision).max();
    let leader = reports
        .iter()
        .filter(|(_, r)| r.role == "leader")
        .max_by_key(|(_, r)| r.term)
        .map(|(m, r)| (m.node.name.clone(), r));
    let leader_last_log = leader.as_ref().and_then(|(_, r)| r.last_log_index);
    let leader_name = leader.as_ref().map(|(name, _)| name.clone());
    let mut member_views: Vec<MemberView> = members
        .iter()
        .map(|m| {
            let answer = by_id.get(&m.id);
            let report = answer.and_then(|a| a.report.as_ref().ok());
            let error = match answer.map(|a| &a.report) {
                Some(Err(e)) => Some(e.to_string()),
                Some(Ok(_)) => None,
                None => Some("not asked".to_string()),
            };
            let is_leader = leader_name.as_deref() == Some(m.node.name.as_str());
            let (lag, lag_source) = if is_leader {
                (Some(0), Some("leader"))
            } else if let Some(matched) = replication.and_then(|r| r.get(&m.id)) {
                (
                    leader_last_log.map(|l| l.saturating_sub(*matched)),
                    Some("replication"),
                )
            } else {
                let lag = leader_last_log
                    .zip(report.and_then(|r| r.last_log_index))
                    .map(|(l, mine)| l.saturating_sub(mine));
                (lag, lag.map(|_| "reported"))
            };
            let stale = report
                .is_some_and(|r| r.term < term || r.leader.as_deref() != leader_name.as_deref());
            MemberView {
                id: m.node.name.clone(),
                node_id: m.id,
                api_addr: m.node.api_addr.clone(),
                raft_addr: m.node.raft_addr.clone(),
                voter: m.voter,
                is_self: m.id == me,
                reachable: report.is_some(),
                error,
                stale,
                status: report.cloned(),
                lag,
                lag_source,
                rtt_ms: answer
                    .and_then(|a| a.rtt)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            }
        })
        .collect();
    // By name: the page lists members in a stable order (node ids are hashes of the names).
    member_views.sort_by(|a, b| a.id.cmp(&b.id));
    let node = members
        .iter()
        .find(|m| m.id == me)
        .map(|m| m.node.name.clone())
        .unwrap_or_default();
    ClusterView {
        node,
        leader: leader_name,
        term,
        revision,
        members: member_views,
        member_timeout_ms: u64::try_from(MEMBER_STATUS_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        at_unix_ms: 0,
    }
}

/// Builds the view: this node's own status, every other member's `/status` asked concurrently
/// (each bounded by [`MEMBER_STATUS_TIMEOUT`]), merged. `Busy` when [`VIEWS_IN_FLIGHT_MAX`]
/// views are being built already.
pub async fn cluster(app: &App) -> Result<ClusterView, KvError> {
    let Ok(_slot) = VIEWS_IN_FLIGHT.try_acquire() else {
        return Err(KvError::Busy(format!(
            "{VIEWS_IN_FLIGHT_MAX} cluster views are being built; retry shortly"
        )));
    };
    let local = crate::service::cluster::status(app);
    let revision = app.state_machine.revision();
    let replication = replication_matched(app);
    let mut members = local.members.clone();
    if !members.iter().any(|m| m.id == app.node_id) {
        // Not (yet) a member: still show itself, so the page says what this node is.
        members.push(Member {
            id: app.node_id,
            node: app.me.clone(),
            voter: false,
        });
    }
    let asks = members.iter().filter(|m| m.id != app.node_id).map(|m| {
        let url = format!("{}://{}/status", app.api_scheme, m.node.api_addr);
        let client = app.peers.get(&m.node.api_addr);
        let id = m.id;
        async move {
            let t0 = Instant::now();
            let report = fetch_report(&client, &url).await;
            let rtt = report.is_ok().then(|| t0.elapsed());
            Answer { id, report, rtt }
        }
    });
    let mut answers = futures::future::join_all(asks).await;
    answers.push(Answer {
        id: app.node_id,
        report: Ok(Report::from_local(&local, revision)),
        rtt: None,
    });
    let mut view = merge(app.node_id, &members, &answers, replication.as_ref());
    view.at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Ok(view)
}

/// The leader's matched log index per member, when this node leads.
fn replication_matched(app: &App) -> Option<BTreeMap<NodeId, u64>> {
    let metrics = app.raft.metrics();
    let m = metrics.borrow_watched();
    // A member the leader has no matched entry for yet is left out: its lag is unknown, not all.
    m.replication.as_ref().map(|r| {
        r.iter()
            .filter_map(|(id, log)| log.as_ref().map(|l| (*id, l.index)))
            .collect()
    })
}

/// The innermost cause of `e` (`Connection refused (os error 111)`, a TLS refusal): what an
/// operator needs, without reqwest's wrapping of it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(cause) = inner.source() {
        inner = cause;
    }
    inner.to_string()
}

/// One member's `GET /status`, bounded in time and size.
async fn fetch_report(client: &reqwest::Client, url: &str) -> Result<Report, FetchError> {
    let ask = async {
        let mut answer = client
            .get(url)
            .send()
            .await
            .map_err(|e| FetchError::Unreachable(root_cause(&e)))?;
        if !answer.status().is_success() {
            return Err(FetchError::Status(answer.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| FetchError::Unreachable(root_cause(&e)))?
        {
            if body.len() + chunk.len() > MEMBER_STATUS_BYTES_MAX {
                return Err(FetchError::TooLarge(MEMBER_STATUS_BYTES_MAX));
            }
            body.extend_from_slice(&chunk);
        }
        Report::from_status_json(&body)
    };
    tokio::time::timeout(MEMBER_STATUS_TIMEOUT, ask)
        .await
        .unwrap_or(Err(FetchError::Timeout(MEMBER_STATUS_TIMEOUT.as_millis())))
}

#[cfg(test)]
mod tests;
