//! The seed APIs' multi-key set (`POST /key`, a JSON object of keys): several puts in one
//! revision, like a txn of puts, but without etcd's txn rules that do not fit it (a JSON object
//! may name a key twice — the last one wins, as it always did — and may hold more keys than
//! `--max-txn-ops`; its size is bounded before it is proposed, see `limits.rs`).

use std::collections::HashSet;

use bytes::Bytes;

use crate::mvcc::MvccError;
use crate::mvcc::PutRequest;
use crate::mvcc::Store;
use crate::mvcc::Written;
use crate::mvcc::write::WriteTxn;
use crate::mvcc::write::check_put_request;

impl Store {
    /// Puts every pair in one new revision (sub-revisions in the order of each key's last
    /// occurrence); answers the revision. All checks run before the first write.
    pub fn put_many(&mut self, pairs: Vec<(Bytes, Bytes)>) -> Result<Written<i64>, MvccError> {
        let mut seen = HashSet::new();
        let mut last_wins: Vec<PutRequest> = pairs
            .into_iter()
            .rev()
            .filter(|(k, _)| seen.insert(k.clone()))
            .map(|(key, value)| PutRequest {
                key,
                value,
                ..PutRequest::default()
            })
            .collect();
        last_wins.reverse();
        for req in &last_wins {
            check_put_request(req)?;
        }
        let mut w = WriteTxn::new(self);
        for req in last_wins {
            if let Err(e) = w.put(req) {
                // Unreachable for plain puts (no ignore_* flags), but never leave half a write.
                w.abort();
                return Err(e);
            }
        }
        let (revision, changes) = w.finish();
        Ok(Written {
            response: revision,
            changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::RangeRequest;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn one_revision_and_the_last_value_of_a_repeated_key_wins() {
        let mut store = Store::default();
        let w = store
            .put_many(vec![(b("a"), b("1")), (b("b"), b("2")), (b("a"), b("3"))])
            .expect("put_many");
        assert_eq!(w.response, 2);
        assert_eq!(w.changes.len(), 2);
        assert_eq!(store.current_revision(), 2);
        let r = store
            .range(&RangeRequest {
                key: b("a"),
                ..RangeRequest::default()
            })
            .expect("range");
        assert_eq!(r.kvs[0].value, b("3"));
        assert_eq!((r.kvs[0].mod_revision, r.kvs[0].version), (2, 1));
        assert!(store.put_many(vec![(b(""), b("x"))]).is_err());
        assert_eq!(
            store.current_revision(),
            2,
            "a refused write changes nothing"
        );
    }
}
