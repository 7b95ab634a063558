//! The cost of applying writes as a restart replays them (ignored by default; a measurement):
//!
//! ```sh
//! cargo test --release --lib store::kv::replay_tests -- --ignored --nocapture
//! ```
//! A store of `KEYS` keys (12-byte keys, 100-byte values, one revision each, as after a
//! snapshot), then `OVERWRITES` overwrites in batches of `BATCH` (what a log replayed after a
//! 1M-key snapshot holds at worst: BENCHMARKS.md, "The worst case"), applied as the state
//! machine applies entries. Each round overwrites other keys (key `i × 4 + round`), so each
//! overwrite gives a key with one revision its second, as in a replay after a snapshot. The
//! test binary allocates with glibc's malloc, the node with jemalloc (`main.rs`): compare
//! builds with this, and a node's restart with `bench/restart-worst.sh`.

use super::*;

const KEYS: usize = 1_000_000;
const OVERWRITES: usize = 250_000;
const BATCH: usize = 57;
const VALUE_BYTES: usize = 100;

fn set(i: usize) -> Command {
    Command::Set {
        key: format!("bench-{i:06}"),
        value: vec![b'v'; VALUE_BYTES],
    }
}

fn batches(keys: impl Iterator<Item = usize>, per: usize) -> Vec<Command> {
    let all: Vec<usize> = keys.collect();
    all.chunks(per)
        .map(|c| Command::Batch(c.iter().map(|&i| set(i)).collect()))
        .collect()
}

#[test]
#[ignore = "measurement: run alone with --release --ignored --nocapture"]
fn overwrites_as_replayed() {
    let mut loaded = KvState::new();
    for cmd in batches(0..KEYS, 512) {
        loaded.apply_with_changes(cmd);
    }
    let stride = KEYS / OVERWRITES;
    // A gap in a profile's samples between the load and the measured rounds (`perf record`).
    std::thread::sleep(std::time::Duration::from_millis(300));
    for round in 0..stride {
        let state = &mut loaded;
        // In a scattered order (a stride coprime with OVERWRITES): no locality a store laid
        // out in key order could profit from.
        let scattered = (0..OVERWRITES).map(|i| (i * 7_919) % OVERWRITES);
        let cmds = batches(scattered.map(|i| i * stride + round), BATCH);
        let started = std::time::Instant::now();
        let mut changes = 0;
        for cmd in cmds {
            let (_, revisions) = state.apply_with_changes(cmd);
            changes += revisions.len();
        }
        let ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(changes, OVERWRITES);
        eprintln!(
            "{OVERWRITES} overwrites of a {KEYS}-key store in batches of {BATCH}: {ms:.0} ms \
             ({:.2} µs a write), round {round}",
            ms * 1e3 / OVERWRITES as f64
        );
    }
}
