//! Proposing commands on this node, the leader, with write batching: while a proposal of client
//! writes is on its way through the log, the writes that arrive meanwhile wait, and then go
//! together as one log entry ([`Command::Batch`]) in the next proposal.
//!
//! One log entry for many writes is one encode, one append to each follower's log, one apply
//! call and one answer from the Raft core, instead of one each: 12–25 % less CPU per write at
//! 64 clients (BENCHMARKS.md, "Write batching"). Each write still applies at its own revision
//! and gets its own answer (`store/kv.rs`).
//!
//! A write that arrives while nothing is under way is proposed at once by its own caller, alone
//! (no batch, no hand-off: a single client's latency is unchanged). When that proposal ends, the
//! writes that arrived meanwhile go out as one batch from a task of their own, and so on until
//! none are waiting. So at most one proposal of client writes is under way at a time; a batch
//! holds at most [`BATCH_COMMANDS_MAX`] commands and as many bytes as the largest command a
//! client may send, so it fits wherever one command fits. A write that does not fit the waiting
//! batch is proposed alone at once. Commands that are not [`Command::batchable`] are always
//! proposed alone.
//!
//! Nodes of older versions cannot read a batch entry: the leader proposes batches only while
//! every other member has said, when a link to it last opened, that it reads them
//! (`peer::features`); otherwise the writes of a batch are proposed as entries of their own
//! (logged when it changes). So a rolling upgrade needs no flag.
//!
//! **Gathering** (`batch_queue.rs`, also a follower's for the batches it forwards).
//! Closed-loop clients (each waits for its answer, then writes again) would split into two groups that take turns: while one group's entry is committed, the
//! other's writes wait, so each write waits about two commit cycles (BENCHMARKS.md, "64 HTTP
//! clients: bounded by the commit loop"). So when a proposal that answered writes from 8 or more
//! client connections (`GATHER_WRITERS_MIN`) ends, the next batch is held until 90 %
//! (`GATHER_PERCENT`) of those connections have sent a write again, or for at most
//! `GatherConfig::wait` (`--write-gather-ms`; tokio's timer counts whole milliseconds, so up to one
//! more): the group that was just answered comes back and goes in the same entry as the one
//! that waited. Writes from other writers join the held batch but do not release it, so writers
//! that do not come back at once (they think between writes, or are done) let the hold run out;
//! that turns holding off for the next 16 proposals (`GATHER_PAUSE_PROPOSALS`), doubled for each
//! further one that runs out (up to 8,192), so such clients pay it rarely (clients that open a
//! connection per request look like that too). While holding is off the leader still watches,
//! holding nothing, whether the writers each proposal answered come back within that time;
//! when that happens 3 times in a row (`GATHER_WATCH_STREAK`) the clients are closed-loop again
//! and holding resumes, so a phase of pausing clients does not keep gathering off for the
//! closed-loop ones after them. Fewer writers, one lone client, many writes over one connection
//! and forwarded writes never start a hold.
//!
//! A batch a follower forwards (`forward_batch.rs`) is already gathered (by the same queue, on
//! the follower, for its own clients' connections): it goes out as a batch entry of its own at
//! once when it fits one ([`Proposer::propose_all`]).
//!
//! Outcomes are each write's own: a batch refused before it was appended (this node no longer
//! leads) is certainly not applied, and each write in it is retried as `forward::write` retries
//! one; a batch whose outcome is unknown (time ran out, a leader change discarded it) is unknown
//! for each write in it. A caller that gives up waiting (its deadline, or its client went away)
//! answers "unknown": its write may still be in a batch that commits. A write whose caller went
//! away before its batch was formed is dropped, certainly not applied.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::app::RaftMetricsRx;
use crate::error::KvError;
use crate::limits::BATCH_COMMANDS_MAX;
use crate::peer::features::PeerFeatures;
use crate::peer::wire;
use crate::raft::forward::WriteOk;
use crate::raft::types::Command;
use crate::raft::types::NodeId;
use crate::raft::types::Outcome;
use crate::raft::types::Raft;
use crate::raft::types::TypeConfig;

use crate::raft::batch_queue::BatchQueue;
use crate::raft::batch_queue::BatchSender;
use crate::raft::batch_queue::EMPTY_BATCH_BYTES;
use crate::raft::batch_queue::GatherConfig;
use crate::raft::batch_queue::Place;
use crate::raft::batch_queue::Waiting;

/// What became of one proposal.
pub enum Attempt {
    /// Certainly not applied (this node was not the leader, or no longer is); retry once a
    /// (new) leader is known. Holds the leader that refused, if known.
    RetryAfterLeaderChange(Option<NodeId>),
    Done(Result<WriteOk, KvError>),
}

/// Proposes commands on this node; clones share one batch queue.
#[derive(Clone)]
pub struct Proposer {
    core: Core,
    queue: BatchQueue<Core>,
}

/// What proposes: entries alone, batches, and what they need.
#[derive(Clone)]
struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    config: ProposerConfig,
    /// Largest encoded batch: the largest command a client may send.
    batch_bytes_max: usize,
    /// The membership whose members must read batches.
    raft_metrics: RaftMetricsRx,
    /// The member that last kept this node from batching (`NO_MEMBER`: none), to log changes.
    kept_by: AtomicU64,
}

/// [`Inner::kept_by`] when no member keeps the leader from batching.
const NO_MEMBER: u64 = 0;

/// What a [`Proposer`] is built from.
pub struct ProposerConfig {
    pub raft: Raft,
    pub node_id: NodeId,
    pub request_timeout: Duration,
    /// `raftkv_server_proposals_failed`, counted per command.
    pub failed: Counter,
    /// `raftkv_server_write_batches` and `raftkv_server_batched_writes`.
    pub batches: Counter,
    pub batched: Counter,
    pub value_bytes_max: usize,
    /// Whether writes are batched at all (`--no-write-batching` turns it off).
    pub batching: bool,
    /// Gathering: how long the next batch may be held for the writers of the one just answered
    /// (`--write-gather-ms`; zero: never), and its counters.
    pub gather: GatherConfig,
    /// What each peer said it can do: batches only while every other member reads them.
    pub features: Arc<PeerFeatures>,
}

impl Proposer {
    pub fn new(config: ProposerConfig) -> Self {
        let batch_bytes_max = crate::limits::command_bytes_max(config.value_bytes_max);
        let gather = config.gather.clone();
        let core = Core {
            inner: Arc::new(Inner {
                batch_bytes_max,
                raft_metrics: config.raft.metrics(),
                kept_by: AtomicU64::new(NO_MEMBER),
                config,
            }),
        };
        let queue = BatchQueue::new(core.clone(), gather, batch_bytes_max);
        Self { core, queue }
    }

    /// Proposes a checked `cmd` on this node, batched with concurrent writes when it may be,
    /// and waits for its outcome until `deadline`.
    pub async fn propose(&self, cmd: Command, deadline: Instant) -> Attempt {
        let batchable = self.core.inner.config.batching && cmd.batchable();
        match self.queue.place(cmd, batchable) {
            Place::Alone(cmd) => self.core.propose_alone(cmd, deadline).await,
            Place::Lead(cmd, turn) => {
                // Must hand the turn on when this proposal ends, however it ends (also when
                // the caller's future is dropped), or the writes waiting behind it would wait
                // until their deadlines: the turn is dropped with this future.
                let attempt = self.core.propose_alone(cmd, deadline).await;
                drop(turn);
                attempt
            }
            Place::Wait(answer) => match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(attempt)) => attempt,
                // The time ran out, or the batch task was dropped (the runtime is stopping):
                // the write may be in a batch that commits.
                Ok(Err(_)) | Err(_) => Attempt::Done(Err(self.core.unknown())),
            },
        }
    }

    /// Proposes checked `cmds` (a batch a follower forwarded) and waits for each outcome, in
    /// order, until `deadline`. With write batching they are one batch entry of their own when
    /// they fit one (not waiting for the batch under way: the follower already gathered them,
    /// measured 1.11× the follower writes of joining the queue), else they join this leader's
    /// batches like its own clients' writes; without batching, each is an entry of its own.
    pub async fn propose_all(&self, cmds: Vec<Command>, deadline: Instant) -> Vec<Attempt> {
        let core = &self.core;
        if !core.inner.config.batching {
            return core.propose_each(cmds, deadline).await;
        }
        if core.fits_one_batch(&cmds) && core.members_read_batches() {
            return core.propose_batch_entry(cmds, deadline).await;
        }
        let proposals = cmds.into_iter().map(|cmd| self.propose(cmd, deadline));
        futures::future::join_all(proposals).await
    }

    /// Proposes `cmd` as an entry of its own, never batched.
    pub async fn propose_alone(&self, cmd: Command, deadline: Instant) -> Attempt {
        self.core.propose_alone(cmd, deadline).await
    }
}

impl BatchSender for Core {
    type Reply = Attempt;

    fn send(&self, batch: Vec<Waiting<Attempt>>) -> impl Future<Output = ()> + Send {
        self.propose_batch(batch)
    }
}

impl Core {
    /// The outcome of a write whose answer did not come in time: unknown.
    fn unknown(&self) -> KvError {
        KvError::Timeout(self.inner.config.request_timeout)
    }

    /// Whether `cmds` make one batch entry as they are: several, all batchable, within a
    /// batch's count and bytes.
    fn fits_one_batch(&self, cmds: &[Command]) -> bool {
        let bytes = || -> usize { cmds.iter().map(crate::limits::command_encoded_len).sum() };
        (2..=BATCH_COMMANDS_MAX).contains(&cmds.len())
            && cmds.iter().all(Command::batchable)
            && EMPTY_BATCH_BYTES + bytes() <= self.inner.batch_bytes_max
    }

    /// Proposes the writes of `batch` whose callers still wait, as one entry if there are
    /// several and every member reads batches, and answers each.
    async fn propose_batch(&self, batch: Vec<Waiting<Attempt>>) {
        let batch: Vec<Waiting<Attempt>> =
            batch.into_iter().filter(|w| !w.reply.is_closed()).collect();
        let deadline = Instant::now() + self.inner.config.request_timeout;
        if batch.len() <= 1 {
            for w in batch {
                let _ = w.reply.send(self.propose_alone(w.cmd, deadline).await);
            }
            return;
        }
        let (cmds, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|w| (w.cmd, w.reply)).unzip();
        let answers = if self.members_read_batches() {
            self.propose_batch_entry(cmds, deadline).await
        } else {
            self.propose_each(cmds, deadline).await
        };
        for (reply, answer) in replies.into_iter().zip(answers) {
            // A caller that stopped waiting answered "unknown" already.
            let _ = reply.send(answer);
        }
    }

    /// Proposes `cmds` as one [`Command::Batch`] entry: each command's outcome, in order.
    async fn propose_batch_entry(&self, cmds: Vec<Command>, deadline: Instant) -> Vec<Attempt> {
        let count = cmds.len();
        self.inner.config.batches.inc();
        self.inner.config.batched.inc_by(count as u64);
        let attempt = self.propose_once(Command::Batch(cmds), deadline).await;
        let answers = self.split(attempt, count);
        self.count_failed(answers)
    }

    /// Proposes `cmds` as entries of their own, all at once: each one's outcome, in order.
    async fn propose_each(&self, cmds: Vec<Command>, deadline: Instant) -> Vec<Attempt> {
        let count = cmds.len();
        let mut answers = Vec::with_capacity(count);
        let proposed = self.inner.config.raft.client_write_many(cmds);
        match tokio::time::timeout_at(deadline, proposed).await {
            Ok(Ok(mut stream)) => {
                while answers.len() < count {
                    let next = futures::StreamExt::next(&mut stream);
                    let answer = match tokio::time::timeout_at(deadline, next).await {
                        Ok(Some(Ok(Ok(resp)))) => Attempt::Done(Ok(WriteOk {
                            index: resp.log_id.index,
                            response: resp.response,
                        })),
                        Ok(Some(Ok(Err(e)))) => self.refused(e),
                        Ok(Some(Err(fatal))) => Attempt::Done(Err(self.fatal_error(&fatal))),
                        // The stream ended early or the deadline passed: outcome unknown.
                        Ok(None) | Err(_) => break,
                    };
                    answers.push(answer);
                }
            }
            Ok(Err(fatal)) => answers = failed_all(&self.fatal_error(&fatal), count),
            Err(_elapsed) => {}
        }
        let unknown = self.unknown();
        answers.resize_with(count, || Attempt::Done(Err(unknown.clone())));
        self.count_failed(answers)
    }

    /// Counts the failed ones of `answers` in `raftkv_server_proposals_failed`.
    fn count_failed(&self, answers: Vec<Attempt>) -> Vec<Attempt> {
        let failed = answers
            .iter()
            .filter(|a| matches!(a, Attempt::Done(Err(_))))
            .count();
        self.inner.config.failed.inc_by(failed as u64);
        answers
    }

    /// Whether every other member of the cluster has said it reads batch entries; logs when
    /// the answer changes.
    fn members_read_batches(&self) -> bool {
        let lacking = {
            let metrics = self.inner.raft_metrics.borrow_watched();
            let members = metrics.membership_config.membership().nodes();
            let others = members
                .map(|(id, _)| *id)
                .filter(|id| *id != self.inner.config.node_id);
            self.inner
                .config
                .features
                .first_without(others, wire::features::BATCH_ENTRIES)
        };
        let now = lacking.unwrap_or(NO_MEMBER);
        let before = self.inner.kept_by.swap(now, Ordering::Relaxed);
        if before != now {
            match lacking {
                Some(node) => tracing::info!(
                    node,
                    "a member has not said it reads batched log entries (an older version, or \
                     no link to it yet): each write is proposed as an entry of its own"
                ),
                None => {
                    tracing::info!("every member reads batched log entries: writes are batched")
                }
            }
        }
        lacking.is_none()
    }

    /// One batch's outcome as each of its `count` commands' own.
    fn split(&self, attempt: Attempt, count: usize) -> Vec<Attempt> {
        match attempt {
            Attempt::Done(Ok(WriteOk {
                index,
                response:
                    crate::raft::types::Response {
                        outcome: Some(Outcome::Batch(responses)),
                        ..
                    },
            })) if responses.len() == count => responses
                .into_iter()
                .map(|response| Attempt::Done(Ok(WriteOk { index, response })))
                .collect(),
            Attempt::Done(Ok(other)) => {
                let detail = format!("a batch of {count} writes answered {other:?}");
                failed_all(&KvError::Internal(detail), count)
            }
            Attempt::Done(Err(e)) => failed_all(&e, count),
            Attempt::RetryAfterLeaderChange(stale) => (0..count)
                .map(|_| Attempt::RetryAfterLeaderChange(stale))
                .collect(),
        }
    }

    /// Proposes `cmd` as an entry of its own.
    async fn propose_alone(&self, cmd: Command, deadline: Instant) -> Attempt {
        let attempt = self.propose_once(cmd, deadline).await;
        if matches!(attempt, Attempt::Done(Err(_))) {
            self.inner.config.failed.inc();
        }
        attempt
    }

    async fn propose_once(&self, cmd: Command, deadline: Instant) -> Attempt {
        let write = self.inner.config.raft.client_write(cmd);
        match tokio::time::timeout_at(deadline, write).await {
            Err(_elapsed) => Attempt::Done(Err(self.unknown())),
            Ok(Ok(resp)) => Attempt::Done(Ok(WriteOk {
                index: resp.log_id.index,
                response: resp.data,
            })),
            Ok(Err(RaftError::APIError(e))) => self.refused(e),
            Ok(Err(RaftError::Fatal(e))) => Attempt::Done(Err(self.fatal_error(&e))),
        }
    }

    /// A proposal the Raft core could not see through. Stopped (a shutdown while the proposal
    /// was pending): it may have been appended and may still commit on the next leader, so the
    /// outcome is unknown (`Timeout`), never a 500. Any other fatal error: `Internal` (the node
    /// exits).
    fn fatal_error(&self, e: &openraft::errors::Fatal<TypeConfig>) -> KvError {
        match e {
            openraft::errors::Fatal::Stopped => self.unknown(),
            other => KvError::Internal(other.to_string()),
        }
    }

    /// Maps openraft's refusal of one proposal.
    fn refused(&self, e: ClientWriteError<TypeConfig>) -> Attempt {
        match e {
            ClientWriteError::ForwardToLeader(f) => {
                // Refused before the entry was appended: not applied.
                tracing::debug!(leader = ?f.leader_id, "no longer leader, retrying via the new one");
                Attempt::RetryAfterLeaderChange(Some(self.inner.config.node_id))
            }
            // Appended, then dropped by a leader change: it may still commit elsewhere.
            ClientWriteError::LogEntryDiscarded(_) => Attempt::Done(Err(self.unknown())),
            other => Attempt::Done(Err(KvError::Internal(other.to_string()))),
        }
    }
}

/// `count` answers, each the error `e`.
fn failed_all(e: &KvError, count: usize) -> Vec<Attempt> {
    (0..count).map(|_| Attempt::Done(Err(e.clone()))).collect()
}
