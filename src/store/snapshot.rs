//! Snapshot files: the on-disk format, durable writes, validated reads, and the snapshot
//! directory (naming, finding the newest, deleting the rest). Blocking I/O only: callers keep it
//! off the async executor.
//!
//! Format 2 (all integers little-endian):
//! ```text
//! magic "RAFTKVSN" | version u32 (2) | meta_len u32 | meta (postcard SnapshotMeta)
//! mvcc store (`mvcc::snapshot`: its own magic, version, every retained revision, crc32)
//! crc32 u32 (of every byte before it) | EOF
//! ```
//! Format 1 (raftkv before the multi-version store: latest values only) is refused with
//! [`OldFormat`]: its data cannot become the same revisions on every replica, so such a data dir
//! is not migrated (see the README, DATA_DIR).
//! Invariants: a file under a final name (`snapshot-<term>-<index>.bin`, or `snapshot-none.bin`
//! before anything was applied) is complete, fsynced, and holds the meta its name says; files
//! being written end in `.tmp` and are deleted on startup. Any damage (truncation, flipped bit,
//! trailing bytes, bad lengths) is reported as `io::ErrorKind::InvalidData` carrying a
//! [`CorruptSnapshot`] that names the file.

use std::fs;
use std::fs::File;
use std::io;
use std::io::BufWriter;
use std::io::Read;
use std::io::Seek;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use crate::mvcc;
use crate::mvcc::snapshot::KEYS_PER_CHUNK;
use crate::raft::types::LogId;
use crate::raft::types::SnapshotMeta;
use crate::store::kv::KvState;
use crate::store::kv::LiveSummary;
use hashed::HashedReader;

/// What openraft passes between the state machine and the network: an open snapshot file,
/// positioned at offset 0.
pub type SnapshotData = File;

pub const MAGIC: [u8; 8] = *b"RAFTKVSN";
/// 3: the store, then the leases (`count u64`, `count × (id i64, ttl i64)`). 2 had no leases
/// and is still read (as "no leases").
pub const FORMAT_VERSION: u32 = 3;
const FORMAT_VERSION_NO_LEASES: u32 = 2;
/// Leases a snapshot may hold (a damaged count must not loop for ages).
pub const LEASES_MAX: u64 = 1 << 24;
/// Decoding limits: a damaged length must fail fast instead of allocating gigabytes. Writing
/// enforces the same limits, so every file we write is readable.
pub const META_BYTES_MAX: usize = 16 << 20;
pub const KEY_BYTES_MAX: usize = mvcc::KEY_BYTES_MAX;
pub const VALUE_BYTES_MAX: usize = mvcc::VALUE_BYTES_MAX;
/// etcd's `--max-txn-ops` default; every replica must use the same (it decides whether an entry
/// fails), so it is a constant, not a flag.
pub const TXN_OPS_MAX: usize = 128;
const BUFFER_BYTES: usize = 256 << 10;
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".bin";
const TMP_SUFFIX: &str = ".tmp";
/// Name of the temp file a received snapshot is copied into before its meta is known.
const INCOMING_TMP: &str = "snapshot-incoming.tmp";

/// The error inside an `InvalidData` io::Error for a damaged or foreign snapshot file.
#[derive(Debug, thiserror::Error)]
#[error("corrupt snapshot {file}: {detail}")]
pub struct CorruptSnapshot {
    /// The file's path, or a description such as "received snapshot".
    pub file: String,
    pub detail: String,
}

impl CorruptSnapshot {
    /// The [`CorruptSnapshot`] inside `e`, if that is what `e` is.
    pub fn inside(e: &io::Error) -> Option<&CorruptSnapshot> {
        e.get_ref()?.downcast_ref::<CorruptSnapshot>()
    }
}

/// The error inside an `InvalidData` io::Error for a snapshot written by an older raftkv.
#[derive(Debug, thiserror::Error)]
#[error(
    "snapshot {file} has format {version}, written by a raftkv before the multi-version (etcd) \
     store; this build reads format {FORMAT_VERSION} and cannot migrate it (the revisions would \
     differ between replicas). Start this node with an empty data dir and join it to a current \
     cluster, or copy the data over with the HTTP API"
)]
pub struct OldFormat {
    pub file: String,
    pub version: u32,
}

impl OldFormat {
    /// The [`OldFormat`] inside `e`, if that is what `e` is.
    pub fn inside(e: &io::Error) -> Option<&OldFormat> {
        e.get_ref()?.downcast_ref::<OldFormat>()
    }
}

fn corrupt(file: &str, detail: impl Into<String>) -> io::Error {
    let (file, detail) = (file.to_string(), detail.into());
    io::Error::new(io::ErrorKind::InvalidData, CorruptSnapshot { file, detail })
}

/// File name for a snapshot ending at `last_log_id`.
pub fn file_name(last_log_id: Option<&LogId>) -> String {
    match last_log_id {
        Some(id) => format!("{PREFIX}{}-{}{SUFFIX}", id.leader_id.term, id.index),
        None => format!("{PREFIX}none{SUFFIX}"),
    }
}

/// Order key of a final snapshot file name: `Some(None)` for `snapshot-none.bin`,
/// `Some(Some((term, index)))` for `snapshot-<term>-<index>.bin`, `None` for other names.
fn name_key(name: &str) -> Option<Option<(u64, u64)>> {
    let stem = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if stem == "none" {
        return Some(None);
    }
    let (term, index) = stem.split_once('-')?;
    Some(Some((term.parse().ok()?, index.parse().ok()?)))
}

/// Encodes a snapshot to `out`, streaming the store (the encoded store never exists in memory).
pub fn encode(out: impl Write, meta: &SnapshotMeta, kv: &KvState) -> io::Result<()> {
    let view = mvcc::snapshot::View::of(kv.store());
    let leases: Vec<(i64, i64)> = kv.leases().all().collect();
    let keys_view = view.clone();
    encode_with(out, meta, view, &leases, |after, buf| {
        mvcc::snapshot::encode_keys(kv.store(), &keys_view, after, KEYS_PER_CHUNK, buf)
    })?;
    Ok(())
}

/// Encodes a snapshot of `view` (with `leases`) to `out`, asking `keys` for the store's keys
/// piece by piece: `keys(after, buf)` appends the keys after `after` to `buf`
/// (`mvcc::snapshot::encode_keys`), so a caller can read each piece under its lock and write it
/// without (see `state_machine.rs`). Answers the number of keys written.
pub fn encode_with(
    out: impl Write,
    meta: &SnapshotMeta,
    view: mvcc::snapshot::View,
    leases: &[(i64, i64)],
    mut keys: impl FnMut(Option<&[u8]>, &mut Vec<u8>) -> io::Result<mvcc::snapshot::Chunk>,
) -> io::Result<u64> {
    let mut w = Crc::new(out);
    let meta_bytes = postcard::to_stdvec(meta).map_err(io::Error::other)?;
    w.write_all(&MAGIC)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes())?;
    write_len(&mut w, meta_bytes.len(), META_BYTES_MAX, "meta")?;
    w.write_all(&meta_bytes)?;
    let mut store = mvcc::snapshot::Encoder::new(&mut w, view)?;
    let (mut buf, mut after) = (Vec::new(), None::<bytes::Bytes>);
    loop {
        buf.clear();
        let chunk = keys(after.as_deref(), &mut buf)?;
        store.write_keys(&buf, chunk.keys)?;
        match chunk.next {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    let written = store.keys();
    store.finish()?;
    w.write_all(&(leases.len() as u64).to_le_bytes())?;
    for (id, ttl) in leases {
        w.write_all(&id.to_le_bytes())?;
        w.write_all(&ttl.to_le_bytes())?;
    }
    let crc = w.crc.finalize();
    w.inner.write_all(&crc.to_le_bytes())?;
    w.inner.flush()?;
    Ok(written)
}

fn write_len(w: &mut impl Write, len: usize, max: usize, what: &str) -> io::Result<()> {
    match u32::try_from(len) {
        Ok(len32) if len <= max => w.write_all(&len32.to_le_bytes()),
        _ => {
            let detail = format!("snapshot {what} of {len} bytes is over the limit of {max}");
            Err(io::Error::new(io::ErrorKind::InvalidInput, detail))
        }
    }
}

/// Decodes and validates a whole snapshot from `input` (magic, version, lengths, the store's
/// own checks, checksum, end of file). `file` names the source in errors. Buffered here:
/// `input` is read in pieces of `BUFFER_BYTES`.
pub fn decode(input: impl Read, file: &str) -> io::Result<(SnapshotMeta, KvState)> {
    let mut r = HashedReader::with_capacity(BUFFER_BYTES, input);
    let eof = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(file, "truncated"),
        io::ErrorKind::InvalidData => e,
        _ => io::Error::new(e.kind(), format!("reading snapshot {file}: {e}")),
    };
    let magic: [u8; 8] = read_array(&mut r).map_err(eof)?;
    if magic != MAGIC {
        return Err(corrupt(file, "bad magic: not a raftkv snapshot"));
    }
    let version = u32::from_le_bytes(read_array(&mut r).map_err(eof)?);
    if version == 1 {
        let old = OldFormat {
            file: file.to_string(),
            version,
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, old));
    }
    if version != FORMAT_VERSION && version != FORMAT_VERSION_NO_LEASES {
        return Err(corrupt(file, format!("unknown format version {version}")));
    }
    let meta_bytes = read_bytes(&mut r, META_BYTES_MAX, file, "meta").map_err(eof)?;
    let meta: SnapshotMeta = postcard::from_bytes(&meta_bytes)
        .map_err(|e| corrupt(file, format!("undecodable meta: {e}")))?;
    let mut live = LiveSummary::default();
    let store = mvcc::snapshot::decode_with(&mut r, TXN_OPS_MAX, |kv| live.add(kv));
    let store = store.map_err(|e| match e {
        mvcc::snapshot::SnapshotError::Io(io) => eof(io),
        corrupt_store @ mvcc::snapshot::SnapshotError::Corrupt { .. } => {
            corrupt(file, corrupt_store.to_string())
        }
    })?;
    let mut leases = Vec::new();
    if version >= FORMAT_VERSION {
        let count = u64::from_le_bytes(read_array(&mut r).map_err(eof)?);
        if count > LEASES_MAX {
            return Err(corrupt(
                file,
                format!("lease count {count} over {LEASES_MAX}"),
            ));
        }
        for _ in 0..count {
            let id = i64::from_le_bytes(read_array(&mut r).map_err(eof)?);
            let ttl = i64::from_le_bytes(read_array(&mut r).map_err(eof)?);
            if id <= 0 || leases.last().is_some_and(|(last, _)| *last >= id) {
                return Err(corrupt(file, format!("lease id {id} out of order")));
            }
            leases.push((id, ttl));
        }
    }
    let computed = r.crc();
    let mut stored = [0u8; 4];
    r.unhashed(&mut stored).map_err(eof)?;
    let stored = u32::from_le_bytes(stored);
    if stored != computed {
        let detail =
            format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})");
        return Err(corrupt(file, detail));
    }
    if r.read(&mut [0u8; 1]).map_err(eof)? != 0 {
        return Err(corrupt(file, "trailing bytes after the checksum"));
    }
    Ok((meta, KvState::from_summary(store, leases, live)))
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_bytes(r: &mut impl Read, max: usize, file: &str, what: &str) -> io::Result<Vec<u8>> {
    let len = u32::from_le_bytes(read_array(r)?) as usize;
    if len > max {
        return Err(corrupt(file, format!("{what} length {len} over {max}")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

pub use crate::store::snapshot::syncing::SyncingFile;

/// What a snapshot's bytes are written into (see [`write_snapshot_with`]).
pub type SnapshotWriter = BufWriter<SyncingFile>;

/// Writes the snapshot of `map` at `meta` durably into `dir`; returns the final path.
pub fn write_snapshot(dir: &Path, meta: &SnapshotMeta, map: &KvState) -> io::Result<PathBuf> {
    write_snapshot_with(dir, meta, |out| encode(out, meta, map))
}

/// Writes a snapshot at `meta` durably into `dir`, its bytes produced by `encode` (e.g.
/// [`encode_with`]); returns the final path. A failed `encode` leaves no file.
pub fn write_snapshot_with(
    dir: &Path,
    meta: &SnapshotMeta,
    encode: impl FnOnce(&mut SnapshotWriter) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let name = file_name(meta.last_log_id.as_ref());
    // 1. Every byte must be written to a temp file in `dir` (same filesystem, so step 3 is a
    //    rename) and flushed from the BufWriter before the file is synced.
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, SyncingFile::new(File::create(&tmp)?));
    if let Err(e) = encode(&mut out) {
        drop(out);
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    publish(dir, &tmp, file.into_inner(), &name)
}

/// Steps 2–4 of every durable snapshot write. A failed fsync is returned, never retried.
fn publish(dir: &Path, tmp: &Path, file: File, name: &str) -> io::Result<PathBuf> {
    // 2. The file must be fsynced before the rename: otherwise a crash could leave the final
    //    name on a file whose data never reached the disk.
    file.sync_all()?;
    drop(file);
    // 3. The rename must happen after the fsync and before the directory sync; it is atomic,
    //    so readers see either the old set of files or the complete new one.
    let path = dir.join(name);
    fs::rename(tmp, &path)?;
    // 4. The directory must be fsynced before the snapshot is reported durable: the rename lives
    //    in the directory, and openraft may purge the log up to the snapshot once we return.
    sync_dir(dir)?;
    Ok(path)
}

/// fsyncs a directory so entries created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads and validates the snapshot at `path`, including that its meta matches its name.
pub fn read_snapshot(path: &Path) -> io::Result<(SnapshotMeta, KvState)> {
    let label = path.display().to_string();
    let file = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{label}: {e}")))?;
    let (meta, map) = decode(file, &label)?;
    let want = file_name(meta.last_log_id.as_ref());
    if path.file_name().is_some_and(|n| *n != *want) {
        return Err(corrupt(&label, format!("holds the snapshot of {want}")));
    }
    Ok((meta, map))
}

/// Copies a received snapshot into `dir` durably, validating it on the way (one pass: every
/// byte read is hashed, decoded and written). Returns the final path and the decoded contents.
/// A file that is damaged or whose meta differs from `expected` never gets a final name.
pub fn import_snapshot(
    dir: &Path,
    src: &mut File,
    expected: &SnapshotMeta,
) -> io::Result<(PathBuf, KvState)> {
    src.rewind()?;
    // 1. As in `write_snapshot`, but the bytes are validated while they are copied.
    let tmp = dir.join(INCOMING_TMP);
    let out = BufWriter::with_capacity(BUFFER_BYTES, SyncingFile::new(File::create(&tmp)?));
    let mut tee = Tee { src, out };
    let label = "received snapshot";
    let decoded = decode(&mut tee, label).and_then(|(meta, map)| match meta == *expected {
        true => Ok(map),
        false => Err(corrupt(label, format!("holds {meta}, expected {expected}"))),
    });
    // Best effort on failure: a leftover temp file is also deleted on the next startup.
    let map = decoded.inspect_err(|_| drop(fs::remove_file(&tmp)))?;
    let file = tee.out.into_inner().map_err(|e| e.into_error())?;
    let path = publish(
        dir,
        &tmp,
        file.into_inner(),
        &file_name(expected.last_log_id.as_ref()),
    )?;
    Ok((path, map))
}

/// An anonymous read/write file in `dir` for the network to receive a snapshot into before
/// `install_snapshot`: its name is removed at once, so it can never be mistaken for a snapshot
/// and its space is freed when the handle drops, even after a crash. Unix only.
pub fn incoming_file(dir: &Path) -> io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("incoming-{}-{n}.part", std::process::id()));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    fs::remove_file(&path)?;
    Ok(file)
}

/// The newest final snapshot file in `dir`, by its name's (term, index).
pub fn find_latest(dir: &Path) -> io::Result<Option<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(key) = entry.file_name().to_str().and_then(name_key) {
            found.push((key, entry.path()));
        }
    }
    Ok(found.into_iter().max().map(|(_, path)| path))
}

/// Deletes every snapshot file and temp file in `dir` except `keep`; returns how many.
/// Files with other names are left alone. Deletions are not fsynced: an old file that
/// reappears after a crash is older than `keep` and is deleted again.
pub fn remove_others(dir: &Path, keep: Option<&Path>) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours =
            name_key(name).is_some() || (name.starts_with(PREFIX) && name.ends_with(TMP_SUFFIX));
        if ours && keep.is_none_or(|keep| keep.file_name() != Some(entry.file_name().as_os_str())) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Hashes every byte written to `inner`.
struct Crc<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<T> Crc<T> {
    fn new(inner: T) -> Self {
        let crc = crc32fast::Hasher::new();
        Self { inner, crc }
    }
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads from `src` and writes every byte read to `out`.
struct Tee<R, W> {
    src: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

mod hashed;
mod syncing;
#[cfg(test)]
mod tests;
