use std::io::Cursor;
use std::io::Seek;
use std::io::SeekFrom;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use futures::Stream;
use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::StorageError;
use openraft::alias::OneshotReceiverOf;
use openraft::alias::SnapshotOf;
use openraft::storage::EntryResponder;
use openraft::storage::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;
use tempfile::TempDir;

use std::io::Read;
use std::io::Write;

use super::*;
use crate::raft::types::Command;
use crate::raft::types::Response;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::StoredMembership;

/// The smallest state machine openraft's suite accepts: it tracks only what the suite checks.
#[derive(Clone, Default)]
struct MemSm(Arc<Mutex<SmInner>>);

#[derive(Default)]
struct SmInner {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshot: Option<SnapshotMeta>,
}

type MemSnapshot = SnapshotOf<TypeConfig, Cursor<Vec<u8>>>;

impl RaftSnapshotBuilder<TypeConfig> for MemSm {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> io::Result<MemSnapshot> {
        let mut sm = self.0.lock().unwrap();
        let meta = SnapshotMeta {
            last_log_id: sm.last_applied,
            last_membership: sm.membership.clone(),
        };
        sm.snapshot = Some(meta.clone());
        Ok(MemSnapshot {
            meta,
            snapshot: Cursor::new(Vec::new()),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemSm {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = MemSm;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let sm = self.0.lock().unwrap();
        Ok((sm.last_applied, sm.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            {
                let mut sm = self.0.lock().unwrap();
                sm.last_applied = Some(entry.log_id);
                if let EntryPayload::Membership(m) = &entry.payload {
                    sm.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
            }
            if let Some(responder) = responder {
                responder.send(Response::default());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> MemSm {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        _data: Cursor<Vec<u8>>,
    ) -> io::Result<()> {
        let mut sm = self.0.lock().unwrap();
        sm.last_applied = meta.last_log_id;
        sm.membership = meta.last_membership.clone();
        sm.snapshot = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<MemSnapshot>> {
        let sm = self.0.lock().unwrap();
        Ok(sm.snapshot.clone().map(|meta| MemSnapshot {
            meta,
            snapshot: Cursor::new(Vec::new()),
        }))
    }
}

/// Builds stores with the given flush wait (zero: the gate groups appends).
struct Builder(Duration);

impl StoreBuilder<TypeConfig, LogStore, MemSm, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, MemSm), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), Some(self.0)).unwrap();
        Ok((dir, store, MemSm::default()))
    }
}

#[tokio::test]
async fn openraft_conformance_suite() {
    Suite::test_all(Builder(DEFAULT_FLUSH_BATCH_WAIT))
        .await
        .unwrap();
    Suite::test_all(Builder(Duration::from_micros(50)))
        .await
        .unwrap();
}

fn ent(index: u64, value_len: usize) -> Entry {
    Entry {
        log_id: log_id::<TypeConfig>(2, 1, index),
        payload: EntryPayload::Normal(Command::Set {
            key: format!("key-{index}"),
            value: vec![index as u8; value_len],
        }),
    }
}

async fn append_durably(store: &mut LogStore, entries: Vec<Entry>) {
    append_pending(store, entries).await.await.unwrap().unwrap();
}

/// A store in `dir` with the group-commit gate (no flush wait), and its gate.
fn gated_store(dir: &TempDir) -> (LogStore, Arc<gate::Gate>) {
    let store = LogStore::open(dir.path(), Some(Duration::ZERO)).unwrap();
    let gate = store.gate.clone().unwrap();
    (store, gate)
}

/// Appends without waiting for the flush: the receiver yields the `IOFlushed` result.
async fn append_pending(
    store: &mut LogStore,
    entries: Vec<Entry>,
) -> OneshotReceiverOf<TypeConfig, io::Result<()>> {
    let (tx, rx) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx
}

async fn read_all(store: &mut LogStore) -> Vec<Entry> {
    store.try_get_log_entries(..).await.unwrap()
}

fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// Copies a closed store's directory, so each damage case starts from the same bytes.
fn copy_dir(from: &Path) -> TempDir {
    let to = tempfile::tempdir().unwrap();
    for d in std::fs::read_dir(from).unwrap() {
        let path = d.unwrap().path();
        std::fs::copy(&path, to.path().join(path.file_name().unwrap())).unwrap();
    }
    to
}

#[tokio::test]
async fn reopen_keeps_vote_entries_committed_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=10).map(|i| ent(i, 10)).collect();
    let vote = Vote::new_committed(2, 1);
    {
        let mut store = LogStore::open(dir.path(), None).unwrap();
        append_durably(&mut store, entries.clone()).await;
        store.save_vote(&vote).await.unwrap();
        store.save_committed(Some(entries[6].log_id)).await.unwrap();
        // A committed id past the last entry is skipped, not an error.
        store
            .save_committed(Some(log_id::<TypeConfig>(3, 1, 20)))
            .await
            .unwrap();
        store.truncate_after(Some(entries[8].log_id)).await.unwrap();
        // Past the end: nothing to do.
        store
            .truncate_after(Some(log_id::<TypeConfig>(2, 1, 30)))
            .await
            .unwrap();
        store.purge(entries[1].log_id).await.unwrap();
        store.sync().await.unwrap();
        assert_eq!(store.last_log_id().unwrap(), Some(entries[8].log_id));
        // One store per directory.
        assert!(matches!(
            LogStore::open(dir.path(), None),
            Err(StoreError::Open { .. })
        ));
    }
    let mut store = LogStore::open(dir.path(), None).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    assert_eq!(
        store.read_committed().await.unwrap(),
        Some(entries[6].log_id)
    );
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(entries[1].log_id));
    assert_eq!(state.last_log_id, Some(entries[8].log_id));
    assert_eq!(read_all(&mut store).await, entries[2..9].to_vec());
    assert_eq!(
        store.try_get_log_entries(4..=5).await.unwrap(),
        entries[3..5].to_vec()
    );
    // The log continues where it left off.
    append_durably(&mut store, vec![ent(10, 10)]).await;
    assert_eq!(store.last_log_id().unwrap(), Some(ent(10, 10).log_id));
}

#[tokio::test]
async fn torn_tail_is_cut_off_on_open() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let orig = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=6).map(|i| ent(i, 10)).collect();
    let size = |dir: &Path| {
        std::fs::metadata(wal_files(dir).pop().unwrap())
            .unwrap()
            .len()
    };
    let record_len = {
        let mut store = LogStore::open(orig.path(), None).unwrap();
        append_durably(&mut store, entries.clone()).await;
        let before = size(orig.path());
        append_durably(&mut store, vec![ent(7, 2000)]).await;
        size(orig.path()) - before
    };
    for cut in [
        1,
        3,
        4,
        8,
        100,
        record_len / 2,
        record_len - 8,
        record_len - 1,
    ] {
        let dir = copy_dir(orig.path());
        let last = wal_files(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&last).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .set_len(len - cut)
            .unwrap();

        let mut store =
            LogStore::open(dir.path(), None).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_eq!(read_all(&mut store).await, entries, "cut {cut}");
        append_durably(&mut store, vec![ent(7, 5)]).await;
        drop(store);
        let mut store = LogStore::open(dir.path(), None).unwrap();
        assert_eq!(read_all(&mut store).await.len(), 7, "cut {cut}");
    }

    // A crash can also leave the file extended over a zero-filled, never-written record.
    let dir = copy_dir(orig.path());
    let last = wal_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(len - record_len).unwrap();
    f.set_len(len).unwrap();
    drop(f);
    let mut store = LogStore::open(dir.path(), None).unwrap();
    assert_eq!(read_all(&mut store).await, entries);
}

#[tokio::test]
async fn damage_in_the_middle_is_reported_as_corrupt() {
    let orig = tempfile::tempdir().unwrap();
    {
        let mut store = LogStore::open(orig.path(), None).unwrap();
        append_durably(&mut store, (1..=50).map(|i| ent(i, 100)).collect()).await;
    }
    for (num, den) in [(1u64, 4u64), (1, 3), (1, 2), (3, 4)] {
        let dir = copy_dir(orig.path());
        let file = wal_files(dir.path()).pop().unwrap();
        let offset = std::fs::metadata(&file).unwrap().len() * num / den;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        let mut byte = [0u8];
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.read_exact(&mut byte).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&[byte[0] ^ 0x5a]).unwrap();
        drop(f);

        match LogStore::open(dir.path(), None) {
            Err(StoreError::Corrupt { path, detail }) => {
                assert_eq!(path, file, "offset {offset}: {detail}");
            }
            other => panic!("offset {offset}: expected Corrupt, got {other:?}"),
        }
    }
}

/// Several WAL files: rotation, purge deleting whole files, damage in a file before the last.
#[tokio::test]
async fn many_files_purge_and_damage_before_the_last_file() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=200).map(|i| ent(i, 100)).collect();
    {
        let mut store = LogStore::open_with(dir.path(), None, 4096).unwrap();
        for chunk in entries.chunks(7) {
            append_durably(&mut store, chunk.to_vec()).await;
        }
    }
    let files = wal_files(dir.path());
    assert!(files.len() > 4, "{files:?}");

    // Damage in a closed file is corruption even when it looks like a torn record.
    for truncate in [false, true] {
        let copy = copy_dir(dir.path());
        let victim = wal_files(copy.path())[1].clone();
        let len = std::fs::metadata(&victim).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&victim)
            .unwrap();
        if truncate {
            f.set_len(len - 10).unwrap();
        } else {
            f.write_all_at(&[0xff], len / 2).unwrap();
        }
        drop(f);
        match LogStore::open_with(copy.path(), None, 4096) {
            Err(StoreError::Corrupt { path, .. }) => assert_eq!(path, victim),
            other => panic!("truncate={truncate}: expected Corrupt, got {other:?}"),
        }
    }

    let mut store = LogStore::open_with(dir.path(), None, 4096).unwrap();
    assert_eq!(read_all(&mut store).await, entries);
    store.purge(entries[149].log_id).await.unwrap();
    store.sync().await.unwrap();
    drop(store);
    assert!(
        wal_files(dir.path()).len() < files.len(),
        "purge deleted no file"
    );
    let mut store = LogStore::open_with(dir.path(), None, 4096).unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(entries[149].log_id));
    assert_eq!(read_all(&mut store).await, entries[150..].to_vec());
}

/// Many outstanding appends complete, share fsyncs, and are all there after a reopen: with the
/// gate (no wait) and with raft-log's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_group_commit() {
    for wait in [Duration::ZERO, Duration::from_micros(50)] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), Some(wait)).unwrap();
        assert_eq!(store.gate.is_some(), wait.is_zero());
        let mut waits = Vec::new();
        for i in 1..=200 {
            waits.push(append_pending(&mut store, vec![ent(i, 100)]).await);
        }
        for rx in waits {
            rx.await.unwrap().unwrap();
        }
        let syncs = store_syncs(&store);
        println!("wait {wait:?}: 200 appends, {syncs} fsync batches");
        if !wait.is_zero() {
            // Timing-bound for the gate (a fast disk may finish each fsync before the next
            // append); `gate_groups_appends_behind_a_flush` checks its grouping exactly.
            assert!(syncs < 200, "{syncs} fsync batches");
        }
        drop(store);
        let mut store = LogStore::open(dir.path(), Some(wait)).unwrap();
        assert_eq!(read_all(&mut store).await.len(), 200);
    }
}

/// With the gate, a lone append is synced at once, and appends that arrive while a flush is in
/// flight wait for it and then share one flush. The flush thread is stalled in the first
/// callback, so the count of fsyncs is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the stall guard blocks raft-log's thread, not a task
async fn gate_groups_appends_behind_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, gate) = gated_store(&dir);
    append_durably(&mut store, vec![ent(1, 10)]).await;
    assert_eq!(store_syncs(&store), 1);

    let stall = gate.stall_for_test();
    let first = append_pending(&mut store, vec![ent(2, 10)]).await;
    let mut waits = Vec::new();
    for i in 3..=52 {
        waits.push(append_pending(&mut store, vec![ent(i, 10)]).await);
    }
    assert_eq!(gate.counts_for_test(), (50, 1));
    drop(stall);
    first.await.unwrap().unwrap();
    for rx in waits {
        rx.await.unwrap().unwrap();
    }
    // One fsync for entry 1, one for entry 2, one for the 50 that waited behind it.
    assert_eq!(store_syncs(&store), 3);
    assert_eq!(gate.counts_for_test(), (0, 0));
    drop(store);
    let mut store = LogStore::open(dir.path(), Some(Duration::ZERO)).unwrap();
    assert_eq!(read_all(&mut store).await.len(), 52);
}

/// An append that would take the bytes waiting behind the flush in flight past
/// `WAITING_BYTES_MAX` is sent at once, with what waits, as a second flush in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the stall guard blocks raft-log's thread, not a task
async fn gate_sends_at_once_past_its_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, gate) = gated_store(&dir);
    let stall = gate.stall_for_test();
    let mut waits = Vec::new();
    for (i, len) in [(1, 10), (2, 10), (3, gate::WAITING_BYTES_MAX)] {
        waits.push(append_pending(&mut store, vec![ent(i, len)]).await);
        // (waiting, in flight): 1 goes out; 2 waits; 3 does not fit and goes out with 2.
        let expected = [(0, 1), (1, 1), (0, 2)][i as usize - 1];
        assert_eq!(gate.counts_for_test(), expected, "after append {i}");
    }
    drop(stall);
    for rx in waits {
        rx.await.unwrap().unwrap();
    }
    // Each flush synced (the 16 MiB entry also starts a new WAL file, which adds one).
    assert!(store_syncs(&store) >= 2);
    assert_eq!(gate.counts_for_test(), (0, 0));
}

/// The store dropped while a gated flush is in flight: the dropping thread, not raft-log's flush
/// thread, drops the last reference to the log (dropping a `RaftLog` joins its flush thread, so
/// the flush thread must never be the one). The drop therefore waits for the stalled flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the stall guard blocks raft-log's thread, not a task
async fn the_flush_thread_never_drops_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, gate) = gated_store(&dir);
    let stall = gate.stall_for_test();
    let flushed = append_pending(&mut store, vec![ent(1, 10)]).await;
    let (done_tx, done) = std::sync::mpsc::channel();
    let dropper = std::thread::spawn(move || {
        drop(store);
        let _ = done_tx.send(());
    });
    // The drop joins the flush thread, which is stalled: it cannot finish (with a strong
    // reference in the batch it would return at once and leave the last drop to that thread).
    assert_eq!(
        done.recv_timeout(Duration::from_millis(300)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
    );
    drop(stall);
    flushed.await.unwrap().unwrap();
    done.recv_timeout(Duration::from_secs(10)).unwrap();
    dropper.join().unwrap();
    // The directory lock is free again.
    let mut store = LogStore::open(dir.path(), Some(Duration::ZERO)).unwrap();
    assert_eq!(read_all(&mut store).await.len(), 1);
}

fn store_syncs(store: &LogStore) -> u64 {
    store
        .inner
        .lock()
        .unwrap()
        .stat()
        .flush_metrics
        .sync_batch_count
}

/// Not a test: prints the latency of one durable append for a few batch waits.
/// `cargo test --lib append_latency -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn append_latency() {
    for wait in [None, Some(0), Some(20), Some(50), Some(100), Some(200)] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), wait.map(Duration::from_micros)).unwrap();
        let mut times = Vec::new();
        for i in 1..=300 {
            let t = Instant::now();
            append_durably(&mut store, vec![ent(i, 100)]).await;
            times.push(t.elapsed());
        }
        times.sort();
        let mut waits = Vec::new();
        let t = Instant::now();
        for i in 301..=500 {
            waits.push(append_pending(&mut store, vec![ent(i, 100)]).await);
        }
        for rx in waits {
            rx.await.unwrap().unwrap();
        }
        let elapsed = t.elapsed();
        let syncs = store_syncs(&store);
        println!(
            "wait {wait:?} us: single append p50 {:?} p99 {:?}; 200 outstanding: {elapsed:?}, \
             {syncs} fsyncs in all",
            times[150], times[297]
        );
    }
}
