//! The store's key space: every key's history in a hash map (a point read or a write of one key
//! is one hash and one compare, where a B-tree walk was ~40 key compares at 100k keys), and the
//! keys in order beside it for ranges, snapshots and hashes.
//!
//! Invariant: `order` holds exactly the keys of `map`. Anything whose result depends on order
//! (a range, a snapshot, `hash_kv`) iterates `order`: the hash map's own order is random per
//! process and must never reach a response, the disk or a hash.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::hash_map;
use std::ops::Bound;

use bytes::Bytes;

use crate::mvcc::history::KeyHistory;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Keys {
    map: HashMap<Bytes, KeyHistory>,
    order: BTreeSet<Bytes>,
}

impl Keys {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.map.get(key)
    }

    pub fn get_key_value(&self, key: &[u8]) -> Option<(&Bytes, &KeyHistory)> {
        self.map.get_key_value(key)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut KeyHistory> {
        self.map.get_mut(key)
    }

    /// `key`'s history, an empty one (inserted) if the key has none.
    pub fn entry(&mut self, key: &Bytes) -> &mut KeyHistory {
        match self.map.entry(key.clone()) {
            hash_map::Entry::Occupied(e) => e.into_mut(),
            hash_map::Entry::Vacant(e) => {
                self.order.insert(key.clone());
                e.insert(KeyHistory::default())
            }
        }
    }

    /// Inserts a key's whole history (snapshot load); answers the one it replaced.
    pub fn insert(&mut self, key: Bytes, history: KeyHistory) -> Option<KeyHistory> {
        self.order.insert(key.clone());
        self.map.insert(key, history)
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<KeyHistory> {
        self.order.remove(key);
        self.map.remove(key)
    }

    /// Keeps the keys for which `keep` answers true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Bytes, &mut KeyHistory) -> bool) {
        let order = &mut self.order;
        self.map.retain(|k, h| {
            let kept = keep(k, h);
            if !kept {
                order.remove(k);
            }
            kept
        });
    }

    /// The keys after `after` (all when `None`) with their histories, ascending.
    pub fn after<'a>(
        &'a self,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = (&'a Bytes, &'a KeyHistory)> + 'a {
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        self.in_order(self.order.range::<[u8], _>((lower, Bound::Unbounded)))
    }

    /// Calls `f` on the histories of at most `keys_max` keys after `after` (from the first when
    /// `None`), ascending, and removes the keys whose history `f` emptied (answers true).
    /// Answers the last key looked at (`None`: none was) and how many were.
    pub fn update_after(
        &mut self,
        after: Option<&[u8]>,
        keys_max: usize,
        mut f: impl FnMut(&mut KeyHistory) -> bool,
    ) -> (Option<Bytes>, usize) {
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let (mut emptied, mut last, mut looked) = (Vec::new(), None, 0);
        for key in self
            .order
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take(keys_max)
        {
            looked += 1;
            if self.map.get_mut(&key[..]).is_some_and(&mut f) {
                emptied.push(key.clone());
            }
            last = Some(key);
        }
        let last = last.cloned();
        for key in emptied {
            self.remove(&key);
        }
        (last, looked)
    }

    /// Every key with its history, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &KeyHistory)> + '_ {
        self.in_order(self.order.iter())
    }

    /// The keys in `[lower, upper)` (or unbounded above) with their histories, ascending.
    pub fn range<'a>(
        &'a self,
        lower: &'a [u8],
        upper: Bound<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a Bytes, &'a KeyHistory)> + 'a {
        self.in_order(self.order.range::<[u8], _>((Bound::Included(lower), upper)))
    }

    /// Every history (in no particular order: for sums and counts only).
    pub fn values(&self) -> impl Iterator<Item = &KeyHistory> + '_ {
        self.map.values()
    }

    fn in_order<'a>(
        &'a self,
        keys: impl Iterator<Item = &'a Bytes> + 'a,
    ) -> impl Iterator<Item = (&'a Bytes, &'a KeyHistory)> + 'a {
        // The invariant makes every lookup hit; a miss would be skipped, never a panic.
        keys.filter_map(|k| self.map.get_key_value(&k[..]))
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

    fn names<'a>(it: impl Iterator<Item = (&'a Bytes, &'a KeyHistory)>) -> Vec<&'a [u8]> {
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
    fn remove_and_retain_keep_order_and_map_equal() {
        let mut k = keys(&["a", "b", "c", "d"]);
        assert!(k.remove(b"b").is_some());
        assert!(k.remove(b"b").is_none());
        k.retain(|key, _| &key[..] != b"c");
        assert_eq!(names(k.iter()), vec![&b"a"[..], b"d"]);
        assert_eq!(k.len(), 2);
        assert_eq!(k.order.len(), 2);
        assert!(k.get(b"c").is_none());
    }
}
