//! Snapshot format tests: round trip, every truncation point, every flipped byte, invariant
//! violations behind a valid checksum, and oversized length claims.

use bytes::Bytes;

use crate::mvcc::snapshot::SnapshotError;
use crate::mvcc::snapshot::decode;
use crate::mvcc::tests::*;
use crate::mvcc::*;

/// A small store with every kind of entry: history, a tombstone, a re-created key, a lease,
/// binary and empty values, and a compaction that left a mid-generation first entry.
fn sample() -> Store {
    let mut s = Store::default();
    put(&mut s, "a", "1");
    put(&mut s, "a", "2");
    put(&mut s, "b", "");
    let leased = PutRequest {
        key: b("c"),
        value: Bytes::from_static(b"\x00\xff"),
        lease: 8,
        ..Default::default()
    };
    s.put(leased, &|_| true).expect("put");
    del(&mut s, "b", "");
    put(&mut s, "b", "again");
    put(&mut s, "a", "3");
    s.compact(3).expect("compact");
    put(&mut s, "d\u{ff}", "x");
    s
}

fn encoded(s: &Store) -> Vec<u8> {
    let mut buf = Vec::new();
    s.encode_snapshot(&mut buf).expect("encode");
    buf
}

/// `body` with its checksum appended.
fn sealed(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

/// `stream` (a version 3 stream) with its key count hint set to `hint` and its checksum made
/// again.
fn with_hint(mut stream: Vec<u8>, hint: u64) -> Vec<u8> {
    assert_eq!(stream[8], 3, "a version 3 stream");
    stream[25..33].copy_from_slice(&hint.to_le_bytes());
    stream.truncate(stream.len() - 4);
    sealed(stream)
}

fn without_hint(stream: Vec<u8>) -> Vec<u8> {
    with_hint(stream, 0)
}

fn corrupt_detail(r: Result<Store, SnapshotError>) -> String {
    match r {
        Err(SnapshotError::Corrupt { detail, .. }) => detail,
        other => panic!("expected a corrupt-snapshot error, got {other:?}"),
    }
}

#[test]
fn round_trip_keeps_state_history_and_hash() {
    let s = sample();
    let copy = decode(&encoded(&s)[..], TXN_OPS_MAX_DEFAULT).expect("decode");
    assert_eq!(copy, s);
    assert_eq!(copy.hash_kv(0), s.hash_kv(0));
    assert_eq!(copy.compact_revision(), 3);
    assert_eq!(get_at(&copy, "a", 3), get_at(&s, "a", 3));
    let empty = Store::default();
    assert_eq!(decode(&encoded(&empty)[..], 128).expect("decode"), empty);
}

#[test]
fn decode_reads_exactly_the_snapshot_and_no_further() {
    let mut buf = encoded(&sample());
    let len = buf.len();
    buf.extend_from_slice(b"trailer");
    let mut reader = &buf[..];
    decode(&mut reader, 128).expect("decode");
    assert_eq!(reader, b"trailer", "{len} bytes consumed");
}

#[test]
fn every_truncation_is_rejected() {
    let buf = encoded(&sample());
    for cut in 0..buf.len() {
        let detail = corrupt_detail(decode(&buf[..cut], 128));
        assert!(!detail.is_empty(), "cut at {cut}");
    }
}

#[test]
fn every_flipped_byte_is_rejected() {
    let buf = encoded(&sample());
    for i in 0..buf.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = buf.clone();
            bad[i] ^= mask;
            assert!(
                decode(&bad[..], 128).is_err(),
                "byte {i} ^ {mask:#x} accepted"
            );
        }
    }
}

/// The reader decodes in place from its input's buffer and hashes a buffer's worth at once;
/// fields that span two buffers take another path. Buffers of a few bytes put every field
/// across a boundary somewhere: the same store, the same bytes consumed, the same damage found.
#[test]
fn fields_across_buffer_boundaries_decode_and_hash_the_same() {
    let s = sample();
    let mut buf = encoded(&s);
    let len = buf.len();
    buf.extend_from_slice(b"trailer");
    for capacity in [1, 2, 3, 7, 8, 13, 64] {
        let mut reader = std::io::BufReader::with_capacity(capacity, &buf[..]);
        assert_eq!(decode(&mut reader, 128).expect("decode"), s, "{capacity}");
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut rest).expect("rest");
        assert_eq!(
            rest, b"trailer",
            "capacity {capacity}: {len} bytes consumed"
        );
        for cut in 0..len {
            let small = std::io::BufReader::with_capacity(capacity, &buf[..cut]);
            assert!(!corrupt_detail(decode(small, 128)).is_empty(), "cut {cut}");
        }
        for i in 0..len {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            let small = std::io::BufReader::with_capacity(capacity, &bad[..]);
            assert!(
                decode(small, 128).is_err(),
                "byte {i} flipped, capacity {capacity}"
            );
        }
    }
}

/// Builds a stream by hand, with a correct checksum, to reach the checks behind it.
struct Raw(Vec<u8>);

impl Raw {
    /// A version-1 header (a key count; still read), so these cases cover that decoder too.
    fn header(current: i64, compacted: i64, keys: u64) -> Raw {
        let mut r = Raw(snapshot::MAGIC.to_vec());
        r.0.push(1);
        r.i64(current).i64(compacted);
        r.0.extend_from_slice(&keys.to_le_bytes());
        r
    }
    fn i64(&mut self, x: i64) -> &mut Raw {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn len(&mut self, n: u32) -> &mut Raw {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    fn key(&mut self, k: &[u8], entries: u32) -> &mut Raw {
        self.len(k.len() as u32);
        self.0.extend_from_slice(k);
        self.len(entries)
    }
    fn put(&mut self, main: i64, create: i64, version: i64, value: &[u8]) -> &mut Raw {
        self.i64(main).i64(0);
        self.0.push(1);
        self.i64(create).i64(version).i64(0).len(value.len() as u32);
        self.0.extend_from_slice(value);
        self
    }
    fn tomb(&mut self, main: i64) -> &mut Raw {
        self.i64(main).i64(0);
        self.0.push(0);
        self
    }
    fn done(&self) -> Vec<u8> {
        let mut out = self.0.clone();
        out.extend_from_slice(&crc32fast::hash(&self.0).to_le_bytes());
        out
    }
}

#[test]
fn a_valid_checksum_does_not_hide_broken_invariants() {
    let ok = Raw::header(3, -1, 1)
        .key(b"a", 2)
        .put(2, 2, 1, b"x")
        .put(3, 2, 2, b"y")
        .done();
    decode(&ok[..], 128).expect("well-formed stream");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad revisions", Raw::header(0, -1, 0).done()),
        ("bad revisions", Raw::header(3, 4, 0).done()),
        (
            "not ascending",
            Raw::header(3, -1, 2)
                .key(b"b", 1)
                .put(2, 2, 1, b"")
                .key(b"a", 1)
                .put(3, 3, 1, b"")
                .done(),
        ),
        (
            "empty",
            Raw::header(3, -1, 1).key(b"", 1).put(2, 2, 1, b"").done(),
        ),
        (
            "empty key history",
            Raw::header(3, -1, 1).key(b"a", 0).done(),
        ),
        (
            "starts with a tombstone",
            Raw::header(3, -1, 1).key(b"a", 1).tomb(2).done(),
        ),
        (
            "revisions not ascending",
            Raw::header(3, -1, 1)
                .key(b"a", 2)
                .put(3, 3, 1, b"")
                .put(3, 3, 2, b"")
                .done(),
        ),
        (
            "out of range",
            Raw::header(3, -1, 1).key(b"a", 1).put(4, 4, 1, b"").done(),
        ),
        (
            "continue its generation",
            Raw::header(3, -1, 1)
                .key(b"a", 2)
                .put(2, 2, 1, b"")
                .put(3, 2, 3, b"")
                .done(),
        ),
        (
            "version 1",
            Raw::header(4, -1, 1)
                .key(b"a", 3)
                .put(2, 2, 1, b"")
                .tomb(3)
                .put(4, 4, 2, b"")
                .done(),
        ),
        (
            "below the compacted",
            Raw::header(4, 3, 1)
                .key(b"a", 2)
                .put(2, 2, 1, b"")
                .put(3, 2, 2, b"")
                .done(),
        ),
        (
            "key 4294967295 over",
            Raw::header(3, -1, 1).len(u32::MAX).done(),
        ),
    ];
    for (want, bytes) in cases {
        let detail = corrupt_detail(decode(&bytes[..], 128));
        assert!(detail.contains(want), "wanted {want:?}, got {detail:?}");
    }
    let mut wrong_version = Raw::header(3, -1, 0).done();
    wrong_version[8] = 4;
    assert!(corrupt_detail(decode(&wrong_version[..], 128)).contains("format version 4"));
    assert!(corrupt_detail(decode(&b"RAFTKVSN\x01"[..], 128)).contains("bad magic"));
}

#[test]
fn a_held_view_is_written_as_it_was_while_writes_and_a_compaction_go_on() {
    let mut s = sample();
    let at_hold = encoded(&s);
    let view = s.hold_compaction();
    // After the view: keys before, between and after the old ones, a put and a delete on an
    // old key, and a compaction that would remove entries the view holds.
    put(&mut s, "0first", "n");
    put(&mut s, "a", "4");
    del(&mut s, "a", "");
    put(&mut s, "bb", "mid");
    put(&mut s, "zz", "last");
    s.compact(s.current_revision()).expect("compact");
    assert!(s.compaction_owed());
    for keys_max in [1, 2, 3, 1024] {
        let written = crate::mvcc::model_tests::encode_held(&s, &view, keys_max);
        assert_eq!(written, at_hold, "{keys_max} keys a piece");
    }
    // Held: no step removes anything.
    assert!(s.compact_step(1024));
    assert!(s.compaction_owed());
    // While the removal is owed, the store answers as if it had run.
    let mut ran = s.clone();
    ran.release_compaction();
    while ran.compact_step(2) {}
    assert!(!ran.compaction_owed());
    ran.check_invariants()
        .expect("invariants after the owed removal");
    assert_eq!(s.hash_kv(0), ran.hash_kv(0));
    // The same bytes but for the key count hint: the owed removal's keys are still counted.
    assert_eq!(without_hint(encoded(&s)), without_hint(encoded(&ran)));
    assert_eq!(get_at(&s, "b", 0), get_at(&ran, "b", 0));
    s.release_compaction();
    while s.compact_step(1) {}
    assert_eq!(s, ran);
}

#[test]
fn a_deferred_compaction_frees_memory_a_piece_at_a_time_and_answers_at_once() {
    let mut now = sample();
    let mut later = sample();
    for i in 0..10 {
        put(&mut now, &format!("k{i}"), "v");
        put(&mut later, &format!("k{i}"), "v");
    }
    del(&mut now, "k3", "");
    del(&mut later, "k3", "");
    let rev = now.current_revision() - 1;
    now.compact(rev).expect("compact");
    later.compact_later(rev).expect("compact later");
    assert!(later.compaction_owed());
    assert_eq!(later.compact_revision(), rev);
    assert!(matches!(
        get_at(&later, "a", rev - 1),
        Err(MvccError::Compacted { .. })
    ));
    assert_eq!(later.hash_kv(0), now.hash_kv(0));
    assert_eq!(encoded(&later), encoded(&now));
    let mut steps = 0;
    while later.compact_step(1) {
        steps += 1;
    }
    assert!(steps >= 2, "{steps} steps of 1 key");
    assert_eq!(later, now);
    // A newer compaction while one is owed starts its pass over.
    for s in [&mut now, &mut later] {
        put(s, "k1", "w");
        put(s, "k2", "w");
    }
    later.compact_later(rev + 1).expect("compact later");
    later.compact_step(2);
    later.compact_later(rev + 2).expect("compact later again");
    while later.compact_step(2) {}
    now.compact(rev + 2).expect("compact");
    assert_eq!(later, now);
}

#[test]
fn a_version_1_snapshot_with_a_key_count_is_still_read() {
    let s = sample();
    let view = snapshot::View::of(&s);
    let mut keys = Vec::new();
    let chunk = snapshot::encode_keys(&s, &view, None, usize::MAX, &mut keys).expect("keys");
    let mut v1 = snapshot::MAGIC.to_vec();
    v1.push(1);
    v1.extend_from_slice(&view.revision.to_le_bytes());
    v1.extend_from_slice(&view.compacted.to_le_bytes());
    v1.extend_from_slice(&chunk.keys.to_le_bytes());
    v1.extend_from_slice(&keys);
    let v1 = sealed(v1);
    assert_eq!(decode(&v1[..], TXN_OPS_MAX_DEFAULT).expect("decode v1"), s);
}

#[test]
fn a_version_2_snapshot_without_a_key_count_is_still_read() {
    let s = sample();
    let v3 = encoded(&s);
    assert_eq!(v3[8], 3, "writes version 3");
    // Version 3's header: magic, version, two revisions, then the key count hint.
    let hint = u64::from_le_bytes(v3[25..33].try_into().expect("8 bytes"));
    assert_eq!(
        hint,
        s.keys.len() as u64,
        "the hint is the store's key count"
    );
    let mut v2 = v3[..25].to_vec();
    v2[8] = 2;
    v2.extend_from_slice(&v3[33..v3.len() - 4]);
    let v2 = sealed(v2);
    assert_eq!(decode(&v2[..], TXN_OPS_MAX_DEFAULT).expect("decode v2"), s);
}

#[test]
fn a_wrong_key_count_hint_only_sizes_the_map() {
    let s = sample();
    assert!(s.keys.len() > 1, "a sample with keys");
    for hint in [0u64, 1, u64::MAX] {
        let v3 = with_hint(encoded(&s), hint);
        assert_eq!(
            decode(&v3[..], TXN_OPS_MAX_DEFAULT).expect("decode"),
            s,
            "hint {hint}"
        );
    }
}
