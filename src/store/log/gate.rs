//! Group commit without a wait: at most one synced append flush is in flight; appends that
//! arrive while it runs wait here and share the next one, which is sent the moment the running
//! fsync completes.
//!
//! raft-log's own grouping (`flush_batch_wait`) holds every first request for a fixed time to
//! gather more, which a lone write pays in full on the leader and on each follower. The gate
//! costs a lone write nothing, and under load it batches as well: everything that arrives during
//! one fsync shares the next.
//!
//! Lock order: the `RaftLog` mutex before the gate's. raft-log's flush thread (which runs
//! [`Gate::synced`]) takes only the gate's lock and never the log's: a sender holding the log
//! lock may be blocked in raft-log on the flush thread's progress (its queue is bounded).

use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use openraft::storage::IOFlushed;
use raft_log::RaftLog;
use raft_log::api::raft_log_writer::RaftLogWriter;

use crate::metrics::storage::FsyncTimer;
use crate::raft::types::TypeConfig;
use crate::store::log::FlushDone;
use crate::store::log::WalTypes;

/// An append's completion: openraft's callback and the timer of its fsync.
pub(crate) type Waiting = (IOFlushed<TypeConfig>, FsyncTimer);

#[derive(Default)]
struct State {
    /// A synced append flush has been sent and its callback has not run yet.
    in_flight: bool,
    /// Appends written to the log (in raft-log's pending buffer) after the in-flight flush was
    /// sent, in append order.
    waiting: Vec<Waiting>,
    /// Where the next flush is sent from when the flush thread finds appends waiting.
    runtime: Option<tokio::runtime::Handle>,
}

/// See the module docs. Shared by a `LogStore`'s clones.
#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    /// Held by a test to stall the flush thread at the start of a gated flush's callback.
    #[cfg(test)]
    stall: Mutex<()>,
}

type Log = Arc<Mutex<RaftLog<WalTypes>>>;

impl Gate {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (flags and a list), so a poisoned lock is
        // taken over rather than turned into a second failure.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Completes `waiting` after the entries just appended to `log` are durable. The caller
    /// holds the log lock and has appended the entries.
    pub(crate) fn submit(
        self: &Arc<Self>,
        log: &mut RaftLog<WalTypes>,
        shared: &Log,
        waiting: Waiting,
    ) -> io::Result<()> {
        {
            let mut state = self.state();
            if state.runtime.is_none() {
                state.runtime = tokio::runtime::Handle::try_current().ok();
            }
            if state.in_flight && state.runtime.is_some() {
                // The entries are in raft-log's buffer, behind the flush in flight: the next
                // flush (sent when that one completes) writes and syncs them.
                state.waiting.push(waiting);
                return Ok(());
            }
            state.in_flight = true;
        }
        let batch = Batch::new(self.clone(), shared.clone(), vec![waiting]);
        // On an error raft-log drops the request, and `Batch::drop` fails its appends.
        log.flush(true, Some(FlushDone::Gated(batch)))
    }

    /// Sends one synced flush for every append waiting.
    async fn send_waiting(self: Arc<Self>, log: Log) {
        let mut guard = match log.lock() {
            Ok(guard) => guard,
            Err(_) => {
                self.fail_waiting(&io::Error::other("raft log lock poisoned"));
                return;
            }
        };
        let appends = std::mem::take(&mut self.state().waiting);
        let batch = Batch::new(self.clone(), log.clone(), appends);
        // On an error raft-log drops the request, and `Batch::drop` fails its appends.
        let _ = guard.flush(true, Some(FlushDone::Gated(batch)));
    }

    /// Stalls the flush thread in the next gated callback until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn stall_for_test(&self) -> MutexGuard<'_, ()> {
        self.stall.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many appends wait behind the flush in flight.
    #[cfg(test)]
    pub(crate) fn waiting_for_test(&self) -> usize {
        self.state().waiting.len()
    }

    /// Fails every waiting append and opens the gate (the WAL is broken: openraft stops on the
    /// error).
    fn fail_waiting(&self, e: &io::Error) {
        let waiting = {
            let mut state = self.state();
            state.in_flight = false;
            std::mem::take(&mut state.waiting)
        };
        complete(waiting, Err(e));
    }
}

fn complete(appends: Vec<Waiting>, res: Result<(), &io::Error>) {
    for (callback, timer) in appends {
        timer.done();
        callback.io_completed(res.map_err(|e| io::Error::new(e.kind(), e.to_string())));
    }
}

/// The appends one gated flush completes. Dropped unsent (raft-log refused the request, or its
/// flush thread stopped with it queued), it fails them and everything waiting behind it, so no
/// append is left without an answer.
pub(crate) struct Batch {
    gate: Arc<Gate>,
    log: Log,
    appends: Vec<Waiting>,
    done: bool,
}

impl Batch {
    fn new(gate: Arc<Gate>, log: Log, appends: Vec<Waiting>) -> Batch {
        Batch {
            gate,
            log,
            appends,
            done: false,
        }
    }

    /// Runs on raft-log's flush thread once the fsync covering the batch completed (or failed).
    /// Must not take the log lock (module docs): the next flush is sent from a task.
    pub(crate) fn synced(mut self, res: io::Result<()>) {
        self.done = true;
        #[cfg(test)]
        drop(self.gate.stall.lock());
        {
            let mut state = self.gate.state();
            if state.waiting.is_empty() {
                state.in_flight = false;
            } else if let Some(runtime) = &state.runtime {
                // `in_flight` stays set until the task has sent the next flush, so appends
                // arriving meanwhile join it.
                runtime.spawn(self.gate.clone().send_waiting(self.log.clone()));
            }
        }
        // The callbacks must run only now, after the fsync that covers their entries.
        complete(std::mem::take(&mut self.appends), res.as_ref().map(|_| ()));
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let e = io::Error::other("the raft log dropped a flush request (its flush thread stopped)");
        complete(std::mem::take(&mut self.appends), Err(&e));
        self.gate.fail_waiting(&e);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use openraft::type_config::TypeConfigExt;

    use super::*;
    use crate::store::log::LogStore;

    /// A batch raft-log drops unsent (its flush thread stopped) fails its appends and every
    /// append waiting behind it, and opens the gate: none is left without an answer.
    #[tokio::test]
    async fn a_batch_dropped_unsent_fails_its_appends_and_the_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), Some(Duration::ZERO)).unwrap();
        let gate = store.gate.clone().unwrap();
        let (tx_sent, rx_sent) = TypeConfig::oneshot();
        let (tx_waiting, rx_waiting) = TypeConfig::oneshot();
        {
            let mut state = gate.state();
            state.in_flight = true;
            state
                .waiting
                .push((IOFlushed::signal(tx_waiting), store.metrics.fsync_timer()));
        }
        let batch = Batch::new(
            gate.clone(),
            store.inner.clone(),
            vec![(IOFlushed::signal(tx_sent), store.metrics.fsync_timer())],
        );
        drop(batch);
        assert!(rx_sent.await.unwrap().is_err());
        assert!(rx_waiting.await.unwrap().is_err());
        let state = gate.state();
        assert!(!state.in_flight && state.waiting.is_empty());
    }
}
