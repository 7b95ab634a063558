//! Compaction (etcd's `store.Compact` + `keyIndex.compact`) and the replica-comparable hash
//! (etcd's `HashByRev`, with our own encoding).

use crate::mvcc::Store;
use crate::mvcc::error::MvccError;

/// Answer of [`Store::hash_kv`], mirroring etcd's `HashKVResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    /// crc32 (IEEE) over the retained entries with main revision ≤ the hashed revision.
    pub hash: u32,
    /// The compacted revision the hash was taken above ([`crate::mvcc::NEVER_COMPACTED`] if none).
    pub compact_revision: i64,
    /// The store's current revision (the response header's).
    pub revision: i64,
}

impl Store {
    /// Drop every entry no read at a revision ≥ `rev` can see. Errors as etcd's
    /// `updateCompactRev`: at or below the last compaction → Compacted; above the current
    /// revision → FutureRevision. Answers the current revision (the response header's). The
    /// removal runs at once (O(keys)) unless held; see [`Store::compact_later`].
    pub fn compact(&mut self, rev: i64) -> Result<i64, MvccError> {
        let current = self.compact_later(rev)?;
        if self.compaction_holds == 0 {
            let owed = std::mem::take(&mut self.compaction_pending);
            self.keys.compact_keys(&owed, rev);
            self.compaction_owed = false;
        }
        Ok(current)
    }

    /// [`Store::compact`] whose removal of old entries is owed, done later a few keys at a time
    /// by [`Store::compact_step`]: the compaction takes effect at once for every answer (reads
    /// below `rev` fail; hashes and snapshots see history through
    /// [`KeyHistory::retained_at`], which skips what is owed), only the memory is freed later.
    /// The state machine compacts this way, so applying a compaction of a million keys does not
    /// stop the world for the whole pass.
    ///
    /// [`KeyHistory::retained_at`]: crate::mvcc::history::KeyHistory::retained_at
    pub fn compact_later(&mut self, rev: i64) -> Result<i64, MvccError> {
        if rev <= self.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        if rev > self.current {
            return Err(MvccError::FutureRevision {
                current_revision: self.current,
            });
        }
        self.compacted = rev;
        // A newer compaction subsumes an unfinished one: its pass goes on at `rev`, over the
        // keys left and those with history now (a key that gets some later has none at or
        // below `rev` to remove). O(1) unless a pass was unfinished.
        self.compaction_owed = true;
        let more = self.keys.take_with_history();
        if self.compaction_pending.is_empty() {
            self.compaction_pending = more; // O(1)
        } else {
            self.compaction_pending.extend(more);
        }
        Ok(self.current)
    }

    /// Removes what a compaction owes from at most `keys_max` of the keys it has left. Nothing
    /// while a snapshot writer holds compaction. Answers whether more is owed.
    pub fn compact_step(&mut self, keys_max: usize) -> bool {
        if !self.compaction_owed || self.compaction_holds > 0 {
            return self.compaction_owed;
        }
        let from = self.compaction_pending.len().saturating_sub(keys_max);
        let batch = self.compaction_pending.split_off(from);
        self.keys.compact_keys(&batch, self.compacted);
        self.compaction_owed = !self.compaction_pending.is_empty();
        self.compaction_owed
    }

    /// Holds compaction's removal of old entries until [`Store::release_compaction`], so a
    /// snapshot of the store as it is now can be written piece by piece while writes go on:
    /// writes only append entries (newer than the view), and only compaction removes entries.
    /// A compaction meanwhile moves the compacted revision (reads, hashes and snapshots answer
    /// as compacted: they see entries through [`KeyHistory::retained_at`]) and owes its removal,
    /// which [`Store::compact_step`] does after the release. Answers what a snapshot taken now
    /// holds. O(1).
    ///
    /// [`KeyHistory::retained_at`]: crate::mvcc::history::KeyHistory::retained_at
    pub fn hold_compaction(&mut self) -> crate::mvcc::snapshot::View {
        self.compaction_holds += 1;
        crate::mvcc::snapshot::View::of(self)
    }

    /// Ends one [`Store::hold_compaction`]. O(1): an owed removal goes on in
    /// [`Store::compact_step`].
    pub fn release_compaction(&mut self) {
        self.compaction_holds = self.compaction_holds.saturating_sub(1);
    }

    /// Whether a compaction's removal is owed.
    pub fn compaction_owed(&self) -> bool {
        self.compaction_owed
    }

    /// Whether a snapshot writer holds compaction's removal.
    pub fn compaction_held(&self) -> bool {
        self.compaction_holds > 0
    }

    /// etcd's HashKV: a hash of the key space's retained history up to `rev` (0 = current),
    /// equal on every replica that applied the same entries. Errors as etcd: `rev > 0` at or
    /// below the compacted revision → Compacted (note: a *read* at the compacted revision
    /// works); above the current → FutureRevision.
    pub fn hash_kv(&self, rev: i64) -> Result<HashKv, MvccError> {
        if rev > 0 && rev <= self.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        if rev > self.current {
            return Err(MvccError::FutureRevision {
                current_revision: self.current,
            });
        }
        let rev = if rev == 0 { self.current } else { rev };
        let mut h = crc32fast::Hasher::new();
        h.update(b"raftkv-mvcc-hash-v1");
        for (key, history) in self.keys.iter() {
            let entries = history.retained_at(self.compacted, rev);
            if entries.is_empty() {
                continue;
            }
            h.update(&(key.len() as u64).to_le_bytes());
            h.update(key);
            h.update(&(entries.len() as u64).to_le_bytes());
            for e in entries {
                for x in [e.rev.main, e.rev.sub, e.create, e.version, e.lease] {
                    h.update(&x.to_le_bytes());
                }
                match &e.value {
                    Some(v) => {
                        h.update(&[1]);
                        h.update(&(v.len() as u64).to_le_bytes());
                        h.update(v);
                    }
                    None => h.update(&[0]),
                }
            }
        }
        Ok(HashKv {
            hash: h.finalize(),
            compact_revision: self.compacted,
            revision: self.current,
        })
    }
}
