//! Batching of writes forwarded to the leader. Concurrent client writes arriving at a follower
//! share one write-batch request to the leader (over the forward lane of the peer link) instead
//! of one exchange each, which
//! is what the leader's CPU would otherwise spend most of its time on. With one write at a time
//! a batch holds one command, so nothing waits for a batch to fill. A batch is capped in count
//! ([`BATCH_COMMANDS_MAX`]) and in encoded bytes ([`BATCH_BYTES_MAX`]): the command that would
//! overflow it opens the next batch, so the leader (which refuses larger batches) accepts every
//! batch this node sends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::error::KvError;
use crate::peer::client::PeerClients;
use crate::peer::link::Lane;
use crate::peer::wire::Rpc;
use crate::raft::forward::WriteOk;
use crate::raft::types::Command;
use crate::raft::types::NodeId;

pub use crate::limits::BATCH_BYTES_MAX;
pub use crate::limits::BATCH_COMMANDS_MAX;
/// Forwarded batches in flight to one leader at a time. One, as the leader batches its own
/// clients' writes (`raft/propose.rs`): the writes that arrive while a batch is out go together
/// in the next, so entries are bigger and fewer. Against 8 (A/Bs, BENCHMARKS.md, "gRPC calls in
/// their connection's task"): follower writes 1.15× at 64 clients and 1.18× at 16 with
/// 9–22 % less CPU per write, 0.96× at 4; one client is unchanged (one batch of one).
const BATCHES_IN_FLIGHT_MAX: usize = 1;
/// Queued forwarded writes per leader before callers wait (backpressure).
const QUEUE_CAPACITY: usize = 8192;

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

/// Where one queue's batches go: the leader's Raft address and node id.
#[derive(Clone)]
struct Target {
    peers: PeerClients,
    addr: String,
    leader_id: NodeId,
}

struct Pending {
    cmd: Command,
    /// `cmd`'s encoded size.
    bytes: usize,
    reply: oneshot::Sender<Forwarded>,
}

/// The size of a batch being filled: decides whether one more command still fits.
#[derive(Debug)]
struct BatchSize {
    count: usize,
    bytes: usize,
}

impl BatchSize {
    /// An empty batch: only its length prefix (at most `BATCH_COMMANDS_MAX` commands).
    fn new() -> Self {
        Self {
            count: 0,
            bytes: crate::limits::varint_len(BATCH_COMMANDS_MAX),
        }
    }

    /// Counts in a command of `bytes` if the batch stays within `BATCH_COMMANDS_MAX` and
    /// `bytes_max`; the first command is always admitted (a checked command always fits).
    fn admit(&mut self, bytes: usize, bytes_max: usize) -> bool {
        let fits = self.count < BATCH_COMMANDS_MAX && self.bytes + bytes <= bytes_max;
        if fits || self.count == 0 {
            self.count += 1;
            self.bytes += bytes;
            return true;
        }
        false
    }
}

/// One queue (and sender task) per leader address.
pub struct ForwardBatcher {
    peers: PeerClients,
    /// HTTP timeout of one batch: the leader answers each command within its own request
    /// timeout, so this only bounds a leader that stopped answering.
    batch_timeout: Duration,
    queues: Mutex<HashMap<(String, NodeId), mpsc::Sender<Pending>>>,
}

impl ForwardBatcher {
    pub fn new(peers: PeerClients, request_timeout: Duration) -> Self {
        Self {
            peers,
            batch_timeout: request_timeout + Duration::from_secs(1),
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
        let (reply, answer) = oneshot::channel();
        let bytes = crate::limits::command_encoded_len(&cmd);
        if queue.send(Pending { cmd, bytes, reply }).await.is_err() {
            return Forwarded::NotSent;
        }
        answer.await.unwrap_or(Forwarded::Unknown)
    }

    fn queue(&self, addr: &str, leader_id: NodeId) -> mpsc::Sender<Pending> {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (addr.to_string(), leader_id);
        if let Some(q) = queues.get(&key).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let target = Target {
            peers: self.peers.clone(),
            addr: addr.to_string(),
            leader_id,
        };
        tokio::spawn(send_loop(target, rx, self.batch_timeout));
        queues.insert(key, tx.clone());
        tx
    }
}

/// Takes every queued command (up to the batch limits) and sends them as one batch, keeping up
/// to `BATCHES_IN_FLIGHT_MAX` batches in flight.
async fn send_loop(target: Target, mut rx: mpsc::Receiver<Pending>, timeout: Duration) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    // The command that did not fit the previous batch opens the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut size = BatchSize::new();
        size.admit(first.bytes, BATCH_BYTES_MAX);
        let mut batch = vec![first];
        while let Ok(p) = rx.try_recv() {
            if !size.admit(p.bytes, BATCH_BYTES_MAX) {
                carried = Some(p);
                break;
            }
            batch.push(p);
        }
        let target = target.clone();
        tokio::spawn(async move {
            send_batch(&target, batch, timeout).await;
            drop(permit);
        });
    }
}

async fn send_batch(target: &Target, batch: Vec<Pending>, timeout: Duration) {
    let (cmds, replies): (Vec<Command>, Vec<oneshot::Sender<Forwarded>>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let addr = target.addr.as_str();
    let answers = match request(target, &cmds, timeout).await {
        Ok(answers) if answers.len() == replies.len() => {
            answers.into_iter().map(Forwarded::Answer).collect()
        }
        Ok(answers) => {
            tracing::warn!(
                addr,
                sent = replies.len(),
                answered = answers.len(),
                "leader answered a wrong count"
            );
            replies.iter().map(|_| Forwarded::Unknown).collect()
        }
        Err(outcome) => replies.iter().map(|_| outcome.clone()).collect::<Vec<_>>(),
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

async fn request(
    target: &Target,
    cmds: &[Command],
    timeout: Duration,
) -> Result<Vec<Result<WriteOk, KvError>>, Forwarded> {
    let link = target
        .peers
        .link(target.leader_id, &target.addr, Lane::Forward);
    link.call(Rpc::WriteBatch, &cmds, timeout)
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

    #[test]
    fn a_batch_stops_growing_before_its_byte_cap() {
        let mut size = BatchSize::new();
        let prefix = size.bytes;
        assert!(size.admit(60, 100));
        assert!(
            size.admit(100 - prefix - 60, 100),
            "exactly at the cap fits"
        );
        assert!(!size.admit(1, 100), "one byte over goes to the next batch");
        assert_eq!(size.count, 2);
    }

    #[test]
    fn the_first_command_is_always_admitted() {
        let mut size = BatchSize::new();
        assert!(size.admit(500, 100));
        assert!(!size.admit(1, 100));
    }

    #[test]
    fn a_batch_stops_growing_at_its_count_cap() {
        let mut size = BatchSize::new();
        for _ in 0..BATCH_COMMANDS_MAX {
            assert!(size.admit(1, BATCH_BYTES_MAX));
        }
        assert!(!size.admit(1, BATCH_BYTES_MAX));
    }

    #[test]
    fn a_full_batch_of_largest_commands_encodes_within_the_cap() {
        // The accounting matches postcard's encoding of the Vec<Command> sent.
        let cmds: Vec<Command> = (0..3)
            .map(|i| Command::Set {
                key: format!("k{i}"),
                value: vec![0; 1000],
            })
            .collect();
        let mut size = BatchSize::new();
        for c in &cmds {
            assert!(size.admit(crate::limits::command_encoded_len(c), BATCH_BYTES_MAX));
        }
        let encoded = postcard::to_stdvec(&cmds).expect("encode");
        assert!(encoded.len() <= size.bytes);
    }
}
