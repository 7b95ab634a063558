//! The batch queue under both write paths: the leader's proposals of client writes
//! (`raft::propose`) and a follower's batches of writes forwarded to the leader
//! (`raft::forward_batch`). At most one batch is under way; the writes that arrive meanwhile wait
//! and go together as the next one. And gathering: holding the next batch for the writers just
//! answered (`raft::propose`'s module doc, "Gathering").
//!
//! What a batch *is* (a log entry, a request to the leader) is the [`BatchSender`]'s; the queue
//! decides only when a write waits, when a batch goes, and when it is held.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use crate::limits::BATCH_COMMANDS_MAX;
use crate::raft::types::Command;

/// The writer of the write being placed: the client connection it came on
/// ([`crate::serve::connection_id`]), so that a hold can tell the writers it waits for from
/// other writes arriving (0: none known, e.g. a batch a follower forwarded).
fn current_writer() -> u64 {
    crate::serve::connection_id().unwrap_or(0)
}

/// Gathering (see the module doc): a proposal that answered writes from at least this many
/// writers may hold the next batch for them.
pub const GATHER_WRITERS_MIN: usize = 8;
/// ... until this share of them, in percent, has written again.
pub const GATHER_PERCENT: usize = 90;
/// Proposals that hold nothing after a hold ran out; doubled for each further one that runs
/// out, up to [`GATHER_PAUSE_PROPOSALS_MAX`]. A pause ends early when the writers a proposal
/// answered during it come back as a hold would have needed (`Queue::watch`).
pub const GATHER_PAUSE_PROPOSALS: u32 = 16;
pub const GATHER_PAUSE_PROPOSALS_MAX: u32 = 8192;
/// Watches in a row that must fill to end a pause: writers that pause between writes now and
/// then all come back within the hold time by chance, closed-loop writers every time. (Ending
/// it on one watch let 131–140 holds run out per 10 s of 48 writers pausing 5 ms, against 9–23
/// with 3: BENCHMARKS.md, tenth sitting.)
pub const GATHER_WATCH_STREAK: u32 = 3;

/// Sends the batches of one [`BatchQueue`].
pub trait BatchSender: Send + Sync + 'static {
    /// What each write's caller is answered.
    type Reply: Send + 'static;

    /// Sends the writes of `batch` (each caller still waiting or not) and answers each through
    /// its [`Waiting::reply`]; a caller whose reply is dropped unanswered gets "unknown".
    fn send(&self, batch: Vec<Waiting<Self::Reply>>) -> impl Future<Output = ()> + Send;
}

/// Gathering's time and counters (clones count into the same counters).
#[derive(Clone)]
pub struct GatherConfig {
    /// How long the next batch may be held for the writers of the one just answered (zero:
    /// never held).
    pub wait: Duration,
    /// `raftkv_server_write_holds_filled` and `raftkv_server_write_holds_expired`.
    pub holds_filled: Counter,
    pub holds_expired: Counter,
}

/// A batch queue; clones share it.
pub struct BatchQueue<S: BatchSender> {
    inner: Arc<Inner<S>>,
}

impl<S: BatchSender> Clone for BatchQueue<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S: BatchSender> {
    sender: S,
    gather: GatherConfig,
    /// Largest encoded batch ([`EMPTY_BATCH_BYTES`] and its commands).
    batch_bytes_max: usize,
    queue: Mutex<Queue<S::Reply>>,
}

/// The writes waiting for the next batch.
struct Queue<R> {
    /// A batch (or a lone write that found the queue idle) is under way, or the next batch is
    /// being held (`hold`): writes that arrive now wait.
    busy: bool,
    /// The next batch is held for the writers just answered (until they write again or its
    /// timer runs out).
    hold: Option<Hold>,
    /// Holds started so far: tells a hold's timer whether its hold is still the current one.
    holds: u64,
    /// Proposals that may not hold the next batch (after a hold ran out).
    hold_paused: u32,
    /// How many proposals the next hold that runs out pauses holding for: doubles with each one
    /// that runs out, back to [`GATHER_PAUSE_PROPOSALS`] when one fills.
    hold_pause_next: u32,
    /// While holding is paused: the writers the last proposal answered, watched without holding
    /// anything, and when it ended. If enough of them write again within the hold time, a hold
    /// would have filled: the clients are closed-loop (again), and the pause ends. So a phase of
    /// clients that pause between writes does not keep gathering off for the closed-loop
    /// clients that come after them.
    watch: Option<(Hold, Instant)>,
    /// Watches in a row that filled in time.
    watch_streak: u32,
    waiting: Vec<Waiting<R>>,
    /// The encoded size of the batch `waiting` would make.
    bytes: usize,
}

struct Hold {
    /// The writers the proposal before it answered (sorted, no duplicates).
    answered: Vec<u64>,
    /// Which of them have written since (by position in `answered`): a connection that
    /// carries several writes at once (HTTP/2) counts once.
    back: Vec<bool>,
    /// How many of `back` are set.
    returned: usize,
    /// Release the batch once this many writers are back.
    target: usize,
    /// Which hold this is (`Queue::holds` when it started).
    id: u64,
}

impl Hold {
    fn new(answered: Vec<u64>, id: u64) -> Self {
        Self {
            back: vec![false; answered.len()],
            target: (answered.len() * GATHER_PERCENT).div_ceil(100),
            answered,
            returned: 0,
            id,
        }
    }

    /// Notes a write from `writer`; true when it is one of the writers held for, back for the
    /// first time.
    fn came_back(&mut self, writer: u64) -> bool {
        let Ok(i) = self.answered.binary_search(&writer) else {
            return false;
        };
        if self.back[i] {
            return false;
        }
        self.back[i] = true;
        self.returned += 1;
        true
    }
}

/// A write waiting for the next batch.
pub struct Waiting<R> {
    pub cmd: Command,
    pub reply: oneshot::Sender<R>,
    /// Its writer (see [`current_writer`]).
    writer: u64,
}

/// Where a write goes when it arrives.
pub enum Place<S: BatchSender> {
    /// Nothing is under way: its caller sends it now, alone, holding the turn until it is
    /// answered (dropping the [`Turn`] hands it on).
    Lead(Command, Turn<S>),
    /// It waits for the next batch.
    Wait(oneshot::Receiver<S::Reply>),
    /// Its caller sends it alone at once, outside the turn (not batchable, or the batch is
    /// full).
    Alone(Command),
}

/// The encoded size of an empty batch: its tag and the longest count prefix.
pub const EMPTY_BATCH_BYTES: usize = 1 + crate::limits::varint_len(BATCH_COMMANDS_MAX);

impl<R> Queue<R> {
    fn new() -> Self {
        Self {
            busy: false,
            hold: None,
            holds: 0,
            hold_paused: 0,
            hold_pause_next: GATHER_PAUSE_PROPOSALS,
            watch: None,
            watch_streak: 0,
            waiting: Vec::new(),
            bytes: EMPTY_BATCH_BYTES,
        }
    }

    /// A hold (or a watch) for the writers `answered`, counting those already back among the
    /// waiting writes (a writer with several writes under way may have written again).
    fn hold_for(&self, answered: Vec<u64>) -> Hold {
        let mut hold = Hold::new(answered, self.holds + 1);
        for w in &self.waiting {
            hold.came_back(w.writer);
        }
        hold
    }

    /// Holding is paused: watch the writers `answered` (nothing is held) unless a watch
    /// started less than `wait` ago is still on.
    fn watch_paused(&mut self, answered: Vec<u64>, wait: Duration) {
        let now = Instant::now();
        if let Some((_, since)) = &self.watch {
            if now.duration_since(*since) <= wait {
                return;
            }
            self.watch_streak = 0; // its writers did not come back in time
        }
        let watch = self.hold_for(answered);
        if watch.returned >= watch.target {
            self.watch_filled(true); // already back: a hold would have filled at once
        } else {
            self.watch = Some((watch, now));
        }
    }

    /// The watch filled (its writers came back), `in_time` or not: enough in a row in time end
    /// the pause.
    fn watch_filled(&mut self, in_time: bool) {
        self.watch = None;
        self.watch_streak = if in_time { self.watch_streak + 1 } else { 0 };
        if self.watch_streak >= GATHER_WATCH_STREAK {
            self.end_pause();
        }
    }

    /// Writers came back as a hold needs while holding was paused: hold again from the next
    /// proposal on.
    fn end_pause(&mut self) {
        self.hold_paused = 0;
        self.hold_pause_next = GATHER_PAUSE_PROPOSALS;
        self.watch = None;
        self.watch_streak = 0;
    }

    /// Takes the waiting writes, or marks the queue idle when there are none.
    fn take(&mut self) -> Option<Vec<Waiting<R>>> {
        self.hold = None;
        if self.waiting.is_empty() {
            self.busy = false;
            return None;
        }
        self.bytes = EMPTY_BATCH_BYTES;
        Some(std::mem::take(&mut self.waiting))
    }
}

impl<S: BatchSender> BatchQueue<S> {
    /// A queue whose batches `sender` sends, each at most `batch_bytes_max` encoded.
    pub fn new(sender: S, gather: GatherConfig, batch_bytes_max: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                sender,
                gather,
                batch_bytes_max,
                queue: Mutex::new(Queue::new()),
            }),
        }
    }

    /// What sends this queue's batches.
    pub fn sender(&self) -> &S {
        &self.inner.sender
    }

    /// Whether nothing is under way, held or waiting.
    pub fn is_idle(&self) -> bool {
        !self.lock().busy
    }

    /// Places a write that arrives: `batchable` is whether it may share a batch at all.
    pub fn place(&self, cmd: Command, batchable: bool) -> Place<S> {
        if !batchable {
            return Place::Alone(cmd);
        }
        let bytes = crate::limits::command_encoded_len(&cmd);
        let mut queue = self.lock();
        if !queue.busy {
            queue.busy = true;
            drop(queue);
            // One writer is below `GATHER_WRITERS_MIN`: a lone write never holds the next
            // batch, so its turn names no writers (and allocates nothing).
            let turn = Turn {
                queue: self.clone(),
                writers: Vec::new(),
            };
            return Place::Lead(cmd, turn);
        }
        let fits = queue.waiting.len() < BATCH_COMMANDS_MAX
            && queue.bytes + bytes <= self.inner.batch_bytes_max;
        if !fits {
            // A held batch that is full goes now: nothing more would join it.
            self.release_held(queue);
            return Place::Alone(cmd);
        }
        let writer = current_writer();
        let (reply, answer) = oneshot::channel();
        queue.waiting.push(Waiting { cmd, reply, writer });
        queue.bytes += bytes;
        if writer == 0 {
            return Place::Wait(answer);
        }
        if let Some(hold) = &mut queue.hold
            && hold.came_back(writer)
            && hold.returned >= hold.target
        {
            self.release_held(queue);
        } else if let Some((watched, ended)) = &mut queue.watch
            && watched.came_back(writer)
            && watched.returned >= watched.target
        {
            // The clock is read only here: once per watch that fills.
            let in_time = ended.elapsed() <= self.inner.gather.wait;
            queue.watch_filled(in_time);
        }
        Place::Wait(answer)
    }

    /// Releases the held batch, if one is held: its writers came back (or it is full).
    fn release_held(&self, mut queue: MutexGuard<'_, Queue<S::Reply>>) {
        if queue.hold.is_none() {
            return;
        }
        self.inner.gather.holds_filled.inc();
        queue.hold_pause_next = GATHER_PAUSE_PROPOSALS;
        self.send_waiting(queue);
    }

    fn lock(&self) -> MutexGuard<'_, Queue<S::Reply>> {
        // The queue's state is whole after every statement that changes it: a panic elsewhere
        // while it was held leaves nothing half-done.
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The batch under way, which answered writes from `answered` (sorted writers), has
    /// ended: the writes that waited go out as the next batch, from a task of their own, or the
    /// queue goes idle — unless the next batch is held for those writers (see "Gathering").
    fn hand_on(&self, answered: Vec<u64>) {
        let mut queue = self.lock();
        let wait = self.inner.gather.wait;
        if !wait.is_zero() && answered.len() >= GATHER_WRITERS_MIN {
            if queue.hold_paused > 0 {
                queue.watch_paused(answered, wait);
            } else {
                let hold = queue.hold_for(answered);
                if hold.returned < hold.target {
                    queue.holds += 1;
                    let id = hold.id;
                    queue.hold = Some(hold);
                    drop(queue);
                    self.release_after(id, wait);
                    return;
                }
            }
        }
        queue.hold_paused = queue.hold_paused.saturating_sub(1);
        self.send_waiting(queue);
    }

    /// Releases the batch held by hold `id` after `wait` if it is still held then.
    fn release_after(&self, id: u64, wait: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.release_expired(id);
        };
        let this = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            this.release_expired(id);
        });
    }

    /// Hold `id` ran out, unless it was released before.
    fn release_expired(&self, id: u64) {
        let mut queue = self.lock();
        if queue.hold.as_ref().is_none_or(|h| h.id != id) {
            return; // released when its writers came back
        }
        // Its writers did not come back in time: they may not be closed-loop clients, and
        // holding would only delay the writes that join. Hold again only after a pause, longer
        // each time.
        self.inner.gather.holds_expired.inc();
        queue.hold_paused = queue.hold_pause_next;
        queue.hold_pause_next = (queue.hold_pause_next * 2).min(GATHER_PAUSE_PROPOSALS_MAX);
        self.send_waiting(queue);
    }

    /// Sends the waiting writes as the next batch, or lets the queue go idle when none wait.
    fn send_waiting(&self, mut queue: MutexGuard<'_, Queue<S::Reply>>) {
        let batch = queue.take();
        drop(queue);
        if let Some(batch) = batch {
            self.spawn_batch(batch);
        }
    }

    /// Sends `batch` from a task of its own, which holds the turn until it ends.
    fn spawn_batch(&self, batch: Vec<Waiting<S::Reply>>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // The runtime is gone (the node is stopping): the callers' receivers are dropped
            // with `batch`, and they answer "unknown".
            return;
        };
        let this = self.clone();
        let writers = known_writers(batch.iter().map(|w| w.writer));
        runtime.spawn(async move {
            let _turn = Turn {
                queue: this.clone(),
                writers,
            };
            this.inner.sender.send(batch).await;
        });
    }
}

/// The turn to send a batch, held by the batch of writes from `writers` under way; dropping it
/// hands the turn on.
pub struct Turn<S: BatchSender> {
    queue: BatchQueue<S>,
    /// Sorted, no duplicates, none unknown (0).
    writers: Vec<u64>,
}

/// `writers` sorted, without duplicates and without the unknown one (0): a [`Turn`]'s.
fn known_writers(writers: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut writers: Vec<u64> = writers.into_iter().filter(|&w| w != 0).collect();
    writers.sort_unstable();
    writers.dedup();
    writers
}

impl<S: BatchSender> Drop for Turn<S> {
    fn drop(&mut self) {
        self.queue.hand_on(std::mem::take(&mut self.writers));
    }
}

#[cfg(test)]
mod tests {
    use super::Hold;

    #[test]
    fn a_writer_back_counts_once() {
        let mut hold = Hold::new(vec![3, 5, 9], 1);
        assert_eq!(hold.target, 3, "90 % of 3 writers, rounded up");
        assert!(hold.came_back(5));
        assert!(!hold.came_back(5), "a second write on the same connection");
        assert!(!hold.came_back(4), "a writer not held for");
        assert_eq!(hold.returned, 1);
        assert!(hold.came_back(3) && hold.came_back(9));
        assert_eq!(hold.returned, hold.target);
    }
}
