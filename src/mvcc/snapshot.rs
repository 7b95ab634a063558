//! The store's snapshot format: the whole retained state, streamed.
//!
//! ```text
//! version 3 (written):
//! magic "RAFTKVMV" | version u8 (= 3) | current_revision i64 | compact_revision i64
//! keys_hint u64                                     -- the store's key count at the view
//! ( key_len u32 (≥ 1) | key | entry_count u32 | entry_count × entry )*   -- keys ascending
//! end: key_len u32 = 0
//! crc32 u32 (IEEE, of every byte before it)
//!
//! version 2 (still read): version 3 without keys_hint
//! version 1 (still read): the header then key_count u64, then key_count keys (no end mark)
//!
//! entry = main i64 | sub i64 | kind u8 (0 tombstone, 1 put)
//!         [put: create i64 | version i64 | lease i64 | value_len u32 | value]
//! ```
//! Integers little-endian. Every length is bounded before anything is allocated
//! ([`KEY_BYTES_MAX`], [`VALUE_BYTES_MAX`]), and decoding re-checks the store's invariants
//! (ascending keys and revisions, well-formed generations, revisions within the header's), so a
//! damaged or truncated stream is an error, never a different store. [`decode`] consumes exactly
//! the encoded bytes from its buffered reader, so the stream may be embedded in a larger file.
//! Version 2 ends with a mark instead of starting with a count, so a writer need not count the
//! keys first (an O(keys) pass while a compaction's removal is owed). Version 3 adds the count
//! the store knows in O(1), a bound on the keys written (a key created after the view is skipped;
//! none is removed while compaction is held), so a reader sizes its map once: only a hint, so
//! a key more or less is no error.

use std::io;
use std::io::BufRead;
use std::io::Write;
use std::sync::mpsc;

use bytes::Bytes;

use crate::mvcc::KEY_BYTES_MAX;
use crate::mvcc::LiveRef;
use crate::mvcc::NEVER_COMPACTED;
use crate::mvcc::Store;
use crate::mvcc::VALUE_BYTES_MAX;
use crate::mvcc::history::Entries;
use crate::mvcc::history::KeyHistory;
use crate::mvcc::keys::Keys;
use crate::mvcc::keys::Shared;
use crate::mvcc::keys::SortedKeys;
use crate::mvcc::keys::to_bytes;

pub const MAGIC: [u8; 8] = *b"RAFTKVMV";
/// The version written. 3: a key count hint, then keys ending with a zero length.
pub const FORMAT_VERSION: u8 = 3;
/// Keys ending with a zero length, no hint. Still read.
const FORMAT_VERSION_ENDED: u8 = 2;
/// The first version: a key count before the keys. Still read.
const FORMAT_VERSION_COUNTED: u8 = 1;
/// A reader reserves room for at most this many keys from a header's count (more grow the map
/// as they come): what a damaged count can make it reserve before the checksum fails (≈ 420 MiB
/// of address space, untouched until used, and the table's 8 MiB of control bytes written).
const KEYS_PREALLOC_MAX: u64 = 1 << 22;
const WRITE_BUFFER_BYTES: usize = 64 << 10;
/// Entries are preallocated up to this many; a larger (claimed) count grows as it is read.
const ENTRIES_PREALLOC_MAX: usize = 1024;

mod reader;
use reader::CrcReader;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("mvcc snapshot: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt mvcc snapshot at byte {offset}: {detail}")]
    Corrupt { offset: u64, detail: String },
}

/// What a snapshot holds: the store at `revision`, compacted at `compacted`. Taken under the
/// store's lock in O(1); the keys may then be encoded later, in pieces, while the store takes
/// writes, as long as compaction is held meanwhile (`Store::hold_compaction`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub revision: i64,
    pub compacted: i64,
    /// The store's key count: at least the keys a snapshot of the view holds.
    pub keys: u64,
}

impl View {
    /// The view of `store` now.
    pub fn of(store: &Store) -> View {
        View {
            revision: store.current,
            compacted: store.compacted,
            keys: store.keys.len() as u64,
        }
    }
}

/// Write `store` to `out` (buffered here; flushed at the end).
pub fn encode(store: &Store, out: impl Write) -> io::Result<()> {
    let view = View::of(store);
    let mut encoder = Encoder::new(out, view.clone())?;
    let mut buf = Vec::new();
    let mut after: Option<Bytes> = None;
    loop {
        buf.clear();
        let chunk = encode_keys(store, &view, after.as_deref(), KEYS_PER_CHUNK, &mut buf)?;
        encoder.write_keys(&buf, chunk.keys)?;
        match chunk.next {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    encoder.finish()?;
    Ok(())
}

/// Keys a snapshot writer encodes per piece: the store's lock is held that long (about a
/// millisecond for 100-byte values; the apply pause a snapshot costs).
pub const KEYS_PER_CHUNK: usize = 1024;

/// Writes one snapshot stream: the header, then the keys as encoded by [`encode_keys`] (in
/// order, each piece after the last), then the end mark and the checksum.
pub struct Encoder<W: Write> {
    w: CrcWriter<io::BufWriter<W>>,
    written: u64,
}

impl<W: Write> Encoder<W> {
    pub fn new(out: W, view: View) -> io::Result<Self> {
        let mut w = CrcWriter {
            inner: io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, out),
            crc: crc32fast::Hasher::new(),
        };
        w.write_all(&MAGIC)?;
        w.write_all(&[FORMAT_VERSION])?;
        w.write_all(&view.revision.to_le_bytes())?;
        w.write_all(&view.compacted.to_le_bytes())?;
        w.write_all(&view.keys.to_le_bytes())?;
        Ok(Encoder { w, written: 0 })
    }

    /// Appends `keys` keys encoded by [`encode_keys`].
    pub fn write_keys(&mut self, encoded: &[u8], keys: u64) -> io::Result<()> {
        self.written += keys;
        self.w.write_all(encoded)
    }

    /// Keys written so far.
    pub fn keys(&self) -> u64 {
        self.written
    }

    /// Writes the end mark and the checksum; answers the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&0u32.to_le_bytes())?;
        let crc = self.w.crc.clone().finalize();
        self.w.inner.write_all(&crc.to_le_bytes())?;
        self.w.inner.flush()?;
        self.w.inner.into_inner().map_err(|e| e.into_error())
    }
}

/// A piece of keys encoded by [`encode_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Keys encoded.
    pub keys: u64,
    /// The last key looked at, to continue after; `None` when every key was looked at.
    pub next: Option<Bytes>,
}

/// Encodes into `buf` (appending) the keys of `view` after `after` (from the first when `None`),
/// looking at no more than `keys_max` keys: each key's entries as of the view, skipping keys
/// the view does not hold (created after it, or compacted away). Call under the store's lock;
/// write `buf` with [`Encoder::write_keys`] after releasing it.
pub fn encode_keys(
    store: &Store,
    view: &View,
    after: Option<&[u8]>,
    keys_max: usize,
    buf: &mut Vec<u8>,
) -> io::Result<Chunk> {
    let mut chunk = Chunk {
        keys: 0,
        next: None,
    };
    for (looked, (key, history)) in store.keys.after(after).enumerate() {
        if looked == keys_max {
            return Ok(chunk);
        }
        chunk.next = Some(to_bytes(key));
        let entries = history.retained_at(view.compacted, view.revision);
        if entries.is_empty() {
            continue;
        }
        chunk.keys += 1;
        // Writing enforces the limits decoding checks, so every snapshot written is readable.
        write_len(buf, key.len(), KEY_BYTES_MAX)?;
        buf.extend_from_slice(key);
        write_len(buf, entries.len(), u32::MAX as usize)?;
        for e in entries {
            buf.extend_from_slice(&e.rev.main.to_le_bytes());
            buf.extend_from_slice(&e.rev.sub.to_le_bytes());
            match &e.value {
                None => buf.push(0),
                Some(v) => {
                    buf.push(1);
                    for x in [e.create, e.version, e.lease] {
                        buf.extend_from_slice(&x.to_le_bytes());
                    }
                    write_len(buf, v.len(), VALUE_BYTES_MAX)?;
                    buf.extend_from_slice(v);
                }
            }
        }
    }
    chunk.next = None;
    Ok(chunk)
}

fn write_len(w: &mut impl Write, len: usize, max: usize) -> io::Result<()> {
    match u32::try_from(len) {
        Ok(n) if len <= max => w.write_all(&n.to_le_bytes()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("length {len} over {max}"),
        )),
    }
}

/// Read a store written by [`encode`]; `txn_ops_max` as in [`Store::new`].
pub fn decode(input: impl BufRead, txn_ops_max: usize) -> Result<Store, SnapshotError> {
    decode_with(input, txn_ops_max, |_| {})
}

/// Keys the reader hands the index builder at a time, and how many such batches may wait.
const KEYS_PER_BATCH: usize = 4096;
const BATCHES_QUEUED_MAX: usize = 4;

type Batch = Vec<(Shared, KeyHistory)>;

/// [`decode`], lending every key live at the store's revision to `on_live` (while its bytes are
/// in the cache): what a caller would otherwise gather in a second pass over the whole store.
/// Keys come ascending; a store that fails to decode may have lent some.
///
/// Two threads: this one reads, checks and allocates the keys and their histories; a second
/// one (`snapshot-index`) puts them in the key map, sized by the header's key count, and lends
/// them to `on_live`, in batches of [`KEYS_PER_BATCH`] keys, at most [`BATCHES_QUEUED_MAX`]
/// waiting: the map's inserts and the digest (cache misses) and their first touches of fresh
/// memory were half of a 1M-key load (BENCHMARKS.md, "A load on two cores").
pub fn decode_with(
    input: impl BufRead,
    txn_ops_max: usize,
    on_live: impl FnMut(LiveRef<'_>) + Send,
) -> Result<Store, SnapshotError> {
    let mut r = CrcReader::new(input);
    if r.array::<8>()? != MAGIC {
        return Err(r.corrupt("not an mvcc snapshot (bad magic)"));
    }
    let [version] = r.array::<1>()?;
    if !(FORMAT_VERSION_COUNTED..=FORMAT_VERSION).contains(&version) {
        return Err(r.corrupt(format!(
            "format version {version}, this build reads {FORMAT_VERSION_COUNTED} to {FORMAT_VERSION}"
        )));
    }
    let current = r.i64()?;
    let compacted = r.i64()?;
    if current < crate::mvcc::FIRST_REVISION || compacted < NEVER_COMPACTED || compacted > current {
        return Err(r.corrupt(format!(
            "bad revisions: current {current}, compacted {compacted}"
        )));
    }
    // Version 1 counts its keys; later versions end them with an empty key, and version 3 says
    // how many keys its store had (at least those written) first.
    let (counted, keys_hint) = match version {
        FORMAT_VERSION_COUNTED => {
            let count = r.u64()?;
            (Some(count), count)
        }
        FORMAT_VERSION_ENDED => (None, 0),
        _ => (None, r.u64()?),
    };
    let header = Header {
        current,
        compacted,
        counted,
    };
    // The checksum comes last: a damaged count may only cost this bounded reservation.
    let capacity = usize::try_from(keys_hint.min(KEYS_PREALLOC_MAX)).unwrap_or(0);
    let keys = std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Batch>(BATCHES_QUEUED_MAX);
        let (empty_tx, empty_rx) = mpsc::channel::<Batch>();
        let builder = std::thread::Builder::new()
            .name("snapshot-index".into())
            .spawn_scoped(scope, move || {
                build_keys(
                    SortedKeys::with_capacity(capacity),
                    full_rx,
                    empty_tx,
                    on_live,
                )
            })?;
        let read = read_keys(&mut r, &header, full_tx, empty_rx);
        // `read_keys` dropped its sender, so the builder ends once it took every batch.
        let keys = match builder.join() {
            Ok(keys) => keys,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        read.map(|()| keys)
    })?;
    let want = r.crc()?;
    if u32::from_le_bytes(r.trailer()?) != want {
        return Err(r.corrupt("checksum mismatch"));
    }
    let mut store = Store::new(txn_ops_max);
    store.current = current;
    store.compacted = compacted;
    store.keys = keys;
    Ok(store)
}

struct Header {
    current: i64,
    compacted: i64,
    /// The key count of a version 1 stream.
    counted: Option<u64>,
}

/// Reads every key and its history, checking them, and sends them in ascending batches to
/// `full`; reuses the batches `empty` hands back.
fn read_keys<R: BufRead>(
    r: &mut CrcReader<R>,
    header: &Header,
    full: mpsc::SyncSender<Batch>,
    empty: mpsc::Receiver<Batch>,
) -> Result<(), SnapshotError> {
    let mut counted = header.counted;
    let mut last_key: Option<Shared> = None;
    let mut batch = Batch::with_capacity(KEYS_PER_BATCH);
    loop {
        if let Some(left) = counted.as_mut() {
            if *left == 0 {
                break;
            }
            *left -= 1;
        }
        let key = r.bytes(KEY_BYTES_MAX, "key")?;
        if key.is_empty() && counted.is_none() {
            break;
        }
        if key.is_empty() || last_key.as_ref().is_some_and(|last| key <= *last) {
            return Err(r.corrupt("keys empty or not ascending"));
        }
        let n = r.len(u32::MAX as usize, "entry count")?;
        let mut history = KeyHistory {
            entries: Entries::with_capacity(n.min(ENTRIES_PREALLOC_MAX)),
        };
        for _ in 0..n {
            history.entries.push(r.entry()?);
        }
        history.check(header.current).map_err(|d| r.corrupt(d))?;
        if history
            .entries
            .get(1)
            .is_some_and(|e| e.rev.main <= header.compacted)
        {
            return Err(r.corrupt("history below the compacted revision"));
        }
        last_key = Some(key.clone());
        batch.push((key, history));
        if batch.len() == KEYS_PER_BATCH {
            let next = empty
                .try_recv()
                .unwrap_or_else(|_| Batch::with_capacity(KEYS_PER_BATCH));
            if full.send(std::mem::replace(&mut batch, next)).is_err() {
                // The builder is gone: only a panic ends it early, and `decode_with` raises it.
                return Ok(());
            }
        }
    }
    // A send fails only if the builder panicked (raised by the caller).
    let _ = full.send(batch);
    Ok(())
}

/// Puts the keys of every batch from `full` in `keys`, in order, lending the live ones to
/// `on_live`; hands the emptied batches back on `empty`.
fn build_keys(
    mut keys: SortedKeys,
    full: mpsc::Receiver<Batch>,
    empty: mpsc::Sender<Batch>,
    mut on_live: impl FnMut(LiveRef<'_>),
) -> Keys {
    for mut batch in full {
        for (key, history) in batch.drain(..) {
            if let Some(kv) = history.live().and_then(|e| e.live_ref(&key)) {
                on_live(kv);
            }
            keys.push(key, history);
        }
        // The reader may be done and gone: then the batch is simply freed.
        let _ = empty.send(batch);
    }
    keys.finish()
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Store {
    /// [`encode`] as a method.
    pub fn encode_snapshot(&self, out: impl Write) -> io::Result<()> {
        encode(self, out)
    }
}
