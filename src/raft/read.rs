//! The read path's consistency levels.
//!
//! - `linearizable` (default): before reading the local state machine, make sure it reflects every
//!   write acknowledged before the read began. On the leader: openraft's ReadIndex
//!   (`ensure_linearizable`: confirm leadership with a quorum, wait until applied ≥ read index).
//!   On a follower: ask the leader for a read index (`/raft/read_index` on its Raft address), then wait until the
//!   local applied index reaches it. Bounded by the request timeout (then 503).
//! - `stale`: read the local state machine at once (the seeds' behaviour; works without quorum).

use openraft::ReadPolicy;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;
use tokio::time::Instant;

use crate::app::App;
use crate::app::LeaderRoute;
use crate::error::KvError;
use crate::peer::link::Lane;
use crate::peer::wire::Rpc;
use crate::raft::types::NodeId;

/// The consistency level of a read, from `?level=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadLevel {
    #[default]
    Linearizable,
    Stale,
}

impl ReadLevel {
    pub fn parse(s: &str) -> Result<ReadLevel, KvError> {
        match s {
            "linearizable" | "strong" | "" => Ok(ReadLevel::Linearizable),
            "stale" | "none" => Ok(ReadLevel::Stale),
            other => Err(KvError::BadRequest(format!(
                "unknown read level {other:?}: use linearizable (default) or stale"
            ))),
        }
    }
}

/// Waits until a read of the local state machine is linearizable at `level`.
pub async fn read_barrier(app: &App, level: ReadLevel) -> Result<(), KvError> {
    if level == ReadLevel::Stale {
        // Fail-stop: a replica whose Raft core stopped (storage error) must not serve even stale
        // reads in the moment before the node exits.
        if app.raft_metrics.borrow_watched().running_state.is_err() {
            return Err(KvError::ReadUnavailable(app.request_timeout));
        }
        return Ok(());
    }
    let deadline = Instant::now() + app.request_timeout;
    let unavailable = || KvError::ReadUnavailable(app.request_timeout);
    // A leader that is handing leadership off (graceful shutdown, `POST /leader`) refuses
    // reads with "forward to leader": wait for the next leader and ask it, within the deadline.
    let mut attempts = 0;
    let read_index = loop {
        attempts += 1;
        let retry = attempts < READ_ATTEMPTS_MAX;
        match app.leader_route() {
            LeaderRoute::Local => {
                match tokio::time::timeout_at(
                    deadline,
                    app.raft.ensure_linearizable(ReadPolicy::ReadIndex),
                )
                .await
                {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))))
                        if retry =>
                    {
                        wait_for_other_leader(app, app.node_id, deadline).await?;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "linearizable read refused");
                        return Err(unavailable());
                    }
                    Err(_) => return Err(unavailable()),
                }
            }
            LeaderRoute::Remote(leader_id, leader) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let link = app.peers.link(leader_id, &leader.raft_addr, Lane::Forward);
                // Whatever the leader says (even "not the leader"), the read was not served.
                let answer: Result<u64, KvError> = link
                    .call(Rpc::ReadIndex, &(), remaining)
                    .await
                    .map_err(|_| unavailable())?;
                match answer {
                    Ok(index) => break index,
                    Err(KvError::NoLeader(_)) if retry => {
                        wait_for_other_leader(app, leader_id, deadline).await?;
                    }
                    Err(_) => return Err(unavailable()),
                }
            }
            LeaderRoute::Unknown => return Err(unavailable()),
        }
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    app.raft
        .wait(Some(remaining))
        .applied_index_at_least(Some(read_index), "linearizable read")
        .await
        .map_err(|_| unavailable())?;
    Ok(())
}

/// Attempts of one linearizable read: the first, and retries after a leadership hand-off.
const READ_ATTEMPTS_MAX: u32 = 3;

/// Waits until a leader other than `stale` is known (with its record in the membership), at
/// most until `deadline`; `ReadUnavailable` then.
async fn wait_for_other_leader(app: &App, stale: NodeId, deadline: Instant) -> Result<(), KvError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    app.raft
        .wait(Some(remaining))
        .metrics(
            move |m| {
                m.current_leader.is_some_and(|id| {
                    id != stale && m.membership_config.membership().get_node(&id).is_some()
                })
            },
            "next leader known",
        )
        .await
        .map(|_| ())
        .map_err(|_| KvError::ReadUnavailable(app.request_timeout))
}

/// On the leader: confirm leadership with a quorum and return the index a follower must have
/// applied before it may serve a linearizable read.
pub async fn leader_read_index(app: &App) -> Result<u64, KvError> {
    match tokio::time::timeout(
        app.request_timeout,
        app.raft.get_read_linearizer(ReadPolicy::ReadIndex),
    )
    .await
    {
        Ok(Ok(linearizer)) => Ok(linearizer.read_log_id().index()),
        Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_)))) => {
            Err(KvError::NoLeader("the asked node is not the leader".into()))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "read index refused");
            Err(KvError::ReadUnavailable(app.request_timeout))
        }
        Err(_) => Err(KvError::ReadUnavailable(app.request_timeout)),
    }
}
