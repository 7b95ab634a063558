//! The write path: one write txn at a time over the store, producing one revision.
//!
//! A [`WriteTxn`] appends entries at main revision `begin + 1` straight into the key histories
//! (sub-revisions 0, 1, …) and bumps the store's revision when it finishes — if it changed
//! anything. Every check that can fail runs before the first append, so a txn never has to be
//! rolled back — except one case etcd itself cannot handle: a put with `ignore_value`/
//! `ignore_lease` of a key that an earlier from-key delete of the same txn removed (etcd's
//! duplicate-key check does not see from-key deletes; etcd 3.4 panics in `applyTxn`). Such a
//! txn is undone ([`WriteTxn::abort`]) and fails with `KeyNotFound`.

use bytes::Bytes;

use crate::mvcc::Store;
use crate::mvcc::error::MvccError;
use crate::mvcc::keys::Shared;
use crate::mvcc::revision::Revision;
use crate::mvcc::types::Change;
use crate::mvcc::types::ChangeKind;
use crate::mvcc::types::DeleteRangeRequest;
use crate::mvcc::types::DeleteRangeResponse;
use crate::mvcc::types::KeyValue;
use crate::mvcc::types::PutRequest;
use crate::mvcc::types::PutResponse;
use crate::mvcc::types::RangeRequest;
use crate::mvcc::types::RangeResponse;

pub(crate) struct WriteTxn<'a> {
    pub store: &'a mut Store,
    /// The store's revision when the txn began; its writes get `begin + 1`.
    pub begin: i64,
    pub changes: Vec<Change>,
}

impl<'a> WriteTxn<'a> {
    pub fn new(store: &'a mut Store) -> Self {
        let begin = store.current;
        WriteTxn {
            store,
            begin,
            changes: Vec::new(),
        }
    }

    /// The revision reads inside the txn are at: they see the txn's own earlier writes.
    pub fn view(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin
        } else {
            self.begin + 1
        }
    }

    fn next_rev(&self) -> Revision {
        // Sub-revisions count the changes of one txn (a delete of a million keys: a million).
        Revision::new(self.begin + 1, self.changes.len() as i64)
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.store.range_at(req, self.view())
    }

    /// A put whose checks (ignore_* on a missing key, lease existence) already passed.
    pub fn put(&mut self, req: PutRequest) -> Result<PutResponse, MvccError> {
        let rev = self.next_rev();
        let history = self.store.keys.entry(&req.key);
        let prev = history
            .live()
            .map(|e| (e.value.clone(), e.lease, e.to_kv_of(req.key.clone())));
        let (value, lease, prev_kv) = match prev {
            Some((v, l, kv)) => (
                match v {
                    Some(v) if req.ignore_value => v,
                    _ => Shared::from(&req.value[..]),
                },
                if req.ignore_lease { l } else { req.lease },
                kv,
            ),
            None if req.ignore_value || req.ignore_lease => {
                if history.entries.is_empty() {
                    self.store.keys.remove(&req.key);
                }
                return Err(MvccError::KeyNotFound);
            }
            None => (Shared::from(&req.value[..]), req.lease, None),
        };
        let kv = history
            .put(rev, value, lease)
            .to_kv_of(req.key.clone())
            .unwrap_or_default();
        let len = history.entries.len();
        self.store.keys.note_appended(&req.key, len);
        self.changes.push(Change {
            kind: ChangeKind::Put,
            revision: rev,
            kv,
            prev_kv: prev_kv.clone(),
        });
        let prev_kv = if req.prev_kv { prev_kv } else { None };
        Ok(PutResponse {
            revision: self.begin + 1,
            prev_kv,
        })
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let view = self.view();
        let doomed: Vec<KeyValue> = self
            .store
            .live_in_range(&req.key, &req.range_end, view)
            .filter_map(|(k, e)| e.to_kv(k))
            .collect();
        for prev in &doomed {
            let rev = self.next_rev();
            if let Some(h) = self.store.keys.get_mut(&prev.key) {
                h.tombstone(rev);
                let len = h.entries.len();
                self.store.keys.note_appended(&prev.key, len);
            }
            let kv = KeyValue {
                key: prev.key.clone(),
                mod_revision: rev.main,
                ..KeyValue::default()
            };
            self.changes.push(Change {
                kind: ChangeKind::Delete,
                revision: rev,
                kv,
                prev_kv: Some(prev.clone()),
            });
        }
        let deleted = doomed.len() as i64;
        let revision = if self.changes.is_empty() {
            self.begin
        } else {
            self.begin + 1
        };
        let prev_kvs = if req.prev_kv { doomed } else { Vec::new() };
        DeleteRangeResponse {
            revision,
            deleted,
            prev_kvs,
        }
    }

    /// Undo every write of this txn (the store is as before it began).
    pub fn abort(self) {
        for c in self.changes.iter().rev() {
            let Some(h) = self.store.keys.get_mut(&c.kv.key) else {
                continue;
            };
            if h.entries.last().is_some_and(|e| e.rev == c.revision) {
                h.entries.pop();
            }
            // A key left with one entry may stay listed as having history (`Keys`' invariants).
            if h.entries.is_empty() {
                self.store.keys.remove(&c.kv.key);
            }
        }
    }

    /// End the txn: one new revision if anything changed. Answers that revision and the changes.
    pub fn finish(self) -> (i64, Vec<Change>) {
        if !self.changes.is_empty() {
            self.store.current = self.begin + 1;
        }
        (self.store.current, self.changes)
    }
}

/// etcd's `checkPutRequest` and `checkDeleteRequest`/`checkRangeRequest` (v3rpc/key.go), plus
/// our size limits.
pub(crate) fn check_key(key: &Bytes) -> Result<(), MvccError> {
    if key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    check_size("key", key.len(), crate::mvcc::KEY_BYTES_MAX)
}

pub(crate) fn check_size(what: &'static str, bytes: usize, max: usize) -> Result<(), MvccError> {
    if bytes > max {
        return Err(MvccError::TooLarge {
            what: what.to_string(),
            bytes,
            max,
        });
    }
    Ok(())
}

pub(crate) fn check_put_request(req: &PutRequest) -> Result<(), MvccError> {
    check_key(&req.key)?;
    check_size("value", req.value.len(), crate::mvcc::VALUE_BYTES_MAX)?;
    if req.ignore_value && !req.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}
