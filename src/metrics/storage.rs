//! The storage instruments: the WAL's append and fsync latency, snapshot build / install / send
//! counts, durations and bytes, and the size of the data dir's directories on disk.
//!
//! Owns: the metric values only. The stores own their instruments (`LogStore`, the state
//! machine, the network factory each create theirs with `Default` and hand out clones), and
//! [`crate::metrics::Metrics`] registers those clones, so a store opened without a registry (a
//! unit test) measures into instruments nobody reads. Does not own: any store logic.
//!
//! Invariant: updating an instrument is a few atomic operations (no lock, no allocation), so it
//! may sit on the append and fsync paths.

use std::path::Path;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;

/// Directory entries a size walk looks at, at most (per scrape and directory).
pub const DIR_ENTRIES_MAX: usize = 100_000;
/// How deep a size walk descends below the directory it starts at.
const DIR_DEPTH_MAX: usize = 2;

/// Buckets of the WAL histograms: 50 µs to ~1.6 s, doubling.
fn wal_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Buckets of the snapshot histograms: 1 ms to ~9 min, doubling.
fn snapshot_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// The WAL's instruments (held by `store::log::LogStore`).
#[derive(Clone, Debug)]
pub struct WalMetrics {
    /// From an append's flush request until raft-log's flush thread reports the fsync covering
    /// it (includes the group-commit batch wait): etcd's `wal_fsync_duration_seconds`.
    pub fsync: Histogram,
    /// Time to hand entries to raft-log (encode, in-memory index, OS write queue).
    pub append: Histogram,
    /// Entries appended.
    pub entries: Counter,
}

impl Default for WalMetrics {
    fn default() -> Self {
        WalMetrics {
            fsync: wal_buckets(),
            append: wal_buckets(),
            entries: Counter::default(),
        }
    }
}

/// Times one append from its flush request to its fsync's completion (`WalMetrics::fsync`).
pub struct FsyncTimer {
    fsync: Histogram,
    started: std::time::Instant,
}

impl WalMetrics {
    /// Starts timing an append's flush.
    pub fn fsync_timer(&self) -> FsyncTimer {
        FsyncTimer {
            fsync: self.fsync.clone(),
            started: std::time::Instant::now(),
        }
    }
}

impl FsyncTimer {
    /// Records the time since the flush was requested.
    pub fn done(self) {
        observe(&self.fsync, self.started.elapsed());
    }
}

/// The snapshot instruments (held by the state machine and the network factory).
#[derive(Clone, Debug)]
pub struct SnapshotMetrics {
    /// Building a snapshot file from the state machine (etcd's `backend_snapshot_duration`).
    pub build: Histogram,
    /// Validating, storing and swapping in a snapshot received from the leader.
    pub install: Histogram,
    /// Streaming a snapshot to a follower, until it answered.
    pub send: Histogram,
    /// Bytes of snapshot files built, installed and sent.
    pub built_bytes: Counter,
    pub installed_bytes: Counter,
    pub sent_bytes: Counter,
    /// Sends that failed or were cancelled.
    pub send_failures: Counter,
}

impl Default for SnapshotMetrics {
    fn default() -> Self {
        SnapshotMetrics {
            build: snapshot_buckets(),
            install: snapshot_buckets(),
            send: snapshot_buckets(),
            built_bytes: Counter::default(),
            installed_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            send_failures: Counter::default(),
        }
    }
}

impl SnapshotMetrics {
    /// Records a snapshot built: its file's size and the time it took.
    pub fn built(&self, bytes: u64, took: Duration) {
        self.built_bytes.inc_by(bytes);
        observe(&self.build, took);
    }

    /// Records a snapshot installed.
    pub fn installed(&self, bytes: u64, took: Duration) {
        self.installed_bytes.inc_by(bytes);
        observe(&self.install, took);
    }
}

/// Records one duration in a histogram, in seconds.
pub fn observe(histogram: &Histogram, took: Duration) {
    histogram.observe(took.as_secs_f64());
}

/// Bytes of the regular files under `dir` (at most [`DIR_DEPTH_MAX`] levels down and
/// [`DIR_ENTRIES_MAX`] entries looked at: a bound, not an exact figure for huge trees); `None`
/// when `dir` cannot be read. Blocking: call it off the async executor.
pub fn dir_bytes(dir: &Path) -> Option<u64> {
    let mut budget = DIR_ENTRIES_MAX;
    walk(dir, 0, &mut budget)
}

fn walk(dir: &Path, depth: usize, budget: &mut usize) -> Option<u64> {
    let mut total = 0u64;
    for dent in std::fs::read_dir(dir).ok()? {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let Ok(dent) = dent else { continue };
        let Ok(meta) = dent.metadata() else { continue };
        if meta.is_file() {
            total = total.saturating_add(meta.len());
        } else if meta.is_dir() && depth < DIR_DEPTH_MAX {
            total = total.saturating_add(walk(&dent.path(), depth + 1, budget).unwrap_or(0));
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_bytes_sums_files_and_stops_at_missing_dirs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("a"), [0u8; 100]).expect("write");
        std::fs::create_dir(tmp.path().join("sub")).expect("mkdir");
        std::fs::write(tmp.path().join("sub").join("b"), [0u8; 23]).expect("write");
        assert_eq!(dir_bytes(tmp.path()), Some(123));
        assert_eq!(dir_bytes(&tmp.path().join("absent")), None);
    }
}
