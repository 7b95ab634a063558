//! The feed of applied changes: what watchers read. The state machine publishes each applied
//! write's changes here, in apply order, after the store holds them; watchers follow the
//! published revision and read recent revisions from a bounded ring, older ones from the store's
//! history (`service::watch`).
//!
//! Owns: the ring of recent revisions' changes and the published revision. Does not own:
//! watchers, their filters and their pace — a watcher never holds anything here, so a slow
//! watcher costs the apply path nothing (it falls out of the ring and catches up from history).
//!
//! Invariants:
//! - every revision in `base..=head` that changed something has its changes in the ring, in
//!   revision order (revisions that changed nothing have no batch);
//! - `head` only grows, except when a snapshot is installed (a jump: the ring restarts empty
//!   above the snapshot's revision, and every watcher below it catches up from the store); a
//!   restart's replay, published nowhere, ends with the same jump (`state_machine.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;

use crate::mvcc::Change;

/// Bytes of changes the ring keeps (keys and values counted), at most.
pub const RING_BYTES_MAX: usize = 64 << 20;
/// Revisions the ring keeps, at most: about a second of writes at this machine's peak (~20k
/// revisions/s). A watcher further behind catches up from the store's history (slower, same
/// events). Each kept revision costs far more than its counted bytes (the `Change` records, the
/// batch, the `Bytes` handles, and the log entry whose key it shares): at 1M keys a node's RSS
/// was 529 MiB with 100,000 and 454 with 25,000 (BENCHMARKS.md, "Memory per key").
pub const RING_REVISIONS_MAX: usize = 25_000;

/// One applied revision's changes.
#[derive(Debug)]
pub struct Batch {
    pub revision: i64,
    pub changes: Vec<Change>,
}

impl Batch {
    /// Bytes this batch accounts for in the ring.
    fn bytes(&self) -> usize {
        self.changes
            .iter()
            .map(|c| {
                let prev = c
                    .prev_kv
                    .as_ref()
                    .map_or(0, |p| p.key.len() + p.value.len());
                64 + c.kv.key.len() + c.kv.value.len() + prev
            })
            .sum()
    }
}

/// What [`Feed::batches_from`] answers.
#[derive(Debug)]
pub enum Since {
    /// Every batch from the asked revision up to the head (possibly none).
    Batches(Vec<Arc<Batch>>),
    /// The asked revision is older than the ring: read it from the store's history.
    Evicted,
}

#[derive(Debug)]
struct Ring {
    /// The oldest revision the ring is complete from.
    base: i64,
    batches: VecDeque<Arc<Batch>>,
    bytes: usize,
}

/// The feed; shared by the state machine (publisher) and every watcher.
#[derive(Debug)]
pub struct Feed {
    ring: Mutex<Ring>,
    head: tokio::sync::watch::Sender<i64>,
}

impl Feed {
    /// A feed whose store is at `revision`.
    pub fn new(revision: i64) -> Feed {
        Feed {
            ring: Mutex::new(Ring {
                base: revision + 1,
                batches: VecDeque::new(),
                bytes: 0,
            }),
            head: tokio::sync::watch::Sender::new(revision),
        }
    }

    /// The newest published revision.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Follows the published revision (a watcher awaits `changed()` on it).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Publishes applied revisions' changes (`(revision, changes)`, ascending: one log entry's,
    /// up to a batch of 512 writes), under one lock and with one wake-up of the watchers.
    /// Called by the state machine only, in apply order, after the store holds the revisions.
    pub fn publish(&self, revisions: Vec<(i64, Vec<Change>)>) {
        let Some(head) = revisions.last().map(|(revision, _)| *revision) else {
            return;
        };
        // Dropped after the lock is released: freeing evicted changes is most of a publish.
        let mut evicted = Vec::new();
        {
            let mut ring = self.lock();
            for (revision, changes) in revisions {
                let batch = Arc::new(Batch { revision, changes });
                ring.bytes += batch.bytes();
                ring.batches.push_back(batch);
            }
            while ring.batches.len() > RING_REVISIONS_MAX || ring.bytes > RING_BYTES_MAX {
                let Some(old) = ring.batches.pop_front() else {
                    break;
                };
                ring.bytes = ring.bytes.saturating_sub(old.bytes());
                ring.base = old.revision + 1;
                evicted.push(old);
            }
        }
        // Must publish the head after the batches are in the ring: a watcher woken by the new
        // head finds their changes there.
        self.head.send_replace(head);
    }

    /// The store jumped to `revision` (a snapshot was installed, or a restart replayed its log
    /// without publishing it): the ring restarts empty above it, and watchers below it catch up
    /// from the store's history.
    pub fn reset(&self, revision: i64) {
        {
            let mut ring = self.lock();
            ring.batches.clear();
            ring.bytes = 0;
            ring.base = revision + 1;
        }
        self.head.send_replace(revision);
    }

    /// The first `batches_max` batches with revision ≥ `from`, or `Evicted` if the ring no
    /// longer covers `from`.
    pub fn batches_from(&self, from: i64, batches_max: usize) -> Since {
        let ring = self.lock();
        if from < ring.base {
            return Since::Evicted;
        }
        let start = ring.batches.partition_point(|b| b.revision < from);
        let batches = ring.batches.range(start..).take(batches_max);
        Since::Batches(batches.cloned().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // The ring is consistent after every statement that can panic (none do while it is
        // held), so a poisoned lock's data is still good.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::ChangeKind;
    use crate::mvcc::KeyValue;
    use crate::mvcc::Revision;

    fn change(rev: i64, value_bytes: usize) -> Change {
        Change {
            kind: ChangeKind::Put,
            revision: Revision { main: rev, sub: 0 },
            kv: KeyValue {
                key: bytes::Bytes::from_static(b"k"),
                value: bytes::Bytes::from(vec![b'v'; value_bytes]),
                mod_revision: rev,
                ..KeyValue::default()
            },
            prev_kv: None,
        }
    }

    fn revisions(since: Since) -> Option<Vec<i64>> {
        match since {
            Since::Batches(b) => Some(b.iter().map(|b| b.revision).collect()),
            Since::Evicted => None,
        }
    }

    #[test]
    fn batches_from_a_revision_in_order_and_empty_above_the_head() {
        let feed = Feed::new(1);
        for rev in 2..=5 {
            feed.publish(vec![(rev, vec![change(rev, 1)])]);
        }
        assert_eq!(feed.head(), 5);
        assert_eq!(revisions(feed.batches_from(2, 100)), Some(vec![2, 3, 4, 5]));
        assert_eq!(revisions(feed.batches_from(4, 100)), Some(vec![4, 5]));
        assert_eq!(
            revisions(feed.batches_from(3, 1)),
            Some(vec![3]),
            "at most batches_max"
        );
        assert_eq!(revisions(feed.batches_from(6, 100)), Some(vec![]));
        assert_eq!(
            revisions(feed.batches_from(1, 100)),
            None,
            "before the feed began"
        );
    }

    #[test]
    fn a_full_ring_evicts_the_oldest_and_says_so() {
        let feed = Feed::new(1);
        let big = RING_BYTES_MAX / 3;
        for rev in 2..=5 {
            feed.publish(vec![(rev, vec![change(rev, big)])]);
        }
        assert_eq!(revisions(feed.batches_from(2, 100)), None);
        assert_eq!(revisions(feed.batches_from(3, 100)), None);
        assert_eq!(revisions(feed.batches_from(4, 100)), Some(vec![4, 5]));
    }

    #[test]
    fn a_reset_restarts_above_the_snapshot() {
        let feed = Feed::new(1);
        feed.publish(vec![(2, vec![change(2, 1)])]);
        feed.reset(10);
        assert_eq!(feed.head(), 10);
        assert_eq!(revisions(feed.batches_from(3, 100)), None);
        assert_eq!(revisions(feed.batches_from(11, 100)), Some(vec![]));
        feed.publish(vec![(11, vec![change(11, 1)])]);
        assert_eq!(revisions(feed.batches_from(11, 100)), Some(vec![11]));
    }

    #[test]
    fn one_publish_of_many_revisions_keeps_them_all_in_order_and_the_ring_bounded() {
        let feed = Feed::new(1);
        let head = 1 + RING_REVISIONS_MAX as i64 + 10;
        feed.publish((2..=head).map(|rev| (rev, vec![change(rev, 1)])).collect());
        assert_eq!(feed.head(), head);
        assert_eq!(revisions(feed.batches_from(11, 1)), None, "evicted");
        let kept = revisions(feed.batches_from(12, usize::MAX)).expect("in the ring");
        assert_eq!(kept, (12..=head).collect::<Vec<_>>());
        feed.publish(Vec::new());
        assert_eq!(feed.head(), head, "nothing published, the head stays");
    }
}
