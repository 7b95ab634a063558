//! Memory measurement (ignored by default; numbers and method in `README.md`):
//!
//! ```sh
//! cargo test --lib mvcc::mem_tests -- --ignored --nocapture --test-threads=1
//! ```
//! Loads `KEYS` keys of 12 bytes with 100-byte values, then overwrites each 7 times (one more
//! retained revision per key per round), then deletes each (a tombstone per key), reading the process's
//! resident set (`VmRSS`) before and after each step: what the store really costs, allocator
//! overhead included.

use bytes::Bytes;

use crate::mvcc::*;

const KEYS: usize = 1_000_000;
const VALUE_BYTES: usize = 100;
const OVERWRITE_ROUNDS: usize = 7;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS kB");
    kb * 1024
}

fn step(store: &mut Store, what: &str, before: u64, f: impl Fn(&mut Store, usize)) -> u64 {
    for i in 0..KEYS {
        f(store, i);
    }
    let after = rss_bytes();
    let per = (after.saturating_sub(before)) as f64 / KEYS as f64;
    eprintln!(
        "{what}: +{} MiB RSS, {per:.0} bytes per key",
        (after - before) >> 20
    );
    after
}

fn key(i: usize) -> Bytes {
    Bytes::copy_from_slice(format!("key-{i:08}").as_bytes())
}

#[test]
#[ignore = "measurement: run alone with --ignored --nocapture --test-threads=1"]
fn bytes_per_key_and_per_retained_revision() {
    eprintln!(
        "sizes: Entry {} B, KeyHistory {} B, Bytes {} B",
        size_of::<crate::mvcc::history::Entry>(),
        size_of::<crate::mvcc::history::KeyHistory>(),
        size_of::<Bytes>()
    );
    let value = vec![b'v'; VALUE_BYTES];
    let mut store = Store::default();
    let base = rss_bytes();
    let put = |s: &mut Store, i: usize| {
        let req = PutRequest {
            key: key(i),
            value: Bytes::copy_from_slice(&value),
            ..Default::default()
        };
        s.put(req, &NoLeases).expect("put");
    };
    let mut rss = step(
        &mut store,
        "round 1: 1 live revision per key (create)",
        base,
        put,
    );
    // A snapshot build clones the store under the state's read lock: this is the apply pause.
    let started = std::time::Instant::now();
    let copy = store.clone();
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    let cloned = rss_bytes();
    eprintln!(
        "Store::clone of {KEYS} keys: {took_ms:.0} ms, +{} MiB RSS, {:.0} bytes per key (values shared, not copied)",
        (cloned - rss) >> 20,
        (cloned - rss) as f64 / KEYS as f64
    );
    // Kept alive to the end, so the rounds below cannot reuse its memory.
    let before_history = cloned;
    rss = cloned;
    for round in 2..=OVERWRITE_ROUNDS + 1 {
        rss = step(
            &mut store,
            &format!("round {round}: +1 retained revision per key (overwrite)"),
            rss,
            put,
        );
    }
    let per = (rss - before_history) as f64 / (KEYS * OVERWRITE_ROUNDS) as f64;
    eprintln!(
        "average over {OVERWRITE_ROUNDS} overwrite rounds: {per:.0} bytes per retained revision"
    );
    step(&mut store, "+1 tombstone per key (delete)", rss, |s, i| {
        let req = DeleteRangeRequest {
            key: key(i),
            ..Default::default()
        };
        s.delete_range(&req).expect("delete");
    });
    drop(copy);
    store.compact(store.current_revision()).expect("compact");
    eprintln!(
        "after compacting everything: {} keys, {} entries; RSS {} MiB above the start (freed memory stays mapped)",
        store.key_count(),
        store.entry_count(),
        rss_bytes().saturating_sub(base) >> 20
    );
}

/// The apply pause a snapshot costs: the state machine holds its lock only to take a view
/// (`hold_compaction`) and then for each piece of `KEYS_PER_CHUNK` keys encoded; `Store::clone`
/// (what a build held the lock for before) for comparison. Run in release:
/// `cargo test --release --lib mvcc::mem_tests::snapshot_pause -- --ignored --nocapture`
/// A store holding `KEYS` keys with one `VALUE_BYTES` value each.
fn loaded() -> Store {
    let value = vec![b'v'; VALUE_BYTES];
    let mut store = Store::default();
    for i in 0..KEYS {
        let req = PutRequest {
            key: key(i),
            value: Bytes::copy_from_slice(&value),
            ..Default::default()
        };
        store.put(req, &NoLeases).expect("put");
    }
    store
}

#[test]
#[ignore = "measurement: run alone with --release --ignored --nocapture"]
fn snapshot_pause() {
    let mut store = loaded();
    let value = vec![b'v'; VALUE_BYTES];
    let started = std::time::Instant::now();
    let copy = store.clone();
    let clone_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(copy);
    let started = std::time::Instant::now();
    let view = store.hold_compaction();
    let hold_us = started.elapsed().as_secs_f64() * 1e6;
    let (mut pieces_us, mut after, mut buf, mut bytes) = (Vec::new(), None::<Bytes>, Vec::new(), 0);
    let whole = std::time::Instant::now();
    loop {
        buf.clear();
        let started = std::time::Instant::now();
        let chunk = crate::mvcc::snapshot::encode_keys(
            &store,
            &view,
            after.as_deref(),
            crate::mvcc::snapshot::KEYS_PER_CHUNK,
            &mut buf,
        )
        .expect("encode");
        pieces_us.push(started.elapsed().as_secs_f64() * 1e6);
        bytes += buf.len();
        match chunk.next {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    let whole_ms = whole.elapsed().as_secs_f64() * 1e3;
    store.release_compaction();
    // A compaction's removal pass (auto-compaction's, under the write lock) after 10 % of the
    // keys were overwritten.
    for i in (0..KEYS).step_by(10) {
        let req = PutRequest {
            key: key(i),
            value: Bytes::copy_from_slice(&value),
            ..Default::default()
        };
        store.put(req, &NoLeases).expect("put");
    }
    let mut incremental = store.clone();
    let started = std::time::Instant::now();
    store
        .compact(store.current_revision() - 10_000)
        .expect("compact");
    eprintln!(
        "compaction's removal pass over {KEYS} keys (10 % overwritten, retain 10,000): {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    // The same compaction as the state machine does it: owed, then freed a step at a time.
    let started = std::time::Instant::now();
    incremental
        .compact_later(incremental.current_revision() - 10_000)
        .expect("compact later");
    let later_us = started.elapsed().as_secs_f64() * 1e6;
    let mut steps_us = Vec::new();
    loop {
        let started = std::time::Instant::now();
        // The state machine's step (`COMPACT_KEYS_PER_STEP` in store/state_machine/held.rs).
        let more = incremental.compact_step(256);
        steps_us.push(started.elapsed().as_secs_f64() * 1e6);
        if !more {
            break;
        }
    }
    steps_us.sort_by(f64::total_cmp);
    let at = |q: f64| steps_us[((steps_us.len() - 1) as f64 * q) as usize];
    eprintln!(
        "compact_later {later_us:.1} µs, then {} steps of 256 keys: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        steps_us.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    assert_eq!(incremental, store);
    pieces_us.sort_by(f64::total_cmp);
    let at = |q: f64| pieces_us[((pieces_us.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{KEYS} keys: Store::clone {clone_ms:.0} ms; hold_compaction {hold_us:.1} µs; {} pieces of {} keys \
         ({} MiB encoded in {whole_ms:.0} ms): lock held per piece p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        pieces_us.len(),
        crate::mvcc::snapshot::KEYS_PER_CHUNK,
        bytes >> 20,
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

#[test]
#[ignore = "measurement: run alone with --release --ignored --nocapture"]
fn snapshot_decode() {
    let store = loaded();
    let mut encoded = Vec::new();
    crate::mvcc::snapshot::encode(&store, &mut encoded).expect("encode");
    for round in 1..=3 {
        let started = std::time::Instant::now();
        let decoded = crate::mvcc::snapshot::decode(&encoded[..], 128).expect("decode");
        let ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(decoded.keys.len(), KEYS);
        eprintln!(
            "decode {} MiB, {KEYS} keys: {ms:.0} ms ({:.2} µs a key), round {round}",
            encoded.len() >> 20,
            ms * 1e3 / KEYS as f64
        );
    }
}

#[test]
fn a_key_with_one_revision_holds_one_entry() {
    let mut s = Store::default();
    let req = PutRequest {
        key: key(1),
        value: Bytes::from_static(b"v"),
        ..Default::default()
    };
    s.put(req, &NoLeases).expect("put");
    assert_eq!(
        s.keys
            .values()
            .map(|h| h.entries.capacity())
            .collect::<Vec<_>>(),
        vec![1]
    );
}
