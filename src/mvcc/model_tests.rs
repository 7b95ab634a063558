//! Model-based tests: seeded random sequences of put / delete / delete-range / txn (with
//! compares, nested txns) / compact / range-at-a-random-revision, applied to the store, to a
//! second replica, to a replica restored from a mid-run snapshot, and to [`Model`]; every answer
//! (responses, changes, errors) must be identical, and the replicas' state and `hash_kv` equal.
//! Read-only txns are also answered by `read_txn`, and `changes_between` must replay exactly
//! the change records the writes returned.
//!
//! Seeds: `SEEDS` by default; `RAFTKV_SEED=<n>` replays one. The seed and op index are printed
//! on failure.

use bytes::Bytes;

use crate::mvcc::model::Model;
use crate::mvcc::*;

const SEEDS: [u64; 8] = [1, 2, 3, 4, 5, 0xdead_beef, 42, 7_777_777];
const OPS_PER_SEED: usize = 5000;
const TXN_OPS_MAX: usize = 6;
/// Few keys, with prefixes of each other and 0xff bytes, so ranges, prefixes and conflicts hit.
const KEYS: [&[u8]; 10] = [
    b"a",
    b"ab",
    b"abc",
    b"b",
    b"ba",
    b"c",
    b"d\xff",
    b"d\xff\xff",
    b"e",
    b"\xff",
];
const VALUES: [&[u8]; 5] = [b"", b"x", b"y", b"zz", b"\x00\xff"];

/// splitmix64: small, deterministic, good enough to drive tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1).max(1) as u64) as i64
    }
}

/// Leases with an even id exist.
fn leases(id: i64) -> bool {
    id % 2 == 0
}

struct Gen<'a> {
    rng: &'a mut Rng,
    keys: &'a [Bytes],
    current: i64,
    compacted: i64,
}

impl Gen<'_> {
    fn key(&mut self) -> Bytes {
        // Now and then an empty key: etcd's "key is not provided", wherever a key goes.
        if self.rng.chance(1) {
            Bytes::new()
        } else {
            self.keys[self.rng.below(self.keys.len() as u64) as usize].clone()
        }
    }

    fn range_end(&mut self, key: &[u8]) -> Bytes {
        match self.rng.below(5) {
            0 | 1 => Bytes::new(),
            2 => Bytes::from_static(b"\0"),
            3 => Bytes::from(prefix_end(key)),
            _ => self.key(),
        }
    }

    fn revision(&mut self) -> i64 {
        match self.rng.below(4) {
            0 | 1 => 0,
            2 => self.rng.between(self.compacted.max(1), self.current),
            _ => self.rng.between(self.compacted - 2, self.current + 2),
        }
    }

    fn filter(&mut self) -> i64 {
        if self.rng.chance(85) {
            0
        } else {
            self.rng.between(1, self.current)
        }
    }

    fn range(&mut self) -> RangeRequest {
        let key = self.key();
        let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
        let targets = [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ];
        RangeRequest {
            range_end: self.range_end(&key),
            key,
            limit: self.rng.between(-1, 4),
            revision: self.revision(),
            sort_order: if self.rng.chance(60) {
                SortOrder::None
            } else {
                self.rng.pick(&orders)
            },
            sort_target: if self.rng.chance(60) {
                SortTarget::Key
            } else {
                self.rng.pick(&targets)
            },
            keys_only: self.rng.chance(15),
            count_only: self.rng.chance(10),
            min_mod_revision: self.filter(),
            max_mod_revision: self.filter(),
            min_create_revision: self.filter(),
            max_create_revision: self.filter(),
        }
    }

    fn put(&mut self) -> PutRequest {
        let ignore_value = self.rng.chance(10);
        let ignore_lease = self.rng.chance(10);
        PutRequest {
            key: self.key(),
            value: if ignore_value && self.rng.chance(90) {
                Bytes::new()
            } else {
                Bytes::from_static(self.rng.pick(&VALUES))
            },
            lease: if ignore_lease && self.rng.chance(90) || self.rng.chance(70) {
                0
            } else {
                self.rng.between(1, 4)
            },
            prev_kv: self.rng.chance(50),
            ignore_value,
            ignore_lease,
        }
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        let key = self.key();
        DeleteRangeRequest {
            range_end: self.range_end(&key),
            key,
            prev_kv: self.rng.chance(50),
        }
    }

    fn compare(&mut self) -> Compare {
        let key = self.key();
        let range_end = if self.rng.chance(75) {
            Bytes::new()
        } else {
            self.range_end(&key)
        };
        let n = self.rng.between(0, self.current + 1);
        let target = match self.rng.below(5) {
            0 => CompareTarget::Version(self.rng.between(0, 3)),
            1 => CompareTarget::Create(n),
            2 => CompareTarget::Mod(n),
            3 => CompareTarget::Value(Bytes::from_static(self.rng.pick(&VALUES))),
            _ => CompareTarget::Lease(self.rng.between(0, 4)),
        };
        let results = [
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual,
        ];
        Compare {
            key,
            range_end,
            result: self.rng.pick(&results),
            target,
        }
    }

    fn ops(&mut self, depth: u32) -> Vec<RequestOp> {
        let n = self.rng.below(4);
        let kinds = if depth < 2 { 10 } else { 9 };
        (0..n)
            .map(|_| match self.rng.below(kinds) {
                0..=2 => RequestOp::Range(self.range()),
                3..=5 => RequestOp::Put(self.put()),
                6..=8 => RequestOp::DeleteRange(self.delete()),
                _ => RequestOp::Txn(self.txn(depth + 1)),
            })
            .collect()
    }

    fn txn(&mut self, depth: u32) -> TxnRequest {
        let max = if self.rng.chance(3) { 8 } else { 3 };
        let n = self.rng.below(max);
        TxnRequest {
            compare: (0..n).map(|_| self.compare()).collect(),
            success: self.ops(depth),
            failure: self.ops(depth),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
}

fn gen_op(rng: &mut Rng, keys: &[Bytes], current: i64, compacted: i64) -> Op {
    let mut g = Gen {
        rng,
        keys,
        current,
        compacted,
    };
    match g.rng.below(100) {
        0..=24 => Op::Range(g.range()),
        25..=54 => Op::Put(g.put()),
        55..=64 => Op::Delete(g.delete()),
        65..=97 => Op::Txn(g.txn(0)),
        // Compact about every 50 ops, usually by half the retained span: history stays long.
        _ => Op::Compact(if g.rng.chance(80) {
            let span = current - compacted.max(1);
            compacted.max(1) + g.rng.between(0, span / 2)
        } else {
            g.rng.between(compacted - 1, current + 1)
        }),
    }
}

/// Every answer an op can give, comparable across implementations.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Range(Result<RangeResponse, MvccError>),
    Put(Result<Written<PutResponse>, MvccError>),
    Delete(Result<Written<DeleteRangeResponse>, MvccError>),
    Txn(Result<Written<TxnResponse>, MvccError>),
    Compact(Result<i64, MvccError>),
}

fn apply(s: &mut Store, op: &Op) -> Answer {
    match op {
        Op::Range(r) => Answer::Range(s.range(r)),
        Op::Put(p) => Answer::Put(s.put(p.clone(), &leases)),
        Op::Delete(d) => Answer::Delete(s.delete_range(d)),
        Op::Txn(t) => Answer::Txn(s.txn(t.clone(), &leases)),
        Op::Compact(r) => Answer::Compact(s.compact(*r)),
    }
}

fn apply_model(m: &mut Model, op: &Op) -> Answer {
    match op {
        Op::Range(r) => Answer::Range(m.range(r)),
        Op::Put(p) => Answer::Put(m.put(p.clone(), &leases)),
        Op::Delete(d) => Answer::Delete(m.delete(d)),
        Op::Txn(t) => Answer::Txn(m.txn(t, &leases)),
        Op::Compact(r) => Answer::Compact(m.compact(*r)),
    }
}

/// Every key at every readable revision, read from both.
fn assert_all_reads_agree(s: &Store, m: &Model, ctx: &str) {
    let lo = m.compacted.max(1);
    for rev in lo..=m.current() {
        let all = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            revision: rev,
            ..Default::default()
        };
        assert_eq!(
            s.range(&all),
            m.range(&all),
            "{ctx}: full read at revision {rev}"
        );
    }
}

/// `changes_between` over a random window above the compacted revision is exactly that window
/// of the writes' own change records. (At the compacted revision itself a change's prev_kv may
/// be gone, as in etcd, so windows start above it.)
fn assert_replay_matches_log(s: &Store, log: &[Change], rng: &mut Rng, ctx: &str) {
    let from = rng.between(s.compact_revision() + 1, s.current_revision());
    let to = rng.between(from - 1, s.current_revision());
    let want: Vec<Change> = log
        .iter()
        .filter(|c| (from..=to).contains(&c.revision.main))
        .cloned()
        .collect();
    assert_eq!(
        s.changes_between(from, to).as_ref(),
        Ok(&want),
        "{ctx}: replay {from}..={to}"
    );
    if s.compact_revision() > 0 {
        assert!(matches!(
            s.changes_between(s.compact_revision() - 1, to),
            Err(MvccError::Compacted { .. })
        ));
    }
    assert!(matches!(
        s.changes_between(from, s.current_revision() + 1),
        Err(MvccError::FutureRevision { .. })
    ));
}

/// The snapshot of `view` written from `s` in pieces of `keys_max` keys.
pub(crate) fn encode_held(s: &Store, view: &snapshot::View, keys_max: usize) -> Vec<u8> {
    let mut encoder = snapshot::Encoder::new(Vec::new(), view.clone()).expect("header");
    let mut after: Option<Bytes> = None;
    loop {
        let mut buf = Vec::new();
        let chunk =
            snapshot::encode_keys(s, view, after.as_deref(), keys_max, &mut buf).expect("keys");
        encoder.write_keys(&buf, chunk.keys).expect("write");
        match chunk.next {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    encoder.finish().expect("finish")
}

fn snapshot_round_trip(s: &Store) -> Store {
    let mut buf = Vec::new();
    s.encode_snapshot(&mut buf).expect("encode");
    snapshot::decode(&buf[..], TXN_OPS_MAX).expect("decode")
}

/// Odd seeds use the 10 tricky keys; even seeds add 48 more, for longer ranges, pages and sorts
/// (etcd's sort is stable only up to 12 elements; ours always is).
fn key_set(seed: u64) -> Vec<Bytes> {
    let mut keys: Vec<Bytes> = KEYS.iter().map(|k| Bytes::from_static(k)).collect();
    if seed.is_multiple_of(2) {
        keys.extend((0..48).map(|i| Bytes::from(format!("k{i:02}").into_bytes())));
    }
    keys
}

fn run_seed(seed: u64) {
    let mut rng = Rng(seed);
    let keys = key_set(seed);
    let mut store = Store::new(TXN_OPS_MAX);
    let mut replica = Store::new(TXN_OPS_MAX);
    let mut restored: Option<Store> = None;
    let mut model = Model::new(TXN_OPS_MAX);
    let (mut ok, mut errors, mut read_txns) = (0usize, 0usize, 0usize);
    // Every change every write returned, in order: what a watch from revision 1 would see.
    let mut log: Vec<Change> = Vec::new();
    let mut kinds: std::collections::BTreeMap<&'static str, usize> = Default::default();
    // The replica writes a snapshot piece by piece in windows of ops (compaction held): what
    // it wrote must be the snapshot of the window's start, and it must answer like the store.
    let mut held: Option<(snapshot::View, Vec<u8>)> = None;
    let mut owed_at_release = 0usize;
    for i in 0..OPS_PER_SEED {
        let ctx = format!("seed {seed} (RAFTKV_SEED={seed}) op {i}");
        match i % 400 {
            100 => {
                let mut at_start = Vec::new();
                replica.encode_snapshot(&mut at_start).expect("encode");
                held = Some((replica.hold_compaction(), at_start));
            }
            300 => {
                let (view, at_start) = held.take().expect("a held view");
                let keys_max = rng.between(1, 8) as usize;
                assert_eq!(
                    encode_held(&replica, &view, keys_max),
                    at_start,
                    "{ctx}: snapshot written while held, {keys_max} keys a piece"
                );
                owed_at_release += usize::from(replica.compaction_owed());
                replica.release_compaction();
            }
            _ => {}
        }
        let op = gen_op(
            &mut rng,
            &keys,
            store.current_revision(),
            store.compact_revision(),
        );
        let read_only = match &op {
            Op::Txn(t) => store.read_txn(t),
            _ => None,
        };
        let want = apply_model(&mut model, &op);
        let got = apply(&mut store, &op);
        assert_eq!(got, want, "{ctx}: {op:?}");
        // The replica compacts as the state machine does: the removal owed, done a few keys
        // at a time between ops (none while its snapshot window holds compaction).
        let on_replica = match &op {
            Op::Compact(r) => Answer::Compact(replica.compact_later(*r)),
            _ => apply(&mut replica, &op),
        };
        assert_eq!(on_replica, got, "{ctx}: replica");
        replica.compact_step(rng.between(0, 8) as usize);
        if let (Some(read), Answer::Txn(full)) = (read_only, &got) {
            let full = full.clone().map(|w| (w.response, w.changes.is_empty()));
            assert_eq!(read.map(|r| (r, true)), full, "{ctx}: read_txn");
            read_txns += 1;
        }
        if let Some(r) = restored.as_mut() {
            assert_eq!(apply(r, &op), got, "{ctx}: restored replica");
        }
        match &got {
            Answer::Put(Ok(w)) => log.extend(w.changes.iter().cloned()),
            Answer::Delete(Ok(w)) => log.extend(w.changes.iter().cloned()),
            Answer::Txn(Ok(w)) => log.extend(w.changes.iter().cloned()),
            _ => {}
        }
        match &got {
            Answer::Range(Err(e))
            | Answer::Put(Err(e))
            | Answer::Delete(Err(e))
            | Answer::Txn(Err(e))
            | Answer::Compact(Err(e)) => {
                errors += 1;
                *kinds.entry(e.etcd_message()).or_default() += 1;
            }
            Answer::Txn(Ok(w)) => {
                ok += 1;
                *kinds
                    .entry(if w.response.succeeded {
                        "txn succeeded"
                    } else {
                        "txn failed"
                    })
                    .or_default() += 1;
            }
            Answer::Range(Ok(r)) if r.kvs.len() > 1 => {
                ok += 1;
                *kinds.entry("range of 2+ kvs").or_default() += 1;
            }
            _ => ok += 1,
        }
        store
            .check_invariants()
            .unwrap_or_else(|e| panic!("{ctx}: invariant: {e}"));
        // The replica's compactions are owed and done a few keys at a time: its invariants hold
        // up to the keys still owed (`Store::compact_later`).
        replica
            .check_invariants()
            .unwrap_or_else(|e| panic!("{ctx}: replica invariant: {e}"));
        if i % 500 == 250 {
            let copy = snapshot_round_trip(&store);
            assert_eq!(copy, store, "{ctx}: snapshot round trip");
            restored = Some(copy);
        }
        if i % 300 == 299 {
            assert_all_reads_agree(&store, &model, &ctx);
            let rev = rng.between(store.compact_revision(), store.current_revision() + 1);
            assert_eq!(
                store.hash_kv(rev),
                replica.hash_kv(rev),
                "{ctx}: hash at {rev}"
            );
        }
        if i % 50 == 49 {
            assert_replay_matches_log(&store, &log, &mut rng, &ctx);
        }
    }
    assert_all_reads_agree(&store, &model, &format!("seed {seed} end"));
    if let Some((view, at_start)) = held.take() {
        assert_eq!(
            encode_held(&replica, &view, 3),
            at_start,
            "seed {seed}: last held view"
        );
        replica.release_compaction();
    }
    while replica.compact_step(16) {}
    assert_eq!(store, replica, "seed {seed}: replicas differ");
    assert_eq!(store.hash_kv(0), replica.hash_kv(0));
    let restored = restored.expect("a restored replica");
    assert_eq!(
        restored.hash_kv(0),
        store.hash_kv(0),
        "seed {seed}: restored hash"
    );
    // The sequence must exercise both outcomes, and history must actually be dropped.
    assert!(
        ok > OPS_PER_SEED / 3 && errors > OPS_PER_SEED / 50,
        "seed {seed}: {ok} ok, {errors} errors"
    );
    assert!(store.compact_revision() > 1, "seed {seed}: never compacted");
    assert!(
        owed_at_release > 0,
        "seed {seed}: no compaction ran while a snapshot was held"
    );
    assert!(
        read_txns > 10,
        "seed {seed}: only {read_txns} read-only txns"
    );
    eprintln!(
        "seed {seed}: {ok} ok / {errors} errors, revision {}, compacted {}, {} keys, {} entries; {kinds:?}",
        store.current_revision(),
        store.compact_revision(),
        store.key_count(),
        store.entry_count()
    );
}

#[test]
fn store_answers_like_the_model() {
    let seeds: Vec<u64> = match std::env::var("RAFTKV_SEED") {
        Ok(s) => vec![s.parse().expect("RAFTKV_SEED must be a u64")],
        Err(_) => SEEDS.to_vec(),
    };
    for seed in seeds {
        eprintln!("model test: seed {seed} (replay with RAFTKV_SEED={seed})");
        run_seed(seed);
    }
}
