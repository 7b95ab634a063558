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
use crate::error::KvError;

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
        if app.raft.metrics().borrow_watched().running_state.is_err() {
            return Err(KvError::ReadUnavailable(app.request_timeout));
        }
        return Ok(());
    }
    let deadline = Instant::now() + app.request_timeout;
    let unavailable = || KvError::ReadUnavailable(app.request_timeout);
    let read_index = match app.leader() {
        Some((id, _)) if id == app.node_id => {
            return match tokio::time::timeout_at(
                deadline,
                app.raft.ensure_linearizable(ReadPolicy::ReadIndex),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "linearizable read refused");
                    Err(unavailable())
                }
                Err(_) => Err(unavailable()),
            };
        }
        Some((leader_id, leader)) => {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let response = app
                .peers
                .post_raft(&leader.raft_addr, leader_id, "read_index", false)
                .timeout(remaining)
                .send()
                .await
                .map_err(|_| unavailable())?;
            // Whatever the leader says (even "not the leader"), the read was not served.
            crate::raft::network::decode_response::<Result<u64, KvError>>(response)
                .await
                .map_err(|_| unavailable())?
                .map_err(|_| unavailable())?
        }
        None => return Err(unavailable()),
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    app.raft
        .wait(Some(remaining))
        .applied_index_at_least(Some(read_index), "linearizable read")
        .await
        .map_err(|_| unavailable())?;
    Ok(())
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
