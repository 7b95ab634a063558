//! Batching of writes forwarded to the leader. Concurrent client writes arriving at a follower
//! share one write-batch request to the leader (over the forward lane of the peer link) instead
//! of one exchange each, which is what the leader's CPU would otherwise spend most of its time
//! on. The queue is the leader's own (`raft::batch_queue`): a write that arrives while nothing is
//! under way goes at once, alone, from its caller's task; the writes that arrive while a batch is
//! out wait and go together in the next, one batch in flight per leader (against 8: follower
//! writes 1.15× at 64 clients and 1.18× at 16 with 9–22 % less CPU per write, 0.96× at 4;
//! BENCHMARKS.md, "gRPC calls in their connection's task"). Closed-loop clients are gathered as
//! on the leader: the next batch is held for the connections the last one answered
//! (`--write-gather-ms`). A batch is capped in count ([`BATCH_COMMANDS_MAX`]) and in encoded
//! bytes ([`BATCH_BYTES_MAX`]): a write that does not fit the waiting batch goes alone at once,
//! so the leader (which refuses larger batches) accepts every batch this node sends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::KvError;
use crate::peer::client::PeerClients;
use crate::peer::link::Lane;
use crate::peer::wire::Rpc;
use crate::raft::batch_queue::BatchQueue;
use crate::raft::batch_queue::BatchSender;
use crate::raft::batch_queue::GatherConfig;
use crate::raft::batch_queue::Place;
use crate::raft::batch_queue::Waiting;
use crate::raft::forward::WriteOk;
use crate::raft::types::Command;
use crate::raft::types::NodeId;

pub use crate::limits::BATCH_BYTES_MAX;
pub use crate::limits::BATCH_COMMANDS_MAX;

/// What became of one forwarded command.
#[derive(Debug, Clone)]
pub enum Forwarded {
    /// The leader was never reached: the command was certainly not applied.
    NotSent,
    /// Sent, but no answer came back: the outcome is unknown.
    Unknown,
    /// The leader's answer.
    Answer(Result<WriteOk, KvError>),
}

/// Sends one leader's batches: its Raft address and node id.
pub struct Target {
    peers: PeerClients,
    addr: String,
    leader_id: NodeId,
    /// Bound on one batch's exchange: the leader answers each command within its own request
    /// timeout, so this only bounds a leader that stopped answering.
    timeout: Duration,
}

impl BatchSender for Target {
    type Reply = Forwarded;

    fn send(&self, batch: Vec<Waiting<Forwarded>>) -> impl Future<Output = ()> + Send {
        send_batch(self, batch)
    }
}

/// One batch queue per leader (by id, for the address it was last seen at).
pub struct ForwardBatcher {
    peers: PeerClients,
    batch_timeout: Duration,
    gather: GatherConfig,
    queues: Mutex<HashMap<NodeId, BatchQueue<Target>>>,
}

impl ForwardBatcher {
    pub fn new(peers: PeerClients, request_timeout: Duration, gather: GatherConfig) -> Self {
        Self {
            peers,
            batch_timeout: request_timeout + Duration::from_secs(1),
            gather,
            queues: Mutex::default(),
        }
    }

    /// Forwards `cmd` to the leader `leader_id` at its Raft address and waits for its outcome.
    pub async fn forward(
        &self,
        leader_raft_addr: &str,
        leader_id: NodeId,
        cmd: Command,
    ) -> Forwarded {
        let queue = self.queue(leader_raft_addr, leader_id);
        match queue.place(cmd, true) {
            Place::Lead(cmd, turn) => {
                // Must hand the turn on once this write is answered, however that ends (the
                // turn is dropped with this future too), or the writes waiting would never go.
                let answer = send_one(queue.sender(), cmd).await;
                drop(turn);
                answer
            }
            Place::Alone(cmd) => send_one(queue.sender(), cmd).await,
            // No answer: the batch's task was dropped (the runtime is stopping).
            Place::Wait(answer) => answer.await.unwrap_or(Forwarded::Unknown),
        }
    }

    /// The queue to leader `leader_id` at `addr` (no allocation when it exists: this runs for
    /// every forwarded write).
    fn queue(&self, addr: &str, leader_id: NodeId) -> BatchQueue<Target> {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(q) = queues.get(&leader_id).filter(|q| q.sender().addr == addr) {
            return q.clone();
        }
        // A new leader (or one at a new address): forget the idle queues of former ones (bounds
        // the map). A replaced queue still busy lives on in its callers until they are answered.
        queues.retain(|_, q| !q.is_idle());
        let target = Target {
            peers: self.peers.clone(),
            addr: addr.to_string(),
            leader_id,
            timeout: self.batch_timeout,
        };
        let queue = BatchQueue::new(target, self.gather.clone(), BATCH_BYTES_MAX);
        queues.insert(leader_id, queue.clone());
        queue
    }
}

/// Sends one command as a batch of its own.
async fn send_one(target: &Target, cmd: Command) -> Forwarded {
    let cmds = [cmd];
    match request(target, &cmds).await {
        Ok(mut answers) if answers.len() == 1 => Forwarded::Answer(answers.remove(0)),
        Ok(answers) => wrong_count(target, 1, answers.len()),
        Err(outcome) => outcome,
    }
}

/// Sends the writes of `batch` whose callers still wait as one batch and answers each. A write
/// whose caller went away is dropped before it is sent: certainly not applied.
async fn send_batch(target: &Target, batch: Vec<Waiting<Forwarded>>) {
    let (cmds, replies): (Vec<Command>, Vec<_>) = batch
        .into_iter()
        .filter(|w| !w.reply.is_closed())
        .map(|w| (w.cmd, w.reply))
        .unzip();
    if cmds.is_empty() {
        return;
    }
    let answers = match request(target, &cmds).await {
        Ok(answers) if answers.len() == replies.len() => {
            answers.into_iter().map(Forwarded::Answer).collect()
        }
        Ok(answers) => {
            let unknown = wrong_count(target, replies.len(), answers.len());
            replies.iter().map(|_| unknown.clone()).collect()
        }
        Err(outcome) => replies.iter().map(|_| outcome.clone()).collect::<Vec<_>>(),
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

/// The leader answered `answered` outcomes to `sent` commands: each one's outcome is unknown.
fn wrong_count(target: &Target, sent: usize, answered: usize) -> Forwarded {
    tracing::warn!(
        addr = %target.addr,
        sent,
        answered,
        "leader answered a wrong count"
    );
    Forwarded::Unknown
}

async fn request(
    target: &Target,
    cmds: &[Command],
) -> Result<Vec<Result<WriteOk, KvError>>, Forwarded> {
    let link = target
        .peers
        .link(target.leader_id, &target.addr, Lane::Forward);
    link.call(Rpc::WriteBatch, &cmds, target.timeout)
        .await
        .map_err(|e| {
            tracing::debug!(addr = %target.addr, error = %e, "forwarding to the leader failed");
            // Never handled (not reached, or refused before handling): the leader did not see
            // the writes.
            if e.not_handled() {
                Forwarded::NotSent
            } else {
                Forwarded::Unknown
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::batch_queue::EMPTY_BATCH_BYTES;

    #[test]
    fn the_queues_byte_count_covers_the_encoded_batch() {
        // The batch queue counts a batch as `EMPTY_BATCH_BYTES` plus each command's encoded
        // length, and the leader refuses a request body over `BATCH_BYTES_MAX`: the body (the
        // postcard encoding of the commands) must never be longer than what the queue counted.
        let cmds: Vec<Command> = (0..300)
            .map(|i| Command::Set {
                key: format!("k{i}"),
                value: vec![0; 1000],
            })
            .collect();
        let counted: usize = EMPTY_BATCH_BYTES
            + cmds
                .iter()
                .map(crate::limits::command_encoded_len)
                .sum::<usize>();
        let encoded = postcard::to_stdvec(&cmds).expect("encode");
        assert!(encoded.len() <= counted, "{} > {counted}", encoded.len());
    }
}
