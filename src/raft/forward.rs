//! The write path: propose a command on the leader, or forward it to the leader from any other
//! node, with one deadline for the whole request.
//!
//! Every command passes `limits::check_command` on the leader before it is proposed (here for
//! local writes, in [`propose_many`] for batches forwarded by followers); a follower checks it
//! too before forwarding, to answer an invalid command without a round trip.
//!
//! Retries happen only when the previous attempt certainly did not apply the command (no leader
//! known, the target refused before proposing, the connection to the leader was never made), so
//! a retried write is never applied twice.

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use serde::Deserialize;
use serde::Serialize;
use tokio::time::Instant;

use crate::app::App;
use crate::app::LeaderRoute;
use crate::error::KvError;
use crate::raft::forward_batch::Forwarded;
use crate::raft::propose::Attempt;
use crate::raft::types::Command;
use crate::raft::types::Node;
use crate::raft::types::NodeId;
use crate::raft::types::Outcome;
use crate::raft::types::Response as CommandResponse;

/// What a successful write reports: the log index it was committed at and the apply result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteOk {
    pub index: u64,
    pub response: CommandResponse,
}

/// [`write`], answering the store's outcome with the revision after it; the store's refusal
/// (and a missing outcome) as an error. What every etcd-style call checks first.
pub async fn propose(app: &App, cmd: Command) -> Result<(i64, Outcome), KvError> {
    outcome_of(write(app, cmd).await?)
}

/// Proposes `cmd` on this node only, and only while it leads in `term`: never forwarded, never
/// retried through another leader. For decisions a leader makes from its own state alone (a
/// lease's expiry from its timers): such a decision must be proposed by the node that made it,
/// before any other: an entry appended in `term` commits only while no later term has a
/// majority (its voters refuse older terms' appends), so a deposed leader's stale decision
/// never commits — forwarded to the new leader, it would.
pub async fn propose_as_leader(
    app: &App,
    cmd: Command,
    term: u64,
) -> Result<(i64, Outcome), KvError> {
    crate::limits::check_command(&cmd, app.max_value_bytes)?;
    let not_leading = || KvError::NoLeader(format!("this node no longer leads in term {term}"));
    if leading_term(app) != Some(term) {
        return Err(not_leading());
    }
    app.metrics.mvcc.count_write(&cmd);
    let deadline = Instant::now() + app.request_timeout;
    match app.proposer.propose_alone(cmd, deadline).await {
        Attempt::Done(result) => outcome_of(result?),
        Attempt::RetryAfterLeaderChange(_) => Err(not_leading()),
    }
}

/// The term this node leads in now (`None`: it does not lead).
pub fn leading_term(app: &App) -> Option<u64> {
    let m = app.raft_metrics.borrow_watched();
    (m.current_leader == Some(app.node_id)).then_some(m.current_term)
}

/// A write's store outcome with the revision after it; a refusal as an error.
fn outcome_of(ok: WriteOk) -> Result<(i64, Outcome), KvError> {
    match ok.response.outcome {
        Some(Outcome::Refused(e)) => Err(KvError::Store(e)),
        Some(outcome) => Ok((ok.response.revision, outcome)),
        None => Err(KvError::Internal("a write answered no outcome".into())),
    }
}

/// Applies `cmd` through the cluster's leader, waiting at most the request timeout.
pub async fn write(app: &App, cmd: Command) -> Result<WriteOk, KvError> {
    crate::limits::check_command(&cmd, app.max_value_bytes)?;
    app.metrics.mvcc.count_write(&cmd);
    let deadline = Instant::now() + app.request_timeout;
    loop {
        let attempt = match app.leader_route() {
            LeaderRoute::Local => app.proposer.propose(cmd.clone(), deadline).await,
            LeaderRoute::Remote(id, node) => forward_to(app, id, &node, cmd.clone()).await,
            LeaderRoute::Unknown => Attempt::RetryAfterLeaderChange(None),
        };
        match attempt {
            Attempt::Done(result) => return result,
            Attempt::RetryAfterLeaderChange(stale_leader) => {
                wait_for_other_leader(app, stale_leader, deadline).await?;
            }
        }
    }
}

/// Waits until a leader other than `stale` is known, or fails with `NoLeader` at the deadline.
async fn wait_for_other_leader(
    app: &App,
    stale: Option<NodeId>,
    deadline: Instant,
) -> Result<(), KvError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(KvError::NoLeader("no leader elected in time".into()));
    }
    // Poll briefly as well: a leader can be "known" but stale on this node (it then refuses).
    let poll = remaining.min(Duration::from_millis(200));
    let waited = app
        .raft
        .wait(Some(poll))
        .metrics(
            // The leader must also be in this node's membership (a fresh learner learns the
            // leader's id from its vote before it has the membership that holds its address);
            // otherwise this returns at once while `app.leader()` stays `None`: a hot loop.
            |m| {
                m.current_leader
                    .is_some_and(|id| m.membership_config.membership().get_node(&id).is_some())
                    && m.current_leader != stale
            },
            "leader known",
        )
        .await;
    if waited.is_err() && Instant::now() >= deadline {
        return Err(KvError::NoLeader("no leader elected in time".into()));
    }
    Ok(())
}

/// Sends `cmd` to the leader (batched with concurrent forwarded writes, see `forward_batch`).
/// The leader never re-forwards, so there are no loops.
async fn forward_to(app: &App, leader_id: NodeId, leader: &Node, cmd: Command) -> Attempt {
    match app
        .forwarder
        .forward(&leader.raft_addr, leader_id, cmd)
        .await
    {
        Forwarded::NotSent | Forwarded::Answer(Err(KvError::NoLeader(_))) => {
            Attempt::RetryAfterLeaderChange(Some(leader_id))
        }
        Forwarded::Unknown => Attempt::Done(Err(KvError::Timeout(app.request_timeout))),
        Forwarded::Answer(result) => Attempt::Done(result),
    }
}

/// Proposes `cmds` as one batch and collects each command's outcome, in order, by the deadline.
/// A command that fails `limits::check_command` is answered with that error and never proposed;
/// the others are proposed together.
pub async fn propose_many(app: &App, cmds: Vec<Command>) -> Vec<Result<WriteOk, KvError>> {
    let checks: Vec<Result<(), KvError>> = cmds
        .iter()
        .map(|cmd| crate::limits::check_command(cmd, app.max_value_bytes))
        .collect();
    let refused = checks.iter().filter(|c| c.is_err()).count();
    if refused > 0 {
        tracing::debug!(
            refused,
            batch = cmds.len(),
            "refused invalid forwarded commands"
        );
    }
    let valid: Vec<Command> = cmds
        .into_iter()
        .zip(&checks)
        .filter_map(|(cmd, check)| check.is_ok().then_some(cmd))
        .collect();
    let mut answers = if valid.is_empty() {
        Vec::new()
    } else {
        propose_checked(app, valid).await
    }
    .into_iter();
    checks
        .into_iter()
        .map(|check| match check {
            Ok(()) => answers
                .next()
                .unwrap_or(Err(KvError::Timeout(app.request_timeout))),
            Err(e) => Err(e),
        })
        .collect()
}

/// Proposes already checked `cmds`; one outcome per command, in order (see
/// `Proposer::propose_all`).
async fn propose_checked(app: &App, cmds: Vec<Command>) -> Vec<Result<WriteOk, KvError>> {
    let deadline = Instant::now() + app.request_timeout;
    let not_leader = || KvError::NoLeader("the forwarded-to node is not the leader".into());
    let attempts = app.proposer.propose_all(cmds, deadline).await;
    attempts
        .into_iter()
        .map(|attempt| match attempt {
            Attempt::Done(result) => result,
            Attempt::RetryAfterLeaderChange(_) => Err(not_leader()),
        })
        .collect()
}
