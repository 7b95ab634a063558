//! Snapshots without a copy, and compaction off the apply path: a snapshot writer's held view
//! of the store ([`Held`]), the snapshot builder and backups that write from it, and the
//! compactor thread that frees what a compaction owes.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use openraft::RaftSnapshotBuilder;

use super::Inner;
use super::join_error;
use super::poisoned;
use crate::mvcc;
use crate::mvcc::snapshot::Chunk;
use crate::mvcc::snapshot::KEYS_PER_CHUNK;
use crate::raft::types::Snapshot;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::TypeConfig;
use crate::store::snapshot;
use crate::store::snapshot::SnapshotData;

/// Keys the compactor visits per step under the state's write lock (1M keys: p50 0.27 ms, p99
/// 0.48 ms a step; `mvcc::mem_tests::snapshot_pause`).
const COMPACT_KEYS_PER_STEP: usize = 256;

/// Builds one snapshot of the state as it was when the builder was created, read piece by
/// piece while `apply` goes on (see [`Held`]).
pub struct SnapshotBuilder {
    pub(super) inner: Arc<Inner>,
    pub(super) held: Option<Held>,
}

/// A snapshot writer's view of the store: taken in O(1) (plus the leases) under the write lock,
/// with compaction's removal of old entries held until it is dropped (`mvcc::Store::
/// hold_compaction`), so the keys can be encoded a few at a time under short read locks while
/// writes are applied: writes only add entries newer than the view.
pub(super) struct Held {
    inner: Arc<Inner>,
    generation: u64,
    meta: SnapshotMeta,
    view: mvcc::snapshot::View,
    leases: Vec<(i64, i64)>,
    live_keys: usize,
}

impl Held {
    pub(super) fn take(inner: &Arc<Inner>) -> Held {
        let mut state = inner
            .state
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let view = state.map.hold_compaction();
        Held {
            inner: inner.clone(),
            generation: inner.generation.load(Ordering::Acquire),
            meta: state.applied.clone(),
            view,
            leases: state.map.leases().all().collect(),
            live_keys: state.map.len(),
        }
    }

    /// Encodes the snapshot of this view to `out` (the snapshot file format). Blocking.
    pub(super) fn encode(&self, out: impl io::Write) -> io::Result<Encoded> {
        let keys = snapshot::encode_with(
            out,
            &self.meta,
            self.view.clone(),
            &self.leases,
            |after, buf| self.encode_keys(after, buf),
        )?;
        Ok(Encoded {
            keys,
            meta: self.meta.clone(),
            revision: self.view.revision,
            compact_revision: self.view.compacted,
            live_keys: self.live_keys,
        })
    }

    /// Encodes the keys after `after` into `buf`, under a read lock held only for this piece.
    fn encode_keys(&self, after: Option<&[u8]>, buf: &mut Vec<u8>) -> io::Result<Chunk> {
        let state = self.inner.read_state();
        // Must check under the lock: an installed snapshot replaces the store the view is of.
        if self.inner.generation.load(Ordering::Acquire) != self.generation {
            return Err(io::Error::other(Replaced));
        }
        mvcc::snapshot::encode_keys(state.map.store(), &self.view, after, KEYS_PER_CHUNK, buf)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        // A store replaced by an installed snapshot holds nothing of ours.
        if self.inner.generation.load(Ordering::Acquire) == self.generation {
            state.map.release_compaction();
            if state.map.store().compaction_owed() {
                drop(state);
                self.inner.kick_compactor();
            }
        }
    }
}

/// What [`StateMachineStore::encode_now`] wrote: the state at `meta`.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Keys written (with history retained at `revision`, live or not).
    pub keys: u64,
    pub meta: SnapshotMeta,
    pub revision: i64,
    pub compact_revision: i64,
    /// Keys live at `revision`.
    pub live_keys: usize,
}

/// A snapshot was installed while another was being written from the store it replaced.
#[derive(Debug, thiserror::Error)]
#[error("the store was replaced by an installed snapshot while a snapshot of it was written")]
struct Replaced;

/// Attempts at writing a snapshot or a backup when installed snapshots keep replacing the store.
const WRITE_ATTEMPTS_MAX: usize = 3;

/// Runs `write` (attempt 1, 2, …) again while it fails because an installed snapshot replaced
/// the store it was writing from, at most [`WRITE_ATTEMPTS_MAX`] times; answers the last result.
/// Each attempt must start from scratch (a new view, a new file): what it wrote is discarded.
pub fn retry_if_replaced<T>(
    what: &str,
    mut write: impl FnMut(usize) -> io::Result<T>,
) -> io::Result<T> {
    let mut attempt = 1;
    loop {
        match write(attempt) {
            Err(e)
                if e.get_ref().is_some_and(|e| e.is::<Replaced>())
                    && attempt < WRITE_ATTEMPTS_MAX =>
            {
                tracing::info!(
                    attempt,
                    "{what}: an installed snapshot replaced the store; writing again"
                );
                attempt += 1;
            }
            result => return result,
        }
    }
}

impl Inner {
    /// Starts the compactor unless it runs: a thread that frees what a compaction owes
    /// (`mvcc::Store::compact_later`), `COMPACT_KEYS_PER_STEP` keys per write lock, so applying
    /// a compaction never holds the lock for a pass over every key. It stops when nothing is
    /// owed or a snapshot writer holds compaction (whose release kicks it again).
    pub(super) fn kick_compactor(self: &Arc<Self>) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name("raftkv-compactor".into())
            .spawn(move || inner.run_compactor());
        if let Err(e) = spawned {
            // The memory is freed by the next compaction's compactor instead.
            tracing::warn!(error = %e, "cannot start the compactor thread");
            self.compacting.store(false, Ordering::Release);
        }
    }

    fn run_compactor(&self) {
        let (started, mut steps) = (std::time::Instant::now(), 0u64);
        loop {
            let more = match self.state.write() {
                Ok(mut state) if !state.map.store().compaction_held() => {
                    steps += 1;
                    state.map.compact_step(COMPACT_KEYS_PER_STEP)
                }
                _ => false, // held (the release kicks again) or poisoned (the node stops)
            };
            if more {
                std::thread::yield_now();
                continue;
            }
            self.compacting.store(false, Ordering::Release);
            // Must look again after clearing the flag: a compaction applied after the last step
            // found the flag set and left its removal to this thread.
            let owed = {
                let state = self.read_state();
                state.map.store().compaction_owed() && !state.map.store().compaction_held()
            };
            if !owed || self.compacting.swap(true, Ordering::AcqRel) {
                break;
            }
        }
        tracing::debug!(
            steps,
            took_ms = started.elapsed().as_millis() as u64,
            "compactor done"
        );
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let inner = self.inner.clone();
        let first = self.held.take();
        let (meta, snapshot) = tokio::task::spawn_blocking(move || {
            let _files = inner.files.lock().map_err(|_| poisoned("files"))?;
            let mut first = first;
            retry_if_replaced("snapshot build", |_| {
                // The builder's own view first (the state when it was made), then a new one.
                let held = first.take().unwrap_or_else(|| Held::take(&inner));
                let file = write_held(&inner, &held)?;
                Ok((held.meta.clone(), file))
            })
        })
        .await
        .map_err(join_error)??;
        Ok(Snapshot { meta, snapshot })
    }
}

/// Writes the snapshot of `held` durably, publishes it, and answers it opened. Blocking; call
/// with the `files` lock held.
fn write_held(inner: &Inner, held: &Held) -> io::Result<File> {
    let meta = &held.meta;
    let started = std::time::Instant::now();
    tracing::info!(revision = held.view.revision, last_log_id = ?meta.last_log_id, "building snapshot");
    let mut keys = 0;
    let path = snapshot::write_snapshot_with(&inner.dir, meta, |out| {
        keys = held.encode(out)?.keys;
        Ok(())
    })?;
    // Must open the file before publishing: if a newer snapshot was installed meanwhile,
    // publishing deletes this one, and the open handle keeps it readable.
    let file = File::open(&path)?;
    let bytes = file.metadata().map_or(0, |m| m.len());
    inner.snapshot_metrics.built(bytes, started.elapsed());
    tracing::info!(path = %path.display(), keys, bytes,
        took_ms = started.elapsed().as_millis() as u64, "built snapshot");
    inner.publish(path, meta.clone(), held.view.revision)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaced_by_an_install_is_tried_again_at_most_three_times() {
        let replaced = || io::Error::other(Replaced);
        let mut attempts = Vec::new();
        let twice_then_ok = retry_if_replaced("test", |attempt| {
            attempts.push(attempt);
            if attempt < 3 {
                Err(replaced())
            } else {
                Ok(attempt)
            }
        });
        assert_eq!(twice_then_ok.expect("third attempt"), 3);
        assert_eq!(attempts, [1, 2, 3]);

        let mut tries = 0;
        let always = retry_if_replaced("test", |_| -> io::Result<()> {
            tries += 1;
            Err(replaced())
        });
        assert!(always.is_err());
        assert_eq!(tries, WRITE_ATTEMPTS_MAX);

        let mut tries = 0;
        let other = retry_if_replaced("test", |_| -> io::Result<()> {
            tries += 1;
            Err(io::Error::other("disk full"))
        });
        assert_eq!(other.expect_err("not retried").to_string(), "disk full");
        assert_eq!(tries, 1, "other errors are not retried");
    }
}
