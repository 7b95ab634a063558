//! The peer link's wire format (version 1): pure encoding and decoding, no I/O.
//!
//! A link is one TCP (or TLS) connection from one node to one peer, opened on the port that
//! serves the internal API. It starts with [`MAGIC`] (its first byte, NUL, is never the start of
//! an HTTP/1 request, the HTTP/2 preface or a TLS record, so one port serves both), then frames:
//!
//! ```text
//! frame    = len: u32 LE (bytes after these four, at most FRAME_BYTES_MAX) + payload
//! hello    = postcard(Hello)                         client → server, once, first
//! answer   = postcard(Result<(), HelloRefusal>)      server → client, once; closed after Err
//!            [+ postcard(u64): the server's FEATURES] after Ok; absent from older servers
//! request  = id: u64 LE + rpc: u8 (Rpc) + body       client → server
//! response = id: u64 LE + status: u8 (Status) + body server → client, any order
//! ```
//!
//! A request body is the postcard encoding the same RPC has on the HTTP routes, and a response
//! body with `Status::Ok` is the `Result<T, String>` the HTTP route answers; `Rpc::Snapshot`, a
//! link-only RPC, carries one chunk of a snapshot (format in `snapshot.rs`). Numbers of [`Rpc`]
//! and [`Status`] are on the wire: never renumber them; a new version changes [`MAGIC`].

use serde::Deserialize;
use serde::Serialize;

use crate::limits::RPC_BODY_BYTES_MAX;
use crate::raft::types::NodeId;

/// The first bytes of a link connection (the wire version is its last digit).
pub const MAGIC: &[u8] = b"\0raftkv-link/1\n";
/// Bytes of a frame's length prefix.
pub const LEN_BYTES: usize = 4;
/// Bytes of a request's or response's header (id + rpc or status) inside the frame.
pub const HEAD_BYTES: usize = 9;
/// Largest frame payload: the largest peer request body plus its header.
pub const FRAME_BYTES_MAX: usize = RPC_BODY_BYTES_MAX + HEAD_BYTES;
/// Largest hello frame (a cluster id and two node ids; generous).
pub const HELLO_BYTES_MAX: usize = 4096;

/// Who opens the link and whom it is meant for: checked once, when the link opens, as the HTTP
/// routes check the identity headers on every request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_id: String,
    pub from: NodeId,
    pub to: NodeId,
}

/// What the server of a link can do, told after an accepting hello answer: bits, never
/// renumbered. Older servers send nothing after the answer (no features), and older clients
/// ignore the bytes after it (postcard reads what the type needs), so the wire version stays 1.
pub mod features {
    /// It reads `Command::Batch` log entries (write batching, `raft/propose.rs`).
    pub const BATCH_ENTRIES: u64 = 1;
}

/// What this version's link server can do.
pub const FEATURES: u64 = features::BATCH_ENTRIES;

/// A hello answer: the verdict, then this node's [`FEATURES`] if it accepts.
pub fn encode_hello_answer(verdict: &Result<(), HelloRefusal>) -> postcard::Result<Vec<u8>> {
    let mut answer = postcard::to_stdvec(verdict)?;
    if verdict.is_ok() && !as_older_version::on() {
        answer.extend(postcard::to_stdvec(&FEATURES)?);
    }
    Ok(answer)
}

/// Test-only hook: with `RAFTKV_TEST_LINK_AS_OLDER_VERSION=1` in the environment, this node
/// answers link hellos as a version without features does (the upgrade story in
/// `tests/cluster/batching.rs` uses it). Read once.
mod as_older_version {
    use std::sync::OnceLock;

    pub const ENV: &str = "RAFTKV_TEST_LINK_AS_OLDER_VERSION";

    pub fn on() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var(ENV).is_ok_and(|v| v == "1"))
    }
}

/// A hello answer's verdict and the server's features (none from an older server).
pub fn decode_hello_answer(bytes: &[u8]) -> postcard::Result<(Result<(), HelloRefusal>, u64)> {
    let (verdict, rest) = postcard::take_from_bytes::<Result<(), HelloRefusal>>(bytes)?;
    let features = if rest.is_empty() {
        0
    } else {
        postcard::from_bytes(rest)?
    };
    Ok((verdict, features))
}

/// Why a link was refused: `status` is what the HTTP routes answer for the same refusal
/// (403: not an authenticated peer; 421: meant for another node or cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRefusal {
    pub status: u16,
    pub text: String,
}

/// The RPCs a link carries (the numbers are on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rpc {
    Append = 1,
    Vote = 2,
    PreVote = 3,
    TransferLeader = 4,
    WriteBatch = 5,
    ReadIndex = 6,
    Lease = 7,
    /// A chunk of a snapshot (`snapshot.rs`); link only.
    Snapshot = 8,
}

impl Rpc {
    pub fn from_u8(b: u8) -> Option<Rpc> {
        Some(match b {
            1 => Rpc::Append,
            2 => Rpc::Vote,
            3 => Rpc::PreVote,
            4 => Rpc::TransferLeader,
            5 => Rpc::WriteBatch,
            6 => Rpc::ReadIndex,
            7 => Rpc::Lease,
            8 => Rpc::Snapshot,
            _ => return None,
        })
    }

    /// The HTTP route's name of the same RPC (for logs and metrics).
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Append => "append",
            Rpc::Vote => "vote",
            Rpc::PreVote => "pre_vote",
            Rpc::TransferLeader => "transfer_leader",
            Rpc::WriteBatch => "write_batch",
            Rpc::ReadIndex => "read_index",
            Rpc::Lease => "lease",
            Rpc::Snapshot => "snapshot",
        }
    }
}

/// How the receiver answered a request (the numbers are on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Handled: the body is the RPC's `Result<T, String>`.
    Ok = 0,
    /// Refused before it was handled (undecodable, unknown RPC, over a limit): the body is a
    /// UTF-8 text saying why (the HTTP routes' 400 / 413).
    Refused = 1,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("frame of {0} bytes is shorter than its header")]
    TooShort(usize),
}

/// The payload length a frame header announces, refused over `max`.
pub fn frame_len(prefix: [u8; LEN_BYTES], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    Ok(len)
}

/// The length prefix and header of a request or response frame whose body is `body_len`
/// bytes (written before the body; the caller keeps the body within `FRAME_BYTES_MAX`).
pub fn head(body_len: usize, id: u64, code: u8) -> [u8; LEN_BYTES + HEAD_BYTES] {
    let mut head = [0u8; LEN_BYTES + HEAD_BYTES];
    let len = (HEAD_BYTES + body_len) as u32;
    head[..LEN_BYTES].copy_from_slice(&len.to_le_bytes());
    head[LEN_BYTES..LEN_BYTES + 8].copy_from_slice(&id.to_le_bytes());
    head[LEN_BYTES + 8] = code;
    head
}

/// A whole frame (length prefix included) holding `payload` (a hello or its answer).
pub fn plain_frame(payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(LEN_BYTES + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    buf
}

/// Splits a request's or response's payload into id, code (rpc or status) and body.
pub fn split(payload: &[u8]) -> Result<(u64, u8, &[u8]), FrameError> {
    if payload.len() < HEAD_BYTES {
        return Err(FrameError::TooShort(payload.len()));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&payload[..8]);
    Ok((u64::from_le_bytes(id), payload[8], &payload[HEAD_BYTES..]))
}

/// What the first bytes of a connection say, as far as they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// `MAGIC` in full: a peer link.
    Link,
    /// Not `MAGIC`: anything else (HTTP, TLS).
    Other,
    /// A proper prefix of `MAGIC` so far: read more.
    More,
}

pub fn sniff(first: &[u8]) -> Sniff {
    let n = first.len().min(MAGIC.len());
    if first[..n] != MAGIC[..n] {
        Sniff::Other
    } else if n == MAGIC.len() {
        Sniff::Link
    } else {
        Sniff::More
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hello_answers_carry_features_that_older_nodes_skip() {
        use super::*;
        let ok: Result<(), HelloRefusal> = Ok(());
        let answer = encode_hello_answer(&ok).unwrap();
        assert_eq!(decode_hello_answer(&answer).unwrap(), (Ok(()), FEATURES));
        // An older client reads the verdict and ignores the rest.
        let old: Result<(), HelloRefusal> = postcard::from_bytes(&answer).unwrap();
        assert_eq!(old, Ok(()));
        // An older server sends the verdict alone: no features.
        let old_answer = postcard::to_stdvec(&ok).unwrap();
        assert_eq!(decode_hello_answer(&old_answer).unwrap(), (Ok(()), 0));
        let refused = Err(HelloRefusal {
            status: 421,
            text: "not me".into(),
        });
        let answer = encode_hello_answer(&refused).unwrap();
        assert_eq!(decode_hello_answer(&answer).unwrap(), (refused, 0));
    }

    use super::*;

    #[test]
    fn http_requests_and_tls_records_are_not_links() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /raft/append HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &[0x16, 0x03, 0x01, 0x02, 0x00],
            b"G",
        ] {
            assert_eq!(sniff(start), Sniff::Other, "{start:?}");
        }
    }

    #[test]
    fn the_magic_is_recognised_whole_and_waited_for_in_pieces() {
        assert_eq!(sniff(MAGIC), Sniff::Link);
        assert_eq!(sniff(&MAGIC[..1]), Sniff::More);
        assert_eq!(sniff(&MAGIC[..MAGIC.len() - 1]), Sniff::More);
        let mut longer = MAGIC.to_vec();
        longer.extend_from_slice(b"frames");
        assert_eq!(sniff(&longer), Sniff::Link);
        assert_eq!(sniff(b"\0raftkv-link/2\n"), Sniff::Other, "another version");
    }

    #[test]
    fn a_sealed_frame_splits_back_into_its_parts() {
        let mut buf = head(5, 42, Rpc::WriteBatch as u8).to_vec();
        buf.extend_from_slice(b"hello");
        let mut prefix = [0u8; LEN_BYTES];
        prefix.copy_from_slice(&buf[..LEN_BYTES]);
        let len = frame_len(prefix, FRAME_BYTES_MAX).expect("len");
        assert_eq!(len, buf.len() - LEN_BYTES);
        let (id, code, body) = split(&buf[LEN_BYTES..]).expect("split");
        assert_eq!(
            (id, Rpc::from_u8(code), body),
            (42, Some(Rpc::WriteBatch), &b"hello"[..])
        );
    }

    #[test]
    fn oversized_and_short_frames_are_refused() {
        let prefix = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
        assert!(matches!(
            frame_len(prefix, FRAME_BYTES_MAX),
            Err(FrameError::TooLong { .. })
        ));
        assert_eq!(split(&[0; 8]), Err(FrameError::TooShort(8)));
    }

    #[test]
    fn rpc_numbers_are_stable() {
        for n in 0..=255u8 {
            if let Some(rpc) = Rpc::from_u8(n) {
                assert_eq!(rpc as u8, n);
            }
        }
        assert_eq!(Rpc::from_u8(1), Some(Rpc::Append));
        assert_eq!(Rpc::from_u8(7), Some(Rpc::Lease));
        assert_eq!(Rpc::from_u8(0), None);
        assert_eq!(Rpc::from_u8(8), Some(Rpc::Snapshot));
        assert_eq!(Rpc::from_u8(9), None);
    }
}
