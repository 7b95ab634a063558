//! Revisions and the pure part of etcd's revision-mode auto-compaction.
//!
//! A [`Revision`] is etcd's `(main, sub)` pair: `main` is the store-wide revision a write txn
//! produced, `sub` orders the changes inside that txn (0, 1, 2, …). Ordering is lexicographic,
//! so sorting changes by revision is their apply order (what watch events need).

use serde::Deserialize;
use serde::Serialize;

/// The revision of a fresh store (etcd's too): the first write produces 2.
pub const FIRST_REVISION: i64 = 1;
/// The compacted revision of a store that was never compacted (etcd's `compactMainRev` -1).
pub const NEVER_COMPACTED: i64 = -1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }
}

/// etcd's `--auto-compaction-mode=revision` step, without the timer: etcd's compactor wakes
/// every 5 minutes and compacts at `current_revision - retention` unless that is ≤ 0 or equal to
/// the revision it compacted last. This answers that revision (or `None`: nothing to do); we also
/// skip targets at or below `compact_revision`, which etcd would propose only to be refused with
/// [`crate::mvcc::MvccError::Compacted`]. The leader's timer proposes `Compact(target)` through
/// the log; applying it stays deterministic because the target is in the entry.
pub fn revision_compaction_target(
    current_revision: i64,
    retention: i64,
    compact_revision: i64,
) -> Option<i64> {
    let target = current_revision.checked_sub(retention)?;
    (target > 0 && target > compact_revision).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_order_by_main_then_sub() {
        assert!(Revision::new(2, 5) < Revision::new(3, 0));
        assert!(Revision::new(3, 0) < Revision::new(3, 1));
    }

    #[test]
    fn revision_mode_target_follows_etcd() {
        assert_eq!(revision_compaction_target(1, 1000, NEVER_COMPACTED), None);
        assert_eq!(
            revision_compaction_target(1000, 1000, NEVER_COMPACTED),
            None
        );
        assert_eq!(
            revision_compaction_target(1001, 1000, NEVER_COMPACTED),
            Some(1)
        );
        assert_eq!(revision_compaction_target(5000, 1000, 3000), Some(4000));
        assert_eq!(revision_compaction_target(5000, 1000, 4000), None);
        assert_eq!(revision_compaction_target(i64::MIN, 1, -1), None);
    }
}
