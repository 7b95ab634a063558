//! The store's key space: every key's history in a hash map (a point read or a write of one key
//! is one hash and one compare, where a B-tree walk was ~40 key compares at 100k keys), and the
//! keys in order beside it for ranges, snapshots and hashes.
//!
//! The map is an `IndexMap`: the keys and histories in one `Vec` (filled in key order when a
//! snapshot loads), and a table of 8-byte indices, where std's `HashMap` kept 40-byte buckets in
//! a table twice the keys' count. A 1M-key snapshot decodes in 0.8× the time (the table it fills
//! at random is 16 MB instead of 86), a key costs 18 bytes less, growing the map does not hash
//! the keys again (the entries keep their hashes), and a write finds its key with one lookup.
//! Removing a key moves the last entry into its place (`swap_remove`): the map's order means
//! nothing here.
//!
//! Invariants: `order` holds exactly the keys of `map`; every key whose history has more than
//! one entry (the only ones a compaction can shrink: a history never starts with a tombstone)
//! is in `multi`, so a compaction visits those, not every key — except while a compaction is
//! owed: the keys it has yet to visit are then held by the store (`take_with_history`), and
//! visiting puts back those that keep history. `multi` is a list, not a set: a key goes in when
//! an append gives it its second entry, so it may also hold keys that lost their history since
//! (an aborted txn's append) or were removed, and rarely a key twice (aborted, then appended
//! again); a compaction's visit of those is a no-op. A set cost a hash per entry and rehashed
//! every key as it grew (≈ 13 % of a replay of overwrites, BENCHMARKS.md). Anything whose
//! result depends on order (a range, a snapshot, `hash_kv`) iterates `order`: the map's own order
//! (insertions and swap-removals) differs between replicas and must never reach a response, the
//! disk or a hash.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;

use crate::mvcc::history::KeyHistory;

/// A key or a value as the store holds it: one allocation with its count inside, shared by the
/// hash map, the ordered set and the set of keys with history, behind a 16-byte handle. A
/// `Bytes` handle is 32 bytes and adds a 32-byte shared header the first time it is cloned:
/// 110 bytes more per key with one revision (`src/mvcc/README.md`, "Memory").
pub(crate) type Shared = Arc<[u8]>;

/// `a` as `Bytes` for an answer or a change record: shares the allocation (one small owner
/// box), never copies the bytes.
pub(crate) fn to_bytes(a: &Shared) -> Bytes {
    Bytes::from_owner(a.clone())
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Keys {
    map: IndexMap<Shared, KeyHistory>,
    order: BTreeSet<Shared>,
    multi: Vec<Shared>,
}

/// Two key spaces are equal when their keys and histories are: `order` follows from the map, and
/// `multi` is an index whose order and stale entries depend on how the histories were made.
impl PartialEq for Keys {
    fn eq(&self, other: &Keys) -> bool {
        self.map == other.map
    }
}

impl Eq for Keys {}

impl Keys {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.map.get(key)
    }

    pub fn get_key_value(&self, key: &[u8]) -> Option<(&Shared, &KeyHistory)> {
        self.map.get_key_value(key)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut KeyHistory> {
        self.map.get_mut(key)
    }

    /// `key`'s history, an empty one (inserted) if the key has none.
    pub fn entry(&mut self, key: &[u8]) -> &mut KeyHistory {
        // Look up by borrowed key: an existing key (an overwrite) costs one lookup and no
        // allocation.
        let i = match self.map.get_index_of(key) {
            Some(i) => i,
            None => {
                let key: Shared = Arc::from(key);
                self.order.insert(key.clone());
                self.map.insert_full(key, KeyHistory::default()).0
            }
        };
        &mut self.map[i]
    }

    /// Removes `key` (it may stay listed in `multi`: see the module's invariants).
    pub fn remove(&mut self, key: &[u8]) -> Option<KeyHistory> {
        self.order.remove(key);
        self.map.swap_remove(key)
    }

    /// Must be called after an entry was appended to `key`'s history through [`Keys::entry`] or
    /// [`Keys::get_mut`], making it `len` long: the append that gives a key its second entry
    /// lists it in `multi`. Other appends cost nothing here: a key with more entries is listed
    /// already or held by an owed compaction, which lists it again after its visit.
    pub fn note_appended(&mut self, key: &[u8], len: usize) {
        if len == 2
            && let Some((k, _)) = self.map.get_key_value(key)
        {
            self.multi.push(k.clone());
        }
    }

    /// Checks the invariant of the list of keys with history: every key with more than one
    /// entry is in it or in `held` (the keys an owed compaction has yet to visit). O(keys).
    #[cfg(test)]
    pub fn check_with_history(&self, held: &[Shared]) -> Result<(), String> {
        let listed: std::collections::HashSet<&Shared> = self.multi.iter().chain(held).collect();
        match self
            .map
            .iter()
            .find(|(k, h)| h.entries.len() > 1 && !listed.contains(k))
        {
            Some((k, _)) => Err(format!(
                "key {k:?} with history missing from the history list"
            )),
            None => Ok(()),
        }
    }

    /// The keys listed as having history (see the module's invariants), in no particular
    /// order.
    #[cfg(test)]
    pub fn with_history(&self) -> Vec<Shared> {
        self.multi.clone()
    }

    /// Takes the list of keys with history (O(1)), for a compaction to visit: until each is
    /// visited by [`Keys::compact_keys`] (which lists it again if it still has history) it may
    /// be missing from the list.
    pub fn take_with_history(&mut self) -> Vec<Shared> {
        std::mem::take(&mut self.multi)
    }

    /// Compacts the histories of `keys` at `at` ([`KeyHistory::compact`]), removing the keys
    /// whose history it emptied and listing again those that keep history.
    pub fn compact_keys(&mut self, keys: &[Shared], at: i64) {
        for key in keys {
            let Some(h) = self.map.get_mut(&key[..]) else {
                continue; // removed since it was listed
            };
            if h.compact(at) {
                self.remove(key);
            } else if h.entries.len() > 1 {
                self.multi.push(key.clone());
            }
        }
    }

    /// The keys after `after` (all when `None`) with their histories, ascending.
    pub fn after<'a>(
        &'a self,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = (&'a Shared, &'a KeyHistory)> + 'a {
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        self.in_order(self.order.range::<[u8], _>((lower, Bound::Unbounded)))
    }

    /// Every key with its history, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (&Shared, &KeyHistory)> + '_ {
        self.in_order(self.order.iter())
    }

    /// The keys in `[lower, upper)` (or unbounded above) with their histories, ascending.
    pub fn range<'a>(
        &'a self,
        lower: &'a [u8],
        upper: Bound<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a Shared, &'a KeyHistory)> + 'a {
        self.in_order(self.order.range::<[u8], _>((Bound::Included(lower), upper)))
    }

    /// Every history (in no particular order: for sums and counts only).
    pub fn values(&self) -> impl Iterator<Item = &KeyHistory> + '_ {
        self.map.values()
    }

    /// Every key with its history in no particular order (for sums, counts and sets only):
    /// one pass over the hash map, no B-tree walk and no lookup per key.
    pub fn unordered(&self) -> impl Iterator<Item = (&Shared, &KeyHistory)> + '_ {
        self.map.iter()
    }

    fn in_order<'a>(
        &'a self,
        keys: impl Iterator<Item = &'a Shared> + 'a,
    ) -> impl Iterator<Item = (&'a Shared, &'a KeyHistory)> + 'a {
        // The invariant makes every lookup hit; a miss would be skipped, never a panic.
        keys.filter_map(|k| self.map.get_key_value(&k[..]))
    }
}

/// Builds a [`Keys`] from a snapshot's keys, which come strictly ascending (its reader checks):
/// the map is filled in key order, and the ordered set is built from it in one pass at the end
/// instead of one B-tree walk per key.
pub(crate) struct SortedKeys {
    map: IndexMap<Shared, KeyHistory>,
    multi: Vec<Shared>,
}

impl SortedKeys {
    /// Room for `keys` keys before the map grows (growing copies the entries and rebuilds the
    /// table: a fifth of a 1M-key load, most of it first touches of fresh memory).
    pub fn with_capacity(keys: usize) -> Self {
        SortedKeys {
            map: IndexMap::with_capacity(keys),
            multi: Vec::new(),
        }
    }

    /// Adds `key`, which must sort after every key pushed before it.
    pub fn push(&mut self, key: Shared, history: KeyHistory) {
        if history.entries.len() > 1 {
            self.multi.push(key.clone());
        }
        self.map.insert(key, history);
    }

    pub fn finish(self) -> Keys {
        // The map's order is the keys' (pushed ascending, nothing removed): a sorted iterator.
        let order: BTreeSet<Shared> = self.map.keys().cloned().collect();
        Keys {
            map: self.map,
            order,
            multi: self.multi,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&'static str]) -> Keys {
        let mut k = Keys::default();
        for n in names {
            k.entry(&Bytes::from_static(n.as_bytes()));
        }
        k
    }

    fn names<'a>(it: impl Iterator<Item = (&'a Shared, &'a KeyHistory)>) -> Vec<&'a [u8]> {
        it.map(|(k, _)| &k[..]).collect()
    }

    #[test]
    fn iterates_in_key_order_whatever_the_insertion_order() {
        let k = keys(&["m", "b", "z", "a", "c"]);
        let want: Vec<&[u8]> = vec![b"a", b"b", b"c", b"m", b"z"];
        assert_eq!(names(k.iter()), want);
        assert_eq!(
            names(k.range(b"b", Bound::Excluded(b"m"))),
            vec![&b"b"[..], b"c"]
        );
        assert_eq!(
            names(k.range(b"c", Bound::Unbounded)),
            vec![&b"c"[..], b"m", b"z"]
        );
    }

    #[test]
    fn remove_and_compaction_keep_order_map_and_history_set_exact() {
        use crate::mvcc::revision::Revision;
        let mut k = keys(&["a", "b", "c", "d"]);
        let mut main = 1;
        let mut put = |k: &mut Keys, name: &'static str| {
            main += 1;
            let key = Bytes::from_static(name.as_bytes());
            let h = k.entry(&key);
            h.put(Revision { main, sub: 0 }, Shared::from(&b"v"[..]), 0);
            let len = h.entries.len();
            k.note_appended(&key, len);
        };
        for name in ["a", "b", "c", "d", "c", "d", "d"] {
            put(&mut k, name);
        }
        let mut multi = k.with_history();
        multi.sort();
        assert_eq!(
            multi,
            vec![Shared::from(&b"c"[..]), Shared::from(&b"d"[..])]
        );
        assert!(k.remove(b"b").is_some());
        assert!(k.remove(b"b").is_none());
        // Compacting at the newest revision leaves one entry per key: no key has history left.
        let held = k.take_with_history();
        k.compact_keys(&held, main);
        assert!(k.with_history().is_empty());
        assert_eq!(names(k.iter()), vec![&b"a"[..], b"c", b"d"]);
        assert_eq!((k.len(), k.order.len()), (3, 3));
    }
}
