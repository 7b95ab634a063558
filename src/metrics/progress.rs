//! Progress logs of long work (tracing, info level, structured fields): a learner's catch-up on
//! the leader during a join ([`CatchUpLog`]), a restart's recovery ([`Recovery`]), and the
//! [`Gate`] that keeps a progress line to one every [`PROGRESS_EVERY`] (snapshot sends use it).
//! Snapshot build and install log their size and duration where they happen
//! (`store/state_machine.rs`), sends in `raft/network.rs`.
//!
//! Owns: when and what these lines say. Does not own: the work they describe; nothing here
//! changes the outcome of a join, a recovery or a send.

use std::time::Duration;
use std::time::Instant;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::RaftLogStorage;

use crate::raft::types::NodeId;
use crate::raft::types::Raft;
use crate::store::log::LogStore;
use crate::store::state_machine::StateMachineStore;

/// At most one progress line per piece of work this often.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// `done` of `total` as a percentage with one decimal (100 when there is nothing to do).
pub fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        return 100.0;
    }
    let p = (done.min(total) as f64) * 100.0 / total as f64;
    (p * 10.0).floor() / 10.0
}

/// Lets a progress line through at most once per [`PROGRESS_EVERY`].
pub struct Gate {
    last: Instant,
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            last: Instant::now(),
        }
    }

    /// Whether a line is due (and if so, starts the next period).
    pub fn due(&mut self) -> bool {
        if self.last.elapsed() < PROGRESS_EVERY {
            return false;
        }
        self.last = Instant::now();
        true
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

/// While alive, logs a learner's replication progress on the leader every [`PROGRESS_EVERY`]
/// (first line at once): its matched index, the leader's last index, % done. Dropping it ends
/// the task.
pub struct CatchUpLog(tokio::task::JoinHandle<()>);

impl CatchUpLog {
    pub fn start(raft: &Raft, learner: NodeId, name: &str) -> CatchUpLog {
        let (raft, name) = (raft.clone(), name.to_string());
        let started = Instant::now();
        CatchUpLog(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tick.tick().await;
                let (matched, last) = {
                    let metrics = raft.metrics();
                    let m = metrics.borrow_watched();
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&learner).copied().flatten())
                        .map(|l| l.index);
                    (matched, m.last_log_index.unwrap_or(0))
                };
                tracing::info!(
                    learner = %name,
                    matched_index = matched.unwrap_or(0),
                    last_log_index = last,
                    behind_entries = last.saturating_sub(matched.unwrap_or(0)),
                    percent = percent(matched.unwrap_or(0), last),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "join: learner catching up"
                );
            }
        }))
    }
}

impl Drop for CatchUpLog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A node start's recovery, logged in steps: what the stores hold, the log replay (done by
/// `Raft::new`), and when the node serves.
pub struct Recovery {
    started: Instant,
    /// Whether the data dir held a log or a snapshot (a restart, not a first start).
    restart: bool,
    applied_before: u64,
    /// The committed index the log holds, if above the snapshot's: the replay ends there.
    committed: Option<u64>,
    replay_started: Instant,
}

impl Recovery {
    /// Logs what is to be replayed; call after both stores are open, right before `Raft::new`.
    pub async fn begin(started: Instant, log: &LogStore, sm: &StateMachineStore) -> Recovery {
        let last = log.last_log_id().ok().flatten().map(|l| l.index);
        let committed = log
            .clone()
            .read_committed()
            .await
            .ok()
            .flatten()
            .map(|l| l.index);
        let applied = sm.applied_index();
        let restart = last.is_some() || applied.is_some();
        let applied_before = applied.unwrap_or(0);
        if restart {
            let keys = sm.digest().2;
            tracing::info!(
                snapshot_applied_index = applied_before,
                snapshot_keys = keys,
                committed_index = committed.unwrap_or(0),
                last_log_index = last.unwrap_or(0),
                entries_to_replay = committed.unwrap_or(0).saturating_sub(applied_before),
                took_ms = started.elapsed().as_millis() as u64,
                "recovery 1/3: stores opened; replaying the committed log after the snapshot"
            );
        }
        Recovery {
            started,
            restart,
            applied_before,
            committed: committed.filter(|c| *c > applied_before),
            replay_started: Instant::now(),
        }
    }

    /// The last log index `Raft::new` will replay (the committed index the log holds), if it
    /// replays anything.
    pub fn replay_through(&self) -> Option<u64> {
        self.committed
    }

    /// Logs the replay's outcome; call right after `Raft::new` returned (it replays the
    /// committed log into the state machine before it returns; its metrics may lag, the state
    /// machine does not).
    pub fn replayed(&self, sm: &StateMachineStore) {
        if !self.restart {
            return;
        }
        let applied = sm.applied_index().unwrap_or(0);
        tracing::info!(
            applied_index = applied,
            replayed_entries = applied.saturating_sub(self.applied_before),
            took_ms = self.replay_started.elapsed().as_millis() as u64,
            "recovery 2/3: log replayed"
        );
    }

    /// Logs the time from the start until the listeners are bound.
    pub fn serving(&self) {
        let took_ms = self.started.elapsed().as_millis() as u64;
        if self.restart {
            tracing::info!(took_ms, "recovery 3/3: node serving");
        } else {
            tracing::info!(took_ms, "node serving (new data dir)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_bounded_and_rounded_down() {
        assert_eq!(percent(0, 0), 100.0);
        assert_eq!(percent(1, 3), 33.3);
        assert_eq!(percent(5, 3), 100.0);
        assert_eq!(percent(0, 10), 0.0);
    }
}
