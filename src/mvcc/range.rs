//! Range reads: key-range interpretation, and etcd's `applyRange` (filters, sort, limit) over
//! the key space visible at one revision.

use std::ops::Bound;

use bytes::Bytes;

use crate::mvcc::Store;
use crate::mvcc::error::MvccError;
use crate::mvcc::history::Entry;
use crate::mvcc::history::KeyHistory;
use crate::mvcc::keys::Shared;
use crate::mvcc::keys::to_bytes;
use crate::mvcc::types::Change;
use crate::mvcc::types::ChangeKind;
use crate::mvcc::types::KeyValue;
use crate::mvcc::types::RangeRequest;
use crate::mvcc::types::RangeResponse;
use crate::mvcc::types::SortOrder;
use crate::mvcc::types::SortTarget;

/// The `range_end` that makes a range cover every key starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last non-0xff byte +1 and the 0xff bytes after it
/// dropped; all 0xff (or empty) → `[0]`, i.e. every key ≥ the prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether `k` lies in the range `(key, range_end)` means in etcd's requests.
pub fn in_range(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    match range_end {
        [] => k == key,
        [0] => k >= key,
        end => k >= key && k < end,
    }
}

impl Store {
    /// Every key in `(key, range_end)` with its entry visible at `rev`, ascending.
    pub(crate) fn live_in_range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        rev: i64,
    ) -> Box<dyn Iterator<Item = (&'a Shared, &'a Entry)> + 'a> {
        Box::new(
            self.histories_in_range(key, range_end)
                .filter_map(move |(k, h)| Some((k, h.live_at(rev)?))),
        )
    }

    /// etcd's `applyRange` on top of `rangeKeys`, with `cur` the revision the read is "at"
    /// (the current revision, or a write txn's view).
    pub(crate) fn range_at(
        &self,
        req: &RangeRequest,
        cur: i64,
    ) -> Result<RangeResponse, MvccError> {
        let rev = match req.revision {
            r if r > cur => {
                return Err(MvccError::FutureRevision {
                    current_revision: cur,
                });
            }
            r if r <= 0 => cur,
            r => r,
        };
        if rev < self.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        let filtered = req.sort_order != SortOrder::None
            || req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // Without sort or filters the first limit+1 keys decide `more`; the rest only count.
        let fetch = match (req.count_only, filtered, req.limit) {
            (true, _, _) => 0,
            (false, false, l) if l > 0 => {
                usize::try_from(l).unwrap_or(usize::MAX).saturating_add(1)
            }
            _ => usize::MAX,
        };
        let mut count: i64 = 0;
        let mut kvs: Vec<KeyValue> = Vec::new();
        for (k, e) in self.live_in_range(&req.key, &req.range_end, rev) {
            count += 1;
            if kvs.len() < fetch {
                kvs.extend(e.to_kv(k));
            }
        }
        let keep = |kv: &KeyValue| {
            !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
                || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
                || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
                || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
        };
        kvs.retain(keep);
        sort_kvs(&mut kvs, req.sort_order, req.sort_target);
        let mut more = false;
        if let Ok(limit) = usize::try_from(req.limit)
            && limit > 0
            && kvs.len() > limit
        {
            kvs.truncate(limit);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse {
            revision: cur,
            kvs,
            more,
            count,
        })
    }
}

/// etcd sorts ascending when a non-key target comes with order NONE (keys are already in
/// ascending order otherwise). Our sort is stable, so ties stay in key order; etcd's `sort.Sort`
/// is unstable beyond 12 elements, so ties there may come back in another order.
fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    let cmp = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        _ => kvs.sort_by(cmp),
    }
}

impl Store {
    /// Every change with main revision in `from..=to`, in revision order, as the write that made
    /// it returned it — what a watch starting at a past revision replays. `prev_kv` is the
    /// key's entry just before the change if it is retained and live (etcd reads it at
    /// `mod_revision - 1`, which fails below the compacted revision: same answer). Errors: `from`
    /// below the compacted revision → Compacted (etcd cancels such a watch); `to` above the
    /// current → FutureRevision. Cost: one pass over all retained entries.
    pub fn changes_between(&self, from: i64, to: i64) -> Result<Vec<Change>, MvccError> {
        self.changes_in(b"\0", b"\0", from, to)
    }

    /// [`Store::changes_between`] restricted to the keys in `(key, range_end)` (etcd's range
    /// meaning). Cost: the retained entries of the keys in the range only.
    pub fn changes_in(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        to: i64,
    ) -> Result<Vec<Change>, MvccError> {
        if from < self.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        if to > self.current {
            return Err(MvccError::FutureRevision {
                current_revision: self.current,
            });
        }
        let mut out = Vec::new();
        for (key, h) in self.histories_in_range(key, range_end) {
            let start = h.entries.partition_point(|e| e.rev.main < from);
            for (i, e) in h.entries.iter().enumerate().skip(start) {
                if e.rev.main > to {
                    break;
                }
                let prev_kv = i.checked_sub(1).and_then(|p| h.entries[p].to_kv(key));
                let (kind, kv) = match e.to_kv(key) {
                    Some(kv) => (ChangeKind::Put, kv),
                    None => {
                        let kv = KeyValue {
                            key: to_bytes(key),
                            mod_revision: e.rev.main,
                            ..KeyValue::default()
                        };
                        (ChangeKind::Delete, kv)
                    }
                };
                out.push(Change {
                    kind,
                    revision: e.rev,
                    kv,
                    prev_kv,
                });
            }
        }
        out.sort_by_key(|c| c.revision);
        Ok(out)
    }

    /// Every key in `(key, range_end)` with its retained history, ascending.
    fn histories_in_range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> Box<dyn Iterator<Item = (&'a Shared, &'a KeyHistory)> + 'a> {
        let upper = match range_end {
            [] => return Box::new(self.keys.get_key_value(key).into_iter()),
            [0] => Bound::Unbounded,
            end if end < key => return Box::new(std::iter::empty()),
            end => Bound::Excluded(end),
        };
        Box::new(self.keys.range(key, upper))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"foo"), b"fop".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn in_range_reads_range_end_like_etcd() {
        assert!(in_range(b"a", b"", b"a"));
        assert!(!in_range(b"a", b"", b"ab"));
        assert!(in_range(b"a", b"\0", b"zzz"));
        assert!(!in_range(b"b", b"\0", b"a"));
        assert!(in_range(b"a", b"c", b"b"));
        assert!(!in_range(b"a", b"c", b"c"));
        assert!(!in_range(b"c", b"a", b"b"));
    }
}
