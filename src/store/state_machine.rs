//! The openraft state machine: applies committed entries to the in-memory [`KvState`] (the multi-version store), builds and
//! installs snapshots, and serves local reads to the HTTP layer.
//!
//! Owns: the map, the last applied log id and membership (all under one `RwLock`, so a read or a
//! digest always matches an applied index), and the snapshot directory (through `snapshot.rs`).
//! Does not own: the log (`log.rs`), commit order (openraft), read consistency levels (`raft/`).
//!
//! Durability: the map lives in memory; only snapshots are on disk. On `open` the newest snapshot
//! is loaded and `applied_state` reports its log id; openraft then replays the committed log after
//! it. A snapshot is reported (built or installed) only after it is durable, because openraft may
//! purge the log up to it right after.
//!
//! Invariants: the map changes only in `apply` (in log order, one entry at a time) and in
//! `install_snapshot` (a whole validated map swapped in at once). No lock is held across `.await`
//! and no file I/O runs on the async executor except opening a file (`open` is sync startup code).
//!
//! Poisoned locks: the write path and openraft's calls return an `io::Error` (openraft then stops
//! the node: fail-stop, restart recovers from disk). Calls that cannot return errors (`get`,
//! `applied_index`, `digest`, `get_snapshot_builder`) recover the guard with `into_inner`; no code
//! panics while holding the write lock (applying a command and swapping a map are panic-free).

use std::fs;
use std::fs::File;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use futures::Stream;
use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;

use crate::metrics::MvccMetrics;
use crate::metrics::storage::SnapshotMetrics;
use crate::mvcc::Change;
use crate::mvcc::KeyValue;
use crate::raft::types::Command;
use crate::raft::types::Entry;
use crate::raft::types::LogId;
use crate::raft::types::Response;
use crate::raft::types::Snapshot;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::StoredMembership;
use crate::raft::types::TypeConfig;
use crate::store::error::StoreError;
use crate::store::feed::Feed;
use crate::store::kv::KvState;
use crate::store::kv::Revision;
use crate::store::snapshot;
use crate::store::snapshot::CorruptSnapshot;
use crate::store::snapshot::SnapshotData;
pub use held::Encoded;
use held::Held;
pub use held::SnapshotBuilder;
pub use held::retry_if_replaced;

/// The state machine handle; clones share one state.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    state: RwLock<State>,
    /// The newest durable snapshot. Held only to read or swap it, or to open its file.
    current: Mutex<Option<Current>>,
    /// Serializes snapshot file writes and deletions; held only inside blocking tasks.
    files: Mutex<()>,
    /// Every applied revision's changes, for watchers (published in apply order).
    feed: Arc<Feed>,
    /// Snapshot build / install instruments and the read counters (`metrics::Metrics` registers
    /// them).
    snapshot_metrics: SnapshotMetrics,
    mvcc: MvccMetrics,
    /// Incremented (under the state's write lock) each time an installed snapshot replaces the
    /// store: a snapshot writer's view belongs to the store of one generation.
    generation: AtomicU64,
    /// Whether the compactor thread runs (see [`Inner::kick_compactor`]).
    compacting: AtomicBool,
    /// The last log index of a restart's replay ([`StateMachineStore::replay_quietly_through`];
    /// 0: none).
    replay_through: AtomicU64,
}

#[derive(Default)]
struct State {
    map: KvState,
    /// Last applied log id and membership: exactly what a snapshot of `map` records.
    applied: SnapshotMeta,
}

struct Current {
    path: PathBuf,
    meta: SnapshotMeta,
    /// The store's revision in it.
    revision: i64,
}

fn poisoned(what: &str) -> io::Error {
    io::Error::other(format!("state machine {what} lock poisoned by a panic"))
}

fn join_error(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(format!("snapshot task failed: {e}"))
}

impl StateMachineStore {
    /// Opens the state machine on snapshot directory `dir` (created if absent), loading the
    /// newest snapshot in it. A damaged newest snapshot stops startup with
    /// [`StoreError::Corrupt`]; older snapshots and temp files are deleted only after the newest
    /// one has been validated.
    pub fn open(dir: &Path) -> Result<StateMachineStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(open_err)?;
            // The new directory's entry must be durable before snapshots are written into it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                snapshot::sync_dir(parent).map_err(open_err)?;
            }
        }
        let latest = snapshot::find_latest(dir).map_err(open_err)?;
        let mut state = State::default();
        let mut current = None;
        if let Some(path) = latest {
            let started = std::time::Instant::now();
            let (meta, map) = snapshot::read_snapshot(&path).map_err(|e| load_error(&path, e))?;
            let (keys, bytes) = (map.len(), fs::metadata(&path).map_or(0, |m| m.len()));
            let took_ms = started.elapsed().as_millis() as u64;
            tracing::info!(path = %path.display(), keys, bytes, took_ms, meta = %meta, "loaded snapshot");
            let revision = map.revision();
            state = State {
                map,
                applied: meta.clone(),
            };
            current = Some(Current {
                path,
                meta,
                revision,
            });
        }
        let keep = current.as_ref().map(|c| c.path.as_path());
        let removed = snapshot::remove_others(dir, keep).map_err(open_err)?;
        if removed > 0 {
            tracing::info!(removed, dir = %dir.display(), "deleted old snapshot files");
        }
        let feed = Arc::new(Feed::new(state.map.revision()));
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                state: RwLock::new(state),
                current: Mutex::new(current),
                files: Mutex::new(()),
                feed,
                snapshot_metrics: SnapshotMetrics::default(),
                mvcc: MvccMetrics::default(),
                generation: AtomicU64::new(0),
                compacting: AtomicBool::new(false),
                replay_through: AtomicU64::new(0),
            }),
        })
    }

    /// Marks the committed log up to `index` as a restart's replay (call before `Raft::new`,
    /// which replays it; no client, watcher or peer is served before). Its changes are not
    /// published to the watch feed: the feed restarts empty above the store's revision once
    /// `index` is applied, and a watcher asking for an older revision reads it from the store's
    /// history, as it does for any revision the feed's ring no longer holds. And a compaction it
    /// replays is freed after it, not beside it. Both cost a replay more than the writes
    /// themselves: dropping 25,000-revision-old changes as the ring turned over, and the
    /// compactor taking the store's lock on the other core (BENCHMARKS.md, "The worst-case
    /// restart").
    pub fn replay_quietly_through(&self, index: u64) {
        self.inner.replay_through.store(index, Ordering::Relaxed);
    }

    /// The snapshot instruments and read counters (see `metrics::storage`).
    pub fn metrics(&self) -> (SnapshotMetrics, MvccMetrics) {
        (self.inner.snapshot_metrics.clone(), self.inner.mvcc.clone())
    }

    /// The live `key` (value and revisions) as of the last applied entry.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.inner.mvcc.range.inc();
        self.inner.read_state().map.get(key)
    }

    /// etcd's Range on the store as of the last applied entry.
    pub fn range(
        &self,
        req: &crate::mvcc::RangeRequest,
    ) -> Result<crate::mvcc::RangeResponse, crate::mvcc::MvccError> {
        self.inner.mvcc.range.inc();
        self.inner.read_state().map.store().range(req)
    }

    /// A read-only etcd txn on the store as of the last applied entry (`None`: it writes).
    pub fn read_txn(
        &self,
        req: &crate::mvcc::TxnRequest,
    ) -> Option<Result<crate::mvcc::TxnResponse, crate::mvcc::MvccError>> {
        self.inner.mvcc.txn.inc();
        self.inner.read_state().map.store().read_txn(req)
    }

    /// etcd's HashKV at `revision` (0: now) on the store as of the last applied entry.
    pub fn hash_kv(&self, revision: i64) -> Result<crate::mvcc::HashKv, crate::mvcc::MvccError> {
        self.inner.read_state().map.store().hash_kv(revision)
    }

    /// The revision of the last compaction (`mvcc::NEVER_COMPACTED` before the first).
    pub fn compact_revision(&self) -> i64 {
        self.inner.read_state().map.store().compact_revision()
    }

    /// The granted TTL of lease `id`, if it exists.
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        self.inner.read_state().map.leases().ttl(id)
    }

    /// Every lease as `(id, granted ttl)`.
    pub fn lease_ttls(&self) -> Vec<(i64, i64)> {
        self.inner.read_state().map.leases().all().collect()
    }

    /// The live keys of lease `id`.
    pub fn lease_keys(&self, id: i64) -> Vec<bytes::Bytes> {
        self.inner.read_state().map.leases().keys(id)
    }

    /// The feed of applied changes watchers follow.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.inner.feed
    }

    /// Every change to a key in `(key, range_end)` with revision in `from..=to`, from the
    /// store's retained history (see [`crate::mvcc::Store::changes_in`]).
    pub fn changes_in(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        to: i64,
    ) -> Result<Vec<Change>, crate::mvcc::MvccError> {
        self.inner
            .read_state()
            .map
            .store()
            .changes_in(key, range_end, from, to)
    }

    /// The store's current revision (1 before any write).
    pub fn revision(&self) -> i64 {
        self.inner.read_state().map.revision()
    }

    /// The store's revision in the newest durable snapshot (1, an empty store's, before there
    /// is one): the writes since it are what a restart replays from the log.
    pub fn snapshot_revision(&self) -> i64 {
        let current = self.inner.current.lock();
        let current = current.unwrap_or_else(|poison| poison.into_inner());
        current.as_ref().map_or(1, |c| c.revision)
    }

    /// Index of the last applied log entry (None before anything was applied).
    pub fn applied_index(&self) -> Option<u64> {
        self.inner
            .read_state()
            .applied
            .last_log_id
            .map(|id| id.index)
    }

    /// `(applied index, map digest, key count)`, taken under one lock so they match. O(1): the
    /// digest is maintained on every change (`/status` reports it).
    pub fn digest(&self) -> (Option<u64>, u64, usize) {
        let state = self.inner.read_state();
        let index = state.applied.last_log_id.map(|id| id.index);
        (index, state.map.digest(), state.map.len())
    }

    /// Encodes a snapshot of the state as it is now to `out` (the snapshot file format),
    /// reading the store a piece at a time under short read locks: no copy, and `apply` goes on
    /// meanwhile (see [`Held`]). Blocking. Answers what it holds. Backups (`GET /snapshot`,
    /// `Maintenance.Snapshot`) are written this way. Fails with an error that
    /// [`retry_if_replaced`] retries if a snapshot installed meanwhile replaced the store.
    pub fn encode_now(&self, out: impl io::Write) -> io::Result<Encoded> {
        Held::take(&self.inner).encode(out)
    }

    /// A copy of the state with its meta (last applied log id and membership), taken under one
    /// read lock so they match: what a snapshot built now would hold. O(keys) under the lock
    /// (`apply` waits): for tests and tools; snapshots and backups use [`Held`] views.
    pub fn copy_state(&self) -> (SnapshotMeta, KvState) {
        let state = self.inner.read_state();
        (state.applied.clone(), state.map.clone())
    }

    /// A file for the network to write a received snapshot into before `install_snapshot`
    /// (anonymous, on the snapshot directory's filesystem; see [`snapshot::incoming_file`]).
    pub fn incoming_snapshot_file(&self) -> io::Result<File> {
        snapshot::incoming_file(&self.inner.dir)
    }

    /// Applies one entry under the write lock and returns the response for its client and the
    /// changes it made.
    fn apply_entry(&self, entry: Entry) -> io::Result<(Response, Vec<Revision>)> {
        let mut state = self.inner.write_state()?;
        if let Some(last) = state
            .applied
            .last_log_id
            .filter(|last| entry.log_id <= *last)
        {
            let detail = format!("apply out of order: entry {} after {last}", entry.log_id);
            return Err(io::Error::other(detail));
        }
        let unchanged = Response {
            existed: false,
            revision: state.map.revision(),
            outcome: None,
        };
        let index = entry.log_id.index;
        let mut compaction = false;
        let applied = match entry.payload {
            EntryPayload::Blank => (unchanged, Vec::new()),
            EntryPayload::Normal(cmd) => {
                compaction = matches!(cmd, Command::Compact { .. });
                state.map.apply_with_changes(cmd)
            }
            EntryPayload::Membership(membership) => {
                state.applied.last_membership =
                    StoredMembership::new(Some(entry.log_id), membership);
                (unchanged, Vec::new())
            }
        };
        // A compaction's removal is freed by the compactor, except during a restart's replay:
        // what the replay owes is freed after its last entry.
        if (compaction && !self.replaying(index)) || self.replay_ends_at(index) {
            self.kick_compactor_if_owed(&state);
        }
        state.applied.last_log_id = Some(entry.log_id);
        Ok(applied)
    }

    /// Whether the entry at `index` is part of a restart's replay (and not its last entry).
    fn replaying(&self, index: u64) -> bool {
        index < self.inner.replay_through.load(Ordering::Relaxed)
    }

    /// Whether the entry at `index` is a restart's replay's last entry.
    fn replay_ends_at(&self, index: u64) -> bool {
        let through = self.inner.replay_through.load(Ordering::Relaxed);
        through > 0 && index == through
    }

    fn kick_compactor_if_owed(&self, state: &State) {
        if state.map.store().compaction_owed() {
            self.inner.kick_compactor();
        }
    }
}

/// A snapshot that cannot be loaded at startup: `Corrupt` if damaged, `Io` otherwise.
fn load_error(path: &Path, source: io::Error) -> StoreError {
    let path = path.to_path_buf();
    if let Some(old) = snapshot::OldFormat::inside(&source) {
        let detail = old.to_string();
        return StoreError::Unsupported { path, detail };
    }
    match CorruptSnapshot::inside(&source) {
        Some(corrupt) => {
            let detail = corrupt.detail.clone();
            StoreError::Corrupt { path, detail }
        }
        None => StoreError::Io { path, source },
    }
}

impl Inner {
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write_state(&self) -> io::Result<RwLockWriteGuard<'_, State>> {
        self.state.write().map_err(|_| poisoned("state"))
    }

    fn lock_current(&self) -> io::Result<MutexGuard<'_, Option<Current>>> {
        self.current.lock().map_err(|_| poisoned("snapshot"))
    }

    /// Records a durable snapshot (of the store at `revision`) as current if it is the newest,
    /// then deletes every other snapshot file. Call with the `files` lock held.
    fn publish(&self, path: PathBuf, meta: SnapshotMeta, revision: i64) -> io::Result<()> {
        let keep = {
            let mut current = self.lock_current()?;
            let newest = current
                .as_ref()
                .is_none_or(|c| meta.last_log_id >= c.meta.last_log_id);
            if newest {
                *current = Some(Current {
                    path,
                    meta,
                    revision,
                });
            }
            current.as_ref().map(|c| c.path.clone())
        };
        snapshot::remove_others(&self.dir, keep.as_deref())?;
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = self.inner.state.read().map_err(|_| poisoned("state"))?;
        Ok((
            state.applied.last_log_id,
            state.applied.last_membership.clone(),
        ))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            let (response, revisions) = self.apply_entry(entry)?;
            // Must publish after the store holds the revisions (the write lock is released by
            // now, so watchers reading history see them) and before answering the client, so a
            // client that saw its write acknowledged finds it in the feed. A restart's replay
            // publishes nothing, and its last entry restarts the feed above the store's
            // revision: that must happen before any later entry's revisions are published, so
            // the ring never misses a revision between its base and its head.
            if self.replaying(index) {
                drop(revisions);
            } else if self.replay_ends_at(index) {
                self.inner.feed.reset(response.revision);
            } else {
                self.inner.feed.publish(revisions);
            }
            // Every responder must be answered, or the client's `client_write` never returns.
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // A consistent view in O(1): the store's revision, its log id and membership, taken
        // under one lock, with compaction's removals held until the snapshot is written.
        let held = Held::take(&self.inner);
        let inner = self.inner.clone();
        SnapshotBuilder {
            inner,
            held: Some(held),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut data: SnapshotData,
    ) -> Result<(), io::Error> {
        let inner = self.inner.clone();
        let task_meta = meta.clone();
        // The file must be validated and durable before the state is swapped: a bad file leaves
        // the state machine untouched, and openraft may purge the log once we return.
        let map = tokio::task::spawn_blocking(move || -> io::Result<KvState> {
            let _files = inner.files.lock().map_err(|_| poisoned("files"))?;
            let (started, bytes) = (
                std::time::Instant::now(),
                data.metadata().map_or(0, |m| m.len()),
            );
            tracing::info!(bytes, last_log_id = ?task_meta.last_log_id, "installing snapshot");
            let (path, map) = snapshot::import_snapshot(&inner.dir, &mut data, &task_meta)?;
            inner.snapshot_metrics.installed(bytes, started.elapsed());
            tracing::info!(path = %path.display(), keys = map.len(), bytes,
                took_ms = started.elapsed().as_millis() as u64, "installed snapshot file");
            inner.publish(path, task_meta, map.revision())?;
            Ok(map)
        })
        .await
        .map_err(join_error)??;
        let new_state = State {
            map,
            applied: meta.clone(),
        };
        let revision = new_state.map.revision();
        let old_state = {
            let mut state = self.inner.write_state()?;
            // Must move under the write lock: a snapshot writer checks it under its read lock.
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
            std::mem::replace(&mut *state, new_state)
        };
        // Must reset the feed after the new store is in place: watchers below the snapshot's
        // revision then catch up from the new store's history.
        self.inner.feed.reset(revision);
        // The old map is freed after the lock is released, so readers do not wait for it.
        drop(old_state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        // Opened under the lock so `publish` cannot delete the file between lookup and open.
        let current = self.inner.lock_current()?;
        let Some(current) = current.as_ref() else {
            return Ok(None);
        };
        let snapshot = File::open(&current.path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", current.path.display())))?;
        let meta = current.meta.clone();
        Ok(Some(Snapshot { meta, snapshot }))
    }
}

mod held;
#[cfg(test)]
mod tests;
