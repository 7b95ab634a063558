//! The durable Raft log: votes, log entries, the committed log id and the purge point, kept in a
//! `raft_log::RaftLog` write-ahead log (chunked WAL files `r-*.wal` in one directory, CRC32 per
//! record) behind openraft's `RaftLogStorage` / `RaftLogReader`.
//!
//! This file owns the WAL directory (raft-log locks it exclusively: one store per directory),
//! the on-disk encoding of log ids, votes and payloads, and the durability contract:
//! - `save_vote` returns only after the vote record is fsynced;
//! - `append` makes entries readable before it returns, and signals openraft's `IOFlushed` only
//!   from raft-log's flush thread, after the fsync that covers the entries (appends are never
//!   awaited one by one, so concurrent appends share one fsync: group commit);
//! - every write goes into one WAL in submission order, so a later durable write (append, vote)
//!   also makes every earlier non-synced record durable (truncate, purge, commit);
//! - on open, an incomplete last record of the last WAL file (a torn write) is cut off with a
//!   warning; any other damage fails with [`StoreError::Corrupt`] naming the file.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use bytes::Bytes;
use openraft::OptionalSend;
use openraft::alias::PayloadOf;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogReader;
use openraft::storage::RaftLogStorage;
use raft_log::DumpApi;
use raft_log::RaftLog;
use raft_log::api::raft_log_writer::RaftLogWriter;
use tokio::sync::oneshot;

use crate::limits::APPEND_BYTES_MAX;
use crate::limits::APPEND_HEADER_BYTES_MAX;
use crate::limits::ENTRY_OVERHEAD_BYTES_MAX;
use crate::metrics::storage::FsyncTimer;
use crate::metrics::storage::WalMetrics;
use crate::metrics::storage::observe;
use crate::raft::types::Entry;
use crate::raft::types::LogId;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;
use crate::store::error::StoreError;

/// WAL file size at which raft-log starts a new file. Purge deletes whole files only, and the
/// payloads of the file being written stay cached in memory, so this bounds both the disk kept
/// after a purge and that memory (raft-log's default is 1 GiB; 64 MiB until 2026-12-05). 16 MiB
/// is ~100k entries of 100-byte values: seconds of writes at peak.
const CHUNK_MAX_SIZE: usize = 16 << 20;

/// Bytes of already-persisted payloads kept in memory for replication reads (default 1 GiB).
/// A follower further behind is served from the files.
const LOG_CACHE_CAPACITY: usize = 16 << 20;

/// Recommended `flush_batch_wait`. Zero: no wait, and group commit through the [`gate`]
/// instead (one synced append flush in flight; appends arriving meanwhile share the next). A
/// positive wait turns the gate off and lets raft-log hold each first request that long to gather
/// more, which a lone append pays in full; raft-log's 1 ms default (`None`) adds ~1 ms to it.
pub const DEFAULT_FLUSH_BATCH_WAIT: Duration = Duration::ZERO;

mod codec;
mod gate;

pub(crate) use codec::WalLogId;
pub(crate) use codec::WalPayload;
pub(crate) use codec::WalVote;
use codec::invalid_data;

/// Completion of a synced flush, run on raft-log's flush thread after the fsync (or its failure).
pub(crate) enum FlushDone {
    /// openraft's `append` callback, and the timer of its flush.
    Append(IOFlushed<TypeConfig>, FsyncTimer),
    /// A task awaiting durability (`save_vote`, `sync`).
    Waiter(oneshot::Sender<io::Result<()>>),
    /// The appends of one flush sent through the [`gate::Gate`].
    Gated(gate::Batch),
}

impl raft_log::Callback for FlushDone {
    fn send(self, res: io::Result<()>) {
        match self {
            FlushDone::Append(cb, timer) => {
                timer.done();
                cb.io_completed(res);
            }
            FlushDone::Waiter(tx) => {
                // The waiter may have gone away (its task was cancelled); nothing to report to.
                let _ = tx.send(res);
            }
            FlushDone::Gated(batch) => batch.synced(res),
        }
    }
}

/// Test-only fault hook: with `RAFTKV_FAULT_WAL_FAIL_AFTER_APPENDS=N` in the environment, every
/// append after the first `N` fails as a failed fsync would (the fail-stop test uses it). Unset,
/// it costs one relaxed atomic load per append.
mod fault {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    pub const ENV: &str = "RAFTKV_FAULT_WAL_FAIL_AFTER_APPENDS";

    pub fn append_fails() -> bool {
        static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
        static APPENDS: AtomicU64 = AtomicU64::new(0);
        let Some(limit) =
            *LIMIT.get_or_init(|| std::env::var(ENV).ok().and_then(|v| v.parse().ok()))
        else {
            return false;
        };
        APPENDS.fetch_add(1, Ordering::Relaxed) >= limit
    }
}

/// raft-log's type configuration for raftkv.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct WalTypes;

impl raft_log::Types for WalTypes {
    type LogId = WalLogId;
    type LogPayload = WalPayload;
    type Vote = WalVote;
    type Callback = FlushDone;
    type UserData = ();

    fn log_index(log_id: &WalLogId) -> u64 {
        log_id.0.index
    }

    fn payload_size(payload: &WalPayload) -> u64 {
        payload.0.len() as u64 + 8
    }
}

/// The durable Raft log. Cheap to clone; all clones share one WAL. The lock is never held
/// across an `.await`.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<RaftLog<WalTypes>>>,
    dir: Arc<PathBuf>,
    metrics: WalMetrics,
    /// Group commit without a wait (`flush_batch_wait` zero); `None`: raft-log's wait groups.
    gate: Option<Arc<gate::Gate>>,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The last WAL file and its size, to tell whether opening cut off a torn tail.
fn last_wal_file(dir: &Path) -> io::Result<Option<(PathBuf, u64)>> {
    let mut last: Option<PathBuf> = None;
    for dent in std::fs::read_dir(dir)? {
        let path = dent?.path();
        let is_wal = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| raft_log::chunked_wal::Config::parse_chunk_file_name(n).is_ok());
        if is_wal && last.as_ref().is_none_or(|l| *l < path) {
            last = Some(path);
        }
    }
    let Some(path) = last else { return Ok(None) };
    let len = std::fs::metadata(&path)?.len();
    Ok(Some((path, len)))
}

/// Finds the first WAL file that holds an undecodable record (after a failed open).
fn find_damaged_file(config: &Arc<raft_log::Config>) -> Option<PathBuf> {
    let dump = raft_log::Dump::<WalTypes>::new(config.clone()).ok()?;
    let mut damaged = None;
    let _ = dump.write_with(|chunk_id, _index, res| match res {
        Ok(_) => Ok(()),
        Err(e) => {
            damaged = Some(PathBuf::from(config.wal.chunk_path(chunk_id)));
            Err(e)
        }
    });
    damaged
}

impl LogStore {
    /// Opens (creating if needed) the WAL in `dir`. `flush_batch_wait` is how long raft-log's
    /// flush thread gathers more writes before one fsync (see [`DEFAULT_FLUSH_BATCH_WAIT`]);
    /// `None` keeps raft-log's 1 ms default. Blocking: it replays the whole WAL.
    pub fn open(dir: &Path, flush_batch_wait: Option<Duration>) -> Result<LogStore, StoreError> {
        Self::open_with(dir, flush_batch_wait, CHUNK_MAX_SIZE)
    }

    fn open_with(
        dir: &Path,
        flush_batch_wait: Option<Duration>,
        chunk_max_size: usize,
    ) -> Result<LogStore, StoreError> {
        let io_err = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let dir_str = dir.to_str().ok_or_else(|| StoreError::Open {
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"),
        })?;
        let tail_before = last_wal_file(dir).map_err(io_err)?;
        // Zero: raft-log syncs each request as it comes, and the gate groups appends instead.
        let gated = flush_batch_wait == Some(Duration::ZERO);

        let mut config = raft_log::Config::new(dir_str);
        // A crash mid-write leaves the last record of the last file incomplete (short, or
        // zero-filled): that record was never acknowledged, so raft-log may cut it off.
        config.wal.truncate_incomplete_record = Some(true);
        config.wal.flush_batch_wait = flush_batch_wait;
        config.wal.chunk_max_size = Some(chunk_max_size);
        config.log_cache_capacity = Some(LOG_CACHE_CAPACITY);
        let config = Arc::new(config);

        let log = match RaftLog::<WalTypes>::open(config.clone()) {
            Ok(log) => log,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ) =>
            {
                let path = find_damaged_file(&config).unwrap_or_else(|| dir.to_path_buf());
                tracing::error!(path = %path.display(), error = %e, "raft log is corrupt");
                return Err(StoreError::Corrupt {
                    path,
                    detail: e.to_string(),
                });
            }
            Err(source) => {
                return Err(StoreError::Open {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        };

        if let Some((path, before)) = tail_before {
            let after = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if after < before {
                tracing::warn!(
                    path = %path.display(),
                    before,
                    after,
                    "raft log: cut off an incomplete record at the end (torn write from a crash)"
                );
            }
        }

        let state = log.log_state();
        tracing::info!(
            dir = %dir.display(),
            last = ?state.last().map(|l| &l.0),
            purged = ?state.purged().map(|l| &l.0),
            committed = ?state.committed().map(|l| &l.0),
            "raft log opened"
        );
        Ok(LogStore {
            inner: Arc::new(Mutex::new(log)),
            dir: Arc::new(dir.to_path_buf()),
            metrics: WalMetrics::default(),
            gate: gated.then(Arc::default),
        })
    }

    /// The WAL's instruments (registered by `metrics::Metrics::new`).
    pub fn metrics(&self) -> WalMetrics {
        self.metrics.clone()
    }

    /// The directory holding the WAL files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of the last entry (or the purge point if the log is empty).
    pub fn last_log_id(&self) -> io::Result<Option<LogId>> {
        Ok(self.lock()?.log_state().last().map(|l| l.0))
    }

    /// Makes every write issued so far durable (e.g. before a clean shutdown).
    pub async fn sync(&self) -> io::Result<()> {
        let rx = {
            let mut log = self.lock()?;
            let (tx, rx) = oneshot::channel();
            log.flush(true, Some(FlushDone::Waiter(tx)))?;
            rx
        };
        rx.await
            .map_err(|_| io::Error::other("raft log flush thread stopped"))?
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, RaftLog<WalTypes>>> {
        self.inner
            .lock()
            .map_err(|_| io::Error::other("raft log lock poisoned"))
    }
}

/// Decodes entries read from the WAL.
fn decode_entries(raw: Vec<(WalLogId, WalPayload)>) -> io::Result<Vec<Entry>> {
    raw.into_iter()
        .map(|(log_id, payload)| {
            let payload: PayloadOf<TypeConfig> =
                postcard::from_bytes(&payload.0).map_err(invalid_data)?;
            Ok(Entry {
                log_id: log_id.0,
                payload,
            })
        })
        .collect()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if from >= to {
            return Ok(Vec::new());
        }
        // Copy the (cheaply cloned) encoded payloads under the lock; decode outside it.
        let raw = self
            .lock()?
            .read(from, to)
            .collect::<io::Result<Vec<_>>>()?;
        decode_entries(raw)
    }

    /// Replication reads stop at what one append request may carry (`APPEND_BYTES_MAX`, at
    /// least one entry), so catching up a follower never decodes entries its capped request
    /// would not carry anyway.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let budget = APPEND_BYTES_MAX - APPEND_HEADER_BYTES_MAX;
        let mut raw = Vec::new();
        let mut total = 0;
        {
            let log = self.lock()?;
            for record in log.read(start, end) {
                let (log_id, payload) = record?;
                total += payload.0.len() + ENTRY_OVERHEAD_BYTES_MAX;
                if total > budget && !raw.is_empty() {
                    break;
                }
                raw.push((log_id, payload));
            }
        }
        decode_entries(raw)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.lock()?.log_state().vote().map(|v| v.0))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let log = self.lock()?;
        let state = log.log_state();
        Ok(LogState {
            last_purged_log_id: state.purged().map(|l| l.0),
            // raft-log keeps `last >= purged`, as openraft wants.
            last_log_id: state.last().map(|l| l.0),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let rx = {
            let mut log = self.lock()?;
            log.save_vote(WalVote(*vote))?;
            // The vote must be on disk before save_vote returns: request a synced flush here and
            // wait below for its callback, which raft-log runs only after the fsync.
            let (tx, rx) = oneshot::channel();
            log.flush(true, Some(FlushDone::Waiter(tx)))?;
            rx
        };
        rx.await
            .map_err(|_| io::Error::other("raft log flush thread stopped"))?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        let Some(committed) = committed else {
            return Ok(());
        };
        let mut log = self.lock()?;
        let state = log.log_state();
        // raft-log refuses a committed id beyond the last entry or below the saved one. Such a
        // call (e.g. committed moved to a snapshot's last id before the purge reaches the log)
        // is skipped: a stale committed id only means replaying a little more after a restart.
        let beyond_last = Some(&committed) > state.last().map(|l| &l.0);
        if beyond_last || Some(&committed) <= state.committed().map(|l| &l.0) {
            tracing::debug!(%committed, "save_committed skipped");
            return Ok(());
        }
        log.commit(WalLogId(committed))?;
        // Best effort: the record stays in raft-log's buffer and goes to disk with the next
        // synced flush (the next append's, a vote's or shutdown's); a flush of its own would cost
        // the flush thread a wake and a write per commit.
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.lock()?.log_state().committed().map(|l| l.0))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if fault::append_fails() {
            return Err(io::Error::other(format!(
                "injected WAL failure ({} is set)",
                fault::ENV
            )));
        }
        // Encode before taking the lock.
        let records = entries
            .into_iter()
            .map(|e| {
                let bytes = postcard::to_allocvec(&e.payload).map_err(invalid_data)?;
                Ok((WalLogId(e.log_id), WalPayload(Bytes::from(bytes))))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let bytes = records.iter().map(|(_, p)| p.0.len()).sum();
        let started = std::time::Instant::now();
        self.metrics.entries.inc_by(records.len() as u64);
        let mut log = self.lock()?;
        // The entries must be readable when append returns: raft-log applies them to its
        // in-memory index and payload cache before this call returns.
        log.append(records)?;
        observe(&self.metrics.append, started.elapsed());
        // The callback must run only after the entries are on disk: raft-log's flush thread calls
        // it after the fsync covering this write. No waiting here, so that concurrent appends
        // queue up and share one fsync.
        let timer = self.metrics.fsync_timer();
        match &self.gate {
            Some(gate) => gate.submit(&mut log, &self.inner, (callback, timer), bytes),
            None => log.flush(true, Some(FlushDone::Append(callback, timer))),
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let mut log = self.lock()?;
        // openraft keeps `last_log_id`; raft-log's truncate(i) drops [i..).
        let from = last_log_id.as_ref().map_or(0, |l| l.index + 1);
        let next = log.log_state().last().map_or(0, |l| l.0.index + 1);
        if from >= next {
            return Ok(());
        }
        tracing::debug!(?last_log_id, "truncate log");
        // Durable with the next synced flush, which precedes any later write's in the one WAL.
        log.truncate(from)?;
        Ok(())
    }

    async fn purge(&mut self, upto: LogId) -> io::Result<()> {
        let mut log = self.lock()?;
        tracing::debug!(%upto, "purge log");
        log.purge(WalLogId(upto))?;
        // Only a synced flush lets raft-log delete the chunk files the purge emptied; nobody
        // needs to wait for it.
        log.flush(true, None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
