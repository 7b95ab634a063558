//! One key's retained history: its puts and tombstones in revision order.
//!
//! Invariants (checked by [`KeyHistory::check`] when a snapshot is decoded):
//! - entries are strictly ascending by revision;
//! - a generation starts with a put of version 1 whose `create` is its own main revision, each
//!   further put has the same `create` and version +1, and a tombstone ends it;
//! - the history is never empty and never starts with a tombstone (compaction drops both).

use bytes::Bytes;
use smallvec::SmallVec;

use crate::mvcc::LiveRef;
use crate::mvcc::keys::Shared;
use crate::mvcc::keys::to_bytes;
use crate::mvcc::revision::Revision;
use crate::mvcc::types::KeyValue;

/// One put (value `Some`) or tombstone (`None`). A tombstone's `create`, `version` and `lease`
/// are 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub rev: Revision,
    pub create: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Option<Shared>,
}

/// A key's entries: the first one inside the history itself (most keys have one), more on the
/// heap. One allocation and one pointer to follow less per key than a `Vec`: a read or a write
/// of a key with one revision touches the key map's entry and the value, not a third place
/// (BENCHMARKS.md, "One entry inline").
pub(crate) type Entries = SmallVec<[Entry; 1]>;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct KeyHistory {
    pub entries: Entries,
}

impl Entry {
    /// The put as a `KeyValue` of the stored `key` (a tombstone: none); shares the key's and
    /// the value's allocations.
    pub fn to_kv(&self, key: &Shared) -> Option<KeyValue> {
        self.value.as_ref()?;
        self.to_kv_of(to_bytes(key))
    }

    /// The put as a borrowed [`LiveRef`] of `key` (a tombstone: none).
    pub fn live_ref<'a>(&'a self, key: &'a [u8]) -> Option<LiveRef<'a>> {
        Some(LiveRef {
            key,
            value: self.value.as_deref()?,
            create_revision: self.create,
            mod_revision: self.rev.main,
            version: self.version,
            lease: self.lease,
        })
    }

    /// [`Entry::to_kv`] with the key already as `Bytes`.
    pub fn to_kv_of(&self, key: Bytes) -> Option<KeyValue> {
        let value = self.value.as_ref()?;
        Some(KeyValue {
            key,
            create_revision: self.create,
            mod_revision: self.rev.main,
            version: self.version,
            value: to_bytes(value),
            lease: self.lease,
        })
    }
}

impl KeyHistory {
    /// The entry visible at main revision `rev`, if it is a put.
    pub fn live_at(&self, rev: i64) -> Option<&Entry> {
        let n = self.entries.partition_point(|e| e.rev.main <= rev);
        let e = self.entries.get(n.checked_sub(1)?)?;
        e.value.as_ref().map(|_| e)
    }

    /// The newest entry if it is a put: the key's live state at the head of history.
    pub fn live(&self) -> Option<&Entry> {
        self.entries.last().filter(|e| e.value.is_some())
    }

    /// Append a put at `rev`, continuing the live generation or starting a new one.
    pub fn put(&mut self, rev: Revision, value: Shared, lease: i64) -> &Entry {
        let (create, version) = match self.live() {
            Some(prev) => (prev.create, prev.version + 1),
            None => (rev.main, 1),
        };
        let entry = Entry {
            rev,
            create,
            version,
            lease,
            value: Some(value),
        };
        self.push(entry);
        &self.entries[self.entries.len() - 1]
    }

    /// Most keys have one entry (inline) and overwritten ones two until a compaction: grow by
    /// half (1 inline, then 2, 3, 4, 6, 9, … on the heap) instead of doubling from 4, which
    /// would cost four entries (224 bytes) per key with history.
    fn push(&mut self, e: Entry) {
        if self.entries.len() == self.entries.capacity() {
            self.entries.reserve_exact((self.entries.len() / 2).max(1));
        }
        self.entries.push(e);
    }

    pub fn tombstone(&mut self, rev: Revision) {
        self.push(Entry {
            rev,
            create: 0,
            version: 0,
            lease: 0,
            value: None,
        });
    }

    /// Drop what no read at a revision ≥ `at` can see: everything before the entry visible at
    /// `at`, and that entry too if it is a tombstone. Answers whether the history is now empty.
    pub fn compact(&mut self, at: i64) -> bool {
        let keep_from = self.retained_from(at);
        if keep_from > 0 {
            self.entries.drain(..keep_from);
            // One entry left goes back inline (its heap allocation freed); a longer history
            // gives back slack past twice its length.
            if self.entries.len() <= 1 || self.entries.capacity() > 2 * self.entries.len() {
                self.entries.shrink_to_fit();
            }
        }
        self.entries.is_empty()
    }

    /// The index of the first entry a compaction at `at` keeps: the newest entry at or below
    /// `at` if it is a put (reads at `at` see it), else the one after it. 0 on a history already
    /// compacted at `at` (or never below it).
    pub fn retained_from(&self, at: i64) -> usize {
        let n = self.entries.partition_point(|e| e.rev.main <= at);
        match n.checked_sub(1) {
            Some(visible) if self.entries[visible].value.is_some() => visible,
            _ => n,
        }
    }

    /// The entries a store compacted at `compacted` holds at revision `rev` (≥ `compacted`):
    /// what a snapshot or hash at `rev` covers, whether or not a compaction's removal of older
    /// entries has run yet (see `Store::hold_compaction`).
    pub fn retained_at(&self, compacted: i64, rev: i64) -> &[Entry] {
        let to = self.entries.partition_point(|e| e.rev.main <= rev);
        let from = self.retained_from(compacted).min(to);
        &self.entries[from..to]
    }

    /// Validate the invariants above against the store's revisions.
    pub fn check(&self, current: i64) -> Result<(), &'static str> {
        let first = self.entries.first().ok_or("empty key history")?;
        if first.value.is_none() {
            return Err("key history starts with a tombstone");
        }
        let mut prev: Option<&Entry> = None;
        for e in &self.entries {
            if e.rev.main < 1 || e.rev.main > current || e.rev.sub < 0 {
                return Err("revision out of range");
            }
            let live_prev = prev.filter(|p| p.value.is_some());
            if prev.is_some_and(|p| e.rev <= p.rev) {
                return Err("revisions not ascending");
            }
            match (&e.value, live_prev) {
                (None, _) if e.create != 0 || e.version != 0 || e.lease != 0 => {
                    return Err("tombstone with fields");
                }
                (None, None) if prev.is_some() => return Err("tombstone after tombstone"),
                (None, _) => {}
                (Some(_), Some(p)) if e.create != p.create || e.version != p.version + 1 => {
                    return Err("put does not continue its generation");
                }
                // The first retained put may be mid-generation (history before it compacted).
                (Some(_), None) if prev.is_some() && (e.create != e.rev.main || e.version != 1) => {
                    return Err("generation does not start at version 1");
                }
                (Some(_), _) if e.create < 1 || e.create > e.rev.main || e.version < 1 => {
                    return Err("bad create revision or version");
                }
                (Some(_), _) => {}
            }
            prev = Some(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(h: &mut KeyHistory, main: i64) {
        h.put(Revision { main, sub: 0 }, Shared::from(&b"v"[..]), 0);
    }

    #[test]
    fn one_entry_lives_inline_and_goes_back_inline_after_a_compaction() {
        let mut h = KeyHistory::default();
        put(&mut h, 2);
        assert!(!h.entries.spilled(), "a key's first entry is inline");
        put(&mut h, 3);
        put(&mut h, 4);
        assert!(h.entries.spilled(), "history goes to the heap");
        assert!(!h.compact(3));
        assert_eq!(h.entries.len(), 2);
        assert!(!h.compact(4));
        assert_eq!(h.entries.len(), 1);
        assert!(!h.entries.spilled(), "one entry left: inline again");
        assert_eq!(h.live().map(|e| e.rev.main), Some(4));
    }
}
