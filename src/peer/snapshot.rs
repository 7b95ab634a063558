//! Snapshot transfer, leader → follower. The leader streams the snapshot file over a peer link
//! of its own (lane `Snapshot`, so appends and votes never wait behind it) in chunks of
//! [`CHUNK_BYTES`], one chunk in flight: the next leaves when the receiver answered that the
//! previous one is queued for its spool, so a slow disk slows the sender (backpressure) and the
//! receiver never holds more than its spool queue. The HTTP route `/raft/snapshot`
//! (`server.rs`: one streamed body) is kept for tools; both carriers end in [`Receiving`].
//!
//! Link format (RPC `Snapshot`; request body = postcard([`ChunkHead`]) + the chunk's bytes):
//!
//! ```text
//! chunk 0    session, offset 0, header = postcard((vote, meta)), bytes 0..n
//! chunk k    session, offset = bytes sent before it, bytes
//! last chunk last = true (possibly empty)
//! answer     Result<ChunkAnswer, String>: More (queued), or Done(response) after the last chunk
//!            was installed, or at once when the sender's vote is older than the receiver's
//! ```
//!
//! The receiver keeps one transfer per link connection: a chunk that does not continue it (other
//! session, wrong offset) fails the transfer and its spool file (unnamed) is dropped, as it is
//! when the connection ends. Limits: the header at most `SNAPSHOT_HEADER_BYTES_MAX`, the
//! snapshot at most `SNAPSHOT_BYTES_MAX`, a chunk [`CHUNK_BYTES`] (within a link frame).

use std::cmp::Ordering;
use std::fs::File;
use std::io;
use std::io::BufWriter;
use std::io::Seek;
use std::io::Write;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::SnapshotResponse;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::app::App;
use crate::limits::SNAPSHOT_BYTES_MAX;
use crate::limits::SNAPSHOT_HEADER_BYTES_MAX;
use crate::peer::link::Link;
use crate::peer::link::LinkError;
use crate::peer::rpc::Refused;
use crate::peer::wire::Rpc;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

/// Bytes of snapshot data in one chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Bound on one chunk's round trip (its bytes, queueing it for the spool, the answer); the last
/// chunk gets the install's time instead.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
// A whole chunk fits one link frame, with room for the largest header in the first.
const _: () =
    assert!(CHUNK_BYTES + SNAPSHOT_HEADER_BYTES_MAX + 64 < crate::peer::wire::FRAME_BYTES_MAX);
/// Received chunks queued for the spooling thread (backpressure on the sender).
const SPOOL_CHUNKS_QUEUED_MAX: usize = 16;
/// Write buffer of the spooling thread.
const SPOOL_BUFFER_BYTES: usize = 256 << 10;

/// What precedes a chunk's bytes in its request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHead {
    /// Tells transfers on one link apart (a new one replaces an unfinished one).
    pub session: u64,
    /// Bytes of the snapshot sent before this chunk.
    pub offset: u64,
    /// postcard((vote, meta)), in the first chunk only.
    pub header: Option<Vec<u8>>,
    /// Whether this chunk ends the snapshot.
    pub last: bool,
}

/// The receiver's answer to a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkAnswer {
    /// Queued; send the next.
    More,
    /// Installed, or refused because the sender's vote is older (the receiver's vote inside).
    Done(SnapshotResponse<TypeConfig>),
}

/// How a transfer begins.
pub enum Begun {
    /// The sender's vote is older than this node's: answered with this node's vote (as openraft
    /// answers it, so the stale leader steps down) before a byte is spooled.
    Refused(SnapshotResponse<TypeConfig>),
    Receiving(Receiving),
}

/// A snapshot being received: its bytes go to an unnamed file in the snapshot dir through a
/// blocking spooling thread, never held in memory whole.
pub struct Receiving {
    vote: Vote,
    meta: SnapshotMeta,
    chunks: mpsc::Sender<Bytes>,
    writer: tokio::task::JoinHandle<io::Result<File>>,
    received: u64,
}

/// Decodes a transfer's header (postcard((vote, meta))) and, if the sender is current, opens
/// the spool.
pub async fn begin(app: &App, header: &[u8]) -> Result<Begun, String> {
    if header.len() > SNAPSHOT_HEADER_BYTES_MAX {
        return Err(format!(
            "snapshot header of {} bytes is over the limit of {SNAPSHOT_HEADER_BYTES_MAX}",
            header.len()
        ));
    }
    let (vote, meta): (Vote, SnapshotMeta) =
        postcard::from_bytes(header).map_err(|e| format!("decode snapshot header: {e}"))?;
    // The metrics' vote may lag the core's, never lead it (votes only grow): this refuses only
    // what openraft would refuse too, and openraft checks again on install.
    let mine = app.raft.metrics().borrow_watched().vote;
    if !sender_is_current(&vote, &mine) {
        tracing::warn!(sender_vote = %vote, my_vote = %mine, last_log_id = ?meta.last_log_id,
            "refused a snapshot from a leader of an older term; answering with this node's vote");
        return Ok(Begun::Refused(SnapshotResponse::new(mine)));
    }
    let store = app.state_machine.clone();
    let file = tokio::task::spawn_blocking(move || store.incoming_snapshot_file())
        .await
        .map_err(|e| format!("spool file: {e}"))?
        .map_err(|e| format!("spool file: {e}"))?;
    let (chunks, queued) = mpsc::channel::<Bytes>(SPOOL_CHUNKS_QUEUED_MAX);
    let writer = tokio::task::spawn_blocking(move || spool(file, queued));
    Ok(Begun::Receiving(Receiving {
        vote,
        meta,
        chunks,
        writer,
        received: 0,
    }))
}

impl Receiving {
    /// Queues the next bytes for the spool; waits while the queue is full.
    pub async fn push(&mut self, chunk: Bytes) -> Result<(), String> {
        self.received += chunk.len() as u64;
        if self.received > SNAPSHOT_BYTES_MAX {
            return Err(format!(
                "snapshot is over the limit of {SNAPSHOT_BYTES_MAX} bytes; refused"
            ));
        }
        if self.chunks.send(chunk).await.is_err() {
            // The writer stopped: say why.
            return Err(match (&mut self.writer).await {
                Ok(Err(e)) => format!("spool write: {e}"),
                Ok(Ok(_)) => "spool writer stopped".into(),
                Err(e) => format!("spool: {e}"),
            });
        }
        Ok(())
    }

    /// Ends the spool and installs the snapshot.
    pub async fn finish(self, app: &App) -> Result<SnapshotResponse<TypeConfig>, String> {
        let Receiving {
            vote,
            meta,
            chunks,
            writer,
            received,
        } = self;
        drop(chunks); // ends the writer
        let spooled = writer
            .await
            .map_err(|e| format!("spool: {e}"))?
            .map_err(|e| format!("spool write: {e}"))?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = received, "received snapshot, installing");
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: spooled,
        };
        app.raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Whether a snapshot sent with `sender`'s vote may be installed by a node holding `mine`: the
/// rule openraft applies (`sender >= mine`; votes are only partially ordered, so "not greater or
/// equal" is not "less").
fn sender_is_current(sender: &Vote, mine: &Vote) -> bool {
    matches!(
        sender.partial_cmp(mine),
        Some(Ordering::Greater | Ordering::Equal)
    )
}

/// Writes the queued chunks to `file` (blocking; runs on a blocking thread) until the channel
/// closes, and returns the file rewound to its start.
fn spool(file: File, mut queued: mpsc::Receiver<Bytes>) -> io::Result<File> {
    let mut out = BufWriter::with_capacity(SPOOL_BUFFER_BYTES, file);
    while let Some(chunk) = queued.blocking_recv() {
        out.write_all(&chunk)?;
    }
    // Every byte must be flushed to the file before it is rewound and handed to
    // install_full_snapshot: the store reads it back through this handle. (No fsync here: the
    // store's import copies it to its own file and fsyncs that before it takes effect.)
    let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.rewind()?;
    Ok(file)
}

/// The receiving end of one link connection: at most one transfer at a time.
#[derive(Default)]
pub struct LinkSession {
    current: Option<Transfer>,
}

struct Transfer {
    session: u64,
    next_offset: u64,
    receiving: Receiving,
}

impl LinkSession {
    /// Handles one chunk request (`body`: the request body after the link's header); answers
    /// the encoded `Result<ChunkAnswer, String>`. A failed chunk ends the transfer.
    pub async fn chunk(&mut self, app: &App, body: Bytes) -> Result<Vec<u8>, Refused> {
        let (head, rest) = postcard::take_from_bytes::<ChunkHead>(&body).map_err(|e| {
            (
                axum::http::StatusCode::BAD_REQUEST,
                format!("decode chunk: {e}"),
            )
        })?;
        let data = body.slice(body.len() - rest.len()..);
        let result = self.take(app, head, data).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "snapshot install failed");
            self.current = None;
        }
        crate::peer::rpc::encode(&result)
    }

    async fn take(
        &mut self,
        app: &App,
        head: ChunkHead,
        data: Bytes,
    ) -> Result<ChunkAnswer, String> {
        if let Some(header) = &head.header {
            if head.offset != 0 {
                return Err(format!(
                    "a snapshot header in a chunk at offset {}",
                    head.offset
                ));
            }
            // A new transfer replaces an unfinished one (its spool file is dropped with it).
            self.current = None;
            match begin(app, header).await? {
                Begun::Refused(response) => return Ok(ChunkAnswer::Done(response)),
                Begun::Receiving(receiving) => {
                    self.current = Some(Transfer {
                        session: head.session,
                        next_offset: 0,
                        receiving,
                    });
                }
            }
        }
        let Some(transfer) = self.current.as_mut().filter(|t| t.session == head.session) else {
            return Err(format!(
                "a chunk of snapshot transfer {} that is not in progress",
                head.session
            ));
        };
        if head.offset != transfer.next_offset {
            return Err(format!(
                "a snapshot chunk at offset {} where {} was expected",
                head.offset, transfer.next_offset
            ));
        }
        transfer.next_offset += data.len() as u64;
        transfer.receiving.push(data).await?;
        if !head.last {
            return Ok(ChunkAnswer::More);
        }
        let Some(transfer) = self.current.take() else {
            return Err("the snapshot transfer ended".into());
        };
        transfer.receiving.finish(app).await.map(ChunkAnswer::Done)
    }
}

/// Sends a snapshot over `link`: `header` = postcard((vote, meta)), then `file` (`total` bytes)
/// chunk by chunk, each after the previous one's answer; the last chunk waits up to
/// `install_timeout` for the install. `progress` hears the bytes sent so far.
pub async fn send(
    link: &Link,
    header: Vec<u8>,
    file: File,
    install_timeout: Duration,
    mut progress: impl FnMut(u64),
) -> Result<SnapshotResponse<TypeConfig>, LinkError> {
    static SESSIONS: AtomicU64 = AtomicU64::new(1);
    let session = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut file = tokio::fs::File::from_std(file);
    let mut header = Some(header);
    let mut offset = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = fill(&mut file, &mut buf)
            .await
            .map_err(|e| LinkError::Rejected {
                addr: link.addr().to_string(),
                text: format!("read the snapshot file: {e}"),
            })?;
        let last = n < CHUNK_BYTES;
        let head = ChunkHead {
            session,
            offset,
            header: header.take(),
            last,
        };
        let mut body = postcard::to_stdvec(&head).map_err(|e| LinkError::Rejected {
            addr: link.addr().to_string(),
            text: format!("encode a chunk: {e}"),
        })?;
        body.extend_from_slice(&buf[..n]);
        let timeout = if last { install_timeout } else { CHUNK_TIMEOUT };
        let answer: ChunkAnswer = link.call_encoded(Rpc::Snapshot, &body, timeout).await?;
        offset += n as u64;
        progress(offset);
        match answer {
            ChunkAnswer::Done(response) => return Ok(response),
            ChunkAnswer::More if last => {
                return Err(LinkError::Remote {
                    addr: link.addr().to_string(),
                    text: "the last snapshot chunk was answered 'more'".into(),
                });
            }
            ChunkAnswer::More => {}
        }
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
async fn fill(file: &mut tokio::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let read = file.read(&mut buf[n..]).await?;
        if read == 0 {
            break;
        }
        n += read;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn only_snapshots_from_a_current_leader_are_accepted() {
        let mine = Vote::new_committed(5, 1);
        assert!(sender_is_current(&Vote::new_committed(5, 1), &mine));
        assert!(sender_is_current(&Vote::new_committed(6, 2), &mine));
        assert!(!sender_is_current(&Vote::new_committed(4, 1), &mine));
        assert!(!sender_is_current(&Vote::new_committed(4, 9), &mine));
        // The same leader id, not yet granted: older than the granted vote this node holds.
        assert!(!sender_is_current(&Vote::new(5, 1), &mine));
    }

    #[tokio::test]
    async fn spooling_writes_every_chunk_and_rewinds() {
        let file = tempfile::tempfile().expect("temp file");
        let (tx, rx) = mpsc::channel(SPOOL_CHUNKS_QUEUED_MAX);
        let writer = tokio::task::spawn_blocking(move || spool(file, rx));
        let mut expected = Vec::new();
        for i in 0..100u8 {
            let chunk = vec![i; 10_000];
            expected.extend_from_slice(&chunk);
            tx.send(Bytes::from(chunk)).await.expect("send");
        }
        drop(tx);
        let mut file = writer.await.expect("join").expect("spool");
        let mut read = Vec::new();
        file.read_to_end(&mut read).expect("read");
        assert_eq!(read, expected);
    }

    #[test]
    fn a_chunk_body_is_its_head_then_its_bytes() {
        let head = ChunkHead {
            session: 7,
            offset: 1 << 20,
            header: None,
            last: true,
        };
        let mut body = postcard::to_stdvec(&head).expect("encode");
        body.extend_from_slice(b"data");
        let (decoded, rest) = postcard::take_from_bytes::<ChunkHead>(&body).expect("decode");
        assert_eq!(decoded, head);
        assert_eq!(rest, b"data");
    }
}
