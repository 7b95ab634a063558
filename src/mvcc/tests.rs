//! Unit tests of etcd's documented semantics (`Documentation/learning/api.md`,
//! `api_guarantees.md`, and `applierV3backend` where the docs are silent): revisions, ranges,
//! puts, compaction. Txns are in `txn_tests.rs`.

use bytes::Bytes;

use crate::mvcc::*;

pub(crate) fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub(crate) fn put(s: &mut Store, k: &str, v: &str) -> i64 {
    let req = PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    };
    s.put(req, &NoLeases).expect("put").response.revision
}

pub(crate) fn del(s: &mut Store, k: &str, end: &str) -> Written<DeleteRangeResponse> {
    s.delete_range(&DeleteRangeRequest {
        key: b(k),
        range_end: b(end),
        prev_kv: true,
    })
    .expect("delete")
}

pub(crate) fn get(s: &Store, k: &str, end: &str) -> RangeResponse {
    s.range(&RangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    })
    .expect("range")
}

pub(crate) fn get_at(s: &Store, k: &str, rev: i64) -> Result<RangeResponse, MvccError> {
    s.range(&RangeRequest {
        key: b(k),
        revision: rev,
        ..Default::default()
    })
}

pub(crate) fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

pub(crate) fn cmp(k: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        key: b(k),
        range_end: Bytes::new(),
        result,
        target,
    }
}

pub(crate) fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    })
}

pub(crate) fn range_op(k: &str) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: b(k),
        ..Default::default()
    })
}

pub(crate) fn del_op(k: &str, end: &str) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: b(k),
        range_end: b(end),
        prev_kv: false,
    })
}

#[test]
fn revisions_count_changes_not_requests() {
    let mut s = Store::default();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.compact_revision(), NEVER_COMPACTED);
    assert_eq!(put(&mut s, "a", "1"), 2);
    assert_eq!(put(&mut s, "a", "2"), 3);
    // A delete of nothing adds no revision and answers the current one.
    let none = del(&mut s, "zzz", "");
    assert_eq!((none.response.deleted, none.response.revision), (0, 3));
    assert!(none.changes.is_empty());
    assert_eq!(s.current_revision(), 3);
    // Three puts in one txn: one revision, increasing sub-revisions.
    let txn = TxnRequest {
        success: vec![put_op("x", "1"), put_op("y", "1"), put_op("z", "1")],
        ..Default::default()
    };
    let w = s.txn(txn, &NoLeases).expect("txn");
    assert_eq!(w.response.revision, 4);
    let revs: Vec<Revision> = w.changes.iter().map(|c| c.revision).collect();
    assert_eq!(
        revs,
        vec![
            Revision::new(4, 0),
            Revision::new(4, 1),
            Revision::new(4, 2)
        ]
    );
    // A read-only txn adds nothing.
    let ro = s
        .txn(
            TxnRequest {
                success: vec![range_op("x")],
                ..Default::default()
            },
            &NoLeases,
        )
        .expect("txn");
    assert_eq!((ro.response.revision, s.current_revision()), (4, 4));
}

#[test]
fn version_resets_on_delete_and_recreate_gets_a_new_create_revision() {
    let mut s = Store::default();
    put(&mut s, "k", "1");
    put(&mut s, "k", "2");
    let kv = &get(&s, "k", "").kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let d = del(&mut s, "k", "");
    assert_eq!(d.response.deleted, 1);
    assert_eq!(d.response.prev_kvs[0].value, b("2"));
    assert_eq!(d.changes[0].kind, ChangeKind::Delete);
    assert_eq!(d.changes[0].kv.mod_revision, 4);
    assert!(get(&s, "k", "").kvs.is_empty());
    put(&mut s, "k", "3");
    let kv = &get(&s, "k", "").kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // History is still readable.
    assert_eq!(get_at(&s, "k", 3).expect("read").kvs[0].value, b("2"));
    assert!(get_at(&s, "k", 4).expect("read").kvs.is_empty());
    // Header revision is the current one, even for a past read.
    assert_eq!(get_at(&s, "k", 3).expect("read").revision, 5);
}

#[test]
fn prefix_and_from_key_ranges() {
    let mut s = Store::default();
    for k in ["a", "ab", "abc", "b", "\u{7f}"] {
        put(&mut s, k, "v");
    }
    let end = String::from_utf8(prefix_end(b"ab")).expect("utf8");
    assert_eq!(keys(&get(&s, "ab", &end)), vec!["ab", "abc"]);
    assert_eq!(keys(&get(&s, "ab", "\0")), vec!["ab", "abc", "b", "\u{7f}"]);
    assert_eq!(keys(&get(&s, "\0", "\0")).len(), 5);
    assert!(
        get(&s, "b", "a").kvs.is_empty(),
        "range_end below key is empty"
    );
    assert_eq!(get(&s, "a", "b").count, 3);
    assert!(matches!(
        s.range(&RangeRequest::default()),
        Err(MvccError::EmptyKey)
    ));
}

#[test]
fn limit_more_and_count() {
    let mut s = Store::default();
    for k in ["a", "b", "c", "d"] {
        put(&mut s, k, "v");
    }
    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            limit: 2,
            ..Default::default()
        })
        .expect("range");
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["a".into(), "b".into()], true, 4)
    );
    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            limit: 4,
            ..Default::default()
        })
        .expect("range");
    assert!(!r.more);
    let r = s.range(&RangeRequest {
        key: b("a"),
        range_end: b("\0"),
        count_only: true,
        limit: 1,
        ..Default::default()
    });
    let r = r.expect("range");
    assert_eq!((r.kvs.len(), r.more, r.count), (0, false, 4));
    let r = s.range(&RangeRequest {
        key: b("a"),
        range_end: b("\0"),
        keys_only: true,
        ..Default::default()
    });
    assert!(r.expect("range").kvs.iter().all(|kv| kv.value.is_empty()));
}

#[test]
fn sort_applies_before_limit_and_non_key_targets_default_to_ascend() {
    let mut s = Store::default();
    put(&mut s, "a", "3");
    put(&mut s, "b", "1");
    put(&mut s, "c", "2");
    put(&mut s, "a", "4"); // a: version 2, mod 5
    let q = |order, target, limit| RangeRequest {
        key: b("a"),
        range_end: b("\0"),
        sort_order: order,
        sort_target: target,
        limit,
        ..Default::default()
    };
    let r = s
        .range(&q(SortOrder::Descend, SortTarget::Key, 2))
        .expect("range");
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["c".into(), "b".into()], true, 3)
    );
    let r = s
        .range(&q(SortOrder::None, SortTarget::Value, 0))
        .expect("range");
    assert_eq!(keys(&r), vec!["b", "c", "a"]);
    let r = s
        .range(&q(SortOrder::Descend, SortTarget::Mod, 1))
        .expect("range");
    assert_eq!(keys(&r), vec!["a"]);
    // Ties keep key order, ascending and descending.
    let r = s
        .range(&q(SortOrder::Descend, SortTarget::Version, 0))
        .expect("range");
    assert_eq!(keys(&r), vec!["a", "b", "c"]);
    let r = s
        .range(&q(SortOrder::Ascend, SortTarget::Create, 0))
        .expect("range");
    assert_eq!(keys(&r), vec!["a", "b", "c"]);
}

#[test]
fn revision_filters_drop_kvs_but_not_count() {
    let mut s = Store::default();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "b", "1"); // 3
    put(&mut s, "c", "1"); // 4
    put(&mut s, "a", "2"); // 5
    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            min_mod_revision: 4,
            limit: 1,
            ..Default::default()
        })
        .expect("range");
    // Filters force a full fetch; limit then cuts the filtered, key-sorted list.
    assert_eq!((keys(&r), r.more, r.count), (vec!["a".into()], true, 3));
    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            max_create_revision: 3,
            ..Default::default()
        })
        .expect("range");
    assert_eq!(keys(&r), vec!["a", "b"]);
}

#[test]
fn future_and_compacted_reads_and_compaction_errors() {
    let mut s = Store::default();
    put(&mut s, "k", "1"); // 2
    put(&mut s, "k", "2"); // 3
    put(&mut s, "k", "3"); // 4
    assert_eq!(
        get_at(&s, "k", 5),
        Err(MvccError::FutureRevision {
            current_revision: 4
        })
    );
    assert_eq!(
        s.compact(5),
        Err(MvccError::FutureRevision {
            current_revision: 4
        })
    );
    assert_eq!(s.compact(3), Ok(4));
    assert_eq!(
        get_at(&s, "k", 2),
        Err(MvccError::Compacted {
            compact_revision: 3
        })
    );
    assert_eq!(
        get_at(&s, "k", 3)
            .expect("read at the compacted revision")
            .kvs[0]
            .value,
        b("2")
    );
    assert_eq!(
        s.compact(3),
        Err(MvccError::Compacted {
            compact_revision: 3
        })
    );
    assert_eq!(
        s.compact(2),
        Err(MvccError::Compacted {
            compact_revision: 3
        })
    );
    assert_eq!(s.entry_count(), 2);
    assert_eq!(
        MvccError::Compacted {
            compact_revision: 3
        }
        .to_string(),
        MSG_COMPACTED_TEXT
    );
    // HashKV refuses the compacted revision itself, unlike a read.
    assert!(matches!(s.hash_kv(3), Err(MvccError::Compacted { .. })));
    assert!(s.hash_kv(4).is_ok());
    // A deleted key disappears entirely once compaction passes its tombstone.
    del(&mut s, "k", "");
    s.compact(5).expect("compact");
    assert_eq!((s.key_count(), s.entry_count()), (0, 0));
    // A fresh store compacts at 1 (etcd's compactMainRev starts at -1).
    let mut fresh = Store::default();
    assert_eq!(fresh.compact(1), Ok(1));
}

const MSG_COMPACTED_TEXT: &str = "etcdserver: mvcc: required revision has been compacted";

#[test]
fn put_flags() {
    let mut s = Store::default();
    let ignore = PutRequest {
        key: b("k"),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(
        s.put(ignore.clone(), &NoLeases).map(|_| ()),
        Err(MvccError::KeyNotFound)
    );
    assert_eq!(
        MvccError::KeyNotFound.to_string(),
        "etcdserver: key not found"
    );
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.key_count(), 0);
    put(&mut s, "k", "v1");
    let w = s
        .put(
            PutRequest {
                prev_kv: true,
                ..ignore
            },
            &NoLeases,
        )
        .expect("put");
    assert_eq!(
        w.response.prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b("v1"))
    );
    let kv = &get(&s, "k", "").kvs[0];
    assert_eq!((kv.value.clone(), kv.version), (b("v1"), 2));
    let bad = PutRequest {
        key: b("k"),
        value: b("x"),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(
        s.put(bad, &NoLeases).map(|_| ()),
        Err(MvccError::ValueProvided)
    );
    let leased = PutRequest {
        key: b("k"),
        value: b("x"),
        lease: 7,
        ..Default::default()
    };
    assert_eq!(
        s.put(leased.clone(), &NoLeases).map(|_| ()),
        Err(MvccError::LeaseNotFound { lease: 7 })
    );
    s.put(leased, &|id: i64| id == 7).expect("lease 7 exists");
    let keep = PutRequest {
        key: b("k"),
        value: b("y"),
        ignore_lease: true,
        ..Default::default()
    };
    s.put(keep, &NoLeases).expect("ignore_lease");
    assert_eq!(get(&s, "k", "").kvs[0].lease, 7);
}

#[test]
fn a_non_key_sort_target_with_order_none_sorts_only_the_first_limit_plus_one_keys() {
    // etcd quirk: order NONE fetches limit+1 keys in key order, then sorts those by the target
    // (seen on etcd 3.4.23: `etcdctl get x/ --prefix --sort-by=MODIFY --limit=1`).
    let mut s = Store::default();
    put(&mut s, "c", "v"); // mod 2
    put(&mut s, "a", "v"); // mod 3
    put(&mut s, "b", "v"); // mod 4
    let q = RangeRequest {
        key: b("a"),
        range_end: b("\0"),
        sort_target: SortTarget::Mod,
        limit: 1,
        ..Default::default()
    };
    let r = s.range(&q).expect("range");
    // Of a (3) and b (4), ascending by mod: a — not c, the global minimum.
    assert_eq!((keys(&r), r.more, r.count), (vec!["a".into()], true, 3));
    let q = RangeRequest {
        sort_order: SortOrder::Ascend,
        ..q
    };
    assert_eq!(keys(&s.range(&q).expect("range")), vec!["c"]);
    let q = RangeRequest {
        limit: 2,
        sort_order: SortOrder::None,
        ..q
    };
    assert_eq!(keys(&s.range(&q).expect("range")), vec!["c", "a"]);
}

#[test]
fn oversized_keys_and_values_are_refused_before_they_reach_a_snapshot() {
    let mut s = Store::default();
    let key = Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]);
    let req = PutRequest {
        key,
        value: b("v"),
        ..Default::default()
    };
    let err = s.put(req, &NoLeases).map(|_| ()).expect_err("too large");
    assert_eq!(
        err,
        MvccError::TooLarge {
            what: "key".to_string(),
            bytes: KEY_BYTES_MAX + 1,
            max: KEY_BYTES_MAX
        }
    );
    assert_eq!(err.to_string(), "etcdserver: request is too large");
    let value = Bytes::from(vec![0u8; VALUE_BYTES_MAX + 1]);
    let req = PutRequest {
        key: b("k"),
        value,
        ..Default::default()
    };
    assert!(matches!(
        s.put(req, &NoLeases),
        Err(MvccError::TooLarge { ref what, .. }) if what == "value"
    ));
    assert_eq!(s.current_revision(), 1);
}

#[test]
fn point_get_answers_what_a_one_key_range_answers() {
    let mut s = Store::default();
    let one_key = |s: &Store, k: &str| get(s, k, "").kvs.into_iter().next();
    assert_eq!(s.get(b"a"), None);
    put(&mut s, "a", "1");
    put(&mut s, "ab", "2");
    put(&mut s, "a", "3");
    assert_eq!(s.get(b"a"), one_key(&s, "a"));
    assert_eq!(s.get(b"a").map(|kv| kv.version), Some(2));
    del(&mut s, "a", "");
    assert_eq!(s.get(b"a"), None, "a tombstone is not live");
    assert_eq!(one_key(&s, "a"), None);
    put(&mut s, "a", "4");
    assert_eq!(s.get(b"a"), one_key(&s, "a"));
    assert_eq!(
        s.get(b"a").map(|kv| kv.version),
        Some(1),
        "a delete resets the version"
    );
    assert_eq!(s.get(b"ab"), one_key(&s, "ab"));
}
