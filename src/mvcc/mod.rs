//! A pure multi-version key/value store with etcd v3.4's semantics: one store-wide revision,
//! per-key history (create/mod revision, version, lease), ranges at past revisions, txns with
//! compares, compaction, a replica-comparable hash and a versioned snapshot format.
//!
//! Owns: the data and every rule of etcd's `mvcc` package and `applierV3backend` that decides
//! an answer. Does not own: Raft, I/O, clocks, leases' lifetimes (callers pass a
//! [`LeaseCheck`]), watch delivery (writes return [`Change`]s to feed it), auto-compaction's
//! timer (see [`revision_compaction_target`]).
//!
//! Invariant: every operation is a deterministic function of the store and its arguments, so
//! replicas applying the same entries hold equal stores and equal [`Store::hash_kv`]; an error
//! leaves the store unchanged.
//!
//! Layout: [`types`] requests/responses · `history` one key's entries · `range` reads ·
//! `write` the write txn · `txn` validation, compares, apply · `compact` compaction and hash ·
//! [`snapshot`] the format. See `README.md` here for design notes and measured memory.
//!
//! Revisions in brief (etcd's): a fresh store is at revision 1 and was never compacted
//! ([`NEVER_COMPACTED`] = -1); each put/delete/txn that changes something adds exactly 1, its
//! changes sharing the main revision with sub-revisions 0, 1, …; a delete of nothing adds none.

mod compact;
pub mod error;
mod history;
mod keys;
pub mod lease;
mod range;
pub mod revision;
mod seed;
pub mod snapshot;
mod txn;
pub mod types;
mod write;

#[cfg(test)]
mod mem_tests;
#[cfg(test)]
mod model;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_tests;

pub use crate::mvcc::compact::HashKv;
pub use crate::mvcc::error::GrpcCode;
pub use crate::mvcc::error::MvccError;
use crate::mvcc::keys::Keys;
pub use crate::mvcc::range::in_range;
pub use crate::mvcc::range::prefix_end;
pub use crate::mvcc::revision::FIRST_REVISION;
pub use crate::mvcc::revision::NEVER_COMPACTED;
pub use crate::mvcc::revision::Revision;
pub use crate::mvcc::revision::revision_compaction_target;
pub use crate::mvcc::txn::TXN_OPS_MAX_DEFAULT;
pub use crate::mvcc::txn::is_txn_read_only;
pub use crate::mvcc::txn::validate_txn;
pub use crate::mvcc::types::*;
use crate::mvcc::write::WriteTxn;

/// Largest key the store accepts (and a snapshot may hold).
pub const KEY_BYTES_MAX: usize = 1 << 20;
/// Largest value the store accepts (and a snapshot may hold).
pub const VALUE_BYTES_MAX: usize = 64 << 20;

/// Which lease ids exist, asked when a put attaches a lease (etcd's `lessor.Lookup`). Part 2's
/// lessor implements it; until then [`NoLeases`] makes every non-zero lease `LeaseNotFound`.
pub trait LeaseCheck {
    fn lease_exists(&self, lease: i64) -> bool;
}

/// No lease exists.
pub struct NoLeases;

impl LeaseCheck for NoLeases {
    fn lease_exists(&self, _lease: i64) -> bool {
        false
    }
}

impl<F: Fn(i64) -> bool> LeaseCheck for F {
    fn lease_exists(&self, lease: i64) -> bool {
        self(lease)
    }
}

/// A live key as [`Store::live_unordered`] lends it: a `KeyValue`'s fields, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// The store. Reads take `&self`; writes take `&mut self` and apply one log entry each.
#[derive(Debug, Clone)]
pub struct Store {
    /// Every key with retained history; a key whose whole history was compacted away is absent.
    keys: Keys,
    current: i64,
    compacted: i64,
    txn_ops_max: usize,
    /// Snapshot writers holding compaction's removal of old entries (see
    /// [`Store::hold_compaction`]); while > 0 a compaction only moves `compacted`.
    compaction_holds: u32,
    /// A compaction's removal is owed (held, or deferred: [`Store::compact_later`]).
    compaction_owed: bool,
    /// The keys an owed compaction has still to visit ([`Store::compact_step`]).
    compaction_pending: Vec<keys::Shared>,
}

/// Equal stores answer alike: same keys and histories, revisions and limits, and the same keys
/// owed a compaction's visit (a list whose order depends on how it was made).
impl PartialEq for Store {
    fn eq(&self, other: &Store) -> bool {
        let owed = |s: &Store| -> std::collections::HashSet<keys::Shared> {
            s.compaction_pending.iter().cloned().collect()
        };
        self.keys == other.keys
            && self.current == other.current
            && self.compacted == other.compacted
            && self.txn_ops_max == other.txn_ops_max
            && self.compaction_holds == other.compaction_holds
            && self.compaction_owed == other.compaction_owed
            && owed(self) == owed(other)
    }
}

impl Eq for Store {}

impl Default for Store {
    fn default() -> Self {
        Store::new(TXN_OPS_MAX_DEFAULT)
    }
}

impl Store {
    /// A fresh store at revision 1; `txn_ops_max` is etcd's `--max-txn-ops` (it must be the same
    /// on every replica: it decides whether an entry fails).
    pub fn new(txn_ops_max: usize) -> Self {
        Store {
            keys: Keys::default(),
            current: FIRST_REVISION,
            compacted: NEVER_COMPACTED,
            txn_ops_max,
            compaction_holds: 0,
            compaction_owed: false,
            compaction_pending: Default::default(),
        }
    }

    pub fn current_revision(&self) -> i64 {
        self.current
    }

    /// The revision of the last compaction, [`NEVER_COMPACTED`] before the first.
    pub fn compact_revision(&self) -> i64 {
        self.compacted
    }

    /// Keys with retained history (live or not).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Retained entries (puts and tombstones) over all keys.
    pub fn entry_count(&self) -> usize {
        self.keys.values().map(|h| h.entries.len()).sum()
    }

    /// The live `key` at the current revision: what a one-key `range` answers, without building
    /// a request and a response (the seed APIs' read path).
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let (k, history) = self.keys.get_key_value(key)?;
        history.live()?.to_kv(k)
    }

    /// etcd's Range at the current revision (or `req.revision`).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        self.range_at(req, self.current)
    }

    /// etcd's Put: one new revision.
    pub fn put(
        &mut self,
        req: PutRequest,
        leases: &dyn LeaseCheck,
    ) -> Result<Written<PutResponse>, MvccError> {
        write::check_put_request(&req)?;
        self.check_put(&req, leases, true)?;
        let mut w = WriteTxn::new(self);
        let response = w.put(req)?;
        let (_, changes) = w.finish();
        Ok(Written { response, changes })
    }

    /// Every live key at the current revision, in no particular order, without building a
    /// `KeyValue` (no allocation): for digests and counts over the whole store.
    pub fn live_unordered(&self) -> impl Iterator<Item = LiveRef<'_>> + '_ {
        self.keys
            .unordered()
            .filter_map(|(k, h)| h.live()?.live_ref(k))
    }

    /// etcd's DeleteRange: one new revision if any key was live in the range, else none.
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<Written<DeleteRangeResponse>, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let mut w = WriteTxn::new(self);
        let response = w.delete_range(req);
        let (_, changes) = w.finish();
        Ok(Written { response, changes })
    }
}

#[cfg(test)]
impl Store {
    /// Every key history's invariants, and no key with an empty history.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let pending: std::collections::HashSet<&keys::Shared> =
            self.compaction_pending.iter().collect();
        for (k, h) in self.keys.iter() {
            h.check(self.current)
                .map_err(|e| format!("key {k:?}: {e}"))?;
            // A key an owed compaction has yet to visit may hold history below it.
            if h.entries
                .get(1)
                .is_some_and(|e| e.rev.main <= self.compacted)
                && !pending.contains(k)
            {
                return Err(format!("key {k:?}: history below the compacted revision"));
            }
        }
        self.keys.check_with_history(&self.compaction_pending)
    }
}
