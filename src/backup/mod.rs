//! Backups: the backup file format, taking one from this node's state machine, and validating
//! one. `GET /snapshot` (`http/snapshot.rs`) and etcd's `Maintenance.Snapshot` stream what
//! [`take`] writes; `raftkv restore` ([`restore`]) turns a validated file into a data dir.
//!
//! Owns: the file format, its checks, and the rule that a backup holds every write
//! acknowledged before it was asked for. Does not own: the snapshot encoding inside the file
//! (`store/snapshot.rs`), who may ask for a backup (the admin rule, checked by the callers).
//!
//! Format 1 (integers little-endian):
//! ```text
//! magic "RAFTKVBK" | version u32 (1) | payload_bytes u64
//! payload: a snapshot file, format 2 (`store/snapshot.rs`: Raft meta, mvcc store, crc32)
//! zero padding up to a multiple of 512 bytes of everything before it
//! sha256 (32 bytes) of every byte before it
//! ```
//! The padding and the trailer are etcd's convention: `etcdctl snapshot save` keeps the bytes
//! `Maintenance.Snapshot` streams and checks that their size is 32 more than a multiple of 512
//! (a sha256 trailer), so an HTTP backup and an etcdctl one are the same file.
//!
//! Invariant: a file [`verify`] accepts is complete (exactly as long as its header says),
//! undamaged (its sha256 matches; then the snapshot's own crc32 and structure checks pass) and
//! of a known format; anything else is a [`BackupError`] that names the problem.

pub mod restore;

use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Seek;
use std::io::SeekFrom;
use std::io::Write;
use std::sync::Arc;

use sha2::Digest;
use sha2::Sha256;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;

use crate::app::App;
use crate::error::KvError;
use crate::raft::read::ReadLevel;
use crate::raft::types::SnapshotMeta;
use crate::store::kv::KvState;
use crate::store::snapshot;
use crate::store::snapshot::CorruptSnapshot;
use crate::store::snapshot::OldFormat;
use crate::store::state_machine::retry_if_replaced;

pub const MAGIC: [u8; 8] = *b"RAFTKVBK";
pub const FORMAT_VERSION: u32 = 1;
/// magic + version + payload_bytes.
pub const HEADER_BYTES: u64 = 20;
/// Everything before the trailer is padded to a multiple of this (etcd's check, see above).
pub const BLOCK_BYTES: u64 = 512;
pub const SHA256_BYTES: u64 = 32;
/// Largest payload a header may claim: a received snapshot's limit (the data set lives in
/// memory). A damaged length fails here instead of sending the reader past the file.
pub const PAYLOAD_BYTES_MAX: u64 = 16 << 30;
/// Backups being taken or streamed at once by one node; each holds a copy of the store while
/// it is written and a temp file until its stream ends. More are refused with `busy`.
pub const BACKUPS_IN_FLIGHT_MAX: usize = 2;
const BUFFER_BYTES: usize = 256 << 10;

/// A backup file that fails validation, or that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read backup {file}: {source}")]
    Io { file: String, source: io::Error },
    #[error("{file} is not a raftkv backup: {detail}")]
    NotABackup { file: String, detail: String },
    #[error(
        "{file} has backup format version {found}; this raftkv reads version {FORMAT_VERSION} \
         (use the raftkv version that wrote it)"
    )]
    Version { file: String, found: u32 },
    #[error(
        "{file} is truncated: it has {found} bytes, its header says {expected}; the copy is \
         incomplete (download it again)"
    )]
    Truncated {
        file: String,
        expected: u64,
        found: u64,
    },
    #[error("{file} has {found} bytes, its header says {expected}: bytes follow the backup")]
    TrailingBytes {
        file: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "{file} is damaged: the sha256 of its contents is {computed}, its trailer says {stored}"
    )]
    Checksum {
        file: String,
        stored: String,
        computed: String,
    },
    #[error("{file} is damaged: {detail}")]
    Corrupt { file: String, detail: String },
}

/// What a valid backup (or bare snapshot file) holds.
#[derive(Debug)]
pub struct Verified {
    pub meta: SnapshotMeta,
    pub kv: KvState,
    /// The sha256 trailer, verified; `None` for a bare snapshot file (crc32 only).
    pub sha256: Option<[u8; 32]>,
    pub bytes: u64,
}

/// A backup written to an (anonymous) temp file, ready to stream.
#[derive(Debug)]
pub struct Backup {
    /// Positioned at offset 0; its last [`SHA256_BYTES`] bytes are the trailer.
    pub file: File,
    pub bytes: u64,
    pub sha256: [u8; 32],
    pub revision: i64,
    pub compact_revision: i64,
    pub applied_index: Option<u64>,
    pub keys: usize,
    /// Holds one of the [`BACKUPS_IN_FLIGHT_MAX`] places until the stream is dropped.
    pub permit: OwnedSemaphorePermit,
}

/// Size of a backup file whose payload has `payload_bytes` bytes.
pub fn file_bytes(payload_bytes: u64) -> u64 {
    (HEADER_BYTES + payload_bytes).div_ceil(BLOCK_BYTES) * BLOCK_BYTES + SHA256_BYTES
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn limiter() -> Arc<Semaphore> {
    static BACKUPS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    BACKUPS
        .get_or_init(|| Arc::new(Semaphore::new(BACKUPS_IN_FLIGHT_MAX)))
        .clone()
}

/// Takes a backup of this node's state machine. At [`ReadLevel::Linearizable`] it holds every
/// write acknowledged before the call: a read barrier first (ReadIndex, on a follower the
/// leader's read index), then a copy of the state, which is then at or past that index. At
/// [`ReadLevel::Stale`] it is what this node has applied (works without a quorum).
pub async fn take(app: &App, level: ReadLevel) -> Result<Backup, KvError> {
    let permit = limiter().try_acquire_owned().map_err(|_| {
        KvError::Busy(format!(
            "{BACKUPS_IN_FLIGHT_MAX} backups are being taken or downloaded"
        ))
    })?;
    // Must pass before the state is copied: the copy then reflects every acknowledged write.
    crate::raft::read::read_barrier(app, level).await?;
    let sm = app.state_machine.clone();
    let started = std::time::Instant::now();
    let written = tokio::task::spawn_blocking(move || -> io::Result<_> {
        // A snapshot installed meanwhile (on a follower) replaces the store being read: write
        // the backup again, from the new store, into a new file. It is still at or past the
        // read barrier's index.
        retry_if_replaced("backup", |_| {
            let file = sm.incoming_snapshot_file()?;
            let mut held = None;
            let (file, bytes, sha256) = write(file, |out| {
                held = Some(sm.encode_now(out)?);
                Ok(())
            })?;
            let held = held.ok_or_else(|| io::Error::other("the backup encoded nothing"))?;
            let info = (
                held.compact_revision,
                held.revision,
                held.live_keys,
                held.meta,
            );
            Ok((file, bytes, sha256, info))
        })
    })
    .await
    .map_err(|e| KvError::Internal(format!("backup task failed: {e}")))?
    .map_err(|e| KvError::Internal(format!("writing the backup: {e}")))?;
    let (file, bytes, sha256, (compact_revision, revision, keys, meta)) = written;
    let applied_index = meta.last_log_id.map(|id| id.index);
    tracing::info!(
        bytes,
        keys,
        revision,
        applied_index,
        took_ms = started.elapsed().as_millis(),
        "backup taken"
    );
    Ok(Backup {
        file,
        bytes,
        sha256,
        revision,
        compact_revision,
        applied_index,
        keys,
        permit,
    })
}

/// Writes a backup into `file` (empty, read/write), its payload (a snapshot file) written by
/// `encode`, and returns it rewound, with its size and sha256. Blocking.
pub fn write(
    mut file: File,
    encode: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<(File, u64, [u8; 32])> {
    // 1. The payload first, after room for the header (its length is known only afterwards).
    file.seek(SeekFrom::Start(HEADER_BYTES))?;
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, file);
    encode(&mut out)?;
    let end = out.stream_position()?;
    let payload_bytes = end - HEADER_BYTES;
    let data_bytes = file_bytes(payload_bytes) - SHA256_BYTES;
    io::copy(&mut io::repeat(0).take(data_bytes - end), &mut out)?;
    // 2. The header, now that the payload's length is known.
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&header(payload_bytes))?;
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    // 3. The trailer: sha256 of every byte before it, read back (from the page cache).
    file.rewind()?;
    let sha256 = sha256_of(&mut (&mut file).take(data_bytes))?;
    file.seek(SeekFrom::Start(data_bytes))?;
    file.write_all(&sha256)?;
    file.rewind()?;
    Ok((file, data_bytes + SHA256_BYTES, sha256))
}

fn header(payload_bytes: u64) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..].copy_from_slice(&payload_bytes.to_le_bytes());
    h
}

fn sha256_of(input: &mut impl Read) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUFFER_BYTES];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// Validates a backup from `input` (`file` names it in errors) and decodes what it holds:
/// size against the header, then the sha256, then the snapshot inside. A bare snapshot file
/// (a data dir's `snapshots/snapshot-*.bin`) is accepted too, checked by its own crc32.
pub fn verify(mut input: impl Read + Seek, file: &str) -> Result<Verified, BackupError> {
    let io_err = |source| BackupError::Io {
        file: file.to_string(),
        source,
    };
    let found = input.seek(SeekFrom::End(0)).map_err(io_err)?;
    input.rewind().map_err(io_err)?;
    let mut r = BufReader::with_capacity(BUFFER_BYTES, input);
    let mut head = [0u8; HEADER_BYTES as usize];
    let got = read_up_to(&mut r, &mut head).map_err(io_err)?;
    if got >= 8 && head[..8] == snapshot::MAGIC {
        r.rewind().map_err(io_err)?;
        let (meta, kv) = snapshot::decode(&mut r, file).map_err(|e| decode_error(file, e))?;
        let bytes = found;
        return Ok(Verified {
            meta,
            kv,
            sha256: None,
            bytes,
        });
    }
    if got < 8 || head[..8] != MAGIC {
        let detail = if found == 0 {
            "the file is empty".to_string()
        } else {
            "bad magic (an etcd bbolt snapshot cannot be restored into raftkv: take the backup \
             from raftkv, with GET /snapshot or etcdctl snapshot save against a raftkv node)"
                .to_string()
        };
        return Err(BackupError::NotABackup {
            file: file.to_string(),
            detail,
        });
    }
    let truncated = |expected| BackupError::Truncated {
        file: file.to_string(),
        expected,
        found,
    };
    if (got as u64) < HEADER_BYTES {
        return Err(truncated(HEADER_BYTES + SHA256_BYTES));
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != FORMAT_VERSION {
        return Err(BackupError::Version {
            file: file.to_string(),
            found: version,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[12..20]);
    let payload_bytes = u64::from_le_bytes(len);
    if payload_bytes > PAYLOAD_BYTES_MAX {
        let detail =
            format!("its header claims {payload_bytes} payload bytes, over {PAYLOAD_BYTES_MAX}");
        return Err(BackupError::Corrupt {
            file: file.to_string(),
            detail,
        });
    }
    let expected = file_bytes(payload_bytes);
    if found < expected {
        return Err(truncated(expected));
    }
    if found > expected {
        let file = file.to_string();
        return Err(BackupError::TrailingBytes {
            file,
            expected,
            found,
        });
    }
    // 1. The sha256 over everything before the trailer: any flipped byte fails here.
    let data_bytes = expected - SHA256_BYTES;
    r.rewind().map_err(io_err)?;
    let computed = sha256_of(&mut (&mut r).take(data_bytes)).map_err(io_err)?;
    let mut stored = [0u8; 32];
    r.read_exact(&mut stored).map_err(io_err)?;
    if stored != computed {
        let (stored, computed) = (hex(&stored), hex(&computed));
        return Err(BackupError::Checksum {
            file: file.to_string(),
            stored,
            computed,
        });
    }
    // 2. The snapshot inside, with its own checks (format version, crc32, structure).
    r.seek(SeekFrom::Start(HEADER_BYTES)).map_err(io_err)?;
    let (meta, kv) =
        snapshot::decode((&mut r).take(payload_bytes), file).map_err(|e| decode_error(file, e))?;
    let mut padding = Vec::new();
    (&mut r)
        .take(data_bytes - HEADER_BYTES - payload_bytes)
        .read_to_end(&mut padding)
        .map_err(io_err)?;
    if padding.iter().any(|&b| b != 0) {
        let detail = "non-zero padding after the snapshot".to_string();
        return Err(BackupError::Corrupt {
            file: file.to_string(),
            detail,
        });
    }
    Ok(Verified {
        meta,
        kv,
        sha256: Some(computed),
        bytes: found,
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn decode_error(file: &str, e: io::Error) -> BackupError {
    if let Some(old) = OldFormat::inside(&e) {
        let detail = old.to_string();
        return BackupError::Corrupt {
            file: file.to_string(),
            detail,
        };
    }
    match CorruptSnapshot::inside(&e) {
        Some(c) => BackupError::Corrupt {
            file: file.to_string(),
            detail: c.detail.clone(),
        },
        None => BackupError::Io {
            file: file.to_string(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests;
