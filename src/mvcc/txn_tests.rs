//! Unit tests of etcd's txn semantics (`applyTxn`, `applyCompare`, `checkIntervals`).

use bytes::Bytes;

use crate::mvcc::tests::*;
use crate::mvcc::*;

#[test]
fn txn_compares_on_missing_keys() {
    let s = Store::default();
    let holds = |c: Compare| s.compare_holds(&c, s.current_revision());
    assert!(holds(cmp(
        "nope",
        CompareResult::Equal,
        CompareTarget::Version(0)
    )));
    assert!(holds(cmp(
        "nope",
        CompareResult::Equal,
        CompareTarget::Create(0)
    )));
    assert!(holds(cmp(
        "nope",
        CompareResult::Less,
        CompareTarget::Mod(1)
    )));
    assert!(holds(cmp(
        "nope",
        CompareResult::Equal,
        CompareTarget::Lease(0)
    )));
    assert!(!holds(cmp(
        "nope",
        CompareResult::Equal,
        CompareTarget::Value(Bytes::new())
    )));
    assert!(!holds(cmp(
        "nope",
        CompareResult::NotEqual,
        CompareTarget::Value(b("x"))
    )));
}

#[test]
fn txn_branches_ranges_see_own_writes_and_compares_see_the_start() {
    let mut s = Store::default();
    put(&mut s, "k", "old"); // 2
    let nested = TxnRequest {
        // Evaluated before the outer put: k still holds "old".
        compare: vec![cmp(
            "k",
            CompareResult::Equal,
            CompareTarget::Value(b("old")),
        )],
        success: vec![put_op("n", "yes")],
        failure: vec![put_op("n", "no")],
    };
    let txn = TxnRequest {
        compare: vec![cmp("k", CompareResult::Equal, CompareTarget::Mod(2))],
        success: vec![put_op("k", "new"), range_op("k"), RequestOp::Txn(nested)],
        failure: vec![],
    };
    let w = s.txn(txn, &NoLeases).expect("txn");
    assert!(w.response.succeeded);
    assert_eq!(w.response.revision, 3);
    let ResponseOp::Range(r) = &w.response.responses[1] else {
        panic!("range response")
    };
    assert_eq!((r.kvs[0].value.clone(), r.revision), (b("new"), 3));
    let ResponseOp::Txn(t) = &w.response.responses[2] else {
        panic!("txn response")
    };
    assert!(t.succeeded);
    assert_eq!(t.revision, 0);
    assert_eq!(get(&s, "n", "").kvs[0].value, b("yes"));
    // Failure branch.
    let txn = TxnRequest {
        compare: vec![cmp("k", CompareResult::Greater, CompareTarget::Version(5))],
        success: vec![put_op("k", "never")],
        failure: vec![del_op("n", "")],
    };
    let w = s.txn(txn, &NoLeases).expect("txn");
    assert!(!w.response.succeeded);
    assert_eq!(w.changes.len(), 1);
    // A compare over a range must hold for every key in it.
    let all = Compare {
        key: b("a"),
        range_end: b("\0"),
        result: CompareResult::Greater,
        target: CompareTarget::Create(1),
    };
    assert!(s.compare_holds(&all, s.current_revision()));
    let all = Compare {
        target: CompareTarget::Create(2),
        ..all
    };
    assert!(!s.compare_holds(&all, s.current_revision()));
}

#[test]
fn txn_validation_errors() {
    let mut s = Store::default();
    let dup = TxnRequest {
        success: vec![put_op("a", "1"), put_op("a", "2")],
        ..Default::default()
    };
    assert_eq!(
        s.txn(dup, &NoLeases).map(|_| ()),
        Err(MvccError::DuplicateKey)
    );
    assert_eq!(
        MvccError::DuplicateKey.to_string(),
        "etcdserver: duplicate key given in txn request"
    );
    let in_del = TxnRequest {
        success: vec![del_op("a", "c"), put_op("b", "2")],
        ..Default::default()
    };
    assert_eq!(
        s.txn(in_del, &NoLeases).map(|_| ()),
        Err(MvccError::DuplicateKey)
    );
    // etcd 3.4 treats a from-key delete's end literally: it never conflicts.
    let from_key = TxnRequest {
        success: vec![del_op("a", "\0"), put_op("b", "2")],
        ..Default::default()
    };
    assert!(s.txn(from_key, &NoLeases).is_ok());
    // Same key in both branches of a nested txn is fine; in a nested txn and its parent it is not.
    let branches = TxnRequest {
        success: vec![put_op("x", "1")],
        failure: vec![put_op("x", "2")],
        ..Default::default()
    };
    let ok = TxnRequest {
        success: vec![RequestOp::Txn(branches.clone())],
        ..Default::default()
    };
    assert!(s.txn(ok, &NoLeases).is_ok());
    let clash = TxnRequest {
        success: vec![RequestOp::Txn(branches), put_op("x", "3")],
        ..Default::default()
    };
    assert_eq!(
        s.txn(clash, &NoLeases).map(|_| ()),
        Err(MvccError::DuplicateKey)
    );
    let many = TxnRequest {
        success: (0..129).map(|i| put_op(&format!("k{i}"), "v")).collect(),
        ..Default::default()
    };
    assert_eq!(
        s.txn(many, &NoLeases).map(|_| ()),
        Err(MvccError::TooManyOps { max: 128 })
    );
    assert_eq!(
        MvccError::TooManyOps { max: 1 }.to_string(),
        "etcdserver: too many operations in txn request"
    );
    let mut small = Store::new(2);
    let three = TxnRequest {
        compare: vec![],
        success: vec![range_op("a"); 3],
        failure: vec![],
    };
    assert!(matches!(
        small.txn(three, &NoLeases),
        Err(MvccError::TooManyOps { .. })
    ));
    // Taken-path checks: a range at a future revision fails the whole txn, which writes nothing.
    let rev = s.current_revision();
    let future = RequestOp::Range(RangeRequest {
        key: b("a"),
        revision: rev + 1,
        ..Default::default()
    });
    let txn = TxnRequest {
        success: vec![put_op("w", "1"), future],
        ..Default::default()
    };
    assert!(matches!(
        s.txn(txn, &NoLeases),
        Err(MvccError::FutureRevision { .. })
    ));
    assert_eq!(s.current_revision(), rev);
    let ignore = RequestOp::Put(PutRequest {
        key: b("missing"),
        ignore_value: true,
        ..Default::default()
    });
    let txn = TxnRequest {
        success: vec![ignore],
        ..Default::default()
    };
    assert_eq!(
        s.txn(txn, &NoLeases).map(|_| ()),
        Err(MvccError::KeyNotFound)
    );
}

#[test]
fn hash_is_equal_for_equal_histories_and_changes_with_them() {
    let mut a = Store::default();
    let mut b_ = Store::default();
    for s in [&mut a, &mut b_] {
        put(s, "x", "1");
        put(s, "y", "2");
    }
    assert_eq!(a.hash_kv(0), b_.hash_kv(0));
    let at2 = a.hash_kv(2).expect("hash");
    put(&mut a, "x", "3");
    assert_ne!(
        a.hash_kv(0).expect("hash").hash,
        b_.hash_kv(0).expect("hash").hash
    );
    assert_eq!(
        a.hash_kv(2).expect("hash").hash,
        at2.hash,
        "later writes do not change an older hash"
    );
    assert_eq!(
        a.hash_kv(0).expect("hash").compact_revision,
        NEVER_COMPACTED
    );
}

#[test]
fn errors_carry_etcd_codes() {
    assert_eq!(
        MvccError::FutureRevision {
            current_revision: 1
        }
        .grpc_code(),
        GrpcCode::OutOfRange
    );
    assert_eq!(
        MvccError::LeaseNotFound { lease: 1 }.grpc_code(),
        GrpcCode::NotFound
    );
    assert_eq!(
        MvccError::EmptyKey.etcd_message(),
        "etcdserver: key is not provided"
    );
}

#[test]
fn an_ignore_value_put_after_a_from_key_delete_of_its_key_fails_and_changes_nothing() {
    // etcd 3.4 lets this through checkIntervals and then panics in applyTxn; we refuse it whole.
    let mut s = Store::default();
    put(&mut s, "k", "v");
    let before = s.clone();
    let ignore = RequestOp::Put(PutRequest {
        key: b("k"),
        ignore_value: true,
        ..Default::default()
    });
    let txn = TxnRequest {
        success: vec![put_op("a", "1"), del_op("b", "\0"), ignore],
        ..Default::default()
    };
    assert_eq!(
        s.txn(txn, &NoLeases).map(|_| ()),
        Err(MvccError::KeyNotFound)
    );
    assert_eq!(s, before);
    // A plain put after the from-key delete is fine: a new generation in the same revision.
    let txn = TxnRequest {
        success: vec![del_op("a", "\0"), put_op("k", "new")],
        ..Default::default()
    };
    let w = s.txn(txn, &NoLeases).expect("txn");
    assert_eq!(w.changes.len(), 2);
    let kv = &get(&s, "k", "").kvs[0];
    assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (1, 3, 3));
}

#[test]
fn requests_and_responses_round_trip_through_postcard_and_json() {
    let nested = TxnRequest {
        compare: vec![cmp(
            "k",
            CompareResult::NotEqual,
            CompareTarget::Value(Bytes::from_static(b"\x00\xff")),
        )],
        success: vec![del_op("a", "\0")],
        failure: vec![range_op("b")],
    };
    let req = TxnRequest {
        compare: vec![Compare {
            key: b("a"),
            range_end: b("b"),
            result: CompareResult::Less,
            target: CompareTarget::Lease(-3),
        }],
        success: vec![put_op("k", "v"), RequestOp::Txn(nested)],
        failure: vec![RequestOp::Range(RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            limit: 3,
            revision: -1,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            keys_only: true,
            count_only: true,
            min_mod_revision: 1,
            max_mod_revision: 2,
            min_create_revision: 3,
            max_create_revision: 4,
        })],
    };
    let bytes = postcard::to_stdvec(&req).expect("encode");
    assert_eq!(
        postcard::from_bytes::<TxnRequest>(&bytes).expect("decode"),
        req
    );
    let json = serde_json::to_string(&req).expect("json");
    assert_eq!(
        serde_json::from_str::<TxnRequest>(&json).expect("json decode"),
        req
    );
    let mut s = Store::default();
    let w = s.txn(req, &NoLeases).expect("txn");
    let bytes = postcard::to_stdvec(&w.response).expect("encode");
    assert_eq!(
        postcard::from_bytes::<TxnResponse>(&bytes).expect("decode"),
        w.response
    );
    let bytes = postcard::to_stdvec(&w.changes).expect("encode");
    assert_eq!(
        postcard::from_bytes::<Vec<Change>>(&bytes).expect("decode"),
        w.changes
    );
}

#[test]
fn read_only_txns_can_be_served_from_a_shared_reference() {
    let mut s = Store::default();
    put(&mut s, "k", "v");
    let ro = TxnRequest {
        compare: vec![cmp("k", CompareResult::Equal, CompareTarget::Version(1))],
        success: vec![range_op("k")],
        failure: vec![],
    };
    assert!(is_txn_read_only(&ro));
    let read = s.read_txn(&ro).expect("read-only").expect("answer");
    assert_eq!(read, s.clone().txn(ro, &NoLeases).expect("txn").response);
    let rw = TxnRequest {
        success: vec![put_op("k", "w")],
        ..Default::default()
    };
    assert!(s.read_txn(&rw).is_none());
}

/// The answers a real single-node etcd 3.4.23 gave to this session (through its JSON gateway,
/// `/v3/kv/*`, 2026-12-02), replayed on the store.
#[test]
fn answers_recorded_from_etcd_3_4_23() {
    let mut s = Store::default();
    for k in ["a", "b", "c"] {
        put(&mut s, k, "v"); // a 2, b 3, c 4
    }
    put(&mut s, "a", "w"); // a 5
    // min_mod_revision 4, limit 1 → kvs [a], more true, count 3 (count ignores filters).
    let q = RangeRequest {
        key: b("a"),
        range_end: b("\0"),
        min_mod_revision: 4,
        limit: 1,
        ..Default::default()
    };
    let r = s.range(&q).expect("range");
    assert_eq!(
        (keys(&r), r.more, r.count, r.revision),
        (vec!["a".into()], true, 3, 5)
    );
    let r = s
        .range(&RangeRequest {
            count_only: true,
            limit: 0,
            ..q
        })
        .expect("range");
    assert_eq!((r.kvs.len(), r.count), (0, 3));
    put(&mut s, "k", "old"); // 6
    // Outer put k=new, a range of k, and a nested txn comparing k's value with "old": the
    // nested compare sees the state before the txn (succeeds); its header is empty.
    let nested = TxnRequest {
        compare: vec![cmp(
            "k",
            CompareResult::Equal,
            CompareTarget::Value(b("old")),
        )],
        success: vec![put_op("n", "yes")],
        failure: vec![put_op("n", "no")],
    };
    let txn = TxnRequest {
        success: vec![put_op("k", "new"), range_op("k"), RequestOp::Txn(nested)],
        ..Default::default()
    };
    let w = s.txn(txn, &NoLeases).expect("txn");
    assert!(w.response.succeeded);
    assert_eq!(w.response.revision, 7);
    let [ResponseOp::Put(p), ResponseOp::Range(r), ResponseOp::Txn(t)] = &w.response.responses[..]
    else {
        panic!("three responses: {:?}", w.response.responses)
    };
    assert_eq!(p.revision, 7);
    let kv = &r.kvs[0];
    assert_eq!(
        (
            r.revision,
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.clone()
        ),
        (7, 6, 7, 2, b("new"))
    );
    assert!(t.succeeded);
    assert_eq!(t.revision, 0);
    let ResponseOp::Put(np) = &t.responses[0] else {
        panic!("nested put")
    };
    assert_eq!(np.revision, 7);
    // A range at revision -2 inside a txn is Compacted (compacted is -1); -1 reads the current.
    let at = |rev| TxnRequest {
        success: vec![RequestOp::Range(RangeRequest {
            key: b("k"),
            revision: rev,
            ..Default::default()
        })],
        ..Default::default()
    };
    assert!(matches!(
        s.txn(at(-2), &NoLeases),
        Err(MvccError::Compacted {
            compact_revision: -1
        })
    ));
    assert_eq!(s.txn(at(-1), &NoLeases).expect("txn").response.revision, 7);
    // A future-revision range and an unknown lease in one txn: the lease error wins.
    let both = TxnRequest {
        success: vec![
            RequestOp::Range(RangeRequest {
                key: b("k"),
                revision: 99,
                ..Default::default()
            }),
            RequestOp::Put(PutRequest {
                key: b("z"),
                value: b("v"),
                lease: 7,
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    assert_eq!(
        s.txn(both, &NoLeases).map(|_| ()),
        Err(MvccError::LeaseNotFound { lease: 7 })
    );
    // Compacting at 0 when never compacted succeeds.
    assert_eq!(s.compact(0), Ok(7));
}
