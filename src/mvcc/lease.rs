//! Leases as replicated state: which leases exist, their granted TTL, and which live keys each
//! one holds (etcd's `lessor` without its clock). Pure: no time here — when a lease expires is
//! the leader's call (`service::lease`), and it ends a lease only through a revoke in the log,
//! so every replica revokes at the same log index and deletes the same keys.
//!
//! Invariant: `keys[id]` is exactly the set of live keys whose current value carries lease
//! `id` (maintained from every write's changes, and rebuilt from the store after a snapshot).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use bytes::Bytes;

use crate::mvcc::Change;
use crate::mvcc::ChangeKind;
use crate::mvcc::DeleteRangeRequest;
use crate::mvcc::MvccError;
use crate::mvcc::Store;
use crate::mvcc::Written;
use crate::mvcc::write::WriteTxn;

/// The largest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`, 9,000,000,000).
pub const LEASE_TTL_MAX_S: i64 = 9_000_000_000;
/// The smallest TTL a lease gets, in seconds: a shorter one is raised to it (etcd's
/// `minLeaseTTL` with its default election timeout: 1.5 election ticks rounded up).
pub const LEASE_TTL_MIN_S: i64 = 2;

/// Every lease and the keys attached to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    /// Lease id → granted TTL in seconds.
    ttls: BTreeMap<i64, i64>,
    /// Lease id → its live keys.
    keys: BTreeMap<i64, BTreeSet<Bytes>>,
}

impl Leases {
    /// Leases with these `(id, ttl)`s, holding the keys `store` says they hold: the tests'
    /// oracle for the holders kept up to date write by write.
    #[cfg(test)]
    pub fn rebuild(ttls: impl IntoIterator<Item = (i64, i64)>, store: &Store) -> Leases {
        let holders = store
            .live_unordered()
            .filter(|kv| kv.lease != 0)
            .map(|kv| (kv.lease, Bytes::copy_from_slice(kv.key)));
        Leases::with_holders(ttls, holders)
    }

    /// Leases with these `(id, ttl)`s, holding the live keys `holders` lists as `(lease, key)`
    /// (gathered while a snapshot was decoded, instead of a second pass over the store).
    pub fn with_holders(
        ttls: impl IntoIterator<Item = (i64, i64)>,
        holders: impl IntoIterator<Item = (i64, Bytes)>,
    ) -> Leases {
        let mut leases = Leases {
            ttls: ttls.into_iter().collect(),
            keys: BTreeMap::new(),
        };
        for (lease, key) in holders {
            leases.keys.entry(lease).or_default().insert(key);
        }
        leases
    }

    pub fn exists(&self, id: i64) -> bool {
        self.ttls.contains_key(&id)
    }

    /// The granted TTL of lease `id`, in seconds.
    pub fn ttl(&self, id: i64) -> Option<i64> {
        self.ttls.get(&id).copied()
    }

    /// Every `(id, ttl)`, ascending by id.
    pub fn all(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.ttls.iter().map(|(id, ttl)| (*id, *ttl))
    }

    pub fn len(&self) -> usize {
        self.ttls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ttls.is_empty()
    }

    /// The live keys of lease `id`, ascending.
    pub fn keys(&self, id: i64) -> Vec<Bytes> {
        self.keys
            .get(&id)
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// etcd's LeaseGrant (the id is chosen before it reaches the log, never here).
    pub fn grant(&mut self, id: i64, ttl: i64) -> Result<(), MvccError> {
        if id <= 0 {
            return Err(MvccError::LeaseNotFound { lease: id });
        }
        if ttl > LEASE_TTL_MAX_S {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.ttls.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        self.ttls.insert(id, ttl.max(LEASE_TTL_MIN_S));
        Ok(())
    }

    /// etcd's LeaseRevoke: the lease ends and its keys are deleted, all in one revision (none
    /// if it held no key).
    pub fn revoke(&mut self, id: i64, store: &mut Store) -> Result<Written<()>, MvccError> {
        if self.ttls.remove(&id).is_none() {
            return Err(MvccError::LeaseNotFound { lease: id });
        }
        let keys = self.keys.remove(&id).unwrap_or_default();
        let mut w = WriteTxn::new(store);
        for key in keys {
            w.delete_range(&DeleteRangeRequest {
                key,
                ..DeleteRangeRequest::default()
            });
        }
        let (_, changes) = w.finish();
        Ok(Written {
            response: (),
            changes,
        })
    }

    /// Keeps the key sets current with one write's changes (call after every write, revokes
    /// included).
    pub fn track(&mut self, changes: &[Change]) {
        for c in changes {
            let prev = c.prev_kv.as_ref().filter(|p| p.lease != 0);
            if let Some((prev, set)) = prev.and_then(|p| Some((p, self.keys.get_mut(&p.lease)?))) {
                set.remove(&prev.key);
                if set.is_empty() {
                    self.keys.remove(&prev.lease);
                }
            }
            if c.kind == ChangeKind::Put && c.kv.lease != 0 {
                self.keys
                    .entry(c.kv.lease)
                    .or_default()
                    .insert(c.kv.key.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::PutRequest;
    use crate::mvcc::RangeRequest;

    fn put(store: &mut Store, leases: &mut Leases, key: &str, lease: i64) {
        let check = |id: i64| leases.exists(id);
        let w = store
            .put(
                PutRequest {
                    key: Bytes::from(key.to_string()),
                    value: Bytes::from_static(b"v"),
                    lease,
                    ..PutRequest::default()
                },
                &check,
            )
            .expect("put");
        leases.track(&w.changes);
    }

    fn live(store: &Store) -> Vec<String> {
        let all = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..RangeRequest::default()
        };
        let kvs = store.range(&all).expect("range").kvs;
        kvs.iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    #[test]
    fn revoke_deletes_the_lease_keys_in_one_revision() {
        let (mut store, mut leases) = (Store::default(), Leases::default());
        leases.grant(7, 10).expect("grant");
        assert_eq!(leases.grant(7, 10), Err(MvccError::LeaseExists));
        put(&mut store, &mut leases, "a", 7);
        put(&mut store, &mut leases, "b", 7);
        put(&mut store, &mut leases, "c", 0);
        put(&mut store, &mut leases, "b", 0); // detached by a put without the lease
        assert_eq!(leases.keys(7), vec![Bytes::from_static(b"a")]);
        let before = store.current_revision();
        let w = leases.revoke(7, &mut store).expect("revoke");
        assert_eq!(w.changes.len(), 1);
        assert_eq!(store.current_revision(), before + 1);
        assert_eq!(live(&store), vec!["b", "c"]);
        assert_eq!(
            leases.revoke(7, &mut store).err(),
            Some(MvccError::LeaseNotFound { lease: 7 })
        );
    }

    #[test]
    fn a_revoke_of_a_lease_without_keys_takes_no_revision() {
        let (mut store, mut leases) = (Store::default(), Leases::default());
        leases.grant(1, 5).expect("grant");
        let before = store.current_revision();
        assert!(
            leases
                .revoke(1, &mut store)
                .expect("revoke")
                .changes
                .is_empty()
        );
        assert_eq!(store.current_revision(), before);
        assert!(leases.is_empty());
    }

    #[test]
    fn rebuild_finds_the_keys_from_the_store() {
        let (mut store, mut leases) = (Store::default(), Leases::default());
        leases.grant(3, 60).expect("grant");
        put(&mut store, &mut leases, "x", 3);
        put(&mut store, &mut leases, "y", 3);
        let rebuilt = Leases::rebuild(leases.all().collect::<Vec<_>>(), &store);
        assert_eq!(rebuilt, leases);
    }

    #[test]
    fn ttl_limits_follow_etcd() {
        let mut leases = Leases::default();
        assert_eq!(
            leases.grant(1, LEASE_TTL_MAX_S + 1),
            Err(MvccError::LeaseTtlTooLarge)
        );
        leases.grant(1, 1).expect("grant");
        assert_eq!(
            leases.ttl(1),
            Some(LEASE_TTL_MIN_S),
            "raised to the minimum"
        );
    }
}
