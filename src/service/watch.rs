//! Watching a key range: one [`Watcher`] per watch, protocol-neutral (etcd's `Watch` stream in
//! `api/etcd/watch.rs` drives it; the HTTP API can too).
//!
//! Owns: where a watch is (the next revision it delivers), where its events come from, and
//! etcd's rules for a watch's range, start and compaction. Does not own: ids, streams,
//! progress timers or wire formats (the API layer), nor the changes themselves (the state
//! machine publishes them into [`crate::store::feed::Feed`] in apply order).
//!
//! How a watcher moves: it follows the feed's published head. While the revisions it needs are
//! in the feed's ring it reads them from there (one update per revision, as etcd's synced
//! watchers get, or one update for all of them when it is several revisions behind); when it
//! fell out of the ring (a slow consumer, or a start revision in the
//! past) it reads the store's retained history in windows of [`CATCHUP_REVISIONS_MAX`]
//! revisions until it is back in the ring. So a slow watcher costs the apply path nothing, and
//! it is never silently dropped: it catches up, or it ends with `Compacted` when the revisions
//! it needs were compacted away.
//!
//! Invariants: every change to a key in the range with revision ≥ the start is delivered
//! exactly once, in revision order, with no gaps (`next` only grows, by exactly the revisions
//! read); a watcher only sees published (applied) revisions.

use bytes::Bytes;

use crate::mvcc::Change;
use crate::mvcc::ChangeKind;
use crate::mvcc::MvccError;
use crate::mvcc::in_range;
use crate::store::feed::Since;
use crate::store::state_machine::StateMachineStore;

/// Ring batches a watcher reads in one step.
pub const BATCHES_PER_STEP_MAX: usize = 256;
/// Revisions a lagging watcher reads from the store's history at once (one response each).
pub const CATCHUP_REVISIONS_MAX: i64 = 100;

/// A watch request that etcd refuses (its messages, word for word).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
}

/// What to watch, with etcd's meaning of `key` / `range_end` already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// The first key (an empty key in a request means `\0`, the smallest key).
    pub key: Bytes,
    /// Empty: `key` only; `[0]`: every key ≥ `key`; else the keys in `key..range_end`.
    pub range_end: Bytes,
    /// The first revision to deliver; ≤ 0 means the next one written.
    pub start_revision: i64,
    /// Leave out puts / deletes (etcd's `NOPUT` / `NODELETE` filters).
    pub no_put: bool,
    pub no_delete: bool,
}

impl WatchSpec {
    /// A watch of `key..range_end` (etcd's request fields) from `start_revision`.
    pub fn new(key: &[u8], range_end: &[u8], start_revision: i64) -> Result<Self, WatchError> {
        let key = if key.is_empty() { &[0u8][..] } else { key };
        // etcd: a range end that is not "one key" ([]) nor "from key" ([0]) must lie above the key.
        if !range_end.is_empty() && range_end != [0] && key >= range_end {
            return Err(WatchError::EmptyRange);
        }
        Ok(WatchSpec {
            key: Bytes::copy_from_slice(key),
            range_end: Bytes::copy_from_slice(range_end),
            start_revision,
            no_put: false,
            no_delete: false,
        })
    }

    /// Whether the watch delivers `change`.
    pub fn wants(&self, change: &Change) -> bool {
        let kind_ok = match change.kind {
            ChangeKind::Put => !self.no_put,
            ChangeKind::Delete => !self.no_delete,
        };
        kind_ok && in_range(&self.key, &self.range_end, &change.kv.key)
    }
}

/// What a watcher delivers next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Changes in revision order, and the revision a response carrying them names (the
    /// changes' own revision when read from the ring, the head when caught up from history).
    Events {
        header_revision: i64,
        events: Vec<Change>,
    },
    /// The watch needs revisions below the compacted one; it ends here.
    Compacted { compact_revision: i64 },
}

/// One watch's position in the feed.
pub struct Watcher {
    store: StateMachineStore,
    spec: WatchSpec,
    /// The next revision to deliver.
    next: i64,
    /// The feed head when the watch was created (the revision its creation answers with).
    created: i64,
    head: tokio::sync::watch::Receiver<i64>,
    /// Updates read but not yet handed out (one ring step can yield several).
    pending: std::collections::VecDeque<Update>,
    /// Whether the start revision was checked against the compacted one.
    checked_start: bool,
    /// Started in the past and not yet caught up to the head seen then: what is read is
    /// delivered in one update per step (header = head), as etcd's unsynced watchers get it.
    replaying: bool,
}

impl Watcher {
    /// A watcher of `spec` on `store`'s feed.
    pub fn new(store: &StateMachineStore, spec: WatchSpec) -> Watcher {
        let feed = store.feed();
        let head = feed.subscribe();
        let created = *head.borrow();
        let next = match spec.start_revision {
            r if r <= 0 => created + 1,
            r => r,
        };
        let replaying = next <= created;
        Watcher {
            store: store.clone(),
            spec,
            next,
            replaying,
            created,
            head,
            pending: std::collections::VecDeque::new(),
            checked_start: false,
        }
    }

    /// The published revision when the watch was created.
    pub fn created_revision(&self) -> i64 {
        self.created
    }

    /// The next revision this watch will deliver.
    pub fn next_revision(&self) -> i64 {
        self.next
    }

    /// Whether the watch has delivered everything published (etcd's "synced").
    pub fn is_synced(&self) -> bool {
        self.pending.is_empty() && self.next > *self.head.borrow()
    }

    /// The newest published revision.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// The next update, waiting for one; `None` when the feed is gone (the node stops).
    /// Cancel-safe: state changes only after the one await point.
    pub async fn next(&mut self) -> Option<Update> {
        loop {
            if let Some(update) = self.pending.pop_front() {
                return Some(update);
            }
            if !self.checked_start {
                self.checked_start = true;
                let compacted = self.store.compact_revision();
                // etcd cancels a watch whose start revision was compacted (`minRev < compactRev`).
                if self.spec.start_revision > 0 && self.next < compacted {
                    return Some(Update::Compacted {
                        compact_revision: compacted,
                    });
                }
            }
            let head = *self.head.borrow_and_update();
            if self.next > head {
                self.head.changed().await.ok()?;
                continue;
            }
            if let Some(done) = self.step(head) {
                return Some(done);
            }
        }
    }

    /// Reads what is there from `next` up to `head` into `pending`; returns a final update
    /// (compaction) instead when the watch must end.
    fn step(&mut self, head: i64) -> Option<Update> {
        match self
            .store
            .feed()
            .batches_from(self.next, BATCHES_PER_STEP_MAX)
        {
            Since::Batches(batches) => {
                let Some(last) = batches.last().map(|b| b.revision) else {
                    // Nothing at or above `next` up to the head (no writes there).
                    self.advance(head + 1, head);
                    return None;
                };
                if self.replaying {
                    let changes = batches.iter().flat_map(|b| b.changes.iter());
                    self.deliver(head, self.wanted(changes));
                } else if batches.len() > 1 {
                    // Behind by several revisions (a busy feed, a slow client): one update for
                    // all of them, as etcd batches a lagging watcher's events, so a watcher
                    // catches up in one response instead of one per revision.
                    let changes = batches.iter().flat_map(|b| b.changes.iter());
                    self.deliver(last, self.wanted(changes));
                } else {
                    for batch in batches {
                        let events = self.wanted(batch.changes.iter());
                        self.deliver(batch.revision, events);
                    }
                }
                self.advance(last + 1, head);
                None
            }
            Since::Evicted => self.catch_up(head),
        }
    }

    /// One window of history from `next` (the ring no longer covers it).
    fn catch_up(&mut self, head: i64) -> Option<Update> {
        let to = head.min(self.next + CATCHUP_REVISIONS_MAX - 1);
        let (key, end) = (&self.spec.key, &self.spec.range_end);
        match self.store.changes_in(key, end, self.next, to) {
            Ok(changes) => {
                let events = self.wanted(changes.iter());
                self.deliver(head, events);
                self.advance(to + 1, head);
                None
            }
            Err(MvccError::Compacted { compact_revision }) => {
                Some(Update::Compacted { compact_revision })
            }
            Err(e) => {
                // The store is never behind the published head; if it is, retry at the next
                // head change rather than skip revisions.
                tracing::warn!(error = %e, next = self.next, head, "watch catch-up read failed");
                None
            }
        }
    }

    /// Queues `events` (if any) as one update naming `header_revision`.
    fn deliver(&mut self, header_revision: i64, events: Vec<Change>) {
        if !events.is_empty() {
            self.pending.push_back(Update::Events {
                header_revision,
                events,
            });
        }
    }

    /// Moves to `next`; a replay ends once it passed the head it read up to.
    fn advance(&mut self, next: i64, head: i64) {
        self.next = next;
        if next > head {
            self.replaying = false;
        }
    }

    fn wanted<'a>(&self, changes: impl Iterator<Item = &'a Change>) -> Vec<Change> {
        changes.filter(|c| self.spec.wants(c)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_etcd() {
        let all = WatchSpec::new(b"", b"\0", 0).expect("from the smallest key");
        assert_eq!(&all.key[..], b"\0");
        assert_eq!(WatchSpec::new(b"b", b"a", 0), Err(WatchError::EmptyRange));
        assert_eq!(WatchSpec::new(b"a", b"a", 0), Err(WatchError::EmptyRange));
        assert!(WatchSpec::new(b"a", b"", 0).is_ok(), "one key");
        assert!(WatchSpec::new(b"a", b"\0", 0).is_ok(), "from key");
    }

    #[test]
    fn filters_drop_the_kind_they_name() {
        let put = Change {
            kind: ChangeKind::Put,
            revision: crate::mvcc::Revision { main: 2, sub: 0 },
            kv: crate::mvcc::KeyValue {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            },
            prev_kv: None,
        };
        let delete = Change {
            kind: ChangeKind::Delete,
            ..put.clone()
        };
        let mut spec = WatchSpec::new(b"k", b"", 0).expect("spec");
        assert!(spec.wants(&put) && spec.wants(&delete));
        spec.no_put = true;
        assert!(!spec.wants(&put) && spec.wants(&delete));
        spec.no_delete = true;
        assert!(!spec.wants(&delete));
        let other = WatchSpec::new(b"j", b"", 0).expect("spec");
        assert!(!other.wants(&put), "another key");
    }
}
