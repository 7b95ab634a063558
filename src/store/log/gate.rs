//! Group commit without a wait: at most one synced append flush is in flight; appends that
//! arrive while it runs wait here and share the next one, which is sent the moment the running
//! fsync completes.
//!
//! raft-log's own grouping (`flush_batch_wait`) holds every first request for a fixed time to
//! gather more, which a lone write pays in full on the leader and on each follower. The gate
//! costs a lone write nothing, and under load it batches as well: everything that arrives during
//! one fsync shares the next.
//!
//! Bound: the appends waiting hold at most [`WAITING_BYTES_MAX`] of encoded entries (in
//! raft-log's buffer, not yet handed to its flush thread). An append that would pass it is sent at
//! once with everything waiting, as a second flush in flight, so a stalled disk meets raft-log's
//! own bounded queue (`flush_queue_max_bytes`) instead of a growing buffer here.
//!
//! Lock order: the `RaftLog` mutex before the gate's. raft-log's flush thread (which runs
//! [`Batch::synced`]) takes only the gate's lock and never the log's: a sender holding the log
//! lock may be blocked in raft-log on the flush thread's progress (its queue is bounded). Nor
//! does it ever hold the last reference to the log (a batch keeps a weak one): dropping a
//! `RaftLog` joins its flush thread.

use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::Weak;

use openraft::storage::IOFlushed;
use raft_log::RaftLog;
use raft_log::api::raft_log_writer::RaftLogWriter;

use crate::metrics::storage::FsyncTimer;
use crate::raft::types::TypeConfig;
use crate::store::log::FlushDone;
use crate::store::log::WalTypes;

/// Encoded entry bytes that may wait behind the flushes in flight (module docs).
pub(crate) const WAITING_BYTES_MAX: usize = 16 << 20;

/// An append's completion: openraft's callback and the timer of its fsync.
pub(crate) type Waiting = (IOFlushed<TypeConfig>, FsyncTimer);

#[derive(Default)]
struct State {
    /// Gated flushes sent whose callback has not run yet (one, unless the byte bound sent more).
    in_flight: usize,
    /// Appends written to the log (in raft-log's buffer) after the flushes in flight were sent,
    /// in append order, and their encoded bytes.
    waiting: Vec<Waiting>,
    waiting_bytes: usize,
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

/// What a batch keeps of the log: not a strong reference, which the flush thread would drop
/// last when the store goes away meanwhile, and dropping a `RaftLog` joins its flush thread.
type WeakLog = Weak<Mutex<RaftLog<WalTypes>>>;

impl Gate {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (counters and a list), so a poisoned lock
        // is taken over rather than turned into a second failure.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Completes `append` after the entries just appended to `log` (`bytes` of them, encoded)
    /// are durable. The caller holds the log lock and has appended the entries.
    pub(crate) fn submit(
        self: &Arc<Self>,
        log: &mut RaftLog<WalTypes>,
        shared: &Log,
        append: Waiting,
        bytes: usize,
    ) -> io::Result<()> {
        let appends = {
            let mut state = self.state();
            if state.runtime.is_none() {
                state.runtime = tokio::runtime::Handle::try_current().ok();
            }
            let fits = state.waiting_bytes.saturating_add(bytes) <= WAITING_BYTES_MAX;
            if state.in_flight > 0 && state.runtime.is_some() && fits {
                // The entries are in raft-log's buffer, behind the flush in flight: the next
                // flush (sent when the flushes in flight complete) writes and syncs them.
                state.waiting.push(append);
                state.waiting_bytes += bytes;
                return Ok(());
            }
            state.in_flight += 1;
            state.waiting_bytes = 0;
            let mut appends = std::mem::take(&mut state.waiting);
            appends.push(append);
            appends
        };
        let batch = Batch::new(self.clone(), Arc::downgrade(shared), appends);
        // On an error raft-log drops the request, and `Batch::drop` fails its appends.
        log.flush(true, Some(FlushDone::Gated(batch)))
    }

    /// Sends one synced flush for every append waiting (its `in_flight` slot is taken).
    async fn send_waiting(self: Arc<Self>, weak: WeakLog) {
        let Some(log) = weak.upgrade() else {
            return self.abandon_slot(&io::Error::other("raft log closed"));
        };
        self.send_waiting_to(&log, weak);
        // Dropping the last reference to the log joins raft-log's flush thread, which may be
        // in an fsync: not on a tokio worker (the store was closed while this task ran).
        if Arc::strong_count(&log) == 1 {
            tokio::task::spawn_blocking(move || drop(log));
        }
    }

    fn send_waiting_to(self: &Arc<Self>, log: &Mutex<RaftLog<WalTypes>>, weak: WeakLog) {
        let Ok(mut guard) = log.lock() else {
            return self.abandon_slot(&io::Error::other("raft log lock poisoned"));
        };
        let appends = {
            let mut state = self.state();
            if state.waiting.is_empty() {
                // An append past the byte bound took them along meanwhile.
                state.in_flight = state.in_flight.saturating_sub(1);
                return;
            }
            state.waiting_bytes = 0;
            std::mem::take(&mut state.waiting)
        };
        let batch = Batch::new(self.clone(), weak, appends);
        // On an error raft-log drops the request, and `Batch::drop` fails its appends.
        let _ = guard.flush(true, Some(FlushDone::Gated(batch)));
    }

    /// Stalls the flush thread in the next gated callback until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn stall_for_test(&self) -> MutexGuard<'_, ()> {
        self.stall.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many appends wait behind the flushes in flight, and how many flushes are in flight.
    #[cfg(test)]
    pub(crate) fn counts_for_test(&self) -> (usize, usize) {
        let state = self.state();
        (state.waiting.len(), state.in_flight)
    }

    /// Gives up a flush's slot and fails every append waiting (the store is gone, or the WAL
    /// is broken: openraft stops on the error).
    fn abandon_slot(&self, e: &io::Error) {
        let waiting = {
            let mut state = self.state();
            state.in_flight = state.in_flight.saturating_sub(1);
            state.waiting_bytes = 0;
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
    log: WeakLog,
    appends: Vec<Waiting>,
    done: bool,
}

impl Batch {
    fn new(gate: Arc<Gate>, log: WeakLog, appends: Vec<Waiting>) -> Batch {
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
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0
                && !state.waiting.is_empty()
                && let Some(runtime) = state.runtime.clone()
            {
                // The slot is the task's until it has sent the next flush, so appends arriving
                // meanwhile join that flush.
                state.in_flight = 1;
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
        self.gate.abandon_slot(&e);
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
            state.in_flight = 2;
            state
                .waiting
                .push((IOFlushed::signal(tx_waiting), store.metrics.fsync_timer()));
        }
        let batch = Batch::new(
            gate.clone(),
            Arc::downgrade(&store.inner),
            vec![(IOFlushed::signal(tx_sent), store.metrics.fsync_timer())],
        );
        drop(batch);
        assert!(rx_sent.await.unwrap().is_err());
        assert!(rx_waiting.await.unwrap().is_err());
        // The other flush in flight still owns its slot; nothing waits.
        assert_eq!(gate.counts_for_test(), (0, 1));
    }
}
